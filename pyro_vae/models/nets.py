"""Neural networks used by the built-in models and guides: MLPs, and conv nets for images of any C ×
H × W.

Every net accepts any number of leading batch dimensions, so the same decoder
serves one sample per data point (``z: [B, D]``) and vectorized particles
(``z: [K, B, D]``).

References:
    1. J. M. Tomczak, M. Welling, "VAE with a VampPrior", AISTATS 2018 (its code's ``GatedDense``
       layers).
    2. Y. N. Dauphin, A. Fan, M. Auli, D. Grangier, "Language Modeling with Gated Convolutional
       Networks", ICML 2017, arXiv:1612.08083.
"""

import math

import torch
from torch import nn
from pyro_vae.core.checks import UserError, option

ACTIVATIONS = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "softplus": nn.Softplus,
}
# MLP layers only: h = (W x + b) ⊙ σ(V x + c), the gated dense layer of the VampPrior code [1]
GATED = "gated"


def activation(name):
    """Return a fresh pointwise activation module by name (one of :data:`ACTIVATIONS`)."""
    if name == GATED:
        raise UserError(
            f"the gated activation is for MLPs ({option('net', repr('mlp'))}); conv nets take a "
            f"pointwise activation: one of {sorted(ACTIVATIONS)}"
        )
    if name not in ACTIVATIONS:
        raise UserError(
            f"unknown activation {name!r}; choose one of {sorted([*ACTIVATIONS, GATED])}"
        )
    return ACTIVATIONS[name]()


def dense(in_dim, out_dim, activation_name):
    """A fully connected layer with its activation: ``[Linear, activation]``, or for ``"gated"``
    ``[Linear(in, 2·out), GLU]``, i.e. h = (W x + b) ⊙ σ(V x + c) (Dauphin et al. 2017 [2])."""
    if activation_name == GATED:
        return [nn.Linear(in_dim, 2 * out_dim), nn.GLU(dim=-1)]
    return [nn.Linear(in_dim, out_dim), activation(activation_name)]


class MLP(nn.Sequential):
    """Fully connected net ``in_dim -> hidden_dims... -> out_dim``.

    Inputs of shape ``[..., *in_shape]`` are flattened over ``in_shape`` and
    outputs are reshaped to ``[..., *out_shape]``.
    """

    def __init__(
        self, in_shape, hidden_dims, out_shape, activation_name="relu", final_activation=False
    ):
        self.in_shape = tuple(in_shape) if isinstance(in_shape, (tuple, list)) else (in_shape,)
        self.out_shape = tuple(out_shape) if isinstance(out_shape, (tuple, list)) else (out_shape,)
        dims = [math.prod(self.in_shape), *hidden_dims]
        layers = []
        for a, b in zip(dims[:-1], dims[1:]):
            layers += dense(a, b, activation_name)
        out_dim = math.prod(self.out_shape)
        layers += (
            dense(dims[-1], out_dim, activation_name)
            if final_activation
            else [nn.Linear(dims[-1], out_dim)]
        )
        super().__init__(*layers)

    def forward(self, x):
        batch = x.shape[: x.dim() - len(self.in_shape)]
        y = super().forward(x.reshape(*batch, -1))
        return y.reshape(*batch, *self.out_shape)


def apply_conv(net, x):
    """``net`` over the last three dims of ``x`` (``[..., C, H, W]``), any leading (particle, batch)
    dims."""
    batch = x.shape[:-3]
    y = net(x.reshape(-1, *x.shape[-3:]))
    return y.reshape(*batch, *y.shape[1:])


