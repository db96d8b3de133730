"""Code maps: a picture of the code index at every position of a vector-quantized latent, one row
per level under the images it encodes, each index its own colour.

Index k is coloured by the hue h_k = frac(k φ) with φ = (√5 − 1)/2 (consecutive indices fall far
apart on the colour wheel), at full saturation and value, through the HSV → RGB map

.. math:: \\mathrm{rgb}(h) = \\mathrm{clamp}(|((6h + (0, 4, 2)) \\bmod 6) − 3| − 1,\\ 0,\\ 1).
"""

import math

import torch
import torch.nn.functional as F
from torchvision.utils import save_image

GOLDEN = (math.sqrt(5) - 1) / 2


def palette(num_codes, device=None):
    """``[K, 3]`` colours in [0, 1], one per code index (see the module docstring)."""
    hue = torch.frac(torch.arange(num_codes, device=device, dtype=torch.float64) * GOLDEN)
    offsets = torch.tensor([0.0, 4.0, 2.0], device=device, dtype=torch.float64)
    rgb = (torch.remainder(6 * hue[:, None] + offsets, 6) - 3).abs() - 1
    return rgb.clamp(0, 1).float()


def colour_codes(indices, num_codes, size):
    """Code indices ``[N, h, w]`` → RGB pictures ``[N, 3, H, W]``, each position a block of its
    code's colour (nearest upsampling to ``size`` = (H, W))."""
    rgb = palette(num_codes, indices.device)[indices].movedim(-1, 1)
    return F.interpolate(rgb, size=tuple(size), mode="nearest")


def save_code_maps(x, indices, num_codes, path, n=8):
    """Write the first ``n`` images ``x [N, C, H, W]`` in a row, with the code map of each level
    (``indices``: a list of ``[N, h, w]``, top first; ``num_codes`` per level) in a row under
    them."""
    x = x[:n].float().cpu()
    rows = [x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x[:, :3]]
    for idx, k in zip(indices, num_codes):
        rows.append(colour_codes(idx[:n].cpu(), k, x.shape[-2:]))
    save_image(torch.cat(rows), path, nrow=len(x), padding=2)
    return path


__all__ = ["colour_codes", "palette", "save_code_maps"]
