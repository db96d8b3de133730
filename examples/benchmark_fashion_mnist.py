"""Fashion-MNIST likelihood benchmark in the VampPrior protocol, next to the published numbers.

Protocol of Tomczak & Welling's VampPrior code [1], used by the Exemplar VAE results [2]:
50k train / 10k validation / 10k test images from torchvision, dynamically binarized
training images, validation and test images binarized once with a fixed seed, MLPs
784-300-300 with z = 40, Adam 5e-4, batch 100, KL warm-up over 100 epochs, early stopping
on the validation ELBO with a look-ahead of 50 epochs (counted after the warm-up), at most
2000 epochs, the best epoch's parameters evaluated: NLL from K = 5000 importance samples on
all 10k test images.  Rows: the one-layer VAE; the same trained with IWAE (k = 50) and with
DReG (k = 50); an IAF guide; the VampPrior (500 pseudo-inputs); a two-layer hierarchical
model with the top-down (ladder) guide; the same with convolutional encoder/decoder, and
with a VampPrior on its top layer; and the one-layer VAE and the VampPrior with the gated dense
layers of [1] (``--activation gated``, rows ``vae-gated`` and ``vampprior-gated``).  Differences
from [1]: the other rows use ReLU MLPs instead of gated dense layers; importance-weighted rows
train without warm-up (a β inside a log-sum-exp no longer gives a bound, so pyro_vae refuses it).

Each row is a plain ``pyro_vae.Config`` trained by ``pyro_vae.app.experiment.train`` and evaluated
by ``evaluate_run``; its ``command`` is the ``pyro-vae train`` line that reproduces the run from
epoch 1 with its seed. Results: ``{"rows": [...]}`` in ``benchmarks/fashion_mnist_full.json`` for
the protocol's budget (elsewhere ``OUT/fashion_mnist_full.json``, so a small budget never overwrites
the measured rows), and a markdown table next to it.

    python examples/benchmark_fashion_mnist.py --device cuda # the protocol (GPU, hours per row)
    python examples/benchmark_fashion_mnist.py --device cuda --resume # continue it after a stop
    python examples/benchmark_fashion_mnist.py --epochs 5 --warmup 2 --nll-samples 500 --test-limit
    1000 python examples/benchmark_fashion_mnist.py --smoke

References:
    1. J. M. Tomczak, M. Welling, "VAE with a VampPrior", AISTATS 2018.
    2. S. Norouzi, D. J. Fleet, M. Norouzi, "Exemplar VAE: Linking Generative Models, Nearest
       Neighbor Retrieval, and Data Augmentation", NeurIPS 2020 (Table 1, Fashion-MNIST).
"""

import json
import os
import time

import torch

from pyro_vae.app import experiment
from pyro_vae.app.config import Config
from pyro_vae.app.scripts import parse_script_args, script_parser

PUBLISHED = {
    "VAE": 228.70,
    "VampPrior": 227.35,
    "HVAE": 227.37,
    "ConvHVAE": 225.38,
    "ConvHVAE + VampPrior": 224.67,
    "PixelSNAIL decoder": 223.68,
}

# name -> (Config overrides, published row it is compared with)
ROWS = {
    "vae": ({}, "VAE"),
    "iwae-k50": ({"elbo": "iwae", "particles": 50, "kl_warmup_epochs": 0}, "VAE"),
    "dreg-k50": ({"elbo": "dreg", "particles": 50, "kl_warmup_epochs": 0}, "VAE"),
    "iaf": ({"guide": "iaf", "flows": 2, "flow_hidden_dims": [300]}, "VAE"),
    "vampprior": ({"prior": "vampprior", "pseudo_inputs": 500}, "VampPrior"),
    "vae-gated": ({"activation": "gated"}, "VAE"),
    "vampprior-gated": (
        {"activation": "gated", "prior": "vampprior", "pseudo_inputs": 500},
        "VampPrior",
    ),
    "hvae-top-down": (
        {"model": "hierarchical", "latent_dims": [40, 40], "guide": "top-down"},
        "HVAE",
    ),
    "conv-hvae-top-down": (
        {"model": "hierarchical", "latent_dims": [40, 40], "guide": "top-down", "net": "conv"},
        "ConvHVAE",
    ),
    "conv-hvae-vampprior": (
        {
            "model": "hierarchical",
            "latent_dims": [40, 40],
            "guide": "top-down",
            "net": "conv",
            "prior": "vampprior",
            "pseudo_inputs": 500,
        },
        "ConvHVAE + VampPrior",
    ),
}
PROTOCOL = {
    "epochs": 2000,
    "warmup": 100,
    "early_stopping": 50,
    "nll_samples": 5000,
    "limit": None,
    "test_limit": None,
    "validation": 10000,
}
RESULTS = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    "benchmarks",
    "fashion_mnist_full.json",
)


