"""Evaluation of a trained model/guide pair, computed by tracing the pair itself.

Signs: ``elbo`` and ``recon`` are maximised (nats per image, ``elbo = recon − kl``),
``kl`` ≥ 0, ``nll = −log p(x)`` is positive and ``nll ≤ −elbo``.

Latent diagnostics read the guide's latent sites in the order the guide samples them:

* posterior means E_q[z | x] (the site's ``fn.mean`` when the distribution has one,
  else a Monte Carlo mean of its samples);
* active units (Burda et al. 2016, "Importance Weighted Autoencoders"): dimension d of a
  site is active when Var_x(E_q[z_d | x]) > 0.01;
* the KL of each latent dimension, E_x KL(q(z_d|x) ‖ p(z_d)): analytic when the guide's and
  prior's elementwise base distributions have a registered ``kl_divergence``, else Monte
  Carlo E_q[log q(z_d|x) − log p(z_d)]; ``None`` for a site whose q does not factorize over
  dimensions (e.g. a flow or a full-covariance Gaussian).
"""

import functools
import math
import sys
import warnings as _warnings

import pyro
import torch
from pyro import poutine
from pyro.poutine.util import prune_subsample_sites

from pyro_vae.core.checks import UserError, option
from pyro_vae.core.chunks import mean_over_particles, particles_per_pass, row_chunks
from pyro_vae.core.kl import elementwise_kl
from pyro_vae.core.pair import batch_as_argument, checked_probe, plate_nesting
from pyro_vae.estimators.importance import (
    PARTICLE_PLATE,
    guess_max_plate_nesting,
    log_likelihood,
    log_weights,
    per_particle_and_point,
    runs_per_point,
)
from pyro_vae.models.likelihoods import discrete_dims

ACTIVE_THRESHOLD = 0.01


def elbo_terms(model, guide, x, *args, num_particles=1, batch_size=1000, batch_call=None, **kwargs):
    """Per-image Monte Carlo ``(recon, kl)`` averaged over ``num_particles``, each of shape ``[N]``.

    recon_i = E_q[log p(x_i|z)], kl_i = E_q[log q(z|x_i) − log p(z)], ELBO_i = recon_i − kl_i.
    ``batch_call``: how the pair takes rows of ``x`` (see :func:`evaluate`); ``batch_size=None``:
    all at once.
    """
    recon, kl, _ = _latent_pass(
        model,
        guide,
        x,
        *args,
        num_particles=num_particles,
        batch_size=batch_size,
        per_dim=False,
        batch_call=batch_call,
        **kwargs,
    )
    return recon, kl


def elbo_per_point(model, guide, x, *args, num_particles=1, batch_size=1000, **kwargs):
    """Monte Carlo ELBO of every image, shape ``[N]`` (nats)."""
    recon, kl = elbo_terms(
        model, guide, x, *args, num_particles=num_particles, batch_size=batch_size, **kwargs
    )
    return recon - kl


def _caller(x, args, kwargs, batch_call):
    """``call(rows) -> (args, kwargs)``: the pair's arguments on the rows ``rows`` (a slice) of
    ``x``, from ``batch_call(x[rows], idx[rows])`` (default
    :func:`~pyro_vae.core.pair.batch_as_argument`), followed by the extra ``args`` and
    ``kwargs``."""
    batch_call = batch_call or batch_as_argument
    idx = torch.arange(len(x), device=x.device)

    def call(rows):
        a, kw = batch_call(x[rows], idx[rows])
        return (*a, *args), {**kw, **kwargs}

    return call


# ---------------------------------------------------------------------------------------------
# latent sites, posterior means, active units, KL per dimension
# ---------------------------------------------------------------------------------------------
def _latent_sites(trace):
    return [
        name
        for name, site in trace.nodes.items()
        if site["type"] == "sample" and not site["is_observed"]
    ]


def _is_discrete(site):
    """An integer-valued site (a class label): it has no posterior mean in latent space (a one-hot
    site has one)."""
    return not site["value"].is_floating_point()


