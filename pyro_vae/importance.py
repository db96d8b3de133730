"""Per-data-point importance weights of a model/guide pair, and log p(x) by importance sampling.

For K particles z_k ~ q(z|x_i) the log-weights are
``log w_ik = log p(x_i, z_ik) − log q(z_ik | x_i)``; every estimator and every
evaluation figure in pyro_vae is built from them.  Log-densities are taken
*unscaled* (no subsampling factor, no ``poutine.scale``) and split per element
of the data plate, so any pair that follows the model/guide contract works.
"""
import math
from typing import NamedTuple

import pyro
import torch
from pyro import poutine
from pyro.poutine.util import prune_subsample_sites

from .validation import check_images, check_pair_runs, check_positive_int

PARTICLE_PLATE = "_particles"


class LogWeights(NamedTuple):
    """Per-particle, per-data-point log-densities, each of shape ``[K, B]``.

    ``obs``: Σ log p(x | z) over observed sites; ``prior``: Σ log p(z) over latent
    sites of the model; ``guide``: Σ log q(z | x).  ``model_trace`` and
    ``guide_trace`` are the vectorized traces they came from.
    """

    obs: torch.Tensor
    prior: torch.Tensor
    guide: torch.Tensor
    model_trace: object
    guide_trace: object

    @property
    def log_w(self):
        """log w = log p(x, z) − log q(z|x)."""
        return self.obs + self.prior - self.guide


def plate_nesting(*traces):
    """The number of batch dims the vectorized plates of ``traces`` use."""
    dims = [-f.dim for tr in traces for site in tr.nodes.values() if site["type"] == "sample"
            for f in site["cond_indep_stack"] if f.vectorized]
    return max(dims, default=0)


def guess_max_plate_nesting(model, guide, x, *args, **kwargs):
    """Trace the pair once and return the number of batch dims its plates use.

    Raises ValueError when an observed site's data would be broadcast to its distribution's
    shape (data of the wrong shape that torch would silently expand).
    """
    with poutine.block():
        guide_trace = poutine.trace(guide).get_trace(x, *args, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x, *args, **kwargs)
    for name, site in model_trace.nodes.items():
        if site["type"] == "sample" and site["is_observed"] and torch.is_tensor(site["value"]):
            shape, value = tuple(site["fn"].shape()), tuple(site["value"].shape)
            if torch.broadcast_shapes(shape, value) != value:
                raise ValueError(f"the observed site {name!r} got data of shape {value} but its distribution has "
                                 f"shape {shape}: the data would be broadcast; give data whose shape matches")
    return plate_nesting(model_trace, guide_trace)


def per_particle_and_point(t, site, particle_dim, event_ndims=0, data_plate="data"):
    """A per-element tensor of ``site`` (shape ``batch + event``) as ``[K', B', *event]``.

    Batch dims other than the particle plate (dim ``particle_dim``) and the data plate are
    summed out; K' and B' are 1 where ``t`` does not vary over particles or data points.
    """
    frame = next((f for f in site["cond_indep_stack"] if f.name == data_plate), None)
    if frame is None:
        raise ValueError(
            f"sample site {site['name']!r} is not inside the plate {data_plate!r}: per-data-point figures need "
            f"every sample site of model and guide inside it (pass data_plate=NAME if your plate has another name)"
        )
    event = t.shape[t.dim() - event_ndims:]
    batch = t.shape[: t.dim() - event_ndims]
    t = t.reshape((1,) * (-particle_dim - len(batch)) + batch + event)
    other = [d - event_ndims for d in range(particle_dim, 0) if d not in (particle_dim, frame.dim)]
    if other:
        t = t.sum(other, keepdim=True)
    return t.reshape((t.shape[particle_dim - event_ndims], t.shape[frame.dim - event_ndims]) + event)


def _site_terms(site, data_plate, particle_dim, num_particles):
    """Unscaled log-density of one site reduced to ``[K, B]`` (K over particles, B over the data plate)."""
    lp = site["fn"].log_prob(site["value"])
    if site["mask"] is not None:
        lp = lp * site["mask"]
    lp = per_particle_and_point(lp, site, particle_dim, data_plate=data_plate)
    frame = next(f for f in site["cond_indep_stack"] if f.name == data_plate)
    return lp.expand(num_particles, frame.size)


def trace_pair(model, guide, x, *args, num_particles=1, max_plate_nesting=None, replay=None, **kwargs):
    """Trace ``guide`` inside a plate of ``num_particles`` vectorized particles and replay ``model`` against it.

    Returns ``(model_trace, guide_trace, particle_dim)``; the traces still hold their
    subsample sites, so they can be replayed again.  With ``replay`` (a guide trace),
    the guide's latent values are taken from it instead of being drawn, and its
    distributions are re-evaluated at them (DReG and STL replay at detached z).
    """
    if max_plate_nesting is None:
        max_plate_nesting = guess_max_plate_nesting(model, guide, x, *args, **kwargs)
    particle_dim = -(max_plate_nesting + 1)
    traced_guide = guide if replay is None else poutine.replay(guide, trace=replay)
    with pyro.plate(PARTICLE_PLATE, num_particles, dim=particle_dim):
        guide_trace = poutine.trace(traced_guide).get_trace(x, *args, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x, *args, **kwargs)
    return model_trace, guide_trace, particle_dim


