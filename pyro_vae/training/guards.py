"""What stops a run cleanly: too many non-finite steps (the NaN guard), and SIGINT/SIGTERM at a step
boundary."""

import contextlib
import logging
import signal
import threading

import torch

from pyro_vae.core.checks import option
from pyro_vae.training.console import Console
from pyro_vae.training.listeners import Listener

logger = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """Too many consecutive training steps had a NaN or infinite loss or gradient."""


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on SIGINT/SIGTERM at a step boundary; ``signum`` is the signal."""

    def __init__(self, message, signum=signal.SIGINT):
        super().__init__(message)
        self.signum = signum


class SignalGuard:
    """SIGINT/SIGTERM set a flag that :meth:`check` reads at step boundaries; a second signal raises
    at once."""

    def __init__(self):
        self.signum = None

    @contextlib.contextmanager
    def installed(self):
        """Handle SIGINT/SIGTERM inside the block (in the main thread; elsewhere signals stay as
        they are)."""
        self.signum = None
        if threading.current_thread() is not threading.main_thread():
            yield self
            return

        def handler(signum, frame):
            if self.signum is not None:
                raise TrainingInterrupted("interrupted twice; stopped at once", signum)
            self.signum = signum

        previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for s, h in previous.items():
                signal.signal(s, h)

    def check(self, message):
        """Raise :class:`TrainingInterrupted` with ``message(signal name)`` if a signal arrived."""
        if self.signum is not None:
            raise TrainingInterrupted(message(signal.Signals(self.signum).name), self.signum)


class NonFiniteGuard:
    """The NaN guard's counts over one epoch of steps, kept on the device so that no step waits for
    the host.

    :meth:`record` takes each step's finiteness flag ``ok``: it counts the bad steps, the current
    run of bad steps in a row and the longest run since the last read, and puts back the floating
    ``buffers`` that a bad forward pass changed (e.g. σ-VAE's running σ*), on the device too.
    :meth:`check` reads the counts on the host (every ``check_every`` steps): ``on_bad(n)`` for the
    n bad steps new since the last read (the trainer lowers the learning rate once per step), and
    :class:`NonFiniteLossError` with ``stopped(run)`` once a run reaches ``max_bad_steps``.
    :attr:`seen` is the number of bad steps read so far this epoch.
    """

    def __init__(self, buffers, max_bad_steps):
        self.buffers, self.max_bad_steps = list(buffers), max_bad_steps

    def start(self, device):
        """Zero the counts at an epoch's start."""
        self.bad = self.run = self.worst = torch.zeros((), dtype=torch.long, device=device)
        self.seen = 0

    def hold(self):
        """Copy the buffers before a step (put back by :meth:`record` when the step is bad)."""
        self._saved = [b.clone() for b in self.buffers]

    def record(self, ok):
        self.bad, self.run = self.bad + ~ok, torch.where(ok, 0, self.run + 1)
        self.worst = torch.maximum(self.worst, self.run)
        with torch.no_grad():
            for b, s in zip(self.buffers, self._saved):
                b.copy_(torch.where(ok, b, s))

    def check(self, on_bad, stopped):
        bad, worst = int(self.bad), int(self.worst)
        new, self.seen, self.worst = bad - self.seen, bad, self.run
        if new > 0:
            on_bad(new)
        if worst >= self.max_bad_steps:
            raise NonFiniteLossError(stopped(worst))


class NaNGuard(Listener):
    """The NaN guard as a listener: a non-finite step is skipped on the device (by the step itself);
    here its count is read every ``check_every`` steps (default 1 on a CPU, where a read costs
    nothing, and the console's ``log_every`` on a GPU), the learning rate is multiplied by
    ``bad_lr_factor`` once per bad step (kept for the rest of the run and saved in the checkpoint),
    and ``max_bad_steps`` bad steps in a row raise
    :class:`NonFiniteLossError`, the run directory still holding the last completed epoch. Floating
    module buffers that a bad step changed are put back."""

    order = 0
    options = {name: name for name in ("max_bad_steps", "bad_lr_factor", "check_every")}

    def __init__(self, max_bad_steps=10, bad_lr_factor=0.5, check_every=None, validate_args=True):
        self.max_bad_steps, self.bad_lr_factor = max_bad_steps, bad_lr_factor
        self.check_every = check_every
        if validate_args:
            self.check_options()

    def on_run_start(self, trainer):
        buffers = [b for m in trainer.modules for b in m.buffers() if b.is_floating_point()]
        self.guard = NonFiniteGuard(buffers, self.max_bad_steps)
        # on a GPU, the console's log_every (the trainer has none of its own)
        consoles = [e.log_every for e in trainer.run.listeners if isinstance(e, Console)]
        self.every = self.check_every or (
            1 if trainer.run.device.type == "cpu" else (consoles or [50])[0]
        )

    def on_epoch_start(self, trainer):
        self.guard.start(trainer.run.device)
        trainer.bad_steps = 0

    def on_step_start(self, trainer):
        self.guard.hold()

    def on_step_end(self, trainer, step, loss, ok):
        self.guard.record(ok)
        if step % self.every == 0:
            self._check(trainer, step)

    def on_train_epoch_end(self, trainer, step):
        self._check(trainer, step)

    def _check(self, trainer, step):
        def lower(new):
            trainer.lr_scale *= self.bad_lr_factor**new
            trainer.set_lr()
            logger.warning(
                f"{new} non-finite step(s) skipped by step {step} of epoch {trainer.epoch + 1}; "
                f"learning rate lowered to {trainer.lr:.3g}"
            )
            trainer.emit("on_bad_steps", new, step)

        kept = (
            f"; {trainer.out_dir!r} still holds the checkpoint and metrics of epoch {trainer.epoch}"
            if trainer.out_dir
            else ""
        )
        self.guard.check(
            lower,
            lambda worst: (
                f"the loss or its gradients were NaN/inf for {worst} steps in a row (epoch "
                f"{trainer.epoch + 1}/"
                f"{trainer.run.epochs}, step {step}) although the learning rate was lowered to "
                f"{trainer.lr:.3g}{kept}; "
                f"try a smaller {option('lr', '')}, {option('clip_norm', '')}, another "
                f"{option('likelihood', '')} or {option('sigma', '')}, or check the data"
            ),
        )
        trainer.bad_steps = self.guard.seen


class SignalStop(Listener):
    """SIGINT/SIGTERM stop the loop at the next step boundary with :class:`TrainingInterrupted` (a
    ``KeyboardInterrupt``); the partial epoch is discarded, so ``resume=True`` repeats it exactly; a
    second signal interrupts at once."""

    order = 0

    def on_run_start(self, trainer):
        self.signals = SignalGuard()
        self.installed = self.signals.installed()
        self.installed.__enter__()

    def on_epoch_start(self, trainer):
        self._check(trainer)

    def on_step_end(self, trainer, step, loss, ok):
        self._check(trainer)

    def on_run_end(self, trainer):
        self.installed.__exit__(None, None, None)

    def _check(self, trainer):
        where = (
            f"the checkpoint of epoch {trainer.epoch} in {trainer.out_dir!r}"
            if trainer.out_dir
            else "nothing (no out_dir)"
        )
        self.signals.check(
            lambda name: (
                f"{name} during epoch {trainer.epoch + 1}/{trainer.run.epochs}: stopped at "
                f"a step boundary; the partial epoch is discarded and the run holds "
                f"{where}; continue with {option('resume', 'True')}"
            )
        )
