"""The estimators of pyro_vae.estimators against the closed forms of the linear-Gaussian model.

Tolerances: a Monte Carlo mean of K particles with per-particle standard deviation s
is within 5 s/√K of its expectation except with probability < 1e-6; exact identities
(zero-variance estimators, same-noise comparisons) are checked to float64 round-off.
"""

import functools
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from conftest import cuda
from linear_gaussian import LinearGaussian
from pyro import poutine
from pyro.distributions import constraints
from pyro.infer import SVI
from torch import nn

from pyro_vae import data_plate, log_weights, make_elbo
from pyro_vae.estimators import ESTIMATORS, ImportanceWeightedELBO

ALL = ["trace", "meanfield", "iwae", "dreg", "stl", "renyi", "enum"]
OURS = ["iwae", "dreg", "renyi"]  # bounds per data point; stl is an ELBO, a sum of per-site terms


def param_guide(lg, x, shift=0.0, widen=1.0):
    """A full-covariance guide N(loc_i, L Lᵀ) with pyro.param loc and L, initialised at the exact
    posterior (optionally shifted by ``shift`` marginal sds and widened by ``widen``)."""
    mean, cov = lg.posterior(x)
    chol = torch.linalg.cholesky(cov[0])

    def guide(x, num_data=None):
        loc = pyro.param("loc", mean + shift * cov[0].diagonal().sqrt())
        tril = pyro.param("scale_tril", widen * chol, constraint=constraints.lower_cholesky)
        with data_plate(x, num_data):
            pyro.sample("z", dist.MultivariateNormal(loc, scale_tril=tril))

    return guide


def param_model(lg):
    """The linear-Gaussian model with W and b as pyro.params (model parameters θ)."""

    def model(x, num_data=None):
        W, b = pyro.param("W", lg.W.clone()), pyro.param("b", lg.b.clone())
        with data_plate(x, num_data):
            z = pyro.sample("z", dist.Normal(x.new_zeros(lg.latent_dim), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ W.T + b, lg.sigma).to_event(1), obs=x)

    return model


def grads(names):
    return {n: pyro.param(n).unconstrained().grad.clone() for n in names}


def zero_grads():
    for _, p in pyro.get_param_store().named_parameters():
        p.grad = None


# ---- exactness at the exact posterior
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", ALL)
def test_every_estimator_is_log_px_at_exact_posterior_with_subsampling_outside(name):
    lg = LinearGaussian()
    x = lg.sample(6)
    elbo = make_elbo(name, num_particles=7)
    guide = param_guide(lg, x)
    expected = -10 * lg.log_px(x).sum()  # num_data = 60, batch 6: scale 10 outside the bound
    assert elbo.loss(lg.model, guide, x, num_data=60) == pytest.approx(expected.item(), rel=1e-12)
    loss = elbo.differentiable_loss(lg.model, guide, x, num_data=60)
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-9)
    zero_grads()
    assert elbo.loss_and_grads(lg.model, guide, x, num_data=60) == pytest.approx(
        expected.item(), rel=1e-12
    )
    assert pyro.param("loc").grad is not None