def split_log_weights(model_trace, guide_trace, particle_dim, num_particles, batch_size, data_plate="data"):
    """Reduce a traced pair (from :func:`trace_pair`) to its :class:`LogWeights`, each ``[K, B]``."""
    guide_trace = prune_subsample_sites(guide_trace)
    model_trace = prune_subsample_sites(model_trace)
    terms = {"obs": [], "prior": [], "guide": []}
    for site in model_trace.nodes.values():
        if site["type"] == "sample":
            key = "obs" if site["is_observed"] else "prior"
            terms[key].append(_site_terms(site, data_plate, particle_dim, num_particles))
    for site in guide_trace.nodes.values():
        if site["type"] == "sample" and not site["is_observed"]:
            terms["guide"].append(_site_terms(site, data_plate, particle_dim, num_particles))
    first = next((t for ts in terms.values() for t in ts), None)
    if first is None:
        raise ValueError(f"the model and guide have no sample sites inside the plate {data_plate!r}")
    obs, prior, q = (sum(ts, first.new_zeros(num_particles, batch_size)) for ts in terms.values())
    return LogWeights(obs, prior, q, model_trace, guide_trace)


def log_weights(model, guide, x, *args, num_particles=1, data_plate="data", max_plate_nesting=None, replay=None,
                **kwargs):
    """Draw ``num_particles`` vectorized particles from ``guide`` and return their :class:`LogWeights`.

    ``guide(x, *args, **kwargs)`` is traced inside a plate over particles at dim
    ``-(max_plate_nesting + 1)`` and ``model`` is replayed against it; z keeps its
    reparameterized path, so the result is differentiable.  ``replay``: see :func:`trace_pair`.
    """
    model_trace, guide_trace, particle_dim = trace_pair(model, guide, x, *args, num_particles=num_particles,
                                                        max_plate_nesting=max_plate_nesting, replay=replay, **kwargs)
    return split_log_weights(model_trace, guide_trace, particle_dim, num_particles, len(x), data_plate)


def data_plate_scale(trace, data_plate="data"):
    """The subsampling factor ``full_size / size`` of the data plate in ``trace`` (1.0 when not subsampled)."""
    for site in trace.nodes.values():
        for f in site.get("cond_indep_stack", ()):
            if f.name == data_plate:
                return f.full_size / f.size if f.full_size else 1.0
    raise ValueError(f"no site of the trace is inside the plate {data_plate!r}; put every sample site of model and "
                     f"guide inside it (pass data_plate=NAME if your plate has another name)")


def extra_scale(site, data_plate="data"):
    """A site's scale divided by its data plate's subsampling factor: β from ``poutine.scale`` and other plates' factors.

    Returns 1.0 for a site whose only scaling is the data plate's subsampling.
    """
    factor = 1.0
    for f in site["cond_indep_stack"]:
        if f.name == data_plate and f.full_size:
            factor = f.full_size / f.size
    return site["scale"] / factor


@torch.no_grad()
def log_likelihood(model, guide, x, *args, num_samples=5000, batch_size=None, max_elements=2**16, data_plate="data",
                   **kwargs):
    """Importance-sampled log p(x_i) for every data point, a tensor of shape ``[N]`` (float64).

    .. math:: \\log p(x_i) \\approx \\log \\frac{1}{K} \\sum_{k=1}^K \\frac{p(x_i, z_k)}{q(z_k | x_i)}, \\quad z_k \\sim q(z | x_i)

    The estimate is a stochastic lower bound that tightens as ``num_samples`` grows
    (it is the IWAE bound with K = ``num_samples``).  Memory is bounded by
    ``max_elements`` particle×data-point pairs per pass, whatever K and N are; the
    log-sum-exp is accumulated in float64 on x's device.

    :param int batch_size: data points per pass (default: ``max_elements`` // particles per pass, at least 1).
    """
    check_positive_int("num_samples", num_samples)
    check_images(x, "x")  # a tensor of finite values, checked once per call
    n = len(x)
    if batch_size is None:
        batch_size = max(1, min(n, max_elements // min(num_samples, max_elements)))
    chunk = max(1, min(num_samples, max_elements // batch_size))
    mpn = check_pair_runs(model, guide, x[:1], *args, **kwargs)  # a shape that does not fit: one ValueError
    out = []
    for start in range(0, n, batch_size):
        xb = x[start : start + batch_size]
        total = torch.full((len(xb),), -math.inf, dtype=torch.float64, device=x.device)
        done = 0
        while done < num_samples:
            k = min(chunk, num_samples - done)
            lw = log_weights(model, guide, xb, *args, num_particles=k, data_plate=data_plate,
                             max_plate_nesting=mpn, **kwargs).log_w
            total = torch.logaddexp(total, torch.logsumexp(lw.double(), dim=0))
            done += k
        out.append(total - math.log(num_samples))
    return torch.cat(out)
