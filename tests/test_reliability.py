"""Issue 9: one-line errors for bad input (library and CLI), and the trainer's NaN/inf guard."""

import json
import math
import os
import re

import pyro
import pyro.distributions as dist
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from linear_gaussian import LinearGaussian
from torch import nn

from pyro_vae import Config, Optimization, Trainer, load_data, log_likelihood, make_elbo, make_guide
from pyro_vae.training.guards import NaNGuard
from pyro_vae.app import experiment
from pyro_vae.app.cli import main
from pyro_vae.core import checks as validation
from pyro_vae.estimators import ESTIMATORS
from pyro_vae.models import build_model
from pyro_vae.models.nets import MLP
from pyro_vae.training.trainer import CHECKPOINT, METRICS, NonFiniteLossError

TINY = dict(latent_dim=2, hidden_dims=[8], lr=1e-2)


def tiny_vae(likelihood="bernoulli", x_shape=(1, 2, 2)):
    return build_model(Config(likelihood=likelihood, **TINY), x_shape, num_data=None)


# -- options
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "field, value, words",
    [
        ("latent_dim", 0, "latent_dim must be a positive integer"),
        ("latent_dim", -3, "latent_dim must be a positive integer"),
        ("particles", 0, "particles must be a positive integer"),
        ("batch_size", 0, "batch_size must be a positive integer"),
        ("batch_size", -1, "batch_size must be a positive integer"),
        ("lr", float("nan"), "lr must be a finite positive number"),
        ("lr", float("inf"), "lr must be a finite positive number"),
        ("lr", 0.0, "lr must be a finite positive number"),
        ("lr", -1e-3, "lr must be a finite positive number"),
        ("max_bad_steps", 0, "max_bad_steps must be a positive integer"),
        ("clip_norm", float("nan"), "clip_norm must be a finite positive number"),
    ],
)
def test_config_rejects_bad_numbers(field, value, words):
    with pytest.raises(ValueError, match=words):
        Config(**{field: value})


@pytest.mark.parametrize(
    "field, value",
    [
        ("elbo", "nope"),
        ("guide", "nope"),
        ("model", "nope"),
        ("dataset", "cifar"),
        ("likelihood", "poisson"),
    ],
)
def test_unknown_names_fail_before_anything_is_read_or_written(tmp_path, field, value):
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=f"unknown .*{value!r}.*choose one of"):
        experiment.train(Config(out=str(out), **{field: value}))
    assert not out.exists()


@pytest.mark.skipif(
    not os.path.isdir("/usr/share/datasets/fashion-mnist"), reason="needs Fashion-MNIST"
)
def test_a_run_resolves_its_config_once(tmp_path, monkeypatch):
    """Each option is checked where it enters: a built Config is not checked again by the run, the
    model's defaults are filled in once (by check_config) and the KL schedule is built once."""
    from collections import Counter

    import pyro_vae.models
    from pyro_vae.estimators.variants import KLSchedule

    calls = Counter()

    def counted(name, fn):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(Config, "validate", counted("validate", Config.validate))
    monkeypatch.setattr(KLSchedule, "__init__", counted("schedule", KLSchedule.__init__))
    defaults = counted("with_defaults", pyro_vae.models.with_defaults)
    monkeypatch.setattr(pyro_vae.models, "with_defaults", defaults)
    config = Config(
        out=str(tmp_path / "run"),
        limit=128,
        test_limit=64,
        epochs=1,
        batch_size=64,
        latent_dim=2,
        hidden_dims=[8],
        beta=2.0,
        kl_warmup_epochs=2,
        fast="off",
        pictures=False,
        tensorboard=False,
        device="cpu",
    )
    calls.clear()
    experiment.train(config, progress=False)
    assert calls == {"with_defaults": 1, "schedule": 1}