def hierarchical_pair(lg, x, shift=0.0, coupling_shift=0.0):
    """The linear-Gaussian model with z split into sites z1 (1 dim) and z2, and a guide q(z1) q(z2 |
    z1) whose later site depends on the earlier z; at shift = coupling_shift = 0 it is the exact
    posterior factorisation."""
    mean, cov = lg.posterior(x)
    S = cov[0]
    a = S[1:, :1] / S[0, 0]  # E[z2 | z1] = m2 + a (z1 − m1)
    cond_cov = S[1:, 1:] - a @ S[:1, 1:]

    def model(x):
        with data_plate(x):
            z1 = pyro.sample("z1", dist.Normal(x.new_zeros(1), 1.0).to_event(1))
            z2 = pyro.sample("z2", dist.Normal(x.new_zeros(lg.latent_dim - 1), 1.0).to_event(1))
            z = torch.cat([z1, z2], -1)
            pyro.sample("x", dist.Normal(z @ lg.W.T + lg.b, lg.sigma).to_event(1), obs=x)

    def guide(x):
        m = pyro.param("m", mean + shift * S.diagonal().sqrt())
        coupling = pyro.param("a", a + coupling_shift)
        s1 = pyro.param("s1", S[0, 0].sqrt().reshape(1), constraint=constraints.positive)
        tril = pyro.param(
            "tril", torch.linalg.cholesky(cond_cov), constraint=constraints.lower_cholesky
        )
        with data_plate(x):
            z1 = pyro.sample("z1", dist.Normal(m[:, :1], s1).to_event(1))
            loc2 = m[:, 1:] + (z1 - m[:, :1]) @ coupling.T
            pyro.sample("z2", dist.MultivariateNormal(loc2, scale_tril=tril))

    return model, guide


def test_hierarchical_guide_exact_value_and_zero_path_gradient():
    """At the exact posterior every bound is log p(x) and the DReG and STL guide gradients vanish;
    this needs the replay to re-evaluate q(z2 | z̄1) at the detached z1."""
    lg = LinearGaussian()
    x = lg.sample(5)
    model, guide = hierarchical_pair(lg, x)
    for name in ("iwae", "dreg", "stl", "trace"):
        zero_grads()
        loss = make_elbo(name, 16).differentiable_loss(model, guide, x)
        torch.testing.assert_close(loss, -lg.log_px(x).sum(), rtol=1e-12, atol=1e-9)
        loss.backward()
        g = grads(["m", "a", "s1", "tril"])
        size = max(v.abs().max().item() for v in g.values())
        if name in ("dreg", "stl"):
            assert size < 1e-9, (name, g)
        else:
            assert size > 1e-3, (
                f"{name}: the score term should make this gradient noisy (test not vacuous)"
            )


def test_hierarchical_guide_dreg_gradient_is_unbiased_for_iwae():
    """Off the optimum, per-replicate gradients of the per-point means m (x0 repeated R times) agree
    in mean."""
    lg = LinearGaussian()
    R = 2000
    x = lg.sample(1).expand(R, -1)
    model, guide = hierarchical_pair(lg, x, shift=0.5, coupling_shift=0.3)
    out = {}
    for name in ("iwae", "dreg"):
        zero_grads()
        pyro.set_rng_seed(11)
        make_elbo(name, 5).differentiable_loss(model, guide, x).backward()
        out[name] = pyro.param("m").grad.clone()
    diff = out["iwae"] - out["dreg"]
    se = diff.std(0) / math.sqrt(R)
    assert (diff.mean(0).abs() < 5 * se).all(), (diff.mean(0), se)
    assert (diff.std(0) > 1e-3).all()


# ---- unbiasedness and monotonicity
# -----------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["trace", "meanfield", "stl"])
def test_elbo_estimators_are_unbiased_for_the_closed_form_elbo(name):
    lg = LinearGaussian()
    x = lg.sample(4)
    mean, _ = lg.posterior(x)
    loc = mean + 0.3
    scale = 0.8 * lg.precision().diagonal().rsqrt().expand(4, -1)
    guide = lg.meanfield_guide(loc, scale)
    K = 4000
    estimate = -make_elbo(name, K).loss(lg.model, guide, x)
    exact = lg.elbo(x, loc, scale**2).sum().item()
    s = (
        log_weights(lg.model, guide, x, num_particles=K).log_w.sum(1).std().item()
    )  # per-particle sd of Σ_i log w
    assert abs(estimate - exact) < 5 * s / math.sqrt(K)


def best_meanfield_guide(lg, x):
    mean, _ = lg.posterior(x)
    return lg.meanfield_guide(mean, lg.precision().diagonal().rsqrt().expand(len(x), -1))


