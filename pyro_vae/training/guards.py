"""What stops a run cleanly: too many non-finite steps, and SIGINT/SIGTERM at a step boundary."""
import contextlib
import signal
import threading


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
