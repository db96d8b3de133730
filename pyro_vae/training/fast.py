"""The trainer's fast path: which pairs get a traced step (:mod:`pyro_vae.training.capture`), the proof that its
replay equals the plain loss, and whether it is compiled.

What replays a step is decided per run:

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
  an input of the graph (:func:`~pyro_vae.training.capture.lift_constants`), so a replay reads its
  current value and writes back its in-place updates, as the plain loss does;
* ops whose output shape depends on the data (``nonzero``, ``masked_select``, ``unique``,
  boolean-mask indexing: the spline flow's inside/outside split) are refused at trace time
  (:func:`~pyro_vae.training.capture.data_dependent_shapes`);
* ``Trace_ELBO``, ``TraceMeanField_ELBO`` and estimators that declare ``traceable = True``
  (iwae, dreg, stl, renyi, free bits) are traced, per-batch keyword arguments (labels) included
  when they are tensors; every pair is tried unless it declares ``jit_compatible = False``;
* one trace per batch size, used only after the replay has given the plain loss, gradients
  and buffer updates for the same random numbers on two different batches of each size
  (:func:`check_step`); the trainer repeats that proof at each epoch's start (:func:`recheck`), and
  drops the fast path when a value read from Python has changed since.
"""
import logging
import time

import pyro
import torch
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

from pyro_vae.training.capture import TracedStep, Untraceable, put_back

logger = logging.getLogger(__name__)


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
        put_back(step.state, state)
        pyro.util.set_rng_state(rng)
        loss, _, grads = step(x, **kwargs)
        replayed = [t.clone() for t in step.state]
    finally:
        put_back(step.state, state)
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
        put_back(step.state, saved)
    return sorted(times)[len(times) // 2]


def compile_steps(traced, elbo, model, guide, batches):
    """:meth:`TracedStep.compile` the step of the first batch's size (the last, shorter batch of an epoch keeps
    its replay: compiling it would cost as much for one step an epoch) and prove it again on the batches of
    that size (as :func:`trace_steps`); on failure it goes back to its earlier replay.  Returns ``(seconds,
    None)`` or ``(None, why not)``."""
    rng = pyro.util.get_rng_state()
    done, start = [], time.perf_counter()
    batches = _pairs(batches)
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


def probe_rows(n, batch_size):
    """Slices of two different batches of each size that an epoch over ``n`` data points in batches of
    ``batch_size`` has (the last, shorter batch gets its own trace, proven on two batches too)."""
    rows = [slice(0, batch_size), slice(batch_size, 2 * batch_size)]
    if n % batch_size:
        rows += [slice(n - n % batch_size, n), slice(0, n % batch_size)]
    return rows


def traceable_batches(calls):
    """``[(x, kwargs)]`` of the pair's calls ``(args, kwargs)``, or None where the batch is not the one positional
    argument of each (a traced step replays ``model(x, **kwargs)``)."""
    if not all(len(args) == 1 and torch.is_tensor(args[0]) for args, _ in calls):
        return None
    return [(args[0], kwargs) for args, kwargs in calls]


def _pairs(batches):
    return [b if isinstance(b, tuple) else (b, {}) for b in batches]


def select_steps(elbo, model, guide, batches, mode="auto", planned_steps=None):
    """``({batch size: TracedStep}, note)``: the traced steps training replays (empty where the fast path does not
    apply) and the one line that says how they are replayed, or why not.

    ``batches``: two different batches of each size training uses, tensors ``x`` or pairs ``(x, kwargs)``.
    ``mode``: ``"auto"`` (or ``True``) compiles the graphs by TorchInductor when the ``planned_steps`` of the
    run would take at least ``COMPILE_WHEN_SECONDS[device]`` through the TorchScript replay, ``"compile"``
    always, ``"trace"`` never; ``False`` turns the fast path off.  The RNG state is left as it was.
    """
    why = blocker(elbo, model, guide, mode)
    compiled = {}
    if why is None:
        compiled, why = trace_steps(elbo, model, guide, batches)
    if why is None:
        note = (f"fast path: loss and gradients traced into one graph for batch sizes {sorted(compiled)}, "
                f"{_compile(compiled, elbo, model, guide, _pairs(batches), mode, planned_steps)}")
    else:
        note = f"fast path not used: {why}"
    logger.info(note)
    return compiled, note


def _compile(compiled, elbo, model, guide, batches, mode, planned_steps):
    """Compile the traced steps where that pays (see :func:`select_steps`); say how they are replayed."""
    x, kwargs = batches[0]
    backend = compiled[len(x)].backend
    if mode == "trace":
        return f"replayed by {backend} (fast='trace': not compiled)"
    if mode != "compile":
        seconds = step_seconds(compiled[len(x)], x, kwargs)
        worth = COMPILE_WHEN_SECONDS.get(x.device.type, COMPILE_WHEN_SECONDS["cuda"])
        if planned_steps is None or planned_steps * seconds < worth:
            logger.info(f"fast path: {planned_steps or 'an unknown number of'} planned steps of "
                        f"{seconds * 1e3:.3g} ms through {backend}; compiling pays from {worth:.0f} s")
            return f"replayed by {backend} (not compiled: the run is too short to pay for compiling)"
    took, why = compile_steps(compiled, elbo, model, guide, batches)
    if why:
        return f"replayed by {backend} (not compiled: {why})"
    logger.info(f"fast path: compiled by inductor in {took:.1f} s")
    how = " as one CUDA graph per step" if x.device.type == "cuda" else ""
    rest = [size for size, step in compiled.items() if step.backend != "inductor"]
    rest = f"; batch size {', '.join(map(str, rest))} by {backend}" if rest else ""
    return f"replayed by inductor{how}{rest}"


def recheck(compiled, elbo, model, guide, x, kwargs):
    """Prove the trace of ``len(x)`` again (values read from Python may have changed since it was made): why one
    plain and one traced step on ``x`` disagree, or None.  RNG and buffers are left as they were, so training
    draws the same numbers either way."""
    step = compiled.get(len(x))
    if step is None:
        return None
    rng = pyro.util.get_rng_state()
    try:
        return check_step(step, elbo, model, guide, x, kwargs)
    finally:
        pyro.util.set_rng_state(rng)
