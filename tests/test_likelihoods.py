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
    torch.testing.assert_close(
        make_likelihood("bernoulli", X_SHAPE)(logits, x).log_prob(x), expected
    )


def test_bernoulli_accepts_grey_levels_as_negative_cross_entropy():
    x, logits = _data()
    p = torch.sigmoid(logits)
    expected = x * p.log() + (1 - x) * (1 - p).log()
    torch.testing.assert_close(
        make_likelihood("bernoulli", X_SHAPE)(logits, x).log_prob(x), expected
    )


def _normal_logpdf(x, mu, sigma):
    return (
        -0.5 * ((x - mu) / sigma) ** 2
        - torch.log(torch.as_tensor(sigma, dtype=x.dtype))
        - 0.5 * math.log(2 * math.pi)
    )


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
    """d/dσ of the Gaussian NLL vanishes at σ = sqrt(MSE): the learned shared σ settles where the
    analytic σ* is."""
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


# ---------------------------------------------------------------------------------------------
# 8-bit likelihoods
# ---------------------------------------------------------------------------------------------
GRID = torch.arange(256, dtype=torch.float64) / 255


def _eight_bit(name, x_shape=(3, 2, 2), batch=4, seed=0, spread=2.0):
    lik = make_likelihood(name, x_shape, mixtures=3)
    g = torch.Generator().manual_seed(seed)
    out = torch.randn(batch, *lik.params_shape(x_shape), generator=g, dtype=torch.float64) * spread
    return lik, out, lik(out)


def _all_values(d):
    """log p of every value k/255, shape [256, *batch]."""
    return d.log_prob(GRID.reshape(256, *[1] * len(d.batch_shape)).expand(256, *d.batch_shape))


@pytest.mark.parametrize("name", ["discretized-logistic", "categorical"])
@pytest.mark.parametrize(
    "spread", [0.1, 2.0, 6.0]
)  # wide, moderate and very sharp logistics (log s down to −8)
def test_eight_bit_likelihoods_are_normalized_over_the_256_values(name, spread):
    _, _, d = _eight_bit(name, spread=spread)
    total = _all_values(d).exp().sum(0)
    torch.testing.assert_close(total, torch.ones_like(total), atol=1e-10, rtol=0)


def test_discretized_logistic_is_the_cdf_difference_with_open_edge_bins():
    lik, out, d = _eight_bit("discretized-logistic")
    # parameter-major channels: (logits, means, log-scales) × K × C
    logits, loc, log_scale = (
        t.movedim(1, -1) for t in out.reshape(4, 3, 3, 3, 2, 2).unbind(1)
    )  # [4, C, H, W, K]
    loc, scale = loc + 0.5, (log_scale - 2).clamp(min=-8).exp()
    k = GRID.reshape(256, 1, 1, 1, 1, 1)
    upper = torch.sigmoid((k + 0.5 / 255 - loc) / scale)
    lower = torch.sigmoid((k - 0.5 / 255 - loc) / scale)
    upper[-1], lower[0] = 1.0, 0.0  # the edge bins take the tails
    expected = ((upper - lower) * torch.softmax(logits, -1)).sum(-1)
    torch.testing.assert_close(_all_values(d).exp(), expected, atol=1e-12, rtol=1e-9)
    torch.testing.assert_close(d.mean, (torch.softmax(logits, -1) * loc.clamp(0, 1)).sum(-1))


def test_categorical_is_the_softmax_of_256_logits_per_sub_pixel():
    _, out, d = _eight_bit("categorical", x_shape=(2, 3))
    logits = out.reshape(
        4, 256, 2, 3
    )  # parameter-major: channel block j holds logit j of every sub-pixel
    x = torch.tensor([0.0, 1.0, 0.5])[torch.tensor([[0, 1, 2], [2, 1, 0]])].expand(4, 2, 3).double()
    k = (x * 255).round().long()
    expected = torch.log_softmax(logits, 1).gather(1, k.unsqueeze(1)).squeeze(1)
    torch.testing.assert_close(d.log_prob(x), expected)
    torch.testing.assert_close(
        d.mean, (torch.softmax(logits, 1) * GRID.reshape(1, 256, 1, 1)).sum(1)
    )


def _sharp_and_broad():
    """One element: 0.3 · logistic(0.2, s = 1.5 bins) + 0.7 · logistic(0.75, 0.05), and a 256-way
    categorical."""
    from pyro_vae.models.likelihoods import Categorical256, DiscretizedLogisticMixture

    dl = DiscretizedLogisticMixture(
        torch.tensor([[0.3, 0.7]]).log().double(),
        torch.tensor([[0.2, 0.75]]).double(),
        torch.tensor([[1.5 / 255, 0.05]]).log().double(),
    )
    logits = 3 * torch.randn(
        1, 256, generator=torch.Generator().manual_seed(0), dtype=torch.float64
    )
    return {"discretized-logistic": dl, "categorical": Categorical256(logits)}


@pytest.mark.parametrize("name", ["discretized-logistic", "categorical"])
def test_eight_bit_samples_follow_the_probabilities(name):
    """Empirical frequencies of n = 40000 draws of one element against p(k): total variation within
    2× its expectation.

    Each count is ≈ N(n p_k, n p_k (1 − p_k)), so E|p̂_k − p_k| ≈ sqrt(2 p_k / (π n)) and the
    expected TV is about ½ Σ_k sqrt(2 p_k / (π n)) (≈ 0.01 here); the TV of n draws concentrates
    around it (its sd is a few % of it). A sampler off by one bin moves ~0.1 of the mass of the
    sharp component (TV ≫ 0.02).
    """
    d = _sharp_and_broad()[name]
    torch.manual_seed(0)
    draws = d.sample((40000,))
    assert draws.shape == (40000, 1)
    k = (draws.flatten() * 255).round().long()
    assert torch.allclose(draws.flatten() * 255, k.double())  # values on the grid k/255
    p = _all_values(d).exp().flatten()
    tv = 0.5 * (torch.bincount(k, minlength=256).double() / len(k) - p).abs().sum()
    expected = 0.5 * (2 * p / (math.pi * len(k))).sqrt().sum()
    assert tv < 2 * expected, (tv, expected)
    torch.testing.assert_close(
        draws.mean(), (p * GRID).sum(), atol=4 * draws.std().item() / 200, rtol=0
    )


def test_eight_bit_decoder_output_must_match_params_shape():
    lik = make_likelihood("discretized-logistic", (3, 4, 4), mixtures=2)
    assert lik.params_shape((3, 4, 4)) == (18, 4, 4)
    assert lik(torch.zeros(5, 45, 4, 4)).logits.shape == (
        5,
        3,
        4,
        4,
        5,
    )  # K = 45 / (3·3) read from the shape
    with pytest.raises(
        ValueError, match=r"decoder output of shape \[P·3, 4, 4\].*got \(18, 3, 3\)"
    ):
        lik(torch.zeros(5, 18, 3, 3))
    with pytest.raises(ValueError, match=r"3K numbers per sub-pixel .*got 1"):
        lik(torch.zeros(5, 3, 4, 4))
    with pytest.raises(ValueError, match=r"\[256·1, 4\]"):
        make_likelihood("categorical", (1, 4))(torch.zeros(2, 4))
