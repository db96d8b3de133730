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

import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch
import torch.nn.functional as F
from torch import nn
import colour_photos as cp  # noqa: E402
from pyro_vae.models import nets  # noqa: E402
from pyro_vae.models.likelihoods import DiscretizedLogistic  # noqa: E402

torch.set_num_threads(1)
n_train, n_test, epochs = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
variants = sys.argv[4].split(",")
train_x, test_x = cp.patches(n_train, n_test)


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
        scale = F.softplus(raw) + 1e-5
        z = loc + scale * torch.randn_like(loc)
        recon = self.likelihood(self.dec(z)).log_prob(x).sum((1, 2, 3))
        kl = (0.5 * (loc**2 + scale**2 - 1) - scale.log()).sum(-1)
        return recon - kl


def run(make, seed=0):
    torch.manual_seed(seed)
    vae = make()
    opt = torch.optim.Adam(vae.parameters(), 1e-3)
    xtr, xte = torch.tensor(train_x) / 255.0, torch.tensor(test_x) / 255.0
    out = []
    for _ in range(epochs):
        for idx in torch.randperm(len(xtr)).split(64):
            loss = -vae.elbo(xtr[idx]).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            elbo = torch.cat([vae.elbo(b) for b in xte.split(500)]).mean().item()
        out.append(round(-elbo / (3 * 32 * 32 * math.log(2)), 3))
    return out


for v in variants:
    t = time.time()
    flags = set(v.split("+"))

    def refhe():
        m = cp.ReferenceVAE()
        for mod in m.modules():
            if isinstance(mod, (nn.Conv2d, nn.Linear)):
                nets.he_init(mod)
            if isinstance(mod, cp.Block):
                nn.init.zeros_(mod.net[-1].weight)
        return m

    make = cp.ReferenceVAE if v == "ref" else refhe if v == "refhe" else (lambda: Ours(flags))
    print(v, run(make), round(time.time() - t), flush=True)
