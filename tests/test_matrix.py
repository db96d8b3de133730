"""Every configuration the CLI offers: model × guide × estimator × likelihood × net × KL variant.

The axes are read from the registries (a new model, guide, estimator or likelihood joins the
matrix by itself).  :func:`pyro_vae.core.checks.check_config`, the function ``pyro-vae train``
calls before it reads any data, splits the matrix into refused and valid combinations:

* every refused combination is run through ``pyro-vae train`` with data loading made to fail:
  it must exit with status 2 and one line that names the conflict, and write nothing;
* valid combinations train a few steps on a small subset of Fashion-MNIST with pictures on, then
  ``evaluate``, ``sample`` and ``embed``: every figure is finite and every file is written. By
  default a covering set trains (every value of every axis at least once); with
  ``PYRO_VAE_MATRIX=pairwise`` also a pairwise covering set (every valid pair of values of two axes
  at least once: about 100 more runs, 6 minutes on 2 cores, kept out of ``make test`` so that the
  whole suite stays under 10 minutes); with ``PYRO_VAE_MATRIX=all`` every valid combination (hours
  on a CPU).
"""

import dataclasses
import itertools
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from pyro_vae.app import experiment
from pyro_vae.app.cli import build_parser, main
from pyro_vae.app.config import Config, check_config
from pyro_vae.core.checks import naming_flags
from pyro_vae.estimators import ESTIMATORS
from pyro_vae.evaluation.metrics import posterior_means
from pyro_vae.guides import FLOWS, GUIDES
from pyro_vae.models import MODELS, model_guides, with_defaults
from pyro_vae.models.builders import NETS
from pyro_vae.models.likelihoods import EIGHT_BIT, LIKELIHOODS

DEBIAN = "/usr/share/datasets/fashion-mnist"
needs_data = pytest.mark.skipif(
    not os.path.isdir(DEBIAN), reason="needs Debian's dataset-fashion-mnist"
)

# KL variants (pyro_vae.estimators.variants): flags on top of any estimator
VARIANTS = {
    "plain": {},
    "beta": {"beta": 4.0},
    "kl-warmup": {"kl_warmup_epochs": 2},
    "free-bits": {"free_bits": 0.1},
}
VARIANT_FLAGS = {
    "plain": (),
    "beta": ("--beta", "β"),
    "kl-warmup": ("--kl-warmup-epochs", "warm-up"),
    "free-bits": ("--free-bits", "free bits", "free-bits"),
}
AXES = ("model", "guide", "elbo", "likelihood", "net", "variant")
SMALL = dict(
    limit=256,
    test_limit=64,
    epochs=1,
    batch_size=64,
    hidden_dims=[16],
    latent_dim=3,
    device="cpu",
    latent_dims=[4, 2],
    labeled=32,
    flow_hidden_dims=None,
    hidden_channels=8,
    latent_channels=2,
)


def axes():
    """The values of each axis, from the registries and the models' own guide names."""
    guides = list(GUIDES)
    for builder in MODELS.values():
        guides += [g for g in model_guides(builder)[0] if g not in guides]
    return {
        "model": list(MODELS),
        "guide": guides,
        "elbo": list(ESTIMATORS),
        "likelihood": list(LIKELIHOODS),
        "net": list(NETS),
        "variant": list(VARIANTS),
    }


def combinations():
    values = axes()
    return [dict(zip(AXES, combo)) for combo in itertools.product(*(values[a] for a in AXES))]


def config_of(combo, out="runs/matrix"):
    """The Config fields of a combination; a flow guide gets one layer (the flag that makes it a
    flow), an 8-bit likelihood the grey levels (``binarize="none"``)."""
    fields = {
        **SMALL,
        **{a: combo[a] for a in AXES if a != "variant"},
        **VARIANTS[combo["variant"]],
    }
    fields["flows"] = 1 if combo["guide"] in FLOWS else 0
    if combo["likelihood"] in EIGHT_BIT:
        fields["binarize"] = (
            "none"  # the flag that makes it valid: 8-bit grey levels, not binarized images
        )
    return dict(fields, out=out)


def argv_of(fields):
    """``pyro-vae train`` flags for Config fields (those that differ from the defaults)."""
    default = Config()
    argv = ["train"]
    for f in dataclasses.fields(Config):
        v = fields.get(f.name, getattr(default, f.name))
        if v == getattr(default, f.name) or v is None:
            continue
        flag = "--" + f.name.replace("_", "-")
        if isinstance(v, bool):
            argv.append(flag if v else "--no-" + flag[2:])
        else:
            argv += [flag, ",".join(map(str, v)) if isinstance(v, list) else str(v)]
    return argv


