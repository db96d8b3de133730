"""Generative models with their guides, each a container of ``.model`` and ``.guide``.

:data:`MODELS` maps a name to the model's :class:`~pyro_vae.models.spec.ModelSpec`, declared in
the model's own file: its builder ``build(config, x_shape, num_data)``, guides, nets, priors,
estimators and its own checks. A new model is one file with a ``SPEC`` plus one line here.
"""

import copy

from pyro_vae.models import (
    builders,
    cvae,
    deep_hierarchical,
    hierarchical,
    m2,
    relaxed_categorical,
    vq_vae,
)
from pyro_vae.models.spec import ModelSpec
from pyro_vae.core.checks import UserError

MODELS = {
    "vae": builders.SPEC,
    "hierarchical": hierarchical.SPEC,
    "relaxed-categorical": relaxed_categorical.SPEC,
    "m2": m2.SPEC,
    "cvae": cvae.SPEC,
    "deep-hierarchical": deep_hierarchical.SPEC,
    "vq-vae": vq_vae.SPEC,
}


def model_guides(builder):
    """The guide names a model (its :class:`ModelSpec`) accepts and its default guide."""
    return builder.guide_names(), builder.default_guide_name()


def model_nets(builder):
    """The nets a model (its :class:`ModelSpec`) accepts and its default (the first)."""
    return builder.nets, builder.nets[0]


def with_defaults(config):
    """``config`` with the model's defaults filled in: ``guide=None`` becomes the model's default
    guide, and ``net=None`` its default net (conv for deep-hierarchical, else mlp).

    A copy where something is filled in, not checked again: the defaults are the model's own."""
    if config.model not in MODELS or None not in (config.guide, config.net):
        return config
    builder, filled = MODELS[config.model], copy.copy(config)
    if config.guide is None:
        filled.guide = model_guides(builder)[1]
    if config.net is None:
        filled.net = model_nets(builder)[1]
    return filled


def build_model(config, x_shape, num_data=None):
    """Build the model named by ``config.model`` (one of :data:`MODELS`), defaults filled in.

    The combination of options is checked where they enter
    (:func:`pyro_vae.app.config.check_config`).
    """
    if config.model not in MODELS:
        raise UserError(
            f"unknown model {config.model!r}; choose one of {', '.join(sorted(MODELS))}"
        )
    config = with_defaults(config)
    return MODELS[config.model].build(config, x_shape, num_data)


__all__ = ["MODELS", "ModelSpec", "build_model", "model_guides", "model_nets", "with_defaults"]
