"""``make gpu-check``: every CUDA claim of the README and docs/, run on one GPU in at most 8 min.

Steps (each in its own process, with its own time limit, results written after each one):

1. ``tests``: the tests marked ``cuda`` (``pytest -m cuda --device cuda``): the compiled step as one
   CUDA graph, the fx replay, resume and the sites' device all give the plain results on CUDA;
2. ``train``: a 2-epoch ``pyro-vae train --device cuda --fast compile`` on all 60,000 Fashion-MNIST
   images (CUDA graphs): the fast path's note, ``compile_seconds``, the seconds of each 60,000-image
   epoch, test ELBO;
3. ``train-again``: the same configuration in a new process, 1 epoch: the compiled graph comes from
   inductor's cache (``compile_seconds``);
4. ``step-time``: the step against the hand-written eager PyTorch step on the GPU
   (``benchmarks/speed.py --device cuda``, architectures only; it writes its CUDA section into
   ``benchmarks/RESULTS.md``);
5. ``torchrun``: ``torchrun --nproc-per-node 2 -m pyro_vae train --device cuda`` (NCCL with one GPU
   a rank, gloo where two ranks share one GPU).

Writes ``benchmarks/gpu.json`` (``--json``). Without a CUDA device it says so in one line and exits
0.

    python benchmarks/gpu_check.py [--data-dir FOLDER] [--copy-to DIR]
"""

import argparse
import datetime
import json
import os
import re
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def run(cmd, limit, env=None):
    """``(return code, seconds, output)`` of ``cmd`` run from the repository root, killed after
    ``limit`` s."""
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            cmd,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=limit,
            env={
                **os.environ,
                **(env or {}),
                "PYTHONPATH": os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])),
            },
        )
        code, out = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as e:
        code, out = (
            "timeout",
            (e.stdout or b"").decode(errors="replace") + (e.stderr or b"").decode(errors="replace"),
        )
    return code, round(time.perf_counter() - start, 1), out


def metrics(run_dir):
    path = os.path.join(run_dir, "metrics.jsonl")
    return [json.loads(line) for line in open(path)] if os.path.exists(path) else []


def train_flags(args, out, epochs, extra=()):
    data = ["--data-dir", args.data_dir] if args.data_dir else []
    return [
        "train",
        "--dataset",
        "fashion-mnist",
        *data,
        "--epochs",
        str(epochs),
        "--batch-size",
        "128",
        "--latent-dim",
        "20",
        "--hidden-dims",
        "400",
        "--device",
        args.device,
        "--out",
        out,
        "--quiet",
        *extra,
    ]


def summary(rows):
    """What a run's metrics rows say about the CUDA claims."""
    if not rows:
        return {}
    return {
        "epoch_seconds": [round(r["seconds"], 2) for r in rows],
        "test_elbo": round(rows[-1]["test_elbo"], 2),
        "compile_seconds": rows[0].get("compile_seconds"),
        "fast_path": rows[-1]["fast_path"],
        "fast_path_note": rows[-1]["fast_path_note"],
    }


def step_tests(args, scratch):
    code, seconds, out = run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-m",
            "cuda",
            "--device",
            args.device,
            "-p",
            "no:cacheprovider",
            "tests",
        ],
        120,
    )
    counts = dict((k, int(n)) for n, k in re.findall(r"(\d+) (passed|failed|skipped|error)", out))
    return {
        "ok": code == 0,
        "seconds": seconds,
        **counts,
        "tail": out[-1500:] if code else out[-300:],
    }


def step_train(args, scratch):
    out = os.path.join(scratch, "train")
    code, seconds, log = run(
        [sys.executable, "-m", "pyro_vae", *train_flags(args, out, 2, ["--fast", "compile"])], 120
    )
    rows = summary(metrics(out))
    graphs = args.device == "cpu" or "CUDA graph" in rows.get("fast_path_note", "")
    ok = code == 0 and rows.get("fast_path") and graphs
    return {"ok": bool(ok), "seconds": seconds, **rows, "tail": log[-1500:] if not ok else ""}