def refusal(combo):
    """The one-line refusal of check_config, or None for a valid combination."""
    try:
        check_config(Config(**config_of(combo)))
    except (ValueError, TypeError) as e:
        return str(e)
    return None


def refusal_in_flags(combo):
    """:func:`refusal` as the command line words it: options named by their flags."""
    with naming_flags(build_parser().flags):
        return refusal(combo)


def classify():
    valid, refused = [], []
    for combo in combinations():
        why = refusal(combo)
        (valid if why is None else refused).append((combo, why) if why else combo)
    return valid, refused


def covering(valid, strength):
    """Greedy subset of ``valid`` holding every value (strength 1) or every valid pair of values (2)
    of the axes."""

    def items(combo):
        return {
            tuple((a, combo[a]) for a in group) for group in itertools.combinations(AXES, strength)
        }

    want = set().union(*(items(c) for c in valid))
    chosen = []
    while want:
        best = max(valid, key=lambda c: len(items(c) & want))
        chosen.append(best)
        want -= items(best)
    return chosen


VALID, REFUSED = classify()
COVER = covering(VALID, 1)
MATRIX = os.environ.get("PYRO_VAE_MATRIX", "")  # "", "pairwise" or "all"
PAIRS = [c for c in covering(VALID, 2) if c not in COVER] if MATRIX in ("pairwise", "all") else []
REST = [c for c in VALID if c not in COVER and c not in PAIRS] if MATRIX == "all" else []


def _id(combo):
    return "-".join(combo[a] for a in AXES)


def test_matrix_is_read_from_the_registries_and_split_by_check_config():
    values = axes()
    assert set(values["guide"]) >= set(GUIDES) and set(values["elbo"]) == set(ESTIMATORS)
    assert len(VALID) + len(REFUSED) == math.prod(len(v) for v in values.values())
    for axis in AXES:  # every value of every axis is part of at least one valid combination
        assert {c[axis] for c in VALID} == set(values[axis]), axis
    for combo in COVER:
        assert refusal(combo) is None


@pytest.fixture(autouse=True)
def data_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("PYRO_VAE_DATA", str(tmp_path_factory.getbasetemp() / "data"))


