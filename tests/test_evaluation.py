"""Evaluation figures and pictures against closed forms of linear-Gaussian models.

z ~ N(0, I), x | z ~ N(W z + b, σ² I): log p(x), the posterior N(m(x), Λ⁻¹) and the ELBO of any
Gaussian q are known exactly (tests/linear_gaussian.py), so NLL, KL, active units and decoded
pictures can be checked as numbers.
"""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from linear_gaussian import LinearGaussian
from PIL import Image

from pyro_vae import (
    VAE,
    data_plate,
    evaluate,
    log_likelihood,
    log_weights,
    make_guide,
    make_likelihood,
)
from pyro_vae.evaluation.metrics import (
    active_units,
    elbo_per_point,
    latent_sites,
    posterior_means,
)
from pyro_vae.evaluation.latents import posterior_moments
from pyro_vae.evaluation.pictures import (
    decode,
    interpolations,
    project_2d,
    save_run_pictures,
    traversals,
)
from pyro_vae.models.nets import MLP


def diagonal_guide(lg, scale_factor=1.0):
    """Amortized q(z|x) = N(m(x), diag s²): the exact posterior mean and the posterior's marginal
    scales × factor."""

    def guide(x):
        m, cov = lg.posterior(x)
        with data_plate(x):
            pyro.sample("z", dist.Normal(m, scale_factor * cov[0].diagonal().sqrt()).to_event(1))

    return guide


def closed_form_kl(lg, x, scale_factor=1.0):
    """KL(N(m, diag s²) ‖ N(0, I)) per dimension, averaged over x: ½(s² + m² − 1 − log s²)."""
    m, cov = lg.posterior(x)
    s2 = scale_factor**2 * cov[0].diagonal()
    return 0.5 * (s2 + m.pow(2) - 1 - s2.log()).mean(0)


# ---------------------------------------------------------------------------------------------
# NLL
# ---------------------------------------------------------------------------------------------
def test_nll_of_exact_posterior_equals_exact_log_px():
    """With q = p(z|x) every weight p(x, z)/q(z|x) equals p(x): the estimate is exact for any K."""
    lg = LinearGaussian(latent_dim=3, obs_dim=5)
    x = lg.sample(40)
    result = evaluate(lg.model, lg.exact_guide, x, nll_samples=7, verbose=False)
    assert result["nll"] == pytest.approx(-lg.log_px(x).mean().item(), abs=1e-9)
    assert result["elbo"] == pytest.approx(
        -result["nll"], abs=1e-9
    )  # zero gap for the exact posterior


def test_nll_of_meanfield_guide_converges_to_exact_log_px():
    """A diagonal q with inflated scales leaves a gap; K = 5000 importance samples close it to
    within 5 SE.

    The SE of log((1/K) Σ w_k) is std(w)/(√K · mean(w)) (delta method), estimated from the weights
    themselves.
    """
    lg = LinearGaussian(latent_dim=3, obs_dim=5)
    x = lg.sample(30)
    guide = diagonal_guide(lg, 1.3)
    K = 5000
    nll = -log_likelihood(lg.model, guide, x, num_samples=K)
    exact = lg.log_px(x)
    lw = log_weights(lg.model, guide, x, num_particles=K).log_w.double()
    w = (lw - lw.max(0).values).exp()
    se = w.std(0) / (math.sqrt(K) * w.mean(0))
    assert (nll + exact).abs().max() < 5 * se.max() + 1e-3
    m, cov = lg.posterior(x)
    elbo = lg.elbo(x, m, (1.3**2 * cov[0].diagonal()).expand(len(x), -1))
    assert (exact - elbo).min() > 20 * se.max()  # the gap is much larger than the NLL's error…
    assert torch.all(nll <= -elbo)  # …so NLL ≤ −ELBO holds image by image


def small_vae(latent_dim=3, x_shape=(1, 6, 6)):
    encoder = MLP(x_shape, [], 8, final_activation=True)
    decoder = MLP(latent_dim, [8], x_shape)
    guide = make_guide("diagonal", encoder, 8, latent_dim)
    return VAE(decoder, guide, make_likelihood("bernoulli", x_shape), latent_dim, x_shape)


def test_nll_below_negative_elbo_for_every_image_of_a_bernoulli_vae():
    """For a (randomly initialised) Bernoulli VAE, −log p̂(x) with K = 2000 ≤ −ELBO (200 particles)
    image by image."""
    vae = small_vae()
    g = torch.Generator().manual_seed(3)
    x = torch.bernoulli(torch.full((25, 1, 6, 6), 0.3), generator=g)
    nll = -log_likelihood(vae.model, vae.guide, x, num_samples=2000)
    elbo = elbo_per_point(vae.model, vae.guide, x, num_particles=200)
    assert torch.all(nll <= -elbo.double())
    result = evaluate(vae.model, vae.guide, x, nll_samples=2000, elbo_particles=200)
    assert result["nll"] <= -result["elbo"]
    assert result["elbo"] == pytest.approx(result["recon"] - result["kl"], abs=1e-9)


