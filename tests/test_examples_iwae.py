"""Smoke test of examples/iwae.py: VAE vs IWAE for two k, one and two stochastic layers, on a tiny
subset."""

import json
import math

from examples_loader import load_example


def test_burda_schedule():
    example = load_example("iwae")
    schedule = example.burda_schedule()
    assert sum(e for e, _ in schedule) == 3280 and schedule[0] == (1, 1e-3)
    assert math.isclose(schedule[7][1], 1e-4) and schedule[3] == (27, 1e-3 * 10 ** (-3 / 7))


def test_iwae_example_smoke(tmp_path):
    example = load_example("iwae")
    rows = example.main(example.parse_args(["--smoke", "--layers", "1,2", "--out", str(tmp_path)]))
    assert [(r["layers"], r["elbo"], r["k"]) for r in rows] == [
        (layers, elbo, k) for layers in (1, 2) for k in (1, 5) for elbo in ("trace", "iwae")
    ]
    for row in rows:
        # the NLL (20 importance samples) is at least as tight as the ELBO up to Monte Carlo noise
        assert math.isfinite(row["nll"]) and 0 < row["nll"] <= -row["test_elbo"] + 2.0, row
        assert row["epochs"] == 1
        units = row["active_units"]
        assert 0 <= units <= 4 if row["layers"] == 1 else (len(units) == 2 and 0 <= units[0] <= 8)
    # at k = 1 the IWAE bound is the ELBO: same seed, same gradients, so both runs end at the same
    # model
    for layers in (1, 2):
        trace, iwae = (
            next(r for r in rows if (r["layers"], r["elbo"], r["k"]) == (layers, e, 1))
            for e in ("trace", "iwae")
        )
        assert (
            abs(trace["test_elbo"] - iwae["test_elbo"]) < 1e-3
            and abs(trace["nll"] - iwae["nll"]) < 1e-3
        )
    with open(tmp_path / "summary.json") as f:
        assert json.load(f)["runs"] == json.loads(json.dumps(rows))
