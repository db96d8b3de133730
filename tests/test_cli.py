"""The `pyro-vae` command line and the examples, run end to end on small real data."""

import json
import math
import os
import subprocess
import sys

import pytest
import torch
from examples_loader import load_example

from pyro_vae.app.cli import main
from pyro_vae.app.config import Config

DEBIAN = "/usr/share/datasets/fashion-mnist"
pytestmark = pytest.mark.skipif(
    not os.path.isdir(DEBIAN), reason="needs Debian's dataset-fashion-mnist"
)


@pytest.fixture(autouse=True)
def data_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("PYRO_VAE_DATA", str(tmp_path_factory.getbasetemp() / "data"))


def test_train_evaluate_sample(tmp_path, capsys):
    out = str(tmp_path / "run")
    main(
        [
            "train",
            "--limit",
            "512",
            "--test-limit",
            "256",
            "--epochs",
            "2",
            "--batch-size",
            "64",
            "--latent-dim",
            "4",
            "--hidden-dims",
            "64",
            "--device",
            "cpu",
            "--out",
            out,
            "--quiet",
        ]
    )
    for name in (
        "metrics.jsonl",
        "config.json",
        "checkpoint.pt",
        "samples.png",
        "reconstructions.png",
        "loss.png",
    ):
        assert os.path.exists(os.path.join(out, name)), name
    rows = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert all({"epoch", "train_loss", "test_elbo", "seconds"} <= set(r) for r in rows)
    assert Config.load(os.path.join(out, "config.json")).latent_dim == 4
    capsys.readouterr()
    main(["evaluate", out, "--nll-samples", "50", "--limit", "64", "--json"])
    result = json.loads(capsys.readouterr().out)
    assert result["images"] == 64 and result["elbo"] < 0 and result["kl"] >= 0
    assert abs(result["elbo"] - (result["recon"] - result["kl"])) < 1e-3
    assert (
        result["nll"] <= -result["elbo"] + 5
    )  # a 50-sample bound is tighter than the 1-sample ELBO, up to noise
    assert json.load(open(os.path.join(out, "eval.json")))["images"] == 64
    main(["sample", out, "--n", "16", "--out", str(tmp_path / "fresh.png")])
    assert os.path.exists(tmp_path / "fresh.png")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--latent-dim", "0"], "--latent-dim must be a positive integer"),
        (["train", "--lr", "nan"], "lr must be a finite positive number"),
        (["train", "--weight-ema", "1"], "--weight-ema must be in [0, 1), got 1.0"),
        (["train", "--spectral-reg", "0.1"], "--spectral-reg regularizes conv weights"),
        (
            ["train", "--kl-balance", "--kl-warmup-epochs", "2"],
            "--kl-balance balances the KL of several latent groups, and --model vae has 1;",
        ),
        (
            ["train", "--model", "deep-hierarchical", "--kl-balance"],
            "--kl-balance weighs each latent group's KL while β < 1, during the KL warm-up",
        ),
        (["train", "--elbo", "nope", "--limit", "64", "--epochs", "1"], "unknown estimator"),
        (["evaluate", "/nonexistent/run"], "not a finished run"),
    ],
)
def test_user_errors_exit_2_with_one_line(argv, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        main(argv + (["--out", str(tmp_path / "r")] if argv[0] == "train" else []))
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\n") == 1


@pytest.mark.parametrize(
    "argv, config, flags, arguments",
    [
        (
            ["--lr", "0"],
            dict(lr=0.0),
            "--lr must be a finite positive number, got 0.0; e.g. --lr 1e-3",
            "lr must be a finite positive number, got 0.0; e.g. lr=1e-3",
        ),
        (
            ["--model", "hierarchical"],
            dict(model="hierarchical"),
            "needs --latent-dims, e.g. --latent-dims 64,32 (z1",
            "needs latent_dims, e.g. latent_dims=[64, 32] (z1",
        ),
        (
            ["--elbo", "iwae", "--beta", "2"],
            dict(elbo="iwae", beta=2.0),
            "use --elbo trace, --elbo meanfield or --elbo "
            "stl with --beta, --kl-warmup-epochs or --free-bits",
            "use elbo='trace', elbo='meanfield' or elbo='stl' with beta=",
        ),
    ],
)
def test_a_cli_error_names_the_flag_and_the_same_error_from_python_the_argument(
    argv, config, flags, arguments, capsys, tmp_path
):
    from pyro_vae.app.config import check_config

    with pytest.raises(SystemExit) as e:
        main(["train", "--out", str(tmp_path / "r"), *argv])
    assert e.value.code == 2 and flags in capsys.readouterr().err
    with pytest.raises(ValueError) as e:
        check_config(Config(**config))
    assert arguments in str(e.value) and "--" not in str(e.value)


def test_option_names_python_arguments_and_under_the_cli_mapping_flags():
    from pyro_vae.app.cli import build_parser
    from pyro_vae.core.checks import naming_flags, option

    def words():
        return (
            f"pass {option('guide', repr('top-down'))} or set {option('tensorboard', 'False')}; "
            f"continue with {option('resume', 'True')}; try a smaller {option('lr', '')}, or "
            f"{option('clip_norm', '10')}; {option('kl_warmup_epochs')}, "
            f"{option('latent_dims', '[64, 32]')} and {option('data_plate', 'NAME')} stay"
        )

    assert words() == (
        "pass guide='top-down' or set tensorboard=False; continue with resume=True; try a smaller "
        "lr=, or clip_norm=10; kl_warmup_epochs, latent_dims=[64, 32] and data_plate=NAME stay"
    )
    with naming_flags(build_parser().flags):
        flags = words()
    assert flags == (
        "pass --guide top-down or set --no-tensorboard; continue with --resume; try a smaller "
        "--lr, or --clip-norm 10; --kl-warmup-epochs, --latent-dims 64,32 and data_plate=NAME "
        "stay"
    )
    assert "--" not in words()  # the mapping holds only inside the block


def test_existing_run_needs_resume(tmp_path):
    out = str(tmp_path / "run")
    args = [
        "train",
        "--limit",
        "128",
        "--test-limit",
        "64",
        "--epochs",
        "1",
        "--hidden-dims",
        "32",
        "--latent-dim",
        "2",
        "--device",
        "cpu",
        "--out",
        out,
        "--quiet",
        "--no-pictures",
    ]
    main(args)
    with pytest.raises(SystemExit):
        main(args)
    main([*args[:6], "2", *args[7:], "--resume"])  # --epochs 2 --resume continues
    assert [json.loads(line)["epoch"] for line in open(os.path.join(out, "metrics.jsonl"))] == [
        1,
        2,
    ]


def test_module_entry_point(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "pyro_vae", "train", "--help"], capture_output=True, text=True
    )
    assert proc.returncode == 0 and "--elbo" in proc.stdout and "--likelihood" in proc.stdout


