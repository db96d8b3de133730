"""Colour and grey-level images, conv against MLP: test bits/dim of our conv VAE, our MLP VAE, a
plain-PyTorch residual conv VAE and a per-channel 256-bin histogram (issue #33).

Datasets, each with its own likelihood:

* ``photos``: 32×32 patches of the sample photographs of scikit-image and scikit-learn; each photo's
  right quarter is held out, test patches come only from it and training patches only from the rest,
  so no pixel is shared. Discretized logistic (10 mixtures).
* ``photos-64``: the same with 64×64 patches (the reference's maps stop at 16×16, ours at 8×8).
* ``fashion-mnist-8bit``: Fashion-MNIST as grey levels k/255, discretized logistic;
  ``fashion-mnist-binary``: the same images dynamically binarized, Bernoulli (no reference).
* ``shapes``: coloured shapes on plain backgrounds (:func:`shapes`), ``sigma-vae-optimal``; compared
  on ``recon_mse`` (a σ-VAE's ELBO is a density, not bits).

Every VAE: 32 latents, batch 64, Adam 1e-3, the same number of epochs; ours through ``pyro_vae``'s
trainer with its defaults (fast path, no ``--binarize``). Merges the datasets it ran into
``colour_photos.json`` beside this file and writes ``colour_photos.md`` from it.

    python benchmarks/colour_photos.py [--datasets photos,...] [--epochs 3] [--train 8000]
        [--test 1000] [--seeds 0,1]
"""

import argparse
import json
import math
import os
import shutil
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


def positions(ims, n_train, n_test, size=32, seed=0):
    """``(train, test)`` lists of patch corners ``(photo, row, column)``, cycling over the photos;
    each photo's right quarter (columns from ``3 W // 4`` on) is held out for the test patches."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for k in range(n_train + n_test):
        i = k % len(ims)
        h, w, _ = ims[i].shape
        cut = (3 * w) // 4
        lo, hi = (cut, w - size) if k >= n_train else (0, cut - size)
        corner = (i, int(rng.integers(0, h - size + 1)), int(rng.integers(lo, hi + 1)))
        (test if k >= n_train else train).append(corner)
    return train, test


def patches(n_train, n_test, size=32, seed=0):
    """Random patches ``[N, 3, size, size]`` uint8 at :func:`positions`: test patches from each
    photo's right quarter only."""
    ims = photos()
    return tuple(
        np.stack([ims[i][r : r + size, c : c + size].transpose(2, 0, 1) for i, r, c in at])
        for at in positions(ims, n_train, n_test, size, seed)
    )


