"""Deep hierarchical VAE: closed forms of a deep linear-Gaussian chain, gradients, shapes, the CLI
path.

The chain runs through :class:`DeepHierarchicalVAE`'s own model and guide (its group loop, sites,
data plate and residual q = N(μ_p + Δμ, σ_p e^Δρ)) with linear pieces in place of the conv nets. Per
channel c (C of them, independent and alike), with L scalar groups and P pixels:

    z_l | z_<l ~ N(Σ_{j<l} A_lj z_j + a_l, s_l²),     x_p | z ~ N(Σ_j W_pj z_j + b_p, σ²),

so (z, x) is jointly Gaussian, log p(x) is a multivariate normal and every exact conditional p(z_l |
z_<l, x) is a Gaussian with mean linear in (z_<l, x) and a constant variance: the residual guide
family holds it. At the exact posterior every importance weight equals p(x), so trace, iwae and dreg
equal log p(x) to float precision and meanfield (analytic KL per group given the groups above)
equals it in expectation.
"""

import json
import math
import os

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from torch import nn

from pyro_vae import Config, log_likelihood, log_weights
from pyro_vae.estimators import make_elbo
from pyro_vae.models import build_model
from pyro_vae.models.deep_hierarchical import DeepHierarchicalVAE
from pyro_vae.models.likelihoods import Gaussian

DT = torch.float64
L, C, P, SIGMA = 4, 2, 3, 0.5
DEBIAN = "/usr/share/datasets/fashion-mnist"
needs_data = pytest.mark.skipif(
    not os.path.isdir(DEBIAN), reason="needs Debian's dataset-fashion-mnist"
)


