"""The guide's latent sites, their posterior means E_q[z | x] and active units, read by tracing the
guide in the order it samples them.

* posterior means E_q[z | x]: the site's ``fn.mean`` when the distribution has one, else a Monte
  Carlo mean of its samples;
* active units (Burda et al. 2016, "Importance Weighted Autoencoders"): dimension d of a site is
  active when Var_x(E_q[z_d | x]) > 0.01.
"""

import pyro
import torch
from pyro import poutine
from pyro.poutine.util import prune_subsample_sites

from pyro_vae.core.checks import UserError
from pyro_vae.core.chunks import row_chunks
from pyro_vae.core.pair import plate_nesting, row_caller
from pyro_vae.estimators.importance import PARTICLE_PLATE, per_particle_and_point

ACTIVE_THRESHOLD = 0.01


def latent_names(trace):
    """Names of the latent (unobserved) sample sites of ``trace``, in sampling order."""
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
    return latent_names(trace)


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
    for name in latent_names(guide_trace):
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
    ``x`` (see :func:`~pyro_vae.evaluate`); ``batch_size``: at most this many rows × draws per pass
    through the guide (a pass of 1000 rows × 8 draws of the deep hierarchy's activations misses
    the caches: 1.8× slower than eight of 125 rows), ``None``: all rows at once.
    """
    if mc_samples < 1:
        raise UserError(f"mc_samples must be >= 1, got {mc_samples}")
    call = row_caller(x, args, kwargs, batch_call)
    chunks = row_chunks(len(x), batch_size and max(1, batch_size // mc_samples))
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
            every = latent_names(trace)
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
