"""The speed harnesses of benchmarks/ run end to end (tiny sizes) and write their tables; `--device
cuda` runs them on a GPU."""

import json
import os

import pytest
from examples_loader import load_example

DEBIAN = "/usr/share/datasets/fashion-mnist"


def test_speed_harness_replaces_only_its_own_section(tmp_path, device):
    speed = load_example("speed", "benchmarks")
    out = tmp_path / "RESULTS.md"
    out.write_text("# Speed\n\nThe reading stays.\n\n### ZZZ: another machine\n\nits table stays\n")
    speed.main(
        speed.parse_args(
            [
                "--device",
                str(device),
                "--rounds",
                "1",
                "--steps",
                "2",
                "--warmup",
                "1",
                "--epoch-rounds",
                "1",
                "--num-data",
                "512",
                "--configs",
                "kl-warmup,spline-stl",
                "--config-rounds",
                "1",
                "--config-steps",
                "2",
                "--no-compile",
                "--process-rounds",
                "0",
                "--out",
                str(out),
            ]
        )
    )
    text = out.read_text()
    assert text.startswith("# Speed\n\nThe reading stays.\n") and "its table stays" in text
    section = text[text.index(f"### {device.type.upper()}") : text.index("### ZZZ")]
    for arch in speed.ARCHS:
        for runner in ("eager", "eager-fused", "pyro", "pyro-jit", "pyro_vae"):
            assert f"| {arch} | {runner} | " in section
        assert f"| {arch} | eager | " in section.split("512-image epoch")[1]
    configs = text.split("configurations:")[1]
    assert "| kl-warmup | fx | " in configs  # β in a tensor: the fast path, against its eager twin
    assert (
        configs.split("| kl-warmup |")[1].split("\n")[0].count(" – ") == 3
    )  # no inductor columns (--no-compile)
    assert (
        "| spline-stl | plain: the loss has ops whose output shape depends on the data" in configs
    )
    rerun = out.read_text()
    speed.write_section(str(out), "ZZZ", "### ZZZ: another machine\n\nnew table\n")
    assert out.read_text() == rerun.replace("its table stays", "new table")


@pytest.mark.skipif(not os.path.isdir(DEBIAN), reason="needs Debian's dataset-fashion-mnist")
def test_particle_benchmark_table(tmp_path, device):
    particles = load_example("particles", "benchmarks")
    out = tmp_path / "PARTICLES.md"
    medians = particles.main(
        particles.parse_args(
            [
                "--device",
                str(device),
                "--estimators",
                "trace,iwae",
                "--k",
                "1,2",
                "--batch-size",
                "16",
                "--rounds",
                "1",
                "--warmup",
                "0",
                "--out",
                str(out),
            ]
        )
    )
    assert sorted(medians) == [("iwae", 1), ("iwae", 2), ("trace", 1), ("trace", 2)]
    assert all(v > 0 for v in medians.values())
    rows = [
        line
        for line in out.read_text().splitlines()
        if line.startswith("| trace |") or line.startswith("| iwae |")
    ]
    assert len(rows) == 2 and all(row.count("ms") == 2 and row.count("×") == 1 for row in rows)


@pytest.mark.skipif(not os.path.isdir(DEBIAN), reason="needs Debian's dataset-fashion-mnist")
def test_log_likelihood_benchmark_table(tmp_path, device):
    bench = load_example("log_likelihood", "benchmarks")
    out = tmp_path / "LOG_LIKELIHOOD.md"
    bench.main(
        bench.parse_args(
            [
                "--device",
                str(device),
                "--images",
                "4",
                "--k",
                "8,64",
                "--max-elements",
                "32",
                "--out",
                str(out),
            ]
        )
    )
    rows = [
        line.split(" | ")
        for line in out.read_text().splitlines()
        if line.startswith("| 8 |") or line.startswith("| 64 |")
    ]
    assert [row[1:3] for row in rows] == [["4", "32"], ["4", "32"]]
    nll = [float(row[-1].rstrip(" |")) for row in rows]
    assert all(
        400 < v < 800 for v in nll
    )  # an untrained VAE on binarized images: about 784 · log 2 ≈ 543 nats


def test_host_memory_benchmark_runs_both_ways(tmp_path):
    bench = load_example("host_memory", "benchmarks")
    out = tmp_path / "host_memory.json"
    bench.main(["--images", "3", "--samples", "50", "--out", str(out)])
    result = json.loads(out.read_text())
    assert result["passes"] == 3 and all(result[k]["peak_mib"] > 0 for k in ("released", "kept"))


@pytest.mark.skipif(not os.path.isdir(DEBIAN), reason="needs Debian's dataset-fashion-mnist")
def test_plain_pytorch_reference_gives_the_test_elbo_of_pyro_vae_train(tmp_path, capsys):
    """The reference draws the trainer's random numbers in the trainer's order, so the two runs
    differ only by float32 rounding (op order, the fx replay, the top-down path run once or twice):
    about 1e-7 relative per op, amplified by four Adam steps; 1e-3 relative (≈ 0.5 nats here) is
    far above that and far below what a different loss costs (a group's KL, the data plate's
    scale: tens of nats). The issue asks for 2 %."""
    from pyro_vae.app import cli

    sizes = ["--scales", "2", "--groups-per-scale", "2", "--hidden-channels", "8"]
    sizes += ["--latent-channels", "2", "--limit", "200", "--epochs", "2", "--batch-size", "100"]
    sizes += ["--seed", "3"]
    reference = load_example("deep_hierarchical_reference", "benchmarks")
    expected = reference.main(reference.parse_args([*sizes, "--test-limit", "200"]))
    assert capsys.readouterr().out.strip().splitlines()[-1] == f"test_elbo: {expected:.6g}"
    out = tmp_path / "run"
    flags = [
        "--test-limit",
        "200",
        "--device",
        "cpu",
        "--no-pictures",
        "--no-tensorboard",
        "--quiet",
    ]
    cli.main(["train", "--model", "deep-hierarchical", *sizes, *flags, "--out", str(out)])
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["fast_path"]
    assert -700 < expected < -300  # binarized images, barely trained: about 784 · log 2 ≈ 543
    assert rows[-1]["test_elbo"] == pytest.approx(expected, rel=1e-3)


@pytest.mark.skipif(not os.path.isdir(DEBIAN), reason="needs Debian's dataset-fashion-mnist")
def test_recipe_benchmark_writes_one_row_per_flag(tmp_path):
    recipe = load_example("recipe", "benchmarks")
    md = tmp_path / "recipe.md"
    args = ["--limit", "100", "--test-limit", "50", "--epochs", "1", "--only", "none,spectral-reg"]
    sizes = "--scales 1 --hidden-channels 8 --latent-channels 2"
    args += ["--model-args", sizes, "--out", str(tmp_path / "runs"), "--md", str(md)]
    results = recipe.main(recipe.parse_args(args))
    assert list(results) == ["none", "spectral-reg"]
    text = md.read_text()
    assert "| `(none)` | " in text and "| `--spectral-reg 0.1` | " in text
