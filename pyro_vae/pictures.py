"""Pictures of a model/guide pair, taken from its own traces (so user-written pairs get them too).

Image sites are read from the model's observed site (default ``"x"``): its
distribution's ``mean`` is the picture (Bernoulli probabilities, Gaussian means).
"""
import json
import os

import torch
from pyro import poutine
from torchvision.utils import save_image


def _obs_mean(trace, obs_site):
    if obs_site not in trace.nodes:
        raise ValueError(f"the model has no site {obs_site!r}; pass obs_site=NAME of its observed images")
    return trace.nodes[obs_site]["fn"].mean.clamp(0, 1)


@torch.no_grad()
def prior_samples(model, x, obs_site="x"):
    """Mean of p(x|z) for z drawn from the prior, one per row of ``x`` (``x`` only sets shape, device and dtype)."""
    with poutine.block():
        trace = poutine.trace(poutine.uncondition(model)).get_trace(x)
    return _obs_mean(trace, obs_site)


@torch.no_grad()
def reconstructions(model, guide, x, obs_site="x"):
    """Mean of p(x|z) for z ~ q(z|x)."""
    with poutine.block():
        guide_trace = poutine.trace(guide).get_trace(x)
        trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x)
    return _obs_mean(trace, obs_site)


def save_samples(model, x, path, n=64, nrow=8):
    """Write a grid of ``n`` prior samples to ``path``."""
    save_image(prior_samples(model, x[:n]).reshape(-1, *x.shape[1:]), path, nrow=nrow)


def save_reconstructions(model, guide, x, path, n=32, nrow=8):
    """Write rows of ``nrow`` test inputs, each above a row of their reconstructions."""
    x = x[:n]
    recon = reconstructions(model, guide, x).reshape(x.shape)
    rows = []
    for start in range(0, len(x), nrow):
        rows += [x[start : start + nrow], recon[start : start + nrow]]
    save_image(torch.cat(rows), path, nrow=nrow)


def save_loss_curve(metrics_path, path):
    """Plot train loss (−ELBO) and −test ELBO per epoch from ``metrics.jsonl``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(metrics_path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    epochs = [r["epoch"] for r in rows]
    ax.plot(epochs, [r["train_loss"] for r in rows], "o-", label="train loss (−ELBO)")
    if all("test_elbo" in r for r in rows):
        ax.plot(epochs, [-r["test_elbo"] for r in rows], "s-", label="test −ELBO")
    ax.set_xlabel("epoch")
    ax.set_ylabel("nats per image")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def save_run_pictures(model, guide, x, out_dir):
    """The standard pictures of a run directory: samples.png, reconstructions.png, loss.png."""
    save_samples(model, x, os.path.join(out_dir, "samples.png"))
    save_reconstructions(model, guide, x, os.path.join(out_dir, "reconstructions.png"))
    metrics = os.path.join(out_dir, "metrics.jsonl")
    if os.path.exists(metrics):
        save_loss_curve(metrics, os.path.join(out_dir, "loss.png"))
