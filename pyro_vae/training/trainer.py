"""SVI training loop over device-resident data: NaN guard, atomic checkpoints, exact resume, safe interrupts.

The trainer takes any ``model``/``guide`` callables whose first argument is the
batch ``x``; the built-in VAE's ``vae.model`` and ``vae.guide`` are one such pair.

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
                    on the first ``diagnostic_images`` test images)
``checkpoint.pt``   epoch, params, module buffers, optimizer state, RNG states, learning-rate
                    scale, the metrics of every completed epoch and (early stopping) the best
                    epoch's parameters; written atomically (temporary file, fsync, rename)
                    before the first epoch and after each one
``best.pt``         early stopping: ``epoch``, ``params``, ``buffers`` of the epoch with the
                    highest ``validation_elbo``
``events.out.*``    TensorBoard event files: the same rows, the running loss, pictures
=================== ======================================================================

Validation, the per-epoch latent figures and the pictures draw their random numbers from a
fork of the RNG, so they leave the training trajectory as it would be without them.

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
import logging
import math
import os
import time

import pyro
import torch
from tqdm.auto import tqdm

from pyro_vae.core import checks as validation
from pyro_vae.core.pair import checked_probe
from pyro_vae.data import ImageData
from pyro_vae.estimators import make_elbo
from pyro_vae.evaluation.metrics import _latent_pass, active_units, elbo_terms, posterior_means
from pyro_vae.training import checkpoint, distributed, fast
from pyro_vae.training.checkpoint import BEST, CHECKPOINT, METRICS
from pyro_vae.training.guards import NonFiniteLossError, SignalGuard, TrainingInterrupted  # noqa: F401  (their home)
from pyro_vae.training.optim import make_optimizer, set_lr
from pyro_vae.training.svi import DeviceSVI

logger = logging.getLogger(__name__)
FAST_MODES = ("auto", True, False, "compile", "trace")


def resolve_device(device="auto"):
    """``auto`` → ``cuda`` when available, else ``cpu``; checks that a requested CUDA device exists."""
    return validation.check_device(device)


@contextlib.contextmanager
def _closing(writer):
    try:
        yield writer
    finally:
        if writer is not None:
            writer.close()


def _cuda_devices(x):
    """The CUDA device of tensor ``x`` as a list for :func:`torch.random.fork_rng` (empty on a CPU)."""
    return [x.device] if x.device.type == "cuda" else []


class Trainer:
    """Stochastic variational inference for a model/guide pair.

    :param model: Pyro model ``model(x)``.
    :param guide: Pyro guide ``guide(x)`` with the same data plate.
    :param elbo: an estimator name for :func:`~pyro_vae.make_elbo` or a :class:`pyro.infer.ELBO`.
    :param out_dir: run directory for ``metrics.jsonl`` and ``checkpoint.pt`` (None: write nothing).
    :param modules: ``nn.Module`` s to switch between train and eval mode (optional).
    :param int max_bad_steps: stop with :class:`NonFiniteLossError` after this many non-finite steps in a row.
    :param float bad_lr_factor: multiply the learning rate by this after each non-finite step.
    :param fast: ``"auto"`` (or ``True``) traces loss and gradients into one graph for any pair that does not
        declare ``jit_compatible = False``, once proven on real batches, and compiles it when the run is long
        enough to pay for that; ``"compile"`` always compiles, ``"trace"`` never; ``False`` turns the fast path
        off (see :meth:`enable_fast_path`).  Whether it applies is printed when training starts and said in
        :attr:`fast_note` and in each epoch's metrics (``fast_path``, ``fast_path_note``).
    :param check_every: every how many steps the host reads the NaN guard's counts (bad steps are skipped on the
        device in between); default 1 on a CPU, where a read costs nothing, and ``log_every`` on a GPU.
    :param str data_plate: the plate over data points, where the trace cannot tell (see
        :func:`~pyro_vae.core.pair`); it sets the per-image scale of ``train_loss`` and is passed to the
        per-data-point estimators.
    :param tensorboard: write TensorBoard event files into ``out_dir`` (:mod:`pyro_vae.training.tensorboard`): every metrics
        row, the running loss every ``log_every`` steps, and pictures every ``images_every`` epochs (0: none).
    :param diagnostic_images: the first this many test images give each epoch's ``active_units`` and ``kl_per_dim``
        (0: not computed).
    :param skip_threshold: skip every update whose total gradient norm exceeds it (VDVAE), counted in each
        epoch's ``skipped_updates`` (see :class:`~pyro_vae.training.optim.FusedOptim`); None: off.
    """

    def __init__(self, model, guide, elbo="trace", particles=1, lr=1e-3, optimizer="adam", lr_decay=1.0,
                 clip_norm=None, out_dir=None, log_every=50, eval_particles=1, progress=True, modules=(),
                 extra_state=None, max_bad_steps=10, bad_lr_factor=0.5, fast="auto", check_every=None,
                 data_plate=None, tensorboard=True, images_every=1, diagnostic_images=1000, skip_threshold=None):
        if not callable(model) or not callable(guide):
            raise TypeError("model and guide must be callables taking the batch x first, e.g. vae.model, vae.guide")
        validation.check_fraction("lr_decay", lr_decay, "; 1 keeps the learning rate constant")
        validation.check_positive_int("log_every", log_every)
        validation.check_positive_int("eval_particles", eval_particles)
        validation.check_positive_int("max_bad_steps", max_bad_steps, "; pass e.g. --max-bad-steps 10")
        if check_every is not None:
            validation.check_positive_int("check_every", check_every)
        validation.check_fraction("bad_lr_factor", bad_lr_factor, "; e.g. 0.5 halves the learning rate")
        if not any(fast is mode or (isinstance(fast, str) and fast == mode) for mode in FAST_MODES):
            raise ValueError(f"fast must be one of {', '.join(map(repr, FAST_MODES))}, got {fast!r}")
        self.model, self.guide = model, guide
        self.elbo = make_elbo(elbo, particles, data_plate=data_plate) if isinstance(elbo, str) else elbo
        self.data_plate = data_plate
        self.pair = None  # what the probe of the pair found (pyro_vae.core.PairInfo), set by fit
        self.base_lr, self.lr_decay = lr, lr_decay
        self.optim = make_optimizer(optimizer, lr, clip_norm, skip_threshold=skip_threshold)
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
        self._signals = SignalGuard()
        self.fast = fast
        self.check_every = check_every
        self.fast_note = None
        validation.check_nonnegative_int("images_every", images_every, "; 0: no images in TensorBoard")
        validation.check_nonnegative_int("diagnostic_images", diagnostic_images, "; 0: no per-epoch active units")
        self.tensorboard, self.images_every, self.diagnostic_images = tensorboard, images_every, diagnostic_images
        self.best = None  # parameters and buffers of the best epoch (early stopping), see _snapshot
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
        checked_probe(self.model, self.guide, x, data_plate=self.data_plate)  # registers every param and module
        checkpoint.restore(state, self.modules, self.optim)
        self.epoch = state["epoch"]
        self.lr_scale = state.get("lr_scale", 1.0)
        self.history = list(state.get("history", []))
        self.best = state.get("best")

    def _write_metrics(self):
        """Rewrite ``metrics.jsonl`` from :attr:`history` (the checkpoint's copy), atomically."""
        checkpoint.atomic_write_lines([json.dumps(m) + "\n" for m in self.history], os.path.join(self.out_dir, METRICS))

    # -- signals ---------------------------------------------------------------------------------
    def _check_signal(self, epochs):
        where = f"the checkpoint of epoch {self.epoch} in {self.out_dir!r}" if self.out_dir else "nothing (no out_dir)"
        self._signals.check(lambda name: f"{name} during epoch {self.epoch + 1}/{epochs}: stopped at a step boundary; "
                                          f"the partial epoch is discarded and the run holds {where}; "
                                          f"continue with --resume")

    def _probe(self, x, kwargs=None):
        """Trace the pair once on a batch (:func:`~pyro_vae.core.checked_probe`): its shapes fit, and the plate
        nesting that Pyro's ELBO would guess at its first step.  It draws samples, so it runs before the RNG
        state of a checkpoint is restored."""
        self.pair = checked_probe(self.model, self.guide, x, data_plate=self.data_plate, **(kwargs or {}))
        if getattr(self.elbo, "max_plate_nesting", None) == math.inf:  # as Pyro counts it: vectorized particles too
            particles = getattr(self.elbo, "vectorize_particles", False) and self.elbo.num_particles > 1
            self.elbo.max_plate_nesting = self.pair.max_plate_nesting + int(particles)
        return self.pair

    # -- the fast path ----------------------------------------------------------------------------
    def enable_fast_path(self, batches, planned_steps=None):
        """Trace loss and gradients once per batch size (:mod:`pyro_vae.training.fast`) where that is valid; else say why.

        ``batches``: two different batches of each size training uses, tensors ``x`` or pairs ``(x, kwargs)``
        with the per-batch keyword arguments (a trace that freezes data-dependent control flow is caught
        by comparing it with the plain loss on both).  The note is kept in :attr:`fast_note` and logged;
        the RNG state is left as it was.

        The graphs are then compiled by TorchInductor (:meth:`fast.TracedStep.compile`) when ``fast="compile"``,
        or with ``fast="auto"`` when the ``planned_steps`` of the run would take at least
        ``fast.COMPILE_WHEN_SECONDS[device]`` through the TorchScript replay (compiling costs seconds).
        """
        why = fast.blocker(self.elbo, self.model, self.guide, self.fast)
        compiled = {}
        if why is None:
            if self.pair is None:
                self._probe(*(batches[0] if isinstance(batches[0], tuple) else (batches[0],)))
            compiled, why = fast.trace_steps(self.elbo, self.model, self.guide, batches)
        self.svi.compiled = compiled
        if why is None:
            self.fast_note = (f"fast path: loss and gradients traced into one graph for batch sizes "
                              f"{sorted(compiled)}, {self._compile(batches, planned_steps)}")
        else:
            self.fast_note = f"fast path not used: {why}"
        logger.info(self.fast_note)
        return why is None

    def _compile(self, batches, planned_steps):
        """Compile the traced steps where that pays (see :meth:`enable_fast_path`); say how they are replayed."""
        compiled = self.svi.compiled
        x, kwargs = batches[0] if isinstance(batches[0], tuple) else (batches[0], {})
        backend = compiled[len(x)].backend
        if self.fast == "trace":
            return f"replayed by {backend} (fast='trace': not compiled)"
        if self.fast != "compile":
            seconds = fast.step_seconds(compiled[len(x)], x, kwargs)
            worth = fast.COMPILE_WHEN_SECONDS.get(x.device.type, fast.COMPILE_WHEN_SECONDS["cuda"])
            if planned_steps is None or planned_steps * seconds < worth:
                logger.info(f"fast path: {planned_steps or 'an unknown number of'} planned steps of "
                            f"{seconds * 1e3:.3g} ms through {backend}; compiling pays from {worth:.0f} s")
                return f"replayed by {backend} (not compiled: the run is too short to pay for compiling)"
        took, why = fast.compile_steps(compiled, self.elbo, self.model, self.guide, batches)
        if why:
            return f"replayed by {backend} (not compiled: {why})"
        logger.info(f"fast path: compiled by inductor in {took:.1f} s")
        how = " as one CUDA graph per step" if x.device.type == "cuda" else ""
        rest = [size for size, step in compiled.items() if step.backend != "inductor"]
        rest = f"; batch size {', '.join(map(str, rest))} by {backend}" if rest else ""
        return f"replayed by inductor{how}{rest}"

    def _recheck_fast_path(self, x, kwargs):
        """Prove the trace again at an epoch's start (values read from Python may have changed since it was made):
        one plain and one traced step on ``x`` must agree, or the fast path is dropped.  RNG and buffers are
        left as they were, so training draws the same numbers either way."""
        step = self.svi.compiled.get(len(x))
        if step is None:
            return
        rng = pyro.util.get_rng_state()
        try:
            why = fast.check_step(step, self.elbo, self.model, self.guide, x, kwargs)
        finally:
            pyro.util.set_rng_state(rng)
        if why:
            self.svi.compiled = {}
            self.fast_note = f"fast path not used from epoch {self.epoch + 1} on: {why}"
            logger.warning(self.fast_note)
            if self.progress and distributed.is_main():
                tqdm.write(self.fast_note)

    # -- the loop ------------------------------------------------------------------------------
    def _set_training(self, mode):
        for m in self.modules:
            m.train(mode)

    def evaluate_elbo(self, x, batch_size=1000):
        """Mean ELBO per image of ``x`` (nats); under torch.distributed each rank scores its share."""
        return self.evaluate_terms(x, batch_size)["elbo"]

    def evaluate_terms(self, x, batch_size=1000):
        """Mean ``elbo``, ``recon`` = E_q[log p(x|z)] and ``kl`` = E_q[log q − log p] per image of ``x`` (nats;
        ``elbo = recon − kl``), from one pass; under torch.distributed each rank scores its share."""
        self._set_training(False)
        try:
            recon, kl = elbo_terms(self.model, self.guide, distributed.shard(x), num_particles=self.eval_particles,
                                   batch_size=batch_size)
        finally:
            self._set_training(True)
        elbo = recon - kl
        total = distributed.all_sum(torch.stack([elbo.sum(), recon.sum(), kl.sum(), elbo.new_tensor(float(len(elbo)))]))
        mean = (total[:3] / total[3]).tolist()
        return dict(zip(("elbo", "recon", "kl"), mean))

    def latent_figures(self, x, batch_size=1000):
        """``{"active_units": {site: count}, "kl_per_dim": {site: [KL of each dimension]}}`` on images ``x``
        (see :mod:`pyro_vae.evaluation.metrics`; a site whose q does not factorize has no ``kl_per_dim`` entry)."""
        self._set_training(False)
        try:
            _, _, per_dim = _latent_pass(self.model, self.guide, x, batch_size=batch_size)
            active = active_units(posterior_means(self.guide, x, batch_size=batch_size))
        finally:
            self._set_training(True)
        return {"active_units": {site: count for site, (count, _) in active.items()},
                "kl_per_dim": {site: t.mean(0).tolist() for site, t in per_dim.items() if t is not None}}

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
            from pyro_vae.datasets import dataset_tensors

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
        :param batch_kwargs: optional ``f(index) -> dict`` of extra keyword arguments for model and guide on the
            training batch ``data.train[index]`` (e.g. labels for semi-supervised models); evaluation passes none.
        :param val_x: images for ``validation_elbo`` (default: ``data.val``, when the data has a validation split).
        :param early_stopping: patience P: stop once ``validation_elbo`` has not improved for P epochs in a row
            after the first ``warmup_epochs`` (the counter stays at 0 during warm-up); the parameters of the best
            epoch are kept in the checkpoint and in ``best.pt`` (see :attr:`best_epoch`).  None: off.
        """
        data, test_x = self._prepare(data, test_x, batch_size, epochs)
        val_x = data.val if val_x is None else val_x
        if early_stopping is not None:
            validation.check_positive_int("early_stopping", early_stopping, "; pass e.g. --early-stopping 50")
            validation.check_nonnegative_int("warmup_epochs", warmup_epochs)
            if val_x is None:
                raise ValueError("early stopping watches the validation ELBO, but the data has no validation split; "
                                 "pass --validation N (e.g. 10000) or leave out --early-stopping")
        if val_x is not None:
            validation.check_data_for_model(self.model, val_x, "validation data")
        state = None
        if resume:
            if not self.out_dir:
                raise ValueError("resume=True needs the trainer's out_dir (the run directory to continue)")
            state = validation.load_checkpoint(self.checkpoint_path)
        first = next(data.batches(batch_size, shuffle=False, shard=distributed.shard))[0]
        # every random draw of the set-up happens here, before the checkpoint's RNG state is restored
        plate = self._probe(first).data_plate
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
        n = len(data.train)
        probes = [slice(0, batch_size), slice(batch_size, 2 * batch_size)]
        if n % batch_size:  # the last, shorter batch: its own trace, checked on two different batches too
            probes += [slice(n - n % batch_size, n), slice(0, n % batch_size)]
        # (x, kwargs) of two different batches of each size, as this rank sees them
        probes = [(distributed.shard(data.train[s]),
                   {k: distributed.shard(v) for k, v in (batch_kwargs(s) if batch_kwargs else {}).items()})
                  for s in probes if len(range(n)[s])]
        probes = [(x, kw) for x, kw in probes if len(x)]
        if self.fast is False:
            self.svi.compiled, self.fast_note = {}, "fast path not used: turned off (fast=False)"
        elif not self.svi.compiled:
            self._set_training(True)  # the mode the steps run in (a trace keeps it)
            self.enable_fast_path(probes, planned_steps=steps_per_epoch * (epochs - self.epoch))
        if self.progress and distributed.is_main() and self.fast_note:
            tqdm.write(self.fast_note)
        buffers = [b for m in self.modules for b in m.buffers() if b.is_floating_point()]
        check_every = self.check_every or (1 if first.device.type == "cpu" else self.log_every)
        self._set_training(True)
        tb = None
        if self.writes and self.tensorboard:
            from pyro_vae.training.tensorboard import RunWriter

            tb = RunWriter(self.out_dir, purge_step=self.epoch * steps_per_epoch + 1)  # drops an interrupted epoch
        patience = (early_stopping, warmup_epochs) if early_stopping is not None else None
        with self._signals.installed(), _closing(tb):
            while self.epoch < epochs and not (patience and self.stop_early(*patience)):
                self._check_signal(epochs)
                if before_epoch:
                    before_epoch(self)
                if self.svi.compiled:
                    self._recheck_fast_path(*probes[0])
                set_lr(self.optim, self.lr)
                start = time.perf_counter()
                total = torch.zeros((), dtype=first.dtype, device=first.device)  # the data's precision
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
                    total += torch.where(ok, loss / per_image(len(x)), 0.0)
                    bad, run = bad + ~ok, torch.where(ok, 0, run + 1)
                    worst = torch.maximum(worst, run)
                    with torch.no_grad():  # buffers changed by a bad forward pass (e.g. σ-VAE's running σ*) go back
                        for b, s in zip(buffers, saved):
                            b.copy_(torch.where(ok, b, s))
                    if step % check_every == 0:
                        seen = self._act_on_bad_steps(int(bad), seen, int(worst), step, epochs)
                        worst = run
                    if (self.progress or tb) and step % self.log_every == 0 and step > seen:
                        running = total.item() / (step - seen)
                        bar.set_postfix(loss=f"{running:.2f}")
                        if tb:
                            tb.scalar("running_loss", running, self.epoch * steps_per_epoch + step)
                    self._check_signal(epochs)
                bar.close()
                seen = self._act_on_bad_steps(int(bad), seen, int(worst), step, epochs)
                lr = self.lr
                self.epoch += 1
                mean_loss = distributed.all_sum(total / max(step - seen, 1)) / distributed.world_size()
                metrics = {"epoch": self.epoch, "train_loss": mean_loss.item()}
                if test_x is not None:
                    metrics.update({f"test_{k}": v for k, v in self.evaluate_terms(test_x).items()})
                with torch.random.fork_rng(devices=_cuda_devices(first)):  # leaves training's random stream as it is
                    if val_x is not None:
                        metrics["validation_elbo"] = self.evaluate_elbo(val_x)
                    if test_x is not None and self.diagnostic_images:
                        metrics.update(self._latent_figures(test_x[: self.diagnostic_images]))
                metrics.update(seconds=time.perf_counter() - start, lr=lr, steps=steps_per_epoch, bad_steps=seen,
                               fast_path=bool(self.svi.compiled), fast_path_note=self.fast_note)
                if getattr(self.optim, "skip_threshold", None) is not None:  # skipped for a large gradient norm
                    metrics["skipped_updates"] = self.optim.take_skipped()
                self.history.append(metrics)
                if patience and self.best_epoch == self.epoch:
                    self.best = self._snapshot()
                if self.writes:
                    with open(os.path.join(self.out_dir, METRICS), "a") as f:
                        f.write(json.dumps(metrics) + "\n")
                    if tb:
                        self._write_tensorboard(tb, metrics, first.device, test_x, steps_per_epoch, epochs)
                    self.save_checkpoint()
                    if patience and self.best_epoch == self.epoch:
                        checkpoint.atomic_save(self.best, os.path.join(self.out_dir, BEST))
                if self.progress and distributed.is_main():
                    tqdm.write(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                        for k, v in metrics.items() if k != "fast_path_note"))
                if callback:
                    callback(self, metrics)
        if patience and self.stop_early(*patience) and self.progress and distributed.is_main():
            tqdm.write(f"early stopping after epoch {self.epoch}: the validation ELBO peaked at epoch "
                       f"{self.best_epoch}")
        return list(self.history)

    # -- early stopping and the per-epoch record ----------------------------------------------------
    @property
    def best_epoch(self):
        """The epoch with the highest ``validation_elbo`` so far (the first of ties), or None."""
        scored = [(m["validation_elbo"], -m["epoch"]) for m in self.history
                  if m.get("validation_elbo") is not None and math.isfinite(m["validation_elbo"])]
        return -max(scored)[1] if scored else None

    def stop_early(self, patience, warmup_epochs=0):
        """Whether ``patience`` epochs have passed since the best validation ELBO, counting from the warm-up's end.

        It is read from :attr:`history` alone, so a resumed run continues the count exactly.
        """
        if not self.history or self.best_epoch is None:
            return False
        return self.epoch - max(self.best_epoch, warmup_epochs) >= patience

    def _snapshot(self):
        """Parameters and buffers now (on the CPU), with the epoch: what ``best.pt`` holds."""
        store = pyro.get_param_store()
        return {"epoch": self.epoch,
                "params": {name: p.detach().cpu().clone() for name, p in store.named_parameters()},
                "buffers": {i: {k: b.detach().cpu().clone() for k, b in m.named_buffers()}
                            for i, m in enumerate(self.modules)}}

    def _latent_figures(self, x):
        """:meth:`latent_figures`, or {} (with one warning, and off for the rest of the run) for a pair it fails on."""
        try:
            return self.latent_figures(x)
        except Exception as e:  # a user pair the evaluator cannot read: training goes on without these figures
            logger.warning(f"per-epoch active units / KL per dimension turned off: {type(e).__name__}: {e}")
            self.diagnostic_images = 0
            return {}

    def _write_tensorboard(self, tb, metrics, device, test_x, steps_per_epoch, epochs):
        """The epoch's row, and every ``images_every`` epochs (and the last) its pictures, then flush: the events
        are on disk before the checkpoint that includes the epoch."""
        step = self.epoch * steps_per_epoch
        tb.row(metrics, step)
        if test_x is not None and self.images_every and (self.epoch % self.images_every == 0 or self.epoch == epochs):
            self._set_training(False)
            try:
                from pyro_vae.training.tensorboard import picture_grids

                with torch.random.fork_rng(devices=_cuda_devices(test_x)):
                    grids = picture_grids(self.model, self.guide, test_x)
                for tag, images in grids.items():
                    tb.images(tag, images, step)
            except Exception as e:  # e.g. a pair without an observed image site "x"
                logger.warning(f"TensorBoard images turned off: {type(e).__name__}: {e}")
                self.images_every = 0
            finally:
                self._set_training(True)
        tb.flush()

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