def latent_sites(guide, x, *args, **kwargs):
    """Names of the guide's latent sample sites, in the order the guide samples them."""
    with poutine.block():
        trace = prune_subsample_sites(poutine.trace(guide).get_trace(x[:1], *args, **kwargs))
    return _latent_sites(trace)


def _site_mean(fn):
    try:
        mean = fn.mean
    except (NotImplementedError, AttributeError):
        return None
    return mean if torch.is_tensor(mean) and torch.isfinite(mean).all() else None


def _latent_plate(guide_trace):
    """The plate every latent site of a guide trace sits in (the data plate of a guide), else
    ``"data"``."""
    common = None
    for name in _latent_sites(guide_trace):
        names = [
            f.name for f in guide_trace.nodes[name]["cond_indep_stack"] if f.name != PARTICLE_PLATE
        ]
        common = names if common is None else [n for n in common if n in names]
    return common[0] if common and (len(common) == 1 or "data" not in common) else "data"


def posterior_means(guide, x, *args, mc_samples=64, **kwargs):
    """E_q[z | x_i] of every real-valued latent site of ``guide``: a dict ``{site: tensor [N,
    *event_shape]}`` in guide order (see :func:`posterior_moments`, whose first half it is)."""
    return posterior_moments(guide, x, *args, mc_samples=mc_samples, **kwargs)[0]


@torch.no_grad()
def posterior_moments(
    guide,
    x,
    *args,
    mc_samples=64,
    batch_size=1000,
    max_plate_nesting=None,
    data_plate=None,
    batch_call=None,
    **kwargs,
):
    """``(means, noise)``: E_q[z | x_i] of every real-valued latent site of ``guide``, a dict
    ``{site: tensor [N, *event_shape]}`` in guide order, and the variance of each Monte Carlo mean,
    s²_i / M over its M draws (zeros where the mean is exact). Integer-valued sites (e.g. the class
    ``y`` of M2 or of an unconditioned CVAE) have no mean in latent space and are left out (a
    one-hot site's mean is its probabilities); the sites after them are averaged over their draws,
    E_q[z|x] = E_{q(y|x)} E_q[z|x,y].

    A site whose distribution has a ``mean`` contributes ``fn.mean``, averaged over ``mc_samples``
    draws of the sites sampled before it (E[z₂] = E_{z₁}[E[z₂ | z₁]]); a single site with a mean
    needs one draw. A site without ``mean`` (e.g. a flow) contributes the average of ``mc_samples``
    of its own samples. ``data_plate``: the plate over data points (default: the plate that holds
    every latent site, else the one named ``"data"``). ``batch_call``: how the guide takes rows of
    ``x`` (see :func:`evaluate`); ``batch_size=None``: all rows at once.
    """
    if mc_samples < 1:
        raise ValueError(f"mc_samples must be >= 1, got {mc_samples}")
    call = _caller(x, args, kwargs, batch_call)
    chunks = row_chunks(len(x), batch_size)
    if max_plate_nesting is None:
        with poutine.block():
            a, kw = call(chunks[0])
            max_plate_nesting = plate_nesting(poutine.trace(guide).get_trace(*a, **kw))
    particle_dim = -(max_plate_nesting + 1)
    sums, noise = {}, {}
    for rows in chunks:
        a, kw = call(rows)
        k = 1
        for attempt in range(2):
            with poutine.block(), pyro.plate(PARTICLE_PLATE, k, dim=particle_dim):
                trace = prune_subsample_sites(poutine.trace(guide).get_trace(*a, **kw))
            every = _latent_sites(trace)
            sites = [n for n in every if not _is_discrete(trace.nodes[n])]
            if not sites:
                raise UserError(
                    "the guide has no real-valued latent site, so there is no posterior mean to "
                    "take"
                )
            means = {n: _site_mean(trace.nodes[n]["fn"]) for n in sites}
            if k > 1 or (len(every) == 1 and means[sites[0]] is not None):
                break
            k = mc_samples
        plate = data_plate or _latent_plate(trace)
        for name in sites:
            site, m = trace.nodes[name], means[name]
            m = site["value"] if m is None else m.expand(site["value"].shape)
            m = per_particle_and_point(m, site, particle_dim, site["fn"].event_dim, plate)
            sums.setdefault(name, []).append(m.mean(0))  # [B, *event]
            noise.setdefault(name, []).append(m.var(0) / len(m) if len(m) > 1 else 0 * m[0])
    return tuple({name: torch.cat(ts) for name, ts in d.items()} for d in (sums, noise))


