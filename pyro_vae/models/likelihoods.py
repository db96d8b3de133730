"""Observation models p(x | z): turn a decoder output into a distribution over pixels.

A likelihood is an ``nn.Module`` called as ``likelihood(out, x)``; it returns a
distribution whose batch shape equals ``out.shape`` (the model adds
``.to_event``).  ``x`` is only read by the σ-VAE with the analytic σ*.

================== ===================================================================
``bernoulli``      p(x|z) = Π Bernoulli(x_d; sigmoid(out_d)); for binary or [0, 1] data
``gaussian``       p(x|z) = Π N(x_d; out_d, σ²), fixed σ (``sigma``, default 0.1)
``learned-gaussian`` p(x|z) = Π N(x_d; out_d, σ_d²), one learned σ per pixel
``sigma-vae``      p(x|z) = Π N(x_d; out_d, σ²), one shared learned σ (Rybkin et al. 2021);
                   ``optimal=True`` uses σ* = sqrt(MSE) instead of a parameter
================== ===================================================================
"""
import math

import pyro.distributions as dist
import torch
from torch import nn


class Bernoulli(nn.Module):
    """Bernoulli with logits ``out``.

    Grey levels in [0, 1] are accepted (the usual continuous relaxation, then
    ``log p`` is minus the binary cross-entropy and not a normalized density).
    """

    unit_interval = True  # data must lie in [0, 1] (checked by pyro_vae.core.checks before training)

    def forward(self, out, x=None):
        return dist.Bernoulli(logits=out, validate_args=False)


class Gaussian(nn.Module):
    """Gaussian with mean ``out`` and fixed standard deviation ``sigma``."""

    def __init__(self, sigma=0.1):
        super().__init__()
        if not sigma > 0:
            raise ValueError(f"sigma must be > 0, got {sigma}")
        self.sigma = float(sigma)

    def forward(self, out, x=None):
        return dist.Normal(out, self.sigma)


class LearnedGaussian(Gaussian):
    """Gaussian with mean ``out`` and one learned σ_d per pixel (σ_d = exp(log_sigma_d), not a function of z)."""

    def __init__(self, x_shape, sigma=0.1):
        super().__init__(sigma)
        self.log_sigma = nn.Parameter(torch.full(tuple(x_shape), math.log(sigma)))

    def forward(self, out, x=None):
        return dist.Normal(out, self.log_sigma.exp())


class SigmaVAE(Gaussian):
    """σ-VAE: Gaussian with one σ shared by all pixels (Rybkin, Daniilidis, Levine 2021, "Simple and Effective VAE
    Training with Calibrated Decoders").

    With ``optimal=False`` σ is a learned parameter.  With ``optimal=True`` σ is the
    maximum-likelihood value for the current batch, σ*² = mean((x − out)²), which gives
    the profile likelihood ``−D/2·(log 2πσ*² + 1)`` per image; a running average of σ*
    (buffer ``sigma_star``) is used in eval mode and when no ``x`` is given (sampling).
    Use it for continuous images when the Gaussian σ is unknown: it balances
    reconstruction against KL without tuning a β.
    """

    def __init__(self, optimal=False, sigma=0.1, min_sigma=1e-3, momentum=0.01):
        super().__init__(sigma)
        self.optimal = optimal
        self.min_sigma = min_sigma
        self.momentum = momentum
        if optimal:
            self.register_buffer("sigma_star", torch.tensor(float(sigma)))
        else:
            self.log_sigma = nn.Parameter(torch.tensor(math.log(sigma)))

    def forward(self, out, x=None):
        if not self.optimal:
            return dist.Normal(out, self.log_sigma.exp().clamp(min=self.min_sigma))
        if x is None or not self.training:
            sigma = self.sigma_star.to(out)
        else:
            sigma = (x - out).pow(2).mean().sqrt().clamp(min=self.min_sigma)
            with torch.no_grad():
                self.sigma_star.lerp_(sigma.detach().to(self.sigma_star), self.momentum)
        return dist.Normal(out, sigma)


LIKELIHOODS = ("bernoulli", "gaussian", "learned-gaussian", "sigma-vae", "sigma-vae-optimal")


def make_likelihood(name, x_shape, sigma=0.1):
    """Build a likelihood by name: one of :data:`LIKELIHOODS`."""
    if name == "bernoulli":
        return Bernoulli()
    if name == "gaussian":
        return Gaussian(sigma)
    if name == "learned-gaussian":
        return LearnedGaussian(x_shape, sigma)
    if name == "sigma-vae":
        return SigmaVAE(optimal=False, sigma=sigma)
    if name == "sigma-vae-optimal":
        return SigmaVAE(optimal=True, sigma=sigma)
    raise ValueError(f"unknown likelihood {name!r}; choose one of {', '.join(LIKELIHOODS)}")
