"""Issue 29, item 3: NVAE's and VDVAE's training recipe against closed forms: the weights' moving
average (``--weight-ema``), the spectral regularization (``--spectral-reg``)."""

import dataclasses
import math

import pyro
import pytest
import torch

from pyro_vae import Config, Optimization, Trainer
from pyro_vae.data import ImageData
from pyro_vae.estimators.spectral_reg import SpectralPenalty, spectral_regularized
from pyro_vae.models import build_model
from pyro_vae.training.figures import Evaluation
from pyro_vae.training.listeners import Listener
from pyro_vae.training.weight_ema import WeightEMA

TINY = Config(latent_dim=3, hidden_dims=[16], lr=1e-2)


def tiny_data():
    g = torch.Generator().manual_seed(1)
    return ImageData(
        train=torch.rand(48, 1, 3, 3, generator=g),
        train_labels=None,
        test=torch.bernoulli(torch.rand(20, 1, 3, 3, generator=g), generator=g),
        test_labels=None,
        binarize="dynamic",
    )


class Recorder(Listener):
    """The raw parameters θ_0 (run start) and after every step θ_k, and the RNG state each epoch's
    evaluation starts from."""

    order = 1

    def __init__(self):
        self.thetas, self.rng = [], []

    def _take(self):
        store = pyro.get_param_store()
        self.thetas.append({k: p.detach().double().clone() for k, p in store.named_parameters()})

    def on_run_start(self, trainer):
        self._take()

    def on_step_end(self, trainer, step, loss, ok):
        self._take()

    def on_train_epoch_end(self, trainer, step):
        self.rng.append((len(self.thetas), pyro.util.get_rng_state()))


def closed_form(thetas, d):
    """θ̄_n = dⁿ θ_0 + Σ_{k=1}^n (1−d) d^{n−k} θ_k."""
    n = len(thetas) - 1
    return {
        name: d**n * thetas[0][name]
        + sum((1 - d) * d ** (n - k) * thetas[k][name] for k in range(1, n + 1))
        for name in thetas[0]
    }


@pytest.mark.parametrize("fast", [False, "trace"])
def test_weight_ema_is_the_closed_form_and_evaluation_uses_it(fast):
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    vae = build_model(TINY, (1, 3, 3), num_data=48)
    d, recorder = 0.9, Recorder()
    ema = WeightEMA(d)
    trainer = Trainer(
        vae.model,
        vae.guide,
        optim=Optimization(TINY.lr),
        modules=[vae],
        fast=fast,
        progress=False,
        listeners=[ema, recorder],
    )
    data = tiny_data()
    history = trainer.fit(data, epochs=2, batch_size=16)
    assert [r["fast_path"] for r in history] == [bool(fast)] * 2  # the replayed step, too
    thetas = recorder.thetas
    assert len(thetas) == 1 + 2 * 3  # θ_0 and 3 steps per epoch: training went on from θ, not θ̄
    expected = closed_form(thetas, d)
    store = dict(pyro.get_param_store().named_parameters())
    for name, value in expected.items():  # (a) the shadow, also in the store once fit returns
        assert torch.allclose(ema.shadow[name].double(), value, atol=1e-6), name
        assert torch.equal(store[name], ema.shadow[name]), name
        assert not torch.allclose(value, thetas[-1][name], atol=1e-3), name  # θ̄ ≠ θ_n
    # (b) each epoch's test ELBO is the shadow's: the same draws on θ̄ give it, on θ another
    for (steps, rng), row in zip(recorder.rng, history):
        at = {"ema": closed_form(thetas[:steps], d), "raw": thetas[steps - 1]}
        elbos = {}
        for kind, params in at.items():
            with torch.no_grad():
                for name, value in params.items():
                    store[name].copy_(value)
            pyro.util.set_rng_state(rng)
            elbos[kind] = Evaluation().terms(trainer, data.test)["elbo"]
        assert row["test_elbo"] == pytest.approx(elbos["ema"], rel=1e-5)
        assert abs(row["test_elbo"] - elbos["raw"]) > 1e-3


def test_weight_ema_refuses_a_decay_outside_0_1():
    with pytest.raises(ValueError, match=r"weight_ema must be in \[0, 1\), got 1.0"):
        WeightEMA(1.0)
    with pytest.raises(ValueError, match="weight_ema"):
        Config(weight_ema=-0.1)


