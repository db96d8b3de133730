"""The trainer's fast path (fused optimizer, traced loss and gradients): same results as the plain
path, clean fallbacks."""

import json
import math
import os

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_vae import VAE, Config, Trainer, load_data, make_guide, make_likelihood
from pyro_vae.app import experiment
from pyro_vae.data import ImageData
from pyro_vae.estimators.variants import FreeBits_ELBO, KLSchedule, beta_scale
from pyro_vae.models import build_model
from pyro_vae.models.nets import MLP
from pyro_vae.estimators import capture, fast
from pyro_vae.training.trainer import METRICS

X_SHAPE = (1, 6, 6)


def _vae(guide="diagonal", flows=0):
    encoder = MLP(X_SHAPE, [], 16, final_activation=True)
    return VAE(
        MLP(3, [16], X_SHAPE),
        make_guide(guide, encoder, 16, 3, flows),
        make_likelihood("bernoulli", X_SHAPE),
        3,
        X_SHAPE,
        num_data=100,
    )


def _data():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(100, *X_SHAPE, generator=g)
    return ImageData(train=x, train_labels=None, test=x[:20], test_labels=None, binarize="dynamic")


def _fit(fast, make=_vae, elbo="trace", particles=1):
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    vae = make()
    trainer = Trainer(
        vae.model, vae.guide, elbo, particles, progress=False, modules=[vae], fast=fast
    )
    history = trainer.fit(_data(), 3, batch_size=32)  # 100 = 3 × 32 + 4: two batch sizes
    params = {k: v.detach().clone() for k, v in pyro.get_param_store().named_parameters()}
    return trainer, history, params


@pytest.mark.parametrize(
    "elbo, particles", [("trace", 1), ("meanfield", 1), ("iwae", 5), ("dreg", 5)]
)
def test_traced_loss_gives_the_plain_results(elbo, particles):
    fast, fast_history, fast_params = _fit("auto", elbo=elbo, particles=particles)
    assert fast.fast_note.startswith("fast path: loss and gradients traced") and sorted(
        fast.fast_steps
    ) == [4, 32]
    plain, plain_history, plain_params = _fit(False, elbo=elbo, particles=particles)
    assert plain.fast_steps == {}
    for k in plain_params:
        torch.testing.assert_close(fast_params[k], plain_params[k], rtol=1e-4, atol=1e-5)
    for a, b in zip(fast_history, plain_history):
        assert abs(a["train_loss"] - b["train_loss"]) < 1e-4 * abs(b["train_loss"])


def test_estimators_without_a_faithful_trace_fall_back():
    trainer, history, _ = _fit("auto", elbo=pyro.infer.TraceGraph_ELBO())
    assert trainer.fast_steps == {} and "TraceGraph_ELBO" in trainer.fast_note
    assert all(
        m["fast_path"] is False and "TraceGraph_ELBO" in m["fast_path_note"] for m in history
    )


@pytest.mark.parametrize(
    "flow, elbo",
    [
        ("iaf", "trace"),
        ("iaf", "iwae"),
        ("planar", "iwae"),
        ("iaf", "dreg"),
        ("iaf", "stl"),
        ("householder", "dreg"),
    ],
)
def test_flow_guides_take_the_fast_path_with_the_plain_results(flow, elbo):
    """Pyro's JitTrace_ELBO fails on conditioned flows (pyro-ppl/pyro#3132); make_fx follows
    them."""
    make = lambda: _vae(flow, 2)  # noqa: E731
    fast, fast_history, fast_params = _fit("auto", make, elbo, 3)
    assert sorted(fast.fast_steps) == [4, 32]
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


