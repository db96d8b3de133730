"""Issue 9: atomic checkpoints and exact resume, after a clean stop, SIGINT/SIGTERM or SIGKILL."""

import json
import os
import signal
import subprocess
import sys
import time

import pyro
import pytest
import torch

from pyro_vae import Config, Optimization, Trainer
from pyro_vae.app import experiment
from pyro_vae.data import ImageData
from pyro_vae.models import build_model
from pyro_vae.training.tensorboard import read_scalars
from pyro_vae.training.trainer import CHECKPOINT, METRICS, TrainingInterrupted
from pyro_vae.training.weight_ema import WeightEMA

CONFIG = Config(
    latent_dim=3, hidden_dims=[16], lr=1e-2, lr_decay=0.8, optimizer="clipped-adam", clip_norm=5.0
)


def synthetic_data():
    g = torch.Generator().manual_seed(1)
    return ImageData(
        train=torch.rand(60, 1, 3, 3, generator=g),
        train_labels=None,
        test=torch.bernoulli(torch.rand(20, 1, 3, 3, generator=g), generator=g),
        test_labels=None,
        binarize="dynamic",
    )  # training batches resampled from the RNG every step


def make_trainer(out_dir, seed=0, device="cpu", listeners=()):
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    vae = build_model(CONFIG, (1, 3, 3), num_data=60).to(device)
    optim = Optimization(CONFIG.lr, CONFIG.optimizer, CONFIG.lr_decay, CONFIG.clip_norm)
    return Trainer(
        vae.model,
        vae.guide,
        CONFIG.elbo,
        2,
        optim,
        out_dir=str(out_dir),
        progress=False,
        modules=[vae],
        listeners=listeners,
    )


def final_state(trainer):
    store = pyro.get_param_store()
    params = {k: v.detach().clone() for k, v in store.named_parameters()}
    optim = {
        store.param_name(p): {k: torch.as_tensor(v).clone() for k, v in o.state[p].items()}
        for p, o in trainer.optim.optim_objs.items()
    }
    return params, optim


def assert_same_state(a, b):
    (pa, oa), (pb, ob) = a, b
    assert pa.keys() == pb.keys() and oa.keys() == ob.keys()
    for k in pa:
        assert torch.equal(pa[k], pb[k]), k  # bit for bit
    for k in oa:
        for s in oa[k]:
            assert torch.equal(torch.as_tensor(oa[k][s]), torch.as_tensor(ob[k][s])), (k, s)


def metric_epochs(out_dir):
    return [json.loads(line)["epoch"] for line in open(os.path.join(out_dir, METRICS))]


