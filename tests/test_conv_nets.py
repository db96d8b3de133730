"""The residual conv nets are the plain PyTorch reference's, and --binarize
follows the likelihood."""

import pytest
from examples_loader import load_example
import torch

from pyro_vae.app.config import Config
from pyro_vae.models.nets import ConvDecoder


def test_the_conv_vae_has_the_layers_of_the_plain_pytorch_reference():
    # Issue #33: our conv VAE lagged a plain PyTorch residual conv VAE on colour photos until its
    # nets became the reference's (heads on the flattened maps, no activation on the residual
    # stream, a block at the smallest scale, PyTorch's default init). Every parameter of the
    # library's VAE built from the CLI's config must have the reference's shape, in order.
    from pyro_vae.models import build_model

    reference = load_example("colour_photos", "benchmarks").ReferenceVAE(
        latent=32, shape=(3, 32, 32), mixtures=10
    )
    config = Config(net="conv", likelihood="discretized-logistic", latent_dim=32)
    ours = build_model(config, (3, 32, 32))
    shapes = lambda m: sorted(tuple(p.shape) for p in m.parameters())  # noqa: E731
    assert shapes(ours) == shapes(reference)


def test_conv_nets_have_no_transposed_convs():
    decoder = ConvDecoder(4, 3, width=4, image_size=(32, 32))
    assert not any(isinstance(m, torch.nn.ConvTranspose2d) for m in decoder.modules())


@pytest.mark.parametrize(
    "likelihood,binarize",
    [("bernoulli", "dynamic"), ("discretized-logistic", "none"), ("sigma-vae-optimal", "none")],
)
def test_binarize_defaults_to_what_the_likelihood_needs(likelihood, binarize):
    assert Config(likelihood=likelihood).binarize == binarize
    assert Config.from_dict(Config(likelihood=likelihood).to_dict()).binarize == binarize


def test_an_explicit_contradiction_is_refused_in_one_line():
    from pyro_vae.app.config import check_config

    with pytest.raises(ValueError, match="binarize='none'"):
        check_config(Config(likelihood="discretized-logistic", binarize="dynamic"))


def test_recon_mse_is_the_squared_error_of_the_likelihoods_mean():
    import pyro
    import pyro.distributions as dist

    from pyro_vae.evaluation.metrics import recon_mse

    x = torch.rand(6, 1, 2, 2)

    def model(x):
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            loc = 0.5 + 0 * z[:, None, None, None]
            pyro.sample("x", dist.Normal(loc, 0.1).to_event(3), obs=x)

    def guide(x):
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Normal(0.0, 1.0))

    expected = (x - 0.5).pow(2).mean().item()
    assert recon_mse(model, guide, x, batch_size=4) == pytest.approx(expected, rel=1e-6)
