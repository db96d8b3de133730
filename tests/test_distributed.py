"""Data-parallel training with torch.distributed (gloo, two CPU processes launched by torchrun)."""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

TORCHRUN = shutil.which("torchrun") or os.path.join(os.path.dirname(sys.executable), "torchrun")
pytestmark = pytest.mark.skipif(not os.path.exists(TORCHRUN), reason="torchrun is not installed")

# A pair whose gradient is deterministic (no latent noise), so one process and two can be compared
# exactly: x_i ~ N(μ, diag exp(2s)), fitted by maximum likelihood with the full-data scale N /
# batch.
SCRIPT = textwrap.dedent('''
    import sys, torch, pyro, pyro.distributions as dist
    from pyro_vae import Optimization, Trainer, data_plate
    from pyro_vae.training import distributed

    distributed.init(torch.device("cpu"))
    pyro.set_rng_seed(0)
    x = torch.randn(64, 3, generator=torch.Generator().manual_seed(1)) * torch.tensor([1.0, 2.0,
    0.5]) + 3

    def model(x):
        mu = pyro.param("mu", torch.zeros(3))
        s = pyro.param("s", torch.zeros(3))
        with data_plate(x, num_data=64):
            pyro.sample("x", dist.Normal(mu, s.exp()).to_event(1), obs=x)

    def guide(x):
        pass

    trainer = Trainer(model, guide, "trace", optim=Optimization(lr=0.05), progress=False,
    out_dir=sys.argv[2])
    history = trainer.fit(x, epochs=3, batch_size=int(sys.argv[1]))
    if distributed.is_main():
        torch.save({k: v.detach() for k, v in pyro.get_param_store().named_parameters()},
        sys.argv[2] + "/params.pt")
    distributed.shutdown()
''')


def _run(cmd, **kwargs):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, **kwargs)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