def test_iwae_rises_with_k():
    lg = LinearGaussian()
    x = lg.sample(1000)
    guide = best_meanfield_guide(lg, x)  # heavy-tailed weights: Var(w/p) ≈ 14, so IWAE gains slowly
    log_px = lg.log_px(x).mean().item()
    bounds = [-make_elbo("iwae", K).loss(lg.model, guide, x) / len(x) for K in (1, 10, 100)]
    s = (
        (log_weights(lg.model, guide, x).log_w - lg.log_px(x)).std().item()
    )  # sd of one log-weight around log p
    assert bounds[0] == pytest.approx(
        log_px - lg.meanfield_gap().item(), abs=5 * s / math.sqrt(len(x))
    )  # ELBO
    assert bounds[0] < bounds[1] < bounds[2] < log_px, bounds


def test_iwae_reaches_log_px_for_every_point_of_a_large_batch():
    lg = LinearGaussian()
    x = lg.sample(200)
    guide = param_guide(lg, x, shift=0.3, widen=1.2)
    log_px = lg.log_px(x)
    K = 5000
    with torch.no_grad():
        per_point, scale = make_elbo("iwae", K).surrogate(lg.model, guide, x)
        lw = log_weights(lg.model, guide, x, num_particles=K).log_w
    assert scale == 1.0
    # log mean w has sd ≈ sqrt(Var(w/p) / K) and bias ≈ −Var(w/p) / 2K per point
    rel_var = (lw - log_px).exp().var(0)
    assert ((per_point - log_px).abs() < 5 * (rel_var / K).sqrt() + rel_var / K).all()
    assert (
        per_point - log_px
    ).abs().max() < 0.05  # every point within 0.05 nats of its exact log p(x)


def test_renyi_alpha_zero_is_iwae_alpha_one_is_elbo_and_decreases_in_alpha():
    lg = LinearGaussian()
    x = lg.sample(8)
    guide = best_meanfield_guide(lg, x)

    def value(name, **options):
        pyro.set_rng_seed(3)
        return make_elbo(name, 50, **options).loss(lg.model, guide, x)

    assert value("renyi", alpha=0.0) == pytest.approx(value("iwae"), rel=1e-12)
    assert value("renyi", alpha=1.0) == pytest.approx(value("stl"), rel=1e-12)
    losses = [value("renyi", alpha=a) for a in (-1.0, 0.0, 0.5, 1.0, 2.0)]
    assert all(a < b for a, b in zip(losses, losses[1:])), (
        losses
    )  # the bound decreases in α for fixed samples


# ---- gradients
# -------------------------------------------------------------------------------------------------
def replicated_guide_gradients(name, K, R=2000, seed=0):
    """R independent guide-gradient samples (rows of loc.grad): x0 repeated R times with one loc row
    per copy."""
    lg = LinearGaussian()
    x0 = lg.sample(1)
    pyro.clear_param_store()
    guide = param_guide(lg, x0.expand(R, -1), shift=0.5, widen=1.2)
    pyro.set_rng_seed(seed)
    make_elbo(name, K).differentiable_loss(lg.model, guide, x0.expand(R, -1)).backward()
    return pyro.param("loc").grad.clone()


def test_dreg_guide_gradient_is_unbiased_for_the_iwae_gradient():
    g_iwae = replicated_guide_gradients("iwae", 10)
    g_dreg = replicated_guide_gradients("dreg", 10)  # same seed: same particles, paired differences
    diff = g_iwae - g_dreg
    se = diff.std(0) / math.sqrt(len(diff))
    assert (diff.mean(0).abs() < 5 * se).all(), (diff.mean(0), se)
    assert (diff.std(0) > 1e-3).all()  # the estimators really differ sample by sample


def snr(g):
    return (g.mean(0).abs() / g.std(0)).mean().item()