def test_custom_model_guide_example_trains(tmp_path):
    example = load_example("custom_model_guide")
    history, result = example.main(
        example.parse_args(["--smoke", "--device", "cpu", "--out", str(tmp_path)])
    )
    assert history[-1]["test_elbo"] > history[0]["test_elbo"]
    assert result["nll"] < -history[-1]["test_elbo"] + 5
    assert os.path.exists(tmp_path / "samples.png")


@pytest.mark.slow
def test_two_epochs_on_fashion_mnist_match_a_hand_written_vae(tmp_path):
    """The issue's acceptance run: 784-400-20, batch 128, 2 epochs; a hand-written PyTorch VAE
    reaches ≈ −256 nats."""
    torch.set_num_threads(max(1, torch.get_num_threads()))
    out = str(tmp_path / "fm")
    main(
        [
            "train",
            "--dataset",
            "fashion-mnist",
            "--epochs",
            "2",
            "--batch-size",
            "128",
            "--latent-dim",
            "20",
            "--hidden-dims",
            "400",
            "--elbo",
            "trace",
            "--device",
            "cpu",
            "--out",
            out,
            "--quiet",
        ]
    )
    rows = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    assert rows[-1]["test_elbo"] > -258
    assert rows[-1]["test_elbo"] > rows[0]["test_elbo"]


def test_fast_flag_reaches_the_trainer(tmp_path):
    """--fast off trains with plain Pyro steps, --fast trace replays the traced graph: the metrics
    rows say which, and both give finite losses; an unknown mode is refused in one line before any
    data is read."""
    base = [
        "train",
        "--limit",
        "256",
        "--test-limit",
        "64",
        "--epochs",
        "1",
        "--batch-size",
        "64",
        "--latent-dim",
        "2",
        "--hidden-dims",
        "16",
        "--device",
        "cpu",
        "--quiet",
        "--no-pictures",
        "--no-tensorboard",
    ]
    for mode, expected in (("off", False), ("trace", True)):
        out = tmp_path / mode
        main(base + ["--fast", mode, "--out", str(out)])
        row = json.loads(open(out / "metrics.jsonl").readline())
        assert row["fast_path"] is expected and math.isfinite(row["train_loss"]), row[
            "fast_path_note"
        ]
    with pytest.raises(SystemExit) as e:
        main(base + ["--fast", "always", "--out", str(tmp_path / "bad")])
    assert e.value.code == 2 and not (tmp_path / "bad").exists()


def test_a_moved_run_directory_resumes(tmp_path):
    """The run folder is where a run lives, not one of its options: moved elsewhere, it resumes
    there."""
    args = [
        "train",
        "--limit",
        "128",
        "--test-limit",
        "64",
        "--epochs",
        "1",
        "--hidden-dims",
        "16",
        "--latent-dim",
        "2",
        "--device",
        "cpu",
        "--quiet",
        "--no-pictures",
        "--no-tensorboard",
    ]
    main(args + ["--out", str(tmp_path / "a")])
    os.rename(tmp_path / "a", tmp_path / "b")
    main([*args[:6], "2", *args[7:], "--out", str(tmp_path / "b"), "--resume"])
    assert [json.loads(line)["epoch"] for line in open(tmp_path / "b" / "metrics.jsonl")] == [1, 2]


def test_console_figures_stay_short_the_json_keeps_every_number():
    """`pyro-vae evaluate` prints a feature-map latent's KL per dimension (thousands of numbers) as
    a summary."""
    from pyro_vae.app.cli import _short

    assert _short([0.5] * 1000 + [2.5]) == "[1001 values: mean 0.502, max 2.500]"
    assert (
        _short([0.25, 1.0]) == "[0.250, 1.000]"
        and _short({"z_1": 1.23456, "z_2": None}) == "{z_1: 1.235, z_2: None}"
    )
