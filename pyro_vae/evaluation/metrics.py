"""Evaluation of a trained model/guide pair, computed by tracing the pair itself: :func:`evaluate`
gathers the ELBO's terms (:mod:`.terms`), −log p(x) by importance sampling
(:func:`~pyro_vae.estimators.importance.log_likelihood`), the posterior means and active units
(:mod:`.latents`) and the collapse diagnostics (:mod:`.collapse`) into one JSON-ready dict.

Signs: ``elbo`` and ``recon`` are maximised (nats per image, ``elbo = recon − kl``),
``kl`` ≥ 0, ``nll = −log p(x)`` is positive and ``nll ≤ −elbo``. Latent sites are read in the order
the guide samples them.
"""

import math
import sys
import warnings as _warnings

from pyro_vae.core.checks import UserError, option
from pyro_vae.core.pair import checked_probe, row_caller
from pyro_vae.estimators.importance import log_likelihood, runs_per_point
from pyro_vae.evaluation.collapse import collapse_warnings, collapsed_sites, site_collapse_warning
from pyro_vae.evaluation.latents import active_units, latent_sites, posterior_means
from pyro_vae.evaluation.terms import (
    elbo_per_point,
    elbo_terms,
    kl_per_site,
    latent_pass,
    recon_mse,
)
from pyro_vae.models.likelihoods import discrete_dims

# the figures' functions, importable from here as before the split
__all__ = [
    "evaluate",
    "active_units",
    "latent_sites",
    "posterior_means",
    "elbo_per_point",
    "elbo_terms",
    "recon_mse",
]


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
    call = row_caller(x, args, kwargs, batch_call)
    batch_size, data_plate = _plan(model, guide, call, batch_size, data_plate)
    options = dict(data_plate=data_plate, batch_call=batch_call, batch_size=batch_size, **kwargs)
    recon, kl, per_dim = latent_pass(
        model, guide, x, *args, num_particles=elbo_particles, max_elements=max_elements, **options
    )
    recon, kl = recon.double(), kl.double()
    active = active_units(posterior_means(guide, x, *args, mc_samples=mean_samples, **options))
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
    # D values per image of a discrete likelihood (nats of a discrete distribution), else 0; 8-bit
    # decoders emit K or 256 numbers per value: fewer particle × image pairs per pass (≤ 2²²)
    values = discrete_dims(model, *a, **kw)
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
