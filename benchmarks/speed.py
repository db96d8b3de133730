"""Training-step cost: hand-written PyTorch vs plain Pyro SVI vs pyro_vae's trainer, side by side.

For each architecture the three steps use the same networks (pyro_vae.nets.MLP),
the same device-resident data sliced by index, the same optimizer (Adam, lr 1e-3)
and the same estimator (one-sample ELBO, log p(x|z) + log p(z) − log q(z|x)):

(a) ``eager``:   a hand-written PyTorch VAE step, one ``torch.optim.Adam`` over all parameters;
(b) ``pyro``:    ``pyro.infer.SVI(model, guide, pyro.optim.Adam, Trace_ELBO()).step``;
(c) ``pyro_vae``: the trainer's own step (``Trainer.svi.step``), fast path included: a fused
    optimizer, no host sync, the loss traced once with torch.jit.

The three are interleaved in one process (rounds of ``--steps`` steps each, in turn),
and we report the median per-step time and its ratio to ``eager``.

    python benchmarks/speed.py                       # CPU, both architectures → benchmarks/RESULTS.md
    python benchmarks/speed.py --device cuda --rounds 30
"""
import argparse
import datetime
import math
import os
import platform
import statistics
import time

import pyro
import torch
import torch.nn.functional as F

import pyro_vae
from pyro_vae import VAE, Trainer, make_guide, make_likelihood
from pyro_vae.nets import MLP

ARCHS = {
    "overhead-bound 784-32-8, batch 32": (32, 8, 32),
    "784-400-20, batch 128": (400, 20, 128),
}
X_SHAPE = (1, 28, 28)


def build_vae(hidden, latent, num_data, device):
    encoder = MLP(X_SHAPE, [], hidden, final_activation=True)
    guide = make_guide("diagonal", encoder, hidden, latent)
    decoder = MLP(latent, [hidden], X_SHAPE)
    return VAE(decoder, guide, make_likelihood("bernoulli", X_SHAPE), latent, X_SHAPE, num_data).to(device)


def eager_step_fn(vae, lr):
    """A hand-written PyTorch step on the same nets: reparameterized z, MC ELBO, one Adam."""
    params = list(vae.parameters())
    opt = torch.optim.Adam(params, lr=lr)
    enc, head, dec = vae.guide_module.encoder, vae.guide_module.head, vae.decoder
    half_log_2pi = 0.5 * math.log(2 * math.pi)

    def step(x, num_data):
        loc, raw = head(enc(x)).chunk(2, -1)
        scale = F.softplus(raw) + 1e-5
        eps = torch.randn_like(loc)
        z = loc + scale * eps
        logits = dec(z)
        log_px = -F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(-1)
        log_pz = (-0.5 * z.pow(2) - half_log_2pi).sum(-1)
        log_qz = (-0.5 * eps.pow(2) - scale.log() - half_log_2pi).sum(-1)
        loss = -(log_px + log_pz - log_qz).sum() * (num_data / len(x))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()

    return step


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_arch(name, hidden, latent, batch, device, rounds, steps, warmup, num_data=60000):
    data = torch.bernoulli(torch.full((num_data, *X_SHAPE), 0.3, device=device))
    runners = {}

    eager_vae = build_vae(hidden, latent, num_data, device)
    eager = eager_step_fn(eager_vae, 1e-3)
    runners["eager"] = lambda x: eager(x, num_data)

    # the two Pyro pairs use the same site and module names: each gets its own param store scope
    store = pyro.get_param_store()
    scopes = {}
    with store.scope() as scopes["pyro"]:
        plain_vae = build_vae(hidden, latent, num_data, device)
        optim = pyro.optim.Adam({"lr": 1e-3})
        runners["pyro"] = pyro.infer.SVI(plain_vae.model, plain_vae.guide, optim, pyro.infer.Trace_ELBO()).step
    with store.scope() as scopes["pyro_vae"]:
        ours_vae = build_vae(hidden, latent, num_data, device)
        trainer = Trainer(ours_vae.model, ours_vae.guide, "trace", progress=False, modules=[ours_vae])
        trainer.enable_fast_path([data[:batch], data[batch : 2 * batch]])
        print(trainer.fast_note)
        runners["pyro_vae"] = trainer.svi.step
    times = {k: [] for k in runners}
    perm = torch.randperm(num_data, device=device)

    def run(key, n, record):
        with store.scope(scopes.get(key)):
            steps_of(key, n, record)

    def steps_of(key, n, record):
        for i in range(n):
            idx = perm[(i * batch) % (num_data - batch):][:batch]
            x = data[idx]
            sync(device)
            t0 = time.perf_counter()
            runners[key](x)
            sync(device)
            if record:
                times[key].append(time.perf_counter() - t0)

    for key in runners:
        run(key, warmup, record=False)
    for _ in range(rounds):
        for key in runners:
            run(key, steps, record=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {k: (med[k] * 1e3, med[k] / med["eager"]) for k in med}


def main(args):
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    lines = []
    for name, (hidden, latent, batch) in ARCHS.items():
        res = bench_arch(name, hidden, latent, batch, device, args.rounds, args.steps, args.warmup)
        for key, (ms, ratio) in res.items():
            lines.append(f"| {name} | {key} | {ms:.3f} | {ratio:.2f} |")
            print(f"{name:36s} {key:9s} {ms:8.3f} ms/step  ratio {ratio:.2f}")
    dev = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    header = [
        f"### {device.type.upper()}: {dev}",
        "",
        f"{datetime.date.today()}, torch {torch.__version__}, pyro {pyro.__version__}, pyro_vae {pyro_vae.__version__}; "
        f"median of {args.rounds} interleaved rounds × {args.steps} steps after {args.warmup} warm-up steps.",
        "",
        "| architecture | step | ms/step (median) | ratio to eager |",
        "| --- | --- | --- | --- |",
    ]
    section = "\n".join(header + lines) + "\n"
    if args.out:
        _write_section(args.out, device.type.upper(), section)
        print(f"written to {args.out}")


def _write_section(path, key, section):
    """Replace (or append) this device's section of the results file, keeping the others."""
    title = "# Training-step speed: hand-written PyTorch vs Pyro SVI vs pyro_vae\n\nWritten by `benchmarks/speed.py`.\n"
    sections = {}
    if os.path.exists(path):
        text = open(path).read()
        for part in text.split("\n### ")[1:]:
            sections[part.split(":", 1)[0]] = "### " + part.rstrip("\n") + "\n"
    sections[key] = section
    with open(path, "w") as f:
        f.write(title + "\n" + "\n".join(sections[k] for k in sorted(sections)))


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "RESULTS.md"))
    main(p.parse_args())
