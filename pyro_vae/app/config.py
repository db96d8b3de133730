"""Run configuration: a plain dataclass that round-trips through JSON and rejects unknown keys."""

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any, List, NamedTuple, Optional

from pyro_vae.core import checks

FAST = ("auto", "compile", "trace", "off")
# what a resumed run may change: more epochs, and the folder of a moved run
FREE_ON_RESUME = ("epochs", "out")  # --fast: Trainer(fast=...), "off" being False
# the fields checked by core.checks.check_option, the one check of each training option
OPTIONS = (
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
    "weight_ema",
    "spectral_reg",
    "time_budget",
    "limit",
    "test_limit",
)
POSITIVE_INTS = {  # field: the hint after its message
    "latent_dim": "",
    "mixtures": "",
    "pseudo_inputs": "; pass e.g. --pseudo-inputs 500",
    "scales": "",
    "groups_per_scale": "",
    "hidden_channels": "",
    "latent_channels": "",
    "levels": "; 1 or 2",
    "codebook_size": "; e.g. 512",
    "code_dim": "; e.g. 64",
}
POSITIVE_FLOATS = {
    "sigma": "; pass e.g. --sigma 0.1",
    "temperature": "",
    "min_temperature": "",
    "sample_temperature": "; e.g. 0.7 (1: the prior)",
}
CHOICES = (  # (what it is, field, its names) for the names that need no registry; None: default
    ("optimizer", "optimizer", ("adam", "clipped-adam")),
    ("net", "net", ("mlp", "conv")),
    ("fast-path mode", "fast", FAST),
    ("prior", "prior", ("standard", "vampprior")),
)