def histogram_bits(train_x, test_x):
    """Bits/dim of a per-channel 256-bin histogram (add-one smoothing) fitted on the training
    patches."""
    bits = []
    for c in range(train_x.shape[1]):
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
    """A plain-PyTorch residual conv VAE (no Pyro) for ``shape`` = C × H × W with H, W divisible by
    4: H → H/2 → H/4, widths 32/64/128, nearest upsampling, a discretized logistic with
    ``mixtures`` components."""

    def __init__(self, latent=32, shape=(3, 32, 32), mixtures=10):
        super().__init__()
        c, h, w = shape
        self.likelihood = DiscretizedLogistic(shape, mixtures)
        self.small = (128, h // 4, w // 4)
        self.enc = nn.Sequential(
            nn.Conv2d(c, 32, 3, padding=1),
            Block(32),
            nn.Conv2d(32, 64, 4, 2, 1),
            Block(64),
            nn.Conv2d(64, 128, 4, 2, 1),
            Block(128),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(math.prod(self.small), 2 * latent),
        )
        self.fc = nn.Linear(latent, math.prod(self.small))
        self.dec = nn.Sequential(
            Block(128),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(128, 64, 3, padding=1),
            Block(64),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(64, 32, 3, padding=1),
            Block(32),
            nn.ReLU(),
            nn.Conv2d(32, self.likelihood.params_shape(shape)[0], 3, padding=1),
        )

    def elbo(self, x):
        loc, raw = self.enc(2 * x - 1).chunk(2, -1)
        return gaussian_elbo(
            loc, raw, lambda z: self.dec(self.fc(z).view(-1, *self.small)), self, x
        )


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
            bits.append(-elbo / (xte[0].numel() * math.log(2)))
    return bits


def shapes(n, size=32, seed=0):
    """``n`` RGB pictures ``[n, 3, size, size]`` uint8: a plain background of a random colour and
    one or two filled discs, squares or triangles of other random colours, sizes and places."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] + 0.5
    out = np.empty((n, size, size, 3), np.uint8)
    for k in range(n):
        im = np.broadcast_to(rng.integers(0, 256, 3), (size, size, 3)).copy()
        for _ in range(rng.integers(1, 3)):
            cy, cx = rng.uniform(0.2, 0.8, 2) * size
            r = rng.uniform(0.12, 0.3) * size
            kind = rng.integers(3)
            if kind == 0:
                mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2
            elif kind == 1:
                mask = (abs(yy - cy) <= r) & (abs(xx - cx) <= r)
            else:
                mask = (yy >= cy - r) & (yy <= cy + r) & (abs(xx - cx) <= (yy - cy + r) / 2)
            im[mask] = rng.integers(0, 256, 3)
        out[k] = im
    return out.transpose(0, 3, 1, 2)


def fashion_mnist(n_train, n_test):
    """The first ``n_train`` / ``n_test`` Fashion-MNIST images as uint8 ``[N, 1, 28, 28]``."""
    from pyro_vae import load_data

    data = load_data("fashion-mnist", binarize="none", limit=n_train, test_limit=n_test)
    return tuple((255 * x).round().to(torch.uint8).numpy() for x in (data.train, data.test))


def ours(npz, out, net, likelihood, epochs, seed):
    """Train our VAE on ``npz`` with the CLI's defaults; its evaluation with bits/dim."""
    config = Config(
        dataset=f"npy:{npz}",
        net=net,
        likelihood=likelihood,
        latent_dim=32,
        batch_size=64,
        epochs=epochs,
        seed=seed,
        out=out,
        images_every=epochs,
    )
    train(config, progress=False)
    result = evaluate_run(out, nll_samples=0)
    dims = math.prod(np.load(npz)["x"].shape[1:])
    result["elbo_bits_per_dim"] = -result["elbo"] / (dims * math.log(2))
    return {k: result[k] for k in ("elbo_bits_per_dim", "kl", "recon_mse")}


def compare(name, train_x, test_x, likelihood, args, seed):
    """One row per model on one dataset and seed: ``{model: {bits/dim, kl, recon_mse, s}}``."""
    out = os.path.join(args.out, f"{name}-{seed}")
    shutil.rmtree(out, ignore_errors=True)  # a fresh run each time
    os.makedirs(out)
    npz = os.path.join(out, "images.npz")
    np.savez(npz, x=train_x.transpose(0, 2, 3, 1), x_test=test_x.transpose(0, 2, 3, 1))
    eight_bit = likelihood == "discretized-logistic"
    rows = (
        {"histogram": {"elbo_bits_per_dim": histogram_bits(train_x, test_x)}} if eight_bit else {}
    )
    for net in ("conv", "mlp"):
        t = time.time()
        rows[f"our {net} VAE"] = ours(
            npz, os.path.join(out, net), net, likelihood, args.epochs, seed
        )
        rows[f"our {net} VAE"]["s"] = time.time() - t
    if eight_bit:
        t = time.time()
        make = lambda: ReferenceVAE(32, train_x.shape[1:])  # noqa: E731
        bits = plain_bits(make, train_x, test_x, args.epochs, seed)[-1]
        rows["plain-PyTorch residual conv VAE"] = {"elbo_bits_per_dim": bits, "s": time.time() - t}
    if seed == int(args.seeds.split(",")[0]):
        nets = {net: os.path.join(out, net) for net in ("conv", "mlp")}
        figure(nets, test_x, os.path.join(HERE, f"colour_{name}.png"))
    print(name, seed, json.dumps(rows), flush=True)
    return rows


def figure(runs, test_x, path, n=16):
    """``path``: the first ``n`` test images (top row), then each run's reconstructions (the mean of
    p(x | z), z ~ q(z | x)), one row per run of ``runs`` = ``{name: run_dir}``, in order; pixels
    drawn 2×2."""
    from torchvision.utils import save_image

    from pyro_vae.app.experiment import load_run
    from pyro_vae.evaluation.pictures import reconstructions

    x = torch.tensor(test_x[:n]) / 255.0
    rows = [x]
    for run in runs.values():
        _, vae, _ = load_run(run, device="cpu")
        rows.append(reconstructions(vae.model, vae.guide, x).clamp(0, 1))
    grid = torch.nn.functional.interpolate(torch.cat(rows), scale_factor=2, mode="nearest")
    save_image(grid, path, nrow=n, padding=2, pad_value=1.0)


def _cell(values, fmt):
    return " / ".join(fmt.format(v) for v in values if v is not None)


DATASETS = {  # name: (train, test, likelihood) for the parsed arguments
    "photos": lambda a: (*patches(a.train, a.test), "discretized-logistic"),
    "photos-64": lambda a: (*patches(a.train, a.test, size=64), "discretized-logistic"),
    "fashion-mnist-8bit": lambda a: (*fashion_mnist(a.train, a.test), "discretized-logistic"),
    "fashion-mnist-binary": lambda a: (*fashion_mnist(a.train, a.test), "bernoulli"),
    "shapes": lambda a: (shapes(a.shapes), shapes(a.test, seed=1), "sigma-vae-optimal"),
}


def main(args):
    """Run ``args.datasets`` and merge them into the recorded results (other datasets are kept)."""
    torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    path = os.path.join(HERE, "colour_photos.json")
    results = {}
    if os.path.exists(path):
        with open(path) as f:
            results = json.load(f).get("results", {})
    for name in args.datasets.split(","):
        train_x, test_x, likelihood = DATASETS[name](args)
        command = (
            f"python benchmarks/colour_photos.py --datasets {name} --epochs {args.epochs} "
            f"--train {args.train} --test {args.test} --seeds {args.seeds}"
        )
        results[name] = {
            "command": command + (f" --shapes {args.shapes}" if name == "shapes" else ""),
            "likelihood": likelihood,
            "seeds": {
                seed: compare(name, train_x, test_x, likelihood, args, seed) for seed in seeds
            },
        }
        with open(path, "w") as f:
            json.dump({"results": results}, f, indent=2)
    write_markdown(results)


def write_markdown(results):
    """``colour_photos.md`` beside this file: one table per dataset of ``results``."""
    lines = [
        "# Conv against MLP on colour and grey-level images (issue #33)",
        "",
        "Written by `benchmarks/colour_photos.py`. Every VAE: 32 latents, batch 64, Adam 1e-3;",
        "ours through the trainer with the CLI's defaults. One figure per seed (`a / b`); test",
        "ELBO in bits/dim (lower is better), KL in nats, `recon_mse` per pixel in [0, 1]. Figures:",
        "the first 16 test images, then the conv VAE's and the MLP's reconstructions (first seed).",
    ]
    for name, r in results.items():
        lines += ["", f"## {name} ({r['likelihood']})", "", f"`{r['command']}`", ""]
        lines += ["| model | bits/dim | KL | recon_mse |", "|---|---|---|---|"]
        by_seed = list(r["seeds"].values())
        for model in by_seed[0]:
            bits, kl, mse = (
                [row[model].get(k) for row in by_seed]
                for k in ("elbo_bits_per_dim", "kl", "recon_mse")
            )
            if r["likelihood"] == "sigma-vae-optimal":  # a density, not bits
                bits = []
            lines.append(
                f"| {model} | {_cell(bits, '{:.2f}')} | {_cell(kl, '{:.1f}')} | "
                f"{_cell(mse, '{:.4f}')} |"
            )
        if os.path.exists(os.path.join(HERE, f"colour_{name}.png")):
            lines += ["", f"![test images, conv and MLP reconstructions](colour_{name}.png)"]
    with open(os.path.join(HERE, "colour_photos.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--train", type=int, default=8000)
    p.add_argument("--test", type=int, default=1000)
    p.add_argument("--shapes", type=int, default=2400, help="training pictures of shapes")
    p.add_argument("--seeds", default="0,1")
    p.add_argument(
        "--datasets", default="photos,fashion-mnist-8bit,shapes", help=", ".join(DATASETS)
    )
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="/tmp/colour_photos_runs")
    main(p.parse_args())