def test_user_pairs_are_tried_and_data_dependent_control_flow_is_caught():
    # Python control flow on the data: a trace would freeze one branch
    model, guide = _pair_with(lambda x, logits: logits * 2 if x.mean() > 0.5 else logits)
    x = torch.full((64, *X_SHAPE), 0.9).bernoulli()
    for mode in ("auto", True):
        trainer = Trainer(model, guide, "trace", progress=False, fast=mode)
        assert not trainer.enable_fast_path([x[:32], x[32:]])
        assert "reads a tensor's value in Python" in trainer.fast_note and trainer.fast_steps == {}
    model, guide = _pair_with(lambda x, logits: logits * 2)
    assert Trainer(model, guide, "trace", progress=False).enable_fast_path([x[:32], x[32:]])
    model.jit_compatible = False  # a pair can opt out
    trainer = Trainer(model, guide, "trace", progress=False)
    assert (
        not trainer.enable_fast_path([x[:32], x[32:]])
        and "jit_compatible = False" in trainer.fast_note
    )


def _boolean_mask(x, logits):
    out = logits.clone()
    inside = x > 0.5
    out[inside] = (
        out[inside] * 2
    )  # shapes [number of pixels > 0.5]: a different count on every batch
    return out


@pytest.mark.parametrize(
    "control, op",
    [
        (_boolean_mask, "index with a boolean mask"),
        (lambda x, logits: logits + torch.nonzero(x.flatten()).float().mean(), "nonzero"),
        (lambda x, logits: logits + torch.masked_select(logits, x > 0.5).mean(), "masked_select"),
        (lambda x, logits: logits + torch.unique(x).sum(), "unique"),
    ],
)
def test_ops_with_data_dependent_shapes_are_refused_at_trace_time(control, op):
    """A trace freezes the shape of ``x[mask]``; the two-batch check cannot catch it when both
    batches happen to have the same count (here: two halves of one batch with the same number of
    ones)."""
    model, guide = _pair_with(control)
    x = torch.zeros(64, *X_SHAPE)
    x.view(64, -1)[:, :10] = 1.0
    trainer = Trainer(model, guide, "trace", progress=False)
    assert not trainer.enable_fast_path([x[:32], x[32:]])
    assert (
        "depends on the data" in trainer.fast_note
        and op in trainer.fast_note
        and trainer.fast_steps == {}
    )
    pyro.set_rng_seed(0)
    trainer.svi.step(x[:32].bernoulli(0.5))  # the plain path takes any count


def test_python_state_frozen_by_the_trace_is_caught():
    calls = [0]

    def control(
        x, logits
    ):  # a value read from Python that changes between calls: a trace keeps the first
        calls[0] += 1
        return logits * calls[0]

    model, guide = _pair_with(control)
    x = torch.full((64, *X_SHAPE), 0.5).bernoulli()
    trainer = Trainer(model, guide, "trace", progress=False, fast=True)
    assert not trainer.enable_fast_path([x[:32], x[32:]])
    assert "differs from the plain one" in trainer.fast_note and trainer.fast_steps == {}
    model, guide = _pair_with(lambda x, logits: logits * 2)
    assert trainer.__class__(model, guide, "trace", progress=False, fast=True).enable_fast_path(
        [x[:32], x[32:]]
    )


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
    poisoned[0, 0, 0, 0] = float(
        "nan"
    )  # NaN loss and gradients, found by the graph's own finiteness flag
    loss, ok = trainer.svi.step(poisoned)
    assert not ok and not torch.isfinite(loss)
    assert all(torch.equal(v, before[k]) for k, v in store.named_parameters())
    assert all(p.grad is None for p in trainer.fast_steps[32].params)
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
    traced = trainer.fast_steps[32]
    assert [name for name, used in zip(traced.names, traced.used) if not used] == ["idle"]
    for _ in range(3):
        trainer.svi.step(x[:32])
    state = trainer.optim.get_state()
    assert state["idle"]["state"] == {} and state["decoder$$$0.weight"]["state"][0]["step"] == 3