def active_units(means, threshold=ACTIVE_THRESHOLD, noise=None):
    """Per-site ``(count, variances)``: Var over data of E_q[z_d | x] per dimension, and how many
    exceed ``threshold``.

    .. math:: A_s = \\#\\{d : \\mathrm{Var}_x(\\mathbb{E}_{q(z|x)}[z_{s,d}]) > 0.01\\}

    With ``noise`` (the variance of each Monte Carlo mean, from :func:`posterior_moments`) the
    variance is Var_x(m̂) − mean_x(s²/M), unbiased for any M ≥ 2 draws: the draws' own spread adds
    mean_x(s²/M) to the variance of the estimated means.

    :param dict means: ``{site: [N, ...]}`` from :func:`posterior_means` (N ≥ 2).
    :returns: dict ``{site: (int, tensor [D])}``.
    """
    out = {}
    for name, m in means.items():
        if len(m) < 2:
            raise UserError(
                "active units need at least 2 images to take a variance over the data, got "
                f"{len(m)}"
            )
        var = m.reshape(len(m), -1).double().var(0)
        if noise is not None:
            var = var - noise[name].reshape(len(m), -1).double().mean(0)
        out[name] = (int((var > threshold).sum()), var)
    return out


def _kl_per_dim_of_site(name, guide_trace, model_trace):
    """Per-element KL of one latent site, shape ``batch + event`` (analytic when possible, else one
    MC draw)."""
    q_site, p_site = guide_trace.nodes[name], model_trace.nodes.get(name)
    if p_site is None:
        raise ValueError(
            f"the guide samples {name!r} but the model has no site of that name; "
            f"model and guide must share site names"
        )
    return elementwise_kl(q_site["fn"], p_site["fn"], q_site["value"])


@torch.no_grad()
def _latent_pass(
    model,
    guide,
    x,
    *args,
    num_particles=1,
    batch_size=1000,
    per_dim=True,
    data_plate=None,
    batch_call=None,
    max_elements=2**16,
    **kwargs,
):
    """One pass over ``x``: per-image recon and KL ``[N]``, and (``per_dim``) per-site per-dimension
    KL ``[N, D]`` (None for a site whose q does not factorize). ``batch_size`` data points at a time
    with every particle, or (``batch_size=None``) all of them at once with at most ``max_elements //
    N`` particles per pass."""
    call = _caller(x, args, kwargs, batch_call)
    a, kw = call(slice(0, 2) if batch_size else slice(None))
    mpn = guess_max_plate_nesting(model, guide, *a, data_plate=data_plate, **kw)
    per_pass = (
        num_particles if batch_size else particles_per_pass(num_particles, len(x), max_elements)
    )
    recon, kl, site_kl = [], [], {}
    options = dict(max_plate_nesting=mpn, data_plate=data_plate)
    for rows in row_chunks(len(x), batch_size):
        a, kw = call(rows)
        draw = functools.partial(_particle_sums, model, guide, a, {**options, **kw}, per_dim)
        r, k_l, sites = mean_over_particles(draw, num_particles, per_pass)
        recon.append(r)
        kl.append(k_l)
        for name, t in sites.items():
            site_kl.setdefault(name, []).append(t)
    site_kl = {
        n: (None if any(t is None for t in ts) else torch.cat(ts)) for n, ts in site_kl.items()
    }
    return torch.cat(recon), torch.cat(kl), site_kl


