"""Time and peak memory of ``log_likelihood`` (importance-sampled log p(x)) as K grows, at a fixed
chunk size.

The 784-400-20 MLP VAE (Bernoulli likelihood, diagonal guide; untrained unless ``--run`` names a
trained run directory) scores the first ``--images`` Fashion-MNIST test images with K = each of
``--k`` importance samples, ``--max-elements`` particle×image pairs per pass. Peak memory is CUDA's
``max_memory_allocated`` on a GPU and the process's peak RSS on a CPU (K runs in increasing order,
so a peak set by K would show as growth). The speed issue's GPU target: K = 5000 over the 10,000
test images within 60 s, peak memory set by the chunk, not by K × N. Each run replaces its device's
section of ``benchmarks/LOG_LIKELIHOOD.md``.

    python benchmarks/log_likelihood.py --images 100 --k 500,5000          # CPU
    python benchmarks/log_likelihood.py --device cuda --images 10000 --k 5000,50000
"""

import argparse
import datetime
import os
import resource
import sys
import time

import pyro
import torch

from pyro_vae import Config, load_data, log_likelihood
from pyro_vae.app.experiment import load_run
from pyro_vae.models import build_model
from pyro_vae.training.trainer import resolve_device

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
# noqa: E402  (benchmarks/speed.py: one results-file format)
from speed import machine, write_section  # noqa: E402

LOG_LIKELIHOOD_TITLE = (
    "# log_likelihood: time and peak memory against K\n\nWritten by "
    "`benchmarks/log_likelihood.py`.\n"
)


def peak_bytes(device):
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def main(args):
    device = resolve_device(args.device)
    torch.manual_seed(0)
    if args.run:
        _, vae, data = load_run(args.run, device=str(device))
    else:
        data = load_data("fashion-mnist", limit=256, test_limit=args.images, device=device)
        vae = build_model(
            Config(hidden_dims=[400], latent_dim=20), data.test.shape[1:], num_data=60000
        ).to(device)
    x = data.test[: args.images]
    rows = []
    log_likelihood(vae.model, vae.guide, x[:2], num_samples=2)  # warm-up
    for k in sorted(args.k):
        pyro.set_rng_seed(0)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        nll = (
            -log_likelihood(vae.model, vae.guide, x, num_samples=k, max_elements=args.max_elements)
            .mean()
            .item()
        )
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
        peak = peak_bytes(device)
        rows.append(
            f"| {k} | {len(x)} | {args.max_elements} | {seconds:.2f} | "
            f"{seconds * 10000 / len(x):.1f} | "
            f"{peak / 2**20:.1f} | {nll:.2f} |"
        )
        print(rows[-1])
    key, name = machine(device)
    memory = (
        "max_memory_allocated during the call"
        if device.type == "cuda"
        else "the process's peak RSS after the call"
    )
    section = (
        "\n".join(
            [
                f"### {key}: {name}",
                "",
                f"{datetime.date.today()}, torch {torch.__version__}, pyro {pyro.__version__}; "
                f"{'run ' + args.run if args.run else 'untrained 784-400-20 VAE'}; peak memory: "
                f"{memory}.",
                "",
                "| K | images | max elements | seconds | seconds per 10,000 images | peak memory "
                "(MiB) | NLL (nats) |",
                "| --- | --- | --- | --- | --- | --- | --- |",
                *rows,
            ]
        )
        + "\n"
    )
    if args.out:
        write_section(args.out, key, section, LOG_LIKELIHOOD_TITLE)
        print(f"written to {args.out}")
    return section


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument("--images", type=int, default=100, help="first N test images")
    p.add_argument("--k", type=lambda s: [int(v) for v in s.split(",")], default=[500, 5000])
    p.add_argument("--max-elements", type=int, default=2**16, help="particle×image pairs per pass")
    p.add_argument(
        "--run", default=None, help="a trained run directory (default: an untrained VAE)"
    )
    p.add_argument("--out", default=os.path.join(HERE, "LOG_LIKELIHOOD.md"))
    return p.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
