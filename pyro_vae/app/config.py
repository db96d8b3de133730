"""Run configuration: a plain dataclass that round-trips through JSON and rejects unknown keys."""

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import List, Optional

from pyro_vae.core import checks as validation

FAST = ("auto", "compile", "trace", "off")  # --fast: Trainer(fast=...), "off" being False


@dataclass
class Config:
    """Everything a training run needs; ``pyro-vae train`` flags map one-to-one onto these
    fields."""

    # data
    dataset: str = "fashion-mnist"
    data_dir: Optional[str] = None
    binarize: Optional[str] = (
        None  # None: what the likelihood needs (dynamic for bernoulli, else none)
    )
    validation: int = 0
    limit: Optional[int] = None
    test_limit: Optional[int] = None
    exclude_class: Optional[int] = None
    image_size: Optional[int] = None
    test_fraction: float = 0.1
    # model
    model: str = "vae"
    net: Optional[str] = None  # None: the model's own (its first declared net, else mlp)
    likelihood: str = "bernoulli"
    sigma: float = 0.1
    mixtures: int = 10
    latent_dim: int = 20
    latent_dims: Optional[List[int]] = None
    hidden_dims: List[int] = field(default_factory=lambda: [400])
    conv_channels: int = 32  # --net conv: channels at full size (×2, ×4 at the smaller scales)
    conv_blocks: int = 1  # --net conv: residual blocks per scale
    activation: str = "relu"
    guide: Optional[str] = (
        None  # None: the model's default guide (vae: diagonal; hierarchical: top-down; …)
    )
    flows: int = 0
    flow_hidden_dims: Optional[List[int]] = None
    prior: str = "standard"
    pseudo_inputs: int = 500
    scales: int = 2  # --model deep-hierarchical: scales × groups_per_scale latent feature maps
    groups_per_scale: int = 2
    hidden_channels: int = 32
    latent_channels: int = 4
    # inference
    elbo: str = "trace"
    particles: int = 1
    # VAE variants (pyro_vae.estimators.variants, discrete, semisupervised, conditional)
    beta: float = 1.0
    kl_warmup_epochs: int = 0
    free_bits: float = 0.0
    categories: int = 10
    temperature: float = 1.0
    min_temperature: float = 0.5
    temperature_decay: float = 0.9
    labeled: int = 1000
    aux_weight: Optional[float] = None
    # optimisation
    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    optimizer: str = "adam"
    lr_decay: float = 1.0
    clip_norm: Optional[float] = None
    max_bad_steps: int = 10
    skip_threshold: Optional[float] = (
        None  # skip an update whose gradient norm per image exceeds it (VDVAE)
    )
    fast: str = "auto"
    seed: int = 0
    early_stopping: Optional[int] = None
    device: str = "auto"
    # output
    out: str = "runs/latest"
    eval_particles: int = 1
    log_every: int = 50
    pictures: bool = True
    tensorboard: bool = True
    images_every: int = 1
    sample_temperature: float = 1.0  # also draw samples_tτ.png, the prior's Gaussians at std τσ

    def __post_init__(self):
        if self.binarize is None:
            self.binarize = "dynamic" if self.likelihood == "bernoulli" else "none"
        self.validate()

    def validate(self):
        """Raise ValueError/TypeError naming the field and how to fix it (names are checked by
        :func:`check_config`, which needs the registries)."""
        for name in (
            "particles",
            "eval_particles",
            "epochs",
            "batch_size",
            "lr",
            "lr_decay",
            "clip_norm",
            "max_bad_steps",
            "log_every",
            "images_every",
            "early_stopping",
            "kl_warmup_epochs",
            "beta",
            "free_bits",
            "image_size",
            "test_fraction",
            "skip_threshold",
        ):
            validation.check_option(
                name, getattr(self, name)
            )  # the one check of each, also run by the Python calls
        for name in ("latent_dim", "mixtures"):
            validation.check_positive_int(name, getattr(self, name))
        for name in ("hidden_dims", "latent_dims", "flow_hidden_dims"):
            dims = getattr(self, name)
            if dims is not None and (
                not dims
                or any(isinstance(d, bool) or not isinstance(d, int) or d <= 0 for d in dims)
            ):
                raise validation.UserError(
                    f"{validation.option(name)} must be positive integers such as 400 or 64,32, "
                    f"got {dims!r}"
                )
        if (
            isinstance(self.categories, bool)
            or not isinstance(self.categories, int)
            or self.categories < 2
        ):
            raise validation.UserError(
                f"{validation.option('categories')} must be an integer >= 2, "
                f"got {self.categories!r}"
            )
        validation.check_positive_float("temperature", self.temperature)
        validation.check_positive_float("min_temperature", self.min_temperature)
        if self.min_temperature > self.temperature:
            raise validation.UserError(
                f"need {validation.option('min_temperature')} <= "
                f"{validation.option('temperature')}, got {self.min_temperature!r} and "
                f"{self.temperature!r}"
            )
        validation.check_fraction("temperature_decay", self.temperature_decay, "; 1: no annealing")
        validation.check_nonnegative_int(
            "labeled", self.labeled, "; labeled training images for m2"
        )
        if self.aux_weight is not None:
            validation.check_nonnegative_float(
                "aux_weight", self.aux_weight, "; leave it out for 0.1·N/labeled"
            )
        validation.check_nonnegative_int("flows", self.flows)
        validation.check_choice("optimizer", self.optimizer, ("adam", "clipped-adam"), "optimizer")
        if self.net is not None:
            validation.check_choice("net", self.net, ("mlp", "conv"), "net")
        validation.check_choice("fast-path mode", self.fast, FAST, "fast")
        validation.check_choice("prior", self.prior, ("standard", "vampprior"), "prior")
        validation.check_positive_int(
            "pseudo_inputs", self.pseudo_inputs, "; pass e.g. --pseudo-inputs 500"
        )
        if self.early_stopping is not None:
            if not self.validation:
                raise validation.UserError(
                    "--early-stopping watches the validation ELBO: also pass --validation N "
                    "(e.g. --validation 10000 for the 50k/10k/10k split)"
                )
        for name in ("scales", "groups_per_scale", "hidden_channels", "latent_channels"):
            validation.check_positive_int(name, getattr(self, name))
        validation.check_positive_float(
            "sample_temperature", self.sample_temperature, "; e.g. 0.7 (1: the prior)"
        )

    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d):
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise validation.UserError(
                f"unknown config key(s) {unknown}; valid keys: {sorted(names)}"
            )
        return cls(**d)

    def save(self, path):
        with open(path, "w") as f:
            json.dump(self.to_dict(), f, indent=2, sort_keys=True)

    @classmethod
    def load(cls, path):
        with open(path) as f:
            return cls.from_dict(json.load(f))


