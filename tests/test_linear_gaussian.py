"""The closed forms of tests/linear_gaussian.py, checked against brute force so other tests can rely
on them."""

import torch
from linear_gaussian import LinearGaussian


def test_posterior_and_marginal_satisfy_bayes_rule():
    lg = LinearGaussian()
    x = lg.sample(4)
    z = torch.randn(4, lg.latent_dim, dtype=torch.float64)
    mean, cov = lg.posterior(x)
    log_joint = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(
        -1
    ) + torch.distributions.Normal(z @ lg.W.T + lg.b, lg.sigma).log_prob(x).sum(-1)
    log_post = torch.distributions.MultivariateNormal(mean, cov).log_prob(z)
    torch.testing.assert_close(log_joint - log_post, lg.log_px(x))


def test_elbo_equals_log_px_at_posterior_and_is_below_elsewhere():
    lg = LinearGaussian()
    x = lg.sample(6)
    mean, cov = lg.posterior(x)
    torch.testing.assert_close(lg.elbo(x, mean, cov), lg.log_px(x))
    assert (lg.elbo(x, mean + 0.3, cov) < lg.log_px(x)).all()
    # the best diagonal guide: mean = posterior mean, variances = 1 / Λ_ii; its gap is the
    # mean-field gap
    diag = 1 / lg.precision().diagonal().expand(6, -1)
    gap = lg.log_px(x) - lg.elbo(x, mean, diag)
    torch.testing.assert_close(gap, lg.meanfield_gap().expand(6))
