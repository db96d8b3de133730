"""Each likelihood's log-density against its closed form."""
import math

import pytest
import torch

from pyro_vae.models.likelihoods import LIKELIHOODS, make_likelihood

X_SHAPE = (1, 4, 4)


def _data(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(3, *X_SHAPE, generator=g, dtype=torch.float64)
    out = torch.randn(3, *X_SHAPE, generator=g, dtype=torch.float64)
    return x, out


def test_bernoulli_is_binary_cross_entropy_of_logits():
    x, logits = _data()
    x = x.round()
    p = torch.sigmoid(logits)
    expected = x * p.log() + (1 - x) * (1 - p).log()
    torch.testing.assert_close(make_likelihood("bernoulli", X_SHAPE)(logits, x).log_prob(x), expected)


def test_bernoulli_accepts_grey_levels_as_negative_cross_entropy():
    x, logits = _data()
    p = torch.sigmoid(logits)
    expected = x * p.log() + (1 - x) * (1 - p).log()
    torch.testing.assert_close(make_likelihood("bernoulli", X_SHAPE)(logits, x).log_prob(x), expected)


def _normal_logpdf(x, mu, sigma):
    return -0.5 * ((x - mu) / sigma) ** 2 - torch.log(torch.as_tensor(sigma, dtype=x.dtype)) - 0.5 * math.log(2 * math.pi)


def test_fixed_gaussian():
    x, mu = _data()
    lik = make_likelihood("gaussian", X_SHAPE, sigma=0.3)
    torch.testing.assert_close(lik(mu, x).log_prob(x), _normal_logpdf(x, mu, 0.3))


def test_learned_gaussian_has_one_sigma_per_pixel():
    x, mu = _data()
    lik = make_likelihood("learned-gaussian", X_SHAPE, sigma=0.2).double()
    assert lik.log_sigma.shape == X_SHAPE
    with torch.no_grad():
        lik.log_sigma.copy_(torch.linspace(-2, 0, 16, dtype=torch.float64).reshape(X_SHAPE))
    torch.testing.assert_close(lik(mu, x).log_prob(x), _normal_logpdf(x, mu, lik.log_sigma.exp()))


def test_sigma_vae_learned_sigma_is_optimal_at_root_mse():
    """d/dσ of the Gaussian NLL vanishes at σ = sqrt(MSE): the learned shared σ settles where the analytic σ* is."""
    x, mu = _data()
    lik = make_likelihood("sigma-vae", X_SHAPE).double()
    mse = (x - mu).pow(2).mean()
    with torch.no_grad():
        lik.log_sigma.fill_(0.5 * mse.log().item())
    lik(mu, x).log_prob(x).sum().backward()
    assert abs(lik.log_sigma.grad.item()) < 1e-8
    with torch.no_grad():
        lik.log_sigma.add_(0.1)
    lik.log_sigma.grad = None
    lik(mu, x).log_prob(x).sum().backward()
    assert lik.log_sigma.grad.item() < 0  # σ too large: the likelihood pushes it down


def test_sigma_vae_optimal_is_profile_likelihood():
    """With σ*² = MSE the total log-density is −D/2·(log 2πσ*² + 1)."""
    x, mu = _data()
    lik = make_likelihood("sigma-vae-optimal", X_SHAPE).double()
    total = lik(mu, x).log_prob(x).sum()
    n = x.numel()
    expected = -0.5 * n * (torch.log(2 * math.pi * (x - mu).pow(2).mean()) + 1)
    torch.testing.assert_close(total, expected)
    # in eval mode (or without x) it uses the running σ*, updated towards the batch σ*
    assert lik.sigma_star.item() != 0.1
    lik.eval()
    torch.testing.assert_close(lik(mu, x).scale, lik.sigma_star.to(mu).expand_as(mu))


def test_unknown_likelihood_lists_valid_names():
    with pytest.raises(ValueError, match="bernoulli"):
        make_likelihood("poisson", X_SHAPE)
    assert set(LIKELIHOODS) >= {"bernoulli", "gaussian", "learned-gaussian", "sigma-vae"}