def test_signal_to_noise_grows_with_k_for_dreg_and_shrinks_for_iwae():
    ks = (1, 10, 100)
    s_dreg = [snr(replicated_guide_gradients("dreg", K)) for K in ks]
    s_iwae = [snr(replicated_guide_gradients("iwae", K)) for K in ks]
    assert s_dreg[0] < s_dreg[1] < s_dreg[2] and s_dreg[2] > 3 * s_dreg[0], s_dreg
    assert s_iwae[1] < s_iwae[0] / 2 and s_iwae[2] < s_iwae[0] / 4, s_iwae


@pytest.mark.parametrize("name, reference", [("dreg", "iwae"), ("stl", "trace")])
def test_model_parameters_get_exactly_the_reference_gradient_for_the_same_noise(name, reference):
    lg = LinearGaussian()
    x = lg.sample(6)
    model, guide = param_model(lg), param_guide(lg, x, shift=0.4, widen=1.3)
    out = {}
    for n in (name, reference):
        zero_grads()
        pyro.set_rng_seed(7)
        make_elbo(n, 9).differentiable_loss(model, guide, x, num_data=30).backward()
        out[n] = grads(["W", "b", "loc"])
    for p in ("W", "b"):
        torch.testing.assert_close(out[name][p], out[reference][p], rtol=1e-10, atol=1e-10)
    assert (
        out[name]["loc"] - out[reference]["loc"]
    ).abs().max() > 1e-3  # guide gradients do differ


@pytest.mark.parametrize("name", ["stl", "dreg"])
def test_path_gradient_vanishes_at_exact_posterior(name):
    lg = LinearGaussian()
    x = lg.sample(6)
    guide = param_guide(lg, x)
    make_elbo(name, 5).differentiable_loss(lg.model, guide, x).backward()
    for g in grads(["loc", "scale_tril"]).values():
        assert g.abs().max() < 1e-9
    zero_grads()
    make_elbo("trace", 5).differentiable_loss(lg.model, guide, x).backward()
    assert pyro.param("loc").grad.abs().max() > 1e-3  # the reparameterized gradient is noisy there


# ---- training with an amortized pyro.module guide
# ------------------------------------------------------------------
class AmortizedFullGuide(nn.Module):
    """q(z|x) = N(A x + c, L Lᵀ): contains the exact linear-Gaussian posterior."""

    def __init__(self, obs_dim, latent_dim):
        super().__init__()
        self.linear = nn.Linear(obs_dim, latent_dim).double()
        self.raw_tril = nn.Parameter(torch.zeros(latent_dim, latent_dim, dtype=torch.float64))

    def forward(self, x, num_data=None):
        pyro.module("amortized", self)
        tril = self.raw_tril.tril(-1) + torch.diag_embed(
            torch.nn.functional.softplus(self.raw_tril.diagonal())
        )
        with data_plate(x, num_data):
            pyro.sample("z", dist.MultivariateNormal(self.linear(x), scale_tril=tril))
        return tril


def posterior_gap(lg, guide, x):
    """Mean KL(q(z|x) || p(z|x)) = log p(x) − ELBO of the amortized full-covariance guide, closed
    form."""
    with torch.no_grad():
        tril = guide(x)
        m, S = guide.linear(x), (tril @ tril.T).expand(len(x), -1, -1)
        return (lg.log_px(x) - lg.elbo(x, m, S)).mean().item()


@functools.lru_cache
def train_module_guide(name, steps=400, **options):
    lg = LinearGaussian()
    x = lg.sample(64)
    guide = AmortizedFullGuide(lg.obs_dim, lg.latent_dim)
    start = posterior_gap(lg, guide, x)
    svi = SVI(lg.model, guide, pyro.optim.Adam({"lr": 0.03}), make_elbo(name, 4, **options))
    for _ in range(steps):
        svi.step(x[torch.randint(0, 64, (16,))], num_data=64)
    return start, posterior_gap(lg, guide, x)


@pytest.mark.parametrize("name", ["dreg", "stl"])
def test_svi_with_a_module_guide_reaches_the_exact_posterior(name):
    start, gap = train_module_guide(name)
    assert gap < 0.01 < start, (start, gap)