@dataclass
class Config:
    """Everything a training run needs; ``pyro-vae train`` flags map one-to-one onto its fields."""

    # data
    dataset: str = "fashion-mnist"
    data_dir: Optional[str] = None
    binarize: Optional[str] = None  # None: what the likelihood needs (bernoulli: dynamic)
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
    guide: Optional[str] = None  # None: the model's default (vae: diagonal; hierarchical: top-down)
    flows: int = 0
    flow_hidden_dims: Optional[List[int]] = None
    prior: str = "standard"
    pseudo_inputs: int = 500
    scales: int = 2  # --model deep-hierarchical: scales × groups_per_scale latent feature maps
    groups_per_scale: int = 2
    hidden_channels: int = 32
    latent_channels: int = 4
    levels: int = 1  # --model vq-vae: 1, or 2 (VQ-VAE-2: top codes at H/4, bottom codes at H/2)
    codebook_size: int = 512
    code_dim: int = 64
    commitment: float = 0.25
    codebook: str = "ema"  # ema (moving averages, decay ema_decay) or loss
    ema_decay: float = 0.99
    code_restarts: bool = True  # --model vq-vae: restart the codes unused over an epoch
    # inference
    elbo: str = "trace"
    particles: int = 1
    # VAE variants (pyro_vae.estimators.variants, discrete, semisupervised, conditional)
    beta: float = 1.0
    kl_warmup_epochs: int = 0
    free_bits: float = 0.0
    kl_balance: bool = False  # NVAE: balance the groups' KL during the warm-up
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
    # skip an update whose gradient norm per image exceeds it (VDVAE)
    skip_threshold: Optional[float] = None
    weight_ema: float = 0.0  # VDVAE: a moving average of the weights for evaluation (0: off)
    spectral_reg: float = 0.0  # NVAE: λ·Σ σ_max of the conv weights per image (0: off)
    fast: str = "auto"
    seed: int = 0
    early_stopping: Optional[int] = None
    time_budget: float = 0.0  # minutes: end at the last epoch that fits (0: off)
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
        """Each field on its own (its kind and range), where the config is built: one line naming
        the field and how to fix it. Names and combinations are :func:`check_config`'s."""
        for name in OPTIONS:  # the one check of each, also run by the Python calls
            checks.check_option(name, getattr(self, name))
        for name, hint in POSITIVE_INTS.items():
            checks.check_positive_int(name, getattr(self, name), hint)
        for name, hint in POSITIVE_FLOATS.items():
            checks.check_positive_float(name, getattr(self, name), hint)
        for name in ("hidden_dims", "latent_dims", "flow_hidden_dims"):
            _check_dims(name, getattr(self, name))
        if type(self.categories) is not int or self.categories < 2:
            raise checks.UserError(
                f"{checks.option('categories')} must be an integer >= 2, got {self.categories!r}"
            )
        if self.min_temperature > self.temperature:
            raise checks.UserError(
                f"need {checks.option('min_temperature')} <= {checks.option('temperature')}, got "
                f"{self.min_temperature!r} and "
                f"{self.temperature!r}"
            )
        checks.check_fraction("temperature_decay", self.temperature_decay, "; 1: no annealing")
        checks.check_nonnegative_int("labeled", self.labeled, "; labeled training images for m2")
        if self.aux_weight is not None:
            checks.check_nonnegative_float(
                "aux_weight", self.aux_weight, "; leave it out for 0.1·N/labeled"
            )
        checks.check_nonnegative_int("flows", self.flows)
        checks.check_nonnegative_float("commitment", self.commitment, "; e.g. 0.25")
        if type(self.ema_decay) not in (int, float) or not 0 <= self.ema_decay < 1:
            raise checks.UserError(
                f"{checks.option('ema_decay')} must be in [0, 1), e.g. 0.99; got {self.ema_decay!r}"
            )
        for kind, name, choices in CHOICES:
            if getattr(self, name) is not None:
                checks.check_choice(kind, getattr(self, name), choices, name)
        if self.early_stopping is not None and not self.validation:
            raise checks.UserError(
                "--early-stopping watches the validation ELBO: also pass --validation N "
                "(e.g. --validation 10000 for the 50k/10k/10k split)"
            )

    def data_options(self):
        """The keyword arguments of :func:`pyro_vae.data.load_data` that load this run's data."""
        return dict(
            name=self.dataset,
            data_dir=self.data_dir,
            binarize=self.binarize,
            validation=self.validation,
            limit=self.limit,
            test_limit=self.test_limit,
            exclude_class=self.exclude_class,
            image_size=self.image_size,
            test_fraction=self.test_fraction,
        )

    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d):
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise checks.UserError(f"unknown config key(s) {unknown}; valid keys: {sorted(names)}")
        return cls(**d)

    def save(self, path):
        with open(path, "w") as f:
            json.dump(self.to_dict(), f, indent=2, sort_keys=True)

    @classmethod
    def load(cls, path):
        with open(path) as f:
            return cls.from_dict(json.load(f))


def _check_dims(name, dims):
    """A list of layer widths: None, or positive integers."""
    if dims is not None and (not dims or any(type(d) is not int or d <= 0 for d in dims)):
        raise checks.UserError(
            f"{checks.option(name)} must be positive integers such as 400 or 64,32, got {dims!r}"
        )


def _check_run_dir(config, resume):
    """``config.out`` holds no run (a new one), or, with ``resume``, a run written by ``pyro-vae
    train``: return its saved config (whose options :func:`check_config` then compares), or
    None."""
    from pyro_vae.training.checkpoint import CHECKPOINT, METRICS

    out = config.out
    config_path = os.path.join(out, "config.json")
    held = [f for f in ("config.json", CHECKPOINT, METRICS) if os.path.exists(os.path.join(out, f))]
    if held and not resume:
        raise checks.RunExistsError(
            f"{out!r} already holds a run ({', '.join(held)}); pass --resume to continue it "
            f"or choose another --out"
        )
    if not resume:
        return None
    if not os.path.exists(os.path.join(out, CHECKPOINT)):
        raise checks.MissingFileError(
            f"--resume: {out!r} has no {CHECKPOINT}; start a new run without --resume"
        )
    if not os.path.exists(config_path):
        raise checks.MissingFileError(
            f"--resume: {out!r} has no config.json, so it was not written by pyro-vae "
            f"train; start a new run in another --out"
        )
    return Config.load(config_path)


