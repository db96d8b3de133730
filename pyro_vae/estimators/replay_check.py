"""The proof that a captured step replays the plain one: :func:`check_step` runs the plain loss
and the replay on the same batch with the same random numbers and compares the loss, every gradient
and every buffer update, within the float rounding of a sum over the batch (:func:`difference`).

That bound is quick but rough: rounding also compounds through the layers of a deep net, and a sum
whose terms cancel rounds by far more than its result's size suggests. So what exceeds it goes to
a referee, the same plain step in float64 (:func:`exact_step`): the replay passes when it is as
close to that exact value as the plain float32 step is, within :data:`ROUNDING_ERRORS` times
(:func:`as_accurate`). A wrong graph (a frozen Python number, a lost custom backward) is off by
orders of magnitude more than either's rounding. A failed proof names what differs, by how much,
and both errors; :mod:`.fast` then takes the plain loss and says so in the run's log."""

import logging
import math

import pyro
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map

from pyro_vae.estimators.capture import put_back

logger = logging.getLogger(__name__)


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


def as_accurate(a, b, exact):
    """``(max |a − exact|, max |b − exact|)``, or None where the replayed ``a`` is as close to the
    float64 ``exact`` as the plain ``b`` is: max |a − exact| ≤ c · max |b − exact| (c =
    :data:`ROUNDING_ERRORS`)."""
    if a is None or b is None or exact is None:
        return None if a is None and b is None else (math.inf, 0.0)
    exact = exact.double()
    off, own = (a.double() - exact).abs().max().item(), (b.double() - exact).abs().max().item()
    return None if off <= ROUNDING_ERRORS * own else (off, own)


