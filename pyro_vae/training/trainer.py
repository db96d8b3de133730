"""SVI training loop over device-resident data: NaN guard, atomic checkpoints, exact resume, safe
interrupts (the run directory it writes: :mod:`.checkpoint`).

The trainer takes any ``model``/``guide`` pair, called as ``SVI.step`` calls it; ``batch_call`` says
how a batch becomes its arguments (default ``model(x)``: the built-in VAE's ``vae.model`` and
``vae.guide`` are one such pair).

The loop runs epochs of :class:`~pyro_vae.training.svi.DeviceSVI` steps (the estimator wrapped in
:class:`~pyro_vae.estimators.fast.FastELBO`: a replayed graph where one was proven); everything else
is a listener (:mod:`.listeners`) with its own module: the per-epoch figures
(:class:`~.figures.Evaluation`), the NaN guard and the signal stop (:mod:`.guards`), early stopping
(:mod:`.early_stopping`), the metrics file and the checkpoints (:mod:`.checkpoint`), TensorBoard
(:mod:`.tensorboard`) and the console (:mod:`.console`); the fast path's capture is in
:mod:`.fast_path`, the resume in :mod:`.checkpoint`. Every random draw of the set-up happens
before a checkpoint is restored, so on CPU ``fit(epochs=4)`` equals ``fit(epochs=2)`` then
``fit(epochs=4, resume=True)`` bit for bit; the figures draw from a fork of the RNG.
"""

import math
import os
import time
from operator import attrgetter
from types import SimpleNamespace

import pyro
import torch

from pyro_vae.core import checks as validation
from pyro_vae.core.pair import batch_as_argument, checked_probe
from pyro_vae.data import training_data
from pyro_vae.estimators import FastELBO, make_elbo
from pyro_vae.training import checkpoint, distributed, fast_path
from pyro_vae.training.checkpoint import BEST, CHECKPOINT, METRICS, Checkpoints, MetricsFile
from pyro_vae.training.console import Console
from pyro_vae.training.early_stopping import EarlyStopping, best_epoch
from pyro_vae.training.figures import Evaluation
from pyro_vae.training.guards import NaNGuard, NonFiniteLossError, SignalStop, TrainingInterrupted
from pyro_vae.training.listeners import Callback, Listener, merged
from pyro_vae.training.optim import Optimization, make_optimizer, set_lr
from pyro_vae.training.svi import DeviceSVI
from pyro_vae.training.tensorboard import TensorBoard

__all__ = [
    "BEST",
    "CHECKPOINT",
    "METRICS",
    "Listener",
    "NonFiniteLossError",
    "Optimization",
    "Trainer",
    "TrainingInterrupted",
    "resolve_device",
]
FAST_MODES = ("auto", True, False, "compile", "trace")


def resolve_device(device="auto"):
    """``auto`` → ``cuda`` when available, else ``cpu``; checks that a requested CUDA device
    exists."""
    return validation.check_device(device)


