"""The trainer's fast path: loss *and gradients* of a pair traced once into one graph, then replayed without Pyro.

Pyro's ``JitTrace_ELBO`` traces the forward loss only: every step still looks
each parameter up in the param store under effect handlers, and autograd
rebuilds and walks its tape.  :class:`TracedStep` records one call of

.. math:: (\\mathcal{L}, \\nabla_\\theta \\mathcal{L}) = (\\texttt{elbo.differentiable\\_loss}(x),\\;
          \\texttt{torch.autograd.grad}(\\mathcal{L}, \\theta))

with :func:`torch.fx.experimental.proxy_tensor.make_fx`, which sees every ATen op of the
forward *and* of the backward pass on real tensors (so Pyro's handlers, the surrogate's
``detach`` and the autograd tape are all resolved at trace time), and hands that graph
to :func:`torch.jit.trace`.  A step is then one TorchScript replay returning the loss, a
finiteness flag and the gradients, with no Python in between and no autograd.

A trace freezes Python control flow and constants (the batch size, the data plate's
scale, a β or temperature read from Python), so it is only used where it is valid: for
``Trace_ELBO`` and estimators that declare ``traceable = True`` (iwae, dreg, stl, renyi),
without per-batch keyword arguments, for pairs that declare
``jit_compatible = True`` (``fast="auto"``: the built-in VAE with any guide, flows included,
and the hierarchical VAE) or any pair with ``fast=True``; one trace
per batch size; and only after the replay has given the plain loss and gradients for
the same random numbers on two different batches of each size.
"""
import contextlib
import warnings

import pyro
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO


class TracedStep:
    """``loss, ok, grads = step(x)``: −ELBO of a batch of ``len(x)``, whether it and every gradient are finite,
    and ``∂ loss / ∂ params``, from one TorchScript graph.

    :attr:`params` are the unconstrained param-store tensors the graph reads (its inputs besides ``x``), in
    name order; ``grads`` follow that order (None for a parameter the loss does not depend on).
    """

    def __init__(self, elbo, model, guide, x):
        from torch.fx.experimental.proxy_tensor import make_fx

        with poutine.block(), poutine.trace(param_only=True) as capture:
            elbo.differentiable_loss(model, guide, x)  # registers every parameter
        self.names = sorted(capture.trace.nodes)
        store = pyro.get_param_store()
        self.params = [store.get_param(name).unconstrained() for name in self.names]

        def step(*inputs):  # the pair reads the same tensors from the param store: make_fx sees them as inputs
            loss = elbo.differentiable_loss(model, guide, inputs[-1])
            grads = torch.autograd.grad(loss, inputs[:-1], allow_unused=True)
            self.used = [g is not None for g in grads]  # a parameter the loss does not reach gets no gradient
            grads = [g for g in grads if g is not None]
            # a sum of everything is finite iff every entry is (or it overflows, ~1e38 in float32: also bad)
            ok = torch.isfinite(sum((g.sum() for g in grads), loss.detach()))
            return (loss.detach(), ok, *grads)

        with _traceable():
            graph = make_fx(step)(*self.params, x)
            graph.graph.eliminate_dead_code()
            graph.recompile()
            self.graph = graph  # runs as Python over ATen ops where TorchScript is gone (it is deprecated)
            if hasattr(torch.jit, "trace"):
                with torch.no_grad():
                    self.graph = torch.jit.trace(graph, (*self.params, x), check_trace=False)

    def __call__(self, x):
        with torch.no_grad():
            loss, ok, *grads = self.graph(*self.params, x)
        grads = iter(grads)
        return loss, ok, [next(grads) if used else None for used in self.used]