# ---------------------------------------------------------------------------------------------
# ELBO terms and KL per dimension
# ---------------------------------------------------------------------------------------------
def test_elbo_terms_and_kl_per_dim_match_closed_forms():
    """kl_per_dim is analytic (Normal ‖ Normal): equal to ½(s² + m² − 1 − log s²) to rounding; ELBO
    within MC error."""
    lg = LinearGaussian(latent_dim=3, obs_dim=5)
    x = lg.sample(200)
    guide = diagonal_guide(lg, 0.8)
    result = evaluate(lg.model, guide, x, nll_samples=0, elbo_particles=400, verbose=False)
    expected_kl = closed_form_kl(lg, x, 0.8)
    assert torch.allclose(
        torch.tensor(result["kl_per_dim"], dtype=torch.float64), expected_kl, atol=1e-10
    )
    m, cov = lg.posterior(x)
    elbo = lg.elbo(x, m, (0.8**2 * cov[0].diagonal()).expand(len(x), -1)).mean().item()
    # 200 images × 400 particles: the MC standard error of the mean ELBO is below 0.01 nats here.
    assert result["elbo"] == pytest.approx(elbo, abs=0.05)
    assert result["kl"] == pytest.approx(expected_kl.sum().item(), abs=0.05)
    assert "nll" not in result and result["images"] == 200 and result["latent_sites"] == ["z"]


def affine_normal(loc, scale):
    """N(loc, scale²) written as an affine map of N(0, 1): torch knows no mean and no KL for it."""
    return dist.TransformedDistribution(
        dist.Normal(torch.zeros_like(loc), torch.ones_like(loc)),
        [dist.transforms.AffineTransform(loc, scale)],
    )


def test_monte_carlo_paths_for_distributions_without_mean_or_kl():
    """Posterior mean by MC (no ``fn.mean``) and KL per dimension by MC (no registered KL), against
    closed forms."""
    lg = LinearGaussian(latent_dim=2, obs_dim=4)
    x = lg.sample(300)
    m, cov = lg.posterior(x)
    s = cov[0].diagonal().sqrt()

    def guide(x):
        mean, _ = lg.posterior(x)
        with data_plate(x):
            pyro.sample("z", affine_normal(mean, s.expand_as(mean)).to_event(1))

    means = posterior_means(guide, x, mc_samples=2000)["z"]
    assert (means - m).abs().max() < 5 * s.max() / math.sqrt(2000)
    result = evaluate(lg.model, guide, x, nll_samples=0, elbo_particles=200, verbose=False)
    # MC KL over 300 images × 200 particles: per-dimension standard error < 0.01 nats.
    assert torch.allclose(
        torch.tensor(result["kl_per_dim"], dtype=torch.float64), closed_form_kl(lg, x), atol=0.05
    )


# ---------------------------------------------------------------------------------------------
# active units
# ---------------------------------------------------------------------------------------------
def dead_dims_model(dead=(2, 3), latent_dim=5, obs_dim=6):
    """A linear-Gaussian model whose dimensions ``dead`` do not reach x (zero columns of W)."""
    g = torch.Generator().manual_seed(0)
    W = torch.randn(obs_dim, latent_dim, generator=g, dtype=torch.float64)
    W[:, list(dead)] = 0
    return LinearGaussian(latent_dim, obs_dim, W=W)


def test_active_units_count_the_live_dimensions_and_their_variance_is_the_closed_form():
    """E[z|x] = A(x − b), A = Λ⁻¹Wᵀ/σ², so Var_x E[z_d|x] = (A Cov(x) Aᵀ)_dd: zero for dead dims."""
    lg = dead_dims_model()
    x = lg.sample(4000)
    result = evaluate(lg.model, diagonal_guide(lg), x, nll_samples=0, verbose=False)
    assert result["active_units"] == 3 and result["latent_dims"] == 5
    assert result["kl_per_dim"][2] == pytest.approx(0, abs=1e-12) and result["kl_per_dim"][
        3
    ] == pytest.approx(0, abs=1e-12)
    A = torch.linalg.inv(lg.precision()) @ lg.W.T / lg.sigma**2
    expected_var = (A @ lg.marginal().covariance_matrix @ A.T).diagonal()
    count, var = active_units(posterior_means(diagonal_guide(lg), x))["z"]
    # the sample variance of 4000 points has relative SE √(2/4000) ≈ 2.2 %
    live = expected_var > 0
    assert torch.allclose(var[live], expected_var[live], rtol=0.12)
    assert torch.all(var[~live] == 0) and count == 3
    assert result["warnings"] == []


