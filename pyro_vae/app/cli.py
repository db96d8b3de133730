"""The ``pyro-vae`` command line: ``train``, ``evaluate RUN_DIR``, ``sample RUN_DIR``, ``anomaly
RUN_DIR``, ``denoise RUN_DIR``, ``embed RUN_DIR``, ``gradient-snr RUN_DIR``
and ``fit-prior RUN_DIR``.

Every flag of ``train`` is a field of :class:`~pyro_vae.app.config.Config` (kebab-case);
the commands only build a config and call :mod:`pyro_vae.app.experiment`, imported when a
command runs (``--help`` imports neither torch nor pyro).

Exit status: 0 on success; 2 for a :class:`~pyro_vae.core.errors.UserError` (a bad option,
missing data or run, a refused combination), printed as one line that names the flags; 1 for any
other exception (a failure inside torch, Pyro or elsewhere), printed as one line that names it,
with the traceback behind ``--debug`` and in the run's ``pyro-vae.log``; 128 + N when stopped by
signal N.
"""

import dataclasses
import functools
import json
import os
import sys
import time
import traceback

from pyro_vae.app.config import Config
from pyro_vae.app.parser import LOG, build_parser
from pyro_vae.core.errors import UserError, naming_flags


@functools.lru_cache(maxsize=None)
def _parser():
    return build_parser()  # built once per process: a parser is reusable, and takes ~20 ms to build


def run(args):
    """Run the parsed command ``args``."""
    import logging

    from pyro_vae.app import experiment

    logging.getLogger("pyro").setLevel(logging.WARNING)  # not Pyro's "Guessed max_plate_nesting"
    if args.command == "train":
        fields = {f.name for f in dataclasses.fields(Config)}
        config = Config(**{k: v for k, v in vars(args).items() if k in fields})
        _, _, history = experiment.train(config, resume=args.resume, progress=not args.quiet)
        if not args.quiet and _is_main():
            if history:  # the last metrics row, without the KL of every latent dimension
                print(json.dumps({k: v for k, v in history[-1].items() if k != "kl_per_dim"}))
            print(f"run directory: {config.out}")
    elif args.command == "evaluate":
        result = experiment.evaluate_run(
            args.run_dir,
            args.nll_samples,
            args.limit,
            args.split,
            args.device,
            pictures=args.pictures,
        )
        _print_result(result, args.json)
    elif args.command == "sample":
        print(
            experiment.sample_run(
                args.run_dir, args.n, args.out, args.device, args.label, args.temperature
            )
        )
    elif args.command == "anomaly":
        _print_result(
            experiment.anomaly_run(
                args.run_dir, args.anomaly_class, args.score, args.samples, args.limit, args.device
            ),
            True,
        )
    elif args.command == "denoise":
        _print_result(
            experiment.denoise_run(
                args.run_dir, args.corruption, args.level, args.limit, args.seed, args.device
            ),
            True,
        )
    elif args.command == "embed":
        for path in experiment.embed_run(
            args.run_dir, args.split, args.limit, args.out, args.device
        ):
            print(path)
    elif args.command == "gradient-snr":
        _gradient_snr(experiment, args)
    elif args.command == "fit-prior":
        _fit_prior(experiment, args)


def _fit_prior(experiment, args):
    given = {k: getattr(args, k) for k in ("channels", "layers", "lr") if getattr(args, k)}
    _, history = experiment.fit_prior_run(
        args.run_dir, args.epochs, args.resume, args.device, not args.quiet, **given
    )
    if history and not args.quiet:
        print(json.dumps(history[-1]))


def _gradient_snr(experiment, args):
    from pyro_vae.evaluation.gradient_snr import snr_table

    result = experiment.gradient_snr_run(
        args.run_dir,
        args.elbos,
        args.particles,
        args.repeats,
        args.batch_size,
        args.split,
        args.device,
        args.seed,
    )
    if args.json:
        print(json.dumps(result))
        return
    print(snr_table(result["rows"]))
    print(
        f"written: {os.path.join(args.run_dir, 'gradient_snr.json')}, "
        f"{os.path.join(args.run_dir, result['picture'])}"
    )


