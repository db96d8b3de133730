"""The ``pyro-vae`` command line: ``train``, ``evaluate RUN_DIR``, ``sample RUN_DIR``, ``anomaly
RUN_DIR``, ``denoise RUN_DIR``, ``embed RUN_DIR`` and ``gradient-snr RUN_DIR``.

Every flag of ``train`` is a field of :class:`~pyro_vae.app.config.Config` (kebab-case);
the commands only build a config and call :mod:`pyro_vae.app.experiment`, imported when a
command runs (``--help`` imports neither torch nor pyro).

Exit status: 0 on success; 2 for a user error (a bad option, missing data or run, a refused
combination), printed as one line; 1 for a failure inside torch, Pyro or elsewhere, printed as
one line that names it, with the traceback behind ``--debug`` and in the run's ``pyro-vae.log``;
128 + N when stopped by signal N.
"""

import argparse
import dataclasses
import functools
import json
import os
import sys
import time
import traceback
import typing

from pyro_vae.app.config import Config
from pyro_vae.app.scripts import int_list

# in the run directory: the traceback of a failed command, the trainer's log lines
LOG = "pyro-vae.log"
USER_ERRORS = (
    ValueError,
    TypeError,
    FileNotFoundError,
    FileExistsError,
    NotADirectoryError,
    RuntimeError,
)