def test_active_units_subtract_the_monte_carlo_noise_of_the_means():
    """z₁ ~ N(0, 1) whatever x; z₂ | z₁ ~ N([z₁, z₁ + x], 0.1²): E[z₂ | x] = [0, x], so Var_x is
    exactly [0, Var x = 1]. Each of M = 8 draws of z₁ adds Var z₁ / M = 1/8 to the variance of the
    estimated means; subtracting s²/M leaves an unbiased estimate with s.d. ≈ (1/8)·√(2/N)·1.1 ≈
    0.003 at N = 4000 (so within 0.015 of 0, five s.d.), and the same draws without the correction
    give about 1/8."""
    n = 4000
    x = torch.randn(n)

    def guide(x):
        with pyro.plate("data", len(x)):
            z1 = pyro.sample("z1", dist.Normal(torch.zeros_like(x), 1.0))
            loc = torch.stack([z1, z1 + x], -1)
            pyro.sample("z2", dist.Normal(loc, 0.1).to_event(1))

    pyro.set_rng_seed(0)
    means, noise = posterior_moments(guide, x, mc_samples=8)
    assert torch.all(noise["z1"] == 0)  # z1's mean is exact: 0, whatever the draws
    count, var = active_units(means, noise=noise)["z2"]
    assert var[0].abs() < 0.015 and var[1] == pytest.approx(x.var().item(), rel=0.05)
    assert count == 1
    biased = active_units(means)["z2"][1]
    assert biased[0] == pytest.approx(1 / 8, rel=0.15) and active_units(means)["z2"][0] == 2


def test_collapse_warning_when_no_dimension_reaches_x(capsys):
    lg = dead_dims_model(dead=range(4), latent_dim=4)
    x = lg.sample(100)
    result = evaluate(lg.model, diagonal_guide(lg), x, nll_samples=0)
    assert result["active_units"] == 0
    assert result["kl"] == pytest.approx(0, abs=1e-12)
    assert any("collapse" in w for w in result["warnings"])
    assert "posterior collapse" in capsys.readouterr().err
    with pytest.warns(UserWarning, match="collapse"):
        evaluate(lg.model, diagonal_guide(lg), x, nll_samples=0, verbose=False)