@pytest.mark.parametrize(
    "changes, words",
    [
        ({"limit": -5}, "limit must be a positive integer"),
        ({"test_limit": 0}, "test_limit must be a positive integer"),
        ({"sigma": 0.0}, "sigma must be a finite positive number"),
    ],
)
def test_train_rejects_bad_data_options_before_reading(tmp_path, changes, words):
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=words):
        experiment.train(Config(out=str(out), **changes))
    assert not out.exists()


def test_load_data_rejects_bad_options(tmp_path):
    with pytest.raises(ValueError, match="limit must be a positive integer, got -5"):
        load_data("fashion-mnist", limit=-5)
    with pytest.raises(ValueError, match="unknown dataset 'cifar'"):
        load_data("cifar")
    with pytest.raises(
        FileNotFoundError, match="does not exist; pass an existing folder as data_dir="
    ):
        load_data("fashion-mnist", data_dir=str(tmp_path / "missing"))


def test_library_entry_points_reject_bad_options():
    vae = tiny_vae()
    with pytest.raises(ValueError, match="unknown estimator 'nope'"):
        make_elbo("nope")
    with pytest.raises(ValueError, match="num_particles must be a positive integer"):
        make_elbo("trace", 0)
    with pytest.raises(ValueError, match="particles must be a positive integer"):
        Trainer(vae.model, vae.guide, particles=0)
    for lr in (float("nan"), float("inf"), 0.0, -1.0):
        with pytest.raises(ValueError, match="lr must be a finite positive number"):
            Trainer(vae.model, vae.guide, optim=Optimization(lr=lr))
    with pytest.raises(ValueError, match="unknown optimizer 'sgd'"):
        Trainer(vae.model, vae.guide, optim=Optimization(optimizer="sgd"))
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        Trainer(vae.model, vae.guide, progress=False).fit(torch.rand(4, 1, 2, 2), 1, batch_size=0)
    with pytest.raises(ValueError, match="latent_dim and context_dim must be positive"):
        make_guide("diagonal", MLP((1, 2, 2), [], 4), 4, 0)
    with pytest.raises(ValueError, match="unknown guide 'nope'"):
        make_guide("nope", MLP((1, 2, 2), [], 4), 4, 2)


# -- data
# ----------------------------------------------------------------------------------------------
def _images(value=None, shape=(6, 1, 2, 2)):
    x = torch.full(shape, 0.5)
    if value is not None:
        x[3, 0, 1, 1] = value
    return x


@pytest.mark.parametrize(
    "x, error, words",
    [
        (_images(float("nan")), ValueError, "1 NaN or infinite value"),
        (_images(float("inf")), ValueError, "1 NaN or infinite value"),
        (_images(-float("inf")), ValueError, "1 NaN or infinite value"),
        (
            _images(1.5),
            ValueError,
            r"values in \[0.5, 1.5\] but the Bernoulli likelihood needs values in \[0, 1\]",
        ),
        (_images(-0.2), ValueError, r"Bernoulli likelihood needs values in \[0, 1\]"),
        (
            _images(shape=(6, 1, 3, 3)),
            ValueError,
            r"shape \(1, 3, 3\) but the model expects \(1, 2, 2\)",
        ),
        (_images(shape=(6, 4)), ValueError, r"shape \(4,\) but the model expects \(1, 2, 2\)"),
        (
            (_images() * 255).to(torch.uint8),
            TypeError,
            "floating-point tensor.*divide 8-bit images by 255",
        ),
        (_images()[:0], ValueError, "N >= 1 data points"),
        (_images().tolist(), TypeError, "data must be an ImageData .* or a tensor of images"),
    ],
)
def test_trainer_rejects_bad_data_before_training(tmp_path, x, error, words):
    vae = tiny_vae()
    trainer = Trainer(vae.model, vae.guide, out_dir=str(tmp_path), progress=False, modules=[vae])
    with pytest.raises(error, match=words):
        trainer.fit(x, epochs=1, batch_size=2)
    assert not os.path.exists(tmp_path / CHECKPOINT)  # failed before the epoch-0 checkpoint


