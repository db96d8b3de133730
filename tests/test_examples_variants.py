"""Smoke tests of examples/beta_vae.py, m2.py and cvae.py on tiny Fashion-MNIST subsets."""

import math
import os

import pytest
from examples_loader import load_example


def test_beta_vae_example(tmp_path):
    ex = load_example("beta_vae")
    rows = ex.main(ex.parse_args(["--smoke", "--out", str(tmp_path)]))
    for row in rows.values():
        assert row["kl"] >= 0 and row["elbo"] == pytest.approx(row["recon"] - row["kl"], rel=1e-5)


def test_m2_example(tmp_path):
    ex = load_example("m2")
    result = ex.main(ex.parse_args(["--smoke", "--out", str(tmp_path)]))
    assert (
        0 <= result["test_accuracy"] <= 1
        and result["labeled"] == 50
        and math.isfinite(result["test_elbo"])
    )


def test_cvae_example(tmp_path):
    ex = load_example("cvae")
    paths = ex.main(ex.parse_args(["--smoke", "--out", str(tmp_path)]))
    assert len(paths) == 10 and all(os.path.getsize(p) > 0 for p in paths)
