"""A learned prior over the codes of a trained VQ-VAE: gated PixelCNNs written as a Pyro model with
the codes observed.

.. math:: p(c) = \\prod_{i} p(c^{top}_i \\mid c^{top}_{<i}) \\prod_{j} p(c^{bottom}_j \\mid
          c^{bottom}_{<j}, c^{top}),

raster order at each level, each factor a categorical over the K codes whose logits come from a
gated PixelCNN [1] (a vertical stack that sees the rows above, a horizontal stack that sees the
pixels to the left in the row, gates tanh(a) ⊙ σ(b)); the bottom's PixelCNN reads the top codes,
embedded and upsampled, in every gate (VQ-VAE-2 [2]). :class:`CodePrior` is the Pyro pair:
``model(x)`` encodes the images with the frozen VQ-VAE and observes their codes at the sites
``"codes"`` (or ``"codes_top"`` and ``"codes_bottom"``) inside the ``"data"`` plate, and the guide
is empty, so the trainer's −ELBO is −log p(c) per image: maximum likelihood, with the trainer's
checkpoints, exact resume, metrics and TensorBoard.

References:

1. van den Oord, Kalchbrenner, Vinyals, Espeholt, Graves, Kavukcuoglu (2016), "Conditional Image
   Generation with PixelCNN Decoders", arXiv:1606.05328.
2. Razavi, van den Oord, Vinyals (2019), "Generating Diverse High-Fidelity Images with VQ-VAE-2",
   arXiv:1906.00446.
"""

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn

from pyro_vae.core.plates import data_plate


class MaskedConv(nn.Conv2d):
    """A conv whose kernel is multiplied by a fixed 0/1 ``mask`` of its shape (``[kh, kw]``)."""

    def __init__(self, c_in, c_out, kernel, padding, mask):
        super().__init__(c_in, c_out, kernel, padding=padding)
        self.register_buffer("mask", mask.to(self.weight.dtype))

    def forward(self, x):
        return F.conv2d(x, self.weight * self.mask, self.bias, padding=self.padding)


class GatedLayer(nn.Module):
    """One gated PixelCNN layer on a vertical and a horizontal stack ``[B, C, h, w]``.

    The vertical conv (k//2 + 1 rows × k, padded and cropped) puts at row i what the rows ≤ i hold,
    shifted down one row where ``first`` (so the first layer's row i sees the rows < i only); the
    horizontal conv (1 × k//2 + 1) does the same along the row. Both stacks stay causal: the
    horizontal gate at (i, j) reads the vertical stack at row i, which depends on the rows < i of
    the input.
    """

    def __init__(self, channels, kernel=3, first=False, cond_channels=0):
        super().__init__()
        half = kernel // 2
        v_mask, h_mask = torch.ones(half + 1, kernel), torch.ones(1, half + 1)
        if first:
            v_mask[-1], h_mask[:, -1] = 0, 0
        self.vertical = MaskedConv(channels, 2 * channels, (half + 1, kernel), (half, half), v_mask)
        self.horizontal = MaskedConv(channels, 2 * channels, (1, half + 1), (0, half), h_mask)
        self.v_to_h = nn.Conv2d(2 * channels, 2 * channels, 1)
        self.out = nn.Conv2d(channels, channels, 1)
        self.cond = nn.Conv2d(cond_channels, 2 * channels, 1) if cond_channels else None
        self.residual = not first

    @staticmethod
    def gate(a):
        t, s = a.chunk(2, dim=1)
        return torch.tanh(t) * torch.sigmoid(s)

    def forward(self, v, h, cond=None):
        rows, cols = v.shape[-2:]
        v_out = self.vertical(v)[..., :rows, :]
        h_out = self.horizontal(h)[..., :cols]
        extra = self.cond(cond) if self.cond is not None else 0
        h_new = self.out(self.gate(self.v_to_h(v_out) + h_out + extra))
        return self.gate(v_out + extra), h_new + h if self.residual else h_new