def test_gaussian_likelihood_accepts_data_outside_unit_interval_but_not_nan():
    vae = tiny_vae("gaussian")
    x = _images(1.5)
    history = Trainer(vae.model, vae.guide, progress=False, modules=[vae]).fit(
        x, epochs=1, batch_size=3
    )
    assert len(history) == 1 and math.isfinite(history[0]["train_loss"])
    with pytest.raises(ValueError, match="NaN"):
        Trainer(vae.model, vae.guide, progress=False).fit(
            _images(float("nan")), epochs=1, batch_size=3
        )


def test_log_likelihood_rejects_bad_data_with_one_line_errors():
    lg = LinearGaussian(latent_dim=2, obs_dim=3)
    x = lg.sample(4)
    with pytest.raises(ValueError, match="NaN or infinite"):
        log_likelihood(
            lg.model, lg.exact_guide, torch.cat([x, x.new_full((1, 3), math.nan)]), num_samples=2
        )
    with pytest.raises(
        ValueError,
        match=r"fails on a batch of shape \(4, 5\): The size of tensor a \(5\) must match",
    ):
        log_likelihood(lg.model, lg.exact_guide, torch.zeros(4, 5, dtype=x.dtype), num_samples=2)
    for shape in [(1,), (4, 1)]:  # data torch would silently broadcast to [N, 3]
        with pytest.raises(
            ValueError,
            match=rf"site 'x' got data of shape {re.escape(str(shape))} "
            rf"but its distribution has shape \({shape[0]}, 3\)",
        ):
            log_likelihood(
                lg.model, lg.exact_guide, torch.zeros(shape, dtype=x.dtype), num_samples=2
            )
    with pytest.raises(ValueError, match="num_samples must be a positive integer"):
        log_likelihood(lg.model, lg.exact_guide, x, num_samples=0)


# -- devices, directories, checkpoints
# ------------------------------------------------------------------
def test_cuda_absent_or_missing_index(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="CUDA is not available here; use device='cpu'"):
        validation.check_device("cuda")
    assert validation.check_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ValueError, match=r"'cuda:2' does not exist: this machine has 2 GPU\(s\)"):
        validation.check_device("cuda:2")
    with pytest.raises(ValueError, match="unknown device 'gpu'"):
        validation.check_device("gpu")


def _cli_error(capsys, argv):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert err.startswith("pyro-vae: error: ") and err.count("\n") == 1 and "Traceback" not in err
    return err


def test_cli_errors_are_one_line_with_status_2(tmp_path, capsys, monkeypatch):
    out = str(tmp_path / "run")
    base = ["train", "--out", out, "--quiet", "--no-pictures"]
    assert "--latent-dim must be a positive integer" in _cli_error(
        capsys, base + ["--latent-dim", "0"]
    )
    assert "lr must be a finite positive number" in _cli_error(capsys, base + ["--lr", "nan"])
    assert "unknown estimator 'nope' (--elbo nope)" in _cli_error(capsys, base + ["--elbo", "nope"])
    assert "does not exist; pass an existing folder" in _cli_error(
        capsys, base + ["--data-dir", str(tmp_path / "no")]
    )
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert "CUDA is not available" in _cli_error(capsys, base + ["--device", "cuda:1"])
    assert "no checkpoint.pt; start a new run" in _cli_error(capsys, base + ["--resume"])
    assert "is not a finished run: config.json is missing" in _cli_error(capsys, ["evaluate", out])
    assert not os.path.exists(out)


def _fake_run(tmp_path, **changes):
    """A run directory with config.json and an epoch-0 checkpoint of a tiny model (no data read)."""
    out = tmp_path / "run"
    config = Config(out=str(out), limit=8, test_limit=4, **{**TINY, **changes})
    vae = build_model(config, (1, 28, 28), num_data=8)
    trainer = Trainer(vae.model, vae.guide, out_dir=str(out), progress=False, modules=[vae])
    validation.check_pair_runs(vae.model, vae.guide, torch.rand(2, 1, 28, 28))
    trainer.save_checkpoint()
    config.save(out / "config.json")
    return out, config


