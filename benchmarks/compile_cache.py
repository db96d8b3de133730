"""Compile once per configuration: the same ``pyro-vae train --fast compile`` run twice, each in a
new process, sharing one empty inductor cache; the second must load the compiled graph
(``compile_cache_hit``) and spend at most 15 s and a quarter of the first run's ``compile_seconds``.

    python benchmarks/compile_cache.py [--configs mlp,conv,deep] [--out benchmarks/COMPILE_CACHE.md]
"""

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
CONFIGS = {  # the flags of each configuration, beside the shared ones below
    "mlp": ["--hidden-dims", "400", "--latent-dim", "20"],
    "conv": ["--net", "conv", "--latent-dim", "16"],
    "deep": ["--model", "deep-hierarchical", "--scales", "2", "--groups-per-scale", "2"],
}


def first_row(config, out, cache):
    flags = [
        "--limit",
        "1024",
        "--test-limit",
        "128",
        "--epochs",
        "1",
        "--fast",
        "compile",
        "--device",
        "cpu",
        "--no-pictures",
        "--quiet",
        "--out",
        out,
        *CONFIGS[config],
    ]
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache}
    proc = subprocess.run(
        [sys.executable, "-m", "pyro_vae", "train", *flags], capture_output=True, text=True, env=env
    )
    if proc.returncode:
        raise SystemExit(f"{config}: pyro-vae train failed:\n{proc.stderr[-2000:]}")
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return json.loads(f.readline()), " ".join(
            ["pyro-vae train", *flags[: -2 - len(CONFIGS[config])], *CONFIGS[config]]
        )


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--configs", default=",".join(CONFIGS))
    p.add_argument("--out", default=os.path.join(HERE, "COMPILE_CACHE.md"))
    args = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for config in args.configs.split(","):
            cache = os.path.join(tmp, f"cache-{config}")
            (first, command), (second, _) = [
                first_row(config, os.path.join(tmp, f"{config}-{i}"), cache) for i in (1, 2)
            ]
            ratio = second["compile_seconds"] / first["compile_seconds"]
            holds = (
                second["compile_cache_hit"] and second["compile_seconds"] <= 15 and ratio <= 0.25
            )
            rows.append(
                f"| {config} | {first['compile_seconds']:.1f} | {second['compile_seconds']:.1f} | "
                f"{ratio:.2f} | {second['compile_cache_hit']} | {'yes' if holds else 'no'} | "
                f"`{command}` |"
            )
            print(rows[-1], flush=True)
    text = (
        f"# Compile once per configuration\n\nWritten by `benchmarks/compile_cache.py` on "
        f"{datetime.date.today()}, torch {torch.__version__}, CPU ({os.cpu_count()} cores, shared "
        "with other "
        "jobs).  Each configuration ran twice, each run a new process with one shared, initially "
        "empty "
        "inductor cache (`TORCHINDUCTOR_CACHE_DIR`); `compile_seconds` and `compile_cache_hit` "
        "are the first "
        "metrics row's.  Target: the second run loads the graph, in ≤ 15 s and ≤ ¼ of the "
        "first.\n\n"
        "| configuration | first run: compile s | second run: compile s | ratio | cache hit | "
        "holds | "
        f"command |\n| --- | --- | --- | --- | --- | --- | --- |\n" + "\n".join(rows) + "\n"
    )
    with open(args.out, "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