HELP = {
    "dataset": "mnist, fashion-mnist, kmnist, emnist, cifar10, cifar100, svhn, celeba, omniglot "
    "(torchvision), "
    "folder:PATH (images; class subfolders are labels) or npy:PATH (.npy/.npz/.pt array; "
    "IMAGES,LABELS)",
    "image_size": "resize (shorter side) and centre-crop images to N×N (default: their own size, "
    "if shared)",
    "test_fraction": "share of the images split off (fixed seed) as the test set when the source "
    "has none",
    "mixtures": "discretized-logistic likelihood: logistics K in each pixel's mixture",
    "data_dir": "torchvision root, or a folder holding the four IDX files (gzipped or not)",
    "binarize": "dynamic (resampled every batch), static (fixed seed) or none (grey levels); "
    "None: what the likelihood needs (dynamic for bernoulli, none otherwise)",
    "conv_channels": "--net conv: channels of the residual conv nets at full size (x2, x4 below)",
    "conv_blocks": "--net conv: residual blocks per scale of the conv nets",
    "validation": "hold out the last N training images as a validation split",
    "limit": "use only the first N training images (smoke runs)",
    "test_limit": "use only the first N test images",
    "exclude_class": "drop this label from the training images (anomaly detection)",
    "model": "model name (vae, hierarchical, …)",
    "net": "mlp or conv (default: the model's own: conv for deep-hierarchical, else mlp)",
    "activation": "relu, tanh, elu, gelu, softplus, or gated (mlp nets: gated dense layers h = "
    "(Wx+b)·σ(Vx+c), as in "
    "the VampPrior code)",
    "likelihood": "bernoulli, gaussian, learned-gaussian, sigma-vae, sigma-vae-optimal, or for "
    "8-bit images "
    "(--binarize none; evaluate reports bits_per_dim) discretized-logistic or categorical",
    "sigma": "σ of the fixed Gaussian likelihood (initial σ of the learned ones)",
    "hidden_dims": "comma-separated hidden sizes of encoder (decoder mirrors them), e.g. 400 or "
    "300,300",
    "guide": "guide name; default: the model's own (vae: diagonal, or a flow: iaf, spline, "
    "householder, sylvester, "
    "planar, radial; hierarchical: top-down or bottom-up; relaxed-categorical: categorical; m2, "
    "cvae: "
    "diagonal)",
    "flows": "number of flow layers in the guide (>= 1 for a flow guide, 0 for diagonal)",
    "flow_hidden_dims": "comma-separated hidden sizes of each flow layer's network (default 10 x "
    "latent-dim)",
    "prior": "p(z): standard (N(0, I)) or vampprior (mixture of the guide's posteriors at learned "
    "pseudo-inputs; "
    "top layer of --model hierarchical, which then needs --guide top-down)",
    "pseudo_inputs": "vampprior: number K of learned pseudo-inputs",
    "early_stopping": "stop once the validation ELBO has not improved for this many epochs after "
    "the KL warm-up "
    "(needs --validation N); evaluation then uses the best epoch (best.pt)",
    "tensorboard": "write TensorBoard event files into the run directory (--no-tensorboard: none)",
    "images_every": "TensorBoard: samples and reconstructions every N epochs, and at the last (0: "
    "none)",
    "latent_dims": "comma-separated latent sizes of the hierarchical model, z1 (next to x) first, "
    "e.g. 64,32",
    "elbo": "estimator name: trace, meanfield, iwae, dreg, stl, renyi (α = 0), enum, …",
    "particles": "samples per data point for the estimator (vectorized)",
    "beta": "β-VAE: weight of the latent sites' log-densities (the KL) in model and guide; "
    "trace/meanfield/stl/enum only",
    "kl_warmup_epochs": "KL warm-up: β rises linearly from 0 to --beta over this many epochs (0: "
    "off)",
    "free_bits": "free bits λ: floor (nats) on the batch-mean KL of each latent dimension (whole "
    "site if not "
    "diagonal); 0: off",
    "categories": "relaxed-categorical model: classes C of each categorical latent (--latent-dim "
    "of them)",
    "temperature": "relaxed-categorical model: initial temperature τ of RelaxedOneHotCategorical",
    "min_temperature": "relaxed-categorical model: τ never falls below this",
    "temperature_decay": "relaxed-categorical model: τ ← max(min, τ·decay) after each epoch (1: "
    "fixed)",
    "labeled": "m2 model: number of labeled training images (class-balanced); the rest are "
    "unlabeled",
    "aux_weight": "m2 model: weight of log q(y|x) per labeled image (default 0.1·N/labeled, "
    "Kingma et al. 2014)",
    "lr_decay": "multiply the learning rate by this every epoch",
    "clip_norm": "clip each parameter's gradient norm",
    "max_bad_steps": "stop after this many NaN/inf steps in a row (each one is skipped and halves "
    "the learning rate)",
    "device": "auto, cpu, cuda or cuda:N",
    "out": "run directory",
    "eval_particles": "particles for the per-epoch test ELBO",
    "log_every": "update the progress bar, and on a GPU read the NaN guard's counts, every N "
    "steps (each syncs with the device)",
    "pictures": "write samples/reconstructions/loss pictures at the end (--no-pictures to skip)",
    "fast": "the fast path: auto (trace every pair, compile long runs), compile (always), trace "
    "(never compile) "
    "or off (plain Pyro SVI steps)",
    "scales": "deep-hierarchical model: spatial scales of latent groups (H/2^S … H/2; H, W "
    "divisible by 2^S)",
    "groups_per_scale": "deep-hierarchical model: latent groups at each scale",
    "hidden_channels": "deep-hierarchical model: channels of the top-down and bottom-up residual "
    "paths",
    "latent_channels": "deep-hierarchical model: channels C_z of each latent group [C_z, h, w]",
    "sample_temperature": "τ scaling the prior's standard deviation when drawing the samples "
    "picture "
    "(samples_tτ.png beside samples.png when τ ≠ 1; Gaussian latents)",
    "levels": "vq-vae model: 1, or 2 (VQ-VAE-2: top codes at H/4 read by the bottom's encoder, "
    "bottom codes at H/2)",
    "codebook_size": "vq-vae model: codes K in each level's codebook",
    "code_dim": "vq-vae model: size D of each code vector",
    "commitment": "vq-vae model: weight β of the commitment term Σ‖z − sg(e)‖² per image",
    "codebook": "vq-vae model: ema (codes follow moving averages of their encoder outputs) or loss "
    "(codes learned by the codebook term Σ‖sg(z) − e‖²)",
    "ema_decay": "vq-vae model, --codebook ema: decay γ of the moving averages",
    "skip_threshold": "skip every update whose gradient norm of the loss per image exceeds this "
    "(VDVAE), "
    "counted in skipped_updates (default: off)",
}