def test_corrupt_missing_and_mismatched_checkpoints(tmp_path, capsys):
    out, config = _fake_run(tmp_path)
    ckpt = out / CHECKPOINT
    # mismatched: the config now asks for another latent size than the checkpoint holds
    Config(**{**config.to_dict(), "latent_dim": 3}).save(out / "config.json")
    with pytest.raises(ValueError, match="checkpoint does not match this model.*shape"):
        experiment.load_run(str(out), device="cpu", data=False)
    config.save(out / "config.json")
    # corrupt: a truncated file
    ckpt.write_bytes(ckpt.read_bytes()[:100])
    with pytest.raises(ValueError, match="unreadable.*corrupt or truncated"):
        experiment.load_run(str(out), device="cpu", data=False)
    assert "corrupt or truncated" in _cli_error(capsys, ["evaluate", str(out), "--device", "cpu"])
    with pytest.raises(ValueError, match="corrupt or truncated"):
        experiment.train(config, resume=True)
    # not a checkpoint at all
    torch.save({"weights": 1}, ckpt)
    with pytest.raises(ValueError, match="is not a pyro_vae checkpoint"):
        experiment.load_run(str(out), device="cpu", data=False)
    # missing
    ckpt.unlink()
    with pytest.raises(FileNotFoundError, match="checkpoint.pt is missing"):
        experiment.load_run(str(out), device="cpu", data=False)
    with pytest.raises(FileNotFoundError, match="--resume: .* has no checkpoint.pt"):
        experiment.train(config, resume=True)


def test_resume_with_a_checkpoint_of_another_model(tmp_path):
    x = _images()
    vae = tiny_vae()
    Trainer(vae.model, vae.guide, out_dir=str(tmp_path), progress=False, modules=[vae]).fit(
        x, 1, batch_size=3
    )
    pyro.clear_param_store()
    other = build_model(Config(**{**TINY, "hidden_dims": [5]}), (1, 2, 2))
    trainer = Trainer(
        other.model, other.guide, out_dir=str(tmp_path), progress=False, modules=[other]
    )
    with pytest.raises(
        ValueError, match="checkpoint does not match this model: parameter .* has shape"
    ):
        trainer.fit(x, 2, batch_size=3, resume=True)
    os.remove(tmp_path / CHECKPOINT)
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        trainer.fit(x, 2, batch_size=3, resume=True)


def test_out_dir_holding_a_run_needs_resume(tmp_path, capsys):
    out, config = _fake_run(tmp_path)
    with pytest.raises(FileExistsError, match="already holds a run .*pass --resume"):
        experiment.train(config)
    assert "already holds a run" in _cli_error(capsys, ["train", "--out", str(out), "--quiet"])
    # and --resume with other options is refused before any data is read
    with pytest.raises(ValueError, match="options differ .* only --epochs may change"):
        experiment.train(Config(**{**config.to_dict(), "lr": 0.5}), resume=True)
    # a directory with only metrics.jsonl (e.g. a crashed older run) also counts
    other = tmp_path / "other"
    other.mkdir()
    (other / METRICS).write_text('{"epoch": 1}\n')
    with pytest.raises(FileExistsError, match=r"\(metrics.jsonl\)"):
        experiment.train(Config(out=str(other)))