class GatedPixelCNN(nn.Module):
    """Logits ``[B, h, w, K]`` of p(c_i | c_<i [, context]) for code maps ``c [B, h, w]`` of K
    codes.

    :param context_codes: the codes K' of a context map (the top level's, upsampled to this
        level's size), read by every gate; 0: none.
    """

    def __init__(self, num_codes, size, channels=64, layers=6, kernel=3, context_codes=0):
        super().__init__()
        self.size = tuple(size)
        self.embed = nn.Embedding(num_codes, channels)
        self.context = nn.Embedding(context_codes, channels) if context_codes else None
        cond = channels if context_codes else 0
        self.layers = nn.ModuleList(
            GatedLayer(channels, kernel, first=i == 0, cond_channels=cond) for i in range(layers)
        )
        self.head = nn.Sequential(nn.ReLU(), nn.Conv2d(channels, num_codes, 1))

    def forward(self, codes, context=None):
        """Logits for ``codes [B, h', w]``: the first h' ≤ h rows of a map suffice for their own
        logits (causality), which is how :meth:`CodePrior.sample` saves work."""
        v = h = self.embed(codes).movedim(-1, 1)
        cond = None
        if self.context is not None:
            cond = self.context(context).movedim(-1, 1)
            cond = F.interpolate(cond, size=self.size, mode="nearest")[..., : codes.shape[-2], :]
        for layer in self.layers:
            v, h = layer(v, h, cond)
        return self.head(h).movedim(1, -1)


class CodePrior(nn.Module):
    """The Pyro pair of a learned prior over a :class:`~pyro_vae.models.vq_vae.VQVAE`'s codes (see
    the module docstring). The VQ-VAE is read, frozen in eval mode, and is not a submodule: only
    the PixelCNNs are trained and checkpointed.

    :param num_data: full training-set size for the data plate's scale (None: no scaling).
    """

    def __init__(self, vq_vae, channels=64, layers=6, num_data=None):
        super().__init__()
        quantizers, sizes = vq_vae.quantizers, vq_vae.nets.sizes
        self.pixelcnns = nn.ModuleList(
            GatedPixelCNN(
                q.num_codes,
                size,
                channels,
                layers,
                context_codes=quantizers[0].num_codes if level else 0,
            )
            for level, (q, size) in enumerate(zip(quantizers, sizes))
        )
        self.sites, self.num_data = list(vq_vae.sites), num_data
        object.__setattr__(self, "vq_vae", vq_vae)

    @property
    def x_shape(self):
        """The images' shape, as the VQ-VAE's (read by the data checks)."""
        return self.vq_vae.x_shape

    @property
    def likelihood(self):
        return self.vq_vae.likelihood

    @torch.no_grad()
    def codes(self, x):
        """The code indices ``[B, h, w]`` of images ``x`` per level, top first."""
        self.vq_vae.eval()
        return [idx for _, idx, _ in self.vq_vae.encode(x)]

    def logits(self, level, codes, rows=None):
        """Logits of level ``level`` given the code maps ``codes`` (top first); ``rows``: of its
        first rows only."""
        return self.pixelcnns[level](codes[level][:, :rows], codes[0] if level else None)

    def model(self, x):
        """p(c) of the codes of ``x``, observed level by level, top first."""
        pyro.module("code_prior", self.pixelcnns)
        codes = self.codes(x)
        with data_plate(x, self.num_data):
            for level, site in enumerate(self.sites):
                fn = dist.Categorical(logits=self.logits(level, codes)).to_event(2)
                pyro.sample(site, fn, obs=codes[level])

    def guide(self, x):
        """Nothing is latent: every code is observed."""

    @torch.no_grad()
    def sample(self, n, device=None):
        """``n`` code maps per level, top first, drawn position by position in raster order."""
        codes = []
        for level, net in enumerate(self.pixelcnns):
            c = torch.zeros(n, *net.size, dtype=torch.long, device=device)
            codes.append(c)
            for i in range(net.size[0]):
                for j in range(net.size[1]):
                    logits = self.logits(level, codes, rows=i + 1)[:, i, j]
                    c[:, i, j] = dist.Categorical(logits=logits).sample()
        return codes


__all__ = ["CodePrior", "GatedLayer", "GatedPixelCNN", "MaskedConv"]