def add_config_arguments(parser, cls=Config):
    """Add one ``--kebab-case`` flag per config field."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        hint = hints[f.name]
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        kwargs = {
            "dest": f.name,
            "default": default,
            "help": HELP.get(f.name, "") + f" (default: {default})",
        }
        base = hint
        if typing.get_origin(hint) is typing.Union:  # Optional[X] -> X
            base = next(a for a in typing.get_args(hint) if a is not type(None))
        if hint is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
            continue
        if typing.get_origin(base) is list:
            kwargs["type"] = int_list
        elif base in (int, float, str):
            kwargs["type"] = base
        parser.add_argument(flag, **kwargs)


def build_parser():
    parser = argparse.ArgumentParser(
        prog="pyro-vae", description="Variational autoencoders with Pyro."
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--debug",
        action="store_true",
        help=f"on an error, print the full traceback (it is also written to RUN_DIR/{LOG})",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    add = lambda name, **kw: sub.add_parser(name, parents=[common], **kw)  # noqa: E731
    train = add("train", help="train a model; writes a run directory")
    add_config_arguments(train)
    train.add_argument(
        "--resume", action="store_true", help="continue the run in --out from its checkpoint"
    )
    train.add_argument("--quiet", action="store_true", help="print nothing but errors and warnings")
    ev = add("evaluate", help="evaluate a run: ELBO, NLL, KL/reconstruction; writes eval.json")
    ev.add_argument("run_dir")
    ev.add_argument(
        "--nll-samples", type=int, default=5000, help="importance samples for the NLL (0: skip)"
    )
    ev.add_argument("--limit", type=int, default=None, help="evaluate the first N images only")
    ev.add_argument("--split", choices=["test", "val", "train"], default="test")
    ev.add_argument("--device", default="auto")
    ev.add_argument("--json", action="store_true", help="print one JSON object")
    ev.add_argument(
        "--pictures",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="write the run's pictures (samples, reconstructions, interpolations, traversals, "
        "scatter)",
    )
    sa = add("sample", help="write a fresh grid of prior samples")
    sa.add_argument("run_dir")
    sa.add_argument("--n", type=int, default=64)
    sa.add_argument("--out", default=None, help="PNG path (default RUN_DIR/samples.png)")
    sa.add_argument(
        "--label", type=int, default=None, help="class of the images (conditional models: cvae)"
    )
    sa.add_argument("--device", default="auto")
    sa.add_argument(
        "--temperature",
        type=float,
        default=None,
        help="τ scaling the prior's standard deviation at every Gaussian latent (default: the "
        "run's "
        "--sample-temperature)",
    )
    an = add("anomaly", help="ROC AUC of per-image NLL (or −ELBO) for one class against the others")
    an.add_argument("run_dir")
    an.add_argument(
        "--class",
        dest="anomaly_class",
        type=int,
        default=None,
        help="the anomalous test class (default: the run's --exclude-class)",
    )
    an.add_argument(
        "--score", choices=["nll", "elbo"], default="nll", help="nll: −log p(x); elbo: −ELBO"
    )
    an.add_argument(
        "--samples", type=int, default=1000, help="importance samples (nll) or particles (elbo)"
    )
    an.add_argument("--limit", type=int, default=None, help="score the first N test images only")
    an.add_argument("--device", default="auto")
    de = add(
        "denoise",
        help="reconstruct corrupted test images; MSE of input and output vs the clean image",
    )
    de.add_argument("run_dir")
    de.add_argument(
        "--corruption",
        choices=["gaussian", "flip", "mask"],
        default="mask",
        help="gaussian: add σ·N(0,1); flip: invert pixels; mask: zero pixels (with probability "
        "--level)",
    )
    de.add_argument(
        "--level", type=float, default=0.5, help="σ (gaussian) or the probability per pixel"
    )
    de.add_argument("--limit", type=int, default=1000, help="the first N test images")
    de.add_argument("--seed", type=int, default=0)
    de.add_argument("--device", default="auto")
    em = add("embed", help="export posterior means and labels as .npy (dimensionality reduction)")
    em.add_argument("run_dir")
    em.add_argument("--split", choices=["test", "val", "train"], default="test")
    em.add_argument("--limit", type=int, default=None)
    em.add_argument("--out", default=None, help="folder for the .npy files (default RUN_DIR)")
    em.add_argument("--device", default="auto")
    add_gradient_snr_parser(add)
    add_fit_prior_parser(add)
    return parser


def add_fit_prior_parser(add):
    """``fit-prior RUN_DIR``: a learned prior over a vq-vae run's codes,
    :func:`~pyro_vae.app.experiment.fit_prior_run`."""
    fp = add("fit-prior", help="vq-vae runs: fit a gated PixelCNN prior over the codes (RUN/prior)")
    fp.add_argument("run_dir")
    fp.add_argument("--epochs", type=int, default=10, help="epochs in all, resumed ones included")
    fp.add_argument("--resume", action="store_true", help="continue RUN/prior from its checkpoint")
    fp.add_argument("--channels", type=int, default=None, help="PixelCNN channels (default 64)")
    fp.add_argument("--layers", type=int, default=None, help="gated layers (default 6)")
    fp.add_argument("--lr", type=float, default=None, help="learning rate (default 3e-4)")
    fp.add_argument("--device", default="auto")
    fp.add_argument("--quiet", action="store_true", help="print nothing but errors and warnings")


def add_gradient_snr_parser(add):
    """``gradient-snr RUN_DIR``: the estimator lab (issue #32),
    :func:`~pyro_vae.app.experiment.gradient_snr_run`."""
    gs = add(
        "gradient-snr",
        help="signal-to-noise ratio of each estimator's gradient against the "
        "particles K; writes gradient_snr.json and gradient_snr.png",
    )
    gs.add_argument("run_dir")
    gs.add_argument(
        "--elbo",
        dest="elbos",
        default=["trace", "iwae", "dreg", "stl"],
        type=lambda text: [v.strip() for v in text.split(",") if v.strip()],
        help="comma-separated estimator names (default: trace,iwae,dreg,stl)",
    )
    gs.add_argument(
        "--particles",
        type=int_list,
        default=[1, 10, 100],
        help="comma-separated particle counts K (default: 1,10,100)",
    )
    gs.add_argument(
        "--repeats",
        type=int,
        default=100,
        help="gradient draws R per estimator and K (default: 100)",
    )
    gs.add_argument(
        "--batch-size",
        type=int,
        default=100,
        help="the first N images of --split form the batch (default: 100)",
    )
    gs.add_argument("--split", choices=["test", "val", "train"], default="train")
    gs.add_argument("--seed", type=int, default=0)
    gs.add_argument("--device", default="auto")
    gs.add_argument("--json", action="store_true", help="print one JSON object")


@functools.lru_cache(maxsize=None)
def _parser():
    return (
        build_parser()
    )  # built once per process: a parser is reusable, and building one takes ~20 ms


def run(args):
    """Run the parsed command ``args``."""
    import logging

    from pyro_vae.app import experiment

    logging.getLogger("pyro").setLevel(
        logging.WARNING
    )  # not Pyro's "Guessed max_plate_nesting = 1"
    if args.command == "train":
        fields = {f.name for f in dataclasses.fields(Config)}
        config = Config(**{k: v for k, v in vars(args).items() if k in fields})
        _, _, history = experiment.train(config, resume=args.resume, progress=not args.quiet)
        if not args.quiet and _is_main():
            if (
                history
            ):  # the last metrics row, without the KL of every latent dimension (in metrics.jsonl)
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


def _raised_by_us(e):
    """Whether the innermost frame of ``e``'s traceback is in pyro_vae (our own checks' one-line
    errors)."""
    frames = traceback.extract_tb(e.__traceback__)
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # pyro_vae/, above app/
    return bool(frames) and os.path.abspath(frames[-1].filename).startswith(package + os.sep)


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
    """``(exit status, one line)`` for an exception that ended a command (see the module
    docstring)."""
    from pyro_vae.core.checks import UserError

    if isinstance(e, UserError) or (isinstance(e, USER_ERRORS) and _raised_by_us(e)):
        return 2, one_line(e)
    frames = traceback.extract_tb(e.__traceback__)
    where = ""
    if frames:
        path = frames[-1].filename
        package = next(
            (
                p
                for p in ("torch", "pyro", "pyro_vae", "numpy", "matplotlib", "torchvision")
                if f"{os.sep}{p}{os.sep}" in path
            ),
            None,
        )
        where = f" in {package or os.path.basename(path)}"
        ours = [f for f in frames if os.sep + "pyro_vae" + os.sep in f.filename]
        if ours and package != "pyro_vae":
            where += (
                f" (called from {os.path.basename(ours[-1].filename)}:{ours[-1].lineno} "
                f"{ours[-1].name})"
            )
    return 1, (
        f"{type(e).__name__}{where}: {one_line(e)}; this combination of options may be "
        "unsupported or this "
        f"is a bug: rerun with --debug for the traceback"
    )


# a Python value after "name=": quoted, a list, a word
_VALUE = r"""('[^']*'|"[^"]*"|\[[^\]]*\]|[^\s,;:)]+)?"""


