"""Training-step cost: hand-written PyTorch vs plain Pyro SVI vs pyro_vae's trainer, side by side.

Four tables, each timed with interleaved rounds in one process (medians), so that a machine shared
with other jobs slows every runner alike:

1. **Architectures.** For two sizes, the steps use the same networks (pyro_vae.models.nets.MLP), the
   same device-resident data sliced by index, Adam with lr 1e-3 and the one-sample ELBO:

   (a) ``eager``: a hand-written PyTorch VAE step, ``torch.optim.Adam(params)`` as a user writes it;
   (a') ``eager-fused``: the same with ``torch.optim.Adam(params, fused=True)`` (the kernel pyro_vae
   uses); (b) ``pyro``: ``pyro.infer.SVI(model, guide, pyro.optim.Adam, Trace_ELBO()).step``; (b')
   ``pyro-jit``: the same with ``JitTrace_ELBO``; (c) ``pyro_vae``: the trainer's own step
   (``Trainer.svi.step``), fast path included: loss and
       gradients replayed from one traced graph (the fx graph), fused Adam, the NaN guard on the
       device;
   (c') ``pyro_vae-inductor``: the same graph compiled by TorchInductor (what a long run chooses).

2. **Epochs.** Whole 60,000-image epochs (``eager`` loop, ``pyro`` SVI loop, ``Trainer.fit``).
3. **Configurations.** Every configuration of ``pyro-vae train`` (hidden 64, z 8, batch 128, as
   ``pyro_vae.app.experiment.train`` builds it) and a user's own pair (Pyro's tutorial VAE,
   784-400-20): the trainer's step against plain Pyro SVI on the same pair and estimator, and
   against a hand-written eager twin where one exists (plain VAE, β/warm-up VAE, conv VAE), with the
   compiled (inductor) step and its compile time for those.
4. **Processes.** A whole ``pyro-vae train --kl-warmup-epochs 1 --epochs 2`` against a hand-written
   eager script doing the same (same data loader, nets, warm-up, test ELBO per epoch), wall time.

    python benchmarks/speed.py # CPU, all tables → benchmarks/RESULTS.md python benchmarks/speed.py
    --device cuda --rounds 30 python benchmarks/speed.py --configs vae,conv --epoch-rounds 0
    --process-rounds 0 # a quick look
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
    return VAE(decoder, guide, make_likelihood("bernoulli", X_SHAPE), latent, X_SHAPE, num_data).to(
        device
    )


def eager_step_fn(vae, lr, beta=None, **adam_options):
    """A hand-written PyTorch step on the same nets: reparameterized z, MC ELBO, one Adam.

    ``beta``: an optional 0-d tensor weighting the KL term log q − log p (β-VAE, KL warm-up)."""
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
        kl = log_qz - log_pz if beta is None else beta * (log_qz - log_pz)
        loss = -(log_px - kl).sum() * (num_data / len(x))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()

    return step


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def make_runners(hidden, latent, batch, data, compile=False):
    """``{name: step(x)}`` for the five (six with ``compile``) steps, and ``{name: param store
    scope}`` for the Pyro ones."""
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
            runners[name] = pyro.infer.SVI(
                vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}), elbo
            ).step
    with store.scope() as scopes["pyro_vae"]:
        vae = build_vae(hidden, latent, num_data, device)
        trainer = Trainer(
            vae.model, vae.guide, "trace", progress=False, modules=[vae], fast="trace"
        )
        trainer.enable_fast_path([data[:batch], data[batch : 2 * batch]])
        print(trainer.fast_note)
        runners["pyro_vae"] = trainer.svi.step
    if compile:
        with store.scope() as scopes["pyro_vae-inductor"]:
            vae = build_vae(hidden, latent, num_data, device)
            compiled = Trainer(
                vae.model, vae.guide, "trace", progress=False, modules=[vae], fast="compile"
            )
            compiled.enable_fast_path([data[:batch], data[batch : 2 * batch]])
            print(compiled.fast_note)
            if compiled.fast_steps[batch].backend == "inductor":
                runners["pyro_vae-inductor"] = compiled.svi.step
                COMPILE_SECONDS[(hidden, latent, batch)] = compiled.fast_steps[
                    batch
                ].compile_seconds
    return runners, scopes, trainer


# (hidden, latent, batch) or configuration name -> seconds the inductor compile took
COMPILE_SECONDS = {}


def bench_steps(hidden, latent, batch, data, rounds, steps, warmup, compile=False):
    """Median ms per step of each runner, interleaved rounds of ``steps`` steps."""
    runners, scopes, _ = make_runners(hidden, latent, batch, data, compile)
    return interleave(runners, scopes, data, batch, rounds, steps, warmup)


def bench_epochs(hidden, latent, batch, data, rounds):
    """Median seconds per epoch (60,000 images by default): an eager loop, a Pyro SVI loop and
    ``Trainer.fit``, interleaved."""
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
        "eager": lambda: float(
            loop(runners["eager"])
        ),  # float(): the loop's one host read, as fit's metrics
        "pyro": lambda: loop(runners["pyro"]),
        # the epoch's own "seconds" metric: the loop, without fit's once-per-call checks of the data
        # and the
        # pair
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


# -- configurations
# ---------------------------------------------------------------------------------
CONFIG_ARCH = dict(
    latent_dim=8, hidden_dims=[64]
)  # the CLI measurement of issue 16: hidden 64, z 8, batch 128
CONFIGS = {  # name: (Config options, eager twin: None, "vae" or "beta")
    "vae": ({}, "vae"),
    "beta": ({"beta": 4.0}, "beta"),
    "kl-warmup": ({"kl_warmup_epochs": 2}, "beta"),  # timed in epoch 2: β = 0.5
    "free-bits": ({"kl_warmup_epochs": 2, "free_bits": 0.1}, None),
    "conv": ({"net": "conv"}, "vae"),
    "meanfield": ({"elbo": "meanfield"}, None),
    "iwae-k5": ({"elbo": "iwae", "particles": 5}, None),
    "dreg-k5": ({"elbo": "dreg", "particles": 5}, None),
    "stl": ({"elbo": "stl"}, None),
    "iaf": ({"guide": "iaf", "flows": 2}, None),
    "iaf-dreg-k5": ({"guide": "iaf", "flows": 2, "elbo": "dreg", "particles": 5}, None),
    "spline-stl": ({"guide": "spline", "flows": 1, "elbo": "stl"}, None),
    "sigma-vae": ({"likelihood": "sigma-vae", "binarize": "none"}, None),
    "hierarchical": ({"model": "hierarchical", "latent_dims": [8, 8], "guide": "top-down"}, None),
    "relaxed-categorical": (
        {"model": "relaxed-categorical", "categories": 10, "latent_dim": 4},
        None,
    ),
    "cvae": ({"model": "cvae"}, None),
    "user-pair": (None, None),  # Pyro's tutorial VAE written by a user, 784-400-20
}


class TutorialVAE(torch.nn.Module):
    """A user's own pair in the style of Pyro's VAE tutorial (784-400-20, softplus hidden units,
    Bernoulli means through a sigmoid): plain ``model``/``guide`` functions, no pyro_vae classes, no
    declarations."""

    def __init__(self, hidden=400, latent=20):
        super().__init__()
        self.latent = latent
        self.enc_hidden, self.enc_loc, self.enc_scale = (
            torch.nn.Linear(784, hidden),
            torch.nn.Linear(hidden, latent),
            torch.nn.Linear(hidden, latent),
        )
        self.dec_hidden, self.dec_out = (
            torch.nn.Linear(latent, hidden),
            torch.nn.Linear(hidden, 784),
        )

    def model(self, x):
        pyro.module("decoder", torch.nn.ModuleList([self.dec_hidden, self.dec_out]))
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample(
                "z", pyro.distributions.Normal(x.new_zeros(self.latent), 1.0).to_event(1)
            )
            probs = torch.sigmoid(self.dec_out(F.softplus(self.dec_hidden(z))))
            pyro.sample(
                "obs",
                pyro.distributions.Bernoulli(probs, validate_args=False).to_event(1),
                obs=x.reshape(-1, 784),
            )

    def guide(self, x):
        pyro.module("encoder", torch.nn.ModuleList([self.enc_hidden, self.enc_loc, self.enc_scale]))
        with pyro.plate("data", x.shape[0]):
            h = F.softplus(self.enc_hidden(x.reshape(-1, 784)))
            pyro.sample(
                "z", pyro.distributions.Normal(self.enc_loc(h), self.enc_scale(h).exp()).to_event(1)
            )


def build_pair(name, num_data, device):
    """``(module, model, guide, elbo factory, β tensor or None)`` of configuration ``name``, as
    ``pyro_vae.app.experiment.train`` builds it (β-VAE, warm-up and free bits wrap the pair with
    tensor weights)."""
    from pyro_vae import Config, make_elbo
    from pyro_vae.estimators.variants import KLSchedule, beta_scale
    from pyro_vae.models import build_model

    options, _ = CONFIGS[name]
    if options is None:
        pair = TutorialVAE().to(device)
        return pair, pair.model, pair.guide, lambda: pyro.infer.Trace_ELBO(), None
    config = Config(**{**CONFIG_ARCH, **options})
    vae = build_model(config, X_SHAPE, num_data).to(device)
    model, guide = vae.model, vae.guide
    elbo = lambda: make_elbo(config.elbo, config.particles)  # noqa: E731
    schedule, beta = KLSchedule(config.beta, config.kl_warmup_epochs), None
    if not schedule.is_identity or config.free_bits:
        beta = schedule.weights(device)
        schedule.set_epoch(1)
        model, guide = beta_scale(model, beta), beta_scale(guide, beta)
        if config.free_bits:
            elbo = lambda: make_elbo("free-bits", config.particles, free_bits=config.free_bits)
    return vae, model, guide, elbo, beta


def bench_configs(names, data, labels, batch, rounds, steps, warmup, compile=True):
    """``{name: {runner: ms per step}}`` and ``{name: fast-path note}``: ``pyro`` (SVI),
    ``pyro_vae`` (the trainer's step, fx replay or the plain path), ``pyro_vae-inductor`` and
    ``eager`` (the hand-written twin) where the configuration has one."""
    device, num_data = data.device, len(data)
    store = pyro.get_param_store()
    results, notes = {}, {}
    for name in names:
        kwargs_of = (lambda idx: {"y": labels[idx]}) if name == "cvae" else (lambda idx: {})
        runners, scopes = {}, {}
        with store.scope() as scopes["pyro"]:
            _, model, guide, elbo, _ = build_pair(name, num_data, device)
            svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}), elbo())
            runners["pyro"] = svi.step
        probes = [
            (data[:batch], kwargs_of(slice(0, batch))),
            (data[batch : 2 * batch], kwargs_of(slice(batch, 2 * batch))),
        ]
        for runner, mode in (("pyro_vae", "trace"), ("pyro_vae-inductor", "compile")):
            if runner == "pyro_vae-inductor" and not (compile and CONFIGS[name][1]):
                continue
            with store.scope() as scopes[runner]:
                vae, model, guide, elbo, _ = build_pair(name, num_data, device)
                trainer = Trainer(model, guide, elbo(), progress=False, modules=[vae], fast=mode)
                trainer.enable_fast_path(probes)
                runners[runner] = trainer.svi.step
                if runner == "pyro_vae":
                    notes[name] = trainer.fast_note
                elif trainer.fast_steps and trainer.fast_steps[batch].backend == "inductor":
                    COMPILE_SECONDS[name] = trainer.fast_steps[batch].compile_seconds
                else:
                    del runners[runner]
        twin = CONFIGS[name][1]
        if twin:
            vae, _, _, _, beta = build_pair(name, num_data, device)
            step = eager_step_fn(vae, 1e-3, beta=beta)
            runners["eager"] = lambda x, step=step: step(x, num_data)
        print(f"{name}: {notes[name]}")
        results[name] = interleave(runners, scopes, data, batch, rounds, steps, warmup, kwargs_of)
    return results, notes


def interleave(runners, scopes, data, batch, rounds, steps, warmup, kwargs_of=lambda idx: {}):
    """Median ms per step of each runner over interleaved rounds of ``steps`` steps on random
    batches."""
    device, num_data = data.device, len(data)
    store = pyro.get_param_store()
    times = {k: [] for k in runners}
    perm = torch.randperm(num_data, device=device)

    def run(key, n, record):
        with store.scope(scopes.get(key)):
            for i in range(n):
                idx = perm[(i * batch) % (num_data - batch) :][:batch]
                x, kwargs = data[idx], kwargs_of(idx)
                sync(device)
                t0 = time.perf_counter()
                runners[key](x, **kwargs)
                sync(device)
                if record:
                    times[key].append(time.perf_counter() - t0)

    for key in runners:
        run(key, warmup, record=False)
    for _ in range(rounds):
        for key in runners:
            run(key, steps, record=True)
    return {k: statistics.median(v) * 1e3 for k, v in times.items()}


def short(note):
    """The fast-path note in a table cell: the replay, or why the plain path runs."""
    if note.startswith("fast path not used: "):
        return "plain: " + note[len("fast path not used: ") :].split(" (")[0].split(", which")[0]
    return note.split(", replayed by ")[1].split(" (")[0] if ", replayed by " in note else note


# -- whole processes -------------------------------------------------------------------------------
# (hidden, latent, batch) of the timed processes: the README's 784-400-20, and an overhead-bound
# net
PROCESS_SHAPES = ((400, 20, 128), (32, 8, 32))


def process_flags(hidden, latent, batch):
    """The ``pyro-vae train`` flags of a timed process: 2 epochs, KL warm-up over the first."""
    return [
        "--epochs", "2", "--kl-warmup-epochs", "1", "--batch-size", str(batch),
        "--latent-dim", str(latent), "--hidden-dims", str(hidden),
    ]  # fmt: skip


def eager_train(args):
    """The hand-written twin of ``pyro-vae train`` with :func:`process_flags`: same loader (dynamic
    binarization), nets, Adam, KL warm-up β = min(1, epoch / 1), test ELBO (one sample) after each
    epoch, a checkpoint at the end."""
    from pyro_vae import load_data

    hidden, latent, batch = args.eager_shape
    device = torch.device(args.device)
    torch.manual_seed(0)
    data = load_data("fashion-mnist", device=device)
    vae = build_vae(hidden, latent, len(data.train), device)
    beta = torch.zeros((), device=device)
    step = eager_step_fn(vae, 1e-3, beta=beta)
    for epoch in range(2):
        beta.fill_(min(1.0, epoch / 1))
        total = torch.zeros((), device=device)
        for x, _ in data.batches(batch):
            total += step(x, len(data.train))
        with torch.no_grad():  # test ELBO, one sample per image, as the trainer's test_elbo
            enc, head, dec = vae.guide_module.encoder, vae.guide_module.head, vae.decoder
            elbo = 0.0
            for x in data.test.split(1000):
                loc, raw = head(enc(x)).chunk(2, -1)
                q = torch.distributions.Normal(loc, F.softplus(raw) + 1e-5)
                z = q.rsample()
                log_px = (
                    -F.binary_cross_entropy_with_logits(dec(z), x, reduction="none")
                    .flatten(1)
                    .sum(-1)
                )
                log_pz = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
                elbo += float((log_px + log_pz - q.log_prob(z).sum(-1)).sum())
        print(
            f"epoch {epoch + 1} train_loss {float(total) / len(data.train):.2f} test_elbo "
            f"{elbo / len(data.test):.2f}"
        )
    torch.save(vae.state_dict(), os.path.join(args.eager_train, "checkpoint.pt"))


def bench_processes(device, rounds):
    """``{(hidden, latent, batch): {"eager": s, "pyro-vae train": s}}``: median wall seconds of
    ``pyro-vae train`` with :func:`process_flags` and of :func:`eager_train`, interleaved."""
    import subprocess
    import sys
    import tempfile

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    # the processes use this process's thread count (the section's "N threads")
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    times = {shape: {"eager": [], "pyro-vae train": []} for shape in PROCESS_SHAPES}
    for _ in range(rounds):
        for shape, runs in times.items():
            for key in runs:
                with tempfile.TemporaryDirectory() as out:
                    if key == "eager":
                        cmd = [sys.executable, os.path.abspath(__file__), "--eager-train", out,
                               "--eager-shape", ",".join(map(str, shape))]  # fmt: skip
                    else:
                        cmd = [
                            sys.executable,
                            "-m",
                            "pyro_vae",
                            "train",
                            *process_flags(*shape),
                            "--quiet",
                            "--no-pictures",
                            "--out",
                            os.path.join(out, "run"),
                        ]
                    cmd += ["--device", str(device)]
                    t0 = time.perf_counter()
                    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
                    runs[key].append(time.perf_counter() - t0)
    return {
        shape: {k: statistics.median(v) for k, v in runs.items()} for shape, runs in times.items()
    }


def main(args):
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.eager_train:
        return eager_train(args)
    torch.manual_seed(0)
    key, dev = machine(device)
    stamp = (
        f"{datetime.date.today()}, torch {torch.__version__}, pyro {pyro.__version__}, "
        f"pyro_vae {pyro_vae.__version__}"
    )
    sections = []
    if args.archs:
        sections.append((key, arch_section(args, device, key, dev, stamp)))
    if args.configs != "none":
        sections.append((f"{key}, configurations", config_section(args, device, key, dev, stamp)))
    if args.process_rounds:
        sections.append((f"{key}, processes", process_section(args, device, key, dev, stamp)))
    if args.out:
        for name, section in sections:
            write_section(args.out, name, section)
        print(f"written to {args.out}")


def arch_section(args, device, key, dev, stamp):
    steps, epochs = [], []
    for name, (hidden, latent, batch) in ARCHS.items():
        data = torch.bernoulli(torch.full((args.num_data, *X_SHAPE), 0.3, device=device))
        ms = bench_steps(
            hidden, latent, batch, data, args.rounds, args.steps, args.warmup, args.compile
        )
        for runner, value in ms.items():
            steps.append(
                f"| {name} | {runner} | {value:.3f} | {value / ms['eager']:.2f} | "
                f"{value / ms['eager-fused']:.2f} |"
            )
            print(f"{name:36s} {runner:18s} {value:8.3f} ms/step  ratio {value / ms['eager']:.2f}")
        if args.epoch_rounds:
            sec = bench_epochs(hidden, latent, batch, data, args.epoch_rounds)
            for runner, value in sec.items():
                epochs.append(f"| {name} | {runner} | {value:.2f} | {value / sec['eager']:.2f} |")
                print(
                    f"{name:36s} {runner:18s} {value:8.2f} s/epoch  ratio "
                    f"{value / sec['eager']:.2f}"
                )
    compiled = "; ".join(
        f"{h}-{z} batch {b}: {s:.1f} s"
        for (h, z, b), s in COMPILE_SECONDS.items()
        if isinstance(h, int)
    )
    lines = [
        f"### {key}: {dev}",
        "",
        f"{stamp}; steps: median of {args.rounds} interleaved rounds × {args.steps} steps after "
        f"{args.warmup} "
        f"warm-up steps"
        + (
            f"; epochs: median of {args.epoch_rounds} interleaved rounds after one warm-up epoch"
            if epochs
            else ""
        )
        + (f"; inductor compile time: {compiled}." if compiled else "."),
        "",
        "| architecture | step | ms/step (median) | ratio to eager | ratio to eager-fused |",
        "| --- | --- | --- | --- | --- |",
        *steps,
    ]
    if epochs:
        lines += [
            "",
            f"| architecture | {args.num_data:,}-image epoch | seconds (median) | ratio to eager |",
            "| --- | --- | --- | --- |",
            *epochs,
        ]
    return "\n".join(lines) + "\n"


def config_section(args, device, key, dev, stamp):
    names = list(CONFIGS) if args.configs == "all" else args.configs.split(",")
    unknown = sorted(set(names) - set(CONFIGS))
    if unknown:
        raise SystemExit(
            f"unknown --configs {', '.join(unknown)}; choose from {', '.join(CONFIGS)} (or all, "
            "none)"
        )
    data = torch.bernoulli(torch.full((args.num_data, *X_SHAPE), 0.3, device=device))
    labels = torch.randint(10, (args.num_data,), device=device)
    ms, notes = bench_configs(
        names, data, labels, 128, args.config_rounds, args.config_steps, args.warmup, args.compile
    )
    rows = []
    for name in names:
        m = ms[name]
        cell = lambda k: f"{m[k]:.3f}" if k in m else "–"  # noqa: E731
        ratio = lambda a, b: f"{m[a] / m[b]:.2f}" if a in m and b in m else "–"  # noqa: E731
        compiled = f"{COMPILE_SECONDS[name]:.1f}" if name in COMPILE_SECONDS else "–"
        rows.append(
            f"| {name} | {short(notes[name])} | {cell('pyro_vae')} | {cell('pyro')} | "
            f"{ratio('pyro_vae', 'pyro')} | {cell('eager')} | {ratio('pyro_vae', 'eager')} | "
            f"{cell('pyro_vae-inductor')} | {ratio('pyro_vae-inductor', 'eager')} | {compiled} |"
        )
        print(rows[-1])
    return (
        "\n".join(
            [
                f"### {key}, configurations: {dev}",
                "",
                f"{stamp}; hidden 64, z 8, batch 128 (user-pair: 784-400-20), random binary "
                "images; median of "
                f"{args.config_rounds} interleaved rounds × {args.config_steps} steps after "
                f"{args.warmup} warm-up steps.",
                "",
                "| configuration | fast path | pyro_vae ms | pyro SVI ms | ratio to pyro | eager "
                "twin ms | ratio to eager "
                "| inductor ms | inductor ratio to eager | compile s |",
                "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
                *rows,
            ]
        )
        + "\n"
    )


def process_section(args, device, key, dev, stamp):
    rows = []
    for shape, sec in bench_processes(device, args.process_rounds).items():
        flags = " ".join(process_flags(*shape))
        ratio = sec["pyro-vae train"] / sec["eager"]
        print(f"{shape}: eager {sec['eager']:.1f} s, pyro-vae train {sec['pyro-vae train']:.1f} s")
        rows += [
            f"| 784-{shape[0]}-{shape[1]}, batch {shape[2]} | eager script "
            f"(`benchmarks/speed.py --eager-train DIR --eager-shape {','.join(map(str, shape))}`) "
            "| "
            f"{sec['eager']:.1f} | 1.00 |",
            f"| 784-{shape[0]}-{shape[1]}, batch {shape[2]} | `pyro-vae train {flags} --quiet "
            f"--no-pictures` | {sec['pyro-vae train']:.1f} | {ratio:.2f} |",
        ]
    head = [
        f"### {key}, processes: {dev}",
        "",
        f"{stamp}; Fashion-MNIST (60,000 training images, 10,000 test), median wall time of "
        f"{args.process_rounds} interleaved rounds, each a fresh process (start-up, data loading, "
        "capturing the step, checkpoints included).",
        "",
        "| net | process | seconds (median) | ratio to eager |",
        "| --- | --- | --- | --- |",
    ]
    return "\n".join(head + rows) + "\n"


def machine(device):
    """``(key, name)`` of a results section: ``("CPU, 2 threads", "x86_64")`` or ``("CUDA", "NVIDIA
    H100 ...")``."""
    if device.type == "cuda":
        return "CUDA", torch.cuda.get_device_name(device)
    threads = torch.get_num_threads()
    return f"CPU, {threads} thread{'s' * (threads > 1)}", platform.processor() or platform.machine()


def write_section(
    path, key, section, head="# Training-step speed\n\nWritten by `benchmarks/speed.py`.\n"
):
    """Replace (or add) the section ``### KEY: ...`` of a results file, keeping the others and the
    text above them (``head`` for a new file)."""
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
    p.add_argument(
        "--num-data", type=int, default=60000, help="images in the (random binary) dataset"
    )
    p.add_argument("--epoch-rounds", type=int, default=3, help="whole-epoch timings (0: skip them)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument(
        "--archs",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the architecture and epoch tables",
    )
    p.add_argument(
        "--configs",
        default="all",
        help=f"configurations to time: all, none, or some of {','.join(CONFIGS)}",
    )
    p.add_argument("--config-rounds", type=int, default=5)
    p.add_argument("--config-steps", type=int, default=10)
    p.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time the inductor-compiled step (seconds of compiling each)",
    )
    p.add_argument(
        "--process-rounds",
        type=int,
        default=3,
        help="whole pyro-vae train processes against the eager script (0: skip; needs "
        "Fashion-MNIST)",
    )
    p.add_argument(
        "--eager-train", metavar="DIR", help=argparse.SUPPRESS
    )  # one eager process (bench_processes)
    p.add_argument(
        "--eager-shape",
        type=lambda v: tuple(map(int, v.split(","))),
        default=(400, 20, 128),
        help=argparse.SUPPRESS,
    )  # hidden,latent,batch of that process
    p.add_argument(
        "--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "RESULTS.md")
    )
    return p.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