def step_train_again(args, scratch):
    out = os.path.join(scratch, "again")
    code, seconds, log = run(
        [sys.executable, "-m", "pyro_vae", *train_flags(args, out, 1, ["--fast", "compile"])], 60
    )
    rows = summary(metrics(out))
    return {
        "ok": code == 0 and bool(rows),
        "seconds": seconds,
        **rows,
        "tail": log[-1500:] if code else "",
    }


def step_time(args, scratch):
    code, seconds, out = run(
        [
            sys.executable,
            os.path.join(HERE, "speed.py"),
            "--device",
            args.device,
            "--rounds",
            "7",
            "--configs",
            "none",
            "--process-rounds",
            "0",
            "--epoch-rounds",
            "1",
        ],
        110,
    )
    rows = re.findall(
        r"\| ([^|\n]+) \| (eager|eager-fused|pyro|pyro-jit|pyro_vae|pyro_vae-inductor) \| "
        r"([0-9.]+) \| ([0-9.]+) \|",
        out + (open(os.path.join(HERE, "RESULTS.md")).read() if code == 0 else ""),
    )
    table = {}
    for arch, runner, ms, ratio in rows:
        table.setdefault(arch.strip(), {})[runner] = {
            "ms": float(ms),
            "ratio_to_eager": float(ratio),
        }
    return {
        "ok": code == 0,
        "seconds": seconds,
        "steps": table,
        "tail": out[-1500:] if code else out[-600:],
    }


def step_torchrun(args, scratch):
    out = os.path.join(scratch, "ddp")
    flags = train_flags(args, out, 1, ["--limit", "20000", "--test-limit", "1000"])
    code, seconds, log = run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            "-m",
            "pyro_vae",
            *flags,
        ],
        90,
    )
    rows = summary(metrics(out))
    return {
        "ok": code == 0 and bool(rows),
        "seconds": seconds,
        **rows,
        "tail": log[-1500:] if code else "",
    }


STEPS = {
    "tests": step_tests,
    "train": step_train,
    "train-again": step_train_again,
    "step-time": step_time,
    "torchrun": step_torchrun,
}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--data-dir", help="the Fashion-MNIST IDX files (default: the library's own search)"
    )
    p.add_argument("--json", default=os.path.join(HERE, "gpu.json"))
    p.add_argument("--steps", default=",".join(STEPS), help=f"some of {','.join(STEPS)}")
    p.add_argument("--copy-to", help="also copy gpu.json and RESULTS.md into this folder")
    p.add_argument("--device", default="cuda", help="cpu: a dry run of the script itself")
    args = p.parse_args(argv)
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print(
            "gpu-check: no CUDA device here (torch.cuda.is_available() is False); nothing checked"
        )
        return 0
    scratch = os.path.join(ROOT, "runs", "gpu-check")
    shutil.rmtree(scratch, ignore_errors=True)
    gpu = torch.cuda.get_device_name() if args.device == "cuda" else "none (dry run on the CPU)"
    report = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "gpu": gpu,
        "torch": torch.__version__,
        "steps": {},
    }
    for name in args.steps.split(","):
        print(f"gpu-check: {name} …", flush=True)
        report["steps"][name] = result = STEPS[name](args, scratch)
        print(
            f"gpu-check: {name}: {'ok' if result['ok'] else 'FAILED'} in {result['seconds']} s",
            flush=True,
        )
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
        if args.copy_to:
            for path in (args.json, os.path.join(HERE, "RESULTS.md")):
                shutil.copy(path, args.copy_to)
    failed = [n for n, r in report["steps"].items() if not r["ok"]]
    print(
        f"gpu-check: {len(report['steps']) - len(failed)} of {len(report['steps'])} steps ok"
        + (f"; failed: {', '.join(failed)}" if failed else "")
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
