"""Deep hierarchical VAE in the NVAE / VDVAE style: many groups of feature-map latents on a shared
top-down path.

.. math::

    p(x, z_1, …, z_L) = p(z_1 | h_0) \\prod_{l=2}^{L} p(z_l | h_{l-1})\\, p(x | h_L), \\qquad
    h_l = \\mathrm{block}_l(h_{l-1} + W_l z_l),

with h_0 a learned constant and every p(z_l | h_{l-1}) = N(μ_l, diag σ_l²) read from h_{l-1} by a
conv head; the latents z_l are feature maps [C_z, h, w] at several spatial scales (top first, each
scale twice the resolution of the one above; upsampling between scales). The guide shares the
top-down path (the same module, registered once as ``"top_down"``), runs it on its own samples, and
combines its state with a deterministic bottom-up pass d_s = f_s(x) at the group's scale, as a
residual relative to the prior (NVAE's eq. 2):

.. math:: q(z_l | z_{<l}, x) = N(μ_l + Δμ_l,\\ σ_l \\exp(Δρ_l)), \\quad [Δμ_l, Δρ_l] = g_l([h_{l-1},
d_{s(l)}]),

so KL(q ‖ p) of a group given the groups above is ½ Σ (Δμ²/σ² + e^{2Δρ} − 1 − 2Δρ), zero when g_l
is. Sites ``"z_1"`` (top) … ``"z_L"`` (next to x), each ``Normal(loc, scale).to_event(3)`` of shape
[C_z, h, w], then ``"x"``, all inside the ``"data"`` plate; guide and model sample the groups in the
same order, so ``meanfield`` takes each group's KL in closed form given the sampled groups above.

The orchestration (:class:`DeepHierarchicalVAE`) only asks the top-down path for ``initial``,
``prior``, ``update`` and ``output``, and the guide for ``features`` and ``delta``; the conv
implementations are :class:`TopDown` and :class:`ResidualGuide`.

References:

1. Vahdat, Kautz (2020), "NVAE: A Deep Hierarchical Variational Autoencoder", arXiv:2007.03898.
2. Child (2021), "Very Deep VAEs Generalize Autoregressive Models and Can Outperform Them on
   Images", arXiv:2011.10650.
"""

import math

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pyro_vae.core.checks import UserError
from pyro_vae.models.spec import ModelSpec

from pyro_vae.core.plates import data_plate
from pyro_vae.models.nets import ResBlock, activation, apply_conv, scale_init


def soft_clamp(x, bound=5.0):
    """bound · tanh(x / bound): ≈ x near 0, never beyond ±bound (keeps log-scales finite, as
    NVAE)."""
    return bound * torch.tanh(x / bound)


