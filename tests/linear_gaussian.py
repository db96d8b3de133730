"""A linear-Gaussian latent model with closed-form log p(x), posterior and ELBO, used by many tests.

z ~ N(0, I_d),   x | z ~ N(W z + b, σ² I_D)
p(x) = N(b, W Wᵀ + σ² I),   p(z | x) = N(Λ⁻¹ Wᵀ (x − b) / σ², Λ⁻¹),   Λ = I + Wᵀ W / σ²
"""

import math

import pyro
import pyro.distributions as dist
import torch

from pyro_vae import data_plate


class LinearGaussian:
    def __init__(
        self, latent_dim=3, obs_dim=5, sigma=0.5, seed=0, dtype=torch.float64, device="cpu", W=None
    ):
        g = torch.Generator().manual_seed(seed)
        self.W = (
            torch.randn(obs_dim, latent_dim, generator=g, dtype=dtype) if W is None else W.to(dtype)
        ).to(device)
        self.b = torch.randn(obs_dim, generator=g, dtype=dtype).to(device)
        self.sigma = sigma
        self.latent_dim, self.obs_dim = latent_dim, obs_dim

    @classmethod
    def unit_range(cls, obs_dim, sigma, w_scale, seed=0, latent_dim=2):
        """Means 0.5 + W z with small W (|W| ~ w_scale): "images" whose means stay in [0, 1] for
        moderate z."""
        g = torch.Generator().manual_seed(seed)
        lg = cls(
            latent_dim=latent_dim,
            obs_dim=obs_dim,
            sigma=sigma,
            W=w_scale * torch.randn(obs_dim, latent_dim, generator=g),
        )
        lg.b = torch.full((obs_dim,), 0.5, dtype=lg.W.dtype, device=lg.W.device)
        return lg

    # ---- Pyro functions (the contract: x first, sites in the "data" plate) ----
    def model(self, x, num_data=None):
        with data_plate(x, num_data):
            z = pyro.sample("z", dist.Normal(x.new_zeros(self.latent_dim), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ self.W.T + self.b, self.sigma).to_event(1), obs=x)

    def exact_guide(self, x, num_data=None):
        """q(z|x) = p(z|x), the exact posterior."""
        mean, cov = self.posterior(x)
        with data_plate(x, num_data):
            pyro.sample("z", dist.MultivariateNormal(mean, covariance_matrix=cov))

    def meanfield_guide(self, loc, scale):
        """A guide q(z|x) = N(loc_i, diag scale_i²) with fixed per-point tensors (no parameters)."""

        def guide(x, num_data=None):
            with data_plate(x, num_data):
                pyro.sample("z", dist.Normal(loc, scale).to_event(1))

        return guide

    # ---- closed forms ----
    def sample(self, n, seed=1):
        g = torch.Generator().manual_seed(seed)
        z = torch.randn(n, self.latent_dim, generator=g, dtype=self.W.dtype).to(self.W.device)
        eps = torch.randn(n, self.obs_dim, generator=g, dtype=self.W.dtype).to(self.W.device)
        return z @ self.W.T + self.b + self.sigma * eps

    def marginal(self):
        cov = self.W @ self.W.T + self.sigma**2 * torch.eye(
            self.obs_dim, dtype=self.W.dtype, device=self.W.device
        )
        return dist.MultivariateNormal(self.b, covariance_matrix=cov)

    def log_px(self, x):
        return self.marginal().log_prob(x)

    def precision(self):
        eye = torch.eye(self.latent_dim, dtype=self.W.dtype, device=self.W.device)
        return eye + self.W.T @ self.W / self.sigma**2

    def posterior(self, x):
        cov = torch.linalg.inv(self.precision())
        mean = (x - self.b) @ self.W @ cov.T / self.sigma**2
        return mean, cov.expand(len(x), -1, -1)

    def elbo(self, x, m, S):
        """Closed-form ELBO of q(z|x_i) = N(m_i, S_i) (S: [N, d, d] or diagonal variances [N,
        d])."""
        if S.dim() == 2:
            S = torch.diag_embed(S)
        D, d = self.obs_dim, self.latent_dim
        resid = x - m @ self.W.T - self.b
        trace = torch.einsum("ij,nji->n", self.W.T @ self.W, S)
        expected_loglik = -0.5 * D * math.log(2 * math.pi * self.sigma**2) - 0.5 / self.sigma**2 * (
            resid.pow(2).sum(-1) + trace
        )
        kl = 0.5 * (S.diagonal(dim1=-2, dim2=-1).sum(-1) + m.pow(2).sum(-1) - d - torch.logdet(S))
        return expected_loglik - kl

    def meanfield_gap(self):
        """½(Σ log Λ_ii − log det Λ): the per-point gap of the best diagonal Gaussian guide."""
        lam = self.precision()
        return 0.5 * (lam.diagonal().log().sum() - torch.logdet(lam))
