"""The proof that a captured step replays the plain one: :func:`check_step` runs the plain loss
and the replay on the same batch with the same random numbers and compares the loss, every gradient
and every buffer update, within the float rounding of a sum over the batch (:func:`difference`).
A failed proof names what differs, by how much and what rounding allows; :mod:`.fast` then takes
the plain loss and says so in the run's log."""

import math

import pyro
import torch

from pyro_vae.estimators.capture import put_back


# how many float rounding errors of one sum a replay may differ by (inductor fuses and reorders the
# plain loss's ops; the fx replay runs them as they are and differs by none)
ROUNDING_ERRORS = 16


def difference(a, b, terms):
    """``(max |a − b|, tolerance)`` of a replayed tensor ``a`` against the plain ``b``, or None
    where they agree. Each entry of a loss, gradient or buffer update is a float sum over up to
    ``terms`` terms (every element of the batch), whose rounding error grows as √terms·ε·|value|:

    .. math:: \\max |a - b| \\le c \\sqrt{n}\\, ε \\max |b|, \\qquad c = 16

    (ε of ``b``'s dtype, c = :data:`ROUNDING_ERRORS`). One of them None: an infinite difference."""
    if a is None or b is None:
        return None if (a is None) == (b is None) else (math.inf, 0.0)
    eps = torch.finfo(b.dtype).eps if b.is_floating_point() else 0.0
    diff = (a - b).abs().max().item() if a.numel() else 0.0
    tolerance = (
        ROUNDING_ERRORS * math.sqrt(terms) * eps * (b.abs().max().item() if b.numel() else 0)
    )
    return None if diff <= tolerance else (diff, tolerance)


def check_step(step, elbo, model, guide, x, kwargs=None):
    """Why the replay of ``step`` on batch ``x`` differs from the plain loss, gradients and buffer
    updates (same random numbers), or None. Leaves the tensors the step reads (module buffers) as
    they were; the RNG state advanced by one step."""
    kwargs = kwargs or {}
    rng = pyro.util.get_rng_state()
    state = [t.clone() for t in step.state]
    try:
        plain = elbo.differentiable_loss(model, guide, x, **kwargs)
        plain_grads = torch.autograd.grad(plain, step.params, allow_unused=True)
        after = [t.clone() for t in step.state]
        put_back(step.state, state)
        pyro.util.set_rng_state(rng)
        loss, _, grads = step(x, **kwargs)
        replayed = [t.clone() for t in step.state]
    finally:
        put_back(step.state, state)
    terms = x.numel()
    off = difference(loss, plain.detach(), terms)
    if off:
        return (
            f"the traced loss ({loss.item():.6g}) differs from the plain one ({plain.item():.6g}) "
            f"by {off[0]:.3g}, more than float rounding allows ({off[1]:.3g}), on a batch of "
            f"{len(x)}: the pair has data-dependent control flow or state"
        )
    for name, g, p in zip(step.names, grads, plain_grads):
        off = difference(g, p, terms)
        if off:
            return (
                f"the traced gradient of {name!r} differs from the plain one by {off[0]:.3g}, more "
                f"than float rounding allows ({off[1]:.3g}; max |plain| "
                f"{0 if p is None else p.abs().max().item():.3g}) on a batch of {len(x)}"
            )
    for t, a in zip(replayed, after):
        off = difference(t, a, terms) if t.is_floating_point() else None
        if off:
            return (
                f"the traced update of a buffer of shape {tuple(t.shape)} differs from the "
                f"plain one by {off[0]:.3g}, more than float rounding allows ({off[1]:.3g})"
            )
    return None
