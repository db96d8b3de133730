"""The residual conv nets carry the signal at initialization, and --binarize follows the
likelihood."""

import pytest
import torch

from pyro_vae.app.config import Config
from pyro_vae.guides import make_guide
from pyro_vae.models.nets import ConvDecoder, ConvEncoder, MLP


@pytest.mark.parametrize("size,channels", [((28, 28), 1), ((32, 32), 3), ((64, 64), 3)])
def test_conv_nets_pass_the_signal_at_init(size, channels):
    # The old nets (PyTorch's default init, ConvTranspose2d with its fan-in taken from the output
    # channels) shrank the signal layer by layer: posterior means varied across images by ~0.01 and
    # the
    # decoder's output across z by ~0.01, so the decoder emitted each image's mean colour and the KL
    # collapsed. Both must vary at least as much as an MLP's (≈ 0.2 here).
    torch.manual_seed(0)
    x = torch.rand(32, channels, *size)
    encoder = ConvEncoder(64, channels, width=8, image_size=size, blocks=2)
    guide = make_guide("diagonal", encoder, 64, 16)
    loc = guide.base(encoder(x))[0]
    h = encoder(x)
    assert h.std(0).mean() > 0.1
    decoder = ConvDecoder(16, 3 * channels, width=8, image_size=size, blocks=2)
    out = decoder(torch.randn(32, 16))
    assert out.shape == (32, 3 * channels, *size)
    mlp_out = MLP(16, [64], (3 * channels, *size))(torch.randn(32, 16))
    assert out.std(0).mean() > 0.5 * mlp_out.std(0).mean()
    assert loc.std(0).mean() > 0.05  # the posterior means tell the images apart


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
