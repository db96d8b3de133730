"""Guides q(z|x), swapped by name with :func:`make_guide`.

Every guide is a module called as ``guide(x)`` that samples the latent site
(default ``"z"``) inside the data plate (default ``"data"``) and registers its
parameters with ``pyro.module``.
"""

from pyro_vae.guides.diagonal import AmortizedGuide, DiagonalGuide
from pyro_vae.guides.flows import FLOWS, FlowGuide
from pyro_vae.core.checks import UserError

GUIDES = {}


def register_guide(name):
    """Decorator adding a builder ``f(encoder, context_dim, latent_dim, num_flows, **options)`` to
    :data:`GUIDES`."""

    def decorator(builder):
        GUIDES[name] = builder
        return builder

    return decorator


@register_guide("diagonal")
def _diagonal(encoder, context_dim, latent_dim, num_flows=0, **options):
    if num_flows:
        raise UserError(
            "the diagonal guide has no flows; use num_flows=0 or a flow guide such as 'iaf'"
        )
    return DiagonalGuide(encoder, context_dim, latent_dim, **options)


def _flow_builder(flow):
    def build(encoder, context_dim, latent_dim, num_flows=0, **options):
        return FlowGuide(
            encoder, context_dim, latent_dim, flow=flow, num_flows=num_flows, **options
        )

    build.__doc__ = f"The {flow!r} flow guide (see :mod:`pyro_vae.guides.flows`)."
    return build


for _flow in FLOWS:
    register_guide(_flow)(_flow_builder(_flow))


def make_guide(name, encoder, context_dim, latent_dim, num_flows=0, **options):
    """Return the amortized guide ``name`` over ``latent_dim`` latents, conditioned on
    ``encoder(x)``.

    :param str name: one of :data:`GUIDES` (``diagonal``, and the flows ``iaf``, ``spline``,
        ``householder``, ``sylvester``, ``planar``, ``radial``).
    :param encoder: module mapping ``x`` to a context of shape ``[B, context_dim]``.
    :param int num_flows: number of flow layers on top of the base Gaussian.
    :param options: ``site``, ``plate`` and the guide's own options.
    """
    if name not in GUIDES:
        raise UserError(f"unknown guide {name!r}; choose one of {', '.join(sorted(GUIDES))}")
    if num_flows < 0:
        raise UserError(f"num_flows must be >= 0, got {num_flows}")
    try:
        return GUIDES[name](encoder, context_dim, latent_dim, num_flows=num_flows, **options)
    except TypeError as e:
        raise UserError(f"bad option for guide {name!r}: {e}") from None


__all__ = [
    "AmortizedGuide",
    "DiagonalGuide",
    "FLOWS",
    "FlowGuide",
    "GUIDES",
    "make_guide",
    "register_guide",
]
