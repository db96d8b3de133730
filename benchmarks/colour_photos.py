"""Colour photographs: test bits/dim of our conv VAE, our MLP VAE, a plain-PyTorch residual conv VAE
and a per-channel 256-bin histogram, on 32×32 patches of the sample photographs of scikit-image and
scikit-learn.

Each photo's right quarter is held out: test patches come only from it, training patches only from
the rest, so no pixel is shared. Every VAE: discretized logistic (10 mixtures), 32 latents, batch
64, Adam 1e-3, the same number of epochs. Writes ``colour_photos.md`` and ``colour_photos.json``
beside this file.

    python benchmarks/colour_photos.py [--epochs 3] [--train 8000] [--test 1000] [--out
    /tmp/colour_runs]
"""

import argparse
import json
import math
import os
import time

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from pyro_vae.app.config import Config
from pyro_vae.app.experiment import evaluate_run, train
from pyro_vae.models.likelihoods import DiscretizedLogistic

HERE = os.path.dirname(os.path.abspath(__file__))
SKIMAGE = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "immunohistochemistry",
    "hubble_deep_field",
    "retina",
)


def photos():
    """The RGB sample photographs, uint8 [H, W, 3]."""
    from skimage import data
    from sklearn.datasets import load_sample_images

    images = [getattr(data, name)() for name in SKIMAGE]
    return [im[..., :3] for im in images + list(load_sample_images().images)]


def patches(n_train, n_test, size=32, seed=0):
    """Random patches ``[N, 3, size, size]`` uint8; test patches from each photo's right quarter
    only."""
    rng = np.random.default_rng(seed)
    ims = photos()
    train_x, test_x = [], []
    for i in range(n_train + n_test):
        im = ims[i % len(ims)]
        h, w, _ = im.shape
        cut = (3 * w) // 4
        test = i >= n_train
        lo, hi = (cut, w - size) if test else (0, cut - size)
        r, c = rng.integers(0, h - size + 1), rng.integers(lo, hi + 1)
        (test_x if test else train_x).append(im[r : r + size, c : c + size].transpose(2, 0, 1))
    return np.stack(train_x), np.stack(test_x)


def histogram_bits(train_x, test_x):
    """Bits/dim of a per-channel 256-bin histogram (add-one smoothing) fitted on the training
    patches."""
    bits = []
    for c in range(3):
        counts = np.bincount(train_x[:, c].ravel(), minlength=256) + 1.0
        p = counts / counts.sum()
        bits.append(-np.log2(p[test_x[:, c].ravel()]).mean())
    return float(np.mean(bits))


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.net = nn.Sequential(
            nn.ReLU(), nn.Conv2d(c, c, 3, padding=1), nn.ReLU(), nn.Conv2d(c, c, 3, padding=1)
        )

    def forward(self, h):
        return h + self.net(h)


class ReferenceVAE(nn.Module):
    """A plain-PyTorch residual conv VAE (no Pyro): 32→16→8, widths 32/64/128, nearest
    upsampling."""

    def __init__(self, latent=32, out_channels=90):
        super().__init__()
        self.enc = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1),
            Block(32),
            nn.Conv2d(32, 64, 4, 2, 1),
            Block(64),
            nn.Conv2d(64, 128, 4, 2, 1),
            Block(128),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(128 * 64, 2 * latent),
        )
        self.fc = nn.Linear(latent, 128 * 64)
        self.dec = nn.Sequential(
            Block(128),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(128, 64, 3, padding=1),
            Block(64),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(64, 32, 3, padding=1),
            Block(32),
            nn.ReLU(),
            nn.Conv2d(32, out_channels, 3, padding=1),
        )
        self.likelihood = DiscretizedLogistic((3, 32, 32))

    def elbo(self, x):
        loc, raw = self.enc(2 * x - 1).chunk(2, -1)
        return gaussian_elbo(loc, raw, lambda z: self.dec(self.fc(z).view(-1, 128, 8, 8)), self, x)


def gaussian_elbo(loc, raw, decode, vae, x):
    """One-sample ELBO per image of q = N(loc, softplus(raw)), prior N(0, I) and
    ``vae.likelihood(decode(z))``: log p(x | z) − KL(q ‖ p)."""
    scale = F.softplus(raw) + 1e-5
    z = loc + scale * torch.randn_like(loc)
    recon = vae.likelihood(decode(z)).log_prob(x).sum((1, 2, 3))
    kl = (0.5 * (loc**2 + scale**2 - 1) - scale.log()).sum(-1)
    return recon - kl