class LinearChain:
    """Parameters and closed forms of the chain above (one channel's joint Gaussian over v =
    (z_1..z_L, x_1..x_P))."""

    def __init__(self, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.A = torch.tril(0.8 * torch.randn(L, L, generator=g, dtype=DT), diagonal=-1)
        self.a = 0.5 * torch.randn(L, generator=g, dtype=DT)
        self.s = 0.5 + torch.rand(L, generator=g, dtype=DT)
        self.W = torch.randn(P, L, generator=g, dtype=DT)
        self.b = torch.randn(P, generator=g, dtype=DT)
        B = torch.linalg.inv(torch.eye(L, dtype=DT) - self.A)  # z = B (a + s ε)
        cov_z = B @ torch.diag(self.s**2) @ B.T
        self.mean = torch.cat([B @ self.a, self.W @ B @ self.a + self.b])
        self.cov = torch.zeros(L + P, L + P, dtype=DT)
        self.cov[:L, :L] = cov_z
        self.cov[:L, L:] = cov_z @ self.W.T
        self.cov[L:, :L] = self.W @ cov_z
        self.cov[L:, L:] = self.W @ cov_z @ self.W.T + SIGMA**2 * torch.eye(P, dtype=DT)

    def conditional(self, l):
        """p(z_l | z_<l, x) = N(K_z z_<l + K_x x + c, v): returns (K_z [L] zero-padded, K_x [P], c,
        v)."""
        given = list(range(l)) + list(range(L, L + P))
        K = self.cov[l, given] @ torch.linalg.inv(self.cov[given][:, given])
        c = self.mean[l] - K @ self.mean[given]
        v = self.cov[l, l] - K @ self.cov[given, l]
        return torch.cat([K[:l], torch.zeros(L - l, dtype=DT)]), K[l:], c, v

    def log_px(self, x):
        """Exact log p(x) of images [N, C, P, 1]: C independent P-variate normals."""
        marginal = dist.MultivariateNormal(self.mean[L:], self.cov[L:, L:])
        return marginal.log_prob(x[..., 0]).sum(-1)

    def sample_x(self, n, seed=1):
        g = torch.Generator().manual_seed(seed)
        chol = torch.linalg.cholesky(self.cov[L:, L:])
        return (self.mean[L:] + torch.randn(n, C, P, generator=g, dtype=DT) @ chol.T).unsqueeze(-1)


class LinearTopDown(nn.Module):
    """The chain's top-down path: the state h [..., C, L, 1] holds z_1 … z_l in its slots."""

    def __init__(self, chain):
        super().__init__()
        self.chain, self.num_groups = chain, L
        self.scale_param = nn.Parameter(
            torch.zeros((), dtype=DT)
        )  # a parameter, so pyro.module has one to see

    def initial(self, x):
        return x.new_zeros(x.shape[0], C, L, 1)

    def prior(self, l, h):
        loc = (h[..., 0] * self.chain.A[l]).sum(-1) + self.chain.a[l]
        loc = loc[..., None, None] + 0 * self.scale_param
        return loc, self.chain.s[l].expand(loc.shape)

    def update(self, l, h, z):
        return h + z * torch.eye(L, dtype=DT)[l][:, None]

    def output(self, h):
        return (
            torch.einsum("...cl,pl->...cp", h[..., 0], self.chain.W).unsqueeze(-1)
            + self.chain.b[:, None]
        )


class LinearGuide(nn.Module):
    """Δμ, Δρ of the exact conditionals relative to the chain's prior; ``shift`` (in conditional
    standard deviations) and ``widen`` (added to log σ) perturb them."""

    def __init__(self, chain, shift=0.0, widen=0.0):
        super().__init__()
        self.chain, self.terms = chain, [chain.conditional(l) for l in range(L)]
        self.shift, self.widen = shift, widen

    def features(self, x):
        return [x]

    def delta(self, l, h, features):
        Kz, Kx, c, v = self.terms[l]
        x = features[0][..., 0]
        dloc = (h[..., 0] * (Kz - self.chain.A[l])).sum(-1) + (x * Kx).sum(-1) + c - self.chain.a[l]
        dloc = dloc + self.shift * v.sqrt()  # a shift of ``shift`` conditional standard deviations
        target = torch.log(v.sqrt() / self.chain.s[l]) + self.widen  # soft_clamp(Δρ) must equal it
        drho = (5 * torch.atanh(target / 5)).expand(dloc.shape)
        return dloc[..., None, None], drho[..., None, None]


def _linear_vae(chain, **perturb):
    return DeepHierarchicalVAE(
        LinearTopDown(chain), LinearGuide(chain, **perturb), Gaussian(SIGMA), (C, P, 1)
    )


def test_exact_posterior_every_bound_equals_log_px():
    chain = LinearChain()
    vae = _linear_vae(chain)
    x = chain.sample_x(5)
    log_px = chain.log_px(x)
    w = log_weights(vae.model, vae.guide, x, num_particles=40)
    assert torch.allclose(
        w.log_w, log_px.expand(40, -1), atol=1e-9, rtol=0
    )  # every particle: log w = log p(x)
    expected = -log_px.sum().item()
    for name in ("trace", "iwae", "dreg"):
        loss = make_elbo(name, num_particles=8).loss(vae.model, vae.guide, x)
        assert loss == pytest.approx(expected, abs=1e-7), name
    # meanfield: log p(x | z) − Σ_l KL(q(z_l | z_<l, x) ‖ p(z_l | z_<l)) is exact only in
    # expectation
    losses = torch.tensor(
        [
            make_elbo("meanfield", num_particles=2000).loss(vae.model, vae.guide, x)
            for _ in range(5)
        ],
        dtype=DT,
    )
    stderr = losses.std().item() / math.sqrt(len(losses))
    assert abs(losses.mean().item() - expected) < 5 * stderr + 1e-6, (losses, expected)
    assert torch.allclose(
        log_likelihood(vae.model, vae.guide, x, num_samples=10), log_px, atol=1e-9
    )


def test_log_likelihood_and_bounds_of_a_perturbed_guide():
    chain = LinearChain()
    vae = _linear_vae(chain, shift=0.2, widen=0.15)
    x = chain.sample_x(6)
    log_px = chain.log_px(x)
    K = 4000
    estimate = log_likelihood(vae.model, vae.guide, x, num_samples=K)
    # tolerance from the weights themselves (delta method): sd(log mean w) ≈ sd(w) / (√K mean(w)),
    # per
    # point
    log_w = log_weights(vae.model, vae.guide, x, num_particles=K).log_w
    w = (log_w - log_w.max(0).values).exp()
    stderr = w.std(0) / (math.sqrt(K) * w.mean(0))
    assert (stderr < 0.03).all(), stderr
    assert ((estimate - log_px).abs() < 4 * stderr + 2e-3).all(), (estimate - log_px, stderr)
    elbo = log_w.mean(0)
    assert (
        elbo < log_px - 0.1
    ).all()  # the gap Σ_l E KL ≈ C L (0.2²/2 + (e^0.3 − 1.3)/2) ≈ 0.36 nats per point
    assert (estimate > elbo).all()


def test_meanfield_takes_the_analytic_kl_of_every_group_and_matches_monte_carlo(monkeypatch):
    # meanfield: Pyro's TraceMeanField_ELBO with the loss on the device
    import pyro_vae.estimators.trace as tmf

    chain = LinearChain()
    vae = _linear_vae(chain, shift=0.3, widen=-0.2)
    x = chain.sample_x(4)
    calls = []
    real = tmf.kl_divergence

    def recording(q, p):
        kl = real(
            q, p
        )  # raises NotImplementedError when there is no closed form: Pyro would fall back on MC
        calls.append((type(q.base_dist).__name__, q.reinterpreted_batch_ndims, tuple(kl.shape)))
        return kl

    monkeypatch.setattr(tmf, "kl_divergence", recording)
    meanfield = make_elbo("meanfield", num_particles=2000)
    losses = torch.tensor([meanfield.loss(vae.model, vae.guide, x) for _ in range(5)], dtype=DT)
    assert len(calls) == 5 * L and all(c == ("Normal", 3, (2000, 4)) for c in calls), calls[:3]
    trace = make_elbo("trace", num_particles=2000)
    mc = torch.tensor([trace.loss(vae.model, vae.guide, x) for _ in range(5)], dtype=DT)
    stderr = math.sqrt((losses.var() + mc.var()).item() / 5)
    assert abs(losses.mean().item() - mc.mean().item()) < 5 * stderr, (losses, mc)


def _small(**kw):
    base = dict(
        model="deep-hierarchical",
        net="conv",
        scales=2,
        groups_per_scale=2,
        hidden_channels=8,
        latent_channels=2,
    )
    base.update(kw)
    return Config(**base)


@pytest.mark.parametrize("estimator", ["trace", "meanfield", "iwae", "dreg"])
def test_every_group_receives_a_gradient(estimator):
    vae = build_model(_small(), (1, 28, 28), num_data=100)
    x = torch.rand(4, 1, 28, 28).bernoulli()
    loss = make_elbo(estimator, num_particles=2).differentiable_loss(vae.model, vae.guide, x)
    loss.backward()
    td, guide = vae.top_down, vae.guide_module
    for l in range(td.num_groups):
        for name, module in (
            ("prior head", td.prior_heads[l]),
            ("projection", td.projections[l]),
            ("block", td.blocks[l]),
            ("guide head", guide.heads[l]),
        ):
            grads = [p.grad for p in module.parameters()]
            assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0, (
                estimator,
                name,
                l,
            )
    for module in (td.out, guide.stem, *guide.down, *td.ups):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())
    assert td.h0.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "size, channels, scales",
    [(28, 1, 2), (28, 3, 2), (32, 1, 2), (32, 3, 3), (64, 1, 3), (64, 3, 2)],
)
def test_sites_shapes_and_order(size, channels, scales):
    vae = build_model(
        _small(scales=scales, likelihood="gaussian"), (channels, size, size), num_data=50
    )
    x = torch.rand(3, channels, size, size)
    guide_trace = poutine.trace(vae.guide).get_trace(x)
    model_trace = poutine.trace(poutine.replay(vae.model, trace=guide_trace)).get_trace(x)
    sampled = [n for n, s in model_trace.nodes.items() if s["type"] == "sample" and n != "data"]
    groups = scales * 2
    assert sampled == [f"z_{l + 1}" for l in range(groups)] + ["x"] == [*vae.sites, "x"]
    assert [
        n for n, s in guide_trace.nodes.items() if s["type"] == "sample" and n != "data"
    ] == vae.sites
    for l, name in enumerate(vae.sites):
        side = size // 2 ** (
            scales - l // 2
        )  # top scale H/2^S first, each scale twice the one above
        for trace in (guide_trace, model_trace):
            fn = trace.nodes[name]["fn"]
            assert fn.event_shape == (2, side, side) and fn.batch_shape == (3,)
            assert [f.name for f in trace.nodes[name]["cond_indep_stack"]] == ["data"]
            assert trace.nodes[name]["scale"] == pytest.approx(50 / 3)
    assert model_trace.nodes["_RETURN"]["value"].shape == (3, channels, size, size)
    w = log_weights(vae.model, vae.guide, x, num_particles=3)
    assert w.log_w.shape == (3, 3) and torch.isfinite(w.log_w).all()


