"""The fast path as an estimator (FastELBO) and Pyro's ELBOs with the loss on the device: equal to
Pyro's own, usable under plain pyro.infer.SVI, compiled once per configuration, and standing on no
patched internals."""

import json
import os
import pathlib
import re
import subprocess
import sys

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO, TraceMeanField_ELBO

from pyro_vae import make_elbo
from pyro_vae.estimators import FastELBO
from pyro_vae.estimators.trace import DeviceTrace_ELBO, DeviceTraceMeanField_ELBO, device_twin
from pyro_vae.models.nets import MLP

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "pyro_vae"
FASHION = "/usr/share/datasets/fashion-mnist"


def _mixed_pair():
    """A Gaussian latent (reparameterized), a Bernoulli latent (score function) and a Gamma latent
    with a LogNormal guide (no analytic KL): every branch of Trace_ELBO's and TraceMeanField_ELBO's
    particle loss."""
    net = torch.nn.Linear(2, 3)

    def model(x):
        pyro.module("net", net)
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
            s = pyro.sample("s", dist.Gamma(x.new_tensor(2.0), 1.0))
            pyro.sample("x", dist.Normal(net(z), s.unsqueeze(-1)).to_event(1), obs=x)

    def guide(x, discrete=True):
        loc = pyro.param("loc", torch.zeros(2))
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Normal(loc + x[:, :2], 0.7).to_event(1))
            pyro.sample("s", dist.LogNormal(pyro.param("s_loc", torch.tensor(0.3)), 0.5))

    def model_with_coin(x):
        model(x)
        with pyro.plate("coins", len(x)):
            pyro.sample("c", dist.Bernoulli(x.new_tensor(0.3)))

    def guide_with_coin(x):
        guide(x)
        with pyro.plate("coins", len(x)):
            pyro.sample(
                "c", dist.Bernoulli(torch.sigmoid(pyro.param("c_logit", torch.tensor(0.2))))
            )

    return (model, guide), (model_with_coin, guide_with_coin)


def _loss_and_grads(elbo, model, guide, x):
    pyro.set_rng_seed(3)
    loss = elbo.differentiable_loss(model, guide, x)
    params = [p for _, p in sorted(pyro.get_param_store().named_parameters())]
    return loss, torch.autograd.grad(loss, params)


@pytest.mark.parametrize(
    "pyro_class, ours",
    [(Trace_ELBO, DeviceTrace_ELBO), (TraceMeanField_ELBO, DeviceTraceMeanField_ELBO)],
)
@pytest.mark.parametrize("particles", [1, 4])
def test_the_device_elbos_give_pyros_loss_and_gradients(pyro_class, ours, particles):
    x = torch.randn(5, 3)
    reparameterized, with_coin = _mixed_pair()
    pairs = [reparameterized] + (
        [with_coin] if pyro_class is Trace_ELBO else []
    )  # mean field: no score terms
    for model, guide in pairs:
        options = dict(num_particles=particles, vectorize_particles=True, max_plate_nesting=1)
        expected, expected_grads = _loss_and_grads(pyro_class(**options), model, guide, x)
        loss, grads = _loss_and_grads(ours(**options), model, guide, x)
        torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-6)
        for g, e in zip(grads, expected_grads):
            torch.testing.assert_close(g, e, rtol=1e-6, atol=1e-6)
    original = pyro_class(**options)
    twin = device_twin(original)
    assert type(twin) is ours and vars(twin) == vars(original) and twin is not original


def test_the_device_elbo_reads_nothing_on_the_host():
    """No ``.item()`` anywhere in the loss: it records under make_fx, which refuses host reads."""
    from torch.fx.experimental.proxy_tensor import make_fx

    (model, guide), _ = _mixed_pair()
    x = torch.randn(5, 3)
    with pytest.raises(RuntimeError, match="_local_scalar_dense"):
        make_fx(lambda x: Trace_ELBO().differentiable_loss(model, guide, x))(x)
    with pyro.validation_enabled(False):
        graph = make_fx(lambda x: DeviceTrace_ELBO().differentiable_loss(model, guide, x))(x)
    assert graph.graph.find_nodes(op="placeholder")


def _vae_pair():
    decoder, encoder = MLP(2, [8], (1, 4, 4)), MLP((1, 4, 4), [8], 4)

    def model(x):
        pyro.module("decoder", decoder)
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
            pyro.sample(
                "x", dist.Bernoulli(logits=decoder(z), validate_args=False).to_event(3), obs=x
            )

    def guide(x):
        pyro.module("encoder", encoder)
        with pyro.plate("data", len(x)):
            loc, log_scale = encoder(x).chunk(2, -1)
            pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))

    return model, guide