def test_a_run_with_weight_ema_is_evaluated_and_sampled_with_the_shadow(tmp_path, monkeypatch):
    from pyro_vae.app import experiment
    from pyro_vae.core.checks import load_checkpoint

    monkeypatch.setenv("PYRO_VAE_DATA", str(tmp_path / "data"))
    out = str(tmp_path / "run")
    config = dataclasses.replace(
        TINY, limit=64, test_limit=32, epochs=1, batch_size=32, weight_ema=0.5, out=out
    )
    config = dataclasses.replace(config, device="cpu", pictures=False, tensorboard=False)
    experiment.train(config, progress=False)
    state = load_checkpoint(f"{out}/checkpoint.pt")
    shadow = state["listeners"]["WeightEMA"]["shadow"]
    experiment.load_run(out, device="cpu", data=False)
    store = dict(pyro.get_param_store().named_parameters())
    assert shadow.keys() == store.keys()
    for name, value in shadow.items():
        assert torch.equal(store[name], value), name
        assert not torch.equal(state["params"][name], value), name  # the raw weights differ


# -- spectral regularization ---------------------------------------------------------------------
def test_spectral_penalty_is_the_largest_singular_value_and_its_gradient_u_vT():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 8, 3).double()
    lam = 0.3
    penalty = SpectralPenalty(conv, lam)
    assert set(dict(penalty.named_buffers())) == {"u0", "v0"}
    for _ in range(200):  # power iteration: one step per call in training mode
        value = penalty()
    w = conv.weight.detach().flatten(1)  # [out, in·k·k]
    U, S, Vh = torch.linalg.svd(w)
    assert torch.allclose(S, torch.linalg.svdvals(w))
    assert value.item() == pytest.approx(lam * S[0].item(), rel=1e-10)
    penalty.eval()  # evaluation: no step, the same σ
    value = penalty()
    assert value.item() == pytest.approx(lam * S[0].item(), rel=1e-10)
    value.backward()  # ∂(λσ)/∂W = λ u vᵀ (the singular vectors' signs cancel)
    expected = lam * torch.outer(U[:, 0], Vh[0]).reshape(conv.weight.shape)
    assert torch.allclose(conv.weight.grad, expected, atol=1e-10)


def tiny_conv_vae(num_data):
    config = dataclasses.replace(TINY, net="conv", conv_channels=4, latent_dim=2)
    return build_model(config, (1, 8, 8), num_data=num_data)


@pytest.mark.parametrize("elbo", ["pyro-trace", "iwae", "dreg"])
def test_spectral_reg_adds_n_lambda_sigma_to_the_loss_of_every_estimator(elbo):
    """Each data point's log-joint falls by λ·Σσ: the full-data loss of N images by N·λ·Σσ, for
    the ELBO and for the per-data-point bounds alike; the evaluation (eval mode) leaves it out."""
    from pyro_vae.estimators import make_elbo

    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    n, lam = 100, 0.05
    vae = tiny_conv_vae(n)
    penalty = SpectralPenalty(vae, lam)
    for _ in range(100):  # σ converged: dreg calls the model twice, each call taking a step
        penalty()
    regularized = spectral_regularized(vae.model, penalty)
    estimator = pyro.infer.Trace_ELBO() if elbo == "pyro-trace" else make_elbo(elbo, 3)
    x = torch.bernoulli(torch.rand(10, 1, 8, 8, generator=torch.Generator().manual_seed(2)))
    estimator.differentiable_loss(vae.model, vae.guide, x)  # it finds the plates, drawing samples
    losses = {}
    for name, model in (("plain", vae.model), ("regularized", regularized)):
        pyro.set_rng_seed(1)
        losses[name] = estimator.differentiable_loss(model, vae.guide, x).item()
    penalty.eval()
    sigmas = penalty.sigmas().sum().item()
    assert len(penalty.convs) > 2 and sigmas > 0
    gap = losses["regularized"] - losses["plain"]
    assert gap == pytest.approx(n * lam * sigmas, rel=1e-4)
    pyro.set_rng_seed(1)  # eval mode: no factor
    assert estimator.differentiable_loss(regularized, vae.guide, x).item() == pytest.approx(
        losses["plain"], rel=1e-6
    )


def test_spectral_reg_trains_on_the_fast_path(tmp_path, monkeypatch):
    """The captured step reads and writes the power iteration's buffers: its replay check (at the
    capture and at each epoch's start) passes, and the buffers are in the checkpoint."""
    from pyro_vae.app import experiment
    from pyro_vae.core.checks import load_checkpoint

    monkeypatch.setenv("PYRO_VAE_DATA", str(tmp_path / "data"))
    out = str(tmp_path / "run")
    config = Config(
        net="conv", conv_channels=4, latent_dim=2, limit=64, test_limit=32, epochs=2,
        batch_size=32, spectral_reg=0.1, fast="trace", out=out, device="cpu", pictures=False,
        tensorboard=False,
    )  # fmt: skip
    _, _, history = experiment.train(config, progress=False)
    assert [r["fast_path"] for r in history] == [True, True], history[-1]["fast_path_note"]
    buffers = load_checkpoint(f"{out}/checkpoint.pt")["buffers"][1]
    assert sorted(buffers)[:2] == ["u0", "u1"] and all(b.dim() == 1 for b in buffers.values())


