"""The Fashion-MNIST benchmark example runs every row end to end (tiny budget), writes its results
and resumes."""

import json
import os

import pytest
from examples_loader import load_example


def test_each_row_command_reproduces_its_config():
    """The recorded `pyro-vae train` line parses back into the row's config, seed and device
    included."""
    from pyro_vae.app.cli import build_parser
    from pyro_vae.app.config import Config

    bench = load_example("benchmark_fashion_mnist")
    args = bench.parse_args(["--device", "cpu"])
    for name in bench.ROWS:
        config = bench.base_config(args, name)
        assert config.early_stopping == 50 and config.epochs == 2000 and config.validation == 10000
        line = bench.command(config)
        assert "--seed 0" in line and "--device cpu" in line, line
        flags = vars(build_parser().parse_args(line.split()[1:]))
        # what the CLI builds from the line (as `run` does: defaults that follow other options,
        # such as --binarize following --likelihood, are filled in by the Config)
        cli = Config(**{k: v for k, v in flags.items() if k in config.to_dict()}).to_dict()
        assert {k: cli[k] for k in config.to_dict() if k != "out"} == {
            k: v for k, v in config.to_dict().items() if k != "out"
        }, name


@pytest.mark.slow
@pytest.mark.skipif(
    not os.path.isdir("/usr/share/datasets/fashion-mnist"), reason="needs Fashion-MNIST"
)
def test_benchmark_smoke(tmp_path, monkeypatch):
    monkeypatch.setenv("PYRO_VAE_DATA", str(tmp_path / "data"))
    bench = load_example("benchmark_fashion_mnist")
    argv = ["--smoke", "--device", "cpu", "--out", str(tmp_path / "b")]
    args = bench.parse_args(argv)
    assert bench.results_path(args) == str(
        tmp_path / "b" / "fashion_mnist_full.json"
    )  # never the measured file
    assert bench.results_path(bench.parse_args([])) == bench.RESULTS
    rows = bench.main(args)
    assert [r["row"] for r in rows] == list(bench.ROWS)
    saved = json.load(open(tmp_path / "b" / "fashion_mnist_full.json"))["rows"]
    assert [r["row"] for r in saved] == list(bench.ROWS)
    for r in saved:
        # an importance-sampled NLL is at most the negative ELBO up to Monte Carlo noise, and
        # positive for
        # images
        assert 0 < r["nll"] < -r["elbo"] + 10
        assert r["nll_samples"] == 10 and r["images"] == 100
        assert r["command"].startswith("pyro-vae train ") and "--seed 0" in r["command"]
        assert "--early-stopping 1" in r["command"] and "--validation 200" in r["command"]
        assert [m["epoch"] for m in r["history"]] == list(range(1, r["epochs"] + 1))
        val = [m["validation_elbo"] for m in r["history"]]
        assert r["best_epoch"] == 1 + val.index(max(val))
        assert r["published"]["nll"] == bench.PUBLISHED[r["published"]["row"]] and r["hours"] > 0
    table = open(tmp_path / "b" / "fashion_mnist_full.md").read()
    assert (
        table.count("\n| ") == len(rows) + 1 and "228.70" in table and "224.67" in table
    )  # rule, rows
    # hierarchical rows report active units per layer
    assert isinstance(rows[-1]["active_units"], list) and len(rows[-1]["active_units"]) == 2
    # without --resume a folder that holds runs is not reused: a fresh numbered one is (as every
    # example
    # does); with it, evaluated rows are kept and the runs are not redone
    assert bench.parse_args(argv + ["--rows", "vae"]).out == f"{tmp_path / 'b'}-2"
    again = bench.main(bench.parse_args(argv + ["--resume", "--rows", "vae,vampprior"]))
    assert again == [r for r in saved if r["row"] in ("vae", "vampprior")]