def _particle_sums(model, guide, args, kwargs, per_dim, k):
    """Sums over ``k`` particles of recon ``[B]``, KL ``[B]`` and (``per_dim``) each site's KL per
    dimension ``{site: [B, D] or None}``; ``kwargs`` go to
    :func:`~pyro_vae.estimators.importance.log_weights`."""
    w = log_weights(model, guide, *args, num_particles=k, **kwargs)
    particle_dim = -(kwargs["max_plate_nesting"] + 1)
    sites = _latent_sites(w.guide_trace) if per_dim else ()
    return (
        w.obs.sum(0),
        (w.guide - w.prior).sum(0),
        {name: _kl_per_dim(name, w, k, particle_dim) for name in sites},
    )


def _kl_per_dim(name, w, k, particle_dim):
    """Σ over the k particles of :class:`LogWeights` ``w`` of the KL of each dimension of latent
    site ``name``, ``[B, D]`` (a scalar site, such as a class label, is one dimension); None where q
    does not factorize."""
    site = w.guide_trace.nodes[name]
    t = _kl_per_dim_of_site(name, w.guide_trace, w.model_trace)
    if t is None:
        return None
    t = per_particle_and_point(t, site, particle_dim, site["fn"].event_dim, w.data_plate.name)
    return t.reshape(*t.shape[:2], -1).expand(k, -1, -1).sum(0)  # [K', B', D] -> [B, D]


def collapse_warnings(active, dims, kl):
    """Warnings (strings) when the posterior has collapsed: no active unit in a site, or under 10 %
    overall, or KL ≈ 0."""
    out = []
    for name, count in active.items():
        if count == 0:
            out.append(
                f"posterior collapse: latent site {name!r} has no active unit out of {dims[name]} "
                f"(Var_x E_q[z] <= {ACTIVE_THRESHOLD} in every dimension); the decoder ignores it"
            )
    total, total_dims = sum(active.values()), sum(dims.values())
    if total and total < 0.1 * total_dims:
        out.append(f"posterior collapse: only {total} of {total_dims} latent dimensions are active")
    if kl < 0.1:
        out.append(
            f"posterior collapse: mean KL(q‖p) is {kl:.3g} nats per image; the latents carry no "
            "information"
        )
    return out


SITE_KL_THRESHOLD = (
    0.01  # nats per image: a latent site (group) with less KL carries no information
)


def kl_per_site(per_dim):
    """Mean KL of each latent site (a group of a hierarchical model), nats per image, from
    :func:`_latent_pass`'s per-dimension KL ``{site: [N, D] or None}``; for a conditional group it
    is E KL(q(z_l | z_<l, x) ‖ p(z_l | z_<l)), the groups above drawn from the guide. ``None`` for a
    site whose q does not factorize."""
    return {n: (None if t is None else t.double().sum(1).mean().item()) for n, t in per_dim.items()}


def collapsed_sites(site_kl, counts, threshold=SITE_KL_THRESHOLD):
    """Sites (in order) whose KL is under ``threshold`` nats per image or that have no active
    unit."""
    return [
        n
        for n in counts
        if counts[n] == 0 or (site_kl.get(n) is not None and site_kl[n] < threshold)
    ]


def site_collapse_warning(collapsed, site_kl, total):
    """One warning naming the collapsed sites of a model with several sites, or None."""
    if not collapsed or total < 2:
        return None
    kl = ", ".join(
        f"{n} ({site_kl[n]:.3g} nats)" if site_kl.get(n) is not None else n for n in collapsed
    )
    return (
        f"posterior collapse: {len(collapsed)} of {total} latent groups carry (almost) no "
        "information "
        f"(KL < {SITE_KL_THRESHOLD} nats per image or no active unit): {kl}"
    )


