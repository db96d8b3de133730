"""One training step of a pair captured as one graph: the loss *and its gradients*, replayed without
Pyro.

Pyro's ``JitTrace_ELBO`` traces the forward loss only: every step still looks
each parameter up in the param store under effect handlers, and autograd
rebuilds and walks its tape.  :class:`TracedStep` records one call of

.. math:: (\\mathcal{L}, \\nabla_\\theta \\mathcal{L}) =
          (\\texttt{elbo.differentiable\\_loss}(x),\\; \\texttt{torch.autograd.grad}(\\mathcal{L},
          \\theta))

with :func:`torch.fx.experimental.proxy_tensor.make_fx`, which sees every ATen op of the forward
*and* of the backward pass on real tensors (so Pyro's handlers, the surrogate's ``detach`` and the
autograd tape are all resolved at trace time). The forward is captured first and its repeated pure
ops merged (:mod:`.cse`: the path model and guide share runs once), then that merged forward is
traced again with its gradients, so the shared path's backward also runs once (``merge_backward``).
The ATen graph does not say what autograd alone knows (a custom ``autograd.Function``'s backward, a
``no_grad`` block): where that changes the gradients the proof fails and :func:`~.fast.trace_steps`
captures forward and backward together in one trace. A step is then one replay of that graph
returning the loss, a finiteness flag and the gradients, with no Pyro and no autograd in between:
the fx graph itself (its ATen ops called from Python), or TorchInductor after
:meth:`TracedStep.compile`. The loss must read nothing on the host (``elbo.traceable``;
:mod:`pyro_vae.estimators.trace` keeps Pyro's ELBOs on the device). Every tensor the loss reads
besides the parameters and ``x`` becomes an input of the graph (:func:`lift_constants`); ops whose
output shape depends on the data are refused (:func:`data_dependent_shapes`). Which pairs are
traced, and the proof that a replay equals the plain loss, are in :mod:`pyro_vae.estimators.fast`.
"""

import contextlib
import copy
import functools
import time
import warnings

import pyro
import torch
from pyro import poutine
from torch.utils._python_dispatch import TorchDispatchMode

from pyro_vae.estimators.bindings import with_bindings
from pyro_vae.estimators.cse import eliminate_common_subexpressions


