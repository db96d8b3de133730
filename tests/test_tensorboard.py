"""Issue 18: TensorBoard event files in every run directory, matching metrics.jsonl, read back with
TensorBoard."""

import json
import math
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pyro
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from pyro_vae import Config, Trainer
from pyro_vae.app import experiment
from pyro_vae.data import ImageData
from pyro_vae.models import build_model
from pyro_vae.training.tensorboard import flatten, read_scalars
from pyro_vae.training.trainer import METRICS, TrainingInterrupted
from pyro_vae.training.optim import Optimization
from pyro_vae.training.tensorboard import TensorBoard

DEBIAN = "/usr/share/datasets/fashion-mnist"
SIDE, N, BATCH = 4, 60, 16
STEPS = math.ceil(N / BATCH)  # steps per epoch


def synthetic_data():
    g = torch.Generator().manual_seed(1)
    binary = lambda n: torch.bernoulli(torch.rand(n, 1, SIDE, SIDE, generator=g), generator=g)
    return ImageData(
        train=torch.rand(N, 1, SIDE, SIDE, generator=g),
        train_labels=None,
        test=binary(40),
        test_labels=None,
        val=binary(30),
        binarize="dynamic",
    )


def make_trainer(
    out_dir, config=Config(latent_dim=3, hidden_dims=[16]), tensorboard=True, images_every=1
):
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    vae = build_model(config, (1, SIDE, SIDE), num_data=N)
    board = TensorBoard(log_every=2, images_every=images_every, enabled=tensorboard)
    return Trainer(
        vae.model,
        vae.guide,
        optim=Optimization(lr=1e-2),
        out_dir=out_dir and str(out_dir),
        progress=False,
        modules=[vae],
        listeners=[board],
    )


def rows(out_dir):
    return [json.loads(line) for line in open(os.path.join(out_dir, METRICS))]


