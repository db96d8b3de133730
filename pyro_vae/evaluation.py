"""Evaluation of a trained model/guide pair, computed by tracing the pair itself.

Signs: ``elbo`` and ``recon`` are maximised (nats per image, ``elbo = recon − kl``),
``kl`` ≥ 0, ``nll = −log p(x)`` is positive and ``nll ≤ −elbo``.
"""
import torch

from .importance import guess_max_plate_nesting, log_likelihood, log_weights


@torch.no_grad()
def elbo_terms(model, guide, x, *args, num_particles=1, batch_size=1000, **kwargs):
    """Per-image Monte Carlo ``(recon, kl)`` averaged over ``num_particles``, each of shape ``[N]``.

    recon_i = E_q[log p(x_i|z)],  kl_i = E_q[log q(z|x_i) − log p(z)],  ELBO_i = recon_i − kl_i.
    """
    mpn = guess_max_plate_nesting(model, guide, x[:1], *args, **kwargs)
    recon, kl = [], []
    for start in range(0, len(x), batch_size):
        w = log_weights(model, guide, x[start : start + batch_size], *args, num_particles=num_particles,
                        max_plate_nesting=mpn, **kwargs)
        recon.append(w.obs.mean(0))
        kl.append((w.guide - w.prior).mean(0))
    return torch.cat(recon), torch.cat(kl)


def elbo_per_point(model, guide, x, *args, num_particles=1, batch_size=1000, **kwargs):
    """Monte Carlo ELBO of every image, shape ``[N]`` (nats)."""
    recon, kl = elbo_terms(model, guide, x, *args, num_particles=num_particles, batch_size=batch_size, **kwargs)
    return recon - kl


def evaluate(model, guide, x, *args, nll_samples=5000, elbo_particles=1, batch_size=1000, **kwargs):
    """Return a dict of mean per-image figures over ``x``: ``elbo``, ``recon``, ``kl``, ``nll``, ``nll_samples``, ``images``.

    ``nll`` is omitted when ``nll_samples`` is 0.
    """
    recon, kl = elbo_terms(model, guide, x, *args, num_particles=elbo_particles, batch_size=batch_size, **kwargs)
    result = {
        "elbo": (recon - kl).mean().item(),
        "recon": recon.mean().item(),
        "kl": kl.mean().item(),
        "images": len(x),
        "nll_samples": nll_samples,
    }
    if nll_samples:
        result["nll"] = -log_likelihood(model, guide, x, *args, num_samples=nll_samples, **kwargs).mean().item()
    return result
