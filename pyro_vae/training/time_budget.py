"""A wall-clock budget for a run, as a listener: :class:`TimeBudget` (``--time-budget MINUTES``).

For comparisons at equal wall-clock time (and for jobs with a time limit): the run ends at the
epoch end after which one more epoch would pass the budget, with that epoch's evaluation,
metrics and checkpoint done, so it stays within the budget and ``--resume`` with a larger budget
continues it. The clock runs from the first epoch's start (the fast path's capture and compile
before it are not counted) and adds up over resumes.
"""

import time

import torch
from tqdm.auto import tqdm

from pyro_vae.training import distributed
from pyro_vae.training.listeners import Listener


class TimeBudget(Listener):
    """Stop once ``used + cycle > minutes``: ``used`` the run's minutes so far (steps, evaluation,
    pictures, checkpoints, summed over resumes), ``cycle`` the mean minutes of an epoch of this
    process. Each metrics row gets ``minutes``, the run's minutes at its end."""

    order = 15  # after early stopping (10), before the metrics file (20) writes the row
    options = {"minutes": "time_budget"}

    def __init__(self, minutes, validate_args=True):
        self.minutes, self.before, self.start, self.hit = minutes, 0.0, None, False
        if validate_args:
            self.check_options()

    def on_run_start(self, trainer):
        self.start, self.epochs = time.perf_counter(), 0
        if self.before >= self.minutes:
            trainer.stopped = self.hit = True

    def used(self):
        """The run's minutes so far."""
        now = 0.0 if self.start is None else (time.perf_counter() - self.start) / 60
        return self.before + now

    def on_epoch_end(self, trainer, metrics):
        self.epochs += 1
        used = self.used()
        metrics["minutes"] = used
        cycle = (used - self.before) / self.epochs
        late = torch.tensor(float(used + cycle > self.minutes), device=trainer.run.device)
        if distributed.all_sum(late).item() > 0:  # under torchrun: every rank stops together
            trainer.stopped = self.hit = True

    def on_run_end(self, trainer):
        used = self.used()
        if self.hit and trainer.progress and distributed.is_main():
            tqdm.write(
                f"time budget: stopped after epoch {trainer.epoch} at {used:.1f} of "
                f"{self.minutes:g} minutes (one more epoch would pass it)"
            )
        self.before, self.start = used, None

    def state_dict(self):
        return {"minutes_used": self.used()}

    def load_state_dict(self, state):
        self.before = state["minutes_used"]