def conv_sizes(image_size, min_size=8):
    """Feature-map sizes ``[(H, W), (H₁, W₁), …]`` of stride-2 convs (k = 4, p = 1: H → ⌊H/2⌋),
    halving while the larger side exceeds ``min_size`` (at least once): 28 → 14 → 7, 32 → 16 → 8, 64
    → 32 → 16 → 8."""
    sizes = [tuple(int(s) for s in image_size)]
    if len(sizes[0]) != 2 or min(sizes[0]) < 2:
        raise UserError(f"conv nets need images of at least 2×2 pixels, got size {sizes[0]}")
    while len(sizes) == 1 or (max(sizes[-1]) > min_size and min(sizes[-1]) >= 4):
        sizes.append(tuple(s // 2 for s in sizes[-1]))
    return sizes


def _widths(width, scales):
    return [width * 2 ** min(i, 2) for i in range(scales)]  # 32, 64, 128, 128, …


def he_init(module, gain=2.0):
    """Kaiming-normal weights (Var w = gain / fan_in) and zero biases on every conv and linear
    layer (the VQ-VAE's nets; the conv VAE's nets keep PyTorch's default init, see
    :class:`ConvEncoder`)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            fan_in = m.weight[0].numel()
            nn.init.normal_(m.weight, 0.0, math.sqrt(gain / fan_in))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return module


def scale_init(layer, factor):
    """``layer`` with its initial weight and bias multiplied by ``factor``."""
    with torch.no_grad():
        layer.weight.mul_(factor)
        if layer.bias is not None:
            layer.bias.mul_(factor)
    return layer


class ResBlock(nn.Module):
    """Pre-activation residual block ``h + conv(act(conv(act(h))))`` over ``[..., C, H, W]`` (He et
    al. 2016, "Identity Mappings in Deep Residual Networks", arXiv:1603.05027); the branch's last
    conv starts scaled by ``out_scale`` (VDVAE: 1/√depth; 0: the identity at initialization)."""

    def __init__(self, channels, activation_name="relu", out_scale=1.0):
        super().__init__()
        self.branch = nn.Sequential(
            activation(activation_name),
            nn.Conv2d(channels, channels, 3, padding=1),
            activation(activation_name),
            scale_init(nn.Conv2d(channels, channels, 3, padding=1), out_scale),
        )

    def forward(self, h):
        return h + apply_conv(self.branch, h)


class Upsample(nn.Module):
    """Nearest-neighbour upsampling to ``size`` then a 3×3 conv: no transposed-conv checkerboards
    (Odena et al. 2016, "Deconvolution and Checkerboard Artifacts")."""

    def __init__(self, c_in, c_out, size):
        super().__init__()
        self.size = tuple(size)
        self.conv = nn.Conv2d(c_in, c_out, 3, padding=1)

    def forward(self, h):
        return self.conv(nn.functional.interpolate(h, size=self.size, mode="nearest"))


class ConvEncoder(nn.Module):
    """Residual conv encoder for ``[..., C, H, W]`` images in [0, 1]: centred to [−1, 1], a 3×3
    stem, then per scale ``blocks`` :class:`ResBlock` and a stride-2 conv (see :func:`conv_sizes`;
    32→16→8; channel widths ``width``, 2·``width``, 4·``width``), ``blocks`` blocks at the smallest
    scale, an activation and the flattened maps (``out_shape``); with ``out_dim``, a linear map and
    an activation to ``out_dim`` features after them.

    The residual stream carries no activation between blocks and the layers keep PyTorch's default
    init, as the plain PyTorch reference of ``benchmarks/colour_photos.py``: with He init,
    zero-initialized branches, a ReLU bottleneck and activations between the scales, the decoder
    emitted each colour patch's mean colour (issue #33)."""

    def __init__(
        self,
        out_dim=None,
        channels=1,
        width=32,
        activation_name="relu",
        image_size=(28, 28),
        blocks=1,
    ):
        super().__init__()
        sizes = conv_sizes(image_size)
        widths = _widths(width, len(sizes))
        layers = [nn.Conv2d(channels, widths[0], 3, padding=1)]
        for c_in, c_out in zip(widths[:-1], widths[1:]):
            layers += [ResBlock(c_in, activation_name) for _ in range(blocks)]
            layers.append(nn.Conv2d(c_in, c_out, 4, 2, 1))
        layers += [ResBlock(widths[-1], activation_name) for _ in range(blocks)]
        layers += [activation(activation_name), nn.Flatten()]
        self.out_shape = (widths[-1] * math.prod(sizes[-1]),)
        if out_dim is not None:
            layers += [nn.Linear(self.out_shape[0], out_dim), activation(activation_name)]
            self.out_shape = (out_dim,)
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return apply_conv(self.net, 2 * x - 1)


class ConvDecoder(nn.Module):
    """Residual conv decoder ``[..., in_dim] -> [..., C, H, W]``, the mirror of
    :class:`ConvEncoder`: a linear map to its smallest maps, then per scale ``blocks``
    :class:`ResBlock` and an :class:`Upsample` (nearest neighbour + conv) back through
    :func:`conv_sizes`, ``blocks`` blocks at full size, an activation and a 3×3 conv to the
    likelihood's ``C`` channels."""

    def __init__(
        self, in_dim, channels=1, width=32, activation_name="relu", image_size=(28, 28), blocks=1
    ):
        super().__init__()
        sizes = conv_sizes(image_size)
        widths = _widths(width, len(sizes))
        self.start = (widths[-1], *sizes[-1])
        self.fc = nn.Linear(in_dim, math.prod(self.start))
        layers = []
        for i in range(len(sizes) - 1, 0, -1):
            layers += [ResBlock(widths[i], activation_name) for _ in range(blocks)]
            layers.append(Upsample(widths[i], widths[i - 1], sizes[i - 1]))
        layers += [ResBlock(widths[0], activation_name) for _ in range(blocks)]
        layers += [activation(activation_name), nn.Conv2d(widths[0], channels, 3, padding=1)]
        self.deconv = nn.Sequential(*layers)

    def forward(self, z):
        batch = z.shape[:-1]
        out = self.deconv(self.fc(z.reshape(-1, z.shape[-1])).reshape(-1, *self.start))
        return out.reshape(*batch, *out.shape[1:])