class TracedStep:
    """``loss, ok, grads = step(x, **kwargs)``: −ELBO of a batch of ``len(x)``, whether it and every
    gradient are finite, and ``∂ loss / ∂ params``, from one graph.

    :attr:`params` are the unconstrained param-store tensors the graph reads (its inputs besides
    ``x``), in name order; ``grads`` follow that order (None for a parameter the loss does not
    depend on). ``kwargs``: per-batch tensors passed to model and guide (e.g. labels ``y``), inputs
    of the graph too.
    :attr:`merged` counts the ops merged (:mod:`.cse`), :attr:`backward_merged` says whether the
    gradients are those of the merged forward (``merge_backward`` and something to merge).
    :attr:`backend` says what replays the graph: ``"fx"`` (the make_fx graph run as Python), or
    ``"inductor"`` after :meth:`compile`. ``elbo`` must read nothing on the host (``traceable``, see
    :func:`pyro_vae.estimators.trace.device_twin`).
    """

    def __init__(self, elbo, model, guide, x, kwargs=None, merge_backward=True):
        from torch.fx.experimental.proxy_tensor import make_fx

        kwargs = dict(kwargs or {})
        for key, value in kwargs.items():
            if not torch.is_tensor(value):
                raise Untraceable(
                    f"the per-batch keyword argument {key!r} is a {type(value).__name__}, not a "
                    f"tensor: a trace would freeze it"
                )
        self.keys = sorted(kwargs)
        writes = (
            _Writes()
        )  # what the loss updates in place (a running σ*) is put back after tracing
        with poutine.block(), poutine.trace(param_only=True) as capture, writes:
            elbo.differentiable_loss(model, guide, x, **kwargs)  # registers every parameter
        self.names = sorted(capture.trace.nodes)
        store = pyro.get_param_store()
        self.params = [store.get_param(name).unconstrained() for name in self.names]
        n = len(self.params)

        def loss_of(*inputs):
            return elbo.differentiable_loss(
                model, guide, inputs[n], **dict(zip(self.keys, inputs[n + 1 :]))
            )

        def step(*inputs, loss_of=loss_of):
            # the pair reads the same tensors from the param store: make_fx sees them as inputs
            loss = loss_of(*inputs)
            grads = torch.autograd.grad(loss, inputs[:n], allow_unused=True)
            self.used = [
                g is not None for g in grads
            ]  # a parameter the loss does not reach gets no gradient
            grads = [g for g in grads if g is not None]
            # a sum of everything is finite iff every entry is (or it overflows, ~1e38 in float32:
            # also bad)
            ok = torch.isfinite(sum((g.sum() for g in grads), loss.detach()))
            return (loss.detach(), ok, *grads)

        inputs = (*self.params, x, *(kwargs[k] for k in self.keys))
        with _traceable(), writes.undo():
            self.merged, self.backward_merged = 0, False
            if merge_backward:  # the forward alone, its shared paths merged, then differentiated
                forward = make_fx(loss_of)(*inputs)
                self.merged = eliminate_common_subexpressions(forward)
                if self.merged:
                    step, self.backward_merged = functools.partial(step, loss_of=forward), True
            graph = make_fx(step)(*inputs)
            graph.graph.eliminate_dead_code()
            self.merged += eliminate_common_subexpressions(graph)  # a path model and guide share
            why = data_dependent_shapes(graph)
            if why:
                raise Untraceable(why)
            self.state = lift_constants(graph)
        self.fx = graph  # what inductor compiles; the fx route replays its copy with bindings
        rng, saved = pyro.util.get_rng_state(), [t.clone() for t in self.state]
        try:
            self.bound = with_bindings(graph, [*inputs, *self.state])
        finally:
            pyro.util.set_rng_state(rng)
            put_back(self.state, saved)
        self.graph, self.backend = self.bound, "fx"
        self.compile_seconds, self.cache_hit, self.cudagraphs = None, None, False

    def compile(self, x, kwargs=None):
        """Replay through TorchInductor from now on (``torch._inductor.compile`` of the make_fx
        graph: no Dynamo, no guards per call), as one CUDA graph on CUDA (``triton.cudagraphs``,
        what ``torch.compile(mode= "reduce-overhead")`` does: the step's kernels launched as one
        graph from static buffers, into which the inputs are copied on the device; no host sync).
        Compiles now, on ``x``.

        Random ops call torch's own generator (``fallback_random``), so a replay draws the plain
        loss's numbers. Returns None, or why not (inductor missing or failing: the current replay
        stays). The compiled graph is kept on disk by inductor's FX graph cache (keyed on the graph,
        its inputs and torch's version), so another process that captures the same configuration
        loads it instead of compiling:
        :attr:`cache_hit` says which happened, :attr:`compile_seconds` what it cost.
        """
        try:
            import torch._inductor
        except ImportError as e:
            return f"torch._inductor is not available ({e})"
        kwargs = kwargs or {}
        inputs = [*self.params, x, *(kwargs[k] for k in self.keys), *self.state]
        cudagraphs = x.device.type == "cuda"
        options = {"fallback_random": True, "triton.cudagraphs": cudagraphs}
        rng, saved = pyro.util.get_rng_state(), [t.clone() for t in self.state]
        hits = _cache_hits()
        start = time.perf_counter()
        try:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")
                compiled = torch._inductor.compile(
                    copy.deepcopy(self.fx), _static_fakes(inputs), options
                )
                compiled(
                    *inputs
                )  # the first call finishes compiling (and records the CUDA graph's warm-up)
        except Exception as e:  # a compiler missing or failing: keep the current replay
            return f"compiling failed ({type(e).__name__}: {' '.join(str(e).split())[:200]})"
        finally:
            pyro.util.set_rng_state(rng)
            put_back(self.state, saved)
        self.graph, self.backend, self.cudagraphs = compiled, "inductor", cudagraphs
        self.compile_seconds = time.perf_counter() - start
        self.cache_hit = _cache_hits() > hits
        return None

    def uncompile(self):
        """Go back to replaying the fx graph."""
        self.graph, self.backend, self.cudagraphs = self.bound, "fx", False

    def __call__(self, x, **kwargs):
        if self.cudagraphs:  # a new step: the outputs of the last replay are no longer read
            torch.compiler.cudagraph_mark_step_begin()
        with torch.no_grad():
            loss, ok, *grads = self.graph(
                *self.params, x, *(kwargs[k] for k in self.keys), *self.state
            )
        grads = iter(grads)
        return loss, ok, [next(grads) if used else None for used in self.used]


class _Writes(TorchDispatchMode):
    """Records the tensors that ops write in place, with their values before the first write;
    :meth:`undo` puts them back at the end of its block (tracing runs the loss for real, twice; the
    plain path has not yet)."""

    def __init__(self):
        super().__init__()
        self.saved = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        for i, a in enumerate(func._schema.arguments):
            if a.alias_info is not None and a.alias_info.is_write:
                t = kwargs.get(a.name, args[i] if i < len(args) else None)
                if torch.is_tensor(t) and id(t) not in self.saved:
                    self.saved[id(t)] = (t, t.clone())
        return func(*args, **kwargs)

    @contextlib.contextmanager
    def undo(self):
        try:
            yield
        finally:
            with torch.no_grad():
                for t, value in reversed(list(self.saved.values())):
                    t.copy_(value)


