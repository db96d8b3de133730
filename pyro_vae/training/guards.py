"""What stops a run cleanly: too many non-finite steps (the NaN guard), and SIGINT/SIGTERM at a step boundary."""
import contextlib
import signal
import threading

import torch


class NonFiniteLossError(RuntimeError):
    """Too many consecutive training steps had a NaN or infinite loss or gradient."""


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on SIGINT/SIGTERM at a step boundary; ``signum`` is the signal."""

    def __init__(self, message, signum=signal.SIGINT):
        super().__init__(message)
        self.signum = signum


class SignalGuard:
    """SIGINT/SIGTERM set a flag that :meth:`check` reads at step boundaries; a second signal raises at once."""

    def __init__(self):
        self.signum = None

    @contextlib.contextmanager
    def installed(self):
        """Handle SIGINT/SIGTERM inside the block (in the main thread; elsewhere signals stay as they are)."""
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
    """The NaN guard's counts over one epoch of steps, kept on the device so that no step waits for the host.

    :meth:`record` takes each step's finiteness flag ``ok``: it counts the bad steps, the current run of bad steps
    in a row and the longest run since the last read, and puts back the floating ``buffers`` that a bad forward
    pass changed (e.g. σ-VAE's running σ*), on the device too.  :meth:`check` reads the counts on the host (every
    ``check_every`` steps): ``on_bad(n)`` for the n bad steps new since the last read (the trainer lowers the
    learning rate once per step), and :class:`NonFiniteLossError` with ``stopped(run)`` once a run reaches
    ``max_bad_steps``.  :attr:`seen` is the number of bad steps read so far this epoch.
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
