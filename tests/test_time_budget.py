"""``--time-budget``: a run ends at the last epoch that fits its minutes, and a resume with a
larger budget continues the count."""

import json

from pyro_vae.app.cli import main
from pyro_vae.training import time_budget
from pyro_vae.training.listeners import Listener
from pyro_vae.training.time_budget import TimeBudget
from pyro_vae.training.trainer import METRICS
from tests.test_resume import make_trainer, synthetic_data


class Clock(Listener):
    """A fake clock that moves on ``seconds`` at each epoch's end (before the budget reads it)."""

    order = 0

    def __init__(self, seconds):
        self.now, self.seconds = 0.0, seconds

    def __call__(self):
        return self.now

    def on_epoch_end(self, trainer, metrics):
        self.now += self.seconds


def test_the_run_ends_at_the_last_epoch_that_fits_and_a_resume_continues_the_count(
    tmp_path, monkeypatch
):
    clock = Clock(60.0)  # every epoch takes one minute
    monkeypatch.setattr(time_budget.time, "perf_counter", clock)
    trainer = make_trainer(tmp_path, listeners=[clock, TimeBudget(3.5)])
    history = trainer.fit(synthetic_data(), 10, batch_size=20)
    # after 3 minutes a fourth epoch would end at 4 > 3.5
    assert [row["minutes"] for row in history] == [1.0, 2.0, 3.0] and trainer.epoch == 3
    trainer = make_trainer(tmp_path, listeners=[clock, TimeBudget(5.0)])
    history = trainer.fit(synthetic_data(), 10, batch_size=20, resume=True)
    assert [row["minutes"] for row in history] == [1.0, 2.0, 3.0, 4.0, 5.0]
    trainer = make_trainer(tmp_path, listeners=[clock, TimeBudget(5.0)])
    assert len(trainer.fit(synthetic_data(), 10, batch_size=20, resume=True)) == 5  # spent


def test_pyro_vae_train_with_a_time_budget_stops_early_and_keeps_its_metrics(tmp_path):
    out = tmp_path / "run"
    argv = ["train", "--limit", "200", "--test-limit", "50", "--epochs", "5", "--out", str(out)]
    main([*argv, "--device", "cpu", "--time-budget", "1e-6", "--quiet"])
    rows = [json.loads(line) for line in open(out / METRICS)]
    assert len(rows) == 1 and rows[0]["minutes"] > 1e-6  # one epoch, then one more would not fit
    assert (out / "reconstructions.png").exists() and (out / "checkpoint.pt").exists()