class Untraceable(ValueError):
    """The pair's loss cannot be replayed from one trace; the message says why."""


# ops whose output shape depends on the values of their inputs: a trace would freeze the first
# batch's
# shape
_DATA_DEPENDENT = {
    "nonzero",
    "nonzero_numpy",
    "argwhere",
    "masked_select",
    "_unique",
    "_unique2",
    "unique_dim",
    "unique_consecutive",
    "unique_dim_consecutive",
    "bincount",
    "_local_scalar_dense",
}
_INDEXING = {
    "index",
    "_unsafe_index",
    "index_put",
    "index_put_",
    "_index_put_impl_",
    "_unsafe_index_put",
}


def data_dependent_shapes(graph):
    """Why ``graph`` (from make_fx) cannot be replayed on other data, or None: the ops whose output
    shape depends on tensor values (nonzero, masked_select, unique, boolean-mask indexing
    ``x[mask]`` / ``x[mask] = v``, …)."""
    found = []
    for node in graph.graph.nodes:
        if node.op != "call_function" or not hasattr(node.target, "overloadpacket"):
            continue
        name = node.target.overloadpacket.__name__
        if name == "repeat_interleave" and node.target._overloadname in ("Tensor", "self_Tensor"):
            found.append(name)  # repeats given by a tensor
        elif name in _DATA_DEPENDENT:
            found.append(name)
        elif name in _INDEXING and len(node.args) > 1 and isinstance(node.args[1], (list, tuple)):
            masks = [
                i
                for i in node.args[1]
                if isinstance(i, torch.fx.Node)
                and getattr(i.meta.get("val"), "dtype", None) in (torch.bool, torch.uint8)
            ]
            if masks:
                found.append(f"{name} with a boolean mask")
    if not found:
        return None
    return (
        "the loss has ops whose output shape depends on the data "
        f"({', '.join(sorted(set(found)))}), "
        f"which a trace would freeze at the first batch's shape"
    )


def lift_constants(graph):
    """Make every tensor that ``graph`` read from outside its inputs (module buffers, a β or
    temperature tensor, a running σ*) an input of the graph, after the others; return those tensors.
    Literals stay constants.

    A replay given the same objects then reads their current values, as the plain loss does, and
    writes the in-place updates of the plain loss (e.g. a running average) back into them.
    """
    nodes = [
        n
        for n in graph.graph.nodes
        if n.op == "get_attr"
        and torch.is_tensor(getattr(graph, n.target, None))
        and not all(u.target is torch.ops.aten.lift_fresh_copy.default for u in n.users)
    ]
    # (a tensor only copied by lift_fresh_copy is a literal, torch.tensor(...), that the loss
    # creates
    # afresh at every call: it stays a constant, on the graph's device for a CUDA graph)
    last = [n for n in graph.graph.nodes if n.op == "placeholder"][-1]
    inputs, state = {}, []
    for node in nodes:
        if node.target not in inputs:  # one input per tensor, however often it is read
            with graph.graph.inserting_after(last):
                last = inputs[node.target] = graph.graph.placeholder(f"state_{len(state)}")
            last.meta = dict(node.meta)
            state.append(getattr(graph, node.target))
        node.replace_all_uses_with(inputs[node.target])
        graph.graph.erase_node(node)
    for target in inputs:
        delattr(graph, target)
    graph.recompile()
    return state


@contextlib.contextmanager
def _traceable():
    """What tracing needs of Pyro: no distribution argument checks (they read tensors on the host;
    the replay is compared with the plain, validated loss before it is used), and quiet tracer
    warnings."""
    with pyro.validation_enabled(False), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _static_fakes(tensors):
    """Fake copies of ``tensors`` (shapes fixed) under a fake mode with a shape environment:
    inductor's FX-graph and AOT-autograd caches key a graph on them (a make_fx graph on real tensors
    has none, and bypasses both)."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.symbolic_shapes import ShapeEnv

    mode = FakeTensorMode(shape_env=ShapeEnv())
    return [mode.from_tensor(t, static_shapes=True) for t in tensors]


def _cache_hits():
    """Inductor's count of FX-graph cache hits in this process (0 where torch does not count
    them)."""
    try:
        from torch._dynamo.utils import counters
    except ImportError:
        return 0
    return counters["inductor"]["fxgraph_cache_hit"]


def put_back(tensors, values):
    with torch.no_grad():
        for t, v in zip(tensors, values):
            t.copy_(v)