# -- NaN / inf guard
# ------------------------------------------------------------------------------------
class Poisoned:
    """x_i ~ N(z_i + b, 1), z_i ~ N(0, 1); guide N(a x_i, exp(s)).  Chosen epochs inject a NaN loss,
    an infinite gradient (√(b − b) has a finite value 0 and derivative +∞) or a NaN buffer."""

    def __init__(self, bad_epochs=(), kind="loss"):
        self.bad_epochs, self.kind = set(bad_epochs), kind
        self.trainer = None
        self.tracker = nn.Module()
        self.tracker.register_buffer("running_mean", torch.zeros(()))

    def poisoned(self):
        return self.trainer is not None and self.trainer.epoch + 1 in self.bad_epochs

    def model(self, x):
        b = pyro.param("b", torch.tensor(0.0))
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(x.new_zeros(()), 1.0))
            pyro.sample("x", dist.Normal(z + b, 1.0), obs=x)
            with torch.no_grad():
                self.tracker.running_mean.lerp_(x.mean(), 0.5)
            if self.poisoned():
                self.tracker.running_mean.fill_(math.nan)
                bad = (
                    x.new_full((len(x),), math.nan)
                    if self.kind == "loss"
                    else torch.sqrt(b - b.detach())
                )
                unit = dist.Unit(
                    bad.expand(len(x)), validate_args=False
                )  # pyro.factor would reject the NaN
                pyro.sample("poison", unit, obs=unit.sample())

    def guide(self, x):
        a = pyro.param("a", torch.tensor(0.5))
        s = pyro.param("s", torch.tensor(0.0))
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Normal(a * x, s.exp()))


def _snapshot(trainer, log):
    store = pyro.get_param_store()
    log.append(
        {
            "params": {k: v.detach().clone() for k, v in store.named_parameters()},
            "adam_steps": {
                store.param_name(p): int(o.state[p]["step"])
                for p, o in trainer.optim.optim_objs.items()
            },
            "buffer": trainer.modules[0].running_mean.clone(),
        }
    )


@pytest.mark.parametrize("kind", ["loss", "grad"])
def test_nonfinite_step_is_skipped_state_restored_and_lr_halved(tmp_path, kind):
    pair = Poisoned(bad_epochs={2}, kind=kind)
    x = torch.randn(8, generator=torch.Generator().manual_seed(0)) + 1.0
    trainer = Trainer(
        pair.model,
        pair.guide,
        optim=Optimization(lr=0.05),
        out_dir=str(tmp_path),
        progress=False,
        modules=[pair.tracker],
    )
    pair.trainer = trainer
    log = []
    history = trainer.fit(
        x, epochs=4, batch_size=8, callback=lambda t, m: _snapshot(t, log)
    )  # 1 step per epoch
    before, skipped, after = log[0], log[1], log[2]
    for name, value in before["params"].items():
        assert torch.equal(skipped["params"][name], value)  # the bad update never happened
        assert not torch.equal(after["params"][name], value)  # training goes on afterwards
    assert (
        skipped["adam_steps"] == before["adam_steps"] == {"a": 1, "s": 1, "b": 1}
    )  # optimizer state untouched
    assert after["adam_steps"] == {"a": 2, "s": 2, "b": 2}
    assert torch.equal(skipped["buffer"], before["buffer"]) and torch.isfinite(skipped["buffer"])
    assert [m["bad_steps"] for m in history] == [0, 1, 0, 0]
    assert [m["lr"] for m in history] == [0.05, 0.025, 0.025, 0.025]
    assert all(math.isfinite(m["train_loss"]) for m in history)
    assert (
        torch.load(tmp_path / CHECKPOINT, weights_only=False)["lr_scale"] == 0.5
    )  # kept across --resume