def test_whether_the_fast_path_applies_is_printed_and_recorded_in_every_metrics_row(
    tmp_path, capsys
):
    vae = _vae()
    trainer = Trainer(vae.model, vae.guide, "trace", out_dir=str(tmp_path), modules=[vae])
    history = trainer.fit(_data(), 2, batch_size=32)
    printed = capsys.readouterr().out
    assert (
        printed.count("fast path: loss and gradients traced into one graph for batch sizes [4, 32]")
        == 1
    )
    rows = [json.loads(line) for line in open(tmp_path / METRICS)]
    assert rows == history and len(rows) == 2
    assert all(r["fast_path"] is True and r["fast_path_note"] == trainer.fast_note for r in rows)
    pyro.clear_param_store()
    vae = _vae()
    trainer = Trainer(vae.model, vae.guide, "trace", progress=False, modules=[vae], fast=False)
    history = trainer.fit(_data(), 1, batch_size=32)
    assert capsys.readouterr().out == ""  # quiet
    assert history[0]["fast_path"] is False and "turned off" in history[0]["fast_path_note"]


@pytest.mark.slow
@pytest.mark.parametrize("elbo", ["trace", "stl"])
def test_the_spline_guide_trains_for_ten_epochs_on_real_data(elbo):
    """Issue 21: the spline's masked indexing (inside vs outside its bound) has a data-dependent
    shape; a trace of it crashed at a random step. Refused at trace time, the run takes the plain
    path to the end."""
    config = Config(guide="spline", flows=1, latent_dim=4, hidden_dims=[32], elbo=elbo)
    data = load_data("fashion-mnist", limit=320, test_limit=64)
    vae = build_model(config, data.x_shape, num_data=len(data.train))
    trainer = Trainer(vae.model, vae.guide, elbo, progress=False, modules=[vae])
    history = trainer.fit(data, 10, batch_size=32)
    assert len(history) == 10 and all(
        math.isfinite(m["train_loss"]) and m["bad_steps"] == 0 for m in history
    )
    assert all(
        m["fast_path"] is False and "with a boolean mask" in m["fast_path_note"] for m in history
    )
    assert history[-1]["train_loss"] < history[0]["train_loss"]


def _fit_scheduled(fast, elbo="trace", beta=1.0, free_bits=0.0):
    """3 epochs with KL warm-up over 2 (β = 0, β/2, β): β lives in a tensor the traced graph
    reads."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    vae = _vae()
    schedule = KLSchedule(beta, warmup_epochs=2)
    weight = schedule.weights()
    model, guide = beta_scale(vae.model, weight), beta_scale(vae.guide, weight)
    if free_bits:
        elbo = FreeBits_ELBO(free_bits=free_bits)
    trainer = Trainer(model, guide, elbo, progress=False, modules=[vae], fast=fast)
    seen = []
    history = trainer.fit(
        _data(), 3, batch_size=32, before_epoch=lambda t: seen.append(schedule.set_epoch(t.epoch))
    )
    assert seen == [0.0, beta / 2, beta]
    params = {k: v.detach().clone() for k, v in pyro.get_param_store().named_parameters()}
    return trainer, history, params


@pytest.mark.parametrize(
    "elbo, beta, free_bits", [("trace", 1.0, 0.0), ("meanfield", 4.0, 0.0), ("trace", 2.0, 0.5)]
)
def test_kl_warmup_beta_and_free_bits_take_the_fast_path_with_the_plain_results(
    elbo, beta, free_bits
):
    fast, fast_history, fast_params = _fit_scheduled("auto", elbo, beta, free_bits)
    assert sorted(fast.fast_steps) == [4, 32] and all(m["fast_path"] for m in fast_history)
    _, plain_history, plain_params = _fit_scheduled(False, elbo, beta, free_bits)
    for k in plain_params:
        torch.testing.assert_close(fast_params[k], plain_params[k], rtol=1e-5, atol=1e-6)
    for a, b in zip(fast_history, plain_history):
        assert abs(a["train_loss"] - b["train_loss"]) < 1e-5 * abs(b["train_loss"])
    # the warm-up is real: epoch 1 (β = 0) has no KL term, so its loss is below the full one of
    # epoch 3's
    # β
    assert fast_history[0]["train_loss"] < fast_history[2]["train_loss"] or beta == 1.0


def test_a_value_read_from_python_that_changes_between_epochs_drops_the_fast_path():
    """A float a trace froze, changed by the user after an epoch: the proof repeated at each epoch's
    start sees it."""
    weight = {"value": 1.0}
    model, guide = _pair_with(lambda x, logits: logits * weight["value"])
    x = torch.full((64, *X_SHAPE), 0.5).bernoulli()
    trainer = Trainer(model, guide, "trace", progress=False)
    history = trainer.fit(
        x, 3, batch_size=32, before_epoch=lambda t: weight.update(value=1.0 + (t.epoch >= 2))
    )
    assert [m["fast_path"] for m in history] == [True, True, False]
    assert "from epoch 3 on: the traced loss" in history[2]["fast_path_note"]


def test_a_module_buffer_changed_in_place_is_read_by_the_replay():
    """Buffers (a temperature, a running average) become inputs of the graph instead of frozen
    constants."""
    temperature = torch.tensor(1.0)
    model, guide = _pair_with(lambda x, logits: logits / temperature)
    x = torch.full((64, *X_SHAPE), 0.5).bernoulli()
    trainer = Trainer(model, guide, "trace", progress=False)
    assert trainer.enable_fast_path([x[:32], x[32:]])
    step = trainer.fast_steps[32]
    for tau in (1.0, 0.25):
        temperature.fill_(tau)
        assert fast.check_step(step, trainer.elbo.elbo, model, guide, x[:32]) is None


def _fit_built(fast, elbo="trace", **options):
    """2 epochs of a built-in model (``Config(**options)``) on 28×28 images with labels, as
    ``pyro-vae train`` runs it."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    config = Config(latent_dim=3, hidden_dims=[16], **options)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(70, 1, 28, 28, generator=g)
    data = ImageData(
        train=x,
        train_labels=torch.arange(70) % 10,
        test=x[:10],
        test_labels=None,
        binarize="none" if "sigma" in config.likelihood else "dynamic",
    )
    vae = build_model(config, data.x_shape, num_data=len(x))
    trainer = Trainer(vae.model, vae.guide, elbo, progress=False, modules=[vae], fast=fast)
    on_epoch = getattr(vae, "on_epoch", None)
    history = trainer.fit(
        data,
        2,
        batch_size=32,
        callback=on_epoch and (lambda t, m: on_epoch(t.epoch)),
        batch_kwargs=vae.batch_kwargs(data) if hasattr(vae, "batch_kwargs") else None,
    )
    params = {k: v.detach().clone() for k, v in pyro.get_param_store().named_parameters()}
    buffers = {k: b.clone() for k, b in vae.named_buffers()}
    return trainer, history, params, buffers