def recon_mse(model, guide, x, *args, batch_size=1000, batch_call=None, **kwargs):
    """Mean squared error per pixel, ``mean((E[x|z] − x)²)`` with z ~ q(z|x) and images in [0, 1]:
    the likelihood's mean (Bernoulli probs, the Gaussian's loc, the 8-bit grey level) against the
    observed values, averaged over every observed site's values and the images. One figure across
    likelihoods."""
    call = _caller(x, args, kwargs, batch_call)
    total, count = 0.0, 0
    with torch.no_grad():
        for rows in row_chunks(len(x), batch_size):
            a, kw = call(rows)
            guide_trace = poutine.trace(guide).get_trace(*a, **kw)
            trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*a, **kw)
            for site in trace.nodes.values():
                image = site["type"] == "sample" and site["is_observed"]
                if image and site["value"].shape[1 - x.dim() :] == x.shape[1:]:  # not labels
                    err = (site["fn"].mean - site["value"]).double().pow(2)
                    total, count = total + err.sum().item(), count + err.numel()
    return total / max(count, 1)


def evaluate(
    model,
    guide,
    x,
    *args,
    nll_samples=5000,
    elbo_particles=1,
    mean_samples=64,
    batch_size=1000,
    verbose=True,
    data_plate=None,
    batch_call=None,
    max_elements=2**16,
    **kwargs,
):
    """Evaluate a model/guide pair on data ``x`` by tracing the pair; return a JSON-ready dict.

    Keys (means per image, nats):

    ``elbo`` = ``recon`` − ``kl``; ``recon`` = E_q[log p(x|z)]; ``kl`` = E_q[log q(z|x) − log p(z)]
    ≥ 0 (MC, ``elbo_particles`` draws); ``nll`` = −log p(x) by importance sampling with
    ``nll_samples`` draws (omitted when 0; see :func:`~pyro_vae.log_likelihood`); ``bits_per_dim`` =
    nll / (D ln 2) beside it when the observed images have an 8-bit likelihood (D values per image);
    ``active_units`` (int for one latent site, else a list per site in guide order); ``latent_dims``
    (the same shape: dimensions per site); ``kl_per_dim`` (list of floats, or a list of lists per
    site; ``None`` where q does not factorize); ``latent_sites``; ``kl_per_site`` (``{site: KL nats
    per image}``, for a hierarchical model each group's KL given the groups above);
    ``collapsed_sites`` (sites with KL < 0.01 nats or no active unit); ``nll_samples``; ``images``;
    ``warnings`` (collapse diagnostics, also printed to stderr when ``verbose``, else issued as
    :class:`UserWarning`). ``data_plate``: the plate over data points, where the trace cannot tell
    (see :func:`~pyro_vae.core.pair`).

    The pair is called as SVI calls it, with ``batch_call(x[rows], idx[rows]) -> (args, kwargs)``
    (default ``model(x[rows])``, :func:`~pyro_vae.core.pair.batch_as_argument`) followed by ``*args,
    **kwargs``. It takes ``x`` in chunks of ``batch_size`` data points when it runs on part of the
    data (:func:`~pyro_vae.estimators.importance.runs_per_point`); otherwise (data closed over, a
    non-amortized guide) on all of ``x`` at once, with at most ``max_elements`` particle ×
    data-point pairs per pass.
    """
    _check_counts(len(x), nll_samples, elbo_particles)
    call = _caller(x, args, kwargs, batch_call)
    batch_size, data_plate = _plan(model, guide, call, batch_size, data_plate)
    options = dict(data_plate=data_plate, batch_call=batch_call, batch_size=batch_size, **kwargs)
    recon, kl, per_dim = _latent_pass(
        model, guide, x, *args, num_particles=elbo_particles, max_elements=max_elements, **options
    )
    recon, kl = recon.double(), kl.double()
    means = posterior_means(guide, x, *args, mc_samples=mean_samples, **options)
    active = active_units(means)
    counts = {n: a[0] for n, a in active.items()}
    dims = {n: a[1].numel() for n, a in active.items()}
    result = dict(elbo=(recon - kl).mean().item(), recon=recon.mean().item(), kl=kl.mean().item())
    result.update(_latent_summary(counts, dims, per_dim))
    result.update(images=len(x), nll_samples=nll_samples)
    result["recon_mse"] = recon_mse(
        model, guide, x, *args, batch_size=batch_size, batch_call=batch_call, **kwargs
    )
    if nll_samples:
        result.update(_nll(model, guide, call, nll_samples, batch_size, data_plate, max_elements))
    _diagnose(result, counts, dims, per_dim, verbose)
    return result


