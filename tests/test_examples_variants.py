"""Smoke tests of examples/beta_vae.py, m2.py and cvae.py on tiny Fashion-MNIST subsets."""
import importlib.util
import math
import os

import pytest

HERE = os.path.join(os.path.dirname(__file__), "..", "examples")


def _load(name):
    spec = importlib.util.spec_from_file_location(f"example_{name}", os.path.join(HERE, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_beta_vae_example(tmp_path):
    ex = _load("beta_vae")
    rows = ex.main(ex.parse_args(["--smoke", "--out", str(tmp_path)]))
    for row in rows.values():
        assert row["kl"] >= 0 and row["elbo"] == pytest.approx(row["recon"] - row["kl"], rel=1e-5)


def test_m2_example(tmp_path):
    ex = _load("m2")
    result = ex.main(ex.parse_args(["--smoke", "--out", str(tmp_path)]))
    assert 0 <= result["test_accuracy"] <= 1 and result["labeled"] == 50 and math.isfinite(result["test_elbo"])


def test_cvae_example(tmp_path):
    ex = _load("cvae")
    paths = ex.main(ex.parse_args(["--smoke", "--out", str(tmp_path)]))
    assert len(paths) == 10 and all(os.path.getsize(p) > 0 for p in paths)
