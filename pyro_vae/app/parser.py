"""The ``pyro-vae`` parser: one ``--kebab-case`` flag per :class:`~pyro_vae.app.config.Config`
field for ``train`` (help lines in :mod:`pyro_vae.app.help`), the flags of the commands that read
a finished run, and :attr:`FlagParser.flags`, the one mapping from option to flag.

Imports neither torch nor Pyro, so that ``pyro-vae --help`` stays fast.
"""

import argparse
import dataclasses
import typing

from pyro_vae.app.config import Config
from pyro_vae.app.help import HELP
from pyro_vae.app.scripts import int_list

# in the run directory: the traceback of a failed command, the trainer's log lines
LOG = "pyro-vae.log"


class FlagParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` that keeps ``flags``: the long flag of each option of every command by
    the option's Python name (``dest``), e.g. ``kl_warmup_epochs`` → ``--kl-warmup-epochs``, the
    one mapping by which library messages name flags (:func:`~pyro_vae.core.errors.option`)."""

    def __init__(self, *args, flags=None, **kwargs):
        self.flags = {} if flags is None else flags  # before __init__ adds --help
        super().__init__(*args, **kwargs)

    def add_argument(self, *args, **kwargs):
        action = super().add_argument(*args, **kwargs)
        longs = [o for o in action.option_strings if o.startswith("--")]
        if longs and action.dest != "help":
            self.flags.setdefault(action.dest, longs[0])
        return action


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
    """The parser of every command; its ``flags`` name the options in error messages."""
    parser = FlagParser(prog="pyro-vae", description="Variational autoencoders with Pyro.")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--debug",
        action="store_true",
        help=f"on an error, print the full traceback (it is also written to RUN_DIR/{LOG})",
    )
    on_run = argparse.ArgumentParser(add_help=False)  # the commands that read a finished run
    on_run.add_argument("run_dir")
    on_run.add_argument("--device", default="auto")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name, help, reads_run=True):
        parents = [common, on_run] if reads_run else [common]
        return sub.add_parser(name, parents=parents, help=help, flags=parser.flags)

    train = add("train", "train a model; writes a run directory", reads_run=False)
    add_config_arguments(train)
    train.add_argument(
        "--resume", action="store_true", help="continue the run in --out from its checkpoint"
    )
    train.add_argument("--quiet", action="store_true", help="print nothing but errors and warnings")
    for add_command in (
        _add_evaluate,
        _add_sample,
        _add_anomaly,
        _add_denoise,
        _add_embed,
        _add_gradient_snr,
        _add_fit_prior,
    ):
        add_command(add)
    return parser


def _add_evaluate(add):
    ev = add("evaluate", "evaluate a run: ELBO, NLL, KL/reconstruction; writes eval.json")
    ev.add_argument(
        "--nll-samples", type=int, default=5000, help="importance samples for the NLL (0: skip)"
    )
    ev.add_argument("--limit", type=int, default=None, help="evaluate the first N images only")
    ev.add_argument("--split", choices=["test", "val", "train"], default="test")
    ev.add_argument("--json", action="store_true", help="print one JSON object")
    ev.add_argument(
        "--pictures",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="write the run's pictures "
        "(samples, reconstructions, interpolations, traversals, scatter)",
    )


def _add_sample(add):
    sa = add("sample", "write a fresh grid of prior samples")
    sa.add_argument("--n", type=int, default=64)
    sa.add_argument("--out", default=None, help="PNG path (default RUN_DIR/samples.png)")
    sa.add_argument(
        "--label", type=int, default=None, help="class of the images (conditional models: cvae)"
    )
    sa.add_argument(
        "--temperature",
        type=float,
        default=None,
        help="τ scaling the prior's standard deviation at every Gaussian latent "
        "(default: the run's --sample-temperature)",
    )


def _add_anomaly(add):
    an = add("anomaly", "ROC AUC of per-image NLL (or −ELBO) for one class against the others")
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


def _add_denoise(add):
    de = add(
        "denoise", "reconstruct corrupted test images; MSE of input and output vs the clean image"
    )
    de.add_argument(
        "--corruption",
        choices=["gaussian", "flip", "mask"],
        default="mask",
        help="gaussian: add σ·N(0,1); flip: invert pixels; "
        "mask: zero pixels (with probability --level)",
    )
    de.add_argument(
        "--level", type=float, default=0.5, help="σ (gaussian) or the probability per pixel"
    )
    de.add_argument("--limit", type=int, default=1000, help="the first N test images")
    de.add_argument("--seed", type=int, default=0)


def _add_embed(add):
    em = add("embed", "export posterior means and labels as .npy (dimensionality reduction)")
    em.add_argument("--split", choices=["test", "val", "train"], default="test")
    em.add_argument("--limit", type=int, default=None)
    em.add_argument("--out", default=None, help="folder for the .npy files (default RUN_DIR)")


def _add_gradient_snr(add):
    """``gradient-snr RUN_DIR``: the estimator lab (issue #32),
    :func:`~pyro_vae.app.experiment.gradient_snr_run`."""
    gs = add(
        "gradient-snr",
        "signal-to-noise ratio of each estimator's gradient against the particles K; "
        "writes gradient_snr.json and gradient_snr.png",
    )
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
    gs.add_argument("--json", action="store_true", help="print one JSON object")


def _add_fit_prior(add):
    """``fit-prior RUN_DIR``: a learned prior over a vq-vae run's codes,
    :func:`~pyro_vae.app.experiment.fit_prior_run`."""
    fp = add("fit-prior", "vq-vae runs: fit a gated PixelCNN prior over the codes (RUN/prior)")
    fp.add_argument("--epochs", type=int, default=10, help="epochs in all, resumed ones included")
    fp.add_argument("--resume", action="store_true", help="continue RUN/prior from its checkpoint")
    fp.add_argument("--channels", type=int, default=None, help="PixelCNN channels (default 64)")
    fp.add_argument("--layers", type=int, default=None, help="gated layers (default 6)")
    fp.add_argument("--lr", type=float, default=None, help="learning rate (default 3e-4)")
    fp.add_argument("--quiet", action="store_true", help="print nothing but errors and warnings")
