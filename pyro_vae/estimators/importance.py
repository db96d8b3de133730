"""Per-data-point importance weights of a model/guide pair, and log p(x) by importance sampling.

For K particles z_k ~ q(z|x_i) the log-weights are
``log w_ik = log p(x_i, z_ik) − log q(z_ik | x_i)``; every estimator and every
evaluation figure in pyro_vae is built from them.  Log-densities are taken
*unscaled* (no subsampling factor, no ``poutine.scale``) and split per element
of the data plate, so any pair that follows the model/guide contract works.
"""

from typing import NamedTuple

import pyro
import torch
from pyro import poutine
from pyro.poutine.util import prune_subsample_sites

from pyro_vae.core.checks import UserError, check_images, check_positive_int
from pyro_vae.core.chunks import mean_over_particles, particles_per_pass, row_chunks
from pyro_vae.core.host_memory import release_freed_memory
from pyro_vae.core.pair import checked_probe, find_data_plate, probe

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
    data_plate: object = (
        None  # the PlateInfo of the data plate (its scale is the subsampling factor N / B)
    )

    @property
    def log_w(self):
        """log w = log p(x, z) − log q(z|x)."""
        return self.obs + self.prior - self.guide


def guess_max_plate_nesting(model, guide, *args, **kwargs):
    """Trace the pair once (:func:`~pyro_vae.core.pair`) and return the number of batch dims its
    plates use.

    Raises ValueError when an observed site's data would be broadcast to its distribution's
    shape (data of the wrong shape that torch would silently expand).
    """
    return probe(model, guide, *args, **kwargs).max_plate_nesting


def per_particle_and_point(t, site, particle_dim, event_ndims=0, data_plate="data"):
    """A per-element tensor of ``site`` (shape ``batch + event``) as ``[K', B', *event]``.

    Batch dims other than the particle plate (dim ``particle_dim``) and the data plate are
    summed out; K' and B' are 1 where ``t`` does not vary over particles or data points.
    """
    frame = next((f for f in site["cond_indep_stack"] if f.name == data_plate), None)
    if frame is None:
        raise UserError(
            f"sample site {site['name']!r} is not inside the data plate {data_plate!r}: "
            "per-data-point bounds and figures need every sample site of model and guide inside "
            "it (a global latent has no weight per data point: train such a pair with "
            "make_elbo('trace'); pass data_plate=NAME to name another plate)"
        )
    event = t.shape[t.dim() - event_ndims :]
    batch = t.shape[: t.dim() - event_ndims]
    t = t.reshape((1,) * (-particle_dim - len(batch)) + batch + event)
    other = [d - event_ndims for d in range(particle_dim, 0) if d not in (particle_dim, frame.dim)]
    if other:
        t = t.sum(other, keepdim=True)
    return t.reshape(
        (t.shape[particle_dim - event_ndims], t.shape[frame.dim - event_ndims]) + event
    )


def _site_terms(site, data_plate, particle_dim, num_particles):
    """Unscaled log-density of one site reduced to ``[K, B]`` (K over particles, B over the data
    plate)."""
    lp = site["fn"].log_prob(site["value"])
    if site["mask"] is not None:
        lp = lp * site["mask"]
    lp = per_particle_and_point(lp, site, particle_dim, data_plate=data_plate)
    frame = next(f for f in site["cond_indep_stack"] if f.name == data_plate)
    return lp.expand(num_particles, frame.size)


