"""Smoke test of examples/flow_guides.py: diagonal vs IAF vs planar runs end to end on a tiny
subset."""

import json
import math
import warnings

from examples_loader import load_example


def test_flow_guides_example_smoke(tmp_path):
    example = load_example("flow_guides")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # collapse warnings are expected after one tiny epoch
        rows = example.main(example.parse_args(["--smoke", "--out", str(tmp_path)]))
    assert list(rows) == ["diagonal", "iaf", "planar"]
    for name, row in rows.items():
        # the NLL is an importance-sampled bound at least as tight as the ELBO: nll <= -elbo, up to
        # the Monte
        # Carlo noise of 10 importance samples and a one-particle ELBO on 100 images
        assert math.isfinite(row["nll"]) and 0 < row["nll"] <= -row["test_elbo"] + 1.0, name
        assert math.isclose(row["gap"], -row["nll"] - row["test_elbo"]) and row["gap"] > -1.0
    with open(tmp_path / "summary.json") as f:
        summary = json.load(f)
    assert summary["runs"] == json.loads(json.dumps(rows)) and summary["settings"]["flows"] == 2
    for name in rows:
        with open(tmp_path / name / "config.json") as f:
            assert json.load(f)["guide"] == name
