"""The trainer's fast path: a pair's loss traced once with :func:`torch.jit.trace`, then replayed without Pyro.

Pyro's ``JitTrace_ELBO`` also traces the loss, but every call still looks each
parameter up in the param store under two effect handlers.  :class:`TracedLoss`
traces ``Trace_ELBO.differentiable_loss`` as a function of the param store's
unconstrained tensors and ``x``; a step is then one graph replay plus backward.

A trace freezes Python control flow and constants (the batch size, the data
plate's scale, a β or temperature read from Python), so it is only used where
it is valid: for ``Trace_ELBO``, without per-batch keyword arguments, for pairs
that declare ``jit_compatible = True`` (``fast="auto"``: the built-in VAE unless
its guide has flows, pyro-ppl/pyro#3132, and the hierarchical VAE) or any pair
with ``fast=True``; one trace per batch size; and only after the traced loss
has equalled the plain loss for the same random numbers on two different
batches of each size.
"""
import contextlib
import warnings

import pyro
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO


class TracedLoss:
    """``loss(x) = elbo.differentiable_loss(model, guide, x)`` for batches of ``len(x)``, as a torch.jit graph.

    :attr:`params` are the unconstrained param-store tensors the graph reads (its inputs
    besides ``x``), in name order; gradients reach them as usual.
    """

    def __init__(self, elbo, model, guide, x):
        with poutine.block(), poutine.trace(param_only=True) as capture:
            elbo.differentiable_loss(model, guide, x)  # registers every parameter
        self.names = sorted(capture.trace.nodes)
        store = pyro.get_param_store()
        self.params = [store.get_param(name).unconstrained() for name in self.names]

        def loss(*inputs):  # the pair reads the same tensors from the param store: the tracer sees them as inputs
            return elbo.differentiable_loss(model, guide, inputs[-1])

        with warnings.catch_warnings(), _items_stay_tensors():
            warnings.simplefilter("ignore")  # tracer warnings about Pyro's checks; torch.jit.trace's deprecation
            self.graph = torch.jit.trace(loss, (*self.params, x), check_trace=False)

    def __call__(self, x):
        return self.graph(*self.params, x)


@contextlib.contextmanager
def _items_stay_tensors():
    """Keep Trace_ELBO's ``torch_item`` values as (detached) tensors while tracing.

    ``Trace_ELBO.differentiable_loss`` returns ``loss + (surrogate − item(surrogate))`` with
    ``loss`` summed from ``.item()`` floats; a trace would freeze those floats as constants of
    the first batch.  As detached tensors they are recomputed at every replay: the value is
    this step's ELBO and the gradient the surrogate's, as in the plain loss.
    """
    import pyro.infer.trace_elbo as trace_elbo

    original = trace_elbo.torch_item
    trace_elbo.torch_item = lambda x: x.detach() if torch.is_tensor(x) else x
    try:
        yield
    finally:
        trace_elbo.torch_item = original


@contextlib.contextmanager
def traced_normal_draws():
    """Draw standard normals outside ``torch.jit.trace`` the way they are drawn inside it.

    ``torch.distributions`` draws ``empty().normal_()`` eagerly but ``torch.normal(zeros, ones)``
    under tracing: the same distribution, other numbers.  With this patch a plain and a traced
    loss see the same noise for the same RNG state, so they can be compared exactly.
    """
    import torch.distributions.normal as normal_module

    original = normal_module._standard_normal

    def draw(shape, dtype, device):
        return torch.normal(torch.zeros(shape, dtype=dtype, device=device), torch.ones(shape, dtype=dtype, device=device))

    normal_module._standard_normal = draw
    try:
        yield
    finally:
        normal_module._standard_normal = original


def blocker(elbo, model, guide, mode="auto", batch_kwargs=None):
    """Why the loss of this pair cannot be traced, or None.  ``mode``: ``"auto"``, ``True`` or ``False``."""
    if not mode:
        return "turned off"
    owners = [getattr(fn, "__self__", fn) for fn in (model, guide)]
    if mode == "auto" and not all(getattr(o, "jit_compatible", False) is True for o in owners):
        return ("the pair does not declare jit_compatible = True (set it on a pair with no data-dependent "
                "control flow, or pass fast=True to try tracing it)")
    if type(elbo) is not Trace_ELBO:
        return f"only Trace_ELBO is traced, not {type(elbo).__name__}"
    if batch_kwargs is not None:
        return "per-batch keyword arguments (labels) would be frozen into the trace"
    for owner in owners:
        if getattr(owner, "jit_compatible", True) is False:
            return f"{type(owner).__name__} says it breaks jit tracing (e.g. flows, pyro-ppl/pyro#3132)"
    return None


def trace_losses(elbo, model, guide, batches):
    """``({batch size: TracedLoss}, None)``, or ``({}, why)`` when a traced loss differs from the plain one.

    ``batches`` must hold two different batches of each size used in training.  The RNG state
    is restored afterwards, so training draws the same numbers with or without the fast path.
    """
    rng = pyro.util.get_rng_state()
    traced = {}
    try:
        for x in batches:
            pyro.util.set_rng_state(rng)
            with torch.no_grad(), traced_normal_draws():
                plain = elbo.differentiable_loss(model, guide, x)
            if len(x) not in traced:
                traced[len(x)] = TracedLoss(elbo, model, guide, x)
            pyro.util.set_rng_state(rng)
            with torch.no_grad():
                replay = traced[len(x)](x)
            if not (replay - plain).abs() <= 1e-4 * (1 + plain.abs()):
                return {}, (f"the traced loss ({replay.item():.6g}) differs from the plain one ({plain.item():.6g}) "
                            f"on a batch of {len(x)}: the pair has data-dependent control flow or state")
    except Exception as e:  # tracing failed
        return {}, f"tracing failed ({type(e).__name__}: {' '.join(str(e).split())[:200]})"
    finally:
        pyro.util.set_rng_state(rng)
    return traced, None