def base_config(args, name):
    overrides, _ = ROWS[name]
    config = dict(
        dataset="fashion-mnist",
        validation=args.validation,
        binarize="dynamic",
        hidden_dims=[300, 300],
        latent_dim=40,
        lr=5e-4,
        batch_size=100,
        epochs=args.epochs,
        kl_warmup_epochs=args.warmup,
        early_stopping=args.early_stopping or None,
        device=args.device,
        seed=args.seed,
        data_dir=args.data_dir,
        out=os.path.join(args.out, name),
        limit=args.limit,
        test_limit=args.test_limit,
        log_every=100,
        images_every=args.images_every,
    )
    config.update(overrides)
    return Config(**config)


def command(config):
    """The ``pyro-vae train`` line of a config: its non-default fields, and always the seed and the
    device."""
    default = Config().to_dict()
    parts = ["pyro-vae train"]
    for k, v in config.to_dict().items():
        if k == "out" or (v == default[k] and k not in ("seed", "device")):
            continue
        flag = "--" + k.replace("_", "-")
        if isinstance(v, bool):
            parts.append(flag if v else "--no-" + flag[2:])
            continue
        parts.append(f"{flag} {','.join(map(str, v)) if isinstance(v, list) else v}")
    return " ".join(parts) + f" --out runs/{os.path.basename(config.out)}"


def run_row(args, name, device):
    config = base_config(args, name)
    held = os.path.exists(os.path.join(config.out, "checkpoint.pt"))
    if held and not args.resume:
        raise SystemExit(
            f"{config.out} already holds a run; pass --resume to continue it, or another --out"
        )
    start = time.perf_counter()
    _, _, history = experiment.train(config, resume=held, progress=args.progress)
    trained = time.perf_counter() - start
    result = experiment.evaluate_run(
        config.out,
        nll_samples=args.nll_samples,
        limit=args.test_limit,
        split="test",
        device=args.device,
        pictures=False,
    )
    scored = [m for m in history if m.get("validation_elbo") is not None]
    best = max(scored, key=lambda m: m["validation_elbo"])["epoch"] if scored else None
    published = ROWS[name][1]
    return {
        "row": name,
        "nll": result["nll"],
        "nll_samples": args.nll_samples,
        "images": result["images"],
        "bits_per_dim": result.get("bits_per_dim"),
        "elbo": result["elbo"],
        "kl": result["kl"],
        "active_units": result["active_units"],
        "epochs": len(history),
        "best_epoch": best if config.early_stopping else len(history),
        "published": {"row": published, "nll": PUBLISHED[published]},
        "command": command(config),
        "device": device,
        "hours": sum(m["seconds"] for m in history) / 3600,  # training, over every resume
        "eval_hours": (time.perf_counter() - start - trained) / 3600,
        # the run's metrics rows (its metrics.jsonl), without the per-dimension KL lists (in
        # TensorBoard)
        "history": [{k: v for k, v in m.items() if k != "kl_per_dim"} for m in history],
    }


