"""What a trained VAE is used for: anomaly detection, denoising, embeddings for dimensionality
reduction.

Every function takes the user's ``model``/``guide`` pair and works through its traces
(importance-sampled log p(x), the guide's posterior means, the model's observation mean).

* :func:`anomaly_scores`: per-image −log p(x) (``"nll"``) or −ELBO (``"elbo"``); larger is more
  anomalous.
* :func:`roc_auc`: area under the ROC curve of scores against binary labels, by ranks (Mann–Whitney
  U).
* :func:`corrupt` and :func:`denoise`: reconstruct corrupted images through E_q[z | x̃] and compare
  both the corrupted input and the reconstruction with the clean image.
* :func:`embeddings`: posterior means of one latent site, for PCA / t-SNE / UMAP;
  :func:`save_embeddings` writes them with the labels as ``.npy``.
"""

import os

import numpy as np
import torch

from pyro_vae.estimators.importance import log_likelihood
from pyro_vae.evaluation.latents import posterior_means
from pyro_vae.evaluation.terms import elbo_per_point
from pyro_vae.evaluation.pictures import decode
from pyro_vae.core.checks import UserError, option

SCORES = ("nll", "elbo")
CORRUPTIONS = ("gaussian", "flip", "mask")


@torch.no_grad()
def anomaly_scores(model, guide, x, *args, score="nll", num_samples=1000, **kwargs):
    """Per-image anomaly score, shape ``[N]``: −log p(x) (``score="nll"``, ``num_samples``
    importance samples) or −ELBO.

    Both are in nats; a larger score means the model finds the image less likely.
    """
    if score == "nll":
        return -log_likelihood(model, guide, x, *args, num_samples=num_samples, **kwargs)
    if score == "elbo":
        return -elbo_per_point(
            model,
            guide,
            x,
            *args,
            num_particles=num_samples,
            batch_size=max(1, 2**16 // num_samples),
            **kwargs,
        ).double()
    raise UserError(f"unknown anomaly score {score!r}; choose one of {', '.join(SCORES)}")


def _rankdata(a):
    """Ranks 1..n of ``a`` with ties given the average of the ranks they span."""
    order = np.argsort(a, kind="mergesort")
    sorted_a = a[order]
    ranks = np.empty(len(a), dtype=np.float64)
    # boundaries of runs of equal values in the sorted array
    starts = np.flatnonzero(np.r_[True, sorted_a[1:] != sorted_a[:-1]])
    ends = np.r_[starts[1:], len(a)]
    for s, e in zip(starts, ends):
        ranks[order[s:e]] = 0.5 * (s + 1 + e)  # mean of ranks s+1 … e
    return ranks


def roc_auc(scores, labels):
    """Area under the ROC curve: the probability that a random positive scores above a random
    negative.

    .. math:: \\mathrm{AUC} = \\frac{R_+ - n_+(n_+ + 1)/2}{n_+ n_-}

    with R₊ the sum of the positives' ranks among all scores (ties get their average rank,
    so a tie counts ½).  ``labels`` are booleans or 0/1 (1 = positive, e.g. anomalous).
    """
    s = np.asarray(
        scores.detach().cpu() if torch.is_tensor(scores) else scores, dtype=np.float64
    ).reshape(-1)
    y = np.asarray(labels.detach().cpu() if torch.is_tensor(labels) else labels).reshape(-1)
    if s.shape != y.shape:
        raise UserError(
            f"scores and labels must have the same length, got {s.shape[0]} and {y.shape[0]}"
        )
    if not np.isin(y, (0, 1)).all():
        raise UserError("labels must be 0/1 or booleans (1 = positive)")
    if np.isnan(s).any():
        raise UserError("scores contain NaN; check the model's log-densities")
    y = y.astype(bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise UserError(f"ROC AUC needs both classes, got {n_pos} positives and {n_neg} negatives")
    r_pos = _rankdata(s)[y].sum()
    return float((r_pos - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def corrupt(x, kind="mask", level=0.5, generator=None):
    """Corrupt images in [0, 1]; returns ``(x̃, changed)`` where ``changed`` marks corrupted pixels.

    ``gaussian``: x̃ = clip(x + level·ε, 0, 1), ε ~ N(0, 1) (every pixel changed); ``flip``: each
    pixel replaced by 1 − x with probability ``level`` (salt-and-pepper for binary images);
    ``mask``: each pixel set to 0 with probability ``level``.
    """
    if kind not in CORRUPTIONS:
        raise UserError(f"unknown corruption {kind!r}; choose one of {', '.join(CORRUPTIONS)}")
    if not level >= 0 or (kind != "gaussian" and level > 1):
        raise UserError(f"{option('level')} must be >= 0 (and <= 1 for {kind!r}), got {level}")
    if kind == "gaussian":
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device="cpu").to(x.device)
        return (x + level * noise).clamp(0, 1), torch.ones_like(x, dtype=torch.bool)
    hit = (torch.rand(x.shape, generator=generator, device="cpu") < level).to(x.device)
    return (torch.where(hit, 1 - x if kind == "flip" else torch.zeros_like(x), x)), hit


@torch.no_grad()
def reconstruct(model, guide, x, obs_site="x"):
    """Mean of p(x | z) at z = E_q[z | x] (every latent site at its posterior mean)."""
    return decode(model, posterior_means(guide, x), x, obs_site)


@torch.no_grad()
def denoise(model, guide, x, kind="mask", level=0.5, seed=0, batch_size=1000, obs_site="x"):
    """Corrupt clean images ``x``, reconstruct them, and compare both with ``x``.

    Returns a dict: ``noisy`` and ``denoised`` images, and per-pixel mean squared errors against the
    clean image, ``mse_noisy`` and ``mse_denoised`` (over all pixels), ``mse_clean_reconstruction``
    (the floor: reconstructing the clean image itself; for binary images a mean in (0, 1) is never
    exact) and ``mse_noisy_changed`` / ``mse_denoised_changed`` (over the corrupted pixels only),
    all floats.
    """
    g = torch.Generator().manual_seed(seed)
    noisy, changed = corrupt(x, kind, level, generator=g)

    def through(images):
        return torch.cat(
            [
                reconstruct(model, guide, images[i : i + batch_size], obs_site)
                for i in range(0, len(images), batch_size)
            ]
        ).reshape(x.shape)

    out = through(noisy)
    err_noisy, err_out = (noisy - x).pow(2).double(), (out - x).pow(2).double()
    any_changed = changed.any().item()
    return {
        "noisy": noisy,
        "denoised": out,
        "mse_noisy": err_noisy.mean().item(),
        "mse_denoised": err_out.mean().item(),
        "mse_clean_reconstruction": (through(x) - x).pow(2).double().mean().item(),
        "mse_noisy_changed": err_noisy[changed].mean().item() if any_changed else 0.0,
        "mse_denoised_changed": err_out[changed].mean().item() if any_changed else 0.0,
    }


@torch.no_grad()
def embeddings(guide, x, site=None, batch_size=1000):
    """Posterior means E_q[z | x] of ``site`` (default: the guide's first latent site), flattened to
    ``[N, D]``."""
    means = posterior_means(guide, x, batch_size=batch_size)
    site = site or next(iter(means))
    if site not in means:
        raise UserError(f"the guide has no latent site {site!r}; its sites are {list(means)}")
    return means[site].reshape(len(x), -1)


def save_embeddings(guide, x, labels, out_dir, site=None, prefix="embeddings"):
    """Write ``PREFIX.npy`` (posterior means ``[N, D]``, float32) and ``PREFIX_labels.npy`` in
    ``out_dir``; return both paths."""
    z = embeddings(guide, x, site)
    os.makedirs(out_dir, exist_ok=True)
    paths = (os.path.join(out_dir, f"{prefix}.npy"), os.path.join(out_dir, f"{prefix}_labels.npy"))
    np.save(paths[0], z.float().cpu().numpy())
    np.save(paths[1], labels.cpu().numpy() if torch.is_tensor(labels) else np.asarray(labels))
    return paths
