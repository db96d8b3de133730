"""Generative models, each a container of a Pyro ``model(x)`` and its ``guide(x)``.

Latent site names: ``"z"`` (the Gaussian latent, event shape ``[latent_dim]``)
and ``"x"`` (the observed images, event shape ``x_shape``), both inside the
``"data"`` plate at dim -1.
"""

import pyro
import pyro.distributions as dist
from torch import nn

from pyro_vae.core.plates import data_plate
from pyro_vae.models.priors import VampPrior, check_vampprior_guide
from pyro_vae.core.checks import UserError, option


class VAE(nn.Module):
    """Variational autoencoder with a standard normal prior, or a VampPrior.

    .. math:: p(x, z) = p(z)\\,p(x | \\mathrm{decoder}(z)), \\qquad q(z|x) = \\mathrm{guide}(x),
              \\qquad p(z) = N(0, I) \\ \\text{or} \\ \\tfrac{1}{K}\\textstyle\\sum_k q(z | u_k)

    :param decoder: module ``[..., latent_dim] -> [..., *x_shape]`` (logits or means).
    :param guide: amortized guide module called as ``guide(x, num_data=...)`` (see
        :mod:`pyro_vae.guides`).
    :param likelihood: module ``(out, x) -> distribution`` (see :mod:`pyro_vae.models.likelihoods`).
    :param num_data: size of the full training set; the data plate scales each batch by
        ``num_data / len(x)`` so the loss estimates the full-data ELBO. ``None``: no scaling.
    :param pseudo_inputs: a :class:`~pyro_vae.models.priors.PseudoInputs` for the VampPrior (the
        guide must be diagonal), or ``None`` for N(0, I).
    """

    def __init__(
        self, decoder, guide, likelihood, latent_dim, x_shape, num_data=None, pseudo_inputs=None
    ):
        super().__init__()
        if latent_dim <= 0:
            raise UserError(f"{option('latent_dim')} must be positive, got {latent_dim}")
        self.decoder = decoder
        self.guide_module = guide
        self.likelihood = likelihood
        self.latent_dim = latent_dim
        self.x_shape = tuple(x_shape)
        self.num_data = num_data
        if pseudo_inputs is not None:
            check_vampprior_guide(guide)
        self.pseudo_inputs = pseudo_inputs

    @property
    def jit_compatible(self):
        """Whether the pair can be traced once and replayed: as its guide says (buffers such as
        σ-VAE's running σ* are inputs of the trace, see :mod:`pyro_vae.estimators.fast`)."""
        return getattr(self.guide_module, "jit_compatible", True) is not False

    def model(self, x):
        """p(z) p(x|z) for a batch ``x`` of shape ``[B, *x_shape]``; priors follow x's device and
        dtype."""
        pyro.module("decoder", self.decoder)
        if any(p.requires_grad for p in self.likelihood.parameters()):
            pyro.module("likelihood", self.likelihood)
        prior = self.prior(x)
        with data_plate(x, self.num_data):
            z = pyro.sample("z", prior)
            out = self.decoder(z)
            pyro.sample("x", self.likelihood(out, x).to_event(len(self.x_shape)), obs=x)
        return out

    def prior(self, x):
        """p(z) on x's device and dtype: N(0, I), or the VampPrior (1/K) Σ_k q(z | u_k) at the
        pseudo-inputs."""
        if self.pseudo_inputs is None:
            return dist.Normal(x.new_zeros(self.latent_dim), x.new_ones(self.latent_dim)).to_event(
                1
            )
        guide = self.guide_module
        pyro.module("pseudo_inputs", self.pseudo_inputs)
        pyro.module(
            guide.name, guide
        )  # the model reads the guide's encoder: the same parameters, registered once
        return VampPrior(guide.distribution(guide.encoder(self.pseudo_inputs().to(x))))

    def guide(self, x):
        """q(z|x), sampled inside the same data plate as the model."""
        return self.guide_module(x, num_data=self.num_data)
