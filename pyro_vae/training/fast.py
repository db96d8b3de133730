"""The trainer's fast path: loss *and gradients* of a pair traced once into one graph, then replayed without Pyro.

Pyro's ``JitTrace_ELBO`` traces the forward loss only: every step still looks
each parameter up in the param store under effect handlers, and autograd
rebuilds and walks its tape.  :class:`TracedStep` records one call of

.. math:: (\\mathcal{L}, \\nabla_\\theta \\mathcal{L}) = (\\texttt{elbo.differentiable\\_loss}(x),\\;
          \\texttt{torch.autograd.grad}(\\mathcal{L}, \\theta))

with :func:`torch.fx.experimental.proxy_tensor.make_fx`, which sees every ATen op of the
forward *and* of the backward pass on real tensors (so Pyro's handlers, the surrogate's
``detach`` and the autograd tape are all resolved at trace time).  A step is then one replay
of that graph returning the loss, a finiteness flag and the gradients, with no Pyro and no
autograd in between.  What replays it is decided per run:

* **TorchInductor** (``torch._inductor.compile`` of the graph: no Dynamo, so no guards per
  call; on CUDA one CUDA graph per step, as ``torch.compile(mode="reduce-overhead")``) when the
  run's planned steps would take at least :data:`COMPILE_WHEN_SECONDS` through the replay
  below: compiling costs seconds (cached on disk by inductor across runs);
* else :func:`torch.jit.trace` (TorchScript, deprecated in torch ≥ 2.15 but the cheapest
  replay to build), or the fx graph itself run as Python where TorchScript is gone or cannot
  take an op (``convolution_backward`` of conv nets).

A trace freezes Python control flow, Python numbers and tensor shapes, so it is made safe
by construction where it can be and proven where it cannot:

* every tensor the loss reads besides the parameters and ``x`` (module buffers, a β or
  warm-up weight from :meth:`~pyro_vae.estimators.variants.KLSchedule.weights`, a temperature) becomes
  an input of the graph (:func:`lift_constants`), so a replay reads its current value and
  writes back its in-place updates, as the plain loss does;
* ops whose output shape depends on the data (``nonzero``, ``masked_select``, ``unique``,
  boolean-mask indexing: the spline flow's inside/outside split) are refused at trace time
  (:func:`data_dependent_shapes`);
* ``Trace_ELBO``, ``TraceMeanField_ELBO`` and estimators that declare ``traceable = True``
  (iwae, dreg, stl, renyi, free bits) are traced, per-batch keyword arguments (labels) included
  when they are tensors; every pair is tried unless it declares ``jit_compatible = False``;
* one trace per batch size, used only after the replay has given the plain loss, gradients
  and buffer updates for the same random numbers on two different batches of each size
  (:func:`check_step`); the trainer repeats that proof at each epoch's start, and drops the
  fast path when a value read from Python has changed since.
"""
import contextlib
import copy
import time
import warnings

import pyro
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO
from torch.utils._python_dispatch import TorchDispatchMode


