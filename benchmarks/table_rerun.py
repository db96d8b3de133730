"""Rerun a row of benchmarks/fashion_mnist_full.json for a few epochs and compare with its record.

    python benchmarks/table_rerun.py ROW [--epochs 3] [--tolerance 0.5] [--route
                                         recorded|auto|compile|trace] [--out DIR] [--json FILE]

The row's own ``command`` is run with ``--epochs`` set to 3 (everything else kept:
``--kl-warmup-epochs`` fixes β per epoch whatever ``--epochs`` is) and ``--out`` moved to a scratch
folder. The fast-path route is forced to the one that produced the row (``--fast compile`` for
"replayed by inductor", ``--fast trace`` for "replayed by fx"): under ``--fast auto`` the route is
picked from a *timed* fx step times the planned steps
(pyro_vae.estimators.fast.COMPILE_WHEN_SECONDS), so a 2000-epoch run compiles while a 3-epoch rerun
on a quiet machine replays by fx, and on a loaded machine the same 3-epoch command may compile. The
two routes round differently and their runs drift apart by nats within three epochs.

Each of the epochs' ``validation_elbo``, ``test_elbo`` and ``train_loss`` is compared with the row's
history; the rerun passes when every difference is within ``--tolerance`` nats. Exit status 0 on
pass, 1 on a miss. The row's ``commit`` (when recorded) is printed beside the commit checked out
now.
"""

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
TABLE = os.path.join(HERE, "fashion_mnist_full.json")
FIGURES = ("validation_elbo", "test_elbo", "train_loss")


def recorded_route(row):
    """'compile' or 'trace': the route of the row's first epoch (its ``route`` field, else its
    note)."""
    if row.get("route") in ("compile", "trace"):
        return row["route"]
    note = row["history"][0].get("fast_path_note") or ""
    if "replayed by inductor" in note:
        return "compile"
    if "replayed by fx" in note or "replayed" in note:
        return "trace"
    return "off"


def set_option(argv, flag, value):
    """``argv`` with ``flag value`` replaced (or appended)."""
    argv = list(argv)
    if flag in argv:
        argv[argv.index(flag) + 1] = value
    else:
        argv += [flag, value]
    return argv


def rerun_command(row, epochs, route, out):
    argv = shlex.split(row["command"])
    assert argv[:2] == ["pyro-vae", "train"], row["command"]
    argv = set_option(argv[2:], "--epochs", str(epochs))
    argv = set_option(argv, "--out", out)
    if route != "auto":
        argv = set_option(argv, "--fast", route)
    return ["train"] + argv


def head_commit():
    try:
        return subprocess.run(
            ["git", "-C", HERE, "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def compare(row, metrics, epochs, tolerance):
    """Rows of (epoch, figure, recorded, rerun, difference) and whether all are within
    ``tolerance``."""
    recorded = {h["epoch"]: h for h in row["history"]}
    rerun = {m["epoch"]: m for m in metrics if "epoch" in m and "validation_elbo" in m}
    lines, ok = [], True
    for epoch in range(1, epochs + 1):
        for name in FIGURES:
            a, b = recorded.get(epoch, {}).get(name), rerun.get(epoch, {}).get(name)
            d = None if a is None or b is None else b - a
            ok = ok and d is not None and abs(d) <= tolerance
            lines.append((epoch, name, a, b, d))
    return lines, ok


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("row")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--tolerance", type=float, default=0.5)
    p.add_argument("--route", default="recorded", choices=("recorded", "auto", "compile", "trace"))
    p.add_argument(
        "--out", default=None, help="the rerun's run folder (default: a fresh temporary one)"
    )
    p.add_argument("--json", default=None, help="write the comparison here")
    p.add_argument("--table", default=TABLE)
    args = p.parse_args(argv)

    rows = {r["row"]: r for r in json.load(open(args.table))["rows"]}
    if args.row not in rows:
        p.error(f"no row {args.row!r} in {args.table}; rows: {', '.join(rows)}")
    row = rows[args.row]
    route = recorded_route(row) if args.route == "recorded" else args.route
    out = args.out or tempfile.mkdtemp(prefix=f"rerun-{args.row}-")
    cmd = [sys.executable, "-m", "pyro_vae.app.cli"] + rerun_command(row, args.epochs, route, out)
    print("$", shlex.join(cmd), flush=True)
    subprocess.run(cmd, check=True)

    metrics = [
        json.loads(line) for line in open(os.path.join(out, "metrics.jsonl")) if line.strip()
    ]
    lines, ok = compare(row, metrics, args.epochs, args.tolerance)
    notes = sorted({m.get("fast_path_note") for m in metrics if m.get("fast_path_note")})
    print(
        f"row {args.row}: recorded at commit "
        f"{row.get('commit') or 'unrecorded, recorded in ' + str(row.get('recorded_in_commit'))} "
        "by "
        f"{row.get('route', recorded_route(row))}; rerun at commit {head_commit()} by {route} "
        f"({'; '.join(notes)})"
    )
    for epoch, name, a, b, d in lines:
        fa = "—" if a is None else f"{a:.2f}"
        fb = "—" if b is None else f"{b:.2f}"
        fd = "—" if d is None else f"{d:+.2f}"
        print(f"  epoch {epoch} {name:16s} recorded {fa:>9s} rerun {fb:>9s} diff {fd:>7s}")
    print(
        f"{'PASS' if ok else 'MISS'}: every figure within {args.tolerance} nats"
        if ok
        else f"MISS: some figure differs by more than {args.tolerance} nats"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "row": args.row,
                    "route": route,
                    "commit": head_commit(),
                    "pass": ok,
                    "tolerance": args.tolerance,
                    "notes": notes,
                    "figures": [
                        dict(zip(("epoch", "figure", "recorded", "rerun", "diff"), x))
                        for x in lines
                    ],
                },
                f,
                indent=1,
            )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
