"""The variational Rényi bound, one per data point (Li & Turner 2016).

.. math:: \\mathcal{L}_\\alpha(x_i) = \\frac{1}{1 - \\alpha} \\log \\frac{1}{K} \\sum_{k=1}^K
w_{ik}^{1-\\alpha}

α = 0 is the IWAE bound, α → 1 the ELBO (mean log-weight, used at α = 1); α ≥ 0
gives lower bounds on log p(x_i), α < 0 does not.  Unlike Pyro's ``RenyiELBO``,
the bound is formed per data point from unscaled log-weights, with the
subsampling factor applied outside.

References:
    1. Y. Li, R. E. Turner. Rényi Divergence Variational Inference. NeurIPS 2016, arXiv:1602.02311.
"""

import math

import torch

from pyro_vae.estimators.base import ImportanceWeightedELBO
from pyro_vae.core.checks import UserError


class RenyiBound_ELBO(ImportanceWeightedELBO):
    """The Rényi bound of order ``alpha`` on per-data-point log-weights (named apart from Pyro's
    ``RenyiELBO``, which takes the log-sum-exp over the whole scaled batch).

    :param float alpha: the order α (finite; default 0, the IWAE bound).
    """

    def __init__(
        self,
        num_particles=1,
        alpha=0.0,
        max_plate_nesting=None,
        vectorize_particles=True,
        data_plate=None,
    ):
        if (
            isinstance(alpha, bool)
            or not isinstance(alpha, (int, float))
            or not math.isfinite(alpha)
        ):
            raise UserError(f"alpha must be a finite number (0: IWAE, 1: ELBO), got {alpha!r}")
        super().__init__(num_particles, max_plate_nesting, vectorize_particles, data_plate)
        self.alpha = float(alpha)

    def point_bound(self, log_w):
        """1/(1−α) · log (1/K) Σ_k exp((1−α) log w_k); the mean of log w at α = 1."""
        if self.alpha == 1.0:
            return log_w.mean(0)
        t = 1.0 - self.alpha
        return (torch.logsumexp(t * log_w, dim=0) - math.log(log_w.shape[0])) / t