def scale_sizes(image_size, scales):
    """Spatial sizes of the latent scales, top first: H/2^S, …, H/2 (one ValueError line when H, W
    do not divide)."""
    h, w = (int(s) for s in image_size)
    k = 2**scales
    if h % k or w % k:
        raise UserError(
            f"--model deep-hierarchical halves {h}×{w} images {scales} times (--scales {scales}), "
            f"so H and W must be divisible by 2^{scales} = {k}; pass fewer --scales or an "
            f"--image-size that is a multiple of {k}"
        )
    return [(h // 2**s, w // 2**s) for s in range(scales, 0, -1)]


class TopDown(nn.Module):
    """The top-down path shared by model and guide: a learned constant h_0, per group a prior head,
    a latent projection and a residual block, upsampling between scales, and an output net to the
    likelihood's parameters.

    The last state (at H/2) becomes the likelihood's parameters at H through one transposed conv.

    :param out_channels: channels of the decoder output (the likelihood's
        ``params_shape(x_shape)[0]``).
    :param image_size: ``(H, W)`` of the images.
    """

    def __init__(
        self,
        out_channels,
        image_size,
        scales=2,
        groups_per_scale=2,
        channels=32,
        latent_channels=4,
        activation_name="relu",
    ):
        super().__init__()
        self.sizes = scale_sizes(image_size, scales)
        self.groups_per_scale = groups_per_scale
        self.num_groups = scales * groups_per_scale
        self.latent_shapes = [
            (latent_channels, *self.sizes[l // groups_per_scale]) for l in range(self.num_groups)
        ]
        depth = 1 / math.sqrt(self.num_groups)
        self.h0 = nn.Parameter(0.1 * torch.randn(channels, *self.sizes[0]))
        self.prior_heads = nn.ModuleList(
            scale_init(nn.Conv2d(channels, 2 * latent_channels, 3, padding=1), 0.1)
            for _ in range(self.num_groups)
        )
        self.projections = nn.ModuleList(
            nn.Conv2d(latent_channels, channels, 1) for _ in range(self.num_groups)
        )
        self.blocks = nn.ModuleList(
            ResBlock(channels, activation_name, depth) for _ in range(self.num_groups)
        )
        self.ups = nn.ModuleList(
            nn.Sequential(
                nn.Upsample(scale_factor=2, mode="nearest"),
                nn.Conv2d(channels, channels, 3, padding=1),
            )
            for _ in range(scales - 1)
        )
        self.out = nn.Sequential(
            activation(activation_name),
            nn.Upsample(scale_factor=2, mode="nearest"),  # no transposed-conv checkerboards
            nn.Conv2d(channels, out_channels, 3, padding=1),
        )

    def initial(self, x):
        """h_0 for the batch of ``x``: ``[B, channels, *top size]`` on x's device and dtype."""
        return self.h0.to(x.dtype).expand(x.shape[0], *self.h0.shape)

    def prior(self, l, h):
        """``(loc, scale)`` of p(z_l | h), each ``[..., C_z, h, w]`` (0-based group ``l``)."""
        loc, rho = apply_conv(self.prior_heads[l], h).chunk(2, dim=-3)
        return loc, soft_clamp(rho).exp()

    def update(self, l, h, z):
        """h_l = block_l(h_{l-1} + W_l z_l), upsampled ×2 after the last group of a scale (but the
        lowest)."""
        h = self.blocks[l](h + apply_conv(self.projections[l], z))
        if (l + 1) % self.groups_per_scale == 0 and l + 1 < self.num_groups:
            h = apply_conv(self.ups[l // self.groups_per_scale], h)
        return h

    def output(self, h):
        """The likelihood's parameters ``[..., out_channels, H, W]`` from the last state."""
        return apply_conv(self.out, h)


class ResidualGuide(nn.Module):
    """The guide's own nets: a deterministic bottom-up residual conv pass x → d_s at every scale,
    and per group a head g_l([h, d_s]) → (Δμ, Δρ) (the residual of q relative to p, see the module
    docstring)."""

    def __init__(
        self,
        in_channels,
        image_size,
        scales=2,
        groups_per_scale=2,
        channels=32,
        latent_channels=4,
        activation_name="relu",
        name="guide",
    ):
        super().__init__()
        scale_sizes(image_size, scales)
        self.groups_per_scale = groups_per_scale
        self.stem = nn.Conv2d(in_channels, channels, 3, padding=1)
        self.down = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(channels, channels, 3, stride=2, padding=1),
                ResBlock(channels, activation_name),
            )
            for _ in range(scales)
        )
        self.heads = nn.ModuleList(
            scale_init(nn.Conv2d(2 * channels, 2 * latent_channels, 3, padding=1), 0.1)
            for _ in range(scales * groups_per_scale)
        )
        self.name = name

    def features(self, x):
        """The bottom-up feature maps, top (smallest) scale first: ``[d_S, …, d_1]``, each ``[B,
        channels, h, w]``."""
        d, out = apply_conv(self.stem, x), []
        for down in self.down:
            d = apply_conv(down, d)
            out.append(d)
        return out[::-1]

    def delta(self, l, h, features):
        """``(Δμ, Δρ)`` of group ``l`` from the top-down state h and the bottom-up features at its
        scale."""
        d = features[l // self.groups_per_scale]
        d = d.expand(*h.shape[:-3], *d.shape[-3:])
        return apply_conv(self.heads[l], torch.cat([h, d], dim=-3)).chunk(2, dim=-3)


class DeepHierarchicalVAE(nn.Module):
    """A container of ``model(x)`` and ``guide(x)`` over groups z_1 (top) … z_L (see the module
    docstring).

    :param top_down: shared path with ``initial(x)``, ``prior(l, h)``, ``update(l, h, z)``,
        ``output(h)`` and ``num_groups`` (a :class:`TopDown`).
    :param guide: the guide's nets with ``features(x)`` and ``delta(l, h, features)`` (a
        :class:`ResidualGuide`).
    :param likelihood: module ``(out, x) -> distribution`` (see :mod:`pyro_vae.models.likelihoods`).
    :param num_data: full training-set size for the data plate's scale (None: no scaling).
    """

    jit_compatible = True  # no data-dependent control flow or state: the trainer may trace its loss

    def __init__(self, top_down, guide, likelihood, x_shape, num_data=None):
        super().__init__()
        self.top_down = top_down
        self.guide_module = guide
        self.likelihood = likelihood
        self.x_shape = tuple(x_shape)
        self.num_data = num_data

    @property
    def sites(self):
        """Latent site names in sampling order, top group first: ``["z_1", …, "z_L"]``."""
        return [f"z_{l + 1}" for l in range(self.top_down.num_groups)]

    def sample_group(self, l, loc, scale):
        """Sample site ``z_{l+1}`` from N(loc, diag scale²) over its [C_z, h, w] event (model and
        guide alike)."""
        return pyro.sample(self.sites[l], dist.Normal(loc, scale).to_event(3))

    def model(self, x):
        """p(z_1) ⋯ p(z_L | z_<L) p(x | z) for ``x`` of shape ``[B, *x_shape]``; returns the decoder
        output."""
        pyro.module("top_down", self.top_down)
        if any(p.requires_grad for p in self.likelihood.parameters()):
            pyro.module("likelihood", self.likelihood)
        with data_plate(x, self.num_data):
            h = self.top_down.initial(x)
            for l in range(self.top_down.num_groups):
                z = self.sample_group(l, *self.top_down.prior(l, h))
                h = self.top_down.update(l, h, z)
            out = self.top_down.output(h)
            pyro.sample("x", self.likelihood(out, x).to_event(len(self.x_shape)), obs=x)
        return out

    def guide(self, x):
        """q(z_1 | x) ⋯ q(z_L | z_<L, x), top group first; returns ``[z_1, …, z_L]``."""
        pyro.module("top_down", self.top_down)
        pyro.module(getattr(self.guide_module, "name", "guide"), self.guide_module)
        features = self.guide_module.features(x)
        zs = []
        with data_plate(x, self.num_data):
            h = self.top_down.initial(x)
            for l in range(self.top_down.num_groups):
                loc, scale = self.top_down.prior(l, h)
                dloc, drho = self.guide_module.delta(l, h, features)
                z = self.sample_group(l, loc + dloc, scale * soft_clamp(drho).exp())
                zs.append(z)
                h = self.top_down.update(l, h, z)
        return zs


def build_deep_hierarchical(config, x_shape, num_data=None):
    """Build a :class:`DeepHierarchicalVAE` from a config: ``scales``, ``groups_per_scale``,
    ``hidden_channels``, ``latent_channels``, ``activation`` and the likelihood."""
    from pyro_vae.models.likelihoods import make_likelihood

    _check_config(config)
    if len(x_shape) != 3:
        raise UserError(
            "--model deep-hierarchical needs images [C, H, W], got data points of shape "
            f"{tuple(x_shape)}"
        )
    likelihood = make_likelihood(config.likelihood, x_shape, config.sigma, config.mixtures)
    sizes = dict(
        scales=config.scales,
        groups_per_scale=config.groups_per_scale,
        channels=config.hidden_channels,
        latent_channels=config.latent_channels,
        activation_name=config.activation,
    )
    top_down = TopDown(likelihood.params_shape(x_shape)[0], x_shape[1:], **sizes)
    guide = ResidualGuide(x_shape[0], x_shape[1:], **sizes)
    return DeepHierarchicalVAE(top_down, guide, likelihood, x_shape, num_data)


def _check_config(config):
    if config.flows or config.flow_hidden_dims:
        raise UserError(
            "--model deep-hierarchical has its own residual guide, without flows; drop --flows and "
            "--flow-hidden-dims"
        )
    if config.image_size is not None:
        scale_sizes((config.image_size, config.image_size), config.scales)


SPEC = ModelSpec(
    build=build_deep_hierarchical,
    guides=("residual",),
    nets=("conv",),
    check=_check_config,
    latent_groups=lambda config: config.scales * config.groups_per_scale,
)

__all__ = [
    "DeepHierarchicalVAE",
    "ResidualGuide",
    "TopDown",
    "build_deep_hierarchical",
    "scale_sizes",
    "soft_clamp",
]
