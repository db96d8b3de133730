"""Training-step cost: hand-written PyTorch vs plain Pyro SVI vs pyro_vae's trainer, side by side.

For each architecture the steps use the same networks (pyro_vae.models.nets.MLP),
the same device-resident data sliced by index, Adam with lr 1e-3 and the same
estimator (one-sample ELBO, log p(x|z) + log p(z) − log q(z|x)):

(a) ``eager``:       a hand-written PyTorch VAE step, ``torch.optim.Adam(params)`` as a user writes it;
(a') ``eager-fused``: the same with ``torch.optim.Adam(params, fused=True)`` (the kernel pyro_vae uses);
(b) ``pyro``:        ``pyro.infer.SVI(model, guide, pyro.optim.Adam, Trace_ELBO()).step``;
(b') ``pyro-jit``:   the same with ``JitTrace_ELBO``;
(c) ``pyro_vae``:    the trainer's own step (``Trainer.svi.step``), fast path included: loss and
    gradients replayed from one traced graph, fused Adam, the NaN guard decided on the device.

The steps are interleaved in one process (rounds of ``--steps`` steps each, in turn), and we
report the median per-step time and its ratio to ``eager``.  A second table times whole
60,000-image epochs (``eager`` loop, ``pyro`` SVI loop, ``Trainer.fit``), interleaved too.

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
from pyro_vae.data import ImageData
from pyro_vae.models.nets import MLP

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


def eager_step_fn(vae, lr, **adam_options):
    """A hand-written PyTorch step on the same nets: reparameterized z, MC ELBO, one Adam."""
    params = list(vae.parameters())
    opt = torch.optim.Adam(params, lr=lr, **adam_options)
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


def make_runners(hidden, latent, batch, data):
    """``{name: step(x)}`` for the five steps, and ``{name: param store scope}`` for the Pyro ones."""
    num_data, device = len(data), data.device
    runners = {}
    for name, options in (("eager", {}), ("eager-fused", {"fused": True})):
        step = eager_step_fn(build_vae(hidden, latent, num_data, device), 1e-3, **options)
        runners[name] = lambda x, step=step: step(x, num_data)
    # the Pyro pairs use the same site and module names: each gets its own param store scope
    store = pyro.get_param_store()
    scopes = {}
    for name, elbo in (("pyro", pyro.infer.Trace_ELBO()), ("pyro-jit", pyro.infer.JitTrace_ELBO())):
        with store.scope() as scopes[name]:
            vae = build_vae(hidden, latent, num_data, device)
            runners[name] = pyro.infer.SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}), elbo).step
    with store.scope() as scopes["pyro_vae"]:
        vae = build_vae(hidden, latent, num_data, device)
        trainer = Trainer(vae.model, vae.guide, "trace", progress=False, modules=[vae])
        trainer.enable_fast_path([data[:batch], data[batch : 2 * batch]])
        print(trainer.fast_note)
        runners["pyro_vae"] = trainer.svi.step
    return runners, scopes, trainer


def bench_steps(hidden, latent, batch, data, rounds, steps, warmup):
    """Median ms per step of each runner, interleaved rounds of ``steps`` steps."""
    device, num_data = data.device, len(data)
    runners, scopes, _ = make_runners(hidden, latent, batch, data)
    store = pyro.get_param_store()
    times = {k: [] for k in runners}
    perm = torch.randperm(num_data, device=device)

    def run(key, n, record):
        with store.scope(scopes.get(key)):
            for i in range(n):
                x = data[perm[(i * batch) % (num_data - batch):][:batch]]
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
    return {k: statistics.median(v) * 1e3 for k, v in times.items()}


def bench_epochs(hidden, latent, batch, data, rounds):
    """Median seconds per epoch (60,000 images by default): an eager loop, a Pyro SVI loop and ``Trainer.fit``, interleaved."""
    device = data.device
    images = ImageData(train=data, train_labels=None, test=None, test_labels=None, binarize="none")
    runners, scopes, trainer = make_runners(hidden, latent, batch, data)
    store = pyro.get_param_store()

    def loop(step):
        last = None
        for x, _ in images.batches(batch):
            last = step(x)
        return last

    epochs = {
        "eager": lambda: float(loop(runners["eager"])),  # float(): the loop's one host read, as fit's metrics
        "pyro": lambda: loop(runners["pyro"]),
        # the epoch's own "seconds" metric: the loop, without fit's once-per-call checks of the data and the pair
        "pyro_vae": lambda: trainer.fit(images, trainer.epoch + 1, batch_size=batch)[-1]["seconds"],
    }
    times = {k: [] for k in epochs}
    for r in range(rounds + 1):  # round 0 warms up
        for key, epoch in epochs.items():
            with store.scope(scopes.get(key)):
                sync(device)
                t0 = time.perf_counter()
                inside = epoch()
                sync(device)
                if r:
                    times[key].append(inside if key == "pyro_vae" else time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def main(args):
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    steps, epochs = [], []
    for name, (hidden, latent, batch) in ARCHS.items():
        data = torch.bernoulli(torch.full((args.num_data, *X_SHAPE), 0.3, device=device))
        ms = bench_steps(hidden, latent, batch, data, args.rounds, args.steps, args.warmup)
        for key, value in ms.items():
            steps.append(f"| {name} | {key} | {value:.3f} | {value / ms['eager']:.2f} | "
                         f"{value / ms['eager-fused']:.2f} |")
            print(f"{name:36s} {key:12s} {value:8.3f} ms/step  ratio {value / ms['eager']:.2f}")
        if args.epoch_rounds:
            sec = bench_epochs(hidden, latent, batch, data, args.epoch_rounds)
            for key, value in sec.items():
                epochs.append(f"| {name} | {key} | {value:.2f} | {value / sec['eager']:.2f} |")
                print(f"{name:36s} {key:12s} {value:8.2f} s/epoch  ratio {value / sec['eager']:.2f}")
    key, dev = machine(device)
    lines = [
        f"### {key}: {dev}",
        "",
        f"{datetime.date.today()}, torch {torch.__version__}, pyro {pyro.__version__}, pyro_vae {pyro_vae.__version__}; "
        f"steps: median of {args.rounds} interleaved rounds × {args.steps} steps after {args.warmup} warm-up steps"
        + (f"; epochs: median of {args.epoch_rounds} interleaved rounds after one warm-up epoch." if epochs else "."),
        "",
        "| architecture | step | ms/step (median) | ratio to eager | ratio to eager-fused |",
        "| --- | --- | --- | --- | --- |",
        *steps,
    ]
    if epochs:
        lines += ["", f"| architecture | {args.num_data:,}-image epoch | seconds (median) | ratio to eager |",
                  "| --- | --- | --- | --- |", *epochs]
    section = "\n".join(lines) + "\n"
    if args.out:
        write_section(args.out, key, section)
        print(f"written to {args.out}")


def machine(device):
    """``(key, name)`` of a results section: ``("CPU, 2 threads", "x86_64")`` or ``("CUDA", "NVIDIA H100 ...")``."""
    if device.type == "cuda":
        return "CUDA", torch.cuda.get_device_name(device)
    threads = torch.get_num_threads()
    return f"CPU, {threads} thread{'s' * (threads > 1)}", platform.processor() or platform.machine()


def write_section(path, key, section, head="# Training-step speed\n\nWritten by `benchmarks/speed.py`.\n"):
    """Replace (or add) the section ``### KEY: ...`` of a results file, keeping the others and the text above
    them (``head`` for a new file)."""
    sections = {}
    if os.path.exists(path):
        head, *parts = open(path).read().split("\n### ")
        for part in parts:
            sections[part.split(":", 1)[0]] = "### " + part.rstrip("\n") + "\n"
    sections[key] = section
    with open(path, "w") as f:
        f.write(head.rstrip("\n") + "\n\n" + "\n".join(sections[k] for k in sorted(sections)))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--num-data", type=int, default=60000, help="images in the (random binary) dataset")
    p.add_argument("--epoch-rounds", type=int, default=3, help="whole-epoch timings (0: skip them)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "RESULTS.md"))
    return p.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