@pytest.mark.parametrize(
    "elbo, options",
    [
        (
            "trace",
            dict(net="conv"),
        ),  # convolution_backward: TorchScript cannot take it, the fx graph replays it
        ("meanfield", dict(net="conv")),
        (
            "trace",
            dict(model="relaxed-categorical", categories=4, temperature_decay=0.5),
        ),  # τ: a buffer, annealed
        ("trace", dict(model="cvae")),  # labels y: per-batch tensors, inputs of the graph
        (
            "trace",
            dict(likelihood="sigma-vae-optimal"),
        ),  # σ*: a running buffer updated in place by each step
    ],
)
def test_built_in_models_take_the_fast_path_with_the_plain_results(elbo, options):
    fast, fast_history, fast_params, fast_buffers = _fit_built("auto", elbo, **options)
    assert sorted(fast.fast_steps) == [6, 32] and all(m["fast_path"] for m in fast_history), (
        fast.fast_note
    )
    _, plain_history, plain_params, plain_buffers = _fit_built(False, elbo, **options)
    for k in plain_params:
        torch.testing.assert_close(fast_params[k], plain_params[k], rtol=1e-4, atol=1e-5)
    for k in plain_buffers:
        torch.testing.assert_close(fast_buffers[k], plain_buffers[k], rtol=1e-5, atol=1e-6)
    for a, b in zip(fast_history, plain_history):
        assert abs(a["train_loss"] - b["train_loss"]) < 1e-4 * abs(b["train_loss"])
    if "temperature_decay" in options:
        assert (
            fast_buffers["temperature"].item() == 0.5
        )  # τ_0 · 0.5^2 clamped at min_temperature 0.5


