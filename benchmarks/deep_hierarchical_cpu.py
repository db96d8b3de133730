"""The deep hierarchical VAE against the two-layer ladder on one CPU budget; the gradient-norm skip
at a high lr.

Both models train from the CLI on the same first ``--train`` Fashion-MNIST images (dynamic
binarization) for the same ``--epochs`` (batch 100, Adam 1e-3), then ``pyro-vae evaluate`` scores
the first ``--images`` test images: NLL (``--k`` importance samples), ELBO, KL and active units per
latent site (group), and the time per epoch (the median of the epochs; the CPU is shared, so also
the ratio). Then the deep model trains one epoch on ``--stability-train`` images at
``--stability-lr`` with and without ``--skip-threshold``: the updates skipped, the NaN guard's bad
steps and the final losses. Writes ``benchmarks/deep_hierarchical_cpu.json`` and ``.md`` (and runs
under ``--out``).

    python benchmarks/deep_hierarchical_cpu.py --out /tmp/dh_bench # about 15 min on a busy 2-core
    CPU
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
COMMON = [
    "--dataset",
    "fashion-mnist",
    "--batch-size",
    "100",
    "--lr",
    "1e-3",
    "--device",
    "cpu",
    "--quiet",
    "--no-tensorboard",
    "--seed",
    "0",
]


def configurations(args):
    deep = [
        "--model",
        "deep-hierarchical",
        "--net",
        "conv",
        "--scales",
        "2",
        "--groups-per-scale",
        "2",
        "--hidden-channels",
        str(args.channels),
        "--latent-channels",
        "4",
        "--sample-temperature",
        "0.7",
    ]
    ladder = [
        "--model",
        "hierarchical",
        "--latent-dims",
        "40,40",
        "--guide",
        "top-down",
        "--net",
        "conv",
    ]
    return {"deep-hierarchical": deep, "ladder (hierarchical 40,40 top-down conv)": ladder}


def pyro_vae(argv):
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pyro_vae", *argv], check=True)
    return time.perf_counter() - start


def rows_of(run):
    with open(os.path.join(run, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def compare(args):
    out = {}
    for i, (name, flags) in enumerate(configurations(args).items()):
        run = os.path.join(args.out, f"model{i}")
        budget = [
            "--limit",
            str(args.train),
            "--test-limit",
            str(args.images),
            "--epochs",
            str(args.epochs),
        ]
        argv = ["train", *flags, *COMMON, *budget, "--out", run]
        wall = pyro_vae(argv)
        rows = rows_of(run)
        eval_wall = pyro_vae(
            [
                "evaluate",
                run,
                "--nll-samples",
                str(args.k),
                "--limit",
                str(args.images),
                "--json",
                "--no-pictures",
            ]
        )
        with open(os.path.join(run, "eval.json")) as f:
            result = json.load(f)
        units = result["active_units"]
        out[name] = {
            "command": "pyro-vae " + " ".join(a for a in argv if a != "--quiet"),
            "nll": result["nll"],
            "elbo": result["elbo"],
            "kl": result["kl"],
            "kl_per_site": result["kl_per_site"],
            "active_units": dict(
                zip(result["latent_sites"], units if isinstance(units, list) else [units])
            ),
            "latent_dims": dict(
                zip(
                    result["latent_sites"],
                    result["latent_dims"]
                    if isinstance(result["latent_dims"], list)
                    else [result["latent_dims"]],
                )
            ),
            "collapsed_sites": result["collapsed_sites"],
            "seconds_per_epoch": [r["seconds"] for r in rows],
            "median_seconds_per_epoch": statistics.median(r["seconds"] for r in rows),
            "train_wall_s": wall,
            "evaluate_wall_s": eval_wall,
            "test_elbo_per_epoch": [r["test_elbo"] for r in rows],
        }
        print(
            name, json.dumps({k: v for k, v in out[name].items() if k != "kl_per_site"}), flush=True
        )
    return out


def stability(args):
    out = {}
    for label, extra in (
        ("no skip", []),
        (f"--skip-threshold {args.threshold:g}", ["--skip-threshold", str(args.threshold)]),
    ):
        run = os.path.join(args.out, "stability-" + ("skip" if extra else "plain"))
        flags = configurations(args)["deep-hierarchical"]
        argv = [
            "train",
            *flags,
            *COMMON,
            *extra,
            "--limit",
            str(args.stability_train),
            "--test-limit",
            "200",
            "--epochs",
            str(args.stability_epochs),
            "--fast",
            "off",
            "--no-pictures",
            "--out",
            run,
        ]
        argv[argv.index("--lr") + 1] = str(args.stability_lr)
        try:
            wall = pyro_vae(argv)
            rows = rows_of(run)
            out[label] = {
                "command": "pyro-vae " + " ".join(a for a in argv if a != "--quiet"),
                "wall_s": wall,
                "train_loss": [r["train_loss"] for r in rows],
                "test_elbo": [r["test_elbo"] for r in rows],
                "bad_steps": [r["bad_steps"] for r in rows],
                "steps": [r["steps"] for r in rows],
                "skipped_updates": [r.get("skipped_updates", 0) for r in rows],
            }
        except subprocess.CalledProcessError as e:  # e.g. the NaN guard stopped the run
            out[label] = {
                "command": "pyro-vae " + " ".join(argv),
                "failed": f"exit status {e.returncode}",
            }
        print(label, json.dumps(out[label]), flush=True)
    return out


def markdown(result):
    a = result["args"]
    lines = [
        "# Deep hierarchical VAE vs the two-layer ladder on a CPU",
        "",
        f"Written by `benchmarks/deep_hierarchical_cpu.py` on {result['date']} (2-core CPU shared "
        "with other "
        f"jobs; wall {result['total_wall_s'] / 60:.1f} min in all).  Budget: the first "
        f"{a['train']} Fashion-MNIST "
        f"training images, {a['epochs']} epochs, batch 100, Adam 1e-3; NLL from K = {a['k']} "
        "importance samples "
        f"on the first {a['images']} test images.",
        "",
        "| model | NLL | ELBO | KL | KL per group (nats) | active units | s / epoch (median) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in result["compare"].items():
        kl = ", ".join(f"{s} {v:.2f}" for s, v in r["kl_per_site"].items())
        units = ", ".join(
            f"{s} {r['active_units'][s]}/{r['latent_dims'][s]}" for s in r["active_units"]
        )
        lines.append(
            f"| {name} | {r['nll']:.2f} | {r['elbo']:.2f} | {r['kl']:.2f} | {kl} | {units} | "
            f"{r['median_seconds_per_epoch']:.1f} |"
        )
    names = list(result["compare"])
    if len(names) == 2:
        ratio = (
            result["compare"][names[0]]["median_seconds_per_epoch"]
            / result["compare"][names[1]]["median_seconds_per_epoch"]
        )
        lines += ["", f"Time per epoch, deep / ladder: {ratio:.1f}×."]
    lines += ["", "Reproduce:", ""] + [f"    {r['command']}" for r in result["compare"].values()]
    lines += [
        "",
        f"## Gradient-norm skip at lr {a['stability_lr']:g} ({a['stability_train']} images, "
        f"{a['stability_epochs']} epoch(s), 10 steps each; wall "
        f"{result.get('stability_wall_s', 0) / 60:.1f} min)",
        "",
        "| run | train loss per epoch | test ELBO per epoch | skipped updates | NaN-guard bad "
        "steps |",
        "| --- | --- | --- | --- | --- |",
    ]
    for label, r in result["stability"].items():
        if "failed" in r:
            lines.append(f"| {label} | {r['failed']} | | | |")
            continue
        lines.append(
            f"| {label} | {', '.join(f'{v:.1f}' for v in r['train_loss'])} | "
            f"{', '.join(f'{v:.1f}' for v in r['test_elbo'])} | "
            f"{sum(r['skipped_updates'])} of {sum(r['steps'])} | {sum(r['bad_steps'])} |"
        )
    lines += ["", "Reproduce:", ""] + [f"    {r['command']}" for r in result["stability"].values()]
    return "\n".join(lines) + "\n"


def main(args):
    start = time.perf_counter()
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(HERE, "deep_hierarchical_cpu.json")
    if args.stability_only:  # rerun the skip comparison, keep the model comparison already written
        with open(path) as f:
            result = json.load(f)
        result["args"].update(
            {k: v for k, v in vars(args).items() if k.startswith(("stability", "threshold"))}
        )
        result["stability"] = stability(args)
        result["stability_wall_s"] = time.perf_counter() - start
    else:
        result = {
            "args": vars(args),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "compare": compare(args),
        }
        middle = time.perf_counter()
        result["stability"] = stability(args)
        result["stability_wall_s"] = time.perf_counter() - middle
        result["total_wall_s"] = time.perf_counter() - start
    with open(path, "w") as f:
        json.dump(result, f, indent=2)
    with open(os.path.join(HERE, "deep_hierarchical_cpu.md"), "w") as f:
        f.write(markdown(result))
    print(markdown(result))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="folder for the runs (outside the source tree)")
    p.add_argument("--train", type=int, default=5000, help="training images")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--images", type=int, default=500, help="test images for the evaluation")
    p.add_argument("--k", type=int, default=50, help="importance samples for the NLL")
    p.add_argument("--channels", type=int, default=16, help="--hidden-channels of the deep model")
    p.add_argument("--stability-train", type=int, default=1000)
    p.add_argument("--stability-epochs", type=int, default=2)
    p.add_argument(
        "--stability-only",
        action="store_true",
        help="rerun only the skip comparison (keeps the rest)",
    )
    p.add_argument("--stability-lr", type=float, default=1e-2)
    p.add_argument(
        "--threshold", type=float, default=2000, help="--skip-threshold G (nats per image)"
    )
    return p.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