def test_image_size_must_divide_by_two_to_the_scales():
    with pytest.raises(ValueError, match=r"divisible by 2\^3 = 8; pass fewer --scales"):
        build_model(_small(scales=3), (1, 28, 28))
    from pyro_vae.app.config import check_config

    with pytest.raises(ValueError, match="conv nets only, not --net mlp"):
        check_config(_small(net="mlp"))
    with pytest.raises(ValueError, match="unknown guide 'diagonal' for --model deep-hierarchical"):
        check_config(_small(guide="diagonal"))
    with pytest.raises(ValueError, match=r"divisible by 2\^2 = 4"):
        check_config(_small(image_size=30))
    with pytest.raises(ValueError, match="sample_temperature"):
        _small(sample_temperature=0)


def test_temperature_scales_every_prior_std():
    from pyro_vae.evaluation.pictures import _Temper

    vae = build_model(_small(), (1, 28, 28))
    x = torch.zeros(2, 1, 28, 28)
    with poutine.block():
        trace = poutine.trace(
            _Temper(0.5, exclude=["x"])(poutine.uncondition(vae.model))
        ).get_trace(x)
    # z_2's prior reads the tempered z_1: compare its scale with the untempered prior at the same
    # state
    replay = poutine.trace(
        poutine.condition(vae.model, data={n: trace.nodes[n]["value"] for n in vae.sites})
    )
    plain = replay.get_trace(x)
    for name in vae.sites:
        tempered, base = trace.nodes[name]["fn"].base_dist, plain.nodes[name]["fn"].base_dist
        assert torch.allclose(tempered.scale, 0.5 * base.scale) and torch.allclose(
            tempered.loc, base.loc
        )
    assert isinstance(trace.nodes["x"]["fn"].base_dist, dist.Bernoulli)


