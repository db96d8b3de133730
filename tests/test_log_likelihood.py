"""pyro_vae.log_likelihood against the exact log p(x) of the linear-Gaussian model."""

import math
import os

import pyro
import pytest
import torch
from conftest import cuda
from linear_gaussian import LinearGaussian

import pyro_vae.estimators.importance as importance
from pyro_vae import data_plate, log_likelihood


def widened_posterior_guide(lg, x, shift=0.3, widen=1.2):
    """q(z|x_i) = N(m_i + shift·sd, widen² Σ): close to, but not, the posterior; light-tailed
    weights."""
    mean, cov = lg.posterior(x)
    chol = widen * torch.linalg.cholesky(cov[0])
    loc = mean + shift * cov[0].diagonal().sqrt()

    def guide(xb, num_data=None):
        # log_likelihood passes chunks of x: find each row's loc by matching the data (rows of x are
        # distinct)
        rows = (xb[:, None, :] == x[None, :, :]).all(-1).float().argmax(1)
        with data_plate(xb):
            pyro.sample("z", pyro.distributions.MultivariateNormal(loc[rows], scale_tril=chol))

    return guide


def test_exact_guide_gives_exact_log_px_per_point_for_any_chunking():
    lg = LinearGaussian()
    x = lg.sample(7)
    for batch_size, max_elements in ((None, 2**16), (3, 10), (1, 1)):
        est = log_likelihood(
            lg.model,
            lg.exact_guide,
            x,
            num_samples=20,
            batch_size=batch_size,
            max_elements=max_elements,
        )
        assert est.shape == (7,) and est.dtype == torch.float64
        torch.testing.assert_close(est, lg.log_px(x), rtol=1e-12, atol=1e-10)


def test_matches_exact_log_px_per_point_and_stays_within_the_chunk(monkeypatch):
    lg = LinearGaussian()
    x = lg.sample(40)
    guide = widened_posterior_guide(lg, x)
    passes = []
    real = importance.log_weights

    def recording(model, guide, xb, *args, num_particles=1, **kwargs):
        passes.append((num_particles, len(xb)))
        return real(model, guide, xb, *args, num_particles=num_particles, **kwargs)

    monkeypatch.setattr(importance, "log_weights", recording)
    K, max_elements = 5000, 4096
    est = log_likelihood(lg.model, guide, x, num_samples=K, max_elements=max_elements)
    assert max(k * b for k, b in passes) <= max_elements
    assert sum(k * b for k, b in passes) == K * len(x)  # every point got exactly K samples
    # tolerance: log of a mean of K weights has sd ≈ sqrt(Var(w/p) / K), bias ≈ −Var(w/p) / 2K
    lw = real(lg.model, guide, x, num_particles=K).log_w
    rel_var = (lw - lg.log_px(x)).exp().var(0)
    assert ((est - lg.log_px(x)).abs() < 5 * (rel_var / K).sqrt() + rel_var / K).all()
    assert (est - lg.log_px(x)).abs().max() < 0.05


def test_float32_model_accumulates_in_float64_and_subsampling_is_ignored():
    """A float32 pair still gets float64 sums; the data plate's num_data scale does not enter log
    p(x_i)."""
    lg = LinearGaussian(dtype=torch.float32)
    x = lg.sample(5)
    est = log_likelihood(lg.model, lg.exact_guide, x, num_samples=64, num_data=1000)
    assert est.dtype == torch.float64
    torch.testing.assert_close(est, lg.log_px(x).double(), rtol=1e-5, atol=1e-4)


def test_each_cpu_pass_hands_freed_memory_back(monkeypatch):
    """10k one-image passes fragmented glibc's heap (a VampPrior evaluation grew to 24 GB): every
    pass trims it."""
    from pyro_vae.core.host_memory import release_freed_memory

    lg = LinearGaussian()
    x = lg.sample(6)
    passes = []
    monkeypatch.setattr(
        importance, "release_freed_memory", lambda: passes.append(1) or release_freed_memory()
    )
    est = log_likelihood(lg.model, lg.exact_guide, x, num_samples=8, batch_size=2, max_elements=8)
    torch.testing.assert_close(est, lg.log_px(x), rtol=1e-12, atol=1e-10)
    assert len(passes) == 3 * 2  # 3 chunks of 2 points, 2 passes of 4 particles each
    assert release_freed_memory() == (os.uname().sysname == "Linux")


def test_bad_arguments_raise():
    lg = LinearGaussian()
    x = lg.sample(3)
    with pytest.raises(ValueError, match="num_samples"):
        log_likelihood(lg.model, lg.exact_guide, x, num_samples=0)


@cuda
def test_log_likelihood_on_cuda():
    lg = LinearGaussian(device="cuda")
    x = lg.sample(9)
    est = log_likelihood(lg.model, lg.exact_guide, x, num_samples=100, max_elements=64)
    assert est.device.type == "cuda" and est.dtype == torch.float64
    torch.testing.assert_close(est, lg.log_px(x), rtol=1e-10, atol=1e-8)
    assert math.isfinite(est.sum().item())
