"""Generative models with their guides, each a container of ``.model`` and ``.guide``; built by name.

:data:`MODELS` maps a name to a builder ``f(config, x_shape, num_data)``; a builder may declare its own
guide names (``builder.guides``) and default guide (``builder.default_guide``).
"""

import dataclasses

from pyro_vae.guides import GUIDES
from pyro_vae.models.builders import build_vae
from pyro_vae.models.cvae import build_cvae
from pyro_vae.models.deep_hierarchical import build_deep_hierarchical
from pyro_vae.models.hierarchical import build_hierarchical
from pyro_vae.models.m2 import build_m2
from pyro_vae.models.relaxed_categorical import build_relaxed_categorical

MODELS = {}


def register_model(name):
    """Decorator adding a builder ``f(config, x_shape, num_data) -> module with .model and .guide`` to :data:`MODELS`.

    A builder may declare, as attributes read by :func:`pyro_vae.app.config.check_config` before any data is
    read: ``guides`` (the guide names it accepts; default every registered guide), ``default_guide`` (used when
    ``config.guide`` is None; default the first of them), ``nets``, ``estimators`` and ``priors`` (default all)
    and ``check(config)`` (its own one-line refusals).
    """

    def decorator(builder):
        MODELS[name] = builder
        return builder

    return decorator


register_model("vae")(build_vae)
register_model("hierarchical")(build_hierarchical)
register_model("relaxed-categorical")(build_relaxed_categorical)
register_model("m2")(build_m2)
register_model("cvae")(build_cvae)
register_model("deep-hierarchical")(build_deep_hierarchical)


def model_guides(builder):
    """The guide names a model builder accepts (its ``guides``, default every registered guide) and its default
    guide (its ``default_guide``, else the first of them)."""
    guides = getattr(builder, "guides", GUIDES)
    return guides, getattr(builder, "default_guide", next(iter(guides)))


def model_nets(builder):
    """The nets a model builder accepts (its ``nets``, default mlp and conv) and its default (the first)."""
    nets = getattr(builder, "nets", ("mlp", "conv"))
    return nets, nets[0]


def with_defaults(config):
    """``config`` with the model's defaults filled in: ``guide=None`` becomes the model's default guide, and
    ``net=None`` its default net (conv for deep-hierarchical, else mlp)."""
    if config.model not in MODELS:
        return config
    builder, filled = MODELS[config.model], {}
    if config.guide is None:
        filled["guide"] = model_guides(builder)[1]
    if config.net is None:
        filled["net"] = model_nets(builder)[1]
    return dataclasses.replace(config, **filled) if filled else config


def build_model(config, x_shape, num_data=None):
    """Build the model named by ``config.model`` (one of :data:`MODELS`) with its defaults filled in; the
    combination of options is checked where they enter (:func:`pyro_vae.app.config.check_config`)."""
    if config.model not in MODELS:
        raise ValueError(
            f"unknown model {config.model!r}; choose one of {', '.join(sorted(MODELS))}"
        )
    config = with_defaults(config)
    return MODELS[config.model](config, x_shape, num_data)


__all__ = ["MODELS", "build_model", "model_guides", "model_nets", "register_model", "with_defaults"]
