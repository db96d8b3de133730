"""Neural networks used by the built-in models and guides.

Every net accepts any number of leading batch dimensions, so the same decoder
serves one sample per data point (``z: [B, D]``) and vectorized particles
(``z: [K, B, D]``).
"""
import math

from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "elu": nn.ELU, "gelu": nn.GELU, "softplus": nn.Softplus}


def activation(name):
    """Return a fresh activation module by name (one of :data:`ACTIVATIONS`)."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


class MLP(nn.Sequential):
    """Fully connected net ``in_dim -> hidden_dims... -> out_dim``.

    Inputs of shape ``[..., *in_shape]`` are flattened over ``in_shape`` and
    outputs are reshaped to ``[..., *out_shape]``.
    """

    def __init__(self, in_shape, hidden_dims, out_shape, activation_name="relu", final_activation=False):
        self.in_shape = tuple(in_shape) if isinstance(in_shape, (tuple, list)) else (in_shape,)
        self.out_shape = tuple(out_shape) if isinstance(out_shape, (tuple, list)) else (out_shape,)
        dims = [math.prod(self.in_shape), *hidden_dims]
        layers = []
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b), activation(activation_name)]
        layers.append(nn.Linear(dims[-1], math.prod(self.out_shape)))
        if final_activation:
            layers.append(activation(activation_name))
        super().__init__(*layers)

    def forward(self, x):
        batch = x.shape[: x.dim() - len(self.in_shape)]
        y = super().forward(x.reshape(*batch, -1))
        return y.reshape(*batch, *self.out_shape)


def _flatten_batch(x, event_dims):
    batch = x.shape[: x.dim() - event_dims]
    return x.reshape(-1, *x.shape[x.dim() - event_dims :]), batch


class ConvEncoder(nn.Module):
    """Convolutional encoder for ``[..., C, 28, 28]`` images: two stride-2 convs (28→14→7), then a linear map to ``out_dim``."""

    def __init__(self, out_dim, channels=1, width=32, activation_name="relu"):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(channels, width, 4, 2, 1),
            activation(activation_name),
            nn.Conv2d(width, 2 * width, 4, 2, 1),
            activation(activation_name),
            nn.Flatten(),
            nn.Linear(2 * width * 7 * 7, out_dim),
            activation(activation_name),
        )

    def forward(self, x):
        flat, batch = _flatten_batch(x, 3)
        return self.net(flat).reshape(*batch, -1)


class ConvDecoder(nn.Module):
    """Convolutional decoder ``[..., in_dim] -> [..., C, 28, 28]``: linear to 7×7 maps, two stride-2 transposed convs."""

    def __init__(self, in_dim, channels=1, width=32, activation_name="relu"):
        super().__init__()
        self.width = width
        self.fc = nn.Sequential(nn.Linear(in_dim, 2 * width * 7 * 7), activation(activation_name))
        self.deconv = nn.Sequential(
            nn.ConvTranspose2d(2 * width, width, 4, 2, 1),
            activation(activation_name),
            nn.ConvTranspose2d(width, channels, 4, 2, 1),
        )

    def forward(self, z):
        flat, batch = _flatten_batch(z, 1)
        h = self.fc(flat).reshape(-1, 2 * self.width, 7, 7)
        out = self.deconv(h)
        return out.reshape(*batch, *out.shape[1:])
