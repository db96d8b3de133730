"""FusedOptim takes the same steps as pyro.optim's one-optimizer-per-parameter wrapper, and shares
its state format."""

import pyro
import pytest
import torch
from linear_gaussian import LinearGaussian
from pyro.infer import SVI, Trace_ELBO

from pyro_vae.training.optim import make_optimizer, set_lr


def _pair():
    """A learnable linear-Gaussian model (W, b) with an amortized diagonal guide (two linear
    maps)."""
    lg = LinearGaussian(latent_dim=2, obs_dim=4)
    enc = torch.nn.Linear(4, 4).double()

    def model(x):
        W = pyro.param("W", torch.ones(4, 2, dtype=torch.float64))
        b = pyro.param("b", torch.zeros(4, dtype=torch.float64))
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", pyro.distributions.Normal(x.new_zeros(2), 1.0).to_event(1))
            pyro.sample("x", pyro.distributions.Normal(z @ W.T + b, 0.5).to_event(1), obs=x)

    def guide(x):
        pyro.module("enc", enc)
        loc, log_scale = enc(x).chunk(2, -1)
        with pyro.plate("data", len(x)):
            pyro.sample("z", pyro.distributions.Normal(loc, log_scale.exp()).to_event(1))

    return lg.sample(16), model, guide


def _train(optim, steps, seed=0, state=None):
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    x, model, guide = _pair()
    svi = SVI(model, guide, optim, Trace_ELBO())
    if state is not None:
        params, optim_state, rng = state
        (
            pyro.poutine.trace(model).get_trace(x),
            pyro.poutine.trace(guide).get_trace(x),
        )  # registers parameters
        for name, value in pyro.get_param_store().named_parameters():
            value.data.copy_(params[name])
        optim.set_state(optim_state)
        pyro.util.set_rng_state(rng)
    losses = [svi.step(x) for _ in range(steps)]
    params = {k: v.detach().clone() for k, v in pyro.get_param_store().named_parameters()}
    return losses, params, (params, optim.get_state(), pyro.util.get_rng_state())


@pytest.mark.parametrize("name", ["adam", "clipped-adam"])
def test_fused_steps_equal_per_parameter_steps(name):
    _, ref, _ = _train(make_optimizer(name, 0.05, fused=False), 30)
    _, fused, _ = _train(make_optimizer(name, 0.05, fused=True), 30)
    assert ref.keys() == fused.keys()
    for k in ref:
        torch.testing.assert_close(fused[k], ref[k], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("first_fused", [True, False])
def test_state_round_trips_between_fused_and_per_parameter(first_fused):
    """11 steps with one, state handed to the other, 10 more: equal to 21 steps in one go."""
    _, straight, _ = _train(make_optimizer("adam", 0.05, fused=False), 21)
    _, _, state = _train(make_optimizer("adam", 0.05, fused=first_fused), 11)
    _, resumed, _ = _train(make_optimizer("adam", 0.05, fused=not first_fused), 10, state=state)
    for k in straight:
        torch.testing.assert_close(resumed[k], straight[k], rtol=1e-10, atol=1e-12)


def test_only_the_given_parameters_move():
    pyro.clear_param_store()
    a = pyro.param("a", torch.zeros(3))
    b = pyro.param("b", torch.zeros(3))
    optim = make_optimizer("adam", 0.1)
    for p in (a, b):
        p.grad = torch.ones(3)
    optim([a, b])
    before = b.detach().clone()
    a.grad, b.grad = torch.ones(3), torch.ones(3)
    optim([a])
    assert torch.equal(b.detach(), before) and b.grad is not None
    assert not torch.equal(a.detach(), before)


def test_set_lr_reaches_present_and_future_parameters():
    pyro.clear_param_store()
    a = pyro.param("a", torch.zeros(2))
    optim = make_optimizer("adam", 0.1)
    a.grad = torch.ones(2)
    optim([a])
    set_lr(optim, 0.01)
    b = pyro.param("b", torch.zeros(2))
    b.grad = torch.ones(2)
    optim([a, b])
    assert all(g["lr"] == 0.01 for g in optim.optim.param_groups)
    # Adam's first step moves each coordinate by exactly lr
    torch.testing.assert_close(b.detach(), torch.full((2,), -0.01))


def test_bad_optimizer_options():
    with pytest.raises(ValueError, match="unknown optimizer"):
        make_optimizer("sgd-ish")
    with pytest.raises(ValueError, match="lr must be"):
        make_optimizer("adam", float("nan"))