def test_several_latent_sites_give_one_count_per_site_in_guide_order():
    """x = W₁ z₁ + W₂ z₂ + b with W₂ = 0: z₂ is dead; the guide samples z2 before z1."""
    lg = LinearGaussian(latent_dim=2, obs_dim=5)

    def model(x):
        with data_plate(x):
            z1 = pyro.sample("z1", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
            pyro.sample("z2", dist.Normal(x.new_zeros(3), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z1 @ lg.W.T + lg.b, lg.sigma).to_event(1), obs=x)

    def guide(x):
        m, cov = lg.posterior(x)
        with data_plate(x):
            pyro.sample("z2", dist.Normal(x.new_zeros(3), 1.0).to_event(1))
            pyro.sample("z1", dist.MultivariateNormal(m, covariance_matrix=cov))

    x = lg.sample(300)
    assert latent_sites(guide, x) == ["z2", "z1"]
    with pytest.warns(UserWarning, match="'z2' has no active unit"):
        result = evaluate(model, guide, x, nll_samples=5, verbose=False)
    assert result["active_units"] == [0, 2] and result["latent_dims"] == [3, 2]
    assert result["kl_per_dim"][0] == pytest.approx([0, 0, 0], abs=1e-12)
    assert result["kl_per_dim"][1] is None  # a full-covariance q has no per-dimension KL
    assert result["nll"] == pytest.approx(-lg.log_px(x).mean().item(), abs=1e-9)
    assert any("'z2'" in w for w in result["warnings"])


def test_evaluate_rejects_bad_input():
    lg = LinearGaussian()
    with pytest.raises(ValueError, match="at least 2"):
        evaluate(lg.model, lg.exact_guide, lg.sample(1))
    with pytest.raises(ValueError, match="nll_samples"):
        evaluate(lg.model, lg.exact_guide, lg.sample(4), nll_samples=-1)


# ---------------------------------------------------------------------------------------------
# pictures: decoding through the model's own trace, grid sizes
# ---------------------------------------------------------------------------------------------
def unit_range_model():
    """A linear-Gaussian model whose means W z + b stay inside [0, 1] for |z| ≤ 3 (the pictures
    clamp to [0, 1])."""
    return LinearGaussian.unit_range(obs_dim=4, sigma=0.05, w_scale=0.05, seed=1)


def test_decode_interpolations_and_traversals_are_the_models_means():
    lg = unit_range_model()
    guide = diagonal_guide(lg)
    x = lg.sample(6)
    m, _ = lg.posterior(x)
    z = torch.randn(6, 2, dtype=torch.float64)
    assert torch.allclose(decode(lg.model, {"z": z}, x), z @ lg.W.T + lg.b)
    lines = interpolations(lg.model, guide, x[:3], x[3:], steps=5)
    t = torch.linspace(0, 1, 5, dtype=torch.float64).reshape(1, 5, 1)
    expected = ((1 - t) * m[:3, None] + t * m[3:, None]) @ lg.W.T + lg.b
    assert lines.shape == (3, 5, 4) and torch.allclose(lines, expected)
    values = torch.tensor([-2.0, 0.0, 2.0])
    rows = traversals(lg.model, guide, x[:1], values=values)
    assert rows.shape == (2, 3, 4)
    for d in range(2):
        for j, v in enumerate(values):
            zd = m[0].clone()
            zd[d] = v
            assert torch.allclose(rows[d, j], zd @ lg.W.T + lg.b)


def test_project_2d_keeps_small_latents_and_finds_the_principal_plane():
    z2 = torch.randn(50, 2)
    assert torch.equal(project_2d(z2), z2.double())
    # points on a plane spanned by two orthonormal directions in 5-D: PCA keeps their pairwise
    # distances
    basis, _ = torch.linalg.qr(torch.randn(5, 2, dtype=torch.float64))
    coords = torch.randn(50, 2, dtype=torch.float64) * torch.tensor([3.0, 1.0], dtype=torch.float64)
    xy = project_2d(coords @ basis.T + 7)
    assert torch.allclose(torch.cdist(xy, xy), torch.cdist(coords, coords), atol=1e-6)


def test_run_pictures_exist_with_the_right_grid_sizes(tmp_path):
    """save_image pads by 2 pixels: r rows × c columns of 6×6 images give (8r + 2) × (8c + 2)
    pixels."""
    vae = small_vae(latent_dim=4)
    x = torch.bernoulli(torch.full((16, 1, 6, 6), 0.3))
    labels = torch.arange(16) % 3
    (tmp_path / "metrics.jsonl").write_text(
        '{"epoch": 1, "train_loss": 30.0, "test_elbo": -29.0}\n'
        '{"epoch": 2, "train_loss": 25.0, "test_elbo": -26.0}\n'
    )
    paths = save_run_pictures(vae.model, vae.guide, x, str(tmp_path), labels=labels)
    expected = {  # name: (rows, columns)
        "samples": (2, 8),  # 16 prior samples, 8 per row
        "reconstructions": (4, 8),  # 2 × (8 inputs above 8 reconstructions)
        "interpolations": (8, 10),  # 8 pairs × 10 steps
        "traversals": (4, 9),  # 4 latent dimensions × 9 values
    }
    for name, (r, c) in expected.items():
        with Image.open(paths[name]) as im:
            assert im.size == (8 * c + 2, 8 * r + 2), name
    for name in ("loss", "latent_scatter"):
        with Image.open(paths[name]) as im:
            assert im.size[0] > 100 and im.size[1] > 100


def test_traversal_of_a_top_latent_decodes_through_the_conditional_mean_of_the_lower_one():
    """z₂ ~ N(0, 1), z₁ | z₂ ~ N(a z₂, 0.1²), x | z₁ ~ N(W z₁ + b, σ²): traversing z₂ = v gives W (a
    v) + b."""
    lg = unit_range_model()
    a = torch.tensor([0.5, -1.0], dtype=torch.float64)

    def model(x):
        with data_plate(x):
            z2 = pyro.sample("z2", dist.Normal(x.new_zeros(1), 1.0).to_event(1))
            z1 = pyro.sample("z1", dist.Normal(z2 * a, 0.1).to_event(1))
            pyro.sample("x", dist.Normal(z1 @ lg.W.T + lg.b, lg.sigma).to_event(1), obs=x)

    def guide(x):
        with data_plate(x):
            pyro.sample("z2", dist.Normal(x[:, :1], 1.0).to_event(1))
            pyro.sample("z1", dist.Normal(x[:, 1:3], 0.1).to_event(1))

    x = lg.sample(1)
    values = torch.tensor([-2.0, 1.0, 3.0])
    rows = traversals(model, guide, x, site="z2", values=values)
    assert rows.shape == (1, 3, 4)
    assert torch.allclose(rows[0], (values[:, None].double() * a) @ lg.W.T + lg.b)
    # traversing z1 keeps z1's other dimension at E_q[z1 | x] = x[1:3]
    rows = traversals(model, guide, x, site="z1", values=values)
    m1 = x[0, 1:3]
    for d in range(2):
        z = m1.repeat(3, 1)
        z[:, d] = values
        assert torch.allclose(rows[d], z @ lg.W.T + lg.b)