# -- KL balancing ----------------------------------------------------------------------------------
def two_group_pair(n):
    """z1 ~ N(0, I_2), z2 ~ N(0, I_3), x ~ N(A z1 + C z2, 0.5² I_4) in a data plate of N; the guide
    q(z_l | x) = N(M_l x, diag s_l²) with parameters M_l, log s_l."""
    import pyro.distributions as dist

    from pyro_vae import data_plate

    g = torch.Generator().manual_seed(3)
    A, C = torch.randn(4, 2, generator=g), torch.randn(4, 3, generator=g)
    init = {
        "M1": 0.3 * torch.randn(2, 4, generator=g),
        "M2": 0.3 * torch.randn(3, 4, generator=g),
        "log_s1": torch.tensor([-1.0, -0.5]),
        "log_s2": torch.tensor([-0.2, -1.5, 0.1]),
    }

    def model(x):
        with data_plate(x, n):
            z1 = pyro.sample("z1", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
            z2 = pyro.sample("z2", dist.Normal(0.0, 1.0).expand([3]).to_event(1))
            pyro.sample("x", dist.Normal(z1 @ A.T + z2 @ C.T, 0.5).to_event(1), obs=x)

    def guide(x):
        p = {k: pyro.param(k, v) for k, v in init.items()}
        with data_plate(x, n):
            for l in ("1", "2"):
                q = dist.Normal(x @ p["M" + l].T, p["log_s" + l].exp()).to_event(1)
                pyro.sample("z" + l, q)

    def mean_kls():  # KL(N(m, s²) || N(0, 1)) per image, averaged over the batch: by hand
        p = {k: pyro.param(k) for k in init}
        kls = []
        for l in ("1", "2"):
            m, s = x @ p["M" + l].T, p["log_s" + l].exp()
            kls.append((0.5 * (s**2 + m**2 - 1) - s.log()).sum(-1).mean())
        return torch.stack(kls)

    x = torch.randn(6, 4, generator=g)
    return model, guide, x, mean_kls


@pytest.mark.parametrize("beta", [0.25, 1.0])
def test_kl_balancing_weighs_each_group_by_nvae_gamma_while_beta_below_1(beta):
    from pyro_vae.estimators import FreeBits_ELBO, KLBalanced_ELBO
    from pyro_vae.estimators.variants import beta_scale

    pyro.clear_param_store()
    n = 60
    model, guide, x, mean_kls = two_group_pair(n)
    model, guide = beta_scale(model, beta), beta_scale(guide, beta)
    losses = {}
    for name, elbo in (("plain", FreeBits_ELBO(2)), ("balanced", KLBalanced_ELBO(2))):
        elbo.differentiable_loss(model, guide, x)  # finds the plates, drawing samples
        pyro.set_rng_seed(5)
        losses[name] = elbo.differentiable_loss(model, guide, x)
    kl = mean_kls()
    c = (kl.detach() + 0.01) / torch.tensor([2.0, 3.0])  # NVAE: (mean KL + 0.01) / group size
    gamma = 2 * c / c.sum() if beta < 1 else torch.ones(2)
    assert gamma.sum().item() == pytest.approx(2.0)
    assert not torch.allclose(gamma, torch.ones(2), atol=0.05) or beta == 1
    expected = n * beta * ((gamma - 1) * kl).sum()  # the recon terms are the same draws
    gap = losses["balanced"] - losses["plain"]
    assert gap.item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-4)
    store = pyro.get_param_store()
    params = [store.get_param(k).unconstrained() for k in ("M1", "M2", "log_s1", "log_s2")]
    got = torch.autograd.grad(gap, params, allow_unused=True)
    want = torch.autograd.grad(expected, params, allow_unused=True)  # γ held fixed
    for g_, w in zip(got, want):
        zero = torch.zeros_like(w if w is not None else g_)
        assert torch.allclose(zero if g_ is None else g_, zero if w is None else w, atol=1e-4)


def test_every_recipe_flag_trains_a_deep_hierarchy_on_the_fast_path(tmp_path, monkeypatch):
    """--kl-balance (during the warm-up), --spectral-reg and --weight-ema together: the captured
    step's replay check passes at its capture and at each epoch's start."""
    from pyro_vae.app import experiment

    monkeypatch.setenv("PYRO_VAE_DATA", str(tmp_path / "data"))
    config = Config(
        model="deep-hierarchical", scales=1, groups_per_scale=2, hidden_channels=8,
        latent_channels=2, limit=64, test_limit=32, epochs=2, batch_size=32, kl_warmup_epochs=2,
        kl_balance=True, spectral_reg=0.1, weight_ema=0.9, fast="trace", out=str(tmp_path / "r"),
        device="cpu", pictures=False, tensorboard=False,
    )  # fmt: skip
    _, _, history = experiment.train(config, progress=False)
    assert [r["fast_path"] for r in history] == [True, True], history[-1]["fast_path_note"]
    assert all(math.isfinite(r["test_elbo"]) for r in history)