@pytest.mark.parametrize("name, options", [("iwae", {}), ("renyi", {"alpha": 0.5})])
def test_svi_with_iwae_gradients_improves_the_guide_but_stalls_where_dreg_does_not(name, options):
    """Rainforth et al. 2018: the IWAE guide gradient's SNR falls with K, so its guide learns slower
    than DReG's."""
    start, gap = train_module_guide(name, **options)
    _, gap_dreg = train_module_guide("dreg")  # cached: the same run as the test above
    assert gap < start / 5 and gap_dreg < gap, (start, gap, gap_dreg)


# ---- errors
# -------------------------------------------------------------------------------------------------
def test_make_elbo_rejects_unknown_names_and_options():
    with pytest.raises(ValueError, match="dreg.*enum.*iwae.*meanfield.*renyi.*stl.*trace"):
        make_elbo("nope")
    with pytest.raises(ValueError, match="valid options.*alpha"):
        make_elbo("renyi", alpha_=0.5)
    with pytest.raises(ValueError, match="alpha must be a finite number"):
        make_elbo("renyi", alpha=float("nan"))
    with pytest.raises(ValueError, match="num_particles"):
        make_elbo("iwae", 0)
    assert set(ALL) <= set(ESTIMATORS)
    assert all(isinstance(make_elbo(n), ImportanceWeightedELBO) for n in OURS)


@pytest.mark.parametrize("name", OURS)
def test_importance_weighted_estimators_refuse_pairs_they_cannot_bound(name):
    lg = LinearGaussian()
    x = lg.sample(4)
    guide = best_meanfield_guide(lg, x)
    with pytest.raises(ValueError, match="poutine.scale"):
        make_elbo(name, 2).loss(poutine.scale(lg.model, scale=0.5), guide, x)

    def discrete_guide(x):
        with data_plate(x):
            pyro.sample("z", dist.Bernoulli(x.new_full((lg.latent_dim,), 0.5)).to_event(1))

    with pytest.raises(ValueError, match="not reparameterizable"):
        make_elbo(name, 2).loss(lg.model, discrete_guide, x)

    def empty_guide(x):
        with data_plate(x):
            pyro.sample("other", dist.Normal(x.new_zeros(1), 1.0).to_event(1))

    with pytest.raises(ValueError, match="has no guide site"):
        make_elbo(name, 2).loss(lg.model, empty_guide, x)


class ForwardOnly(dist.transforms.Transform):
    domain = codomain = constraints.real_vector
    bijective = True

    def __init__(self):
        super().__init__(
            cache_size=1
        )  # log q at the sampled z uses the cached base sample, no inverse

    def _call(self, u):
        return u + pyro.param("shift", torch.zeros(3, dtype=torch.float64))

    def log_abs_det_jacobian(self, u, z):
        return u.new_zeros(u.shape[:-1])


@pytest.mark.parametrize("name", ["dreg", "stl"])
def test_path_estimators_refuse_flows_without_inverse(name):
    lg = LinearGaussian()
    x = lg.sample(4)

    def flow_guide(x):
        base = dist.Normal(x.new_zeros(x.shape[0], 3), 1.0).to_event(1)
        with data_plate(x):
            pyro.sample("z", dist.TransformedDistribution(base, [ForwardOnly()]))

    make_elbo("iwae", 2).differentiable_loss(lg.model, flow_guide, x)  # fine without the inverse
    with pytest.raises(ValueError, match="inverse"):
        make_elbo(name, 2).differentiable_loss(lg.model, flow_guide, x)


@cuda
@pytest.mark.parametrize("name", ALL)
def test_estimators_on_cuda(name):
    lg = LinearGaussian(device="cuda")
    x = lg.sample(6)
    guide = param_guide(lg, x)
    loss = make_elbo(name, 3).loss(lg.model, guide, x)
    assert loss == pytest.approx(-lg.log_px(x).sum().item(), rel=1e-10)
