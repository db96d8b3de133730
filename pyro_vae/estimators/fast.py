"""The fast path as an estimator: :class:`FastELBO` wraps an ELBO and replays its loss and gradients
from one captured graph per batch size (:mod:`.capture`), as Pyro's ``JitTrace_ELBO`` owns its JIT.

It works under plain :class:`pyro.infer.SVI` (:meth:`FastELBO.loss_and_grads`) and under the
trainer's
:class:`~pyro_vae.training.svi.DeviceSVI` (:meth:`FastELBO.replay`, no host sync). What replays a
    step:

* the fx graph itself (its ATen ops called from Python: no Pyro, no autograd), by default;
* TorchInductor (``torch._inductor.compile`` of the graph: no Dynamo, so no guards per call; on CUDA
  one CUDA graph per step, as ``torch.compile(mode="reduce-overhead")``) when the planned steps
  would take at least
  :data:`COMPILE_WHEN_SECONDS` through the fx replay, or always with ``mode="compile"``. Inductor's
  FX-graph cache keeps the compiled graph on disk, so a second run of the same configuration loads
  it (``cache_hit``, ``compile_seconds``).

A trace freezes Python control flow, Python numbers and tensor shapes, so it is made safe by
construction where it can be and proven where it cannot:

* every tensor the loss reads besides the parameters and ``x`` (module buffers, a β or warm-up
  weight, a temperature) becomes an input of the graph (:func:`~.capture.lift_constants`);
* ops whose output shape depends on the data are refused at trace time
  (:func:`~.capture.data_dependent_shapes`);
* the loss must read nothing on the host: estimators that declare ``traceable = True`` (all of ours;
  Pyro's ``Trace_ELBO`` and ``TraceMeanField_ELBO`` through their device twins, :mod:`.trace`);
* one trace per batch size, used only after the replay has given the plain loss, gradients and
  buffer updates for the same random numbers on two different batches of each size
  (:func:`check_step`), and again at each epoch's start (:meth:`FastELBO.recheck`); a value read
  from Python that has changed drops the fast path.
"""

import logging
import time

import pyro
import torch
from pyro.infer import ELBO

from pyro_vae.estimators.capture import TracedStep, Untraceable, put_back
from pyro_vae.estimators.replay_check import check_step
from pyro_vae.estimators.trace import device_twin
from pyro_vae.core.checks import UserError

logger = logging.getLogger(__name__)

MODES = ("auto", True, "compile", "trace")

# compile when the planned steps of a run would take at least this long through the fx replay:
# compiling costs 3–30 s (a few when inductor's cache holds the graph) and saves 10–60 % of a step
# on a CPU, more on CUDA, where the step becomes one CUDA graph launch
COMPILE_WHEN_SECONDS = {"cpu": 120.0, "cuda": 20.0}


def _owner(fn):
    """The object a model or guide belongs to: ``vae`` for ``vae.model``, also through handlers
    (``beta_scale``)."""
    while hasattr(fn, "__wrapped__") and not hasattr(fn, "__self__"):
        fn = fn.__wrapped__
    return getattr(fn, "__self__", fn)


def blocker(elbo, model, guide):
    """Why the loss of this pair cannot be traced, or None. Every pair is tried (its trace is then
    proven on real batches, see :func:`trace_steps`) unless it says ``jit_compatible = False``."""
    if getattr(elbo, "traceable", False) is not True:
        return (
            "only estimators whose loss stays on the device are traced (traceable = True, or "
            f"Pyro's Trace_ELBO and TraceMeanField_ELBO), not {type(elbo).__name__}"
        )
    for owner in (_owner(model), _owner(guide)):
        if getattr(owner, "jit_compatible", True) is False:
            return f"{type(owner).__name__} says it cannot be traced (jit_compatible = False)"
    return None


def _pairs(batches):
    return [b if isinstance(b, tuple) else (b, {}) for b in batches]


