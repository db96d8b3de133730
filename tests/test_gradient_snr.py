"""The estimator lab (:mod:`pyro_vae.evaluation.gradient_snr`) against closed forms.

On the linear-Gaussian model with learned θ = (W, b) and a learned guide φ, the ELBO and its gradient are
closed-form (tests/linear_gaussian.py): the mean of R sampled gradients must match it within a few
standard errors s/√R.  With the exact posterior as the guide, log w = log p(x) for every z, so STL's and
DReG's guide gradients vanish draw by draw (Roeder et al. 2017; Tucker et al. 2019).
"""
import json
import math
import os

import pyro
import pyro.distributions as dist
import pytest
import torch
from linear_gaussian import LinearGaussian
from pyro.distributions import constraints

from pyro_vae import data_plate
from pyro_vae.evaluation.gradient_snr import gradient_moments, gradient_snr, summarize

Z = 4.5  # standard errors: P(|N(0,1)| > 4.5) = 7e-6 per entry, under 2e-3 over the ~200 entries checked


class LearnedPair:
    """z ~ N(0, I), x | z ~ N(W z + b, σ²) with θ = (W, b) learned; the guide q(z|x) = N(A x + c, diag s²)
    with φ = (A, c, log s), or with ``exact=True`` the exact posterior N(A x + c, L Lᵀ) at θ's start."""

    def __init__(self, exact=False, seed=0):
        self.lg = LinearGaussian(latent_dim=3, obs_dim=5, sigma=0.7, seed=seed)
        self.exact = exact
        g = torch.Generator().manual_seed(seed + 1)
        cov = torch.linalg.inv(self.lg.precision())
        gain = self.lg.W.T @ torch.eye(5, dtype=cov.dtype) / self.lg.sigma ** 2
        self.A0 = cov @ gain if exact else 0.3 * torch.randn(3, 5, generator=g, dtype=cov.dtype)
        self.c0 = -self.A0 @ self.lg.b if exact else 0.3 * torch.randn(3, generator=g, dtype=cov.dtype)
        self.L0 = torch.linalg.cholesky(cov)
        self.log_s0 = torch.full((3,), -0.7, dtype=cov.dtype)

    def model(self, x):
        W, b = pyro.param("W", self.lg.W.clone()), pyro.param("b", self.lg.b.clone())
        with data_plate(x):
            z = pyro.sample("z", dist.Normal(x.new_zeros(3), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ W.T + b, self.lg.sigma).to_event(1), obs=x)

    def guide(self, x):
        loc = x @ pyro.param("A", self.A0.clone()).T + pyro.param("c", self.c0.clone())
        with data_plate(x):
            if self.exact:
                L = pyro.param("L", self.L0.clone(), constraint=constraints.lower_cholesky)
                pyro.sample("z", dist.MultivariateNormal(loc, scale_tril=L))
            else:
                pyro.sample("z", dist.Normal(loc, pyro.param("log_s", self.log_s0.clone()).exp()).to_event(1))

    def elbo_gradient(self, x):
        """∇ Σ_i ELBO_i in closed form (mean-field guide), at the parameters' starting values."""
        p = {"W": self.lg.W, "b": self.lg.b, "A": self.A0, "c": self.c0, "log_s": self.log_s0}
        p = {k: v.clone().requires_grad_() for k, v in p.items()}
        lg = LinearGaussian(latent_dim=3, obs_dim=5, sigma=self.lg.sigma, W=p["W"])
        lg.b = p["b"]
        elbo = lg.elbo(x, x @ p["A"].T + p["c"], (2 * p["log_s"]).exp().expand(len(x), 3)).sum()
        return dict(zip(p, torch.autograd.grad(elbo, list(p.values()))))


@pytest.fixture
def x():
    return LinearGaussian(latent_dim=3, obs_dim=5, sigma=0.7, seed=0).sample(6, seed=3)


@pytest.mark.parametrize("elbo,k", [("trace", 4), ("meanfield", 1), ("stl", 4), ("iwae", 1), ("dreg", 1)])
def test_mean_gradient_is_the_closed_form_elbo_gradient(x, elbo, k):
    pair = LearnedPair()
    exact = pair.elbo_gradient(x)
    m = gradient_moments(pair.model, pair.guide, x, elbo=elbo, particles=k, repeats=100)
    assert m.guide_params == ("A", "c", "log_s") and m.model_params == ("W", "b")
    for name, g in exact.items():
        se = (m.variance[name] / m.repeats).sqrt()
        assert torch.all((m.mean[name] - g).abs() <= Z * se + 1e-9), (name, m.mean[name], g, se)
        if elbo != "meanfield":  # analytic KL: b's gradient (and more) has no noise at all
            assert se.median() < 0.2 * g.abs().median(), "the tolerance must be tight enough to fail"


def test_iwae_at_many_particles_is_not_the_elbo_gradient(x):
    """The check above can fail: IWAE's K = 8 gradient is that of a tighter bound, not of the ELBO."""
    pair = LearnedPair()
    exact = pair.elbo_gradient(x)
    m = gradient_moments(pair.model, pair.guide, x, elbo="iwae", particles=8, repeats=100)
    assert any(torch.any((m.mean[n] - g).abs() > Z * (m.variance[n] / m.repeats).sqrt()) for n, g in exact.items())


@pytest.mark.parametrize("elbo,k", [("stl", 1), ("stl", 8), ("dreg", 1), ("dreg", 5), ("dreg", 50)])
def test_exact_posterior_guide_gets_exactly_zero_gradient(x, elbo, k):
    pair = LearnedPair(exact=True)
    m = gradient_moments(pair.model, pair.guide, x, elbo=elbo, particles=k, repeats=5)
    assert m.guide_params == ("A", "L", "c")
    for name in m.guide_params:  # all draws zero ⟺ mean² + variance = 0 (up to float64 rounding)
        assert (m.mean[name].pow(2) + m.variance[name]).max().sqrt() < 1e-10, name
    assert summarize(m, m.model_params).variance > 0  # the model's gradient is still noisy


@pytest.mark.parametrize("elbo,k", [("trace", 1), ("iwae", 5)])
def test_exact_posterior_guide_gradient_of_the_score_estimators_is_noise(x, elbo, k):
    """The check above can fail: with the score term kept, the same guide gets a nonzero gradient."""
    pair = LearnedPair(exact=True)
    m = gradient_moments(pair.model, pair.guide, x, elbo=elbo, particles=k, repeats=5)
    assert min(m.variance[n].max().item() for n in m.guide_params) > 1e-4
