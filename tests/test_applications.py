"""Applications against known answers: ROC AUC by hand and by pair counting, anomaly scores against
the exact log p(x) of a linear-Gaussian model, denoising by projection onto its latent subspace,
embeddings = posterior means."""

import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from linear_gaussian import LinearGaussian

from pyro_vae import data_plate
from pyro_vae.evaluation.applications import (
    anomaly_scores,
    corrupt,
    denoise,
    embeddings,
    reconstruct,
    roc_auc,
    save_embeddings,
)


# ---------------------------------------------------------------------------------------------
# ROC AUC
# ---------------------------------------------------------------------------------------------
def test_roc_auc_known_answers():
    assert (
        roc_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == 0.75
    )  # 3 of 4 (positive, negative) pairs ordered
    assert roc_auc([1, 2, 3, 4], [0, 0, 1, 1]) == 1.0
    assert roc_auc([4, 3, 2, 1], [0, 0, 1, 1]) == 0.0
    assert roc_auc([5, 5, 5, 5], [0, 1, 0, 1]) == 0.5  # every pair tied: ½ each
    assert roc_auc([1, 1, 2], [0, 1, 1]) == 0.75  # pairs (1 vs 1): ½, (2 vs 1): 1
    assert roc_auc(torch.tensor([0.2, 0.9]), torch.tensor([False, True])) == 1.0


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 5), st.booleans()), min_size=2, max_size=40).filter(
        lambda p: 0 < sum(y for _, y in p) < len(p)
    )
)
def test_roc_auc_equals_pair_counting_with_ties(pairs):
    """AUC = P(s₊ > s₋) + ½ P(s₊ = s₋) over all (positive, negative) pairs; small integer scores
    force ties."""
    s = np.array([p[0] for p in pairs], dtype=float)
    y = np.array([p[1] for p in pairs])
    pos, neg = s[y], s[~y]
    expected = ((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (
        len(pos) * len(neg)
    )
    assert roc_auc(s, y) == pytest.approx(expected, abs=1e-12)


def test_roc_auc_of_shifted_gaussians_is_phi_of_shift_over_root_two():
    """s₊ ~ N(μ, 1), s₋ ~ N(0, 1): AUC = P(s₊ − s₋ > 0) = Φ(μ/√2); SE ≤ √(AUC(1−AUC)/min(n₊,n₋)) <
    0.005."""
    g = torch.Generator().manual_seed(0)
    mu, n = 1.0, 20000
    s = torch.cat([torch.randn(n, generator=g) + mu, torch.randn(n, generator=g)])
    y = torch.cat([torch.ones(n), torch.zeros(n)])
    expected = 0.5 * (1 + math.erf(mu / 2))  # Φ(μ/√2) = ½(1 + erf(μ/2))
    assert roc_auc(s, y) == pytest.approx(expected, abs=0.015)


def test_roc_auc_rejects_bad_input():
    with pytest.raises(ValueError, match="both classes"):
        roc_auc([1, 2, 3], [1, 1, 1])
    with pytest.raises(ValueError, match="same length"):
        roc_auc([1, 2, 3], [0, 1])
    with pytest.raises(ValueError, match="0/1"):
        roc_auc([1, 2, 3], [0, 2, 1])
    with pytest.raises(ValueError, match="NaN"):
        roc_auc([1, float("nan")], [0, 1])


# ---------------------------------------------------------------------------------------------
# anomaly scores
# ---------------------------------------------------------------------------------------------
def test_anomaly_scores_are_exact_negative_log_px_with_the_exact_posterior():
    lg = LinearGaussian(latent_dim=2, obs_dim=4)
    x = lg.sample(30)
    expected = -lg.log_px(x)
    assert torch.allclose(
        anomaly_scores(lg.model, lg.exact_guide, x, score="nll", num_samples=3), expected
    )
    assert torch.allclose(
        anomaly_scores(lg.model, lg.exact_guide, x, score="elbo", num_samples=3), expected
    )
    with pytest.raises(ValueError, match="unknown anomaly score"):
        anomaly_scores(lg.model, lg.exact_guide, x, score="mse")


def test_anomaly_auc_of_exact_scores_matches_the_auc_of_the_exact_log_px():
    """Shifted points are anomalies; the AUC of the estimated scores equals the AUC of the
    closed-form −log p(x)."""
    lg = LinearGaussian(latent_dim=2, obs_dim=4)
    normal, odd = lg.sample(200, seed=1), lg.sample(50, seed=2) + 1.5
    x = torch.cat([normal, odd])
    y = torch.cat([torch.zeros(200), torch.ones(50)])
    auc = roc_auc(anomaly_scores(lg.model, lg.exact_guide, x, num_samples=2), y)
    assert auc == roc_auc(-lg.log_px(x), y)
    assert auc > 0.8


# ---------------------------------------------------------------------------------------------
# corruption, denoising, embeddings
# ---------------------------------------------------------------------------------------------
def test_corrupt_changes_the_expected_fraction_of_pixels():
    x = torch.rand(200, 1, 10, 10)
    g = torch.Generator().manual_seed(0)
    masked, hit = corrupt(x, "mask", 0.3, generator=g)
    # 20000 Bernoulli(0.3) pixels: SE of the fraction ≈ 0.0032
    assert hit.float().mean().item() == pytest.approx(0.3, abs=0.02)
    assert torch.all(masked[hit] == 0) and torch.equal(masked[~hit], x[~hit])
    flipped, hit = corrupt(x, "flip", 0.3, generator=g)
    assert torch.allclose(flipped[hit], 1 - x[hit]) and torch.equal(flipped[~hit], x[~hit])
    same, _ = corrupt(x, "gaussian", 0.0)
    assert torch.equal(same, x)
    noisy, _ = corrupt(x, "gaussian", 0.5)
    assert noisy.min() >= 0 and noisy.max() <= 1
    with pytest.raises(ValueError, match="unknown corruption"):
        corrupt(x, "blur", 0.1)
    with pytest.raises(ValueError, match="level"):
        corrupt(x, "mask", 1.5)


def low_rank_images():
    """A linear-Gaussian model of "images" in [0, 1]: 2 latent dims, 50 pixels, means 0.5 + W z (|W|
    ~ 0.02), σ = 0.01."""
    return LinearGaussian.unit_range(obs_dim=50, sigma=0.01, w_scale=0.02, seed=0)


def test_reconstruct_is_the_model_mean_at_the_posterior_mean():
    lg = low_rank_images()
    x = lg.sample(10)
    m, _ = lg.posterior(x)
    assert torch.allclose(reconstruct(lg.model, lg.exact_guide, x), m @ lg.W.T + lg.b)


def test_denoising_projects_gaussian_noise_onto_the_latent_subspace():
    """Noise of σ = 0.05 on 50 pixels; the posterior-mean reconstruction keeps about 2/50 of its
    energy.

    Expected MSE: noisy ≈ 0.05² = 0.0025; denoised ≈ 0.0025 · 2/50 + σ² ≈ 2e-4, so well under a
    quarter.
    """
    lg = low_rank_images()
    x = lg.sample(400)
    assert x.min() > 0.05 and x.max() < 0.95  # no clipping: the noise is exactly Gaussian
    out = denoise(lg.model, lg.exact_guide, x, "gaussian", 0.05, seed=1)
    assert out["mse_noisy"] == pytest.approx(0.05**2, rel=0.05)
    assert out["mse_denoised"] < 0.25 * out["mse_noisy"]
    assert (
        out["mse_clean_reconstruction"] < 0.1 * out["mse_noisy"]
    )  # ≈ σ² = 1e-4, the data's own noise
    assert out["noisy"].shape == x.shape and out["denoised"].shape == x.shape


def test_embeddings_are_posterior_means_and_round_trip_through_npy(tmp_path):
    lg = LinearGaussian(latent_dim=3, obs_dim=5)
    x = lg.sample(20)
    labels = torch.arange(20) % 4

    def guide(x):
        m, cov = lg.posterior(x)
        with data_plate(x):
            pyro.sample("z", dist.Normal(m, cov[0].diagonal().sqrt()).to_event(1))

    m, _ = lg.posterior(x)
    assert torch.allclose(embeddings(guide, x), m)
    z_path, y_path = save_embeddings(guide, x, labels, str(tmp_path), prefix="emb")
    assert np.allclose(np.load(z_path), m.numpy(), atol=1e-6)
    assert np.array_equal(np.load(y_path), labels.numpy())
    with pytest.raises(ValueError, match="no latent site 'w'"):
        embeddings(guide, x, site="w")