def test_checks_every_few_steps_skip_on_the_device_and_act_at_the_check(tmp_path):
    """What a GPU run does (the host reads the guard's counts every ``check_every`` steps), here on
    the CPU."""
    pair = Poisoned(bad_epochs={2}, kind="grad")
    x = torch.randn(8, generator=torch.Generator().manual_seed(0)) + 1.0
    trainer = Trainer(
        pair.model,
        pair.guide,
        optim=Optimization(lr=0.05),
        out_dir=str(tmp_path),
        progress=False,
        modules=[pair.tracker],
        listeners=[NaNGuard(check_every=3)],
    )
    pair.trainer = trainer
    log = []
    history = trainer.fit(
        x, epochs=3, batch_size=2, callback=lambda t, m: _snapshot(t, log)
    )  # 4 steps per epoch
    before, skipped, after = log
    for name, value in before["params"].items():
        assert torch.equal(skipped["params"][name], value) and not torch.equal(
            after["params"][name], value
        )
    assert skipped["adam_steps"] == before["adam_steps"] == {"a": 4, "s": 4, "b": 4}
    assert torch.equal(skipped["buffer"], before["buffer"])
    assert [m["bad_steps"] for m in history] == [0, 4, 0]
    assert [m["lr"] for m in history] == [
        0.05,
        0.05 / 16,
        0.05 / 16,
    ]  # halved per bad step, at steps 3 and 4
    pair = Poisoned(bad_epochs={1})
    pair.trainer = Trainer(
        pair.model,
        pair.guide,
        optim=Optimization(lr=0.05),
        progress=False,
        listeners=[NaNGuard(max_bad_steps=3, check_every=4)],
    )
    with pytest.raises(
        NonFiniteLossError, match=r"NaN/inf for 4 steps in a row \(epoch 1/2, step 4\)"
    ):
        pair.trainer.fit(x, 2, 2)


def test_guard_reads_its_counts_every_log_every_steps_off_the_cpu():
    """Without ``check_every``, a GPU run reads the counts as often as the console prints (a CPU
    read costs nothing: every step); with no console, every 50 steps."""
    from types import SimpleNamespace

    from pyro_vae.training.console import Console

    def every(device, listeners):
        guard = NaNGuard()
        run = SimpleNamespace(device=torch.device(device), listeners=[guard, *listeners])
        guard.on_run_start(SimpleNamespace(modules=[], run=run))
        return guard.every

    assert every("meta", [Console(log_every=7)]) == 7
    assert every("meta", []) == 50
    assert every("cpu", [Console(log_every=7)]) == 1


def test_too_many_bad_steps_stop_with_a_clear_error_and_keep_the_run_usable(tmp_path):
    pair = Poisoned(bad_epochs={2, 3}, kind="loss")
    x = torch.randn(8, generator=torch.Generator().manual_seed(0))
    trainer = Trainer(
        pair.model,
        pair.guide,
        optim=Optimization(lr=0.05),
        out_dir=str(tmp_path),
        progress=False,
        listeners=[NaNGuard(max_bad_steps=3)],
    )
    pair.trainer = trainer
    with pytest.raises(
        NonFiniteLossError,
        match=r"NaN/inf for 3 steps in a row \(epoch 2/3, step 3\).*"
        r"lowered to 0.00625.*still holds the checkpoint and metrics of "
        r"epoch 1",
    ):
        trainer.fit(x, epochs=3, batch_size=2)
    assert isinstance(
        NonFiniteLossError("x"), RuntimeError
    )  # the CLI prints it as one line, status 2
    lines = [json.loads(line) for line in (tmp_path / METRICS).read_text().splitlines()]
    assert [m["epoch"] for m in lines] == [1]
    state = validation.load_checkpoint(str(tmp_path / CHECKPOINT))
    assert state["epoch"] == 1 and all(torch.isfinite(v).all() for v in state["params"].values())
    # the run resumes from epoch 1 once the cause is gone
    pyro.clear_param_store()
    pair = Poisoned()
    resumed = Trainer(
        pair.model, pair.guide, optim=Optimization(lr=0.05), out_dir=str(tmp_path), progress=False
    )
    history = resumed.fit(x, epochs=3, batch_size=2, resume=True)
    assert [m["epoch"] for m in history] == [1, 2, 3]
    assert [
        json.loads(line)["epoch"] for line in (tmp_path / METRICS).read_text().splitlines()
    ] == [1, 2, 3]


# -- property-based: malformed tensors and options give clean ValueError/TypeError
# ---------------------------
BAD_NUMBERS = st.one_of(
    st.integers(-3, 0),
    st.floats(allow_nan=True, allow_infinity=True),
    st.none(),
    st.booleans(),
    st.text(max_size=3),
    st.just([1]),
)
FILLS = st.sampled_from([math.nan, math.inf, -math.inf, -1.0, 2.0, 0.5, 0.0, 1.0])
DTYPES = st.sampled_from([torch.float32, torch.float64, torch.int64, torch.uint8, torch.bool])


