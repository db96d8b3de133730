"""Run configuration: a plain dataclass that round-trips through JSON and rejects unknown keys."""
import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import List, Optional


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
    # model
    model: str = "vae"
    net: str = "mlp"
    likelihood: str = "bernoulli"
    sigma: float = 0.1
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
        """Raise ValueError naming the field and how to fix it."""
        positive = ["latent_dim", "epochs", "batch_size", "particles", "eval_particles", "log_every", "max_bad_steps"]
        for name in positive:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if any(not isinstance(h, int) or h <= 0 for h in self.hidden_dims):
            raise ValueError(f"hidden_dims must be positive integers, got {self.hidden_dims!r}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a finite positive number, got {self.lr!r}")
        if self.clip_norm is not None and not (isinstance(self.clip_norm, (int, float)) and
                                               math.isfinite(self.clip_norm) and self.clip_norm > 0):
            raise ValueError(f"clip_norm must be a finite positive number or left out, got {self.clip_norm!r}")
        if not 0 < self.lr_decay <= 1:
            raise ValueError(f"lr_decay must be in (0, 1], got {self.lr_decay!r}")
        if self.latent_dims is not None and (not self.latent_dims or any(
                isinstance(d, bool) or not isinstance(d, int) or d <= 0 for d in self.latent_dims)):
            raise ValueError(f"latent_dims must be positive integers such as 64,32 (z1 next to x first), "
                             f"got {self.latent_dims!r}")
        if not (isinstance(self.beta, (int, float)) and math.isfinite(self.beta) and self.beta >= 0):
            raise ValueError(f"beta must be a finite number >= 0 (1 is the plain ELBO), got {self.beta!r}")
        if isinstance(self.kl_warmup_epochs, bool) or not isinstance(self.kl_warmup_epochs, int) \
                or self.kl_warmup_epochs < 0:
            raise ValueError(f"kl_warmup_epochs must be an integer >= 0 (0: no warm-up), got {self.kl_warmup_epochs!r}")
        if not (isinstance(self.free_bits, (int, float)) and math.isfinite(self.free_bits) and self.free_bits >= 0):
            raise ValueError(f"free_bits must be a number >= 0 (nats per latent dimension; 0: off), "
                             f"got {self.free_bits!r}")
        if isinstance(self.categories, bool) or not isinstance(self.categories, int) or self.categories < 2:
            raise ValueError(f"categories must be an integer >= 2, got {self.categories!r}")
        if not 0 < self.min_temperature <= self.temperature:
            raise ValueError(f"need 0 < min_temperature <= temperature, got {self.min_temperature!r} and "
                             f"{self.temperature!r}")
        if not 0 < self.temperature_decay <= 1:
            raise ValueError(f"temperature_decay must be in (0, 1] (1: no annealing), got {self.temperature_decay!r}")
        if isinstance(self.labeled, bool) or not isinstance(self.labeled, int) or self.labeled < 0:
            raise ValueError(f"labeled must be an integer >= 0 (labeled training images for m2), got {self.labeled!r}")
        if self.aux_weight is not None and not self.aux_weight >= 0:
            raise ValueError(f"aux_weight must be >= 0 or left out (default 0.1·N/labeled), got {self.aux_weight!r}")
        if self.flows < 0:
            raise ValueError(f"flows must be >= 0, got {self.flows}")
        if self.optimizer not in ("adam", "clipped-adam"):
            raise ValueError(f"optimizer must be 'adam' or 'clipped-adam', got {self.optimizer!r}")
        if self.net not in ("mlp", "conv"):
            raise ValueError(f"net must be 'mlp' or 'conv', got {self.net!r}")

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
