"""Issue 19: the VampPrior p(z) = (1/K) Σ_k q(z | u_k), for the VAE and the hierarchical model."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

from pyro_vae import Config, Optimization, Trainer
from pyro_vae.data import ImageData
from pyro_vae.estimators.importance import log_likelihood
from pyro_vae.models import build_model
from pyro_vae.models.priors import VampPrior


def normal_mixture_by_hand(z, loc, scale):
    """log (1/K) Σ_k Π_d N(z_d; loc_kd, scale_kd), written out with exp and sums (no torch
    distributions)."""
    total = 0.0
    for k in range(loc.shape[0]):
        quad = ((z - loc[k]) / scale[k]).pow(2).sum(-1)
        log_norm = torch.log(scale[k]).sum() + 0.5 * loc.shape[1] * math.log(2 * math.pi)
        total = total + torch.exp(-0.5 * quad - log_norm)
    return torch.log(total / loc.shape[0])


def test_log_density_is_the_mixture_computed_by_hand():
    g = torch.Generator().manual_seed(3)
    loc, scale = (
        torch.randn(5, 3, generator=g, dtype=torch.float64),
        torch.rand(5, 3, generator=g, dtype=torch.float64) + 0.3,
    )
    prior = VampPrior(dist.Normal(loc, scale).to_event(1))
    z = torch.randn(7, 4, 3, generator=g, dtype=torch.float64) * 2  # sample dims broadcast
    assert prior.batch_shape == () and prior.event_shape == (3,)
    torch.testing.assert_close(
        prior.log_prob(z), normal_mixture_by_hand(z, loc, scale), rtol=1e-12, atol=1e-12
    )
    expanded = prior.expand((4,))  # what pyro.plate does
    assert expanded.batch_shape == (4,)
    torch.testing.assert_close(
        expanded.log_prob(z), normal_mixture_by_hand(z, loc, scale), rtol=1e-12, atol=1e-12
    )
    # components with a batch dimension of their own take the generic path (a [..., K, D] tensor):
    # the
    # same density
    batched = VampPrior(dist.Normal(loc.expand(4, 5, 3), scale.expand(4, 5, 3)).to_event(1))
    assert batched._gaussians is None and batched.batch_shape == (4,)
    torch.testing.assert_close(
        batched.log_prob(z), normal_mixture_by_hand(z, loc, scale), rtol=1e-12, atol=1e-12
    )


def test_float32_density_of_40_dimensional_posteriors_is_accurate():
    """The matrix-product form on float32 inputs stays within 1e-4 nats of float64 for 500 sharp
    posteriors, D = 40."""
    g = torch.Generator().manual_seed(0)
    loc, scale = (
        torch.randn(500, 40, generator=g) * 2,
        torch.rand(500, 40, generator=g) * 0.95 + 0.05,
    )
    z = loc[:100] + scale[:100] * torch.randn(
        100, 40, generator=g
    )  # near the components, where they are sharp
    prior = VampPrior(dist.Normal(loc, scale).to_event(1)).expand((100,))
    exact = normal_mixture_by_hand(z.double(), loc.double(), scale.double())
    assert prior.log_prob(z).dtype == torch.float32
    assert (prior.log_prob(z).double() - exact).abs().max() < 1e-4


def test_samples_follow_the_mixture():
    """Mean and variance of many draws match the mixture's (law of total variance), and rsample is
    differentiable."""
    loc = torch.tensor([[-4.0, 0.0], [4.0, 1.0]], requires_grad=True)
    scale = torch.tensor([[1.0, 0.5], [0.5, 2.0]])
    prior = VampPrior(dist.Normal(loc, scale).to_event(1))
    z = prior.rsample((200000,))
    assert z.shape == (200000, 2)
    # closed form: mean (0, 0.5); variance E[σ²] + Var[μ] = ((1 + .25)/2 + 16, (.25 + 4)/2 + .25)
    torch.testing.assert_close(prior.mean, torch.tensor([0.0, 0.5]))
    torch.testing.assert_close(prior.variance, torch.tensor([16.625, 2.375]))
    se = (prior.variance / 200000).sqrt()
    assert ((z.mean(0) - prior.mean).abs() < 5 * se).all()
    assert ((z.var(0) / prior.variance - 1).abs() < 0.02).all()
    z.sum().backward()
    assert loc.grad is not None and torch.allclose(
        loc.grad.sum(0), torch.tensor([200000.0, 200000.0])
    )


def tiny_data(n=48, side=4):
    g = torch.Generator().manual_seed(1)
    return ImageData(
        train=torch.rand(n, 1, side, side, generator=g),
        train_labels=None,
        test=torch.bernoulli(torch.rand(24, 1, side, side, generator=g), generator=g),
        test_labels=None,
        binarize="dynamic",
    )


def vamp_vae(**overrides):
    config = Config(
        **{
            "latent_dim": 3,
            "hidden_dims": [16],
            "prior": "vampprior",
            "pseudo_inputs": 6,
            **overrides,
        }
    )
    return build_model(config, (1, 4, 4), num_data=48)


@pytest.mark.parametrize("model", ["vae", "hierarchical"])
def test_model_prior_is_the_mixture_of_the_guide_at_the_pseudo_inputs(model):
    """The model's log p(z) equals (1/K) Σ_k q(z | u_k) with q read from the guide's own trace at
    each u_k."""
    overrides = (
        {"model": "hierarchical", "latent_dims": [3, 2], "guide": "top-down"}
        if model == "hierarchical"
        else {}
    )
    vae = vamp_vae(**overrides)
    x = tiny_data().test[:5]
    site = "z" if model == "vae" else "z2"
    guide_trace = poutine.trace(vae.guide).get_trace(x)
    model_trace = poutine.trace(poutine.replay(vae.model, trace=guide_trace)).get_trace(x)
    z = guide_trace.nodes[site]["value"]
    u = vae.pseudo_inputs()
    components = (
        poutine.trace(vae.guide).get_trace(u).nodes[site]["fn"].base_dist
    )  # q(z | u_k), K × D Gaussians
    expected = normal_mixture_by_hand(
        z.double(), components.loc.double(), components.scale.double()
    )
    torch.testing.assert_close(
        model_trace.nodes[site]["fn"].log_prob(z).double(), expected, rtol=1e-5, atol=1e-5
    )
    assert "pseudo_inputs$$$weight" in pyro.get_param_store()


def test_meanfield_samples_the_kl_instead_of_an_analytic_one():
    """No kl_divergence exists for the VampPrior: meanfield falls back on log q − log p, i.e. the
    Trace_ELBO loss."""
    vae = vamp_vae()
    x = tiny_data().test[:8]
    pyro.set_rng_seed(5)
    trace = Trace_ELBO().differentiable_loss(vae.model, vae.guide, x)
    pyro.set_rng_seed(5)
    meanfield = TraceMeanField_ELBO().differentiable_loss(vae.model, vae.guide, x)
    torch.testing.assert_close(meanfield, trace)


def test_vampprior_vae_trains_on_the_fast_path_and_learns_its_pseudo_inputs():
    vae = vamp_vae()
    data = tiny_data()
    store = pyro.get_param_store()
    trainer = Trainer(
        vae.model, vae.guide, optim=Optimization(lr=1e-2), progress=False, modules=[vae]
    )
    trainer.fit(data, epochs=1, batch_size=16)  # registers the parameters
    before = store["pseudo_inputs$$$weight"].detach().clone()
    history = trainer.fit(data, epochs=4, batch_size=16)
    assert trainer.fast_note.startswith("fast path: loss and gradients traced"), trainer.fast_note
    assert not torch.equal(before, store["pseudo_inputs$$$weight"].detach())
    assert all(math.isfinite(m["test_elbo"]) for m in history)
    # the importance-sampled log p(x) is a tighter bound than the ELBO (up to noise)
    ll = log_likelihood(vae.model, vae.guide, data.test, num_samples=200).mean().item()
    assert ll > history[-1]["test_elbo"] - 0.5


def test_vampprior_refuses_guides_it_cannot_score_with():
    with pytest.raises(ValueError, match="guide='diagonal'"):
        vamp_vae(guide="iaf", flows=1, flow_hidden_dims=[8])
    with pytest.raises(ValueError, match="guide='top-down'"):
        vamp_vae(model="hierarchical", latent_dims=[3, 2], guide="bottom-up")
    with pytest.raises(ValueError, match="pseudo_inputs"):
        Config(prior="vampprior", pseudo_inputs=0)
    from pyro_vae.app.config import check_config

    with pytest.raises(ValueError, match="--prior vampprior is not available for --model m2"):
        check_config(Config(model="m2", prior="vampprior"))