@pytest.mark.parametrize("name, particles", [("trace", 1), ("iwae", 3)])
def test_fast_elbo_under_plain_pyro_svi_gives_the_plain_results(name, particles):
    """A user's own loop: ``SVI(model, guide, pyro.optim.Adam, make_elbo(..., fast="auto"))``. The
    graph of a batch size is captured and proven on its first two batches, then replayed; the
    parameters follow the plain run's."""
    x = torch.rand(96, 1, 4, 4, generator=torch.Generator().manual_seed(1)).bernoulli()
    results = []
    for fast in ("auto", False):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        model, guide = _vae_pair()
        elbo = make_elbo(name, particles, fast=fast)
        svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-2}), elbo)
        losses = [svi.step(x[i * 32 : (i + 1) * 32]) for i in range(3) for _ in range(2)]
        results.append(
            (elbo, losses, {k: v.detach().clone() for k, v in pyro.get_param_store().items()})
        )
    (fast_elbo, fast_losses, fast_params), (_, plain_losses, plain_params) = results
    assert isinstance(fast_elbo, FastELBO) and sorted(fast_elbo.steps) == [32], fast_elbo.note
    assert fast_elbo.note.startswith("fast path: loss and gradients traced")
    torch.testing.assert_close(
        torch.tensor(fast_losses), torch.tensor(plain_losses), rtol=1e-4, atol=1e-4
    )
    for k in plain_params:
        torch.testing.assert_close(fast_params[k], plain_params[k], rtol=1e-4, atol=1e-5)


def test_an_estimator_that_reads_the_host_is_not_traced_and_says_why():
    model, guide = _vae_pair()
    elbo = FastELBO(pyro.infer.TraceGraph_ELBO())
    x = torch.rand(64, 1, 4, 4).bernoulli()
    assert not elbo.prepare(model, guide, [x[:32], x[32:]])
    assert "not TraceGraph_ELBO" in elbo.note and elbo.steps == {}
    with pytest.raises(ValueError, match="mode must be one of"):
        FastELBO(Trace_ELBO(), mode="yes")


def test_no_torchscript_no_patched_globals_no_private_optimizer_fields():
    """What issue 27 forbids anywhere in the package: torch.jit.trace/script, assignments into
    Pyro's module globals (torch_item, warn_if_nan), and the optimizer's private found_inf."""
    pattern = re.compile(
        r"torch\.jit\.(trace|script)\(|(torch_item|warn_if_nan)\s*=|\.found_inf\s*="
    )
    found = [
        f"{path.relative_to(PACKAGE)}:{i}"
        for path in PACKAGE.rglob("*.py")
        for i, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert found == []


def _train(out, *flags, env=None):
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pyro_vae",
            "train",
            "--limit",
            "256",
            "--test-limit",
            "64",
            "--epochs",
            "1",
            "--latent-dim",
            "4",
            "--hidden-dims",
            "32",
            "--out",
            str(out),
            *flags,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.skipif(not os.path.isdir(FASHION), reason="needs Debian's dataset-fashion-mnist")
def test_the_default_train_run_prints_no_deprecation_or_future_warning(tmp_path):
    proc = _train(tmp_path / "run", env={"PYTHONWARNINGS": "default"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "DeprecationWarning" not in proc.stderr and "FutureWarning" not in proc.stderr, (
        proc.stderr[-2000:]
    )
    first = json.loads(open(tmp_path / "run" / "metrics.jsonl").readline())
    assert (
        first["fast_path"] is True and first["compile_seconds"] == 0.0
    )  # a short run: the fx replay


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir(FASHION), reason="needs Debian's dataset-fashion-mnist")
def test_a_second_run_of_the_same_configuration_loads_the_compiled_graph(tmp_path):
    """Two processes, one inductor cache: the first compiles, the second loads the same graph from
    the cache."""
    env = {"TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "cache")}
    rows = []
    for run in ("first", "second"):
        proc = _train(tmp_path / run, "--fast", "compile", env=env)
        assert proc.returncode == 0, proc.stderr[-2000:]
        rows.append(json.loads(open(tmp_path / run / "metrics.jsonl").readline()))
        log = (tmp_path / run / "pyro-vae.log").read_text()
        assert ("loaded from inductor's cache" in log) == (run == "second"), log[-1500:]
    assert all("replayed by inductor" in r["fast_path_note"] for r in rows)
    assert rows[0]["compile_seconds"] > 0 and rows[0]["compile_cache_hit"] is False
    assert rows[1]["compile_cache_hit"] is True
