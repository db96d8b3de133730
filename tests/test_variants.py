"""β-VAE, KL warm-up and free bits (pyro_vae.estimators.variants) against closed forms on the
linear-Gaussian model."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from linear_gaussian import LinearGaussian
from pyro.infer import TraceMeanField_ELBO
from torch.distributions import kl_divergence

from pyro_vae import data_plate, make_elbo
from pyro_vae.estimators.variants import FreeBits_ELBO, KLSchedule, beta_scale, check_estimator
from pyro_vae.evaluation.metrics import elbo_terms

N = 100  # full data size: the data plate scales each batch of 8 by N / 8


@pytest.fixture
def pair():
    lg = LinearGaussian(latent_dim=3, obs_dim=5)
    x = lg.sample(8)
    g = torch.Generator().manual_seed(3)
    loc = torch.randn(8, 3, generator=g, dtype=torch.float64)
    scale = torch.rand(8, 3, generator=g, dtype=torch.float64) + 0.3
    guide = lg.meanfield_guide(loc, scale)
    kl = kl_divergence(
        dist.Normal(loc, scale), dist.Normal(0.0, 1.0)
    )  # [8, 3], per point and dimension
    return (lambda x: lg.model(x, N)), (lambda x: guide(x, N)), x, kl, lg, loc, scale


def _loss(elbo, model, guide, x, beta, seed=1):
    pyro.set_rng_seed(seed)
    return elbo.differentiable_loss(beta_scale(model, beta), beta_scale(guide, beta), x).item()


def test_beta_scales_only_the_analytic_kl(pair):
    model, guide, x, kl, *_ = pair
    elbo = TraceMeanField_ELBO(num_particles=3, vectorize_particles=True, max_plate_nesting=1)
    kl_total = N / len(x) * kl.sum().item()
    base = _loss(elbo, model, guide, x, 1.0)
    for beta in (0.0, 0.5, 4.0):  # same seed, same z: the losses differ by exactly (β − 1)·KL
        assert _loss(elbo, model, guide, x, beta) - base == pytest.approx(
            (beta - 1) * kl_total, rel=1e-9
        )


def test_beta_zero_is_the_closed_form_reconstruction(pair):
    model, guide, x, kl, lg, loc, scale = pair
    elbo = TraceMeanField_ELBO(num_particles=20000, vectorize_particles=True, max_plate_nesting=1)
    recon = lg.elbo(x, loc, scale**2) + kl.sum(-1)  # closed-form E_q log p(x|z) per point
    expected = -N / len(x) * recon.sum().item()
    # MC over 20000 particles: the per-point std of log p(x|z) is a few nats, so 1e-3 relative is
    # ~10 σ
    assert _loss(elbo, model, guide, x, 0.0) == pytest.approx(expected, rel=1e-3)


def test_per_site_beta_and_observed_sites_untouched(pair):
    model, guide, x, *_ = pair
    trace = pyro.poutine.trace(beta_scale(model, {"z": 3.0})).get_trace(x)
    assert trace.nodes["z"]["scale"] == pytest.approx(3.0 * N / len(x))
    assert trace.nodes["x"]["scale"] == pytest.approx(N / len(x))
    trace = pyro.poutine.trace(beta_scale(model, {"other": 3.0})).get_trace(x)
    assert trace.nodes["z"]["scale"] == pytest.approx(N / len(x))


def test_free_bits_zero_equals_meanfield(pair):
    model, guide, x, *_ = pair
    mf = TraceMeanField_ELBO(num_particles=4, vectorize_particles=True, max_plate_nesting=1)
    fb = make_elbo("free-bits", 4, free_bits=0.0, max_plate_nesting=1)
    for beta in (1.0, 2.5):
        assert _loss(fb, model, guide, x, beta) == pytest.approx(
            _loss(mf, model, guide, x, beta), rel=1e-10
        )


def test_free_bits_floor(pair):
    model, guide, x, kl, *_ = pair
    lam = 0.5
    fb = FreeBits_ELBO(num_particles=4, free_bits=lam, max_plate_nesting=1)
    mf = TraceMeanField_ELBO(num_particles=4, vectorize_particles=True, max_plate_nesting=1)
    recon_part = _loss(mf, model, guide, x, 0.0)  # −(N/B) Σ recon, same particles
    per_dim = kl.mean(0)  # batch-mean KL of each latent dimension
    assert (per_dim < lam).any() and (
        per_dim > lam
    ).any()  # the floor binds on some dimensions only
    expected = recon_part + N * per_dim.clamp(min=lam).sum().item()
    assert _loss(fb, model, guide, x, 1.0) == pytest.approx(expected, rel=1e-10)
    # the per-group KLs are the closed-form batch means
    recon, kls, _, _ = fb.terms(model, guide, x)
    assert torch.allclose(kls["z"], per_dim, rtol=1e-12)


def test_free_bits_whole_site_for_non_factorized_guides(pair):
    _, _, x, _, lg, *_ = pair
    fb = FreeBits_ELBO(num_particles=2000, free_bits=0.0, max_plate_nesting=1)
    pyro.set_rng_seed(0)
    _, kls, _, _ = fb.terms(lg.model, lg.exact_guide, x)
    assert kls["z"].shape == (1,)  # a full-covariance site is one group
    mean, cov = lg.posterior(x)
    exact = kl_divergence(
        dist.MultivariateNormal(mean, cov),
        dist.MultivariateNormal(torch.zeros(3).double(), torch.eye(3).double()),
    )
    assert kls["z"].item() == pytest.approx(exact.mean().item(), rel=0.02)  # MC over 2000 × 8 draws


def test_free_bits_is_an_elbo_under_svi_with_the_closed_form_gradient(pair):
    """Called as SVI calls it (keywords only): the loss is the reconstruction + N Σ_g max(λ, KL_g),
    and the guide gradient of the KL part is the closed form N/B ∂KL_ig on dimensions above λ, zero
    below."""
    _, _, x, kl, lg, loc0, scale0 = pair
    lam, B = 0.5, len(x)
    loc = pyro.param("loc", loc0.clone())
    scale = pyro.param("scale", scale0.clone(), constraint=dist.constraints.positive)

    def guide(x=None, num_data=None):
        loc, scale = pyro.param("loc"), pyro.param("scale")
        with data_plate(x, num_data):
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    def model(x=None, num_data=None):
        lg.model(x, num_data)

    def grads(elbo, beta=1.0):
        for _, p in pyro.get_param_store().named_parameters():
            p.grad = None
        pyro.set_rng_seed(5)
        loss = elbo.loss_and_grads(
            beta_scale(model, beta), beta_scale(guide, beta), x=x, num_data=N
        )
        return loss, {n: pyro.param(n).unconstrained().grad.clone() for n in ("loc", "scale")}

    fb = FreeBits_ELBO(num_particles=4, free_bits=lam)  # plate nesting found on the first call
    fb.loss(model, guide, x=x, num_data=N)
    mf = TraceMeanField_ELBO(num_particles=4, vectorize_particles=True, max_plate_nesting=1)
    loss, g = grads(fb)
    recon_loss, g_recon = grads(mf, beta=0.0)  # −(N/B) Σ E_q log p(x|z) and its gradient, same z
    per_dim = kl.mean(0)
    above = per_dim > lam
    assert above.any() and not above.all()  # the floor binds on some dimensions only
    assert loss == pytest.approx(recon_loss + N * per_dim.clamp(min=lam).sum().item(), rel=1e-10)
    # KL(N(m, s²) ‖ N(0, 1)) = (m² + s² − 1)/2 − log s;  ∂/∂m = m,  ∂/∂ log s = s² − 1
    with torch.no_grad():
        expected = {"loc": N / B * loc * above, "scale": N / B * (scale**2 - 1) * above}
    for n in ("loc", "scale"):
        torch.testing.assert_close(g[n] - g_recon[n], expected[n], rtol=1e-9, atol=1e-9)
    pyro.set_rng_seed(5)
    svi = pyro.infer.SVI(model, guide, pyro.optim.SGD({"lr": 0.0}), fb)
    assert svi.step(x=x, num_data=N) == pytest.approx(loss, rel=1e-12)
    model_trace, guide_trace = fb._get_trace(model, guide, (), {"x": x, "num_data": N})
    assert guide_trace.nodes["z"]["value"].shape == (4, B, 3)


def test_warmup_schedule():
    s = KLSchedule(4.0, warmup_epochs=4)
    assert [s(e) for e in range(6)] == [0.0, 1.0, 2.0, 3.0, 4.0, 4.0]
    assert KLSchedule(2.0, 0)(0) == 2.0
    per_site = KLSchedule({"z1": 1.0, "z2": 2.0}, warmup_epochs=2)
    assert per_site(1) == {"z1": 0.5, "z2": 1.0}
    assert KLSchedule(1.0).is_identity and not KLSchedule(1.0, 3).is_identity
    with pytest.raises(ValueError, match="beta"):
        KLSchedule(-1.0)


def test_importance_weighted_estimators_refuse_beta(pair):
    model, guide, x, *_ = pair
    with pytest.raises(ValueError, match="importance-weighted"):
        check_estimator("iwae", scaled=True)
    check_estimator("meanfield", scaled=True, free_bits=0.5)
    with pytest.raises(ValueError, match="poutine.scale"):
        make_elbo("iwae", 2).differentiable_loss(beta_scale(model, 2.0), beta_scale(guide, 2.0), x)


@pytest.mark.slow  # ~10 s on an idle 2-core CPU, up to a minute when shared
def test_beta_above_one_lowers_kl_and_reconstruction():
    """Same data, same budget: a linear VAE trained with β = 4 has a smaller KL and a worse
    reconstruction."""
    lg = LinearGaussian(latent_dim=2, obs_dim=6, sigma=0.3, dtype=torch.float32)
    x = lg.sample(256).float()
    results = {}
    for beta in (1.0, 4.0):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        enc = torch.nn.Linear(6, 4)
        dec = torch.nn.Linear(2, 6)

        def model(x):
            pyro.module("dec", dec)
            with pyro.plate("data", len(x)):
                z = pyro.sample("z", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
                pyro.sample("x", dist.Normal(dec(z), 0.3).to_event(1), obs=x)

        def guide(x):
            pyro.module("enc", enc)
            with pyro.plate("data", len(x)):
                loc, raw = enc(x).chunk(2, -1)
                pyro.sample(
                    "z", dist.Normal(loc, torch.nn.functional.softplus(raw) + 1e-4).to_event(1)
                )

        svi = pyro.infer.SVI(
            beta_scale(model, beta),
            beta_scale(guide, beta),
            pyro.optim.Adam({"lr": 0.05}),
            TraceMeanField_ELBO(),
        )
        for _ in range(150):
            svi.step(x)
        recon, kl = elbo_terms(model, guide, x, num_particles=32)
        results[beta] = (recon.mean().item(), kl.mean().item())
    (r1, k1), (r4, k4) = results[1.0], results[4.0]
    assert k4 < k1 - 0.5 and r4 < r1 - 0.5, results
