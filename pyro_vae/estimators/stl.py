"""The ELBO with the sticking-the-landing gradient (STL; Roeder et al. 2017).

.. math:: \\nabla_\\phi \\mathcal{L} \\approx \\frac{1}{K} \\sum_k \\frac{\\partial \\log w_k}{\\partial z_k}
    \\frac{d z_k}{d \\phi}

drops the score term E_q[∇φ log q(z)] = 0 of the reparameterized ELBO gradient;
when q is the exact posterior, log w is constant in z and the gradient is
exactly zero.  Model parameters get the ELBO's gradient (1/K) Σ_k ∇θ log p(x, z_k).

References:
    1. G. Roeder, Y. Wu, D. Duvenaud. Sticking the Landing: Simple, Lower-Variance Gradient Estimators for
       Variational Inference. NeurIPS 2017, arXiv:1703.09194.
"""
import torch

from .base import DetachedPathELBO


class STL_ELBO(DetachedPathELBO):
    """Per-data-point ELBO (mean log-weight over K particles) with the path-only guide gradient."""

    def point_bound(self, log_w):
        """(1/K) Σ_k log w_k."""
        return log_w.mean(0)

    def path_weights(self, log_w):
        """1/K for every particle."""
        return torch.full_like(log_w, 1.0 / log_w.shape[0])