def trace_steps(elbo, model, guide, batches):
    """``({batch size: TracedStep}, None)``, or ``({}, why)`` when a trace is refused or a replay
    differs from the plain loss or gradients. ``elbo`` reads nothing on the host (``traceable``).

    ``batches`` must hold two different batches of each size used in training: tensors ``x``, or
    pairs ``(x, kwargs)`` with the per-batch keyword arguments of model and guide. The RNG state is
    restored afterwards, so training draws the same numbers with or without the fast path.
    """
    rng = pyro.util.get_rng_state()
    traced = {}
    try:
        for x, kwargs in _pairs(batches):
            if len(x) not in traced:
                traced[len(x)] = TracedStep(elbo, model, guide, x, kwargs)
            why = check_step(traced[len(x)], elbo, model, guide, x, kwargs)
            if why and traced[len(x)].backward_merged:
                # differentiating the merged forward misses what autograd saw and the ATen
                # graph does not say (a custom autograd.Function's backward, a no_grad block):
                # capture forward and backward together, as the plain step runs them
                logger.info("the merged replay differs (%s); capturing it unmerged", why)
                traced[len(x)] = TracedStep(elbo, model, guide, x, kwargs, merge_backward=False)
                why = check_step(traced[len(x)], elbo, model, guide, x, kwargs)
            if why:
                return {}, why
    except Untraceable as e:
        return {}, str(e)
    except Exception as e:  # tracing failed
        if "_local_scalar_dense" in str(e):
            return {}, (
                "the pair reads a tensor's value in Python (data-dependent control flow, .item(), "
                "bool(tensor)), which a trace cannot follow"
            )
        return {}, f"tracing failed ({type(e).__name__}: {' '.join(str(e).split())[:200]})"
    finally:
        pyro.util.set_rng_state(rng)
    return traced, None