def test_a_short_run_is_not_compiled_and_a_failing_compiler_falls_back(monkeypatch):
    trainer, history, _ = _fit("auto")
    assert (
        "replayed by fx (not compiled: the run is too short to pay for compiling)"
        in trainer.fast_note
    )
    import torch._inductor

    def broken(*args, **kwargs):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(torch._inductor, "compile", broken)
    trainer, history, params = _fit("compile")
    assert "not compiled: compiling failed (RuntimeError: no C++ compiler)" in trainer.fast_note
    assert {s.backend for s in trainer.fast_steps.values()} == {"fx"}
    _, _, plain_params = _fit(False)
    for k in plain_params:
        torch.testing.assert_close(params[k], plain_params[k], rtol=1e-4, atol=1e-5)
    with pytest.raises(
        ValueError, match="fast must be one of 'auto', True, False, 'compile', 'trace', got 'yes'"
    ):
        Trainer(*_pair_with(lambda x, logits: logits), fast="yes")


def _compiled_fit(device, make=_vae, mode="compile"):
    results = []
    for fast_mode in (mode, False):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        vae = make().to(device)
        data = _data()
        data = ImageData(
            train=data.train.to(device),
            train_labels=None,
            test=data.test.to(device),
            test_labels=None,
            binarize="dynamic",
        )
        trainer = Trainer(
            vae.model, vae.guide, "trace", progress=False, modules=[vae], fast=fast_mode
        )
        history = trainer.fit(data, 2, batch_size=32)
        results.append(
            (
                trainer,
                history,
                {k: v.detach().clone() for k, v in pyro.get_param_store().named_parameters()},
            )
        )
    (fast_trainer, fast_history, fast_params), (_, plain_history, plain_params) = results
    return fast_trainer, fast_params, plain_params


@pytest.mark.slow
def test_the_inductor_replay_gives_the_plain_results():
    """Compiling takes 10-40 s on a 2-core CPU: slow-marked."""
    trainer, fast_params, plain_params = _compiled_fit("cpu")
    assert trainer.fast_steps[32].backend == "inductor" and trainer.fast_steps[4].backend == "fx"
    assert "replayed by inductor; batch size 4 by fx" in trainer.fast_note
    assert trainer.fast_steps[32].compile_seconds > 0
    for k in plain_params:
        torch.testing.assert_close(fast_params[k], plain_params[k], rtol=1e-4, atol=1e-5)


@pytest.mark.cuda
def test_on_cuda_the_compiled_step_is_one_cuda_graph_with_the_plain_results():
    trainer, fast_params, plain_params = _compiled_fit("cuda")
    step = trainer.fast_steps[32]
    assert (
        step.backend == "inductor"
        and step.cudagraphs
        and "as one CUDA graph per step" in trainer.fast_note
    )
    for k in plain_params:
        torch.testing.assert_close(fast_params[k], plain_params[k], rtol=1e-4, atol=1e-5)


@pytest.mark.cuda
def test_on_cuda_the_fx_replay_gives_the_plain_results():
    """What a short run on a GPU takes: the fx graph replayed on CUDA tensors, no compile."""
    trainer, fast_params, plain_params = _compiled_fit("cuda", mode="trace")
    assert {s.backend for s in trainer.fast_steps.values()} == {"fx"} and trainer.fast_steps[
        32
    ].params[0].is_cuda
    for k in plain_params:
        torch.testing.assert_close(fast_params[k], plain_params[k], rtol=1e-4, atol=1e-5)


def test_tensors_read_from_outside_become_inputs_and_literals_stay_constants():
    from torch.fx.experimental.proxy_tensor import make_fx

    weight = torch.tensor(3.0)
    graph = make_fx(lambda w, x: (x * w * weight + torch.tensor(2.0)).sum())(
        torch.ones(3), torch.ones(3)
    )
    state = capture.lift_constants(graph)
    assert (
        len(state) == 1 and state[0] is weight
    )  # torch.tensor(2.0) is made afresh by every plain call
    weight.fill_(5.0)
    assert graph(torch.ones(3), torch.ones(3), *state).item() == 3 * (5.0 + 2.0)