def _plan(model, guide, call, batch_size, data_plate):
    """``(batch_size, data_plate)`` of :func:`evaluate`: ``batch_size`` is None (all data points at
    once) when the pair cannot run on part of the data; the data plate's name is found from the
    pair."""
    if not runs_per_point(model, guide, call, data_plate):
        batch_size = None  # all of x at once
    a, kw = call(slice(0, 2) if batch_size else slice(None))
    return batch_size, checked_probe(model, guide, *a, data_plate=data_plate, **kw).data_plate.name


def _check_counts(images, nll_samples, elbo_particles):
    if images < 2:
        raise UserError(
            f"evaluate needs at least 2 images (active units take a variance over the data), "
            f"got {images}"
        )
    if nll_samples < 0 or elbo_particles < 1:
        raise UserError(
            f"{option('nll_samples')} must be >= 0 and elbo_particles >= 1, got {nll_samples} and "
            f"{elbo_particles}"
        )


def _latent_summary(counts, dims, per_dim):
    """:func:`evaluate`'s ``active_units``, ``latent_dims``, ``kl_per_dim`` (one value for one site,
    else a list per site in guide order) and ``latent_sites``."""
    sites = list(counts)
    kl_dims = {n: (None if per_dim.get(n) is None else per_dim[n].mean(0).tolist()) for n in sites}
    one = len(sites) == 1
    out = {
        key: v[sites[0]] if one else [v[n] for n in sites]
        for key, v in (("active_units", counts), ("latent_dims", dims), ("kl_per_dim", kl_dims))
    }
    out["latent_sites"] = sites
    return out


def _nll(model, guide, call, nll_samples, batch_size, data_plate, max_elements):
    """:func:`evaluate`'s ``nll`` (−log p(x) per image, importance-sampled) and, for an 8-bit
    likelihood, ``bits_per_dim``."""
    a, kw = call(slice(0, 1) if batch_size else slice(None))
    # a discrete likelihood: nats of a discrete distribution
    values = discrete_dims(model, *a, **kw)
    # 8-bit decoders emit K or 256 numbers per value: fewer particle × image pairs per pass
    # (≤ 2²² values)
    memory = {"max_elements": max(1, 2**22 // values) if values else max_elements}
    a, kw = call(slice(None))
    lp = log_likelihood(
        model, guide, *a, num_samples=nll_samples, data_plate=data_plate, **memory, **kw
    )
    out = {"nll": -lp.mean().item()}
    if values:
        out["bits_per_dim"] = out["nll"] / (values * math.log(2))
    return out


def _diagnose(result, counts, dims, per_dim, verbose):
    """Add :func:`evaluate`'s ``kl_per_site``, ``collapsed_sites`` and ``warnings`` to ``result``,
    and print the warnings to stderr (``verbose``) or issue them as :class:`UserWarning` from
    evaluate's caller."""
    result["kl_per_site"] = {n: v for n, v in kl_per_site(per_dim).items() if n in counts}
    result["collapsed_sites"] = collapsed_sites(result["kl_per_site"], counts)
    result["warnings"] = collapse_warnings(counts, dims, result["kl"])
    group_warning = site_collapse_warning(
        result["collapsed_sites"], result["kl_per_site"], len(counts)
    )
    if group_warning:
        result["warnings"].append(group_warning)
    for w in result["warnings"]:
        if verbose:
            print(f"warning: {w}", file=sys.stderr)
        else:
            _warnings.warn(w, UserWarning, stacklevel=3)
