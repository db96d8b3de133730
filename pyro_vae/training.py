"""SVI training loop over device-resident data: NaN guard, atomic checkpoints, exact resume, safe interrupts.

The trainer takes any ``model``/``guide`` callables whose first argument is the
batch ``x``; the built-in VAE's ``vae.model`` and ``vae.guide`` are one such pair.

Run directory (``out_dir``):

=================== ======================================================================
``metrics.jsonl``   one JSON object per completed epoch: ``epoch``, ``train_loss`` (mean
                    −ELBO per training image over the finite steps, nats), ``test_elbo``
                    (mean ELBO per test image), ``seconds``, ``lr`` (at the epoch's end),
                    ``steps``,
                    ``bad_steps`` (skipped non-finite steps)
``checkpoint.pt``   epoch, params, module buffers, optimizer state, RNG states, learning-rate
                    scale and the metrics of every completed epoch; written atomically
                    (temporary file, fsync, rename) before the first epoch and after each one
=================== ======================================================================

Reliability contract:

* **NaN guard.** After each backward pass the loss and the gradients are reduced on the
  device to one flag (their sum or 2-norm is finite).  A non-finite step is skipped by
  the optimizer on the device (fused Adam's ``found_inf``), so the parameters and
  optimizer state stay those of the last good step; module buffers changed by the bad
  forward pass (e.g. σ-VAE's running σ*) are put back, on the device too.  The host
  reads the count of bad steps every ``check_every`` steps (each step on a CPU, every
  ``log_every`` steps on a GPU, so no step waits for the device): the learning rate is
  then multiplied by ``bad_lr_factor`` once per bad step (kept for the rest of the run
  and saved in the checkpoint), and after ``max_bad_steps`` bad steps in a row
  :class:`NonFiniteLossError` is raised; the run directory then still holds the
  checkpoint and metrics of the last completed epoch.
* **Exact resume.** A checkpoint holds everything the next epoch reads, RNG states
  included, and every random draw of the set-up happens before it is restored, so on
  CPU ``fit(epochs=4)`` equals ``fit(epochs=2)`` then ``fit(epochs=4, resume=True)`` bit
  for bit.  On resume ``metrics.jsonl`` is rewritten from the checkpoint's own copy of
  the metrics, so every epoch is listed exactly once even after a SIGKILL between the
  two writes of an epoch's end.
* **Interrupts.** SIGINT/SIGTERM set a flag; the loop stops at the next step boundary
  and raises :class:`TrainingInterrupted` (a ``KeyboardInterrupt``).  The partial epoch is
  discarded: ``checkpoint.pt`` is the one written atomically at the end of the last
  completed epoch, so ``--resume`` repeats the interrupted epoch exactly.  A second
  signal interrupts at once (the files on disk are still consistent).
"""
import contextlib
import json
import math
import os
import signal
import threading
import time

import logging

import pyro
import torch
from pyro import poutine
from pyro.infer import SVI
from tqdm.auto import tqdm

from . import distributed, fast, validation
from .data import ImageData
from .estimators import make_elbo
from .evaluation import elbo_per_point
from .importance import data_plate_scale, guess_max_plate_nesting
from .optim import FusedOptim, make_optimizer, set_lr

logger = logging.getLogger(__name__)
CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"


