"""Conditional VAE on class labels (Sohn, Lee, Yan 2015, "Learning Structured Output Representation
using Deep Conditional Generative Models").

.. math:: p(x | y) = \\int N(z; 0, I)\\, p(x | \\mathrm{decoder}(z, y))\\, dz, \\qquad q(z | x, y) =
N(\\mu(x, y), \\mathrm{diag}\\,\\sigma(x, y)^2)

``model(x, y)`` and ``guide(x, y)`` take the labels ``y`` (int64 ``[B]``) after the batch;
with ``y`` given, y is a conditioning input, not a sample site.  Without ``y`` (evaluation,
``pyro-vae evaluate``) the class is a latent site ``"y"`` with the uniform prior p(y) = 1/C,
proposed by the guide from the same uniform distribution, so the pair is the mixture
p(x) = Σ_y p(y) p(x | y) and every estimator and the evaluator apply unchanged.
``pyro-vae sample RUN --label K`` draws images of class K.

The label-conditioned nets here are shared with the semi-supervised M2 model
(:mod:`pyro_vae.models.m2`).
"""

import math

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn

from pyro_vae.core.plates import data_plate
from pyro_vae.models.nets import MLP
from pyro_vae.models.spec import ModelSpec
from pyro_vae.core.checks import UserError, option

NUM_CLASSES = 10  # MNIST and Fashion-MNIST


def with_label(h, y, num_classes):
    """Concatenate features ``h [..., H]`` with ``one_hot(y) [..., C]``, broadcasting their batch
    shapes."""
    onehot = (y.unsqueeze(-1) == torch.arange(num_classes, device=y.device)).to(
        h.dtype
    )  # no host read: traceable
    batch = torch.broadcast_shapes(h.shape[:-1], onehot.shape[:-1])
    return torch.cat([h.expand(*batch, h.shape[-1]), onehot.expand(*batch, num_classes)], -1)


class LabelEncoder(nn.Module):
    """(x, y) → (loc, scale) of q(z | x, y): an MLP over [flatten(x), one_hot(y)]."""

    def __init__(self, x_shape, hidden_dims, latent_dim, num_classes, activation_name="relu"):
        super().__init__()
        self.x_dim, self.num_classes = math.prod(x_shape), num_classes
        self.x_ndim = len(x_shape)
        self.net = MLP(self.x_dim + num_classes, hidden_dims, 2 * latent_dim, activation_name)

    def forward(self, x, y):
        h = x.reshape(*x.shape[: x.dim() - self.x_ndim], self.x_dim)
        loc, raw = self.net(with_label(h, y, self.num_classes)).chunk(2, -1)
        return loc, F.softplus(raw) + 1e-5


class LabelDecoder(nn.Module):
    """(z, y) → decoder output of shape ``x_shape``: an MLP over [z, one_hot(y)]."""

    def __init__(self, latent_dim, hidden_dims, x_shape, num_classes, activation_name="relu"):
        super().__init__()
        self.num_classes = num_classes
        self.net = MLP(latent_dim + num_classes, hidden_dims, x_shape, activation_name)

    def forward(self, z, y):
        return self.net(with_label(z, y, self.num_classes))


def check_labels(y, x, num_classes):
    """ValueError unless ``y`` is an integer tensor ``[len(x)]`` of classes in [0, num_classes) on
    x's device."""
    if (
        not torch.is_tensor(y)
        or y.dtype not in (torch.int64, torch.int32)
        or y.shape != x.shape[:1]
    ):
        raise UserError(
            f"labels y must be an integer tensor of shape [{len(x)}] (one class per image), got "
            f"{type(y).__name__} {getattr(y, 'dtype', '')} {tuple(getattr(y, 'shape', ()))}"
        )
    if y.device != x.device:
        raise UserError(
            f"labels y are on {y.device} but x is on {x.device}; move them to x's device"
        )


class CVAE(nn.Module):
    """Conditional VAE p(x | y) with a standard normal prior; see the module docstring."""

    def __init__(
        self,
        encoder,
        decoder,
        likelihood,
        latent_dim,
        x_shape,
        num_classes=NUM_CLASSES,
        num_data=None,
    ):
        super().__init__()
        self.encoder, self.decoder, self.likelihood = encoder, decoder, likelihood
        self.latent_dim, self.x_shape, self.num_classes, self.num_data = (
            latent_dim,
            tuple(x_shape),
            num_classes,
            num_data,
        )

    def _label_prior(self, x):
        return dist.Categorical(logits=x.new_zeros(self.num_classes))

    def model(self, x, y=None):
        """p(z) p(x | z, y); with ``y=None``, also p(y) = 1/C."""
        pyro.module("cvae", self)
        if y is not None:
            check_labels(y, x, self.num_classes)
        with data_plate(x, self.num_data):
            if y is None:
                y = pyro.sample("y", self._label_prior(x))
            z = pyro.sample("z", dist.Normal(x.new_zeros(self.latent_dim), 1.0).to_event(1))
            out = self.decoder(z, y)
            pyro.sample("x", self.likelihood(out, x).to_event(len(self.x_shape)), obs=x)
        return out

    def guide(self, x, y=None):
        """q(z | x, y); with ``y=None``, y is proposed from p(y) = 1/C."""
        pyro.module("cvae", self)
        with data_plate(x, self.num_data):
            if y is None:
                y = pyro.sample("y", self._label_prior(x))
            loc, scale = self.encoder(x, y)
            return pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    def batch_kwargs(self, data):
        """Training labels per batch: ``index -> {"y": labels[index]}``."""
        labels = data.train_labels.to(data.train.device)
        if len(labels) and not 0 <= int(labels.min()) <= int(labels.max()) < self.num_classes:
            raise UserError(
                f"training labels must lie in [0, {self.num_classes}), got {int(labels.min())}.."
                f"{int(labels.max())}"
            )
        return lambda idx: {"y": labels[idx]}


def build_cvae(config, x_shape, num_data=None):
    """The CVAE with MLP nets of ``config.hidden_dims`` (``net='mlp'`` only)."""
    from pyro_vae.models.likelihoods import make_likelihood

    if config.net != "mlp":
        raise UserError(f"the cvae model uses MLP nets; pass {option('net', repr('mlp'))}")
    encoder = LabelEncoder(
        x_shape, config.hidden_dims, config.latent_dim, NUM_CLASSES, config.activation
    )
    likelihood = make_likelihood(config.likelihood, x_shape, config.sigma, config.mixtures)
    decoder = LabelDecoder(
        config.latent_dim,
        list(reversed(config.hidden_dims)),
        likelihood.params_shape(x_shape),
        NUM_CLASSES,
        config.activation,
    )
    return CVAE(encoder, decoder, likelihood, config.latent_dim, x_shape, NUM_CLASSES, num_data)


# its own guide q(z | x, y) and MLP nets
SPEC = ModelSpec(build=build_cvae, guides=("diagonal",), nets=("mlp",))
