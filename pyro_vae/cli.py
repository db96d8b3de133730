"""The ``pyro-vae`` command line: ``train``, ``evaluate RUN_DIR`` and ``sample RUN_DIR``.

Every flag of ``train`` is a field of :class:`~pyro_vae.config.Config` (kebab-case);
the commands only build a config and call :mod:`pyro_vae.experiment`.
"""
import argparse
import dataclasses
import json
import sys
import typing

from .config import Config

HELP = {
    "dataset": "mnist or fashion-mnist",
    "data_dir": "torchvision root, or a folder holding the four IDX files (gzipped or not)",
    "binarize": "dynamic (resampled every batch), static (fixed seed) or none (grey levels)",
    "validation": "hold out the last N training images as a validation split",
    "limit": "use only the first N training images (smoke runs)",
    "test_limit": "use only the first N test images",
    "exclude_class": "drop this label from the training images (anomaly detection)",
    "model": "model name (vae, …)",
    "net": "mlp or conv",
    "likelihood": "bernoulli, gaussian, learned-gaussian, sigma-vae or sigma-vae-optimal",
    "sigma": "σ of the fixed Gaussian likelihood (initial σ of the learned ones)",
    "hidden_dims": "comma-separated hidden sizes of encoder (decoder mirrors them), e.g. 400 or 300,300",
    "guide": "guide name (diagonal, …)",
    "flows": "number of flow layers in the guide",
    "flow_hidden_dims": "comma-separated hidden sizes of the flows' networks",
    "elbo": "estimator name (trace, meanfield, …)",
    "particles": "samples per data point for the estimator (vectorized)",
    "lr_decay": "multiply the learning rate by this every epoch",
    "clip_norm": "clip each parameter's gradient norm",
    "device": "auto, cpu, cuda or cuda:N",
    "out": "run directory",
    "eval_particles": "particles for the per-epoch test ELBO",
    "log_every": "update the progress bar every N steps (each update syncs with the device)",
    "pictures": "write samples/reconstructions/loss pictures at the end (--no-pictures to skip)",
}


def _int_list(text):
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 400,200, got {text!r}") from None


def add_config_arguments(parser, cls=Config):
    """Add one ``--kebab-case`` flag per config field."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        hint = hints[f.name]
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        kwargs = {"dest": f.name, "default": default, "help": HELP.get(f.name, "") + f" (default: {default})"}
        base = hint
        if typing.get_origin(hint) is typing.Union:  # Optional[X] -> X
            base = next(a for a in typing.get_args(hint) if a is not type(None))
        if hint is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
            continue
        if typing.get_origin(base) is list:
            kwargs["type"] = _int_list
        elif base in (int, float, str):
            kwargs["type"] = base
        parser.add_argument(flag, **kwargs)


def build_parser():
    parser = argparse.ArgumentParser(prog="pyro-vae", description="Variational autoencoders with Pyro.")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train a model; writes a run directory")
    add_config_arguments(train)
    train.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    ev = sub.add_parser("evaluate", help="evaluate a run: ELBO, NLL, KL/reconstruction; writes eval.json")
    ev.add_argument("run_dir")
    ev.add_argument("--nll-samples", type=int, default=5000, help="importance samples for the NLL (0: skip)")
    ev.add_argument("--limit", type=int, default=None, help="evaluate the first N images only")
    ev.add_argument("--split", choices=["test", "val", "train"], default="test")
    ev.add_argument("--device", default="auto")
    ev.add_argument("--json", action="store_true", help="print one JSON object")
    sa = sub.add_parser("sample", help="write a fresh grid of prior samples")
    sa.add_argument("run_dir")
    sa.add_argument("--n", type=int, default=64)
    sa.add_argument("--out", default=None, help="PNG path (default RUN_DIR/samples.png)")
    sa.add_argument("--device", default="auto")
    return parser


def run(argv=None):
    from . import experiment

    args = build_parser().parse_args(argv)
    if args.command == "train":
        fields = {f.name for f in dataclasses.fields(Config)}
        config = Config(**{k: v for k, v in vars(args).items() if k in fields})
        _, _, history = experiment.train(config, resume=args.resume, progress=not args.quiet)
        if history:
            print(json.dumps(history[-1]))
        print(f"run directory: {config.out}")
    elif args.command == "evaluate":
        result = experiment.evaluate_run(args.run_dir, args.nll_samples, args.limit, args.split, args.device)
        if args.json:
            print(json.dumps(result))
        else:
            for k, v in result.items():
                print(f"{k:>14}: {v:.3f}" if isinstance(v, float) else f"{k:>14}: {v}")
    elif args.command == "sample":
        print(experiment.sample_run(args.run_dir, args.n, args.out, args.device))


def main(argv=None):
    """Entry point: user errors print one line and exit with status 2, no traceback."""
    try:
        run(argv)
    except (ValueError, TypeError, FileNotFoundError, FileExistsError, RuntimeError) as e:
        print(f"pyro-vae: error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("pyro-vae: interrupted; the last completed epoch is saved in the run directory", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