class NonFiniteLossError(RuntimeError):
    """Too many consecutive training steps had a NaN or infinite loss or gradient."""


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on SIGINT/SIGTERM at a step boundary; ``signum`` is the signal."""

    def __init__(self, message, signum=signal.SIGINT):
        super().__init__(message)
        self.signum = signum


class DeviceSVI(SVI):
    """:class:`pyro.infer.SVI` whose :meth:`step` returns ``(loss, ok)`` tensors and skips bad updates on the device.

    It uses the estimator's ``differentiable_loss`` (or ``loss_and_grads`` when absent) and
    never reads the loss on the host.  With ``guard=True`` the loss and the gradients are
    reduced on the device to one boolean ``ok`` (their sum or 2-norm is finite); when it is
    False the optimizer leaves parameters and state unchanged.  With a :class:`FusedOptim`
    over fused Adam (the trainer's default) that decision is taken on the device too, so a
    step needs no host sync; other optimizers read ``ok`` on the host.
    """

    def __init__(self, model, guide, optim, loss, guard=True, **kwargs):
        super().__init__(model, guide, optim, loss, **kwargs)
        self.elbo = loss  # SVI keeps only the bound methods
        self.guard = guard
        self.compiled = {}  # batch size -> fast.TracedStep (the fast path, see Trainer.enable_fast_path)

    def step(self, *args, **kwargs):
        traced = self.compiled.get(len(args[0])) if self.compiled and len(args) == 1 and not kwargs else None
        ok = None
        if traced is not None:  # the fast path: one graph replay gives loss, finiteness and gradients
            loss, ok, grads = traced(args[0])
            params = traced.params
            for p, g in zip(params, grads):
                p.grad = g
        else:
            with poutine.trace(param_only=True) as param_capture:
                if hasattr(self.elbo, "differentiable_loss"):
                    loss = self.elbo.differentiable_loss(self.model, self.guide, *args, **kwargs)
                    loss.backward()
                    loss = loss.detach()
                else:  # a float: put it where the parameters are, as the flag's other inputs
                    loss = torch.as_tensor(self.loss_and_grads(self.model, self.guide, *args, **kwargs))
            params = {site["value"].unconstrained() for site in param_capture.trace.nodes.values()}
            loss = loss.to(next(iter(params)).device) if params else loss
        if distributed.active():  # the same parameters on every rank, in the same (name) order
            store = pyro.get_param_store()
            distributed.average_gradients(sorted(params, key=store.param_name))
            ok = None  # judge the averaged gradients: every rank then takes the same decision
        if not self.guard:
            ok = torch.ones((), dtype=torch.bool, device=loss.device)
        elif ok is None:
            grads = [p.grad for p in params if p.grad is not None]
            total = loss.sum()
            if grads:  # ‖(g_1, …, g_n)‖₂ is finite iff every gradient is (or overflows beyond ~1e19)
                total = total + _total_norm(grads).to(total)
            ok = torch.isfinite(total)
        if isinstance(self.optim, FusedOptim):
            self.optim(params, skip=None if not self.guard else ~ok)
        elif bool(ok):
            self.optim(params)
        for p in params:
            p.grad = None
        return loss, ok


def _total_norm(tensors):
    """The 2-norm of all ``tensors`` together, with multi-tensor kernels (a few launches, one pass over the data)."""
    if hasattr(torch.nn.utils, "get_total_norm"):  # torch >= 2.6
        return torch.nn.utils.get_total_norm(tensors)
    return torch.stack([n.float() for n in torch._foreach_norm(tensors)]).norm()


def resolve_device(device="auto"):
    """``auto`` → ``cuda`` when available, else ``cpu``; checks that a requested CUDA device exists."""
    return validation.check_device(device)


def _atomic_save(obj, path):
    """``torch.save`` to a temporary file in the same folder, fsync it, then rename it over ``path``."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _atomic_write_lines(lines, path):
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.writelines(lines)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def data_scale(model, guide, x, data_plate="data"):
    """The factor ``full_size / batch_size`` of the pair's data plate (1 when not subsampled or absent)."""
    with poutine.block():
        guide_trace = poutine.trace(guide).get_trace(x)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x)
    for trace in (guide_trace, model_trace):
        try:
            return data_plate_scale(trace, data_plate)
        except ValueError:  # no site of this trace in the plate (e.g. an empty guide)
            continue
    return 1.0


