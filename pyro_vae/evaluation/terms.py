"""The ELBO's terms of every image, by tracing the pair: recon_i = E_q[log p(x_i|z)] and
kl_i = E_q[log q(z|x_i) − log p(z)] ≥ 0 (nats; ELBO_i = recon_i − kl_i is maximised).

The KL of each latent dimension, E_x KL(q(z_d|x) ‖ p(z_d)), is analytic when the guide's and
prior's elementwise base distributions have a registered ``kl_divergence``, else Monte Carlo
E_q[log q(z_d|x) − log p(z_d)]; ``None`` for a site whose q does not factorize over dimensions (e.g.
a flow or a full-covariance Gaussian).
"""

import functools

import torch
from pyro import poutine

from pyro_vae.core.checks import UserError
from pyro_vae.core.chunks import mean_over_particles, particles_per_pass, row_chunks
from pyro_vae.core.kl import elementwise_kl
from pyro_vae.core.pair import row_caller
from pyro_vae.estimators.importance import (
    guess_max_plate_nesting,
    log_weights,
    per_particle_and_point,
)
from pyro_vae.evaluation.latents import latent_names


def elbo_terms(model, guide, x, *args, num_particles=1, batch_size=1000, batch_call=None, **kwargs):
    """Per-image Monte Carlo ``(recon, kl)`` averaged over ``num_particles``, each of shape ``[N]``.

    recon_i = E_q[log p(x_i|z)], kl_i = E_q[log q(z|x_i) − log p(z)], ELBO_i = recon_i − kl_i.
    ``batch_call``: how the pair takes rows of ``x`` (see :func:`~pyro_vae.evaluate`);
    ``batch_size=None``: all at once.
    """
    recon, kl, _ = latent_pass(
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


@torch.no_grad()
def latent_pass(
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
    with every particle, or (``batch_size=None``) all of them at once with at most
    ``max_elements // N`` particles per pass."""
    call = row_caller(x, args, kwargs, batch_call)
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
    sites = latent_names(w.guide_trace) if per_dim else ()
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


def _kl_per_dim_of_site(name, guide_trace, model_trace):
    """Per-element KL of one latent site, shape ``batch + event`` (analytic when possible, else one
    MC draw)."""
    q_site, p_site = guide_trace.nodes[name], model_trace.nodes.get(name)
    if p_site is None:
        raise UserError(
            f"the guide samples {name!r} but the model has no site of that name; "
            f"model and guide must share site names"
        )
    return elementwise_kl(q_site["fn"], p_site["fn"], q_site["value"])


def kl_per_site(per_dim):
    """Mean KL of each latent site (a group of a hierarchical model), nats per image, from
    :func:`latent_pass`'s per-dimension KL ``{site: [N, D] or None}``; for a conditional group it
    is E KL(q(z_l | z_<l, x) ‖ p(z_l | z_<l)), the groups above drawn from the guide. ``None`` for a
    site whose q does not factorize."""
    return {n: (None if t is None else t.double().sum(1).mean().item()) for n, t in per_dim.items()}


def recon_mse(model, guide, x, *args, batch_size=1000, batch_call=None, **kwargs):
    """Mean squared error per pixel, ``mean((E[x|z] − x)²)`` with z ~ q(z|x) and images in [0, 1]:
    the likelihood's mean (Bernoulli probs, the Gaussian's loc, the 8-bit grey level) against the
    observed values, averaged over every observed site's values and the images. One figure across
    likelihoods."""
    call = row_caller(x, args, kwargs, batch_call)
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
