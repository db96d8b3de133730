"""Smoke test of examples/hierarchical.py: the one- vs two-layer comparison runs end to end on a
tiny subset."""

import json
import math
import warnings

from examples_loader import load_example


def test_hierarchical_example_smoke(tmp_path):
    example = load_example("hierarchical")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # collapse warnings are expected after one tiny epoch
        rows = example.main(example.parse_args(["--smoke", "--out", str(tmp_path)]))
    assert list(rows) == ["1 layer", "2 layers top-down", "2 layers bottom-up"]
    for name, row in rows.items():
        # NLL is an importance-sampled bound at least as tight as the ELBO: nll <= -elbo (up to MC
        # noise of 10
        # samples)
        assert math.isfinite(row["nll"]) and 0 < row["nll"] <= -row["test_elbo"] + 1.0, name
    assert isinstance(rows["1 layer"]["active_units"], int)
    for name in ("2 layers top-down", "2 layers bottom-up"):
        assert len(rows[name]["active_units"]) == 2 and set(rows[name]["kl_per_layer"]) == {
            "z1",
            "z2",
        }
        assert all(kl >= 0 for kl in rows[name]["kl_per_layer"].values())
    with open(tmp_path / "summary.json") as f:
        assert json.load(f)["runs"] == json.loads(json.dumps(rows))