class Trainer:
    """Stochastic variational inference for a model/guide pair.

    :param model: Pyro model ``model(x)``.
    :param guide: Pyro guide ``guide(x)`` with the same data plate.
    :param elbo: an estimator name for :func:`~pyro_vae.make_elbo` or a :class:`pyro.infer.ELBO`.
    :param out_dir: run directory for ``metrics.jsonl`` and ``checkpoint.pt`` (None: write nothing).
    :param modules: ``nn.Module`` s to switch between train and eval mode (optional).
    :param int max_bad_steps: stop with :class:`NonFiniteLossError` after this many non-finite steps in a row.
    :param float bad_lr_factor: multiply the learning rate by this after each non-finite step.
    :param fast: ``"auto"`` traces loss and gradients into one graph when the pair declares ``jit_compatible = True``
        (the built-in models do), ``True`` tries it for any pair, ``False`` never (see :meth:`enable_fast_path`);
        whether it applies is said in :attr:`fast_note` and the log.
    :param check_every: every how many steps the host reads the NaN guard's counts (bad steps are skipped on the
        device in between); default 1 on a CPU, where a read costs nothing, and ``log_every`` on a GPU.
    """

    def __init__(self, model, guide, elbo="trace", particles=1, lr=1e-3, optimizer="adam", lr_decay=1.0,
                 clip_norm=None, out_dir=None, log_every=50, eval_particles=1, progress=True, modules=(),
                 extra_state=None, max_bad_steps=10, bad_lr_factor=0.5, fast="auto", check_every=None):
        if not callable(model) or not callable(guide):
            raise TypeError("model and guide must be callables taking the batch x first, e.g. vae.model, vae.guide")
        validation.check_positive_int("particles", particles, "; pass e.g. --particles 1")
        validation.check_fraction("lr_decay", lr_decay, "; 1 keeps the learning rate constant")
        validation.check_positive_int("log_every", log_every)
        validation.check_positive_int("eval_particles", eval_particles)
        validation.check_positive_int("max_bad_steps", max_bad_steps, "; pass e.g. --max-bad-steps 10")
        if check_every is not None:
            validation.check_positive_int("check_every", check_every)
        validation.check_fraction("bad_lr_factor", bad_lr_factor, "; e.g. 0.5 halves the learning rate")
        self.model, self.guide = model, guide
        self.elbo = make_elbo(elbo, particles) if isinstance(elbo, str) else elbo
        self.base_lr, self.lr_decay = lr, lr_decay
        self.optim = make_optimizer(optimizer, lr, clip_norm)
        self.svi = DeviceSVI(model, guide, self.optim, self.elbo)
        self.out_dir = out_dir
        self.log_every = log_every
        self.eval_particles = eval_particles
        self.progress = progress
        self.modules = list(modules)
        self.extra_state = extra_state or {}
        self.max_bad_steps, self.bad_lr_factor = max_bad_steps, bad_lr_factor
        self.epoch = 0
        self.lr_scale = 1.0  # product of bad_lr_factor over the non-finite steps so far
        self.history = []
        self._signal = None
        self.fast = fast
        self.check_every = check_every
        self.fast_note = None
        if out_dir:
            os.makedirs(out_dir, exist_ok=True)

    @property
    def lr(self):
        """Learning rate of the current epoch: ``lr · lr_decay^epoch · lr_scale``."""
        return self.base_lr * self.lr_decay**self.epoch * self.lr_scale

    # -- checkpoints -------------------------------------------------------------------------
    @property
    def checkpoint_path(self):
        return os.path.join(self.out_dir, CHECKPOINT)

    def state_dict(self):
        rng = pyro.util.get_rng_state()
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        store = pyro.get_param_store()
        return {
            "epoch": self.epoch,
            "params": {name: p.detach().cpu() for name, p in store.named_parameters()},
            "buffers": {i: {k: b.cpu() for k, b in m.named_buffers()} for i, m in enumerate(self.modules)},
            "optim": self.optim.get_state(),
            "rng": rng,
            "lr_scale": self.lr_scale,
            "history": list(self.history),
            **self.extra_state,
        }

    def save_checkpoint(self, path=None):
        _atomic_save(self.state_dict(), path or self.checkpoint_path)

    def load_state_dict(self, state, x):
        """Restore a :meth:`state_dict`; ``x`` is a batch used to register the pair's parameters first.

        A checkpoint of another model raises ValueError naming the first differing parameters.
        """
        guess_max_plate_nesting(self.model, self.guide, x)  # registers every pyro.param / pyro.module
        store = pyro.get_param_store()
        current = dict(store.named_parameters())
        missing = sorted(set(state["params"]) - set(current))
        extra = sorted(set(current) - set(state["params"]))
        if missing or extra:
            raise ValueError(f"checkpoint does not match this model: missing here {missing[:5]}, "
                             f"not in checkpoint {extra[:5]}; load it with the options it was trained with")
        for name, value in state["params"].items():
            if current[name].shape != value.shape:
                raise ValueError(f"checkpoint does not match this model: parameter {name!r} has shape "
                                 f"{tuple(value.shape)} in the checkpoint and {tuple(current[name].shape)} here; "
                                 f"load it with the options it was trained with")
        buffers = state.get("buffers", {})
        for i, m in enumerate(self.modules):
            for k, b in m.named_buffers():
                if k not in buffers.get(i, {}) or buffers[i][k].shape != b.shape:
                    raise ValueError(f"checkpoint does not match this model: buffer {k!r} of module {i} is "
                                     f"missing or has another shape")
        with torch.no_grad():
            for name, value in state["params"].items():
                current[name].copy_(value)
            for i, m in enumerate(self.modules):
                for k, b in m.named_buffers():
                    b.copy_(buffers[i][k])
        self._load_optim_state(state["optim"], current)
        rng = dict(state["rng"])
        cuda = rng.pop("cuda", None)
        pyro.util.set_rng_state(rng)
        if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        self.epoch = state["epoch"]
        self.lr_scale = state.get("lr_scale", 1.0)
        self.history = list(state.get("history", []))

    def _load_optim_state(self, optim_state, params):
        """Load the optimizer state now (not lazily at the first step), so :func:`set_lr` reaches it."""
        self.optim.set_state(optim_state)
        pending = [params[k] for k in sorted(optim_state) if k in params]
        for p in pending:
            p.grad = None
        self.optim(pending)  # no gradients: creates the optimizer and loads the states without a step

    def _write_metrics(self):
        """Rewrite ``metrics.jsonl`` from :attr:`history` (the checkpoint's copy), atomically."""
        _atomic_write_lines([json.dumps(m) + "\n" for m in self.history], os.path.join(self.out_dir, METRICS))

    # -- signals ---------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _stop_on_signals(self):
        """SIGINT/SIGTERM set a flag read at step boundaries; a second signal raises at once."""
        self._signal = None
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum, frame):
            if self._signal is not None:
                raise TrainingInterrupted("interrupted twice; stopped at once", signum)
            self._signal = signum

        previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, h in previous.items():
                signal.signal(s, h)

    def _check_signal(self, epochs):
        if self._signal is None:
            return
        name = signal.Signals(self._signal).name
        where = f"the checkpoint of epoch {self.epoch} in {self.out_dir!r}" if self.out_dir else "nothing (no out_dir)"
        raise TrainingInterrupted(f"{name} during epoch {self.epoch + 1}/{epochs}: stopped at a step boundary; "
                                  f"the partial epoch is discarded and the run holds {where}; "
                                  f"continue with --resume", self._signal)

    def _guess_plate_nesting(self, x):
        """What pyro's ELBO does at its first step; it draws samples, so it must happen before the RNG is restored."""
        if getattr(self.elbo, "max_plate_nesting", None) == math.inf and hasattr(self.elbo, "_guess_max_plate_nesting"):
            self.elbo._guess_max_plate_nesting(self.model, self.guide, (x,), {})

    # -- the fast path ----------------------------------------------------------------------------
    def enable_fast_path(self, batches, batch_kwargs=None):
        """Trace loss and gradients once per batch size (:mod:`pyro_vae.fast`) where that is valid; else say why.

        ``batches``: two different batches of each size training uses (a trace that freezes
        data-dependent control flow is caught by comparing it with the plain loss on both).
        The note is kept in :attr:`fast_note` and logged; the RNG state is left as it was.
        """
        why = fast.blocker(self.elbo, self.model, self.guide, self.fast, batch_kwargs)
        compiled = {}
        if why is None:
            self._guess_plate_nesting(batches[0])
            compiled, why = fast.trace_steps(self.elbo, self.model, self.guide, batches)
        self.svi.compiled = compiled
        self.fast_note = (f"fast path: loss and gradients traced into one graph for batch sizes {sorted(compiled)}"
                          if why is None else f"fast path not used: {why}")
        logger.info(self.fast_note)
        return why is None

    # -- the loop ------------------------------------------------------------------------------
    def _set_training(self, mode):
        for m in self.modules:
            m.train(mode)

    def evaluate_elbo(self, x, batch_size=1000):
        """Mean ELBO per image of ``x`` (nats); under torch.distributed each rank scores its share."""
        self._set_training(False)
        try:
            elbo = elbo_per_point(self.model, self.guide, distributed.shard(x), num_particles=self.eval_particles,
                                  batch_size=batch_size)
        finally:
            self._set_training(True)
        total = distributed.all_sum(torch.stack([elbo.sum(), elbo.new_tensor(float(len(elbo)))]))
        return (total[0] / total[1]).item()

    @property
    def writes(self):
        """Whether this process writes the run directory (it has one, and is rank 0 or alone)."""
        return bool(self.out_dir) and distributed.is_main()

    @staticmethod
    def _params_by_name():
        return [p for _, p in sorted(pyro.get_param_store().named_parameters())]

    def _prepare(self, data, test_x, batch_size, epochs):
        """Check the options and the data once, before any training step."""
        validation.check_positive_int("epochs", epochs, "; pass e.g. --epochs 10")
        validation.check_positive_int("batch_size", batch_size, "; pass e.g. --batch-size 128")
        if isinstance(data, torch.utils.data.Dataset):  # items: an image, or (image, label, …); labels unused
            from .datasets import dataset_tensors

            data = dataset_tensors(data, where="the training Dataset")[0]
            data = data.float() / 255 if data.dtype == torch.uint8 else data
        if torch.is_tensor(data):
            validation.check_data_for_model(self.model, data, "training data")
            data = ImageData(train=data, train_labels=None, test=test_x, test_labels=None, binarize="none")
        elif not isinstance(data, ImageData):
            raise TypeError(f"data must be an ImageData (from load_data) or a tensor of images [N, ...] (or a torch "
                            f"Dataset of them), got {type(data).__name__}")
        else:
            validation.check_eight_bit(validation.model_is_eight_bit(self.model), data.binarize)
            unit = validation.model_wants_unit_interval(self.model) or data.binarize == "dynamic"
            validation.check_images(data.train, "training data", validation.model_x_shape(self.model), unit)
        test_x = data.test if test_x is None else test_x
        if test_x is not None:
            validation.check_data_for_model(self.model, test_x, "test data")
            if test_x.shape[1:] != data.train.shape[1:] or test_x.device != data.train.device:
                raise ValueError(f"test data {tuple(test_x.shape)} on {test_x.device} does not match the training "
                                 f"data {tuple(data.train.shape)} on {data.train.device}; give both the same shape "
                                 f"and device")
        return data, test_x

    def fit(self, data, epochs, batch_size=128, test_x=None, resume=False, callback=None, batch_kwargs=None):
        """Train until ``epochs`` epochs are complete (counting resumed ones); return every epoch's metrics.

        :param data: an :class:`~pyro_vae.data.ImageData`, a tensor of training images, or a torch ``Dataset`` of
            images (or ``(image, label)`` pairs; PIL images and uint8 become floats in [0, 1]).
        :param test_x: images for ``test_elbo`` (default: ``data.test``).
        :param resume: continue from ``out_dir/checkpoint.pt`` instead of starting afresh.
        :param callback: called as ``callback(trainer, metrics)`` after each epoch.
        :param batch_kwargs: optional ``f(index) -> dict`` of extra keyword arguments for model and guide on the
            training batch ``data.train[index]`` (e.g. labels for semi-supervised models); evaluation passes none.
        """
        data, test_x = self._prepare(data, test_x, batch_size, epochs)
        state = None
        if resume:
            if not self.out_dir:
                raise ValueError("resume=True needs the trainer's out_dir (the run directory to continue)")
            state = validation.load_checkpoint(self.checkpoint_path)
        first = next(data.batches(batch_size, shuffle=False, shard=distributed.shard))[0]
        # every random draw of the set-up happens here, before the checkpoint's RNG state is restored
        validation.check_pair_runs(self.model, self.guide, first)
        self._guess_plate_nesting(first)
        scale = data_scale(self.model, self.guide, first)
        if state is not None:
            self.load_state_dict(state, first)
            if self.writes:
                self._write_metrics()
        elif self.writes and self.epoch == 0:
            self.history = []
            self._write_metrics()
            self.save_checkpoint()  # epoch 0: an interrupted first epoch still resumes exactly
        if distributed.active():
            distributed.broadcast_parameters(self._params_by_name())
        steps_per_epoch = math.ceil(len(data.train) / batch_size)
        if self.fast is not False and not self.svi.compiled:
            n = len(data.train)
            probes = [data.train[:batch_size], data.train[batch_size : 2 * batch_size]]
            if n % batch_size:  # the last, shorter batch: its own trace, checked on two different batches too
                probes += [data.train[n - n % batch_size :], data.train[: n % batch_size]]
            probes = [distributed.shard(b) for b in probes if len(b)]
            self.enable_fast_path([b for b in probes if len(b)], batch_kwargs)
        buffers = [b for m in self.modules for b in m.buffers() if b.is_floating_point()]
        check_every = self.check_every or (1 if first.device.type == "cpu" else self.log_every)
        self._set_training(True)
        with self._stop_on_signals():
            while self.epoch < epochs:
                self._check_signal(epochs)
                set_lr(self.optim, self.lr)
                start = time.perf_counter()
                total = torch.zeros((), device=first.device)
                # on the device: bad steps this epoch, the current run of bad steps, the longest run since the
                # last check; the host reads them every `check_every` steps (no host sync per step on a GPU)
                bad = run = worst = torch.zeros((), dtype=torch.long, device=first.device)
                seen = step = 0
                bar = tqdm(data.batches(batch_size, shard=distributed.shard), total=steps_per_epoch,
                           disable=not (self.progress and distributed.is_main()),
                           desc=f"epoch {self.epoch + 1}/{epochs}", leave=False)
                for step, (x, idx) in enumerate(bar, 1):
                    saved = [b.clone() for b in buffers]
                    loss, ok = self.svi.step(x, **(batch_kwargs(idx) if batch_kwargs else {}))
                    total += torch.where(ok, loss / (scale * len(x)), 0.0)
                    bad, run = bad + ~ok, torch.where(ok, 0, run + 1)
                    worst = torch.maximum(worst, run)
                    with torch.no_grad():  # buffers changed by a bad forward pass (e.g. σ-VAE's running σ*) go back
                        for b, s in zip(buffers, saved):
                            b.copy_(torch.where(ok, b, s))
                    if step % check_every == 0:
                        seen = self._act_on_bad_steps(int(bad), seen, int(worst), step, epochs)
                        worst = run
                    if self.progress and step % self.log_every == 0 and step > seen:
                        bar.set_postfix(loss=f"{total.item() / (step - seen):.2f}")
                    self._check_signal(epochs)
                bar.close()
                seen = self._act_on_bad_steps(int(bad), seen, int(worst), step, epochs)
                lr = self.lr
                self.epoch += 1
                mean_loss = distributed.all_sum(total / max(step - seen, 1)) / distributed.world_size()
                metrics = {"epoch": self.epoch, "train_loss": mean_loss.item()}
                if test_x is not None:
                    metrics["test_elbo"] = self.evaluate_elbo(test_x)
                metrics.update(seconds=time.perf_counter() - start, lr=lr, steps=steps_per_epoch, bad_steps=seen)
                self.history.append(metrics)
                if self.writes:
                    with open(os.path.join(self.out_dir, METRICS), "a") as f:
                        f.write(json.dumps(metrics) + "\n")
                    self.save_checkpoint()
                if self.progress and distributed.is_main():
                    tqdm.write(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                        for k, v in metrics.items()))
                if callback:
                    callback(self, metrics)
        return list(self.history)

    def _act_on_bad_steps(self, bad, seen, worst, step, epochs):
        """``bad`` steps skipped this epoch, ``seen`` of them already acted on, ``worst`` the longest run of bad
        steps in a row since the last check: lower the learning rate once per new bad step, give up after
        ``max_bad_steps`` in a row.  Returns ``bad``."""
        if bad > seen:
            self.lr_scale *= self.bad_lr_factor ** (bad - seen)
            set_lr(self.optim, self.lr)
            logger.warning(f"{bad - seen} non-finite step(s) skipped by step {step} of epoch {self.epoch + 1}; "
                           f"learning rate lowered to {self.lr:.3g}")
        if worst >= self.max_bad_steps:
            kept = (f"; {self.out_dir!r} still holds the checkpoint and metrics of epoch {self.epoch}"
                    if self.out_dir else "")
            raise NonFiniteLossError(
                f"the loss or its gradients were NaN/inf for {worst} steps in a row (epoch {self.epoch + 1}/"
                f"{epochs}, step {step}) although the learning rate was lowered to {self.lr:.3g}{kept}; try a "
                f"smaller --lr, --clip-norm, another --likelihood/--sigma, or check the data")
        return bad
