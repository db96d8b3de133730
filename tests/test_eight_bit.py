"""Colour and 8-bit images end to end: conv nets of any size, bits/dim in evaluate, the CLI on
generated data."""

import json
import math
import os

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from examples_loader import load_example
from PIL import Image

from pyro_vae import Config, Trainer, evaluate, load_data
from pyro_vae.app.cli import main
from pyro_vae.models import build_model
from pyro_vae.models.likelihoods import make_likelihood
from pyro_vae.models.nets import ConvDecoder, ConvEncoder


@pytest.mark.parametrize("size", [28, 32, 64])
@pytest.mark.parametrize("channels", [1, 3])
def test_conv_nets_take_any_size_and_channels(size, channels):
    enc, dec = (
        ConvEncoder(16, channels, image_size=(size, size)),
        ConvDecoder(5, channels, image_size=(size, size)),
    )
    x = torch.rand(4, 2, channels, size, size)  # extra leading (particle) dimension
    assert enc(x).shape == (4, 2, 16) and dec(torch.randn(4, 2, 5)).shape == (
        4,
        2,
        channels,
        size,
        size,
    )


@pytest.mark.parametrize(
    "model, shape",
    [
        ("vae", (3, 32, 32)),
        ("vae", (1, 28, 28)),
        ("hierarchical", (3, 64, 64)),
        ("hierarchical", (1, 32, 32)),
    ],
)
@pytest.mark.parametrize("likelihood", ["discretized-logistic", "categorical"])
def test_built_in_models_with_conv_nets_and_8_bit_likelihoods_score_every_image(
    model, shape, likelihood
):
    config = Config(
        model=model,
        net="conv",
        likelihood=likelihood,
        binarize="none",
        mixtures=2,
        latent_dim=4,
        hidden_dims=[16],
        latent_dims=[4, 2] if model == "hierarchical" else None,
        guide="top-down" if model == "hierarchical" else "diagonal",
    )
    vae = build_model(config, shape, num_data=8)
    x = torch.randint(0, 256, (3, *shape)) / 255.0
    guide_trace = pyro.poutine.trace(vae.guide).get_trace(x)
    trace = pyro.poutine.trace(pyro.poutine.replay(vae.model, trace=guide_trace)).get_trace(x)
    lp = trace.nodes["x"]["fn"].log_prob(x)
    # each value has probability ≤ 1, and the decoder's near-zero start gives ~ a few nats per value
    assert lp.shape == (3,) and (lp < 0).all() and (lp > -20 * math.prod(shape)).all()


def _constant_pair(logits):
    """p(z) = q(z|x) = N(0, 1) and p(x|z) = Categorical256(logits) ignoring z: log p(x) = Σ_d log
    softmax(logits_d)_k exactly, and every importance weight equals it."""
    lik = make_likelihood("categorical", logits.shape[1:])

    def model(x):
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
            out = logits.reshape(256 * logits.shape[1], *logits.shape[2:]).expand(
                len(x), -1, *logits.shape[2:]
            )
            pyro.sample("x", lik(out).to_event(3), obs=x)

    def guide(x):
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Normal(x.new_zeros(2), 1.0).to_event(1))

    return model, guide


@pytest.mark.filterwarnings("ignore:posterior collapse")
def test_bits_per_dim_is_the_exact_nll_over_d_ln_2():
    shape = (3, 4, 4)
    x = torch.randint(0, 256, (6, *shape)) / 255.0
    model, guide = _constant_pair(
        torch.zeros(256, *shape)
    )  # uniform over 256 values: 8 bits exactly
    result = evaluate(model, guide, x, nll_samples=10, verbose=False)
    assert result["bits_per_dim"] == pytest.approx(8.0, abs=1e-5)
    assert result["nll"] == pytest.approx(
        48 * 8 * math.log(2), rel=1e-6
    )  # D = 48 values of 8 bits, in nats
    logits = torch.randn(256, *shape, generator=torch.Generator().manual_seed(0))
    model, guide = _constant_pair(logits)
    k = (x * 255).round().long()
    exact = (
        -torch.log_softmax(logits, 0)
        .unsqueeze(0)
        .expand(6, -1, -1, -1, -1)
        .gather(1, k.unsqueeze(1))
        .sum((1, 2, 3, 4))
    )
    result = evaluate(model, guide, x, nll_samples=10, verbose=False)
    assert result["nll"] == pytest.approx(exact.mean().item(), rel=1e-5)
    assert result["bits_per_dim"] == pytest.approx(result["nll"] / (48 * math.log(2)), rel=1e-12)


