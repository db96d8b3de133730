"""Smoke test of examples/cifar10_conv.py: a conv VAE with a discretized logistic on generated
colour images."""

import json
import math

from examples_loader import load_example


def test_cifar10_conv_example_smoke(tmp_path):
    example = load_example("cifar10_conv")
    summary = example.main(
        example.parse_args(["--smoke", "--out", str(tmp_path), "--device", "cpu"])
    )
    assert (
        summary["dataset"].startswith("folder:") and summary["test_images"] == 26
    )  # 10 % of 256 PNGs
    assert math.isclose(summary["bits_per_dim"], summary["nll"] / (3 * 32 * 32 * math.log(2)))
    # the importance-sampled NLL is at least as tight as the ELBO (up to the noise of 20 samples),
    # and the
    # shared pattern is learnt in three epochs: below the 8 bits/dim of a model that ignores it
    assert summary["bits_per_dim"] <= summary["elbo_bits_per_dim"] + 0.01
    assert 0 < summary["bits_per_dim"] < 7.5
    with open(tmp_path / "summary.json") as f:
        assert json.load(f) == json.loads(json.dumps(summary))