class TracedStep:
    """``loss, ok, grads = step(x, **kwargs)``: −ELBO of a batch of ``len(x)``, whether it and every gradient are
    finite, and ``∂ loss / ∂ params``, from one graph.

    :attr:`params` are the unconstrained param-store tensors the graph reads (its inputs besides ``x``), in
    name order; ``grads`` follow that order (None for a parameter the loss does not depend on).
    ``kwargs``: per-batch tensors passed to model and guide (e.g. labels ``y``), inputs of the graph too.
    :attr:`backend` says what replays the graph: ``"torchscript"``, or ``"fx"`` (the make_fx graph run as
    Python) where TorchScript is gone or cannot take an op (``convolution_backward``), or ``"inductor"``
    after :meth:`compile`.
    """

    def __init__(self, elbo, model, guide, x, kwargs=None):
        from torch.fx.experimental.proxy_tensor import make_fx

        kwargs = dict(kwargs or {})
        for key, value in kwargs.items():
            if not torch.is_tensor(value):
                raise Untraceable(f"the per-batch keyword argument {key!r} is a {type(value).__name__}, not a "
                                  f"tensor: a trace would freeze it")
        self.keys = sorted(kwargs)
        writes = _Writes()  # what the loss updates in place (a running σ*) is put back after tracing
        with poutine.block(), poutine.trace(param_only=True) as capture, writes:
            elbo.differentiable_loss(model, guide, x, **kwargs)  # registers every parameter
        self.names = sorted(capture.trace.nodes)
        store = pyro.get_param_store()
        self.params = [store.get_param(name).unconstrained() for name in self.names]
        n = len(self.params)

        def step(*inputs):  # the pair reads the same tensors from the param store: make_fx sees them as inputs
            loss = elbo.differentiable_loss(model, guide, inputs[n], **dict(zip(self.keys, inputs[n + 1 :])))
            grads = torch.autograd.grad(loss, inputs[:n], allow_unused=True)
            self.used = [g is not None for g in grads]  # a parameter the loss does not reach gets no gradient
            grads = [g for g in grads if g is not None]
            # a sum of everything is finite iff every entry is (or it overflows, ~1e38 in float32: also bad)
            ok = torch.isfinite(sum((g.sum() for g in grads), loss.detach()))
            return (loss.detach(), ok, *grads)

        inputs = (*self.params, x, *(kwargs[k] for k in self.keys))
        with _traceable(), writes.undo():
            graph = make_fx(step)(*inputs)
            graph.graph.eliminate_dead_code()
            why = data_dependent_shapes(graph)
            if why:
                raise Untraceable(why)
            self.state = lift_constants(graph)
            self.fx = graph
            self.graph, self.backend = graph, "fx"
            self.compile_seconds, self.cudagraphs = None, False
            if hasattr(torch.jit, "trace"):  # deprecated: gone in a later torch
                try:
                    with torch.no_grad():
                        self.graph = torch.jit.trace(graph, (*inputs, *self.state), check_trace=False)
                    self.backend = "torchscript"
                except RuntimeError:  # an op the TorchScript tracer cannot take (convolution_backward)
                    pass

    def compile(self, x, kwargs=None):
        """Replay through TorchInductor from now on (``torch._inductor.compile`` of the make_fx graph: no Dynamo,
        no guards per call), as one CUDA graph on CUDA (``triton.cudagraphs``, what ``torch.compile(mode=
        "reduce-overhead")`` does: the step's kernels launched as one graph from static buffers, into which
        the inputs are copied on the device; no host sync).  Compiles now, on ``x``.

        Random ops call torch's own generator (``fallback_random``), so a replay draws the plain loss's numbers.
        Returns None, or why not (inductor missing or failing: the current replay stays).  Compiled kernels
        are cached on disk by inductor's FX graph cache, so a second run of the same graph compiles faster.
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
        start = time.perf_counter()
        try:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")
                compiled = torch._inductor.compile(copy.deepcopy(self.fx), inputs, options)
                compiled(*inputs)  # the first call finishes compiling (and records the CUDA graph's warm-up)
        except Exception as e:  # a compiler missing or failing: keep the current replay
            return f"compiling failed ({type(e).__name__}: {' '.join(str(e).split())[:200]})"
        finally:
            pyro.util.set_rng_state(rng)
            _put_back(self.state, saved)
        self.previous = self.graph, self.backend
        self.graph, self.backend, self.cudagraphs = compiled, "inductor", cudagraphs
        self.compile_seconds = time.perf_counter() - start
        return None

    def uncompile(self):
        """Go back to the replay used before :meth:`compile`."""
        self.graph, self.backend = self.previous
        self.cudagraphs = False

    def __call__(self, x, **kwargs):
        if self.cudagraphs:  # a new step: the outputs of the last replay are no longer read
            torch.compiler.cudagraph_mark_step_begin()
        with torch.no_grad():
            loss, ok, *grads = self.graph(*self.params, x, *(kwargs[k] for k in self.keys), *self.state)
        grads = iter(grads)
        return loss, ok, [next(grads) if used else None for used in self.used]


class _Writes(TorchDispatchMode):
    """Records the tensors that ops write in place, with their values before the first write; :meth:`undo` puts
    them back at the end of its block (tracing runs the loss for real, twice; the plain path has not yet)."""

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


# ops whose output shape depends on the values of their inputs: a trace would freeze the first batch's shape
_DATA_DEPENDENT = {"nonzero", "nonzero_numpy", "argwhere", "masked_select", "_unique", "_unique2", "unique_dim",
                   "unique_consecutive", "unique_dim_consecutive", "bincount", "_local_scalar_dense"}
_INDEXING = {"index", "_unsafe_index", "index_put", "index_put_", "_index_put_impl_", "_unsafe_index_put"}


def data_dependent_shapes(graph):
    """Why ``graph`` (from make_fx) cannot be replayed on other data, or None: the ops whose output shape depends on
    tensor values (nonzero, masked_select, unique, boolean-mask indexing ``x[mask]`` / ``x[mask] = v``, …)."""
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
            masks = [i for i in node.args[1] if isinstance(i, torch.fx.Node)
                     and getattr(i.meta.get("val"), "dtype", None) in (torch.bool, torch.uint8)]
            if masks:
                found.append(f"{name} with a boolean mask")
    if not found:
        return None
    return (f"the loss has ops whose output shape depends on the data ({', '.join(sorted(set(found)))}), "
            f"which a trace would freeze at the first batch's shape")


def lift_constants(graph):
    """Make every tensor that ``graph`` read from outside its inputs (module buffers, a β or temperature tensor, a
    running σ*) an input of the graph, after the others; return those tensors.  Literals stay constants.

    A replay given the same objects then reads their current values, as the plain loss does, and writes
    the in-place updates of the plain loss (e.g. a running average) back into them.
    """
    nodes = [n for n in graph.graph.nodes if n.op == "get_attr" and torch.is_tensor(getattr(graph, n.target, None))
             and not all(u.target is torch.ops.aten.lift_fresh_copy.default for u in n.users)]
    # (a tensor only copied by lift_fresh_copy is a literal, torch.tensor(...), that the loss creates afresh at
    # every call: it stays a constant, on the graph's device for a CUDA graph)
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
    """Let ``Trace_ELBO`` (and ``TraceMeanField_ELBO``) run under make_fx: no host reads of traced values, no
    distribution argument checks.

    ``Trace_ELBO.differentiable_loss`` returns ``loss + (surrogate − item(surrogate))`` with ``loss`` summed
    from ``.item()`` floats, and warns on NaN by reading the loss: both would freeze a value of the first
    batch (make_fx refuses).  Here ``torch_item`` keeps a detached tensor, recomputed at every replay (the
    value is this step's ELBO and the gradient the surrogate's, as in the plain loss), and ``warn_if_nan``
    is skipped (the step's finiteness flag replaces it).  Argument validation reads tensors on the host too;
    the replay is compared with the plain, validated loss before it is used.
    """
    import pyro.infer.trace_elbo as trace_elbo
    import pyro.infer.trace_mean_field_elbo as mean_field

    modules = (trace_elbo, mean_field)
    saved = [(m.torch_item, m.warn_if_nan) for m in modules]
    for m in modules:
        m.torch_item = lambda x: x.detach() if torch.is_tensor(x) else x
        m.warn_if_nan = lambda value, *args, **kwargs: value
    try:
        with pyro.validation_enabled(False), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit.trace's deprecation and tracer warnings
            yield
    finally:
        for m, (item, warn) in zip(modules, saved):
            m.torch_item, m.warn_if_nan = item, warn


TRACED_ELBOS = (Trace_ELBO, TraceMeanField_ELBO)


def _owner(fn):
    """The object a model or guide belongs to: ``vae`` for ``vae.model``, also through handlers (``beta_scale``)."""
    while hasattr(fn, "__wrapped__") and not hasattr(fn, "__self__"):
        fn = fn.__wrapped__
    return getattr(fn, "__self__", fn)


def blocker(elbo, model, guide, mode="auto"):
    """Why the loss of this pair cannot be traced, or None.  ``mode``: ``"auto"``, ``True`` or ``False``.

    Every pair is tried (its trace is then proven on real batches, see :func:`trace_steps`) unless it says
    ``jit_compatible = False``.
    """
    if not mode:
        return "turned off"
    if type(elbo) not in TRACED_ELBOS and getattr(elbo, "traceable", False) is not True:
        return (f"only Trace_ELBO, TraceMeanField_ELBO and estimators with traceable = True are traced, "
                f"not {type(elbo).__name__}")
    for owner in (_owner(model), _owner(guide)):
        if getattr(owner, "jit_compatible", True) is False:
            return f"{type(owner).__name__} says it cannot be traced (jit_compatible = False)"
    return None


def _differs(a, b):
    if a is None or b is None:
        return (a is None) != (b is None)
    return not (a - b).abs().max() <= 1e-4 * (1 + b.abs().max())


def trace_steps(elbo, model, guide, batches):
    """``({batch size: TracedStep}, None)``, or ``({}, why)`` when a trace is refused or a replay differs from
    the plain loss or gradients.

    ``batches`` must hold two different batches of each size used in training: tensors ``x``, or pairs
    ``(x, kwargs)`` with the per-batch keyword arguments of model and guide.  The RNG state is restored
    afterwards, so training draws the same numbers with or without the fast path.
    """
    rng = pyro.util.get_rng_state()
    traced = {}
    try:
        for batch in batches:
            x, kwargs = batch if isinstance(batch, tuple) else (batch, {})
            if len(x) not in traced:
                traced[len(x)] = TracedStep(elbo, model, guide, x, kwargs)
            why = check_step(traced[len(x)], elbo, model, guide, x, kwargs)
            if why:
                return {}, why
    except Untraceable as e:
        return {}, str(e)
    except Exception as e:  # tracing failed
        if "_local_scalar_dense" in str(e):
            return {}, ("the pair reads a tensor's value in Python (data-dependent control flow, .item(), "
                        "bool(tensor)), which a trace cannot follow")
        return {}, f"tracing failed ({type(e).__name__}: {' '.join(str(e).split())[:200]})"
    finally:
        pyro.util.set_rng_state(rng)
    return traced, None


def check_step(step, elbo, model, guide, x, kwargs=None):
    """Why the replay of ``step`` on batch ``x`` differs from the plain loss, gradients and buffer updates (same
    random numbers), or None.  Leaves the tensors the step reads (module buffers) as they were; the RNG state
    advanced by one step."""
    kwargs = kwargs or {}
    rng = pyro.util.get_rng_state()
    state = [t.clone() for t in step.state]
    try:
        plain = elbo.differentiable_loss(model, guide, x, **kwargs)
        plain_grads = torch.autograd.grad(plain, step.params, allow_unused=True)
        after = [t.clone() for t in step.state]
        _put_back(step.state, state)
        pyro.util.set_rng_state(rng)
        loss, _, grads = step(x, **kwargs)
        replayed = [t.clone() for t in step.state]
    finally:
        _put_back(step.state, state)
    if _differs(loss, plain.detach()):
        return (f"the traced loss ({loss.item():.6g}) differs from the plain one ({plain.item():.6g}) "
                f"on a batch of {len(x)}: the pair has data-dependent control flow or state")
    for name, g, p in zip(step.names, grads, plain_grads):
        if _differs(g, p):
            return f"the traced gradient of {name!r} differs from the plain one on a batch of {len(x)}"
    for t, a in zip(replayed, after):
        if t.is_floating_point() and _differs(t, a):
            return f"the traced update of a buffer of shape {tuple(t.shape)} differs from the plain one"
    return None


def _put_back(tensors, values):
    with torch.no_grad():
        for t, v in zip(tensors, values):
            t.copy_(v)


# compile when the planned steps of a run would take at least this long through the TorchScript/fx replay:
# compiling costs 3–20 s (less when inductor's cache holds the graph) and saves 10–60 % of a step on a CPU,
# more on CUDA, where the step becomes one CUDA graph launch
COMPILE_WHEN_SECONDS = {"cpu": 120.0, "cuda": 20.0}


def step_seconds(step, x, kwargs=None, repeats=5):
    """Median seconds of one replay of ``step`` on ``x`` (RNG state and buffers left as they were)."""
    kwargs = kwargs or {}
    rng, saved = pyro.util.get_rng_state(), [t.clone() for t in step.state]
    times = []
    try:
        for _ in range(repeats):
            start = time.perf_counter()
            loss = step(x, **kwargs)[0]
            float(loss)  # waits for the device
            times.append(time.perf_counter() - start)
    finally:
        pyro.util.set_rng_state(rng)
        _put_back(step.state, saved)
    return sorted(times)[len(times) // 2]


def compile_steps(traced, elbo, model, guide, batches):
    """:meth:`TracedStep.compile` the step of the first batch's size (the last, shorter batch of an epoch keeps
    its replay: compiling it would cost as much for one step an epoch) and prove it again on the batches of
    that size (as :func:`trace_steps`); on failure it goes back to its earlier replay.  Returns ``(seconds,
    None)`` or ``(None, why not)``."""
    rng = pyro.util.get_rng_state()
    done, start = [], time.perf_counter()
    batches = [b if isinstance(b, tuple) else (b, {}) for b in batches]
    size = len(batches[0][0])
    try:
        for x, kwargs in batches:
            if len(x) != size:
                continue
            step = traced[len(x)]
            if step.backend != "inductor":
                why = step.compile(x, kwargs)
                if why:
                    raise Untraceable(why)
                done.append(step)
            why = check_step(step, elbo, model, guide, x, kwargs)
            if why:
                raise Untraceable(f"the compiled replay: {why}")
    except Untraceable as e:
        for step in done:
            step.uncompile()
        return None, str(e)
    finally:
        pyro.util.set_rng_state(rng)
    return time.perf_counter() - start, None
