"""Nets, guide and likelihood of a model from a :class:`~pyro_vae.app.config.Config`: the pieces
every model builder shares, and the one-layer VAE's builder."""

import math

from pyro_vae.guides import make_guide
from pyro_vae.models.likelihoods import make_likelihood
from pyro_vae.models.nets import MLP, ConvDecoder, ConvEncoder
from pyro_vae.models.priors import PseudoInputs
from pyro_vae.models.spec import ModelSpec
from pyro_vae.models.vae import VAE

NETS = ("mlp", "conv")  # the encoder/decoder nets of make_encoder and make_decoder (Config.net)


def make_encoder(config, x_shape, out_dim=None):
    """The encoder net x → context of ``encoder.out_shape``: ``out_dim`` features, or by default
    the last hidden layer (MLP) or the flattened smallest feature maps (conv, as plain conv VAEs
    put their heads)."""
    if config.net == "conv":
        return ConvEncoder(
            out_dim,
            x_shape[0],
            config.conv_channels,
            config.activation,
            x_shape[1:],
            config.conv_blocks,
        )
    out_dim = out_dim or config.hidden_dims[-1]
    return MLP(x_shape, config.hidden_dims[:-1], out_dim, config.activation, final_activation=True)


def make_decoder(config, x_shape, in_dim):
    """The decoder net z → decoder output of the likelihood's ``params_shape(x_shape)`` (``x_shape``
    for most)."""
    out_shape = make_likelihood(
        config.likelihood, x_shape, config.sigma, config.mixtures
    ).params_shape(x_shape)
    if config.net == "conv":
        return ConvDecoder(
            in_dim,
            out_shape[0],
            config.conv_channels,
            config.activation,
            x_shape[1:],
            config.conv_blocks,
        )
    return MLP(in_dim, list(reversed(config.hidden_dims)), out_shape, config.activation)


def guide_options(config):
    """Options passed to :func:`~pyro_vae.make_guide` beyond name, encoder and sizes."""
    return {"hidden_dims": config.flow_hidden_dims} if config.flow_hidden_dims else {}


def build_vae(config, x_shape, num_data=None):
    """One Gaussian latent layer with the configured nets, guide and likelihood."""
    encoder = make_encoder(config, x_shape)
    guide = make_guide(
        config.guide,
        encoder,
        math.prod(encoder.out_shape),
        config.latent_dim,
        config.flows,
        **guide_options(config),
    )
    decoder = make_decoder(config, x_shape, config.latent_dim)
    likelihood = make_likelihood(config.likelihood, x_shape, config.sigma, config.mixtures)
    pseudo = PseudoInputs(config.pseudo_inputs, x_shape) if config.prior == "vampprior" else None
    return VAE(
        decoder, guide, likelihood, config.latent_dim, x_shape, num_data, pseudo_inputs=pseudo
    )


# every registered guide, flows included; the standard prior or a VampPrior
SPEC = ModelSpec(build=build_vae, default_guide="diagonal", priors=("standard", "vampprior"))