@pytest.mark.skipif(
    not os.path.isdir("/usr/share/datasets/fashion-mnist"), reason="needs Fashion-MNIST"
)
def test_pyro_vae_train_with_warmup_beta_and_free_bits_takes_the_fast_path(tmp_path):
    """What ``pyro-vae train --kl-warmup-epochs 2 --beta 2 --free-bits 0.1`` runs: every epoch on
    the fast path."""
    config = Config(
        limit=256,
        test_limit=64,
        epochs=3,
        kl_warmup_epochs=2,
        beta=2.0,
        free_bits=0.1,
        latent_dim=4,
        hidden_dims=[32],
        batch_size=64,
        pictures=False,
        out=str(tmp_path / "run"),
    )
    _, _, history = experiment.train(config, progress=False)
    rows = [json.loads(line) for line in open(tmp_path / "run" / METRICS)]
    assert [r["fast_path"] for r in rows] == [True] * 3 and rows == history


def test_the_replay_check_allows_float_rounding_of_a_sum_and_no_more():
    """A float32 sum of n terms taken in another order (as inductor's fused kernels do) differs by
    about √n·ε·|terms| from the first: within the check's tolerance (16·√n·ε·max |value|); a 1 %
    change to a gradient (a wrong graph: a frozen Python number changes it by O(1)) is far beyond
    it, and the check reports its size."""
    from pyro_vae.estimators.replay_check import difference

    g = torch.Generator().manual_seed(0)
    terms = torch.randn(64, 100 * 784, generator=g)  # 64 gradient entries, a batch of 100 images
    plain = terms.sum(-1)
    reordered = terms.reshape(64, 28, -1).sum(-1).flip(-1).cumsum(-1)[:, -1]
    exact = terms.double().sum(-1)
    assert (plain.double() - exact).abs().max() > 0  # rounding is there to be allowed for
    assert difference(reordered, plain, terms.shape[-1]) is None
    assert difference(plain, plain, terms.shape[-1]) is None
    diff, tolerance = difference(plain * (1 + 1e-2), plain, terms.shape[-1])
    assert diff == pytest.approx(1e-2 * plain.abs().max().item(), rel=1e-3)
    assert diff > 10 * tolerance


def test_a_fallback_names_the_parameter_and_the_size_of_the_difference(caplog):
    """A Python number the trace froze that scales only the gradient of 'w' (the loss is the
    same): the check says which parameter, by how much, and what rounding allows, in the log."""
    calls = [0]

    def model(x):
        w = pyro.param("w", torch.zeros(X_SHAPE))
        calls[0] += 1
        logits = w + calls[0] * (w - w.detach())  # the value of w, the gradient (1 + calls)·…
        with pyro.plate("data", len(x)):
            pyro.sample("x", dist.Bernoulli(logits=logits).to_event(3), obs=x)

    def guide(x):
        pass

    pyro.clear_param_store()
    x = torch.full((64, *X_SHAPE), 0.5).bernoulli()
    elbo = fast.FastELBO(pyro.infer.Trace_ELBO(), mode="trace")
    with caplog.at_level("INFO", logger="pyro_vae.estimators.fast"):
        assert not elbo.prepare(model, guide, [x[:32], x[32:]])
    assert "the traced gradient of 'w' differs from the plain one by " in elbo.note
    assert "more than float rounding allows" in elbo.note and elbo.note in caplog.text


class _HalfGradient(torch.autograd.Function):
    """Identity forward, half the gradient backward: what autograd saw and the ATen graph does
    not say."""

    @staticmethod
    def forward(ctx, h):
        return h.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * 0.5


def _no_grad_scale(h):
    with torch.no_grad():
        scale = h.abs().mean()  # a constant to autograd; in the ATen graph, just ops on h
    return h * scale


