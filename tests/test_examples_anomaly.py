"""Smoke test of examples/anomaly_detection.py: train without one class on a subset, score the test
images."""

import json
import os
import warnings

from examples_loader import load_example


def test_anomaly_example_smoke(tmp_path, capsys):
    example = load_example("anomaly_detection")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = example.main(example.parse_args(["--smoke", "--out", str(tmp_path)]))
    # 500 test images, 2 epochs on 2000 training images: the held-out bags already score clearly
    # worse
    assert result["anomaly_class"] == 8 and result["anomalous"] + result["normal"] == 500
    assert result["anomalous"] > 0 and 0.6 < result["auc"] <= 1
    assert result["mean_score_anomalous"] > result["mean_score_normal"] > 0
    assert set(result["auc_per_normal_class"]) == set(range(10)) - {8}
    with open(tmp_path / "anomaly.json") as f:
        assert json.load(f)["auc"] == result["auc"]
    with open(tmp_path / "config.json") as f:
        assert json.load(f)["exclude_class"] == 8
    assert "ROC AUC" in capsys.readouterr().out
    _check_subcommands(str(tmp_path), capsys)


def _check_subcommands(run_dir, capsys):
    """The run left by the example works with `pyro-vae evaluate|anomaly|denoise|embed|sample`."""
    import numpy as np
    from PIL import Image

    from pyro_vae.app.cli import main

    main(["evaluate", run_dir, "--nll-samples", "20", "--limit", "100", "--json"])
    result = json.loads(capsys.readouterr().out)
    for key in (
        "elbo",
        "nll",
        "recon",
        "kl",
        "active_units",
        "kl_per_dim",
        "nll_samples",
        "images",
        "warnings",
    ):
        assert key in result, key
    assert result["images"] == 100 and result["nll_samples"] == 20
    assert abs(result["elbo"] - (result["recon"] - result["kl"])) < 1e-9 and result["kl"] > 0
    assert (
        0 < result["nll"] <= -result["elbo"] + 1.0
    )  # K = 20 bound: at least as tight as the ELBO up to MC noise
    assert 0 <= result["active_units"] <= 20 and len(result["kl_per_dim"]) == 20
    with open(os.path.join(run_dir, "eval.json")) as f:
        assert json.load(f)["nll"] == result["nll"]
    for name in ("samples", "reconstructions", "interpolations", "traversals", "latent_scatter"):
        assert os.path.exists(os.path.join(run_dir, name + ".png")), name
    with Image.open(os.path.join(run_dir, "traversals.png")) as im:
        assert im.size == (
            30 * 9 + 2,
            30 * 20 + 2,
        )  # 20 latent dimensions × 9 values of 28×28 images

    main(["denoise", run_dir, "--corruption", "mask", "--level", "0.3", "--limit", "50"])
    out = json.loads(capsys.readouterr().out)
    assert out["images"] == 50 and out["mse_denoised_changed"] < out["mse_noisy_changed"]

    main(["embed", run_dir, "--limit", "30"])
    z_path, y_path = capsys.readouterr().out.split()
    assert np.load(z_path).shape == (30, 20) and np.load(y_path).shape == (30,)

    main(["sample", run_dir, "--n", "16"])
    with Image.open(capsys.readouterr().out.strip()) as im:
        assert im.size == (30 * 8 + 2, 30 * 2 + 2)