def trace_pair(model, guide, *args, num_particles=1, max_plate_nesting=None, replay=None, **kwargs):
    """Trace ``guide(*args, **kwargs)`` inside a plate of ``num_particles`` vectorized particles and
    replay ``model`` against it.

    Returns ``(model_trace, guide_trace, particle_dim)``; the traces still hold their
    subsample sites, so they can be replayed again.  With ``replay`` (a guide trace),
    the guide's latent values are taken from it instead of being drawn, and its
    distributions are re-evaluated at them (DReG and STL replay at detached z).
    """
    if max_plate_nesting is None:
        max_plate_nesting = guess_max_plate_nesting(model, guide, *args, **kwargs)
    particle_dim = -(max_plate_nesting + 1)
    traced_guide = guide if replay is None else poutine.replay(guide, trace=replay)
    with pyro.plate(PARTICLE_PLATE, num_particles, dim=particle_dim):
        guide_trace = poutine.trace(traced_guide).get_trace(*args, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(
            *args, **kwargs
        )
    return model_trace, guide_trace, particle_dim


def traced_data_plate(model_trace, guide_trace=None, data_plate=None):
    """The data plate (:class:`~pyro_vae.core.PlateInfo`) of a traced pair; one ValueError when
    there is none."""
    plate = find_data_plate(model_trace, guide_trace, data_plate, ignore=(PARTICLE_PLATE,))
    if plate is None:
        raise UserError(
            "no plate holds every observed site, so there is no data plate to split log-weights "
            "per data point: put the observed sites in pyro.plate(...), or pass data_plate=NAME"
        )
    return plate


def split_log_weights(model_trace, guide_trace, particle_dim, num_particles, data_plate=None):
    """Reduce a traced pair (from :func:`trace_pair`) to its :class:`LogWeights`, each ``[K, B]``.

    ``data_plate``: the plate's name (default: found from the traces, see
    :func:`~pyro_vae.core.pair`).
    """
    plate = traced_data_plate(model_trace, guide_trace, data_plate)
    guide_trace = prune_subsample_sites(guide_trace)
    model_trace = prune_subsample_sites(model_trace)
    terms = {"obs": [], "prior": [], "guide": []}
    for site in model_trace.nodes.values():
        if site["type"] == "sample":
            key = "obs" if site["is_observed"] else "prior"
            terms[key].append(_site_terms(site, plate.name, particle_dim, num_particles))
    for site in guide_trace.nodes.values():
        if site["type"] == "sample" and not site["is_observed"]:
            terms["guide"].append(_site_terms(site, plate.name, particle_dim, num_particles))
    first = next(t for ts in terms.values() for t in ts)
    obs, prior, q = (
        sum(ts, first.new_zeros(num_particles, plate.subsample_size)) for ts in terms.values()
    )
    return LogWeights(obs, prior, q, model_trace, guide_trace, plate)


def log_weights(
    model,
    guide,
    *args,
    num_particles=1,
    data_plate=None,
    max_plate_nesting=None,
    replay=None,
    **kwargs,
):
    """Draw ``num_particles`` vectorized particles from ``guide`` and return their
    :class:`LogWeights`.

    ``guide(*args, **kwargs)`` is traced inside a plate over particles at dim
    ``-(max_plate_nesting + 1)`` and ``model`` is replayed against it; z keeps its
    reparameterized path, so the result is differentiable.  ``replay``: see :func:`trace_pair`.
    """
    model_trace, guide_trace, particle_dim = trace_pair(
        model,
        guide,
        *args,
        num_particles=num_particles,
        max_plate_nesting=max_plate_nesting,
        replay=replay,
        **kwargs,
    )
    return split_log_weights(model_trace, guide_trace, particle_dim, num_particles, data_plate)


def data_plate_scale(trace, data_plate=None):
    """The subsampling factor ``full_size / size`` of the data plate in ``trace`` (1.0 when not
    subsampled).

    ``data_plate``: its name (default: the plate of the observed sites, else the one named
    ``"data"``).
    """
    if data_plate is None:
        found = find_data_plate(trace, ignore=(PARTICLE_PLATE,))
        data_plate = found.name if found is not None else "data"
    for site in trace.nodes.values():
        for f in site.get("cond_indep_stack", ()):
            if f.name == data_plate:
                return f.full_size / f.size if f.full_size else 1.0
    raise UserError(
        f"no site of the trace is inside the plate {data_plate!r}; put every sample site of model "
        "and guide inside it (pass data_plate=NAME if your plate has another name)"
    )


def extra_scale(site, data_plate="data"):
    """A site's scale divided by its data plate's subsampling factor: β from ``poutine.scale`` and
    other plates' factors.

    Returns 1.0 for a site whose only scaling is the data plate's subsampling.
    """
    factor = 1.0
    for f in site["cond_indep_stack"]:
        if f.name == data_plate and f.full_size:
            factor = f.full_size / f.size
    return site["scale"] / factor


def _split(args, rows):
    """``args`` with every positional tensor that runs over the data points (leading dim =
    ``len(args[0])``) sliced."""
    n = len(args[0])
    return tuple(a[rows] if torch.is_tensor(a) and a.dim() and len(a) == n else a for a in args)


def runs_per_point(model, guide, call, data_plate=None):
    """Whether the pair runs on 2 of its data points with a data plate of 2, so that log p(x), the
    ELBO and the latent figures can be taken in chunks of data points. ``call(rows) -> (args,
    kwargs)``: the pair's arguments on the data points ``rows`` (a slice). A non-amortized guide
    (``pyro.param("loc", zeros(N, d))``) cannot run on part of the data; parameters that the trial
    creates are removed again, and the trial is repeated once they exist at their full size
    (``call(slice(None))``)."""
    store = pyro.get_param_store()
    for attempt in range(2):
        before = set(store.keys())
        try:
            args, kwargs = call(slice(0, 2))
            info = probe(model, guide, *args, data_plate=data_plate, **kwargs)
            ok = info.data_plate is not None and info.data_plate.subsample_size == 2
        except Exception:  # noqa: BLE001 - any failure means: do not split the data
            ok = False
        created = set(store.keys()) - before
        for name in created:
            del store[name]
        if not created:
            return ok
        args, kwargs = call(slice(None))
        probe(
            model, guide, *args, data_plate=data_plate, **kwargs
        )  # registers them at their full size
    return ok


@torch.no_grad()
def log_likelihood(
    model,
    guide,
    *args,
    num_samples=5000,
    batch_size=None,
    max_elements=2**16,
    data_plate=None,
    **kwargs,
):
    """Importance-sampled log p(x_i) for every data point of the data plate, a tensor of shape
    ``[N]`` (float64).

    .. math:: \\log p(x_i) \\approx \\log \\frac{1}{K} \\sum_{k=1}^K \\frac{p(x_i, z_k)}{q(z_k |
    x_i)}, \\quad z_k \\sim q(z | x_i)

    The pair is called as SVI calls it, ``guide(*args, **kwargs)``. The estimate is a stochastic
    lower bound that tightens as ``num_samples`` grows (the IWAE bound with K = ``num_samples``).
    Memory is bounded by ``max_elements`` particle×data-point pairs per pass, whatever K and N are:
    when the first argument is the batch and the pair runs on part of it, data points are taken in
    chunks; otherwise (data closed over, a non-amortized guide) every pass takes all N points and
    ``max_elements // N`` particles. The log-sum-exp is accumulated in float64 on the data's device.

    :param int batch_size: data points per pass (default: ``max_elements`` // particles per pass, at
        least 1).
    :param str data_plate: the plate over data points (default: found from the trace).
    """
    check_positive_int("num_samples", num_samples)
    for i, a in enumerate(args):
        if torch.is_tensor(a) and a.is_floating_point():
            check_images(a, f"argument {i}")  # finite values, checked once per call
    splits = bool(args) and torch.is_tensor(args[0]) and args[0].dim() and len(args[0]) > 1
    if splits and runs_per_point(
        model, guide, lambda rows: (_split(args, rows), kwargs), data_plate
    ):
        mpn = checked_probe(
            model, guide, *_split(args, slice(0, 1)), data_plate=data_plate, **kwargs
        ).max_plate_nesting
        n = len(args[0])
        if batch_size is None:
            batch_size = max(1, min(n, max_elements // min(num_samples, max_elements)))
        chunks = [_split(args, rows) for rows in row_chunks(n, batch_size)]
    else:
        info = checked_probe(
            model, guide, *args, data_plate=data_plate, **kwargs
        )  # one line if it does not fit
        if info.data_plate is None:
            raise UserError(
                "log_likelihood needs a data plate: put the observed sites in pyro.plate(...), or "
                "pass data_plate=NAME"
            )
        mpn, chunks = info.max_plate_nesting, [args]
        batch_size = info.data_plate.subsample_size
    per_pass = particles_per_pass(num_samples, batch_size, max_elements)
    draws = dict(data_plate=data_plate, max_plate_nesting=mpn, **kwargs)
    return torch.cat(
        [_log_mean_weight(model, guide, a, draws, num_samples, per_pass) for a in chunks]
    )


def _log_mean_weight(model, guide, args, kwargs, num_samples, per_pass):
    """log (1/K) Σ_k w_k per data point of one chunk of data, float64, K = ``num_samples``:
    particles drawn ``per_pass`` at a time (:func:`~pyro_vae.core.chunks.mean_over_particles`);
    ``kwargs`` go to :func:`log_weights`."""

    def draw(k):
        w = log_weights(model, guide, *args, num_particles=k, **kwargs)
        lw = torch.logsumexp(w.log_w.double(), dim=0)
        if lw.device.type == "cpu":
            # thousands of passes would otherwise fragment the heap (core.host_memory)
            release_freed_memory()
        return lw

    return mean_over_particles(draw, num_samples, per_pass, log=True)
