"""Passes that bound memory: data points in chunks of rows, particles drawn in passes and combined.

An average over K particles of B data points holds K × B values at once; with at most
``max_elements`` of them per pass, the particles are drawn ``particles_per_pass`` at a time and
their per-pass sums (or log-sum-exps) are combined into one mean,

.. math:: \\frac{1}{K} \\sum_{k=1}^K f_k \\quad \\text{or} \\quad
    \\log \\frac{1}{K} \\sum_{k=1}^K e^{f_k},

the second accumulated with ``logaddexp``, so the result does not depend on how K is split (up to
round-off).  Used by :func:`~pyro_vae.estimators.importance.log_likelihood` and
:mod:`pyro_vae.evaluation.terms`.
"""

import math

import torch


def row_chunks(n, batch_size):
    """Slices of ``batch_size`` rows over ``n`` rows (one slice of all for ``batch_size=None``)."""
    if batch_size is None:
        return [slice(None)]
    return [slice(start, start + batch_size) for start in range(0, n, batch_size)]


def particles_per_pass(num_particles, points, max_elements):
    """Particles per pass so that a pass over ``points`` data points holds at most ``max_elements``
    particle × data-point pairs (at least 1, at most ``num_particles``)."""
    return max(1, min(num_particles, max_elements // points))


def _combine(total, part, log):
    if total is None or part is None:
        return None
    if isinstance(total, tuple):
        return tuple(_combine(t, p, log) for t, p in zip(total, part))
    if isinstance(total, dict):
        return {k: _combine(total[k], part[k], log) for k in total}
    return torch.logaddexp(total, part) if log else total + part


def _finish(total, num_particles, log):
    if total is None:
        return None
    if isinstance(total, tuple):
        return tuple(_finish(t, num_particles, log) for t in total)
    if isinstance(total, dict):
        return {k: _finish(t, num_particles, log) for k, t in total.items()}
    return total - math.log(num_particles) if log else total / num_particles


def mean_over_particles(draw, num_particles, per_pass, log=False):
    """The mean over ``num_particles`` particles drawn in passes of at most ``per_pass``.

    ``draw(k)`` draws k particles and returns their sum over the k (``log=True``: their
    log-sum-exp): a tensor, or a tuple or dict of tensors, where None (a value that does not exist)
    stays None.  Returns the same structure holding (1/K) Σ_k (``log=True``: log (1/K) Σ_k exp),
    K = ``num_particles``.

    >>> import torch
    >>> f = torch.arange(6.0)
    >>> seen = []
    >>> def draw(k):
    ...     part = f[len(seen) : len(seen) + k]
    ...     seen.extend(part.tolist())
    ...     return part.sum()
    >>> mean_over_particles(draw, 6, per_pass=4)  # passes of 4 and 2 particles
    tensor(2.5000)
    """
    total, done = None, 0
    while done < num_particles:
        k = min(per_pass, num_particles - done)
        part = draw(k)
        total = part if done == 0 else _combine(total, part, log)
        done += k
    return _finish(total, num_particles, log)


__all__ = ["mean_over_particles", "particles_per_pass", "row_chunks"]
