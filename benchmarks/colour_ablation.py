"""Plain-loop ablation of our conv nets against the plain-PyTorch reference on colour patches
(issue #33): the same loop, data, likelihood and seed for every variant; prints the test ELBO in
bits/dim after each epoch.

    python benchmarks/colour_ablation.py N_TRAIN N_TEST EPOCHS VARIANT[,VARIANT...]

VARIANT: ``ref`` (``colour_photos.ReferenceVAE``), ``refhe`` (the reference with our He init and
zero-initialized residual branches), or ``base`` / flags joined by ``+`` for our
``ConvEncoder``/``ConvDecoder`` with a diagonal head: ``nozero`` (branches not zero-initialized),
``torchinit`` (torch's default init), ``wide`` (widths 64/128), ``direct`` (no 400-unit bottleneck),
``nofcrelu`` (no ReLU after the decoder's first map). Readings: the #33 closing note of 2026-12-05.
"""

import functools
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch
from torch import nn
import colour_photos as cp  # noqa: E402
from pyro_vae.models import nets  # noqa: E402
from pyro_vae.models.likelihoods import DiscretizedLogistic  # noqa: E402


class Ours(nn.Module):
    def __init__(self, flags, hidden=400, latent=32):
        super().__init__()
        width = 64 if "wide" in flags else 32
        direct = "direct" in flags
        self.enc = nets.ConvEncoder(2 * latent if direct else hidden, 3, width, "relu", (32, 32), 1)
        if direct:
            self.enc.net[-1] = nn.Identity()
        self.head = nn.Identity() if direct else nn.Linear(hidden, 2 * latent)
        self.dec = nets.ConvDecoder(latent, 90, width, "relu", (32, 32), 1)
        if "nofcrelu" in flags:
            self.dec.fc[1] = nn.Identity()
        if "nozero" in flags:
            for m in self.modules():
                if isinstance(m, nets.ResBlock):
                    nets.he_init(m.branch[-1])
        if "torchinit" in flags:
            for m in self.modules():
                if isinstance(m, (nn.Conv2d, nn.Linear)):
                    m.reset_parameters()
        self.likelihood = DiscretizedLogistic((3, 32, 32))

    def elbo(self, x):
        loc, raw = self.head(self.enc(x)).chunk(2, -1)
        return cp.gaussian_elbo(loc, raw, self.dec, self, x)


def reference_with_our_init():
    """The reference's architecture with our He init and zero-initialized residual branches."""
    vae = cp.ReferenceVAE()
    for m in vae.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nets.he_init(m)
        if isinstance(m, cp.Block):
            nn.init.zeros_(m.net[-1].weight)
    return vae


def main(n_train, n_test, epochs, variants):
    torch.set_num_threads(1)
    train_x, test_x = cp.patches(n_train, n_test)
    for v in variants:
        t = time.time()
        if v in ("ref", "refhe"):
            make = cp.ReferenceVAE if v == "ref" else reference_with_our_init
        else:
            make = functools.partial(Ours, set(v.split("+")))
        bits = cp.plain_bits(make, train_x, test_x, epochs, every_epoch=True)
        print(v, [round(b, 3) for b in bits], round(time.time() - t), flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4].split(","))