def accumulator(out_dir):
    acc = EventAccumulator(str(out_dir), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


def test_every_scalar_of_the_metrics_row_once_per_epoch_and_images(tmp_path):
    out = tmp_path / "run"
    make_trainer(out).fit(synthetic_data(), epochs=3, batch_size=BATCH)
    history = rows(out)
    acc = accumulator(out)
    scalars = {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
    expected, _ = flatten(history[0])
    # the row's keys are the tags: train loss, test ELBO with its recon/KL split, validation ELBO,
    # active
    # units and KL per latent dimension, learning rate, bad steps, epoch seconds, …
    for key in (
        "train_loss",
        "test_elbo",
        "test_recon",
        "test_kl",
        "validation_elbo",
        "active_units/z",
        "kl_per_dim/z/0",
        "kl_per_dim/z/2",
        "lr",
        "bad_steps",
        "seconds",
    ):
        assert key in expected, key
    assert set(expected) | {"running_loss"} == set(scalars)
    for tag in (
        expected
    ):  # one value per epoch, at the epoch's last step, equal to metrics.jsonl's (float32)
        assert [s for s, _ in scalars[tag]] == [STEPS * e for e in (1, 2, 3)], tag
        values = [flatten(r)[0][tag] for r in history]
        assert [v for _, v in scalars[tag]] == pytest.approx(values, rel=1e-6, abs=1e-6), tag
    assert history[0]["test_elbo"] == pytest.approx(
        history[0]["test_recon"] - history[0]["test_kl"], abs=1e-4
    )
    # the running loss every log_every = 2 steps; at an epoch's last step it is the epoch's train
    # loss
    assert [s for s, _ in scalars["running_loss"]] == list(range(2, 3 * STEPS + 1, 2))
    assert dict(scalars["running_loss"])[2 * STEPS] == pytest.approx(
        history[1]["train_loss"], rel=1e-6
    )
    # pictures every epoch: prior samples (32) and 4 rows of 8 inputs over their 4 rows of
    # reconstructions
    for tag, grid_rows in (("samples", 4), ("reconstructions", 8)):
        images = acc.Images(tag)
        assert [e.step for e in images] == [STEPS * e for e in (1, 2, 3)]
        assert (
            images[0].height == grid_rows * (SIDE + 2) + 2 and images[0].width == 8 * (SIDE + 2) + 2
        )


def test_no_tensorboard_and_images_every(tmp_path):
    make_trainer(tmp_path / "off", tensorboard=False).fit(
        synthetic_data(), epochs=1, batch_size=BATCH
    )
    assert not [f for f in os.listdir(tmp_path / "off") if f.startswith("events.out")]
    make_trainer(tmp_path / "sparse", images_every=2).fit(
        synthetic_data(), epochs=5, batch_size=BATCH
    )
    assert [e.step for e in accumulator(tmp_path / "sparse").Images("samples")] == [
        STEPS * e for e in (2, 4, 5)
    ]


def test_an_interrupted_epoch_is_purged_on_resume(tmp_path, monkeypatch):
    """The worst moment for a kill: epoch 3's row and events are written, its checkpoint is not; and
    a mid-epoch stop (SIGINT) in epoch 4. After each --resume every step, so every epoch, appears
    once."""
    out = tmp_path / "run"
    trainer = make_trainer(out)
    save = trainer.save_checkpoint

    def die_at_epoch_3(path=None):
        if trainer.epoch == 3:
            raise KeyboardInterrupt("killed before the checkpoint of epoch 3")
        save(path)

    trainer.save_checkpoint = die_at_epoch_3
    with pytest.raises(KeyboardInterrupt):
        trainer.fit(synthetic_data(), epochs=5, batch_size=BATCH)
    assert [s for s, _ in read_scalars(out)["train_loss"]] == [
        STEPS,
        2 * STEPS,
        3 * STEPS,
    ]  # the orphan is there

    trainer = make_trainer(out)
    step = trainer.svi.step
    calls = []

    def step_then_interrupt(x):
        calls.append(trainer.epoch)
        if trainer.epoch == 3 and calls.count(3) == 3:
            os.kill(os.getpid(), 2)  # SIGINT during epoch 4's third step
        return step(x)

    trainer.svi.step = step_then_interrupt
    with pytest.raises(TrainingInterrupted):
        trainer.fit(synthetic_data(), epochs=5, batch_size=BATCH, resume=True)
    make_trainer(out).fit(synthetic_data(), epochs=5, batch_size=BATCH, resume=True)

    scalars = read_scalars(out)
    assert [s for s, _ in scalars["train_loss"]] == [STEPS * e for e in range(1, 6)]
    assert [v for _, v in scalars["train_loss"]] == pytest.approx(
        [r["train_loss"] for r in rows(out)], rel=1e-6
    )
    assert [s for s, _ in scalars["running_loss"]] == list(range(2, 5 * STEPS + 1, 2))
    assert [e.step for e in accumulator(out).Images("samples")] == [STEPS * e for e in range(1, 6)]


def test_early_stopping_keeps_the_best_epoch_and_resumes_its_count(tmp_path):
    """A stopped run ends early, best_epoch is the argmax of validation_elbo, best.pt holds that
    epoch's parameters, and a resume continues the patience count exactly (2 + rest == one go)."""
    data = synthetic_data()
    ref = make_trainer(tmp_path / "ref")
    # lr 1e-2 on 60 noise images: the validation ELBO peaks early, then overfitting sets in
    history = ref.fit(data, epochs=60, batch_size=BATCH, early_stopping=3, warmup_epochs=2)
    val = [m["validation_elbo"] for m in history]
    best = 1 + val.index(max(val))
    assert len(history) < 60 and ref.best_epoch == best
    assert (
        len(history) == max(best, 2) + 3
    )  # patience 3 after the best epoch (or the warm-up's end)
    saved = torch.load(tmp_path / "ref" / "best.pt", weights_only=False)
    assert saved["epoch"] == best

    split = make_trainer(tmp_path / "split")
    split.fit(data, epochs=best + 1, batch_size=BATCH, early_stopping=3, warmup_epochs=2)
    resumed = make_trainer(tmp_path / "split").fit(
        data, epochs=60, batch_size=BATCH, early_stopping=3, warmup_epochs=2, resume=True
    )
    assert [m["validation_elbo"] for m in resumed] == val
    assert torch.load(tmp_path / "split" / "best.pt", weights_only=False)["epoch"] == best
    for name, value in saved["params"].items():
        assert torch.equal(
            value, torch.load(tmp_path / "split" / "best.pt", weights_only=False)["params"][name]
        )
    # a finished run resumed with more epochs does not train again
    again = make_trainer(tmp_path / "split").fit(
        data, epochs=80, batch_size=BATCH, early_stopping=3, warmup_epochs=2, resume=True
    )
    assert len(again) == len(history)


def test_early_stopping_needs_a_validation_split():
    with pytest.raises(ValueError, match="--validation N"):
        Config(early_stopping=5)
    data = synthetic_data()
    data.val = None
    with pytest.raises(ValueError, match="no validation split"):
        make_trainer(None).fit(data, epochs=1, early_stopping=2)


@pytest.mark.skipif(not os.path.isdir(DEBIAN), reason="needs Debian's dataset-fashion-mnist")
def test_evaluate_adds_nll_and_bits_per_dim_to_the_run(tmp_path, monkeypatch):
    monkeypatch.setenv("PYRO_VAE_DATA", str(tmp_path / "data"))
    # 20 training images: the validation ELBO peaks after some 15 epochs, and the run stops 3 later
    config = Config(
        limit=20,
        test_limit=40,
        validation=100,
        early_stopping=3,
        latent_dim=8,
        hidden_dims=[128],
        epochs=30,
        lr=0.01,
        batch_size=10,
        device="cpu",
        pictures=False,
        out=str(tmp_path / "run"),
    )
    _, _, history = experiment.train(config, progress=False)
    result = experiment.evaluate_run(config.out, nll_samples=20, pictures=False)
    assert result["bits_per_dim"] == pytest.approx(result["nll"] / (784 * math.log(2)))
    scalars = read_scalars(config.out)
    best = max(history, key=lambda r: r["validation_elbo"])["epoch"]
    assert len(history) == best + 3 < 30
    assert scalars["eval/test/nll"] == [
        (best * 2, pytest.approx(result["nll"], rel=1e-6))
    ]  # at the best epoch
    assert scalars["eval/test/bits_per_dim"][0][1] == pytest.approx(
        result["bits_per_dim"], rel=1e-6
    )
    assert scalars["eval/test/active_units/z"][0][1] == result["active_units"]
    assert len(scalars["train_loss"]) == len(history)
    # evaluation (and every command that loads the run) reads the best epoch's parameters, not the
    # last
    # ones
    saved = torch.load(os.path.join(config.out, "best.pt"), weights_only=False)
    last = torch.load(os.path.join(config.out, "checkpoint.pt"), weights_only=False)["params"]
    assert saved["epoch"] == best
    experiment.load_run(config.out, "cpu", data=False)
    for name, value in pyro.get_param_store().named_parameters():
        assert torch.equal(value.detach(), saved["params"][name]) and not torch.equal(
            value.detach(), last[name]
        )


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_tensorboard_server_lists_the_run_and_its_scalar_tags(tmp_path):
    make_trainer(tmp_path / "runs" / "a").fit(synthetic_data(), epochs=1, batch_size=BATCH)
    port = _free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tensorboard.main",
            "--logdir",
            str(tmp_path / "runs"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--load_fast",
            "false",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline, tags = time.time() + 60, {}
        while time.time() < deadline and "test_elbo" not in tags.get("a", {}):
            assert server.poll() is None, server.stderr.read().decode()[-2000:]
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{port}/data/plugin/scalars/tags", timeout=5
                ) as r:
                    tags = json.load(r)
            except OSError:  # not listening yet
                pass
            time.sleep(0.3)
        assert {
            "train_loss",
            "test_elbo",
            "validation_elbo",
            "running_loss",
            "active_units/z",
        } <= set(tags["a"])
    finally:
        server.kill()
        server.wait(timeout=30)
