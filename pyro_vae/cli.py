"""The ``pyro-vae`` command line: ``train``, ``evaluate RUN_DIR``, ``sample RUN_DIR``, ``anomaly RUN_DIR``,
``denoise RUN_DIR`` and ``embed RUN_DIR``.

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
    "dataset": "mnist, fashion-mnist, kmnist, emnist, cifar10, cifar100, svhn, celeba, omniglot (torchvision), "
               "folder:PATH (images; class subfolders are labels) or npy:PATH (.npy/.npz/.pt array; IMAGES,LABELS)",
    "image_size": "resize (shorter side) and centre-crop images to N×N (default: their own size, if shared)",
    "test_fraction": "share of the images split off (fixed seed) as the test set when the source has none",
    "mixtures": "discretized-logistic likelihood: logistics K in each pixel's mixture",
    "data_dir": "torchvision root, or a folder holding the four IDX files (gzipped or not)",
    "binarize": "dynamic (resampled every batch), static (fixed seed) or none (grey levels)",
    "validation": "hold out the last N training images as a validation split",
    "limit": "use only the first N training images (smoke runs)",
    "test_limit": "use only the first N test images",
    "exclude_class": "drop this label from the training images (anomaly detection)",
    "model": "model name (vae, hierarchical, …)",
    "net": "mlp or conv",
    "likelihood": "bernoulli, gaussian, learned-gaussian, sigma-vae, sigma-vae-optimal, or for 8-bit images "
                  "(--binarize none; evaluate reports bits_per_dim) discretized-logistic or categorical",
    "sigma": "σ of the fixed Gaussian likelihood (initial σ of the learned ones)",
    "hidden_dims": "comma-separated hidden sizes of encoder (decoder mirrors them), e.g. 400 or 300,300",
    "guide": "guide name (diagonal, or a flow: iaf, spline, householder, sylvester, planar, radial; top-down or bottom-up for --model hierarchical)",
    "flows": "number of flow layers in the guide (>= 1 for a flow guide, 0 for diagonal)",
    "flow_hidden_dims": "comma-separated hidden sizes of each flow layer's network (default 10 x latent-dim)",
    "latent_dims": "comma-separated latent sizes of the hierarchical model, z1 (next to x) first, e.g. 64,32",
    "elbo": "estimator name: trace, meanfield, iwae, dreg, stl, renyi (α = 0), enum, …",
    "particles": "samples per data point for the estimator (vectorized)",
    "beta": "β-VAE: weight of the latent sites' log-densities (the KL) in model and guide; trace/meanfield/enum only",
    "kl_warmup_epochs": "KL warm-up: β rises linearly from 0 to --beta over this many epochs (0: off)",
    "free_bits": "free bits λ: floor (nats) on the batch-mean KL of each latent dimension (whole site if not "
                 "diagonal); 0: off",
    "categories": "relaxed-categorical model: classes C of each categorical latent (--latent-dim of them)",
    "temperature": "relaxed-categorical model: initial temperature τ of RelaxedOneHotCategorical",
    "min_temperature": "relaxed-categorical model: τ never falls below this",
    "temperature_decay": "relaxed-categorical model: τ ← max(min, τ·decay) after each epoch (1: fixed)",
    "labeled": "m2 model: number of labeled training images (class-balanced); the rest are unlabeled",
    "aux_weight": "m2 model: weight of log q(y|x) per labeled image (default 0.1·N/labeled, Kingma et al. 2014)",
    "lr_decay": "multiply the learning rate by this every epoch",
    "clip_norm": "clip each parameter's gradient norm",
    "max_bad_steps": "stop after this many NaN/inf steps in a row (each one is skipped and halves the learning rate)",
    "device": "auto, cpu, cuda or cuda:N",
    "out": "run directory",
    "eval_particles": "particles for the per-epoch test ELBO",
    "log_every": "update the progress bar, and on a GPU read the NaN guard's counts, every N steps (each syncs with the device)",
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
    ev.add_argument("--pictures", action=argparse.BooleanOptionalAction, default=True,
                    help="write the run's pictures (samples, reconstructions, interpolations, traversals, scatter)")
    sa = sub.add_parser("sample", help="write a fresh grid of prior samples")
    sa.add_argument("run_dir")
    sa.add_argument("--n", type=int, default=64)
    sa.add_argument("--out", default=None, help="PNG path (default RUN_DIR/samples.png)")
    sa.add_argument("--label", type=int, default=None, help="class of the images (conditional models: cvae)")
    sa.add_argument("--device", default="auto")
    an = sub.add_parser("anomaly", help="ROC AUC of per-image NLL (or −ELBO) for one class against the others")
    an.add_argument("run_dir")
    an.add_argument("--class", dest="anomaly_class", type=int, default=None,
                    help="the anomalous test class (default: the run's --exclude-class)")
    an.add_argument("--score", choices=["nll", "elbo"], default="nll", help="nll: −log p(x); elbo: −ELBO")
    an.add_argument("--samples", type=int, default=1000, help="importance samples (nll) or particles (elbo)")
    an.add_argument("--limit", type=int, default=None, help="score the first N test images only")
    an.add_argument("--device", default="auto")
    de = sub.add_parser("denoise", help="reconstruct corrupted test images; MSE of input and output vs the clean image")
    de.add_argument("run_dir")
    de.add_argument("--corruption", choices=["gaussian", "flip", "mask"], default="mask",
                    help="gaussian: add σ·N(0,1); flip: invert pixels; mask: zero pixels (with probability --level)")
    de.add_argument("--level", type=float, default=0.5, help="σ (gaussian) or the probability per pixel")
    de.add_argument("--limit", type=int, default=1000, help="the first N test images")
    de.add_argument("--seed", type=int, default=0)
    de.add_argument("--device", default="auto")
    em = sub.add_parser("embed", help="export posterior means and labels as .npy (dimensionality reduction)")
    em.add_argument("run_dir")
    em.add_argument("--split", choices=["test", "val", "train"], default="test")
    em.add_argument("--limit", type=int, default=None)
    em.add_argument("--out", default=None, help="folder for the .npy files (default RUN_DIR)")
    em.add_argument("--device", default="auto")
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
        result = experiment.evaluate_run(args.run_dir, args.nll_samples, args.limit, args.split, args.device,
                                         pictures=args.pictures)
        _print_result(result, args.json)
    elif args.command == "sample":
        print(experiment.sample_run(args.run_dir, args.n, args.out, args.device, args.label))
    elif args.command == "anomaly":
        _print_result(experiment.anomaly_run(args.run_dir, args.anomaly_class, args.score, args.samples, args.limit,
                                             args.device), True)
    elif args.command == "denoise":
        _print_result(experiment.denoise_run(args.run_dir, args.corruption, args.level, args.limit, args.seed,
                                             args.device), True)
    elif args.command == "embed":
        for path in experiment.embed_run(args.run_dir, args.split, args.limit, args.out, args.device):
            print(path)


def _print_result(result, as_json):
    if as_json:
        print(json.dumps(result))
        return
    for k, v in result.items():
        if isinstance(v, list) and v and isinstance(v[0], float):
            v = "[" + ", ".join(f"{e:.3f}" for e in v) + "]"
        print(f"{k:>14}: {v:.3f}" if isinstance(v, float) else f"{k:>14}: {v}")


def main(argv=None):
    """Entry point: user errors print one line and exit with status 2, no traceback."""
    try:
        run(argv)
    except (ValueError, TypeError, FileNotFoundError, FileExistsError, RuntimeError) as e:
        print(f"pyro-vae: error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt as e:  # SIGINT, or SIGTERM turned into TrainingInterrupted by the trainer
        print(f"pyro-vae: interrupted: {e or 'the last completed epoch is saved in the run directory'}",
              file=sys.stderr)
        sys.exit(128 + int(getattr(e, "signum", 2)))


if __name__ == "__main__":
    main()