def comparable(history):
    return [{k: v for k, v in m.items() if k != "seconds"} for m in history]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Four epochs in one go."""
    trainer = make_trainer(tmp_path_factory.mktemp("ref"))
    history = trainer.fit(synthetic_data(), epochs=4, batch_size=16)
    return final_state(trainer), history


def test_two_plus_two_epochs_equal_four(tmp_path, reference):
    state, history = reference
    make_trainer(tmp_path / "run").fit(synthetic_data(), epochs=2, batch_size=16)
    trainer = make_trainer(
        tmp_path / "run", seed=123
    )  # the seed is irrelevant: the checkpoint holds the RNG
    resumed = trainer.fit(synthetic_data(), epochs=4, batch_size=16, resume=True)
    assert_same_state(final_state(trainer), state)
    assert comparable(resumed) == comparable(history)  # same losses, test ELBOs, learning rates
    assert metric_epochs(tmp_path / "run") == [1, 2, 3, 4]
    assert [m["lr"] for m in history] == pytest.approx([1e-2 * 0.8**e for e in range(4)])


def test_two_plus_two_epochs_equal_four_with_weight_ema(tmp_path):
    """--weight-ema: the shadow is in the checkpoint, so the resumed run's shadow, raw weights and
    test ELBOs (taken with the shadow) are those of the run in one go, bit for bit."""
    runs = []
    for parts in ([4], [2, 4]):
        for i, epochs in enumerate(parts):
            ema = WeightEMA(0.8)
            trainer = make_trainer(tmp_path / str(len(parts)), seed=i, listeners=[ema])
            history = trainer.fit(synthetic_data(), epochs=epochs, batch_size=16, resume=i > 0)
        runs.append((final_state(trainer), ema.shadow, ema.raw, history))
    (state, shadow, raw, history), (state2, shadow2, raw2, history2) = runs
    assert_same_state(state, state2)  # the store holds the shadow once fit returns
    assert shadow.keys() == shadow2.keys() and all(
        torch.equal(shadow[k], shadow2[k]) for k in shadow
    )
    assert all(torch.equal(a, b) for a, b in zip(raw, raw2, strict=True))
    assert comparable(history) == comparable(history2)
    assert not torch.equal(raw[0], next(iter(shadow.values())))


@pytest.mark.parametrize("signum, stop_epoch", [(signal.SIGINT, 1), (signal.SIGTERM, 3)])
def test_signal_mid_epoch_stops_cleanly_and_resumes_exactly(
    tmp_path, reference, signum, stop_epoch
):
    state, history = reference
    trainer = make_trainer(tmp_path / "run")
    step = trainer.svi.step
    calls = []

    def step_then_signal(x):
        calls.append(trainer.epoch)
        if trainer.epoch + 1 == stop_epoch and calls.count(trainer.epoch) == 2:
            os.kill(os.getpid(), signum)  # arrives in the middle of the epoch's second step
        return step(x)

    trainer.svi.step = step_then_signal
    with pytest.raises(
        TrainingInterrupted, match=f"{signum.name} during epoch {stop_epoch}/4.*resume=True"
    ) as info:
        trainer.fit(synthetic_data(), epochs=4, batch_size=16)
    assert info.value.signum == signum and isinstance(info.value, KeyboardInterrupt)
    assert (
        signal.getsignal(signum) is not None and calls.count(stop_epoch - 1) == 2
    )  # stopped right after the step
    saved = torch.load(tmp_path / "run" / CHECKPOINT, weights_only=False)
    assert saved["epoch"] == stop_epoch - 1 and metric_epochs(tmp_path / "run") == list(
        range(1, stop_epoch)
    )
    trainer = make_trainer(tmp_path / "run")
    resumed = trainer.fit(synthetic_data(), epochs=4, batch_size=16, resume=True)
    assert_same_state(final_state(trainer), state)
    assert comparable(resumed) == comparable(history)
    assert metric_epochs(tmp_path / "run") == [1, 2, 3, 4]


@pytest.mark.cuda
def test_resume_on_cuda(tmp_path):
    """On CUDA the checkpoint also holds the CUDA RNG; kernels may not be bit-reproducible, so
    compare closely."""
    data = synthetic_data().to("cuda")
    reference = make_trainer(tmp_path / "ref", device="cuda")
    reference.fit(data, epochs=4, batch_size=16)
    expected = final_state(reference)[0]
    make_trainer(tmp_path / "run", device="cuda").fit(data, epochs=2, batch_size=16)
    assert "cuda" in torch.load(tmp_path / "run" / CHECKPOINT, weights_only=False)["rng"]
    trainer = make_trainer(tmp_path / "run", device="cuda")
    trainer.fit(data, epochs=4, batch_size=16, resume=True)
    for k, v in final_state(trainer)[0].items():
        assert v.is_cuda and torch.allclose(v, expected[k], atol=1e-5), k
    assert metric_epochs(tmp_path / "run") == [1, 2, 3, 4]


def test_checkpoint_writes_are_atomic(tmp_path, monkeypatch):
    """A crash while a checkpoint is being written leaves the previous one intact and no partial
    file behind."""
    trainer = make_trainer(tmp_path / "run")
    trainer.fit(synthetic_data(), epochs=1, batch_size=16)
    before = (tmp_path / "run" / CHECKPOINT).read_bytes()

    def crash(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        trainer.fit(synthetic_data(), epochs=2, batch_size=16)
    assert (tmp_path / "run" / CHECKPOINT).read_bytes() == before
    assert sorted(
        f for f in os.listdir(tmp_path / "run") if not f.startswith("events.out.tfevents.")
    ) == [CHECKPOINT, METRICS]
    monkeypatch.undo()
    trainer = make_trainer(tmp_path / "run")
    assert [
        m["epoch"] for m in trainer.fit(synthetic_data(), epochs=2, batch_size=16, resume=True)
    ] == [1, 2]
    assert metric_epochs(tmp_path / "run") == [1, 2]


# -- a real process on real data: SIGTERM, then SIGKILL mid-epoch, then resume
# ----------------------------------
TRAIN_ARGS = [
    "--dataset",
    "fashion-mnist",
    "--limit",
    "6000",
    "--test-limit",
    "50",
    "--latent-dim",
    "4",
    "--hidden-dims",
    "32",
    "--batch-size",
    "20",
    "--lr",
    "3e-3",
    "--device",
    "cpu",
    "--no-pictures",
    "--seed",
    "7",
]


def _start(out, epochs, resume=False):
    argv = [
        sys.executable,
        "-m",
        "pyro_vae",
        "train",
        *TRAIN_ARGS,
        "--out",
        str(out),
        "--epochs",
        str(epochs),
        "--quiet",
    ] + (["--resume"] if resume else [])
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_epochs(proc, out, n, timeout=120):
    start = time.time()
    path = os.path.join(out, METRICS)
    while time.time() - start < timeout:
        if os.path.exists(path) and len(open(path).read().splitlines()) >= n:
            return
        if proc.poll() is not None:
            raise AssertionError(f"training ended early: {proc.communicate()}")
        time.sleep(0.02)
    proc.kill()
    raise AssertionError("training too slow")


@pytest.mark.slow
def test_cli_run_survives_sigterm_and_sigkill(tmp_path):
    out = tmp_path / "run"
    proc = _start(out, epochs=4)
    _wait_for_epochs(proc, out, 1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM
    last = err.strip().splitlines()[-1]  # above it only pyro's INFO log lines
    assert last.startswith("pyro-vae: interrupted: SIGTERM during epoch") and "Traceback" not in err
    epoch = torch.load(out / CHECKPOINT, weights_only=False)["epoch"]
    assert epoch >= 1 and metric_epochs(out) == list(range(1, epoch + 1))

    proc = _start(out, epochs=4, resume=True)
    _wait_for_epochs(proc, out, epoch + 1)
    time.sleep(0.15)  # into the next epoch (or its checkpoint write: both must be safe)
    proc.kill()  # SIGKILL: no handler runs
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    killed_at = torch.load(out / CHECKPOINT, weights_only=False)["epoch"]
    assert killed_at < 4

    config = Config.load(out / "config.json")
    _, _, history = experiment.train(config, resume=True, progress=False)
    assert [m["epoch"] for m in history] == metric_epochs(out) == [1, 2, 3, 4]
    steps = history[0][
        "steps"
    ]  # TensorBoard: the killed epoch's events are purged, no epoch appears twice
    assert [s for s, _ in read_scalars(out)["train_loss"]] == [steps * e for e in (1, 2, 3, 4)]
    resumed = {k: v.detach().clone() for k, v in pyro.get_param_store().named_parameters()}

    _, _, reference = experiment.train(
        Config(**{**config.to_dict(), "out": str(tmp_path / "ref")}), progress=False
    )
    assert [m["train_loss"] for m in history] == [m["train_loss"] for m in reference]
    for k, v in pyro.get_param_store().named_parameters():
        assert torch.equal(v.detach(), resumed[k]), k
