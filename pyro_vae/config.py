"""Run configuration: a plain dataclass that round-trips through JSON and rejects unknown keys."""
import dataclasses
import json
from dataclasses import dataclass, field
from typing import List, Optional

from . import validation


@dataclass
class Config:
    """Everything a training run needs; ``pyro-vae train`` flags map one-to-one onto these fields."""

    # data
    dataset: str = "fashion-mnist"
    data_dir: Optional[str] = None
    binarize: str = "dynamic"
    validation: int = 0
    limit: Optional[int] = None
    test_limit: Optional[int] = None
    exclude_class: Optional[int] = None
    image_size: Optional[int] = None
    test_fraction: float = 0.1
    # model
    model: str = "vae"
    net: str = "mlp"
    likelihood: str = "bernoulli"
    sigma: float = 0.1
    mixtures: int = 10
    latent_dim: int = 20
    latent_dims: Optional[List[int]] = None
    hidden_dims: List[int] = field(default_factory=lambda: [400])
    activation: str = "relu"
    guide: str = "diagonal"
    flows: int = 0
    flow_hidden_dims: Optional[List[int]] = None
    # inference
    elbo: str = "trace"
    particles: int = 1
    # VAE variants (pyro_vae.variants, discrete, semisupervised, conditional)
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
    seed: int = 0
    device: str = "auto"
    # output
    out: str = "runs/latest"
    eval_particles: int = 1
    log_every: int = 50
    pictures: bool = True

    def __post_init__(self):
        self.validate()

    def validate(self):
        """Raise ValueError/TypeError naming the field and how to fix it (names are checked by
        :func:`pyro_vae.validation.check_config`, which needs the registries)."""
        for name in ("latent_dim", "mixtures", "epochs", "batch_size", "particles", "eval_particles", "log_every",
                     "max_bad_steps"):
            validation.check_positive_int(name, getattr(self, name))
        for name in ("hidden_dims", "latent_dims", "flow_hidden_dims"):
            dims = getattr(self, name)
            if dims is not None and (not dims or any(isinstance(d, bool) or not isinstance(d, int) or d <= 0
                                                     for d in dims)):
                raise ValueError(f"{name} must be positive integers such as 400 or 64,32, got {dims!r}")
        validation.check_positive_float("lr", self.lr)
        if self.image_size is not None:
            validation.check_positive_int("image_size", self.image_size, "; pass e.g. --image-size 32 or leave it out")
        if not (isinstance(self.test_fraction, (int, float)) and 0 < self.test_fraction < 1):
            raise ValueError(f"test_fraction must be in (0, 1), got {self.test_fraction!r}; e.g. --test-fraction 0.1")
        if self.clip_norm is not None:
            validation.check_positive_float("clip_norm", self.clip_norm, "; pass e.g. --clip-norm 10 or leave it out")
        validation.check_fraction("lr_decay", self.lr_decay, "; 1 keeps the learning rate constant")
        validation.check_nonnegative_float("beta", self.beta, "; 1 is the plain ELBO")
        validation.check_nonnegative_int("kl_warmup_epochs", self.kl_warmup_epochs, "; 0: no warm-up")
        validation.check_nonnegative_float("free_bits", self.free_bits, "; nats per latent dimension, 0: off")
        if isinstance(self.categories, bool) or not isinstance(self.categories, int) or self.categories < 2:
            raise ValueError(f"categories must be an integer >= 2, got {self.categories!r}")
        validation.check_positive_float("temperature", self.temperature)
        validation.check_positive_float("min_temperature", self.min_temperature)
        if self.min_temperature > self.temperature:
            raise ValueError(f"need min_temperature <= temperature, got {self.min_temperature!r} and "
                             f"{self.temperature!r}")
        validation.check_fraction("temperature_decay", self.temperature_decay, "; 1: no annealing")
        validation.check_nonnegative_int("labeled", self.labeled, "; labeled training images for m2")
        if self.aux_weight is not None:
            validation.check_nonnegative_float("aux_weight", self.aux_weight, "; leave it out for 0.1·N/labeled")
        validation.check_nonnegative_int("flows", self.flows)
        validation.check_choice("optimizer", self.optimizer, ("adam", "clipped-adam"), "optimizer")
        validation.check_choice("net", self.net, ("mlp", "conv"), "net")

    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d):
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown config key(s) {unknown}; valid keys: {sorted(names)}")
        return cls(**d)

    def save(self, path):
        with open(path, "w") as f:
            json.dump(self.to_dict(), f, indent=2, sort_keys=True)

    @classmethod
    def load(cls, path):
        with open(path) as f:
            return cls.from_dict(json.load(f))
