"""SVI training loop over device-resident data: NaN guard, atomic checkpoints, exact resume, safe interrupts.

The trainer takes any ``model``/``guide`` pair, called as ``SVI.step`` calls it; ``batch_call`` says how a batch
becomes its arguments (default ``model(x)``: the built-in VAE's ``vae.model`` and ``vae.guide`` are one such pair).

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
                    ``compile_cache_hit`` (whether inductor's cache held the graph)
``checkpoint.pt``   epoch, params, module buffers, optimizer state, RNG states, learning-rate
                    scale, the metrics of every completed epoch and (early stopping) the best
                    epoch's parameters; written atomically (temporary file, fsync, rename)
                    before the first epoch and after each one
``best.pt``         early stopping: ``epoch``, ``params``, ``buffers`` of the epoch with the
                    highest ``validation_elbo``
``events.out.*``    TensorBoard event files: the same rows, the running loss, pictures
=================== ======================================================================

Validation, the per-epoch figures (:mod:`.figures`) and the pictures draw their random numbers from a fork
of the RNG, so they leave the training trajectory as it would be without them.  The loop uses separate pieces:

* the step, :class:`~pyro_vae.training.svi.DeviceSVI` over the estimator wrapped in
  :class:`~pyro_vae.estimators.fast.FastELBO` (a replayed graph where one was proven);
* the **NaN guard** (:class:`~pyro_vae.training.guards.NonFiniteGuard`): a non-finite step is skipped on the
  device, the learning rate is multiplied by ``bad_lr_factor`` once per bad step (kept for the rest of the
  run and saved in the checkpoint), and ``max_bad_steps`` bad steps in a row raise
  :class:`NonFiniteLossError`, the run directory still holding the last completed epoch;
* **checkpoints** (:mod:`.checkpoint`): everything the next epoch reads, RNG states included, written
  atomically before the first epoch and after each one; every random draw of the set-up happens before a
  checkpoint is restored, so on CPU ``fit(epochs=4)`` equals ``fit(epochs=2)`` then ``fit(epochs=4,
  resume=True)`` bit for bit, and ``metrics.jsonl`` is rewritten from the checkpoint's copy of the metrics;
* the **signal guard** (:class:`~pyro_vae.training.guards.SignalGuard`): SIGINT/SIGTERM stop the loop at the
  next step boundary with :class:`TrainingInterrupted` (a ``KeyboardInterrupt``); the partial epoch is
  discarded, so ``resume=True`` repeats it exactly; a second signal interrupts at once;
* early stopping (:mod:`.early_stopping`) and the TensorBoard files (:mod:`.tensorboard`).
"""
import json
import logging
import math
import os
import time

import pyro
import torch
from tqdm.auto import tqdm

from pyro_vae.core import checks as validation
from pyro_vae.core.pair import batch_as_argument, checked_probe
from pyro_vae.data import training_data
from pyro_vae.estimators import FastELBO, make_elbo
from pyro_vae.estimators.fast import proof_rows, traceable_batches
from pyro_vae.training import checkpoint, distributed, figures
from pyro_vae.training.checkpoint import BEST, CHECKPOINT, METRICS
from pyro_vae.training.early_stopping import best_epoch, should_stop, snapshot
from pyro_vae.training.guards import NonFiniteGuard, NonFiniteLossError, SignalGuard, TrainingInterrupted
from pyro_vae.training.optim import make_optimizer, set_lr
from pyro_vae.training.svi import DeviceSVI
from pyro_vae.training.tensorboard import run_writer

__all__ = ["BEST", "CHECKPOINT", "METRICS", "NonFiniteLossError", "Trainer", "TrainingInterrupted", "resolve_device"]
logger = logging.getLogger(__name__)
FAST_MODES = ("auto", True, False, "compile", "trace")


def resolve_device(device="auto"):
    """``auto`` → ``cuda`` when available, else ``cpu``; checks that a requested CUDA device exists."""
    return validation.check_device(device)