@pytest.mark.parametrize("hidden", [_HalfGradient.apply, _no_grad_scale])
def test_a_shared_path_whose_backward_autograd_alone_knows_is_captured_unmerged(hidden):
    """Model and guide compute the same ``hidden(net(x))``; the capture merges it and
    differentiates the merged forward, which is wrong here (a custom backward, a no_grad block):
    the proof catches it and the step is captured forward and backward together, with the plain
    gradients."""
    net = torch.nn.Linear(36, 2)

    def shared(x):
        pyro.module("net", net)
        return hidden(net(x.flatten(1)))

    decoder = MLP(2, [8], X_SHAPE)

    def model(x):
        pyro.module("decoder", decoder)
        h = shared(x)
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(h, 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=decoder(z + h)).to_event(3), obs=x)

    def guide(x):
        h = shared(x)
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Normal(h * 0.5, 1.0).to_event(1))

    pyro.clear_param_store()
    x = torch.rand(64, *X_SHAPE).bernoulli()
    trainer = Trainer(model, guide, "trace", progress=False, fast="trace")
    assert trainer.enable_fast_path([x[:32], x[32:]]), trainer.fast_note
    step = trainer.fast_steps[32]
    assert step.merged > 0 and not step.backward_merged
    assert fast.check_step(step, trainer.elbo.elbo, model, guide, x[:32]) is None
    merged = capture.TracedStep(trainer.elbo.elbo, model, guide, x[:32])
    assert merged.backward_merged  # what was tried first, and differs
    assert "differs from the plain one" in fast.check_step(
        merged, trainer.elbo.elbo, model, guide, x[:32]
    )


def test_rounding_that_compounds_or_cancels_is_refereed_by_the_float64_step():
    """A sum whose terms cancel rounds by far more than √n·ε·|result|: another summation order
    fails the quick bound but is as close to the float64 sum as the first order is, which the
    referee accepts; a 5 % error is not (float32's own error here is 0.15 % of the largest sum)."""
    from pyro_vae.estimators.replay_check import ROUNDING_ERRORS, as_accurate, difference

    g = torch.Generator().manual_seed(0)
    big = 1e4 * torch.randn(64, 50_000, generator=g)
    terms = torch.cat([big, -big[:, torch.randperm(50_000, generator=g)]], -1)  # sums of ~0
    terms += torch.randn(64, 100_000, generator=g)
    plain, exact = terms.sum(-1), terms.double().sum(-1)
    reordered = terms.flip(-1).reshape(64, 100, -1).sum(-1).sum(-1)
    assert difference(reordered, plain, 100_000) is not None  # the quick bound is too tight here
    assert as_accurate(reordered, plain, exact) is None
    off, own = as_accurate(plain * 1.05, plain, exact)
    assert off > 2 * ROUNDING_ERRORS * own


def test_the_float64_referee_draws_the_float32_steps_random_numbers():
    """:func:`exact_step` runs the plain step in float64 from the same RNG state with the same
    random numbers: its loss and gradients agree with the float32 step's to float32 rounding (other
    random numbers would move the loss by O(1) nats)."""
    from pyro_vae.estimators.replay_check import exact_step

    pyro.clear_param_store()
    vae = _vae(flows=0)
    x = _data().train[:32].bernoulli()
    trainer = Trainer(vae.model, vae.guide, "trace", progress=False, modules=[vae], fast="trace")
    assert trainer.enable_fast_path([x[:16], x[16:]])
    step, elbo = trainer.fast_steps[16], trainer.elbo.elbo
    rng = pyro.util.get_rng_state()
    plain = elbo.differentiable_loss(vae.model, vae.guide, x[:16])
    grads = torch.autograd.grad(plain, step.params, allow_unused=True)
    loss, exact, _ = exact_step(step, elbo, vae.model, vae.guide, x[:16], {}, rng)
    assert loss.dtype == torch.float64 and all(p.dtype == torch.float32 for p in step.params)
    assert abs(loss.item() - plain.item()) < 1e-4 * abs(plain.item())
    for g, e in zip(grads, exact):
        if g is not None:
            assert (g.double() - e).abs().max() <= 1e-4 * e.abs().max() + 1e-6
    other = exact_step(step, elbo, vae.model, vae.guide, x[:16], {}, pyro.util.get_rng_state())
    assert abs(other[0].item() - plain.item()) > 1e-3 * abs(plain.item())  # other draws