class _DrawInFloat32(TorchDispatchMode):
    """Random ops on float64 tensors draw in float32 and widen the result: the float64 step sees
    the random numbers of the float32 step it referees (CPU generators draw other bits for
    float64)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if torch.Tag.nondeterministic_seeded not in func.tags:
            return func(*args, **kwargs)
        narrow = lambda t: t.float() if torch.is_tensor(t) and t.dtype == torch.float64 else t  # noqa: E731
        a, kw = tree_map(narrow, args), tree_map(narrow, kwargs)
        if kw.get("dtype") == torch.float64:
            kw["dtype"] = torch.float32
        out = func(*a, **kw)
        if func._schema.is_mutable:  # normal_, uniform_, bernoulli_, …: into the float64 tensor
            args[0].copy_(a[0])
            return args[0]
        return tree_map(
            lambda t: t.double() if torch.is_tensor(t) and t.dtype == torch.float32 else t, out
        )


def exact_step(step, elbo, model, guide, x, kwargs, rng):
    """``(loss, grads, buffers after)`` of the plain step in float64, from RNG state ``rng``, with
    the float32 step's random numbers: the referee of :func:`check_step`. Every tensor the step
    reads is widened in place for the call and put back."""
    tensors = [t for t in (*step.params, *step.state) if t.is_floating_point()]
    saved = [t.data for t in tensors]
    wide = lambda t: t.double() if torch.is_tensor(t) and t.is_floating_point() else t  # noqa: E731
    pyro.util.set_rng_state(rng)
    try:
        for t in tensors:
            t.data = t.data.double()
        with _DrawInFloat32():
            loss = elbo.differentiable_loss(model, guide, wide(x), **tree_map(wide, kwargs))
            grads = torch.autograd.grad(loss, step.params, allow_unused=True)
        return loss.detach(), grads, [t.detach().clone() for t in step.state]
    finally:
        for t, data in zip(tensors, saved):
            t.data = data


def _referee(step, elbo, model, guide, x, kwargs, rng):
    """The float64 step (:func:`exact_step`), or why it cannot referee: it fails, or two runs of
    it differ (the pair reads Python state that changes between calls, which it would then judge
    by another function than the plain step's)."""
    try:
        first = exact_step(step, elbo, model, guide, x, kwargs, rng)
        again = exact_step(step, elbo, model, guide, x, kwargs, rng)
    except Exception as e:  # noqa: BLE001 - a pair that cannot run in float64
        return f"{type(e).__name__}: {' '.join(str(e).split())[:120]}"
    for a, b in zip([first[0], *first[1], *first[2]], [again[0], *again[1], *again[2]]):
        if (a is None) != (b is None) or (
            a is not None and (a - b).abs().max() > 1e-9 * a.abs().max()
        ):
            return "two runs of it differ: the pair reads state that changes between calls"
    return first


def check_step(step, elbo, model, guide, x, kwargs=None):
    """Why the replay of ``step`` on batch ``x`` differs from the plain loss, gradients and buffer
    updates (same random numbers) by more than float rounding, or None: within
    :func:`difference`'s bound, or else as accurate as the plain step against the float64 step
    (:func:`as_accurate`). Leaves the tensors the step reads (module buffers) as they were; the RNG
    state advanced by one step."""
    kwargs = kwargs or {}
    rng = pyro.util.get_rng_state()
    state = [t.clone() for t in step.state]
    try:
        plain = elbo.differentiable_loss(model, guide, x, **kwargs)
        plain_grads = torch.autograd.grad(plain, step.params, allow_unused=True)
        after = [t.clone() for t in step.state]
        put_back(step.state, state)
        end = pyro.util.get_rng_state()
        pyro.util.set_rng_state(rng)
        loss, _, grads = step(x, **kwargs)
        replayed = [t.clone() for t in step.state]
    finally:
        put_back(step.state, state)
    terms = x.numel()
    plain = plain.detach()
    # (what, replayed, plain, index into the exact step's (loss, grads, buffers))
    checks = [("loss", loss, plain, (0, None))]
    checks += [
        (name, g, p, (1, i)) for i, (name, g, p) in enumerate(zip(step.names, grads, plain_grads))
    ]
    checks += [
        (f"buffer {tuple(t.shape)}", t, a, (2, i))
        for i, (t, a) in enumerate(zip(replayed, after))
        if t.is_floating_point()
    ]
    return _judge(
        checks,
        terms,
        len(x),
        lambda: _referee(step, elbo, model, guide, x, kwargs, rng),
        state,
        step,
        end,
    )


def _judge(checks, terms, size, referee, state, step, end):
    """Why a replayed value of ``checks`` differs beyond rounding, or None (see :func:`check_step`);
    ``referee()`` makes the float64 step once, where the quick bound is exceeded."""
    exact, why = None, None
    try:
        for what, a, b, (part, i) in checks:
            off = difference(a, b, terms)
            if off is None:
                continue
            if exact is None:
                exact = referee()
            if isinstance(exact, str):
                why = _message(what, a, b, off, size, f"no float64 referee: {exact}")
                break
            value = exact[part] if i is None else exact[part][i]
            errors = as_accurate(a, b, value)
            if errors is None:
                logger.info(
                    f"replay check: {what} differs from the plain step by {off[0]:.3g} (quick "
                    f"bound {off[1]:.3g}) but is as accurate against the float64 step (error "
                    f"{(a.double() - value.double()).abs().max().item():.3g}, the plain step's "
                    f"{(b.double() - value.double()).abs().max().item():.3g}): float rounding"
                )
            else:
                why = _message(
                    what,
                    a,
                    b,
                    off,
                    size,
                    f"against the float64 step its error is {errors[0]:.3g}, the plain step's "
                    f"{errors[1]:.3g}",
                )
                break
    finally:
        if exact is not None:
            put_back(step.state, state)
            pyro.util.set_rng_state(end)
    return why


def _message(what, a, b, off, size, referee):
    if what == "loss":
        return (
            f"the traced loss ({a.item():.6g}) differs from the plain one ({b.item():.6g}) "
            f"by {off[0]:.3g}, more than float rounding allows ({off[1]:.3g}; {referee}), on a "
            f"batch of {size}: the pair has data-dependent control flow or state"
        )
    if what.startswith("buffer"):
        return (
            f"the traced update of a {what} differs from the plain one by {off[0]:.3g}, more "
            f"than float rounding allows ({off[1]:.3g}; {referee})"
        )
    return (
        f"the traced gradient of {what!r} differs from the plain one by {off[0]:.3g}, more than "
        f"float rounding allows ({off[1]:.3g}; max |plain| "
        f"{0 if b is None else b.abs().max().item():.3g}; {referee}) on a batch of {size}"
    )