@functools.lru_cache(maxsize=None)
def _flag_names():
    """``{dest: (flag, is a switch)}`` of every option of every command (``kl_warmup_epochs`` →
    ``--kl-warmup-epochs``)."""
    names = {}
    for parser in _parser()._subparsers._group_actions[0].choices.values():
        for action in parser._actions:
            longs = [
                o for o in action.option_strings if o.startswith("--") and not o.startswith("--no-")
            ]
            if longs and len(action.dest) > 1 and action.dest not in ("help", "debug"):
                names[action.dest] = (longs[0], action.nargs == 0)
    return names


def as_flags(text):
    """A library error's text with the Python names of options written as the flags that set them.

    ``lr=1e-3`` → ``--lr 1e-3``, ``guide='top-down'`` → ``--guide top-down``, ``latent_dims=[64,
    32]`` → ``--latent-dims 64,32``, ``resume=True`` → ``--resume``, ``tensorboard=False`` →
    ``--no-tensorboard``, ``lr=`` → ``--lr``, a bare name with an underscore, ``kl_warmup_epochs`` →
    ``--kl-warmup-epochs``, and the name that opens the message (``lr must be …`` → ``--lr must be
    …``). Library code names the Python arguments (Config fields, function arguments); only the CLI
    knows the flags.
    """
    import re

    names = _flag_names()

    def keyword(m):
        name, value = m.group(1), m.group(2) or ""
        if name not in names:
            return m.group(0)
        flag, switch = names[name]
        if switch or value in ("True", "False"):
            return flag if value != "False" else "--no-" + flag[2:]
        value = value.strip("'\"")
        if value.startswith("["):
            value = ",".join(v.strip() for v in value[1:-1].split(","))
        return f"{flag} {value}" if value else flag

    text = re.sub(
        r"^([a-z][a-z0-9_]*)(?= must )", lambda m: names.get(m.group(1), (m.group(1),))[0], text
    )
    text = re.sub(r"(?<![\w.\-])([a-z][a-z0-9_]*)=" + _VALUE, keyword, text)
    return re.sub(
        r"(?<![\w.\-])([a-z][a-z0-9]*(?:_[a-z0-9]+)+)\b(?![=(])",
        lambda m: names[m.group(1)][0] if m.group(1) in names else m.group(0),
        text,
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
    docstring)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parser().parse_args(argv)
    try:
        run(args)
    except (
        KeyboardInterrupt
    ) as e:  # SIGINT, or SIGTERM turned into TrainingInterrupted by the trainer
        print(
            "pyro-vae: interrupted: "
            f"{as_flags(str(e)) or 'the last completed epoch is saved in the run directory'}",
            file=sys.stderr,
        )
        sys.exit(128 + int(getattr(e, "signum", 2)))
    except Exception as e:
        code, line = explain(e)
        line = (
            as_flags(line) if code == 2 else line
        )  # a user error names Python arguments: say the flags
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
