"""The IWAE bound with doubly-reparameterized gradients (DReG; Tucker et al. 2019).

With normalised weights w̃_k = w_k / Σ_j w_j, the guide gradient

.. math:: \\nabla_\\phi \\mathcal{L}_K = \\mathbb{E}\\Big[\\sum_k \\tilde w_k^2\\,
    \\frac{\\partial \\log w_k}{\\partial z_k} \\frac{d z_k}{d \\phi}\\Big]

has the IWAE gradient's expectation without its score term, so its
signal-to-noise ratio grows with K where IWAE's shrinks (Rainforth et al.
2018).  Model parameters get exactly the IWAE gradient Σ_k w̃_k ∇θ log p(x, z_k).

References:
    1. G. Tucker, D. Lawson, S. Gu, C. J. Maddison. Doubly Reparameterized Gradient Estimators for
       Monte Carlo Objectives. ICLR 2019, arXiv:1810.04152.
    2. T. Rainforth et al. Tighter Variational Bounds are Not Necessarily Better. ICML 2018,
       arXiv:1802.04537.
"""

import torch

from pyro_vae.estimators.base import DetachedPathELBO
from pyro_vae.estimators.iwae import IWAE_ELBO


class DReG_ELBO(DetachedPathELBO, IWAE_ELBO):
    """IWAE's value and model gradient; the guide gets the doubly-reparameterized path gradient
    (weights w̃²)."""

    def path_weights(self, log_w):
        """w̃_k², the squared normalised importance weights."""
        return torch.softmax(log_w, dim=0).pow(2)