def _check_net_and_estimator(config, spec, net):
    """The net against the model's declared nets, and the estimator against its declared ones."""
    from pyro_vae.models.nets import ACTIVATIONS, GATED

    nets = spec.nets
    if net not in nets:
        raise validation.UserError(
            f"--model {config.model} has {' or '.join(nets)} nets only, not --net {net}; "
            f"pass --net {nets[0]} or leave --net out"
        )
    if config.activation == GATED and net != "mlp":
        raise validation.UserError(
            f"--activation gated is a gated dense layer, for --net mlp; --net {net} takes a "
            f"pointwise activation: --activation {' or '.join(sorted(ACTIVATIONS))}"
        )
    estimators = spec.estimators  # e.g. m2: a discrete latent that is not reparameterizable
    used = "free-bits" if config.free_bits else config.elbo
    if estimators is not None and used not in estimators:
        what = "--free-bits" if used != config.elbo else f"--elbo {config.elbo}"
        raise validation.UserError(
            f"--model {config.model} samples a discrete latent that is not reparameterizable, "
            "which "
            f"{what} cannot train; use --elbo {' or '.join(estimators)}"
            + (" without --free-bits" if config.free_bits else "")
        )


def _check_guide(config, guide):
    """The guide's flows against ``--flows`` and the estimator's declared ``needs_inverse``."""
    from pyro_vae.estimators import ESTIMATORS
    from pyro_vae.guides import FLOWS

    if guide in FLOWS and config.flows < 1:
        raise validation.UserError(
            f"the {guide!r} guide is a flow: pass --flows N with N >= 1 layers (e.g. --flows 2)"
        )
    if guide not in FLOWS and (config.flows or config.flow_hidden_dims):
        flag = "--flows" if config.flows else "--flow-hidden-dims"
        raise validation.UserError(
            f"{flag} needs a flow guide (--guide {', '.join(FLOWS)}); the {guide!r} guide has no "
            f"flows: drop {flag}"
        )
    if guide in FLOWS and not FLOWS[guide].invertible and ESTIMATORS[config.elbo].needs_inverse:
        raise validation.UserError(
            f"--elbo {config.elbo} scores the guide at a fixed z, which needs the flow's inverse; "
            "the "
            f"{guide!r} flow has none: use --guide "
            f"{' or '.join(n for n, f in FLOWS.items() if f.invertible)}, or --elbo iwae"
        )


