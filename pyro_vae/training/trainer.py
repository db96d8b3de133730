"""SVI training loop over device-resident data: NaN guard, atomic checkpoints, exact resume, safe
interrupts.

The trainer takes any ``model``/``guide`` pair, called as ``SVI.step`` calls it; ``batch_call`` says
how a batch becomes its arguments (default ``model(x)``: the built-in VAE's ``vae.model`` and
``vae.guide`` are one such pair).

Run directory (``out_dir``):

=================== ======================================================================
``metrics.jsonl``   one JSON object per completed epoch: ``epoch``, ``train_loss`` (mean
                    −ELBO per training image over the finite steps, nats), ``test_elbo``
                    (mean ELBO per test image), ``seconds``, ``lr`` (at the epoch's end),
                    ``steps``,
                    ``bad_steps`` (skipped non-finite steps), ``fast_path`` (whether the
                    epoch's steps replayed one traced graph) and ``fast_path_note`` (how,
                    or why not); ``test_recon`` and ``test_kl``
                    (``test_elbo = test_recon − test_kl``); ``validation_elbo`` when the data
                    has a validation split; ``active_units`` and ``kl_per_dim`` (``{site: …}``,
                    on the first ``diagnostic_images`` test images); ``skipped_updates`` with
                    ``skip_threshold`` (updates skipped for their gradient norm); in the first
                    row a process trains, ``compile_seconds`` (0 when nothing was compiled) and
                    ``compile_cache_hit`` (whether inductor's cache held the graph),
                    ``fast_route`` ("compile", "trace" or "off": how that process's steps
                    ran) and ``commit`` (the code's git commit, ``+dirty`` if edited)
``checkpoint.pt``   epoch, params, module buffers, optimizer state, RNG states, learning-rate
                    scale, the metrics of every completed epoch and (early stopping) the best
                    epoch's parameters; written atomically (temporary file, fsync, rename)
                    before the first epoch and after each one
``best.pt``         early stopping: ``epoch``, ``params``, ``buffers`` of the epoch with the
                    highest ``validation_elbo``
``events.out.*``    TensorBoard event files: the same rows, the running loss, pictures
=================== ======================================================================

The loop runs epochs of :class:`~pyro_vae.training.svi.DeviceSVI` steps (the estimator wrapped in
:class:`~pyro_vae.estimators.fast.FastELBO`: a replayed graph where one was proven); everything else
is a listener (:mod:`.listeners`) with its own module: the per-epoch figures
(:class:`~.figures.Evaluation`), the NaN guard and the signal stop (:mod:`.guards`), early stopping
(:mod:`.early_stopping`), the metrics file and the checkpoints (:mod:`.checkpoint`), TensorBoard
(:mod:`.tensorboard`) and the console (:mod:`.console`). Every random draw of the set-up happens
before a checkpoint is restored, so on CPU ``fit(epochs=4)`` equals ``fit(epochs=2)`` then
``fit(epochs=4, resume=True)`` bit for bit; the figures draw from a fork of the RNG.
"""

import math
import os
import time
from types import SimpleNamespace

import pyro
import torch