def test_gradient_norm_skip_leaves_parameters_and_counts():
    from pyro_vae.training.optim import make_optimizer

    p = pyro.param("w", torch.ones(3))
    optim = make_optimizer("adam", lr=0.1, skip_threshold=1.0)
    p.unconstrained().grad = torch.full((3,), 10.0)  # norm 17.3 > 1: skipped
    optim([p.unconstrained()])
    assert torch.equal(pyro.param("w").detach(), torch.ones(3))
    p.unconstrained().grad = torch.full((3,), 0.1)  # norm 0.17: taken
    optim([p.unconstrained()])
    assert not torch.equal(pyro.param("w").detach(), torch.ones(3))
    assert optim.take_skipped() == 1 and optim.take_skipped() == 0


@pytest.fixture
def data_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("PYRO_VAE_DATA", str(tmp_path_factory.getbasetemp() / "data"))


TINY = [
    "--model",
    "deep-hierarchical",
    "--limit",
    "128",
    "--test-limit",
    "32",
    "--epochs",
    "1",
    "--batch-size",
    "64",
    "--hidden-channels",
    "8",
    "--latent-channels",
    "2",
    "--device",
    "cpu",
    "--quiet",
]


@needs_data
@pytest.mark.filterwarnings("ignore:posterior collapse. latent site")
def test_default_cli_path_trains_evaluates_and_draws(tmp_path, capsys, data_cache):
    from pyro_vae.app.cli import main

    out = tmp_path / "run"
    main(
        [
            "train",
            *TINY,
            "--sample-temperature",
            "0.7",
            "--skip-threshold",
            "1e9",
            "--out",
            str(out),
        ]
    )
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert math.isfinite(rows[0]["train_loss"]) and rows[0]["skipped_updates"] == 0
    assert set(rows[0]["active_units"]) == {"z_1", "z_2", "z_3", "z_4"}
    for name in (
        "samples.png",
        "samples_t0.7.png",
        "reconstructions.png",
        "traversals.png",
        "interpolations.png",
    ):
        assert (out / name).stat().st_size > 0, name
    capsys.readouterr()
    from pyro_vae.app.experiment import load_run
    from pyro_vae.evaluation.metrics import evaluate

    _, vae, data = load_run(str(out), "cpu")
    with pytest.warns(
        UserWarning, match="latent groups carry"
    ):  # 2 steps: every group has collapsed
        direct = evaluate(vae.model, vae.guide, data.test[:32], nll_samples=0, verbose=False)
    assert set(direct["kl_per_site"]) == set(direct["latent_sites"]) == {"z_1", "z_2", "z_3", "z_4"}
    main(["evaluate", str(out), "--nll-samples", "5", "--limit", "32", "--json"])
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert len(result["active_units"]) == 4 and all(v >= 0 for v in result["kl_per_site"].values())
    assert sum(result["kl_per_site"].values()) == pytest.approx(
        result["kl"], rel=0.5, abs=1.0
    )  # MC vs analytic
    assert math.isfinite(result["nll"]) and "warning: posterior collapse" in captured.err
    main(["sample", str(out), "--n", "16", "--temperature", "0.5"])
    assert (out / "samples_t0.5.png").stat().st_size > 0