def step_seconds(step, x, kwargs=None, repeats=5):
    """Median seconds of one replay of ``step`` on ``x`` (RNG state and buffers left as they
    were)."""
    kwargs = kwargs or {}
    rng, saved = pyro.util.get_rng_state(), [t.clone() for t in step.state]
    times = []
    try:
        for _ in range(repeats):
            start = time.perf_counter()
            float(step(x, **kwargs)[0])  # waits for the device
            times.append(time.perf_counter() - start)
    finally:
        pyro.util.set_rng_state(rng)
        put_back(step.state, saved)
    return sorted(times)[len(times) // 2]


def compile_steps(traced, elbo, model, guide, batches):
    """:meth:`TracedStep.compile` the step of the first batch's size (the last, shorter batch of an
    epoch keeps the fx replay: compiling it would cost as much for one step an epoch) and prove it
    again on the batches of that size (as :func:`trace_steps`); on failure it goes back to the fx
    replay. Returns ``(seconds, None)`` or ``(None, why not)``."""
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


def proof_rows(n, batch_size):
    """Slices of two different batches of each size that an epoch over ``n`` data points in batches
    of ``batch_size`` has (the last, shorter batch gets its own trace, proven on two batches
    too)."""
    rows = [slice(0, batch_size), slice(batch_size, 2 * batch_size)]
    if n % batch_size:
        rows += [slice(n - n % batch_size, n), slice(0, n % batch_size)]
    return rows


def traceable_batches(calls):
    """``[(x, kwargs)]`` of the pair's calls ``(args, kwargs)``, or None where the batch is not the
    one positional argument of each (a traced step replays ``model(x, **kwargs)``)."""
    if not all(len(args) == 1 and torch.is_tensor(args[0]) for args, _ in calls):
        return None
    return [(args[0], kwargs) for args, kwargs in calls]


class FastELBO(ELBO):
    """``elbo`` with its loss and gradients replayed from one captured graph per batch size.

    :param elbo: the estimator (ours, or Pyro's ``Trace_ELBO`` / ``TraceMeanField_ELBO``); its loss
        is the one replayed and the one every replay is proven against.
    :param mode: ``"auto"`` (or True): the fx replay, compiled by inductor when :meth:`prepare` is
        told of enough planned steps; ``"compile"``: always compiled; ``"trace"``: never compiled.

    Under plain :class:`pyro.infer.SVI` the graph of a batch size is captured at its first batch and
    proven on its first two (those two steps are plain); from then on :meth:`loss_and_grads` replays
    it. The trainer calls :meth:`prepare` with two batches of each size before training instead.
    :attr:`note` says in one line how steps are replayed, or why not; :attr:`steps` maps batch sizes
    to the captured steps.
    """

    def __init__(self, elbo, mode="auto"):
        if not any(mode is m or (isinstance(mode, str) and mode == m) for m in MODES):
            raise UserError(f"mode must be one of {', '.join(map(repr, MODES))}, got {mode!r}")
        self.elbo = (
            device_twin(elbo) or elbo
        )  # Pyro's Trace_ELBO: the same loss, kept on the device
        self.mode = mode
        self.steps, self.note, self.compile_seconds, self.cache_hit = {}, None, 0.0, None
        self._pair, self._seen, self._refused = None, {}, False

    def __getattr__(
        self, name
    ):  # num_particles, data_plate, vectorize_particles, … are the wrapped estimator's
        if name == "elbo":
            raise AttributeError(name)
        return getattr(self.elbo, name)

    @property
    def route(self):
        """How the steps are replayed: "compile" (inductor), "trace" (fx) or "off" (none)."""
        if not self.steps:
            return "off"
        inductor = any(s.backend == "inductor" for s in self.steps.values())
        return "compile" if inductor else "trace"

    @property
    def max_plate_nesting(self):
        return self.elbo.max_plate_nesting

    @max_plate_nesting.setter
    def max_plate_nesting(self, value):
        self.elbo.max_plate_nesting = value

    # -- capture and proof -----------------------------------------------------------------------
    def prepare(self, model, guide, batches, planned_steps=None):
        """Capture and prove the steps of ``batches`` (two different batches of each size training
        uses, tensors ``x`` or pairs ``(x, kwargs)``), compile them where that pays
        (``planned_steps``: the run's steps), and return whether the fast path applies. The RNG
        state is left as it was."""
        self._pair, self._seen = (model, guide), {}
        why = blocker(self.elbo, model, guide)
        steps = {}
        if why is None:
            steps, why = trace_steps(self.elbo, model, guide, batches)
        self.steps, self._refused = steps, why is not None
        self.compile_seconds, self.cache_hit = 0.0, None
        if why is None:
            how = self._compile(model, guide, _pairs(batches), planned_steps)
            self.note = (
                "fast path: loss and gradients traced into one graph for batch sizes "
                f"{sorted(steps)}, {how}"
            )
        else:
            self.note = f"fast path not used: {why}"
        logger.info(self.note)
        return bool(self.steps)

    def _compile(self, model, guide, batches, planned_steps):
        """Compile the traced steps where that pays (see the class); say how they are replayed."""
        x, kwargs = batches[0]
        if self.mode == "trace":
            return "replayed by fx (mode 'trace': not compiled)"
        if self.mode != "compile":
            worth = COMPILE_WHEN_SECONDS.get(x.device.type, COMPILE_WHEN_SECONDS["cuda"])
            seconds = step_seconds(self.steps[len(x)], x, kwargs, repeats=1)
            if 1 / 3 < (planned_steps or 0) * seconds / worth < 3:  # a close call: the median of 5
                seconds = step_seconds(self.steps[len(x)], x, kwargs)
            if planned_steps is None or planned_steps * seconds < worth:
                logger.info(
                    f"fast path: {planned_steps or 'an unknown number of'} planned steps of "
                    f"{seconds * 1e3:.3g} ms through fx; compiling pays from {worth:.0f} s"
                )
                return "replayed by fx (not compiled: the run is too short to pay for compiling)"
        took, why = compile_steps(self.steps, self.elbo, model, guide, batches)
        if why:
            return f"replayed by fx (not compiled: {why})"
        step = self.steps[len(x)]
        self.compile_seconds, self.cache_hit = took, step.cache_hit
        logger.info(
            f"fast path: compiled by inductor in {took:.1f} s "
            f"({'loaded from' if step.cache_hit else 'not in'} inductor's cache)"
        )
        how = " as one CUDA graph per step" if x.device.type == "cuda" else ""
        rest = [size for size, s in self.steps.items() if s.backend != "inductor"]
        rest = f"; batch size {', '.join(map(str, rest))} by fx" if rest else ""
        return f"replayed by inductor{how}{rest}"

    def refuse(self, why):
        """Take the plain loss from now on, for the reason ``why`` (one line, kept in
        :attr:`note`)."""
        self.steps, self._refused, self.note = {}, True, f"fast path not used: {why}"

    def recheck(self, model, guide, x, kwargs=None, since="from now on"):
        """Prove the trace of ``len(x)`` again (values read from Python may have changed since it
        was made); drop every step and return why when a plain and a traced step on ``x`` disagree,
        else None. RNG and buffers are left as they were, so training draws the same numbers either
        way. ``since`` goes in the note."""
        step = self.steps.get(len(x))
        if step is None:
            return None
        rng = pyro.util.get_rng_state()
        try:
            why = check_step(step, self.elbo, model, guide, x, kwargs)
        finally:
            pyro.util.set_rng_state(rng)
        if why:
            self.refuse(why)
            self.note = f"fast path not used {since}: {why}"
            logger.warning(self.note)
        return why

    def _learn(self, model, guide, x, kwargs):
        """Plain SVI, no :meth:`prepare`: capture a batch size's graph once two batches of it have
        been seen."""
        if self._pair != (model, guide):
            self._pair, self._seen, self.steps, self._refused = (model, guide), {}, {}, False
        if self._refused or len(x) in self.steps:
            return
        seen = self._seen.setdefault(len(x), [])
        seen.append((x, kwargs))
        if len(seen) == 2:
            steps = dict(self.steps)
            if self.prepare(model, guide, seen):
                self.steps = {**steps, **self.steps}

    # -- the step --------------------------------------------------------------------------------
    def replay(self, model, guide, *args, **kwargs):
        """``(loss, ok, params, grads)`` of one replay (−ELBO, whether it and every gradient are
        finite, the unconstrained parameters and ``∂ loss / ∂ params``, None for one the loss does
        not reach), or None where this call takes the plain loss (no proven graph for it)."""
        if len(args) != 1 or not torch.is_tensor(args[0]):
            return None
        x = args[0]
        if self._pair != (model, guide) or len(x) not in self.steps:
            self._learn(model, guide, x, kwargs)
            return None
        step = self.steps[len(x)]
        if sorted(kwargs) != step.keys:
            return None
        loss, ok, grads = step(x, **kwargs)
        return loss, ok, step.params, grads

    def loss_and_grads(self, model, guide, *args, **kwargs):
        """As Pyro's: accumulate ``∂ loss / ∂ params`` into ``.grad`` and return the loss as a
        float. The parameters are looked up with ``pyro.param`` so that :class:`pyro.infer.SVI` sees
        them."""
        replayed = self.replay(model, guide, *args, **kwargs)
        if replayed is None:
            return self.elbo.loss_and_grads(model, guide, *args, **kwargs)
        loss, _, params, grads = replayed
        for name, p, g in zip(self.steps[len(args[0])].names, params, grads):
            pyro.param(name)  # recorded by SVI's param capture, as under JitTrace_ELBO
            if g is not None:
                p.grad = g if p.grad is None else p.grad + g
        return loss.item()

    @property
    def differentiable_loss(
        self,
    ):  # the wrapped estimator's (absent where it has none, as TraceGraph_ELBO)
        return self.elbo.differentiable_loss

    def _get_trace(self, model, guide, args, kwargs):
        return self.elbo._get_trace(model, guide, args, kwargs)

    def loss(self, model, guide, *args, **kwargs):
        return self.elbo.loss(model, guide, *args, **kwargs)