def check_config(config):
    """Names in a :class:`Config` that only the registries know, the combination of model, guide,
    net, estimator and KL variant, and the data directory: the one place that refuses a
    configuration.

    Checked before any data is read; each refusal is one line naming the conflict.  The device is
    checked by the caller (a run trained on CUDA may be evaluated on CPU).
    """
    from pyro_vae.data import (
        BINARIZE,
        check_source,
    )  # the registries, imported when a run starts, not for --help
    from pyro_vae.estimators import ESTIMATORS
    from pyro_vae.estimators.variants import KLSchedule, check_estimator
    from pyro_vae.models import MODELS, model_guides, with_defaults
    from pyro_vae.models.likelihoods import EIGHT_BIT, LIKELIHOODS
    from pyro_vae.models.nets import ACTIVATIONS, GATED

    check_source(config.dataset)
    validation.check_choice("binarize mode", config.binarize, BINARIZE, "binarize")
    validation.check_eight_bit(config.likelihood in EIGHT_BIT, config.binarize, config.likelihood)
    validation.check_choice("model", config.model, MODELS, "model")
    validation.check_choice("likelihood", config.likelihood, LIKELIHOODS, "likelihood")
    validation.check_choice("activation", config.activation, [*ACTIVATIONS, GATED], "activation")
    builder = MODELS[config.model]
    guides, default = model_guides(
        builder
    )  # a model builder may declare its own guides (hierarchical: top-down…)
    filled = with_defaults(config)  # the model's own guide and net where they are left out
    guide, net = filled.guide, filled.net
    if not isinstance(guide, str) or guide not in guides:
        raise validation.UserError(
            f"unknown guide {guide!r} for --model {config.model} (--guide); choose one of "
            f"{', '.join(sorted(guides))}, or leave --guide out for its default, {default}"
        )
    validation.check_choice("estimator", config.elbo, ESTIMATORS, "elbo")
    _check_net_and_estimator(config, builder, net)
    _check_guide(config, guide)
    schedule = KLSchedule(config.beta, config.kl_warmup_epochs)
    if not schedule.is_identity or config.free_bits:
        check_estimator(config.elbo, not schedule.is_identity, config.free_bits)
    priors = builder.priors
    if config.prior not in priors:
        raise validation.UserError(
            f"--prior {config.prior} is not available for --model {config.model}; it offers "
            f"{', '.join(priors)}"
        )
    if builder.check is not None:  # the model's own rules (e.g. hierarchical: --latent-dims)
        builder.check(config)
    validation.check_positive_float("sigma", config.sigma, "; pass e.g. --sigma 0.1")
    for option in ("limit", "test_limit"):
        validation.check_option(option, getattr(config, option))
    if config.data_dir is not None and not os.path.isdir(config.data_dir):
        raise validation.MissingFileError(
            f"data directory {config.data_dir!r} does not exist; pass an existing folder to "
            f"--data-dir or leave it out to use the default cache"
        )
    return config
