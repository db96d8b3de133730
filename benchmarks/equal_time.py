"""Issue #29, item 4: the deep hierarchy, the two-layer conv ladder and the one-layer conv VAE at
equal wall-clock time.

Each model trains with ``pyro-vae train --time-budget MINUTES`` (the run ends at the last epoch
that fits; the fast path's capture and compile before the first epoch are not counted, the
process's wall is recorded beside) on

* Fashion-MNIST, all 60,000 training images, dynamic binarization (Bernoulli), batch 100; scored
  by ``pyro-vae evaluate``: NLL from ``--k`` importance samples on the first ``--images`` test
  images;
* photo patches 32×32 (``colour_photos.patches``, held-out test patches, discretized logistic),
  batch 64; scored by the test ELBO in bits/dim (−ELBO / (D ln 2)).

Every run writes samples at τ = 1.0 and 0.7 (``--sample-temperature 0.7``). The CPU runs the two
datasets side by side, one thread each (``--jobs 2``), so each model of a dataset sees the same
load. Writes ``benchmarks/equal_time.json`` and ``.md`` and copies the sample grids beside them.

    python benchmarks/equal_time.py --out /tmp/equal_time --minutes 30   # about 2 h on 2 cores
"""

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from deep_hierarchical_cpu import rows_of  # noqa: E402  (beside this script)

MODELS = {
    "deep-hierarchical": "--model deep-hierarchical".split(),
    "ladder (hierarchical 40,40, top-down, conv)": (
        "--model hierarchical --latent-dims 40,40 --guide top-down --net conv".split()
    ),
    "conv VAE (40 latents)": "--net conv --latent-dim 40".split(),
}
COMMON = ["--lr", "1e-3", "--device", "cpu", "--quiet", "--seed", "0", "--epochs", "100000"]
COMMON += ["--sample-temperature", "0.7", "--no-tensorboard"]


def pyro_vae(argv):
    """Run the CLI in a fresh process (one thread); its wall seconds."""
    start = time.perf_counter()
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    subprocess.run([sys.executable, "-m", "pyro_vae", *argv], check=True, env=env)
    return time.perf_counter() - start


def datasets(args):
    """``{name: (train flags, evaluate flags, bits/dim divisor or None)}``."""
    from colour_photos import patches  # beside this script

    os.makedirs(args.out, exist_ok=True)
    npz = os.path.join(args.out, "photos.npz")
    train_x, test_x = patches(args.photo_train, args.photo_test, 32, 0)
    np.savez(npz, x=train_x.transpose(0, 2, 3, 1), x_test=test_x.transpose(0, 2, 3, 1))
    fashion = ["--dataset", "fashion-mnist", "--batch-size", "100"]
    fashion += ["--test-limit", str(args.images)]
    photos = ["--dataset", f"npy:{npz}", "--likelihood", "discretized-logistic"]
    photos += ["--batch-size", "64"]
    return {
        "fashion-mnist": (fashion, ["--nll-samples", str(args.k), "--limit", str(args.images)]),
        "photos 32x32": (photos, ["--nll-samples", "0"], math.prod(test_x.shape[1:]) * math.log(2)),
    }


def run_dataset(name, flags, args):
    """Train and score the three models on one dataset, one after the other."""
    train_flags, eval_flags, *bits = flags
    rows = {}
    for i, (model, model_flags) in enumerate(MODELS.items()):
        if i not in args.models:
            continue
        run = os.path.join(args.out, f"{name.split()[0]}-{i}")
        argv = ["train", *model_flags, *train_flags, *COMMON, "--out", run]
        wall = None  # --reuse: a run that has spent its budget is only evaluated
        if not (args.reuse and os.path.exists(os.path.join(run, "checkpoint.pt"))):
            shutil.rmtree(run, ignore_errors=True)
            wall = pyro_vae([*argv, "--time-budget", str(args.minutes)])
        eval_wall = pyro_vae(["evaluate", run, *eval_flags, "--json"])
        with open(os.path.join(run, "eval.json")) as f:
            result = json.load(f)
        history = rows_of(run)
        row = {
            "command": "pyro-vae "
            + " ".join(a for a in argv if a != "--quiet")
            + f" --time-budget {args.minutes}",
            "epochs": len(history),
            "steps": sum(r["steps"] for r in history),
            "train_minutes": history[-1]["minutes"],
            "process_minutes": wall and wall / 60,
            "evaluate_minutes": eval_wall / 60,
            "elbo": result["elbo"],
            "kl": result["kl"],
            "fast_path_note": history[-1]["fast_path_note"],
        }
        if bits:
            row["bits_per_dim"] = -result["elbo"] / bits[0]
        else:
            row["nll"] = result["nll"]
        for png in ("samples.png", "samples_t0.7.png"):
            src = os.path.join(run, png)
            if os.path.exists(src):
                shutil.copy(src, os.path.join(HERE, f"equal_time_{name.split()[0]}-{i}_{png}"))
        rows[model] = row
        print(name, model, json.dumps(row), flush=True)
    return rows