class Trainer:
    """Stochastic variational inference for a model/guide pair: a loop of epochs over SVI steps, and
    listeners.

    :param model: Pyro model, called as SVI calls it with what ``batch_call`` makes of a batch
        (default ``model(x)``).
    :param guide: Pyro guide, called the same way, with the same data plate.
    :param elbo: an estimator name for :func:`~pyro_vae.make_elbo` or a :class:`pyro.infer.ELBO`.
    :param particles: samples per data point of an estimator given by name.
    :param optim: the :class:`~pyro_vae.training.optim.Optimization` (learning rate, optimizer,
        per-epoch decay, clipping, VDVAE's update skip); default Adam with lr 1e-3.
    :param out_dir: run directory for ``metrics.jsonl``, ``checkpoint.pt`` and TensorBoard (None:
        write nothing).
    :param modules: ``nn.Module`` s to switch between train and eval mode and whose buffers are
        checkpointed.
    :param fast: ``"auto"``/``True``, ``"compile"``, ``"trace"`` or ``False``: the fast path, the
        estimator wrapped in :class:`~pyro_vae.estimators.fast.FastELBO` (unless it is one already);
        whether it applies is printed when training starts and said in :attr:`fast_note` and in each
        epoch's metrics (``fast_path``, ``fast_path_note``; ``compile_seconds``, 0 when nothing was
        compiled, and ``compile_cache_hit``, whether inductor's cache held the graph: what capturing
        cost the process that trained the epoch).
    :param progress: print a progress bar and one line per epoch (:class:`~.console.Console`).
    :param batch_call: ``batch_call(x, idx) -> (args, kwargs)``: the pair's arguments on rows ``x``
        at indices ``idx`` of the data, called ``model(*args, **kwargs)`` as ``SVI.step`` calls it;
        default ``model(x)`` (:func:`~pyro_vae.core.pair.batch_as_argument`). The fast path needs
        the batch as the one argument.
    :param str data_plate: the plate over data points, where the trace cannot tell (see
        :mod:`pyro_vae.core.pair`); it sets the per-image scale of ``train_loss`` and is passed to
        the per-data-point estimators.
    :param listeners: :class:`~.listeners.Listener` s added to the defaults
        (:class:`~.guards.NaNGuard`, :class:`~.guards.SignalStop`, :class:`~.figures.Evaluation`,
        :class:`~.console.Console`, :class:`~.checkpoint.MetricsFile`,
        :class:`~.tensorboard.TensorBoard`, :class:`~.checkpoint.Checkpoints`); one of a default's
        class replaces it (e.g. ``TensorBoard(images_every=5)``, ``NaNGuard(max_bad_steps=3)``).

    What each epoch's metrics row and the checkpoint hold: :mod:`~pyro_vae.training.checkpoint`.
    """

    def __init__(
        self,
        model,
        guide,
        elbo="trace",
        particles=1,
        optim=None,
        out_dir=None,
        modules=(),
        fast="auto",
        progress=True,
        batch_call=None,
        data_plate=None,
        listeners=(),
    ):
        if not callable(model) or not callable(guide):
            raise TypeError(
                "model and guide must be callables (Pyro functions), e.g. vae.model, vae.guide"
            )
        if not any(fast is mode or (isinstance(fast, str) and fast == mode) for mode in FAST_MODES):
            raise ValueError(
                f"fast must be one of {', '.join(map(repr, FAST_MODES))}, got {fast!r}"
            )
        self.model, self.guide, self.data_plate = model, guide, data_plate
        elbo = make_elbo(elbo, particles, data_plate=data_plate) if isinstance(elbo, str) else elbo
        self.elbo = elbo if fast is False or isinstance(elbo, FastELBO) else FastELBO(elbo, fast)
        self.batch_call = batch_call or batch_as_argument
        self.pair = None  # what the probe of the pair found (pyro_vae.core.PairInfo), set by fit
        self.options = optim or Optimization()
        self.optim = make_optimizer(
            self.options.optimizer,
            self.options.lr,
            self.options.clip_norm,
            skip_threshold=self.options.skip_threshold,
        )
        self.svi = DeviceSVI(model, guide, self.optim, self.elbo)
        self.out_dir, self.progress, self.modules = out_dir, progress, list(modules)
        defaults = [NaNGuard(), SignalStop(), Evaluation(), MetricsFile(), TensorBoard()]
        defaults += [Checkpoints()] + ([Console()] if progress else [])
        self.listeners = merged(defaults, listeners)
        self.epoch, self.history, self.best = 0, [], None
        self.lr_scale = 1.0  # the NaN guard's
        self.run, self.stopped, self.bad_steps = None, False, 0
        if out_dir:
            os.makedirs(out_dir, exist_ok=True)

    @property
    def lr(self):
        """Learning rate of the current epoch: ``lr · lr_decay^epoch · lr_scale``."""
        return self.options.lr * self.options.lr_decay**self.epoch * self.lr_scale

    def set_lr(self):
        set_lr(self.optim, self.lr)

    @property
    def writes(self):
        """Whether this process writes the run directory (it has one, and is rank 0 or alone)."""
        return bool(self.out_dir) and distributed.is_main()

    def emit(self, hook, *args):
        """Call ``hook`` on every listener of the run, in their order."""
        for listener in self.run.listeners:  # sorted by their order once, in _start
            getattr(listener, hook)(self, *args)

    # -- checkpoints -------------------------------------------------------------------------
    @property
    def checkpoint_path(self):
        return os.path.join(self.out_dir, CHECKPOINT)

    def state_dict(self):
        """Everything a resume needs (:func:`~pyro_vae.training.checkpoint.capture`)."""
        return checkpoint.capture(
            self.modules,
            self.optim,
            epoch=self.epoch,
            lr_scale=self.lr_scale,
            history=list(self.history),
            best=self.best,
            listeners={
                type(listener).__name__: state
                for listener in self.listeners
                if (state := listener.state_dict()) is not None
            },
        )

    def save_checkpoint(self, path=None):
        checkpoint.atomic_save(self.state_dict(), path or self.checkpoint_path)

    def load_state_dict(self, state, x):
        """Restore a :meth:`state_dict` (:func:`~pyro_vae.training.checkpoint.resume`); ``x`` is a
        batch used to register the pair's parameters first."""
        checkpoint.resume(self, state, x)

    def _probe(self, *args, **kwargs):
        """Trace the pair once on a batch (:func:`~pyro_vae.core.checked_probe`): its shapes fit,
        and the plate nesting that Pyro's ELBO would guess at its first step. It draws samples, so
        it runs before the RNG state of a checkpoint is restored."""
        self.pair = checked_probe(
            self.model, self.guide, *args, data_plate=self.data_plate, **kwargs
        )
        if getattr(self.elbo, "max_plate_nesting", None) == math.inf:
            # as Pyro counts it: vectorized particles too
            particles = (
                getattr(self.elbo, "vectorize_particles", False) and self.elbo.num_particles > 1
            )
            self.elbo.max_plate_nesting = self.pair.max_plate_nesting + int(particles)
        return self.pair

    # -- the fast path ----------------------------------------------------------------------------
    @property
    def fast_steps(self):
        """``{batch size: captured step}`` that training replays (empty where the fast path does not
        apply)."""
        return self.elbo.steps if isinstance(self.elbo, FastELBO) else {}

    @property
    def fast_note(self):
        """One line: how the steps are replayed, or why not."""
        if not isinstance(self.elbo, FastELBO):
            return "fast path not used: turned off (fast=False)"
        return self.elbo.note

    def enable_fast_path(self, batches, planned_steps=None):
        """Capture loss and gradients once per batch size where that is valid, else say why
        (:meth:`~pyro_vae.estimators.fast.FastELBO.prepare`); return whether it applies.

        ``batches``: two different batches of each size training uses, tensors ``x`` or pairs ``(x,
        kwargs)`` with the per-batch keyword arguments. The note is kept in :attr:`fast_note` and
        logged; the RNG state is left as it was. ``planned_steps``: the steps of the run, which
        decide whether compiling pays.
        """
        if not isinstance(self.elbo, FastELBO):
            return False
        if self.pair is None:
            x, kwargs = batches[0] if isinstance(batches[0], tuple) else (batches[0], {})
            self._probe(x, **kwargs)
        return self.elbo.prepare(self.model, self.guide, batches, planned_steps)

    # -- per-epoch figures and early stopping ------------------------------------------------
    def evaluate_elbo(self, x, batch_size=1000):
        """Mean ELBO per image of ``x`` (nats, with the run's :class:`~.figures.Evaluation`); under
        torch.distributed each rank scores its share."""
        evaluation = next((e for e in self.listeners if isinstance(e, Evaluation)), Evaluation())
        return evaluation.terms(self, x, batch_size)["elbo"]

    @property
    def best_epoch(self):
        """The epoch with the highest ``validation_elbo`` so far (the first of ties), or None."""
        return best_epoch(self.history)

    # -- the loop ------------------------------------------------------------------------------
    def set_training(self, mode):
        for m in self.modules:
            m.train(mode)

    def running_loss(self, step):
        """Mean −ELBO per image over this epoch's finite steps so far (a host read)."""
        return self._total.item() / max(step - self.bad_steps, 1)

    def fit(
        self,
        data,
        epochs,
        batch_size=128,
        test_x=None,
        resume=False,
        callback=None,
        batch_kwargs=None,
        before_epoch=None,
        val_x=None,
        early_stopping=None,
        warmup_epochs=0,
    ):
        """Train until ``epochs`` epochs are complete (counting resumed ones), or early stopping
        ends the run; return every epoch's metrics.

        :param data: an :class:`~pyro_vae.data.ImageData`, a tensor of training images, or a torch
            ``Dataset`` of images (or ``(image, label)`` pairs; PIL images and uint8 become floats
            in [0, 1]).
        :param test_x: images for ``test_elbo`` (default: ``data.test``).
        :param resume: continue from ``out_dir/checkpoint.pt`` instead of starting afresh.
        :param callback: called as ``callback(trainer, metrics)`` after each epoch.
        :param batch_kwargs: optional ``f(index) -> dict`` of keyword arguments added to the
            training steps' call (e.g. labels of ``data.train[index]`` for semi-supervised models);
            evaluation passes none.
        :param before_epoch: called as ``before_epoch(trainer)`` before each epoch's first step,
            also the first after a resume (``trainer.epoch`` epochs complete), e.g.
            ``KLSchedule.set_epoch``: values that change during a run live in tensors the loss
            reads, so the traced fast path sees them too.
        :param val_x: images for ``validation_elbo`` (default: ``data.val``, if the data has one).
        :param early_stopping: patience P: :class:`~.early_stopping.EarlyStopping` after the first
            ``warmup_epochs``; the parameters of the best epoch are kept in the checkpoint and in
            ``best.pt``.
        """
        validation.check_option("epochs", epochs)
        validation.check_option("batch_size", batch_size)
        extra = [Callback(before_epoch, callback)]
        if early_stopping is not None:
            extra.append(EarlyStopping(early_stopping, warmup_epochs))
        else:
            validation.check_option("warmup_epochs", warmup_epochs)
        run = self._start(data, epochs, batch_size, test_x, val_x, resume, batch_kwargs)
        run.listeners = sorted(merged(self.listeners, extra), key=attrgetter("order"))
        self.stopped = False
        try:
            self.emit("on_run_start")
            while self.epoch < epochs and not self.stopped:
                self.history.append(self._epoch())
                self.emit("on_epoch_end", self.history[-1])
        finally:
            self.emit("on_run_end")
        return list(self.history)

    def _start(self, data, epochs, batch_size, test_x, val_x, resume, batch_kwargs):
        """Check the data, probe the pair, restore a checkpoint and capture the fast path's steps:
        the run's :attr:`run`."""
        data, test_x = training_data(data, test_x, self.model)  # checked once, before any step
        val_x = data.val if val_x is None else val_x
        if val_x is not None:
            validation.check_data_for_model(self.model, val_x, "validation data")
        if resume and not self.out_dir:
            raise ValueError(
                "resume=True needs the trainer's out_dir (the run directory to continue)"
            )
        state = validation.load_checkpoint(self.checkpoint_path) if resume else None

        def call(x, idx):  # the pair's (args, kwargs) on a training batch
            args, kwargs = self.batch_call(x, idx)
            return args, ({**kwargs, **batch_kwargs(idx)} if batch_kwargs else kwargs)

        # every random draw of the set-up happens here, before a checkpoint's RNG state is put back
        first, first_idx = next(data.batches(batch_size, shuffle=False, shard=distributed.shard))
        args, kwargs = self.batch_call(first, first_idx)
        plate = self._probe(*args, **kwargs).data_plate
        if state is not None:
            self.load_state_dict(state, first)
        elif self.writes and self.epoch == 0:
            self.history = []
        if distributed.active():
            distributed.broadcast_parameters(
                [p for _, p in sorted(pyro.get_param_store().named_parameters())]
            )
        self.run = SimpleNamespace(
            data=data,
            test_x=test_x,
            val_x=val_x,
            epochs=epochs,
            batch_size=batch_size,
            steps_per_epoch=math.ceil(len(data.train) / batch_size),
            device=first.device,
            call=call,
            probes=fast_path.proof_batches(data.train, batch_size, call),
            per_image=plate.size if plate is not None and plate.scale != 1 else None,
        )
        self.set_training(True)  # the mode the captured steps run in (a trace keeps it)
        planned_steps = self.run.steps_per_epoch * (epochs - self.epoch)
        self._compiled = fast_path.capture(
            self.elbo, self.model, self.guide, self.run.probes, planned_steps
        )
        return self.run

    def _epoch(self):
        """One epoch of steps; its metrics row (the listeners add to it at ``on_epoch_end``)."""
        run = self.run
        self.emit("on_epoch_start")
        if self.fast_steps:  # dropped where a plain and a traced step now disagree
            since = f"from epoch {self.epoch + 1} on"
            self.elbo.recheck(self.model, self.guide, *run.probes[0], since=since)
        self.set_lr()
        start = time.perf_counter()
        self._total = torch.zeros((), dtype=run.data.train.dtype, device=run.device)
        step = 0
        for step, (x, idx) in enumerate(
            run.data.batches(run.batch_size, shard=distributed.shard), 1
        ):
            self.emit("on_step_start")
            args, kwargs = run.call(x, idx)
            loss, ok = self.svi.step(*args, **kwargs)
            self._total += torch.where(ok, loss / (run.per_image or len(x)), 0.0)
            self.emit("on_step_end", step, loss, ok)
        self.emit("on_train_epoch_end", step)
        lr, self.epoch = self.lr, self.epoch + 1
        mean = (
            distributed.all_sum(self._total / max(step - self.bad_steps, 1))
            / distributed.world_size()
        )
        metrics = {
            "epoch": self.epoch,
            "train_loss": mean.item(),
            "seconds": time.perf_counter() - start,
            "lr": lr,
            "steps": run.steps_per_epoch,
            "bad_steps": self.bad_steps,
            "fast_path": bool(self.fast_steps),
            "fast_path_note": self.fast_note,
            **self._compiled,
        }
        if getattr(self.optim, "skip_threshold", None) is not None:  # for a large gradient norm
            metrics["skipped_updates"] = self.optim.take_skipped()
        return metrics