@needs_data
@pytest.mark.parametrize("estimator", ["meanfield", "iwae", "dreg"])
def test_every_estimator_trains_from_the_cli(estimator, tmp_path, data_cache):
    from pyro_vae.app.cli import main

    out = tmp_path / "run"
    main(
        [
            "train",
            *TINY,
            "--elbo",
            estimator,
            "--particles",
            "2",
            "--fast",
            "off",
            "--no-pictures",
            "--no-tensorboard",
            "--out",
            str(out),
        ]
    )
    row = json.loads(open(out / "metrics.jsonl").readline())
    assert (
        math.isfinite(row["train_loss"])
        and math.isfinite(row["test_elbo"])
        and row["bad_steps"] == 0
    )


def test_the_captured_step_runs_the_shared_top_down_path_once():
    """Under Trace_ELBO the model recomputes the top-down path on the guide's samples; the captured
    graph keeps one copy, forward and backward: as many convolutions as a hand-written loss
    (bottom-up 1 + 3 per scale; per group prior head, guide head, projection, 2 block convs; an
    upsampling conv between scales; the output conv), and the replay still gives the plain loss and
    gradients (proven)."""
    from pyro.infer import Trace_ELBO

    from pyro_vae.estimators import FastELBO

    pyro.clear_param_store()
    torch.manual_seed(0)
    config = Config(model="deep-hierarchical", hidden_channels=4, latent_channels=2)
    vae = build_model(config, (1, 8, 8), 16)
    x = torch.rand(16, 1, 8, 8).bernoulli()
    elbo = FastELBO(Trace_ELBO(), mode="trace")
    assert elbo.prepare(vae.model, vae.guide, [x[:8], x[8:]]), elbo.note
    step = elbo.steps[8]
    convs = [n for n in step.fx.graph.nodes if n.target is torch.ops.aten.convolution.default]
    scales, groups = config.scales, config.scales * config.groups_per_scale
    assert step.merged > 0 and step.backward_merged
    assert len(convs) == 1 + 3 * scales + 5 * groups + (scales - 1) + 1
    # and its backward once: one convolution_backward per convolution (unmerged: 43 against 29 at
    # the default size, the shared path differentiated once for the model and once for the guide)
    backward = [
        n for n in step.fx.graph.nodes if n.target is torch.ops.aten.convolution_backward.default
    ]
    assert len(backward) == len(convs)