@pytest.mark.filterwarnings("ignore:posterior collapse")
def test_bernoulli_reports_bits_per_dim_on_binary_images_only():
    """Binarized images under a Bernoulli are a discrete distribution (bits/dim = nll / (D ln 2));
    grey levels under the same Bernoulli (a relaxation, not a normalized density) get none."""
    config = Config(latent_dim=2, hidden_dims=[8])
    vae = build_model(config, (1, 4, 4))
    result = evaluate(
        vae.model, vae.guide, torch.rand(4, 1, 4, 4).round(), nll_samples=5, verbose=False
    )
    assert result["bits_per_dim"] == pytest.approx(result["nll"] / (16 * math.log(2)), rel=1e-12)
    result = evaluate(
        vae.model, vae.guide, torch.rand(4, 1, 4, 4) * 0.8 + 0.1, nll_samples=5, verbose=False
    )
    assert "nll" in result and "bits_per_dim" not in result


def test_8_bit_likelihoods_refuse_binarized_data():
    data = load_data(torch.randint(0, 256, (20, 1, 4, 4), dtype=torch.uint8), binarize="dynamic")
    vae = build_model(
        Config(likelihood="categorical", binarize="none", latent_dim=2, hidden_dims=[8]), (1, 4, 4)
    )
    with pytest.raises(ValueError, match="binarize='dynamic'.*binarize='none'"):
        Trainer(vae.model, vae.guide, progress=False).fit(data, epochs=1)


# ---------------------------------------------------------------------------------------------
# the CLI on generated images
# ---------------------------------------------------------------------------------------------
smooth_images = load_example(
    "cifar10_conv"
).smoke_images  # a shared pattern + colour shift + noise, uint8 NHWC


@pytest.fixture(scope="module")
def png_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("pngs")
    for i, a in enumerate(smooth_images(200)):
        Image.fromarray(a).save(root / f"{i:03d}.png")
    return str(root)


def test_cli_conv_vae_with_discretized_logistic_on_a_png_folder(png_folder, tmp_path, capsys):
    out = str(tmp_path / "run")
    main(
        [
            "train",
            "--dataset",
            f"folder:{png_folder}",
            "--likelihood",
            "discretized-logistic",
            "--mixtures",
            "2",
            "--net",
            "conv",
            "--latent-dim",
            "8",
            "--hidden-dims",
            "64",
            "--epochs",
            "2",
            "--batch-size",
            "32",
            "--device",
            "cpu",
            "--out",
            out,
            "--quiet",
            "--no-pictures",
        ]
    )
    capsys.readouterr()
    main(["evaluate", out, "--nll-samples", "20", "--json", "--no-pictures"])
    result = json.loads(capsys.readouterr().out)
    assert result["images"] == 20  # 10 % of 200 split off
    assert result["bits_per_dim"] == pytest.approx(result["nll"] / (3 * 32 * 32 * math.log(2)))
    # a shared pattern is learnt in a few steps: below the 8 bits/dim of a uniform pixel model
    assert 0 < result["bits_per_dim"] < 8