@pytest.mark.parametrize("model, guide", sorted({(c["model"], c["guide"]) for c, _ in REFUSED}))
def test_refused_before_any_data_is_read_with_one_line(model, guide, tmp_path, monkeypatch, capsys):
    def no_data(*args, **kwargs):
        raise AssertionError("data was read")

    monkeypatch.setattr(experiment, "load_data", no_data)
    monkeypatch.setattr("pyro_vae.data.load_images", no_data)
    out = tmp_path / "run"
    cases = [(c, why) for c, why in REFUSED if (c["model"], c["guide"]) == (model, guide)]
    for combo, _ in cases:
        with pytest.raises(SystemExit) as e:
            main(argv_of(config_of(combo, str(out))))
        err = capsys.readouterr().err
        assert e.value.code == 2, (combo, err)
        why = refusal_in_flags(combo)
        assert err.count("\n") == 1 and err.startswith("pyro-vae: error: ") and why in err, (
            combo,
            err,
        )
        named = {combo[a] for a in AXES if a != "variant"} | set(VARIANT_FLAGS[combo["variant"]])
        assert sum(token in err for token in named) >= 2, (combo, err)  # both sides of the conflict
        assert not out.exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--guide", "iaf"], "pass --flows N"),
        (["--flows", "2"], "--flows needs a flow guide"),
        (["--model", "hierarchical"], "needs --latent-dims"),
        (
            ["--model", "hierarchical", "--latent-dims", "4,2", "--flows", "1"],
            "--flows needs a flow guide",
        ),
        (["--model", "m2", "--guide", "top-down"], "unknown guide 'top-down' for --model m2"),
    ],
)
def test_supporting_flags_are_checked_before_any_data_is_read(
    argv, message, tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr(experiment, "load_data", lambda *a, **k: pytest.fail("data was read"))
    with pytest.raises(SystemExit) as e:
        main(["train", *argv, "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and err.count("\n") == 1


def test_each_model_has_its_own_default_guide():
    for name, builder in MODELS.items():
        guides, default = model_guides(builder)
        config = with_defaults(Config(model=name, latent_dims=[4, 2]))
        assert config.guide == default and default in guides
    assert with_defaults(Config(model="hierarchical")).guide == "top-down"
    assert with_defaults(Config(model="vae")).guide == "diagonal"
    assert with_defaults(Config(model="m2", guide="diagonal")).guide == "diagonal"


def _check_run(out, combo, capsys):
    """evaluate, sample and embed a trained run; every figure finite, every file written."""
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert (
        len(rows) == 1
        and math.isfinite(rows[0]["train_loss"])
        and math.isfinite(rows[0]["test_elbo"])
    )
    capsys.readouterr()
    main(["evaluate", str(out), "--nll-samples", "5", "--limit", "32", "--json"])
    result = json.loads(capsys.readouterr().out)
    for key in ("elbo", "recon", "kl", "nll"):
        assert math.isfinite(result[key]), (key, result)
    assert result["nll"] >= 0 and abs(
        result["elbo"] - (result["recon"] - result["kl"])
    ) < 1e-3 * abs(result["elbo"])
    if combo["model"] == "vq-vae":  # its samples come from a learned prior over the codes
        main(
            ["fit-prior", str(out), "--epochs", "1", "--channels", "8", "--layers", "2", "--quiet"]
        )
    main(["sample", str(out), "--n", "16"])
    main(["embed", str(out), "--limit", "32"])
    z = np.load(out / "embeddings_test.npy")
    labels = np.load(out / "embeddings_test_labels.npy")
    assert z.shape[0] == 32 and labels.shape == (32,) and np.isfinite(z).all()
    files = [
        "config.json",
        "checkpoint.pt",
        "metrics.jsonl",
        "eval.json",
        "samples.png",
        "reconstructions.png",
        "interpolations.png",
        "traversals.png",
        "loss.png",
        "latent_scatter.png",
        experiment.LOG,
    ]
    if combo["model"] == "m2":
        files.append("report.json")
    for name in files:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name


def _train(combo, tmp_path, capsys):
    out = tmp_path / "run"
    main([*argv_of(config_of(combo, str(out))), "--quiet"])
    captured = capsys.readouterr()
    assert captured.out == "", captured.out  # --quiet prints nothing
    _check_run(out, combo, capsys)


@needs_data
@pytest.mark.parametrize("combo", COVER, ids=_id)
def test_valid_combination_trains_evaluates_samples_and_embeds(combo, tmp_path, capsys):
    _train(combo, tmp_path, capsys)


@needs_data
@pytest.mark.slow
@pytest.mark.parametrize("combo", PAIRS + REST, ids=_id)
def test_valid_combination_pairwise(combo, tmp_path, capsys):
    _train(combo, tmp_path, capsys)


# ---------------------------------------------------------------------------------------------
# posterior means with a class label site; errors, --debug and the run log
# ---------------------------------------------------------------------------------------------
def test_posterior_means_skip_a_label_site_and_average_over_it():
    """q(y|x) = Cat(p), q(z|x, y) = N(y, 1): E[z] = Σ_y p_y y, and y itself (an integer site) has no
    mean."""
    import pyro
    import pyro.distributions as dist

    probs = torch.tensor([0.2, 0.5, 0.3])

    def guide(x):
        with pyro.plate("data", len(x)):
            y = pyro.sample("y", dist.Categorical(probs))
            pyro.sample("z", dist.Normal(y.to(x.dtype), 1.0))

    means = posterior_means(guide, torch.zeros(400, 2), mc_samples=64)
    assert list(means) == ["z"]
    exact = (probs * torch.arange(3.0)).sum()
    sd = math.sqrt(
        (probs * (torch.arange(3.0) - exact) ** 2).sum().item() / 64
    )  # the MC mean of 64 label draws
    assert abs(means["z"].mean().item() - exact.item()) < 4 * sd / math.sqrt(400)
    assert means["z"].std().item() == pytest.approx(sd, rel=0.25)


def _torchscript_failure(*args, **kwargs):
    raise RuntimeError(
        "The following operation failed in the TorchScript interpreter.\n"
        "Traceback of TorchScript (most recent call last):\n  File \"<string>\", line 3\n"
        "RuntimeError: mat1 and mat2 shapes cannot be multiplied (64x784 and 700x16)\n"
    )


@needs_data
@pytest.mark.parametrize("debug", [False, True])
def test_failure_inside_torch_is_one_line_with_the_traceback_in_the_log(
    debug, tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr("pyro_vae.training.trainer.Trainer.fit", _torchscript_failure)
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as e:
        main(
            [
                "train",
                "--limit",
                "128",
                "--test-limit",
                "32",
                "--hidden-dims",
                "8",
                "--latent-dim",
                "2",
                "--device",
                "cpu",
                "--out",
                str(out),
                "--quiet",
                *(["--debug"] if debug else []),
            ]
        )
    err = capsys.readouterr().err
    assert e.value.code == 1
    last = err.strip().splitlines()[-1]
    assert (
        last.startswith("pyro-vae: error: RuntimeError")
        and "mat1 and mat2 shapes cannot be multiplied" in last
    )
    assert "--debug" in last
    assert ("Traceback (most recent call last)" in err) == debug
    if not debug:
        assert err.count("\n") == 1 and str(out / experiment.LOG) in err
    log = (out / experiment.LOG).read_text()
    assert "Traceback (most recent call last)" in log and "_torchscript_failure" in log


def test_help_imports_neither_torch_nor_pyro():
    code = (
        "import sys; from pyro_vae.app.cli import build_parser; build_parser(); "
        "print(sorted(m for m in ('torch', 'pyro', 'torchvision') if m in sys.modules))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr


@needs_data
def test_quiet_train_prints_nothing(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYRO_VAE_DATA": str(tmp_path / "data")}
    out = tmp_path / "run"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pyro_vae",
            "train",
            "--limit",
            "128",
            "--test-limit",
            "32",
            "--epochs",
            "1",
            "--batch-size",
            "64",
            "--hidden-dims",
            "8",
            "--latent-dim",
            "2",
            "--device",
            "cpu",
            "--out",
            str(out),
            "--quiet",
            "--no-pictures",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0 and proc.stdout == "" and proc.stderr == "", (
        proc.stdout + proc.stderr
    )
    assert (
        "fast path" in (out / experiment.LOG).read_text()
    )  # the trainer's notes go to the run's log instead


def test_examples_write_smoke_runs_to_fresh_directories_and_number_full_runs(tmp_path, capsys):
    from examples_loader import load_example

    from pyro_vae.app import scripts

    example = load_example("beta_vae")
    first, second = (example.parse_args(["--smoke"]).out for _ in range(2))
    assert first != second and os.listdir(first) == os.listdir(second) == []
    os.rmdir(first), os.rmdir(second)
    out = tmp_path / "runs" / "beta_vae"
    assert scripts.output_dir(str(out), "beta_vae") == str(out)  # new
    out.mkdir(parents=True)
    (out / "beta_vae.json").write_text("{}")
    assert scripts.output_dir(str(out), "beta_vae") == f"{out}-2"  # taken: the next number
    os.makedirs(f"{out}-2/beta1")
    assert scripts.output_dir(str(out), "beta_vae") == f"{out}-3"
    assert scripts.output_dir(str(out), "beta_vae", resume=True) == str(out)
    printed = capsys.readouterr().out
    assert "pass --resume to continue it" in printed and f"resuming the run(s) in {out}" in printed


@pytest.mark.parametrize(
    "name",
    sorted(
        f[:-3]
        for f in os.listdir(os.path.join(os.path.dirname(__file__), "..", "examples"))
        if f.endswith(".py")
    ),
)
def test_every_example_takes_the_shared_run_flags_and_comma_separated_lists(name, tmp_path):
    """Every example takes --seed, --data-dir, --device, --limit and --out, and its list flags are
    comma-separated as in pyro-vae train (a space-separated list is an error, not a silent
    one-element list)."""
    from examples_loader import load_example

    example = load_example(name)
    args = example.parse_args(
        [
            "--seed",
            "3",
            "--data-dir",
            str(tmp_path),
            "--device",
            "cpu",
            "--limit",
            "7",
            "--out",
            str(tmp_path / "run"),
        ]
    )
    assert (args.seed, args.data_dir, args.device, args.limit, args.out) == (
        3,
        str(tmp_path),
        "cpu",
        7,
        str(tmp_path / "run"),
    )
    if hasattr(args, "hidden_dims"):
        assert example.parse_args(
            ["--hidden-dims", "8,16", "--out", str(tmp_path / "run")]
        ).hidden_dims == [8, 16]
        with pytest.raises(SystemExit):
            example.parse_args(["--hidden-dims", "8", "16", "--out", str(tmp_path / "run")])
