"""What a model supports, declared once beside its builder and read by the config check and the CLI.

A model file holds its pair, its builder ``build(config, x_shape, num_data)`` and one
:class:`ModelSpec`; :data:`pyro_vae.models.MODELS` lists the specs by name, one line each.
"""

import dataclasses
from typing import Callable, Optional, Tuple

NETS = ("mlp", "conv")


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """One model's declaration.

    :param build: ``build(config, x_shape, num_data) -> module with .model and .guide``.
    :param guides: the guide names it accepts (None: every guide of :data:`pyro_vae.guides.GUIDES`).
    :param default_guide: the guide used when ``config.guide`` is None (None: the first guide).
    :param nets: the nets it accepts; the first is its default.
    :param priors: the ``config.prior`` names it accepts.
    :param estimators: the estimators that can train it (None: every one).
    :param estimators_why: why the others cannot, a clause after "--model NAME" (None: it samples
        a discrete latent that is not reparameterizable).
    :param check: ``check(config)``, its own one-line refusals, run before any data is read.
    :param prior_samples: whether draws from the model's own prior are its samples, pictured as
        ``samples.png`` (vq-vae: no, its training prior is uniform over the codes; its samples come
        from the prior that ``fit-prior`` learns).
    """

    build: Callable
    guides: Optional[Tuple[str, ...]] = None
    default_guide: Optional[str] = None
    nets: Tuple[str, ...] = NETS
    priors: Tuple[str, ...] = ("standard",)
    estimators: Optional[Tuple[str, ...]] = None
    estimators_why: Optional[str] = None
    check: Optional[Callable] = None
    prior_samples: bool = True

    def guide_names(self):
        """The guide names this model accepts."""
        if self.guides is not None:
            return self.guides
        from pyro_vae.guides import GUIDES

        return tuple(GUIDES)

    def default_guide_name(self):
        """The guide used when ``config.guide`` is None."""
        return self.default_guide or self.guide_names()[0]

    def __call__(self, config, x_shape, num_data=None):
        return self.build(config, x_shape, num_data)


__all__ = ["ModelSpec", "NETS"]
