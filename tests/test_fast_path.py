"""The trainer's fast path (fused optimizer, traced loss and gradients): same results as the plain path, clean fallbacks."""
import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_vae import VAE, Trainer, make_guide, make_likelihood
from pyro_vae.data import ImageData
from pyro_vae.models.nets import MLP

X_SHAPE = (1, 6, 6)


def _vae(guide="diagonal", flows=0):
    encoder = MLP(X_SHAPE, [], 16, final_activation=True)
    return VAE(MLP(3, [16], X_SHAPE), make_guide(guide, encoder, 16, 3, flows), make_likelihood("bernoulli", X_SHAPE),
               3, X_SHAPE, num_data=100)


def _data():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(100, *X_SHAPE, generator=g)
    return ImageData(train=x, train_labels=None, test=x[:20], test_labels=None, binarize="dynamic")


def _fit(fast, make=_vae, elbo="trace", particles=1):
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    vae = make()
    trainer = Trainer(vae.model, vae.guide, elbo, particles, progress=False, modules=[vae], fast=fast)
    history = trainer.fit(_data(), 3, batch_size=32)  # 100 = 3 × 32 + 4: two batch sizes
    params = {k: v.detach().clone() for k, v in pyro.get_param_store().named_parameters()}
    return trainer, history, params


@pytest.mark.parametrize("elbo, particles", [("trace", 1), ("iwae", 5), ("dreg", 5)])
def test_traced_loss_gives_the_plain_results(elbo, particles):
    fast, fast_history, fast_params = _fit("auto", elbo=elbo, particles=particles)
    assert fast.fast_note.startswith("fast path: loss and gradients traced") and sorted(fast.svi.compiled) == [4, 32]
    plain, plain_history, plain_params = _fit(False, elbo=elbo, particles=particles)
    assert plain.svi.compiled == {}
    for k in plain_params:
        torch.testing.assert_close(fast_params[k], plain_params[k], rtol=1e-4, atol=1e-5)
    for a, b in zip(fast_history, plain_history):
        assert abs(a["train_loss"] - b["train_loss"]) < 1e-4 * abs(b["train_loss"])


def test_estimators_without_a_faithful_trace_fall_back():
    trainer, _, _ = _fit("auto", elbo="meanfield")
    assert trainer.svi.compiled == {} and "TraceMeanField_ELBO" in trainer.fast_note


@pytest.mark.parametrize("flow, elbo", [("iaf", "trace"), ("iaf", "iwae"), ("planar", "iwae")])
def test_flow_guides_take_the_fast_path_with_the_plain_results(flow, elbo):
    """Pyro's JitTrace_ELBO fails on conditioned flows (pyro-ppl/pyro#3132); make_fx follows them."""
    make = lambda: _vae(flow, 2)  # noqa: E731
    fast, fast_history, fast_params = _fit("auto", make, elbo, 3)
    assert sorted(fast.svi.compiled) == [4, 32]
    _, plain_history, plain_params = _fit(False, make, elbo, 3)
    for k in plain_params:
        torch.testing.assert_close(fast_params[k], plain_params[k], rtol=1e-4, atol=1e-5)
    assert abs(fast_history[-1]["train_loss"] - plain_history[-1]["train_loss"]) < 1e-3


def _pair_with(control):
    """A user pair whose decoder output goes through ``control(x, logits)``."""
    decoder = MLP(2, [8], X_SHAPE)

    def model(x):
        pyro.module("decoder", decoder)
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
            logits = control(x, decoder(z))
            pyro.sample("x", dist.Bernoulli(logits=logits, validate_args=False).to_event(3), obs=x)

    def guide(x):
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Normal(x.new_zeros(2), 1.0).to_event(1))

    return model, guide


def test_user_pairs_need_to_declare_it_and_data_dependent_control_flow_is_caught():
    # Python control flow on the data: a trace would freeze one branch
    model, guide = _pair_with(lambda x, logits: logits * 2 if x.mean() > 0.5 else logits)
    x = torch.full((64, *X_SHAPE), 0.9).bernoulli()
    trainer = Trainer(model, guide, "trace", progress=False)
    assert not trainer.enable_fast_path([x[:32], x[32:]])
    assert "jit_compatible" in trainer.fast_note
    trainer = Trainer(model, guide, "trace", progress=False, fast=True)
    assert not trainer.enable_fast_path([x[:32], x[32:]])
    assert "reads a tensor's value in Python" in trainer.fast_note and trainer.svi.compiled == {}


def test_python_state_frozen_by_the_trace_is_caught():
    calls = [0]

    def control(x, logits):  # a value read from Python that changes between calls: a trace keeps the first
        calls[0] += 1
        return logits * calls[0]

    model, guide = _pair_with(control)
    x = torch.full((64, *X_SHAPE), 0.5).bernoulli()
    trainer = Trainer(model, guide, "trace", progress=False, fast=True)
    assert not trainer.enable_fast_path([x[:32], x[32:]])
    assert "differs from the plain one" in trainer.fast_note and trainer.svi.compiled == {}
    model, guide = _pair_with(lambda x, logits: logits * 2)
    assert trainer.__class__(model, guide, "trace", progress=False, fast=True).enable_fast_path([x[:32], x[32:]])


def test_a_nonfinite_replay_is_skipped():
    pyro.clear_param_store()
    vae = _vae()
    x = _data().train.bernoulli()
    trainer = Trainer(vae.model, vae.guide, "trace", progress=False, modules=[vae])
    assert trainer.enable_fast_path([x[:32], x[32:64]])
    trainer.svi.step(x[:32])
    store = pyro.get_param_store()
    before = {k: v.detach().clone() for k, v in store.named_parameters()}
    poisoned = x[:32].clone()
    poisoned[0, 0, 0, 0] = float("nan")  # NaN loss and gradients, found by the graph's own finiteness flag
    loss, ok = trainer.svi.step(poisoned)
    assert not ok and not torch.isfinite(loss)
    assert all(torch.equal(v, before[k]) for k, v in store.named_parameters())
    assert all(p.grad is None for p in trainer.svi.compiled[32].params)
    loss, ok = trainer.svi.step(x[32:64])
    assert ok and torch.isfinite(loss)
    assert all(not torch.equal(v, before[k]) for k, v in store.named_parameters())


def test_a_parameter_the_loss_does_not_reach_gets_no_gradient_and_no_optimizer_state():
    pyro.clear_param_store()
    model, guide = _pair_with(lambda x, logits: logits)

    def model_with_an_idle_parameter(x):
        pyro.param("idle", torch.ones(3))  # registered, never used by the loss
        return model(x)

    x = torch.full((64, *X_SHAPE), 0.5).bernoulli()
    trainer = Trainer(model_with_an_idle_parameter, guide, "trace", progress=False, fast=True)
    assert trainer.enable_fast_path([x[:32], x[32:]])
    traced = trainer.svi.compiled[32]
    assert [name for name, used in zip(traced.names, traced.used) if not used] == ["idle"]
    for _ in range(3):
        trainer.svi.step(x[:32])
    state = trainer.optim.get_state()
    assert state["idle"]["state"] == {} and state["decoder$$$0.weight"]["state"][0]["step"] == 3