def plain_bits(make, train_x, test_x, epochs, seed=0, every_epoch=False):
    """Test ELBO bits/dim of the VAE ``make()`` (an ``elbo(x)`` per image) trained by a plain loop
    (batch 64, Adam 1e-3): after the last epoch, or after each (``every_epoch``; the evaluations
    draw from the same random stream as training, so its figures differ from a last-only run)."""
    torch.manual_seed(seed)
    vae = make()
    opt = torch.optim.Adam(vae.parameters(), 1e-3)
    xtr, xte = torch.tensor(train_x) / 255.0, torch.tensor(test_x) / 255.0
    bits = []
    for epoch in range(epochs):
        for idx in torch.randperm(len(xtr)).split(64):
            loss = -vae.elbo(xtr[idx]).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        if every_epoch or epoch == epochs - 1:
            with torch.no_grad():
                elbo = torch.cat([vae.elbo(b) for b in xte.split(500)]).mean().item()
            bits.append(-elbo / (3 * 32 * 32 * math.log(2)))
    return bits


def reference_bits(train_x, test_x, epochs, seed=0):
    """Test ELBO bits/dim of :class:`ReferenceVAE` after ``epochs``."""
    return plain_bits(ReferenceVAE, train_x, test_x, epochs, seed)[-1]


def ours(npz, out, net, epochs, nll_samples):
    config = Config(
        dataset=f"npy:{npz}",
        net=net,
        likelihood="discretized-logistic",
        latent_dim=32,
        batch_size=64,
        epochs=epochs,
        out=out,
        fast="off",
        images_every=epochs,
    )
    train(config, progress=False)
    result = evaluate_run(out, nll_samples=nll_samples)
    result["elbo_bits_per_dim"] = -result["elbo"] / (3 * 32 * 32 * math.log(2))
    return result


def main(args):
    torch.set_num_threads(args.threads)
    train_x, test_x = patches(args.train, args.test)
    os.makedirs(args.out, exist_ok=True)
    npz = os.path.join(args.out, "patches.npz")
    np.savez(npz, x=train_x.transpose(0, 2, 3, 1), x_test=test_x.transpose(0, 2, 3, 1))
    rows = {"histogram": {"elbo_bits_per_dim": histogram_bits(train_x, test_x)}}
    for net in ("conv", "mlp"):
        t = time.time()
        r = ours(npz, os.path.join(args.out, net), net, args.epochs, args.nll_samples)
        rows[f"our {net} VAE"] = {
            **{k: r[k] for k in ("elbo_bits_per_dim", "kl", "recon_mse")},
            "s": time.time() - t,
        }
        print(net, rows[f"our {net} VAE"], flush=True)
    t = time.time()
    rows["plain-PyTorch residual conv VAE"] = {
        "elbo_bits_per_dim": reference_bits(train_x, test_x, args.epochs),
        "s": time.time() - t,
    }
    print(rows, flush=True)
    with open(os.path.join(HERE, "colour_photos.json"), "w") as f:
        json.dump({"args": vars(args), "rows": rows}, f, indent=2)
    lines = [
        "# Colour photographs: test ELBO bits/dim (lower is better)",
        "",
        f"`python benchmarks/colour_photos.py --epochs {args.epochs} --train {args.train} --test "
        f"{args.test}`;"
        " 32×32 patches, test patches from each photo's held-out right quarter; discretized "
        "logistic,"
        " 32 latents, batch 64.",
        "",
        "| model | bits/dim | KL (nats) | recon_mse |",
        "|---|---|---|---|",
    ]
    for name, r in rows.items():
        kl, mse = r.get("kl"), r.get("recon_mse")
        lines.append(
            f"| {name} | {r['elbo_bits_per_dim']:.2f} | {'' if kl is None else f'{kl:.1f}'} | "
            f"{'' if mse is None else f'{mse:.4f}'} |"
        )
    with open(os.path.join(HERE, "colour_photos.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--train", type=int, default=8000)
    p.add_argument("--test", type=int, default=1000)
    p.add_argument("--nll-samples", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="/tmp/colour_photos_runs")
    main(p.parse_args())