@contextlib.contextmanager
def _traceable():
    """Let ``Trace_ELBO`` run under make_fx: no host reads of traced values, no distribution argument checks.

    ``Trace_ELBO.differentiable_loss`` returns ``loss + (surrogate − item(surrogate))`` with ``loss`` summed
    from ``.item()`` floats, and warns on NaN by reading the loss: both would freeze a value of the first
    batch (make_fx refuses).  Here ``torch_item`` keeps a detached tensor, recomputed at every replay (the
    value is this step's ELBO and the gradient the surrogate's, as in the plain loss), and ``warn_if_nan``
    is skipped (the step's finiteness flag replaces it).  Argument validation reads tensors on the host too;
    the replay is compared with the plain, validated loss before it is used.
    """
    import pyro.infer.trace_elbo as trace_elbo

    saved = trace_elbo.torch_item, trace_elbo.warn_if_nan
    trace_elbo.torch_item = lambda x: x.detach() if torch.is_tensor(x) else x
    trace_elbo.warn_if_nan = lambda value, *args, **kwargs: value
    try:
        with pyro.validation_enabled(False), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit.trace's deprecation and tracer warnings
            yield
    finally:
        trace_elbo.torch_item, trace_elbo.warn_if_nan = saved


def blocker(elbo, model, guide, mode="auto", batch_kwargs=None):
    """Why the loss of this pair cannot be traced, or None.  ``mode``: ``"auto"``, ``True`` or ``False``."""
    if not mode:
        return "turned off"
    owners = [getattr(fn, "__self__", fn) for fn in (model, guide)]
    if mode == "auto" and not all(getattr(o, "jit_compatible", False) is True for o in owners):
        return ("the pair does not declare jit_compatible = True (set it on a pair with no data-dependent "
                "control flow, or pass fast=True to try tracing it)")
    if type(elbo) is not Trace_ELBO and getattr(elbo, "traceable", False) is not True:
        return f"only Trace_ELBO and estimators with traceable = True are traced, not {type(elbo).__name__}"
    if batch_kwargs is not None:
        return "per-batch keyword arguments (labels) would be frozen into the trace"
    for owner in owners:
        if getattr(owner, "jit_compatible", True) is False:
            return f"{type(owner).__name__} says it cannot be traced (jit_compatible = False)"
    return None


def _differs(a, b):
    if a is None or b is None:
        return (a is None) != (b is None)
    return not (a - b).abs().max() <= 1e-4 * (1 + b.abs().max())


def trace_steps(elbo, model, guide, batches):
    """``({batch size: TracedStep}, None)``, or ``({}, why)`` when a replay differs from the plain loss or gradients.

    ``batches`` must hold two different batches of each size used in training.  The RNG state
    is restored afterwards, so training draws the same numbers with or without the fast path.
    """
    rng = pyro.util.get_rng_state()
    traced = {}
    try:
        for x in batches:
            if len(x) not in traced:
                traced[len(x)] = TracedStep(elbo, model, guide, x)
            step = traced[len(x)]
            pyro.util.set_rng_state(rng)
            plain = elbo.differentiable_loss(model, guide, x)
            plain_grads = torch.autograd.grad(plain, step.params, allow_unused=True)
            pyro.util.set_rng_state(rng)
            loss, _, grads = step(x)
            if _differs(loss, plain.detach()):
                return {}, (f"the traced loss ({loss.item():.6g}) differs from the plain one ({plain.item():.6g}) "
                            f"on a batch of {len(x)}: the pair has data-dependent control flow or state")
            for name, g, p in zip(step.names, grads, plain_grads):
                if _differs(g, p):
                    return {}, f"the traced gradient of {name!r} differs from the plain one on a batch of {len(x)}"
    except Exception as e:  # tracing failed
        if "_local_scalar_dense" in str(e):
            return {}, ("the pair reads a tensor's value in Python (data-dependent control flow, .item(), "
                        "bool(tensor)), which a trace cannot follow")
        return {}, f"tracing failed ({type(e).__name__}: {' '.join(str(e).split())[:200]})"
    finally:
        pyro.util.set_rng_state(rng)
    return traced, None