def test_cli_categorical_mlp_on_a_grey_npy_array(tmp_path, capsys):
    np.save(tmp_path / "x.npy", smooth_images(120, size=12, channels=1))
    out = str(tmp_path / "run")
    main(
        [
            "train",
            "--dataset",
            f"npy:{tmp_path / 'x.npy'}",
            "--binarize",
            "none",
            "--likelihood",
            "categorical",
            "--latent-dim",
            "4",
            "--hidden-dims",
            "32",
            "--epochs",
            "1",
            "--batch-size",
            "40",
            "--device",
            "cpu",
            "--out",
            out,
            "--quiet",
            "--no-pictures",
        ]
    )
    capsys.readouterr()
    main(["evaluate", out, "--nll-samples", "10", "--json", "--no-pictures"])
    result = json.loads(capsys.readouterr().out)
    assert result["images"] == 12 and math.isfinite(result["bits_per_dim"])
    assert result["bits_per_dim"] == pytest.approx(result["nll"] / (144 * math.log(2)))


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["--likelihood", "discretized-logistic", "--binarize", "dynamic"],
            "(--binarize dynamic); pass --binarize none",
        ),
        (
            ["--dataset", "folder:/nonexistent/images"],
            "image folder '/nonexistent/images' does not exist",
        ),
        (["--dataset", "cifar"], "unknown dataset 'cifar'"),
        (["--image-size", "0"], "--image-size must be a positive integer"),
    ],
)
def test_cli_data_errors_exit_2_with_one_line(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", *argv, "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and err.count("\n") == 1


@pytest.mark.parametrize("likelihood", ["discretized-logistic", "categorical"])
def test_8_bit_likelihoods_take_the_traced_fast_path(likelihood):
    """No tensor value is read in Python: the loss and gradients trace into one graph, which the
    trainer only uses after it matched the plain loss and gradients on two batches
    (pyro_vae.estimators.fast.trace_steps)."""
    x = torch.randint(0, 256, (64, 3, 4, 4)) / 255.0
    config = Config(
        likelihood=likelihood, binarize="none", mixtures=2, latent_dim=2, hidden_dims=[16]
    )
    vae = build_model(config, (3, 4, 4), num_data=64)
    trainer = Trainer(vae.model, vae.guide, "trace", modules=[vae], progress=False)
    trainer.fit(x, epochs=1, batch_size=32, test_x=x[:8])
    assert trainer.fast_note.startswith("fast path: loss and gradients traced"), trainer.fast_note


DEBIAN = "/usr/share/datasets/fashion-mnist"


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir(DEBIAN), reason="needs Debian's dataset-fashion-mnist")
def test_fashion_mnist_8_bit_vae_beats_the_per_pixel_histogram(tmp_path, monkeypatch):
    """Fashion-MNIST as 8-bit grey levels, 10k images, 2 epochs: the VAE's bits/dim
    (importance-sampled NLL) must beat the best model that ignores pixel dependencies, the per-pixel
    histogram of the training images (add-one smoothed, scored on the same test images), which costs
    about 4.6 bits/dim."""
    monkeypatch.setenv("PYRO_VAE_DATA", str(tmp_path / "data"))
    out = str(tmp_path / "run")
    main(
        [
            "train",
            "--likelihood",
            "discretized-logistic",
            "--mixtures",
            "5",
            "--limit",
            "10000",
            "--test-limit",
            "500",
            "--epochs",
            "2",
            "--latent-dim",
            "20",
            "--hidden-dims",
            "400",
            "--device",
            "cpu",
            "--out",
            out,
            "--quiet",
            "--no-pictures",
        ]
    )
    from pyro_vae.app.experiment import evaluate_run, load_run

    result = evaluate_run(out, nll_samples=100, pictures=False)
    _, _, data = load_run(out, device="cpu")
    k_train = (data.train * 255).round().long().flatten(1)  # [N, 784]
    k_test = (data.test * 255).round().long().flatten(1)
    counts = (
        torch.zeros(784, 256).scatter_add_(
            1, k_train.T, torch.ones_like(k_train.T, dtype=torch.float)
        )
        + 1
    )
    logp = (counts / counts.sum(1, keepdim=True)).log()
    histogram_bpd = -logp.gather(1, k_test.T).sum(0).mean().item() / (784 * math.log(2))
    assert 3 < histogram_bpd < 6
    assert result["bits_per_dim"] < histogram_bpd - 0.3, (result["bits_per_dim"], histogram_bpd)