class Trainer:
    """Stochastic variational inference for a model/guide pair.

    :param model: Pyro model, called as SVI calls it with what ``batch_call`` makes of a batch (default ``model(x)``).
    :param guide: Pyro guide, called the same way, with the same data plate.
    :param elbo: an estimator name for :func:`~pyro_vae.make_elbo` or a :class:`pyro.infer.ELBO`.
    :param out_dir: run directory for ``metrics.jsonl`` and ``checkpoint.pt`` (None: write nothing).
    :param modules: ``nn.Module`` s to switch between train and eval mode (optional).
    :param int max_bad_steps: stop with :class:`NonFiniteLossError` after this many non-finite steps in a row.
    :param float bad_lr_factor: multiply the learning rate by this after each non-finite step.
    :param fast: ``"auto"``/``True``, ``"compile"``, ``"trace"`` or ``False``: the fast path, the estimator
        wrapped in :class:`~pyro_vae.estimators.fast.FastELBO` (unless it is one already); whether it applies is
        printed when training starts and said in :attr:`fast_note` and in each epoch's metrics (``fast_path``,
        ``fast_path_note``; ``compile_seconds`` in the first row a process trains).
    :param check_every: every how many steps the host reads the NaN guard's counts (bad steps are skipped on the
        device in between); default 1 on a CPU, where a read costs nothing, and ``log_every`` on a GPU.
    :param str data_plate: the plate over data points, where the trace cannot tell (see
        :func:`~pyro_vae.core.pair`); it sets the per-image scale of ``train_loss`` and is passed to the
        per-data-point estimators.
    :param batch_call: ``batch_call(x, idx) -> (args, kwargs)``: the pair's arguments on rows ``x`` at indices
        ``idx`` of the data (training data in steps, the evaluated images in the per-epoch figures), called
        ``model(*args, **kwargs)`` as ``SVI.step`` calls it; default ``model(x)``, see
        :func:`~pyro_vae.core.pair.batch_as_argument`.  The fast path needs the batch as the one argument.
    :param tensorboard: write TensorBoard event files into ``out_dir`` (:mod:`pyro_vae.training.tensorboard`): every
        metrics row, the running loss every ``log_every`` steps, and pictures every ``images_every`` epochs (0: none).
    :param diagnostic_images: the first this many test images give each epoch's ``active_units`` and ``kl_per_dim``
        (0: not computed).
    :param skip_threshold: skip every update whose total gradient norm exceeds it (VDVAE), counted in each
        epoch's ``skipped_updates`` (see :class:`~pyro_vae.training.optim.FusedOptim`); None: off.
    """

    def __init__(self, model, guide, elbo="trace", particles=1, lr=1e-3, optimizer="adam", lr_decay=1.0,
                 clip_norm=None, out_dir=None, log_every=50, eval_particles=1, progress=True, modules=(),
                 extra_state=None, max_bad_steps=10, bad_lr_factor=0.5, fast="auto", check_every=None,
                 data_plate=None, tensorboard=True, images_every=1, diagnostic_images=1000, batch_call=None,
                 skip_threshold=None):
        if not callable(model) or not callable(guide):
            raise TypeError("model and guide must be callables (Pyro functions), e.g. vae.model, vae.guide")
        for name in ("lr_decay", "log_every", "eval_particles", "max_bad_steps", "check_every", "bad_lr_factor",
                     "images_every", "diagnostic_images"):
            validation.check_option(name, locals()[name])
        if not any(fast is mode or (isinstance(fast, str) and fast == mode) for mode in FAST_MODES):
            raise ValueError(f"fast must be one of {', '.join(map(repr, FAST_MODES))}, got {fast!r}")
        self.model, self.guide = model, guide
        elbo = make_elbo(elbo, particles, data_plate=data_plate) if isinstance(elbo, str) else elbo
        self.elbo = elbo if fast is False or isinstance(elbo, FastELBO) else FastELBO(elbo, fast)
        self.data_plate = data_plate
        self.batch_call = batch_call or batch_as_argument
        self.pair = None  # what the probe of the pair found (pyro_vae.core.PairInfo), set by fit
        self.base_lr, self.lr_decay = lr, lr_decay
        self.optim = make_optimizer(optimizer, lr, clip_norm, skip_threshold=skip_threshold)
        self.svi = DeviceSVI(model, guide, self.optim, self.elbo)
        self.out_dir, self.log_every, self.eval_particles, self.progress = out_dir, log_every, eval_particles, progress
        self.modules, self.extra_state = list(modules), extra_state or {}
        self.max_bad_steps, self.bad_lr_factor, self.check_every = max_bad_steps, bad_lr_factor, check_every
        self.epoch, self.history = 0, []
        self.lr_scale = 1.0  # product of bad_lr_factor over the non-finite steps so far
        self._signals = SignalGuard()
        self.fast = fast
        self.tensorboard, self.images_every, self.diagnostic_images = tensorboard, images_every, diagnostic_images
        self.best = None  # parameters and buffers of the best epoch (early stopping), see early_stopping.snapshot
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
        """Everything a resume needs (:func:`~pyro_vae.training.checkpoint.capture`)."""
        return checkpoint.capture(self.modules, self.optim, epoch=self.epoch, lr_scale=self.lr_scale,
                                  history=list(self.history), best=self.best, **self.extra_state)

    def save_checkpoint(self, path=None):
        checkpoint.atomic_save(self.state_dict(), path or self.checkpoint_path)

    def load_state_dict(self, state, x):
        """Restore a :meth:`state_dict`; ``x`` is a batch used to register the pair's parameters first.

        A checkpoint of another model raises ValueError naming the first differing parameters.
        """
        args, kwargs = self.batch_call(x, torch.arange(len(x), device=x.device))
        checked_probe(self.model, self.guide, *args, data_plate=self.data_plate, **kwargs)  # registers every param
        checkpoint.restore(state, self.modules, self.optim)
        self.epoch = state["epoch"]
        self.lr_scale = state.get("lr_scale", 1.0)
        self.history = list(state.get("history", []))
        self.best = state.get("best")

    def _write_metrics(self):
        """Rewrite ``metrics.jsonl`` from :attr:`history` (the checkpoint's copy), atomically."""
        checkpoint.atomic_write_lines([json.dumps(m) + "\n" for m in self.history], os.path.join(self.out_dir, METRICS))

    # -- the guards ---------------------------------------------------------------------------------
    def _check_signal(self, epochs):
        where = f"the checkpoint of epoch {self.epoch} in {self.out_dir!r}" if self.out_dir else "nothing (no out_dir)"
        self._signals.check(lambda name: f"{name} during epoch {self.epoch + 1}/{epochs}: stopped at a step boundary; "
                                          f"the partial epoch is discarded and the run holds {where}; "
                                          f"continue with resume=True")

    def _check_bad_steps(self, guard, step, epochs):
        """Read the NaN guard: lower the learning rate once per new bad step, give up after ``max_bad_steps`` in a
        row."""
        def lower(new):
            self.lr_scale *= self.bad_lr_factor**new
            set_lr(self.optim, self.lr)
            logger.warning(f"{new} non-finite step(s) skipped by step {step} of epoch {self.epoch + 1}; "
                           f"learning rate lowered to {self.lr:.3g}")

        kept = f"; {self.out_dir!r} still holds the checkpoint and metrics of epoch {self.epoch}" if self.out_dir else ""
        guard.check(lower, lambda worst: (
            f"the loss or its gradients were NaN/inf for {worst} steps in a row (epoch {self.epoch + 1}/{epochs}, "
            f"step {step}) although the learning rate was lowered to {self.lr:.3g}{kept}; try a smaller lr=, "
            f"clip_norm=, another likelihood= or sigma=, or check the data"))

    def _probe(self, *args, **kwargs):
        """Trace the pair once on a batch (:func:`~pyro_vae.core.checked_probe`): its shapes fit, and the plate
        nesting that Pyro's ELBO would guess at its first step.  It draws samples, so it runs before the RNG
        state of a checkpoint is restored."""
        self.pair = checked_probe(self.model, self.guide, *args, data_plate=self.data_plate, **kwargs)
        if getattr(self.elbo, "max_plate_nesting", None) == math.inf:  # as Pyro counts it: vectorized particles too
            particles = getattr(self.elbo, "vectorize_particles", False) and self.elbo.num_particles > 1
            self.elbo.max_plate_nesting = self.pair.max_plate_nesting + int(particles)
        return self.pair

    # -- the fast path ----------------------------------------------------------------------------
    @property
    def fast_steps(self):
        """``{batch size: captured step}`` that training replays (empty where the fast path does not apply)."""
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

        ``batches``: two different batches of each size training uses, tensors ``x`` or pairs ``(x, kwargs)``
        with the per-batch keyword arguments.  The note is kept in :attr:`fast_note` and logged; the RNG state
        is left as it was.  ``planned_steps``: the steps of the run, which decide whether compiling pays.
        """
        if not isinstance(self.elbo, FastELBO):
            return False
        if self.pair is None:
            x, kwargs = batches[0] if isinstance(batches[0], tuple) else (batches[0], {})
            self._probe(x, **kwargs)
        return self.elbo.prepare(self.model, self.guide, batches, planned_steps)

    def _recheck_fast_path(self, x, kwargs):
        """At an epoch's start: drop the fast path when a plain and a traced step on ``x`` disagree."""
        if self.elbo.recheck(self.model, self.guide, x, kwargs, since=f"from epoch {self.epoch + 1} on"):
            if self.progress and distributed.is_main():
                tqdm.write(self.fast_note)

    # -- per-epoch figures and early stopping --------------------------------------------------------
    def evaluate_elbo(self, x, batch_size=1000):
        """Mean ELBO per image of ``x`` (nats); under torch.distributed each rank scores its share."""
        return self.evaluate_terms(x, batch_size)["elbo"]

    def evaluate_terms(self, x, batch_size=1000):
        """Mean ``elbo``, ``recon`` and ``kl`` per image of ``x`` (:func:`~pyro_vae.training.figures.elbo_figures`)."""
        with figures.eval_mode(self.modules):
            return figures.elbo_figures(self.model, self.guide, x, self.eval_particles, batch_size, self.batch_call)

    def latent_figures(self, x, batch_size=1000):
        """Active units and KL per dimension on images ``x`` (:func:`~pyro_vae.training.figures.latent_figures`)."""
        with figures.eval_mode(self.modules):
            return figures.latent_figures(self.model, self.guide, x, batch_size, self.batch_call)

    @property
    def best_epoch(self):
        """The epoch with the highest ``validation_elbo`` so far (the first of ties), or None."""
        return best_epoch(self.history)

    def stop_early(self, patience, warmup_epochs=0):
        """Whether ``patience`` epochs have passed since the best validation ELBO, counting from the warm-up's end."""
        return should_stop(self.history, self.epoch, patience, warmup_epochs)

    # -- the loop ------------------------------------------------------------------------------
    def _set_training(self, mode):
        for m in self.modules:
            m.train(mode)

    @property
    def writes(self):
        """Whether this process writes the run directory (it has one, and is rank 0 or alone)."""
        return bool(self.out_dir) and distributed.is_main()

    @staticmethod
    def _params_by_name():
        return [p for _, p in sorted(pyro.get_param_store().named_parameters())]

    def fit(self, data, epochs, batch_size=128, test_x=None, resume=False, callback=None, batch_kwargs=None,
            before_epoch=None, val_x=None, early_stopping=None, warmup_epochs=0):
        """Train until ``epochs`` epochs are complete (counting resumed ones), or early stopping ends the run;
        return every epoch's metrics.

        :param data: an :class:`~pyro_vae.data.ImageData`, a tensor of training images, or a torch ``Dataset`` of
            images (or ``(image, label)`` pairs; PIL images and uint8 become floats in [0, 1]).
        :param test_x: images for ``test_elbo`` (default: ``data.test``).
        :param resume: continue from ``out_dir/checkpoint.pt`` instead of starting afresh.
        :param callback: called as ``callback(trainer, metrics)`` after each epoch.
        :param before_epoch: called as ``before_epoch(trainer)`` before each epoch's first step, also the first
            after a resume (``trainer.epoch`` epochs complete), e.g. ``KLSchedule.set_epoch``: values that change
            during a run live in tensors the loss reads, so the traced fast path sees them too.
        :param batch_kwargs: optional ``f(index) -> dict`` of keyword arguments added to the training steps' call
            (e.g. labels of ``data.train[index]`` for semi-supervised models); evaluation passes none.
        :param val_x: images for ``validation_elbo`` (default: ``data.val``, when the data has a validation split).
        :param early_stopping: patience P: stop once ``validation_elbo`` has not improved for P epochs in a row
            after the first ``warmup_epochs`` (the counter stays at 0 during warm-up); the parameters of the best
            epoch are kept in the checkpoint and in ``best.pt`` (see :attr:`best_epoch`).  None: off.
        """
        validation.check_option("epochs", epochs)
        validation.check_option("batch_size", batch_size)
        data, test_x = training_data(data, test_x, self.model)  # the data checked once, before any step
        val_x = data.val if val_x is None else val_x
        validation.check_option("early_stopping", early_stopping)
        validation.check_option("warmup_epochs", warmup_epochs)
        if early_stopping is not None and val_x is None:
            raise ValueError("early stopping watches the validation ELBO, but the data has no validation split; "
                             "load it with validation=N (e.g. 10000), pass val_x, or leave out early_stopping")
        if val_x is not None:
            validation.check_data_for_model(self.model, val_x, "validation data")
        state = None
        if resume:
            if not self.out_dir:
                raise ValueError("resume=True needs the trainer's out_dir (the run directory to continue)")
            state = validation.load_checkpoint(self.checkpoint_path)

        def call(x, idx):  # the pair's (args, kwargs) on a training batch
            args, kwargs = self.batch_call(x, idx)
            return args, ({**kwargs, **batch_kwargs(idx)} if batch_kwargs else kwargs)

        first, first_idx = next(data.batches(batch_size, shuffle=False, shard=distributed.shard))
        # every random draw of the set-up happens here, before the checkpoint's RNG state is restored
        args, kwargs = self.batch_call(first, first_idx)
        plate = self._probe(*args, **kwargs).data_plate
        # train_loss per image: a subsampled plate scales the batch to its full size N, else the loss is the batch's
        per_image = (lambda b: plate.size) if plate is not None and plate.scale != 1 else (lambda b: b)
        if state is not None:
            self.load_state_dict(state, first)
            if self.writes:
                self._write_metrics()
                if self.best is not None:
                    checkpoint.atomic_save(self.best, os.path.join(self.out_dir, BEST))
        elif self.writes and self.epoch == 0:
            self.history = []
            self._write_metrics()
            self.save_checkpoint()  # epoch 0: an interrupted first epoch still resumes exactly
        if distributed.active():
            distributed.broadcast_parameters(self._params_by_name())
        steps_per_epoch = math.ceil(len(data.train) / batch_size)
        everything = torch.arange(len(data.train), device=first.device)  # two batches of each size, on this rank:
        rows = [distributed.shard(everything[s]) for s in proof_rows(len(data.train), batch_size)]
        probes = traceable_batches([call(data.train[idx], idx) for idx in rows if len(idx)])
        fast = isinstance(self.elbo, FastELBO)
        if fast and probes is None:
            self.elbo.refuse("the batch is not the pair's one argument")
        elif fast and not self.elbo.steps:
            self._set_training(True)  # the mode the steps run in (a trace keeps it)
            self.enable_fast_path(probes, planned_steps=steps_per_epoch * (epochs - self.epoch))
        # the first row this process trains says what capturing cost: compile seconds, and whether inductor's
        # cache held the graph (None: nothing compiled)
        first_row = {"compile_seconds": self.elbo.compile_seconds if fast else 0.0,
                     "compile_cache_hit": self.elbo.cache_hit if fast else None}
        if self.progress and distributed.is_main() and self.fast_note:
            tqdm.write(self.fast_note)
        guard = NonFiniteGuard([b for m in self.modules for b in m.buffers() if b.is_floating_point()],
                               self.max_bad_steps)
        check_every = self.check_every or (1 if first.device.type == "cpu" else self.log_every)
        self._set_training(True)
        patience = (early_stopping, warmup_epochs) if early_stopping is not None else None
        # TensorBoard: purge_step drops the events of an interrupted epoch
        with self._signals.installed(), run_writer(self.writes and self.tensorboard and self.out_dir,
                                                   purge_step=self.epoch * steps_per_epoch + 1) as tb:
            while self.epoch < epochs and not (patience and self.stop_early(*patience)):
                self._check_signal(epochs)
                if before_epoch:
                    before_epoch(self)
                if self.fast_steps:
                    self._recheck_fast_path(*probes[0])
                set_lr(self.optim, self.lr)
                start = time.perf_counter()
                total = torch.zeros((), dtype=first.dtype, device=first.device)  # the data's precision
                guard.start(first.device)  # bad steps counted on the device, read every `check_every` steps
                step = 0
                bar = tqdm(data.batches(batch_size, shard=distributed.shard), total=steps_per_epoch,
                           disable=not (self.progress and distributed.is_main()),
                           desc=f"epoch {self.epoch + 1}/{epochs}", leave=False)
                for step, (x, idx) in enumerate(bar, 1):
                    guard.hold()
                    args, kwargs = call(x, idx)
                    loss, ok = self.svi.step(*args, **kwargs)
                    total += torch.where(ok, loss / per_image(len(x)), 0.0)
                    guard.record(ok)
                    if step % check_every == 0:
                        self._check_bad_steps(guard, step, epochs)
                    if (self.progress or tb) and step % self.log_every == 0 and step > guard.seen:
                        running = total.item() / (step - guard.seen)
                        bar.set_postfix(loss=f"{running:.2f}")
                        if tb:
                            tb.scalar("running_loss", running, self.epoch * steps_per_epoch + step)
                    self._check_signal(epochs)
                bar.close()
                self._check_bad_steps(guard, step, epochs)
                lr = self.lr
                self.epoch += 1
                mean_loss = distributed.all_sum(total / max(step - guard.seen, 1)) / distributed.world_size()
                metrics = {"epoch": self.epoch, "train_loss": mean_loss.item()}
                if test_x is not None:
                    metrics.update({f"test_{k}": v for k, v in self.evaluate_terms(test_x).items()})
                with torch.random.fork_rng(devices=figures.cuda_devices(first)):  # training's random stream stays
                    if val_x is not None:
                        metrics["validation_elbo"] = self.evaluate_elbo(val_x)
                    if test_x is not None and self.diagnostic_images:
                        with figures.eval_mode(self.modules):  # None: a pair they fail on; off from now on
                            found = figures.latent_figures_or_none(self.model, self.guide,
                                                                   test_x[: self.diagnostic_images], self.batch_call)
                        self.diagnostic_images = self.diagnostic_images if found is not None else 0
                        metrics.update(found or {})
                metrics.update(seconds=time.perf_counter() - start, lr=lr, steps=steps_per_epoch, bad_steps=guard.seen,
                               fast_path=bool(self.fast_steps), fast_path_note=self.fast_note)
                metrics.update(first_row)
                first_row = {}
                if getattr(self.optim, "skip_threshold", None) is not None:  # skipped for a large gradient norm
                    metrics["skipped_updates"] = self.optim.take_skipped()
                self.history.append(metrics)
                if patience and self.best_epoch == self.epoch:
                    self.best = snapshot(self.epoch, self.modules)
                if self.writes:
                    with open(os.path.join(self.out_dir, METRICS), "a") as f:
                        f.write(json.dumps(metrics) + "\n")
                    if tb:
                        pictures = test_x is not None and self.images_every and (
                            self.epoch % self.images_every == 0 or self.epoch == epochs)
                        if not figures.write_epoch(tb, metrics, self.epoch * steps_per_epoch, self.model, self.guide,
                                                   test_x if pictures else None, self.modules):
                            self.images_every = 0
                    self.save_checkpoint()
                    if patience and self.best_epoch == self.epoch:
                        checkpoint.atomic_save(self.best, os.path.join(self.out_dir, BEST))
                if self.progress and distributed.is_main():
                    shown = {k: v for k, v in metrics.items() if k not in ("fast_path_note", "kl_per_dim")}
                    tqdm.write(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in shown.items()))
                if callback:
                    callback(self, metrics)
        if patience and self.stop_early(*patience) and self.progress and distributed.is_main():
            tqdm.write(f"early stopping after epoch {self.epoch}: the validation ELBO peaked at epoch "
                       f"{self.best_epoch}")
        return list(self.history)