def test_two_processes_take_the_steps_of_one_with_the_global_batch(tmp_path):
    script = tmp_path / "fit.py"
    script.write_text(SCRIPT)
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    _run([sys.executable, str(script), "8", str(tmp_path / "one")])
    _run(
        [TORCHRUN, "--standalone", "--nproc-per-node", "2", str(script), "8", str(tmp_path / "two")]
    )
    one = torch.load(tmp_path / "one" / "params.pt")
    two = torch.load(tmp_path / "two" / "params.pt")
    for k in one:
        torch.testing.assert_close(two[k], one[k], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(one["mu"], torch.zeros(3))  # it did train
    # rank 0 alone logs: every epoch once
    rows = [json.loads(line) for line in open(tmp_path / "two" / "metrics.jsonl")]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    rows_one = [json.loads(line) for line in open(tmp_path / "one" / "metrics.jsonl")]
    for a, b in zip(rows, rows_one):
        assert abs(a["train_loss"] - b["train_loss"]) < 1e-4 * abs(b["train_loss"])


# A tiny VQ-VAE trained on two ranks, each drawing its own random numbers (its own codebook at
# start, its own images for the restarts): only the synchronisation can make the codebooks equal.
VQ_SCRIPT = textwrap.dedent('''
    import sys, torch, pyro
    from pyro_vae import Config, Optimization, Trainer
    from pyro_vae.models import build_model
    from pyro_vae.training import distributed
    from pyro_vae.training.listeners import Listener
    from pyro_vae.training.model_epochs import ModelEpochs

    class EveryStep(Listener):
        def __init__(self, vae):
            self.vae, self.codebooks = vae, []

        def on_step_end(self, trainer, step, loss, ok):
            self.codebooks.append([q.embedding.detach().clone() for q in self.vae.quantizers])

    distributed.init(torch.device("cpu"))
    x = torch.randint(0, 256, (96, 1, 8, 8), generator=torch.Generator().manual_seed(1)) / 255
    for codebook in ("ema", "loss"):
        pyro.clear_param_store()
        pyro.set_rng_seed(distributed.rank())
        config = Config(model="vq-vae", levels=2, likelihood="discretized-logistic",
            binarize="none", codebook=codebook, codebook_size=32, code_dim=4, conv_channels=4,
            mixtures=2)
        vae = build_model(config, (1, 8, 8), len(x))
        steps = EveryStep(vae)
        trainer = Trainer(vae.model, vae.guide, optim=Optimization(lr=1e-2), modules=[vae],
            progress=False, fast="auto" if codebook == "ema" else False,
            listeners=[ModelEpochs(vae, images=32), steps])
        history = trainer.fit(x, epochs=2, batch_size=32)
        state = {k: v.detach().clone() for k, v in vae.state_dict().items()}
        torch.save({"state": state, "history": history, "steps": steps.codebooks},
            f"{sys.argv[1]}/{codebook}{distributed.rank()}.pt")
    distributed.shutdown()
''')


def test_two_ranks_hold_the_same_vq_codebooks(tmp_path):
    """EMA statistics and usage counts summed over ranks, dead codes restarted from rank 0's
    choice: after every step and at the end both ranks hold the same codebooks, bit for bit."""
    script = tmp_path / "vq.py"
    script.write_text(VQ_SCRIPT)
    _run([TORCHRUN, "--standalone", "--nproc-per-node", "2", str(script), str(tmp_path)])
    for codebook in ("ema", "loss"):
        zero, one = (torch.load(tmp_path / f"{codebook}{r}.pt") for r in (0, 1))
        for k, v in zero["state"].items():
            assert torch.equal(v, one["state"][k]), (codebook, k)
        assert len(zero["steps"]) == 6  # 3 steps an epoch
        for step, (a, b) in enumerate(zip(zero["steps"], one["steps"])):
            assert all(torch.equal(u, v) for u, v in zip(a, b)), (codebook, step)
        rows = zero["history"]
        for key in ("codebook_usage", "perplexity", "dead_code_restarts"):
            assert [r[key] for r in rows] == [r[key] for r in one["history"]], (codebook, key)
        assert sum(rows[-1]["dead_code_restarts"]) > 0, codebook  # the restarts were exercised
    note = torch.load(tmp_path / "ema0.pt")["history"][0]["fast_path_note"]
    assert "jit_compatible" in note  # the ema step all-reduces: plain steps


@pytest.mark.skipif(
    not os.path.isdir("/usr/share/datasets/fashion-mnist"), reason="needs Fashion-MNIST"
)
def test_torchrun_cli_on_fashion_mnist(tmp_path):
    out = tmp_path / "run"
    _run(
        [
            TORCHRUN,
            "--standalone",
            "--nproc-per-node",
            "2",
            "-m",
            "pyro_vae",
            "train",
            "--device",
            "cpu",
            "--limit",
            "1024",
            "--test-limit",
            "256",
            "--epochs",
            "2",
            "--batch-size",
            "64",
            "--hidden-dims",
            "64",
            "--latent-dim",
            "4",
            "--out",
            str(out),
            "--quiet",
            "--no-pictures",
        ],
        cwd=str(tmp_path),
    )
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert rows[1]["test_elbo"] > rows[0]["test_elbo"] and rows[1]["test_elbo"] < 0
    assert os.path.exists(out / "checkpoint.pt")


@pytest.mark.slow
@pytest.mark.skipif(
    not os.path.isdir("/usr/share/datasets/fashion-mnist"), reason="needs Fashion-MNIST"
)
def test_torchrun_cli_five_launches_in_a_row_all_succeed(tmp_path):
    """The CLI ends the process group on exit and the other rank waits for rank 0's pictures: no
    SIGABRT at exit."""
    for i in range(5):
        out = tmp_path / f"run{i}"
        proc = _run(
            [
                TORCHRUN,
                "--standalone",
                "--nproc-per-node",
                "2",
                "-m",
                "pyro_vae",
                "train",
                "--device",
                "cpu",
                "--limit",
                "128",
                "--test-limit",
                "32",
                "--epochs",
                "1",
                "--batch-size",
                "32",
                "--hidden-dims",
                "8",
                "--latent-dim",
                "2",
                "--out",
                str(out),
                "--quiet",
            ],
            cwd=str(tmp_path),
        )
        assert "terminate called" not in proc.stderr and "FAILED" not in proc.stderr, proc.stderr[
            -2000:
        ]
        assert [json.loads(line)["epoch"] for line in open(out / "metrics.jsonl")] == [1]
        assert (
            out / "samples.png"
        ).stat().st_size > 0  # rank 0 wrote its pictures before the group ended