@st.composite
def tensors(draw):
    if draw(st.integers(0, 9)) == 0:
        return draw(st.one_of(st.none(), st.text(max_size=3), st.lists(st.floats(), max_size=3)))
    shape = draw(
        st.one_of(st.just((3, 1, 2, 2)), st.lists(st.integers(0, 4), max_size=4).map(tuple))
    )
    x = torch.full(shape, draw(FILLS))
    if x.numel():
        x.view(-1)[0] = draw(FILLS)
    return x.to(draw(DTYPES)) if shape else x


CLEAN = (ValueError, TypeError)
HYPOTHESIS = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@HYPOTHESIS
@given(
    x=tensors(),
    batch_size=st.one_of(st.integers(-1, 4), BAD_NUMBERS),
    epochs=st.one_of(st.just(1), BAD_NUMBERS),
)
def test_property_trainer_fit(x, batch_size, epochs):
    pyro.clear_param_store()
    vae = tiny_vae()
    try:
        history = Trainer(vae.model, vae.guide, progress=False, modules=[vae]).fit(
            x, epochs, batch_size
        )
    except CLEAN:
        return
    assert len(history) == epochs and all(math.isfinite(m["train_loss"]) for m in history)


@HYPOTHESIS
@given(x=tensors(), num_samples=st.one_of(st.integers(1, 3), BAD_NUMBERS))
def test_property_log_likelihood(x, num_samples):
    lg = LinearGaussian(latent_dim=2, obs_dim=3)
    try:
        log_px = log_likelihood(lg.model, lg.exact_guide, x, num_samples=num_samples)
    except CLEAN:
        return
    exact = lg.log_px(
        x.double()
    )  # accepted inputs give the exact log p(x): the exact posterior makes weights constant
    assert torch.allclose(log_px, exact, atol=1e-8)


@HYPOTHESIS
@given(
    name=st.one_of(st.sampled_from(sorted(ESTIMATORS)), st.text(max_size=5), BAD_NUMBERS),
    particles=st.one_of(st.integers(1, 3), BAD_NUMBERS),
    options=st.dictionaries(
        st.sampled_from(["max_plate_nesting", "bogus", "vectorize_particles"]),
        st.one_of(st.integers(-2, 2), BAD_NUMBERS),
        max_size=2,
    ),
)
def test_property_make_elbo(name, particles, options):
    try:
        elbo = make_elbo(name, particles, **options)
    except CLEAN:
        return
    assert elbo.num_particles == particles


@HYPOTHESIS
@given(
    name=st.one_of(st.just("diagonal"), st.text(max_size=5)),
    context_dim=st.one_of(st.just(4), BAD_NUMBERS),
    latent_dim=st.one_of(st.integers(1, 3), BAD_NUMBERS),
    flows=st.one_of(st.just(0), BAD_NUMBERS),
)
def test_property_make_guide(name, context_dim, latent_dim, flows):
    try:
        guide = make_guide(name, MLP((1, 2, 2), [], 4), context_dim, latent_dim, flows)
    except CLEAN:
        return
    assert guide.latent_dim == latent_dim


CONFIG_FIELDS = [
    "latent_dim",
    "particles",
    "batch_size",
    "lr",
    "epochs",
    "lr_decay",
    "clip_norm",
    "hidden_dims",
    "flows",
    "max_bad_steps",
    "eval_particles",
    "latent_dims",
]


@HYPOTHESIS
@given(
    field=st.sampled_from(CONFIG_FIELDS),
    value=st.one_of(BAD_NUMBERS, st.lists(BAD_NUMBERS, max_size=2)),
)
def test_property_config(field, value):
    try:
        config = Config(**{field: value})
    except CLEAN:
        return
    assert Config.from_dict(json.loads(json.dumps(config.to_dict()))) == config