class Plan(NamedTuple):
    """A checked run: its config with the model's defaults filled in (``guide``, ``net``), the
    model's :class:`~pyro_vae.models.spec.ModelSpec`, the KL schedule β(e) it trains with, the
    arguments of :func:`~pyro_vae.data.load_data` that read its data, and the device it trains on
    (None: not a training run)."""

    config: Config
    spec: Any
    schedule: Any
    data: dict
    device: Any = None


def check_config(config, resume=None):
    """Names in a :class:`Config` that only the registries know, the combination of model, guide,
    net, estimator and KL variant, and the data directory: the one place that refuses a
    configuration. Returns its :class:`Plan` (``config`` itself is left as it is).

    For a training run (``resume`` False: a new run in ``config.out``; True: the run there,
    continued), also its run directory and its device. The run of a finished config may be
    evaluated on another device, checked by the caller. Checked before any data is read (the
    dataset's name where it is read, by :func:`~pyro_vae.data.load_data`); each refusal is one line
    naming the conflict.
    """
    # the registries, imported when a run starts, not for --help
    from pyro_vae.data import BINARIZE
    from pyro_vae.estimators import ESTIMATORS
    from pyro_vae.estimators.variants import SCALED_ESTIMATORS, KLSchedule
    from pyro_vae.models import MODELS, with_defaults
    from pyro_vae.models.likelihoods import EIGHT_BIT, LIKELIHOODS
    from pyro_vae.models.nets import ACTIVATIONS, GATED
    from pyro_vae.training.checkpoint import CHECKPOINT

    data = config.data_options()  # the same with the model's defaults filled in
    saved = None if resume is None else _check_run_dir(config, resume)
    # the run's one schedule, of the numbers Config.validate checked
    schedule = KLSchedule(config.beta, config.kl_warmup_epochs, validate_args=False)
    if resume:  # corrupt or foreign: fail now
        checks.load_checkpoint(os.path.join(config.out, CHECKPOINT))
    device = None if resume is None else checks.check_device(config.device)
    checks.check_choice("binarize mode", config.binarize, BINARIZE, "binarize")
    checks.check_eight_bit(config.likelihood in EIGHT_BIT, config.binarize, config.likelihood)
    checks.check_choice("model", config.model, MODELS, "model")
    checks.check_choice("likelihood", config.likelihood, LIKELIHOODS, "likelihood")
    checks.check_choice("activation", config.activation, [*ACTIVATIONS, GATED], "activation")
    checks.check_choice("estimator", config.elbo, ESTIMATORS, "elbo")
    scaled = not schedule.is_identity
    checks.check_kl_weights(config.elbo, scaled, config.free_bits, SCALED_ESTIMATORS)
    filled = with_defaults(config)  # the model's own guide and net
    MODELS[config.model].check_options(filled, schedule)  # what it declares, its own rules
    if saved is not None:  # the saved run's options, those a resume may change taken from now
        now = {k: getattr(filled, k) for k in FREE_ON_RESUME}
        if dataclasses.replace(saved, **now) != filled:
            raise checks.UserError(
                f"--resume: the options differ from those saved in "
                f"{os.path.join(config.out, 'config.json')}; only --epochs may change when "
                "resuming (and --out, for a moved run folder)"
            )
    if config.data_dir is not None and not os.path.isdir(config.data_dir):
        raise checks.MissingFileError(
            f"data directory {config.data_dir!r} does not exist; pass an existing folder to "
            f"--data-dir or leave it out to use the default cache"
        )
    return Plan(filled, MODELS[config.model], schedule, data, device)
