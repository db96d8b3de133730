"""Cost of K = 1, 8, 50 vectorized particles per training step, relative to K = 1.

One trainer step (forward, backward, Adam update; the fast path where it applies) of the built-in
784-400-20 MLP VAE (Bernoulli likelihood, diagonal guide) on a batch of 128 Fashion-MNIST images,
for each estimator and K. Runs are interleaved (every round times each (estimator, K) once, in a
shuffled order) and the median over rounds is reported, so drifts in machine load hit every
configuration alike. Writes a Markdown table (default ``benchmarks/PARTICLES.md``).

    python benchmarks/particles.py --device cpu --rounds 20
"""

import argparse
import platform
import random
import statistics
import time

import pyro
import torch

from pyro_vae import Config, Trainer, load_data
from pyro_vae.models import build_model
from pyro_vae.training.trainer import resolve_device


def make_step(elbo, k, x, num_data):
    """A closure running one training step of a fresh VAE with estimator ``elbo`` and ``k``
    particles."""
    config = Config(hidden_dims=[400], latent_dim=20, elbo=elbo, particles=k)
    vae = build_model(config, x.shape[1:], num_data=num_data).to(x.device)
    trainer = Trainer(vae.model, vae.guide, elbo, k, progress=False, modules=[vae])
    trainer.enable_fast_path([x, x.flip(0)])  # as fit does: loss and gradients traced where valid
    print(f"{elbo} K={k}: {trainer.fast_note}")

    def step():
        trainer.svi.step(x)

    return step


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(estimators, ks, x, rounds, warmup, device):
    """Median seconds per step of every (estimator, K), from interleaved rounds."""
    pyro.clear_param_store()
    steps, scopes = {}, {}
    store = pyro.get_param_store()
    for elbo in estimators:
        for k in ks:
            with store.scope() as scopes[elbo, k]:  # separate parameters per configuration
                steps[elbo, k] = make_step(elbo, k, x, 60000)
    times = {key: [] for key in steps}
    order = list(steps)
    for r in range(warmup + rounds):
        random.shuffle(order)
        for key in order:
            with store.scope(scopes[key]):
                sync(device)
                start = time.perf_counter()
                steps[key]()
                sync(device)
                if r >= warmup:
                    times[key].append(time.perf_counter() - start)
    return {key: statistics.median(v) for key, v in times.items()}


def main(args):
    device = resolve_device(args.device)
    torch.manual_seed(0)
    random.seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    x = load_data("fashion-mnist", limit=args.batch_size, test_limit=2, device=device).train[
        : args.batch_size
    ]
    medians = measure(args.estimators, args.k, x, args.rounds, args.warmup, device)
    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch "
        "threads"
    )
    lines = [
        "# Cost of vectorized particles",
        "",
        "One trainer step (forward, backward, Adam; the fast path where it applies) of the "
        f"784-400-20 MLP VAE, batch {args.batch_size}, "
        f"on {device.type} ({name}); median of {args.rounds} interleaved rounds after "
        f"{args.warmup} warm-up "
        f"rounds; torch {torch.__version__}, pyro {pyro.__version__}.  Produced by "
        f"`python benchmarks/particles.py {' '.join(args.argv)}`.",
        "",
        "| estimator | "
        + " | ".join(f"K = {k}" for k in args.k)
        + " | "
        + " | ".join(f"K = {k} / K = {args.k[0]}" for k in args.k[1:])
        + " |",
        "|---" * (2 * len(args.k)) + "|",
    ]
    for elbo in args.estimators:
        ms = [f"{1e3 * medians[elbo, k]:.2f} ms" for k in args.k]
        ratios = [f"{medians[elbo, k] / medians[elbo, args.k[0]]:.2f}×" for k in args.k[1:]]
        lines.append(f"| {elbo} | " + " | ".join(ms + ratios) + " |")
    base = medians[args.estimators[0], args.k[0]]
    lines += [
        "",
        f"Relative to {args.estimators[0]} at K = {args.k[0]}: "
        + ", ".join(
            f"{elbo} K={k}: {medians[elbo, k] / base:.2f}×"
            for elbo in args.estimators
            for k in args.k
        )
        + ".",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "a" if args.append else "w") as f:
            f.write(("\n" if args.append else "") + text)
    return medians


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument(
        "--estimators", type=lambda s: s.split(","), default=["trace", "iwae", "dreg"]
    )
    parser.add_argument("--k", type=lambda s: [int(v) for v in s.split(",")], default=[1, 8, 50])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument(
        "--threads", type=int, default=0, help="torch CPU threads (0: torch's default)"
    )
    parser.add_argument("--out", default="benchmarks/PARTICLES.md")
    parser.add_argument(
        "--append", action="store_true", help="append to --out (e.g. a second device)"
    )
    args = parser.parse_args(argv)
    args.argv = argv if argv is not None else __import__("sys").argv[1:]
    return args


if __name__ == "__main__":
    main(parse_args())
