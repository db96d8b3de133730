"""The importance-weighted bound, one per data point (Burda et al. 2016).

.. math:: \\mathcal{L}_K(x_i) = \\mathbb{E}\\Big[\\log \\frac{1}{K} \\sum_{k=1}^K w_{ik}\\Big] \\le
    \\log p(x_i), \\qquad w_{ik} = \\frac{p(x_i, z_{ik})}{q(z_{ik} | x_i)}

It equals the ELBO at K = 1, rises with K and tends to log p(x_i).

References:
    1. Y. Burda, R. Grosse, R. Salakhutdinov. Importance Weighted Autoencoders. ICLR 2016,
       arXiv:1509.00519.
"""

import math

import torch

from pyro_vae.estimators.base import ImportanceWeightedELBO


class IWAE_ELBO(ImportanceWeightedELBO):
    """IWAE: the log-mean-exp of the K log-weights of each data point, with its plain
    reparameterized gradient."""

    def point_bound(self, log_w):
        """log (1/K) Σ_k exp(log w_k), per data point."""
        return torch.logsumexp(log_w, dim=0) - math.log(log_w.shape[0])