def markdown(result):
    args = result["args"]
    lines = [
        "# Equal wall-clock time: deep hierarchy, ladder, one-layer conv VAE (issue #29, item 4)",
        "",
        f"Written by `benchmarks/equal_time.py` on {result['date']}: {args['minutes']} minutes of "
        "training each (`--time-budget`), one CPU thread per run, the two datasets side by side "
        "on a 2-core CPU. Fashion-MNIST: all training images, dynamic binarization, NLL from "
        f"K = {args['k']} importance samples on the first {args['images']} test images. Photos: "
        f"{args['photo_train']} training and {args['photo_test']} held-out 32×32 patches, "
        "discretized logistic, test ELBO in bits/dim.",
        "",
        "| data | model | NLL (nats) | bits/dim | ELBO | KL | epochs | steps | train min | "
        "process min |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for data, rows in result["rows"].items():
        for model in (m for m in MODELS if m in rows):
            r = rows[model]
            nll = f"{r['nll']:.2f}" if "nll" in r else "–"
            bits = f"{r['bits_per_dim']:.3f}" if "bits_per_dim" in r else "–"
            lines.append(
                f"| {data} | {model} | {nll} | {bits} | {r['elbo']:.2f} | {r['kl']:.2f} | "
                f"{r['epochs']} | {r['steps']} | {r['train_minutes']:.1f} | "
                f"{'–' if r['process_minutes'] is None else format(r['process_minutes'], '.1f')} |"
            )
    lines += ["", result["reading"]] if result.get("reading") else []
    lines += ["", "Samples (τ = 1.0, then 0.7): `benchmarks/equal_time_<data>-<i>_samples*.png`,"]
    lines += ["i in the order of the table.", "", "Reproduce:", ""]
    lines += [f"    {r['command']}" for rows in result["rows"].values() for r in rows.values()]
    return "\n".join(lines) + "\n"


def main(args):
    """Run the datasets asked for; their rows replace those in ``equal_time.json`` (the others
    are kept, so the datasets can run as separate commands)."""
    todo = {name: flags for name, flags in datasets(args).items() if name in args.datasets}
    with ThreadPoolExecutor(args.jobs) as pool:
        futures = {
            name: pool.submit(run_dataset, name, flags, args) for name, flags in todo.items()
        }
        done = {name: future.result() for name, future in futures.items()}
    path = os.path.join(HERE, "equal_time.json")
    result = {"rows": {}}
    if os.path.exists(path):  # read now, not at the start: another command may have written it
        with open(path) as f:
            result = json.load(f)
    result["args"] = vars(args)
    result["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    for name, rows in done.items():  # per model, so models can run as separate commands
        result["rows"].setdefault(name, {}).update(rows)
    for name, text in (("json", json.dumps(result, indent=2)), ("md", markdown(result))):
        with open(os.path.join(HERE, f"equal_time.{name}"), "w") as f:
            f.write(text)
    print(markdown(result))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="folder for the runs (outside the source tree)")
    p.add_argument("--minutes", type=float, default=30.0, help="training minutes per model")
    p.add_argument("--images", type=int, default=1000, help="Fashion-MNIST test images")
    p.add_argument("--k", type=int, default=1000, help="importance samples for the NLL")
    p.add_argument("--photo-train", type=int, default=8000)
    p.add_argument("--photo-test", type=int, default=1000)
    p.add_argument("--jobs", type=int, default=2, help="datasets run side by side")
    p.add_argument(
        "--models",
        type=lambda s: [int(i) for i in s.split(",")],
        default=[0, 1, 2],
        help="comma-separated indices into MODELS (0 deep, 1 ladder, 2 conv VAE)",
    )
    p.add_argument(
        "--reuse",
        action="store_true",
        help="evaluate a run of --out that has a checkpoint instead of training it again",
    )
    p.add_argument(
        "--datasets",
        type=lambda s: s.split(","),
        default=["fashion-mnist", "photos 32x32"],
        help="comma-separated, of: fashion-mnist, photos 32x32",
    )
    return p.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