def markdown(rows):
    lines = [
        "| configuration | NLL (nats) | epochs (best) | published NLL (row) | NLL − published | "
        "device, hours "
        "| reproduce |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        pub = r["published"]
        lines.append(
            f"| {r['row']} | {r['nll']:.2f} (K={r['nll_samples']}, {r['images']} images) | "
            f"{r['epochs']} "
            f"({r['best_epoch']}) | {pub['nll']:.2f} ({pub['row']}) | "
            f"{r['nll'] - pub['nll']:+.2f} | "
            f"{r['device']}, {r['hours']:.2f} h | `{r['command']}` |"
        )
    return "\n".join(lines) + "\n"


def results_path(args):
    """``benchmarks/fashion_mnist_full.json`` at the protocol's budget, else
    ``OUT/fashion_mnist_full.json``."""
    if args.results:
        return args.results
    protocol = all(getattr(args, k) == v for k, v in PROTOCOL.items()) and not args.smoke
    return RESULTS if protocol else os.path.join(args.out, "fashion_mnist_full.json")


def main(args):
    names = args.rows.split(",") if args.rows else list(ROWS)
    unknown = [n for n in names if n not in ROWS]
    if unknown:
        raise SystemExit(f"unknown rows {unknown}; choose from {', '.join(ROWS)}")
    device = str(experiment.resolve_device(args.device))
    if device.startswith("cuda"):
        device += f" ({torch.cuda.get_device_name(torch.device(device))})"
    path = results_path(args)
    done = {r["row"]: r for r in _load(path)} if args.resume else {}
    rows = []
    for name in names:
        if name in done and done[name]["command"] == command(base_config(args, name)):
            rows.append(done[name])  # finished and evaluated before the stop: kept as it is
            continue
        rows.append(run_row(args, name, device))
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "history"}))
        table = write_results(path, rows)  # after every row, so a long run keeps what it measured
    table = write_results(path, rows)
    print(table)
    return rows


def _load(path):
    return json.load(open(path))["rows"] if os.path.exists(path) else []


def write_results(path, rows):
    """Merge ``rows`` into ``path`` as ``{"rows": [...]}`` (rows measured earlier stay) and write
    the table beside it (``.md``)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    done = {r["row"] for r in rows}
    merged = [r for r in _load(path) if r["row"] not in done]
    merged = sorted(
        merged + rows, key=lambda r: list(ROWS).index(r["row"]) if r["row"] in ROWS else len(ROWS)
    )
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"rows": merged}, f, indent=1)
    os.replace(tmp, path)
    table = markdown(merged)
    with open(os.path.splitext(path)[0] + ".md", "w") as f:
        f.write(table)
    return table


def parse_args(argv=None):
    p = script_parser(
        __doc__, "benchmark_fashion_mnist", smoke="every row on a tiny budget (seconds)"
    )
    p.add_argument("--rows", default=None, help=f"comma-separated subset of {', '.join(ROWS)}")
    p.add_argument(
        "--epochs", type=int, default=PROTOCOL["epochs"], help="at most this many epochs"
    )
    p.add_argument(
        "--warmup",
        type=int,
        default=PROTOCOL["warmup"],
        help="KL warm-up epochs (not for iwae/dreg rows)",
    )
    p.add_argument(
        "--early-stopping",
        type=int,
        default=PROTOCOL["early_stopping"],
        help="look-ahead in epochs on the validation ELBO (0: train all --epochs)",
    )
    p.add_argument("--nll-samples", type=int, default=PROTOCOL["nll_samples"])
    p.add_argument(
        "--validation",
        type=int,
        default=PROTOCOL["validation"],
        help="training images held out for early stopping (the last N of the 60k)",
    )
    p.add_argument(
        "--images-every", type=int, default=10, help="TensorBoard pictures every N epochs"
    )
    p.add_argument("--results", default=None, help="results JSON (default: see results_path)")
    p.add_argument("--progress", action="store_true")
    return parse_script_args(
        p,
        argv,
        smoke=dict(
            epochs=2,
            warmup=1,
            early_stopping=1,
            nll_samples=10,
            limit=300,
            test_limit=100,
            validation=200,
        ),
    )


if __name__ == "__main__":
    main(parse_args())
