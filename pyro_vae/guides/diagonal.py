"""Amortized diagonal Gaussian guide: q(z|x) = N(z; μ(h), diag σ(h)²), h = encoder(x)."""

import pyro
import pyro.distributions as dist
import torch.nn.functional as F
from torch import nn

from pyro_vae.core.plates import data_plate
from pyro_vae.core.checks import UserError, option


class AmortizedGuide(nn.Module):
    """Base class of amortized guides: ``guide(x)`` samples ``site`` inside the data plate.

    Subclasses implement :meth:`distribution`, mapping the context ``h = encoder(x)``
    of shape ``[B, context_dim]`` to a distribution with batch shape ``[B]`` and
    event shape ``[latent_dim]``.
    """

    def __init__(self, encoder, context_dim, latent_dim, site="z", plate="data", name="guide"):
        super().__init__()
        if latent_dim <= 0 or context_dim <= 0:
            raise UserError(
                f"{option('latent_dim')} and context_dim must be positive, got {latent_dim} and "
                f"{context_dim}"
            )
        self.encoder = encoder
        self.context_dim = context_dim
        self.latent_dim = latent_dim
        self.site = site
        self.plate = plate
        self.name = name

    def distribution(self, context):
        raise NotImplementedError

    def forward(self, x, num_data=None):
        pyro.module(self.name, self)
        with data_plate(x, num_data, self.plate):
            return pyro.sample(self.site, self.distribution(self.encoder(x)))


class DiagonalGuide(AmortizedGuide):
    """q(z|x) = N(μ(h), diag σ(h)²) with [μ, σ] = [W h + b, softplus(V h + c)]."""

    def __init__(self, encoder, context_dim, latent_dim, **kwargs):
        super().__init__(encoder, context_dim, latent_dim, **kwargs)
        self.head = nn.Linear(context_dim, 2 * latent_dim)

    def base(self, context):
        loc, raw_scale = self.head(context).chunk(2, dim=-1)
        return loc, F.softplus(raw_scale) + 1e-5

    def distribution(self, context):
        loc, scale = self.base(context)
        return dist.Normal(loc, scale).to_event(1)
