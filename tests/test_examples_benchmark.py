"""The Fashion-MNIST benchmark example runs every row end to end (tiny budget) and writes its table."""
import json
import os

import pytest
from examples_loader import load_example


@pytest.mark.skipif(not os.path.isdir("/usr/share/datasets/fashion-mnist"), reason="needs Fashion-MNIST")
def test_benchmark_smoke(tmp_path, monkeypatch):
    monkeypatch.setenv("PYRO_VAE_DATA", str(tmp_path / "data"))
    bench = load_example("benchmark_fashion_mnist")
    rows = bench.main(bench.parse_args(["--smoke", "--device", "cpu", "--out", str(tmp_path / "b")]))
    assert [r["row"] for r in rows] == list(bench.ROWS)
    for r in rows:
        # an importance-sampled NLL is at most the negative ELBO up to Monte Carlo noise, and positive for images
        assert 0 < r["nll"] < -r["elbo"] + 10
        assert r["command"].startswith("pyro-vae train ")
    table = open(tmp_path / "b" / "results.md").read()
    assert table.count("\n| ") == len(rows) + 2 and "228.70" in table  # header, rule, rows
    assert json.load(open(tmp_path / "b" / "results.json"))[0]["published_nll"] == 228.70
    # hierarchical rows report active units per layer
    assert isinstance(rows[-1]["active_units"], list) and len(rows[-1]["active_units"]) == 2