def _is_main():
    dist = sys.modules.get("pyro_vae.training.distributed")
    return dist is None or dist.is_main()


def _print_result(result, as_json):
    if as_json:
        print(json.dumps(result))
        return
    for k, v in result.items():
        print(f"{k:>14}: {_short(v)}")


def _short(v, most=40):
    """A figure for the console: floats to 3 decimals, and a list of more than ``most`` numbers (the
    KL of every dimension of a feature-map latent) as its length, mean and maximum; the whole list
    is in the JSON."""
    if isinstance(v, float):
        return f"{v:.3f}"
    if isinstance(v, dict):  # per site, e.g. kl_per_site
        return "{" + ", ".join(f"{k}: {_short(e, most)}" for k, e in v.items()) + "}"
    if isinstance(v, list) and v and all(isinstance(e, list) for e in v):
        return "[" + ", ".join(_short(e, most) for e in v) + "]"
    if isinstance(v, list) and v and all(isinstance(e, float) for e in v):
        if len(v) > most:
            return f"[{len(v)} values: mean {sum(v) / len(v):.3f}, max {max(v):.3f}]"
        return "[" + ", ".join(f"{e:.3f}" for e in v) + "]"
    return str(v)


def one_line(e):
    """The line of ``e``'s message that says what went wrong (a TorchScript error's own last
    line)."""
    lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
    if not lines:
        return type(e).__name__
    if len(lines) > 1 and ("TorchScript" in lines[0] or lines[0].endswith(":")):
        named = [line for line in lines if line.split(":", 1)[0].endswith(("Error", "Exception"))]
        if named:
            return named[-1].split(":", 1)[1].strip() or named[-1]
    return lines[0]


def explain(e):
    """``(exit status, one line)`` for an exception that ended a command: 2 and its message for a
    :class:`~pyro_vae.core.errors.UserError`, else 1 and its class and message."""
    if isinstance(e, UserError):
        return 2, one_line(e)
    return 1, (
        f"{type(e).__name__}: {one_line(e)}; this combination of options may be unsupported "
        "or this is a bug: rerun with --debug for the traceback"
    )


def _run_dir(args):
    path = getattr(args, "out", None) if args.command == "train" else getattr(args, "run_dir", None)
    return path if path and os.path.isdir(path) else None


def _log_error(args, argv, e):
    """Append the traceback of ``e`` to the run directory's log (when there is one); return its path
    or None."""
    run_dir = _run_dir(args)
    if run_dir is None or not _is_main():
        return None
    path = os.path.join(run_dir, LOG)
    try:
        with open(path, "a") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} ERROR pyro-vae {' '.join(argv)}\n")
            f.write("".join(traceback.format_exception(type(e), e, e.__traceback__)))
    except OSError:
        return None
    return path


def _shutdown():
    """End the torch.distributed process group, if this process joined one (every exit path)."""
    dist = sys.modules.get("pyro_vae.training.distributed")
    if dist is not None:
        dist.shutdown()


def main(argv=None):
    """Entry point: errors print one line (status 2 for user errors, 1 for others; see the module
    docstring). While the command runs, library messages name options by their flags."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        with naming_flags(parser.flags):
            run(args)
    except KeyboardInterrupt as e:  # SIGINT, or SIGTERM turned into TrainingInterrupted
        saved = str(e) or "the last completed epoch is saved in the run directory"
        print(f"pyro-vae: interrupted: {saved}", file=sys.stderr)
        sys.exit(128 + int(getattr(e, "signum", 2)))
    except Exception as e:
        code, line = explain(e)
        log = _log_error(args, argv, e)
        if args.debug:
            traceback.print_exc()
        elif code == 1 and log:
            line += f" (also in {log})"
        print(f"pyro-vae: error: {line}", file=sys.stderr)
        sys.exit(code)
    finally:
        _shutdown()


if __name__ == "__main__":
    main()
