"""Fashion-MNIST likelihood benchmark in the VampPrior setup, next to the published numbers.

Setup of Tomczak & Welling's VampPrior code [1], used by the Exemplar VAE results [2]:
50k train / 10k validation / 10k test images from torchvision, dynamically binarized
training images, test images binarized once with a fixed seed, MLPs 784-300-300 with
z = 40, Adam 5e-4, batch 100, KL warm-up over 100 epochs, NLL from 5000 importance
samples.  Rows: the one-layer VAE; the same trained with IWAE (k = 50) and with DReG
(k = 50); an IAF guide; a two-layer hierarchical model with the top-down (ladder)
guide; the same with convolutional encoder/decoder.  Differences from [1]: ReLU MLPs
instead of gated dense layers; importance-weighted rows train without warm-up (a β
inside a log-sum-exp no longer gives a bound, so pyro_vae refuses it).

Each row is a plain ``pyro_vae.Config`` trained by ``pyro_vae.experiment.train`` and
evaluated by ``evaluate_run``; the table gives the command that reproduces it.

    python examples/benchmark_fashion_mnist.py --epochs 2000            # the paper's budget (GPU)
    python examples/benchmark_fashion_mnist.py --epochs 5 --warmup 2 --nll-samples 500 --test-limit 1000
    python examples/benchmark_fashion_mnist.py --smoke

References:
    1. J. M. Tomczak, M. Welling, "VAE with a VampPrior", AISTATS 2018.
    2. S. Norouzi, D. J. Fleet, M. Norouzi, "Exemplar VAE: Linking Generative Models, Nearest
       Neighbor Retrieval, and Data Augmentation", NeurIPS 2020 (Table 1, Fashion-MNIST).
"""
import argparse
import json
import os
import time

import torch

from pyro_vae import experiment
from pyro_vae.experiment import output_dir
from pyro_vae.config import Config

PUBLISHED = {"VAE": 228.70, "VampPrior": 227.35, "HVAE": 227.37, "ConvHVAE": 225.38,
             "ConvHVAE + VampPrior": 224.67, "PixelSNAIL decoder": 223.68}

# name -> (Config overrides, published row it is compared with)
ROWS = {
    "vae": ({}, "VAE"),
    "iwae-k50": ({"elbo": "iwae", "particles": 50, "kl_warmup_epochs": 0}, "VAE"),
    "dreg-k50": ({"elbo": "dreg", "particles": 50, "kl_warmup_epochs": 0}, "VAE"),
    "iaf": ({"guide": "iaf", "flows": 2, "flow_hidden_dims": [300]}, "VAE"),
    "hvae-top-down": ({"model": "hierarchical", "latent_dims": [40, 40], "guide": "top-down"}, "HVAE"),
    "conv-hvae-top-down": ({"model": "hierarchical", "latent_dims": [40, 40], "guide": "top-down", "net": "conv"},
                           "ConvHVAE"),
}


def base_config(args, name):
    overrides, _ = ROWS[name]
    config = dict(dataset="fashion-mnist", validation=10000, binarize="dynamic", hidden_dims=[300, 300],
                  latent_dim=40, lr=5e-4, batch_size=100, epochs=args.epochs, kl_warmup_epochs=args.warmup,
                  device=args.device, seed=args.seed, out=os.path.join(args.out, name), limit=args.limit,
                  test_limit=args.test_limit, log_every=100)
    config.update(overrides)
    return Config(**config)


def command(config):
    """The `pyro-vae train` command line of a config (non-default fields only)."""
    default = Config().to_dict()
    parts = ["pyro-vae train"]
    for k, v in config.to_dict().items():
        if v == default[k] or k in ("out",):
            continue
        v = ",".join(map(str, v)) if isinstance(v, list) else v
        parts.append(f"--{k.replace('_', '-')} {v}")
    return " ".join(parts) + f" --out runs/{os.path.basename(config.out)}"


def run_row(args, name):
    config = base_config(args, name)
    start = time.perf_counter()
    experiment.train(config, resume=os.path.exists(os.path.join(config.out, "config.json")), progress=args.progress)
    seconds = time.perf_counter() - start
    result = experiment.evaluate_run(config.out, nll_samples=args.nll_samples, limit=args.test_limit,
                                     split="test", device=args.device, pictures=False)
    return {"row": name, "nll": result["nll"], "elbo": result["elbo"], "kl": result["kl"],
            "active_units": result["active_units"], "train_seconds": seconds, "epochs": config.epochs,
            "images": result["images"], "nll_samples": args.nll_samples, "published_row": ROWS[name][1],
            "published_nll": PUBLISHED[ROWS[name][1]], "command": command(config)}


def markdown(rows, device):
    lines = [f"Device: {device}.", "",
             "| configuration | NLL (nats) | ELBO | active units | train time | published NLL (row) | NLL − published "
             "| reproduce |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['row']} | {r['nll']:.2f} (K={r['nll_samples']}, {r['images']} images) | {r['elbo']:.2f} | "
                     f"{r['active_units']} | {r['train_seconds'] / 60:.1f} min ({r['epochs']} epochs) | "
                     f"{r['published_nll']:.2f} ({r['published_row']}) | {r['nll'] - r['published_nll']:+.2f} | "
                     f"`{r['command']}` |")
    return "\n".join(lines) + "\n"


def main(args):
    names = args.rows.split(",") if args.rows else list(ROWS)
    unknown = [n for n in names if n not in ROWS]
    if unknown:
        raise SystemExit(f"unknown rows {unknown}; choose from {', '.join(ROWS)}")
    device = str(experiment.resolve_device(args.device))
    if device.startswith("cuda"):
        device += f" ({torch.cuda.get_device_name(torch.device(device))})"
    rows = []
    for name in names:
        rows.append(run_row(args, name))
        print(json.dumps(rows[-1]))
        table = write_results(args.out, rows, device)  # after every row, so a long run keeps what it measured
    print(table)
    return rows


def write_results(out, rows, device):
    """Merge ``rows`` into ``out/results.json`` (rows measured earlier stay) and write ``out/results.md``."""
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "results.json")
    done = {r["row"] for r in rows}
    merged = [r for r in json.load(open(path)) if r["row"] not in done] if os.path.exists(path) else []
    merged = sorted(merged + rows, key=lambda r: list(ROWS).index(r["row"]))
    with open(path, "w") as f:
        json.dump(merged, f, indent=2)
    table = markdown(merged, device)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(table)
    return table


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", default=None, help=f"comma-separated subset of {', '.join(ROWS)}")
    p.add_argument("--epochs", type=int, default=2000)
    p.add_argument("--warmup", type=int, default=100, help="KL warm-up epochs (not for iwae/dreg rows)")
    p.add_argument("--nll-samples", type=int, default=5000)
    p.add_argument("--limit", type=int, default=None, help="training images (default: all 50k)")
    p.add_argument("--test-limit", type=int, default=None, help="test images (default: all 10k)")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None,
                   help="run directory (default runs/benchmark_fashion_mnist; runs/…-2, … when taken; "
                        "--smoke: a fresh temporary one)")
    p.add_argument("--progress", action="store_true")
    p.add_argument("--smoke", action="store_true", help="every row on a tiny budget (seconds)")
    args = p.parse_args(argv)
    args.out = output_dir(args.out, "benchmark_fashion_mnist", args.smoke, True)
    if args.smoke:
        args.epochs, args.warmup, args.nll_samples, args.limit, args.test_limit = 1, 1, 10, 300, 100
    return args


if __name__ == "__main__":
    main(parse_args())