from pyro_vae.core import checks as validation
from pyro_vae.core.pair import batch_as_argument, checked_probe
from pyro_vae.data import training_data
from pyro_vae.estimators import FastELBO, make_elbo
from pyro_vae.estimators.fast import proof_rows, traceable_batches
from pyro_vae.training import checkpoint, distributed
from pyro_vae.training.checkpoint import BEST, CHECKPOINT, METRICS, Checkpoints, MetricsFile
from pyro_vae.training.console import Console
from pyro_vae.training.early_stopping import EarlyStopping, best_epoch, should_stop
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
        (:class:`~.guards.NaNGuard`,
        :class:`~.guards.SignalStop`, :class:`~.figures.Evaluation`, :class:`~.console.Console`,
        :class:`~.checkpoint.MetricsFile`, :class:`~.tensorboard.TensorBoard`,
        :class:`~.checkpoint.Checkpoints`); one of a default's class replaces it (e.g.
        ``TensorBoard(images_every=5)``, ``NaNGuard(max_bad_steps=3)``).

    Metrics row of each epoch (``metrics.jsonl``): ``epoch``, ``train_loss`` (mean −ELBO per
    training image over the finite steps, nats), ``seconds`` (the epoch's steps), ``lr`` (at the
    epoch's end), ``steps``, ``bad_steps`` (skipped non-finite steps), ``fast_path`` and
    ``fast_path_note``; ``skipped_updates`` with a ``skip_threshold``; the figures' ``test_elbo``,
    ``test_recon``, ``test_kl``, ``validation_elbo``, ``active_units``, ``kl_per_dim``.
    ``checkpoint.pt`` holds the epoch, params, module buffers, optimizer and RNG states, the
    learning-rate scale, every row and (early stopping) the best epoch; ``best.pt`` the best epoch.
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
        defaults = [
            NaNGuard(),
            SignalStop(),
            Evaluation(),
            MetricsFile(),
            TensorBoard(),
            Checkpoints(),
        ]
        self.listeners = merged(defaults + ([Console()] if progress else []), listeners)
        self.epoch, self.history, self.best, self.lr_scale = (
            0,
            [],
            None,
            1.0,
        )  # lr_scale: the NaN guard's
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
        )

    def save_checkpoint(self, path=None):
        checkpoint.atomic_save(self.state_dict(), path or self.checkpoint_path)

    def load_state_dict(self, state, x):
        """Restore a :meth:`state_dict`; ``x`` is a batch used to register the pair's parameters
        first.

        A checkpoint of another model raises ValueError naming the first differing parameters.
        """
        args, kwargs = self.batch_call(x, torch.arange(len(x), device=x.device))
        checked_probe(
            self.model, self.guide, *args, data_plate=self.data_plate, **kwargs
        )  # registers every param
        checkpoint.restore(state, self.modules, self.optim)
        self.epoch = state["epoch"]
        self.lr_scale = state.get("lr_scale", 1.0)
        self.history = list(state.get("history", []))
        self.best = state.get("best")

    def _probe(self, *args, **kwargs):
        """Trace the pair once on a batch (:func:`~pyro_vae.core.checked_probe`): its shapes fit,
        and the plate nesting that Pyro's ELBO would guess at its first step. It draws samples, so
        it runs before the RNG state of a checkpoint is restored."""
        self.pair = checked_probe(
            self.model, self.guide, *args, data_plate=self.data_plate, **kwargs
        )
        if (
            getattr(self.elbo, "max_plate_nesting", None) == math.inf
        ):  # as Pyro counts it: vectorized particles too
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

    def _recheck_fast_path(self, x, kwargs):
        """At an epoch's start: drop the fast path when a plain and a traced step on ``x``
        disagree."""
        self.elbo.recheck(
            self.model, self.guide, x, kwargs, since=f"from epoch {self.epoch + 1} on"
        )

    # -- per-epoch figures and early stopping
    # --------------------------------------------------------
    def evaluate_terms(self, x, batch_size=1000):
        """Mean ``elbo``, ``recon`` and ``kl`` per image of ``x`` (the run's
        :class:`~.figures.Evaluation`)."""
        evaluation = next(
            (item for item in self.listeners if isinstance(item, Evaluation)), Evaluation()
        )
        return evaluation.terms(self, x, batch_size)

    def evaluate_elbo(self, x, batch_size=1000):
        """Mean ELBO per image of ``x`` (nats); under torch.distributed each rank scores its
        share."""
        return self.evaluate_terms(x, batch_size)["elbo"]

    @property
    def best_epoch(self):
        """The epoch with the highest ``validation_elbo`` so far (the first of ties), or None."""
        return best_epoch(self.history)

    def stop_early(self, patience, warmup_epochs=0):
        """Whether ``patience`` epochs have passed since the best validation ELBO, counting from the
        warm-up's end."""
        return should_stop(self.history, self.epoch, patience, warmup_epochs)

    # -- the loop ------------------------------------------------------------------------------
    def _set_training(self, mode):
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
        :param before_epoch: called as ``before_epoch(trainer)`` before each epoch's first step,
            also the first after a resume (``trainer.epoch`` epochs complete), e.g.
            ``KLSchedule.set_epoch``: values that change during a run live in tensors the loss
            reads, so the traced fast path sees them too.
        :param batch_kwargs: optional ``f(index) -> dict`` of keyword arguments added to the
            training steps' call (e.g. labels of ``data.train[index]`` for semi-supervised models);
            evaluation passes none.
        :param val_x: images for ``validation_elbo`` (default: ``data.val``, when the data has a
            validation split).
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
        self._start(
            data,
            epochs,
            batch_size,
            test_x,
            val_x,
            resume,
            batch_kwargs,
            merged(self.listeners, extra),
        )
        try:
            self.emit("on_run_start")
            while self.epoch < epochs and not self.stopped:
                self.history.append(self._epoch())
                self.emit("on_epoch_end", self.history[-1])
        finally:
            self.emit("on_run_end")
        return list(self.history)

    def _start(self, data, epochs, batch_size, test_x, val_x, resume, batch_kwargs, listeners):
        """Check the data, probe the pair, restore a checkpoint and capture the fast path's steps:
        :attr:`run`."""
        data, test_x = training_data(
            data, test_x, self.model
        )  # the data checked once, before any step
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

        first, first_idx = next(data.batches(batch_size, shuffle=False, shard=distributed.shard))
        # every random draw of the set-up happens here, before the checkpoint's RNG state is
        # restored
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
        steps_per_epoch = math.ceil(len(data.train) / batch_size)
        everything = torch.arange(
            len(data.train), device=first.device
        )  # two batches of each size, on this rank:
        rows = [distributed.shard(everything[s]) for s in proof_rows(len(data.train), batch_size)]
        probes = traceable_batches([call(data.train[idx], idx) for idx in rows if len(idx)])
        per_image = plate.size if plate is not None and plate.scale != 1 else None
        self.run = SimpleNamespace(
            data=data,
            test_x=test_x,
            val_x=val_x,
            epochs=epochs,
            batch_size=batch_size,
            steps_per_epoch=steps_per_epoch,
            device=first.device,
            call=call,
            probes=probes,
            listeners=sorted(listeners, key=lambda item: item.order),
            per_image=per_image,
        )
        self.stopped, self._compiled = (
            False,
            self._capture(probes, steps_per_epoch * (epochs - self.epoch)),
        )
        self._set_training(True)

    def _capture(self, probes, planned_steps):
        """Capture the fast path's steps (once per trainer); what compiling cost this process, for
        every row."""
        commit = {"commit": checkpoint.source_commit()}
        if not isinstance(self.elbo, FastELBO):
            return {"compile_seconds": 0.0, "compile_cache_hit": None, "fast_route": "off"} | commit
        if probes is None:
            self.elbo.refuse("the batch is not the pair's one argument")
        elif not self.elbo.steps:
            self._set_training(True)  # the mode the steps run in (a trace keeps it)
            self.enable_fast_path(probes, planned_steps=planned_steps)
        return {
            "compile_seconds": self.elbo.compile_seconds,
            "compile_cache_hit": self.elbo.cache_hit,
            "fast_route": self.elbo.route,
        } | commit

    def _epoch(self):
        """One epoch of steps; its metrics row (the listeners add to it at ``on_epoch_end``)."""
        run = self.run
        self.emit("on_epoch_start")
        if self.fast_steps:
            self._recheck_fast_path(*run.probes[0])
        self.set_lr()
        start = time.perf_counter()
        self._total = torch.zeros(
            (), dtype=run.data.train.dtype, device=run.device
        )  # the data's precision
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
        if (
            getattr(self.optim, "skip_threshold", None) is not None
        ):  # skipped for a large gradient norm
            metrics["skipped_updates"] = self.optim.take_skipped()
        return metrics
