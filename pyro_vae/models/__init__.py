"""Generative models with their guides, each a container of ``.model`` and ``.guide``; built by name.

:data:`MODELS` maps a name to a builder ``f(config, x_shape, num_data)``; a builder may declare its own
guide names (``builder.guides``) and default guide (``builder.default_guide``).
"""
from pyro_vae.models.builders import build_vae
from pyro_vae.models.cvae import build_cvae
from pyro_vae.models.hierarchical import build_hierarchical
from pyro_vae.models.m2 import build_m2
from pyro_vae.models.relaxed_categorical import build_relaxed_categorical

MODELS = {}


def register_model(name):
    """Decorator adding a builder ``f(config, x_shape, num_data) -> module with .model and .guide`` to :data:`MODELS`."""

    def decorator(builder):
        MODELS[name] = builder
        return builder

    return decorator


register_model("vae")(build_vae)
register_model("hierarchical")(build_hierarchical)
register_model("relaxed-categorical")(build_relaxed_categorical)
register_model("m2")(build_m2)
register_model("cvae")(build_cvae)


def build_model(config, x_shape, num_data=None):
    """Build the model named by ``config.model`` (one of :data:`MODELS`)."""
    if config.model not in MODELS:
        raise ValueError(f"unknown model {config.model!r}; choose one of {', '.join(sorted(MODELS))}")
    return MODELS[config.model](config, x_shape, num_data)


__all__ = ["MODELS", "build_model", "register_model"]
