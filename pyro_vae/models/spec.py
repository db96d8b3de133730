"""What a model supports, declared once beside its builder and read by the config check and the CLI.

A model file holds its pair, its builder ``build(config, x_shape, num_data)`` and one
:class:`ModelSpec`; :data:`pyro_vae.models.MODELS` lists the specs by name, one line each.
"""

import dataclasses
from typing import Callable, Optional, Tuple

from pyro_vae.core.errors import UserError, option

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
    :param latent_groups: ``latent_groups(config)``, the number of latent sites (groups) of the
        model (None: one), which KL balancing (``--kl-balance``) needs to be more than one.
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
    latent_groups: Optional[Callable] = None

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

    def check_options(self, config, schedule):
        """Refuse a config (its defaults filled in) whose guide, net, estimator or prior this model
        does not declare, then run its own :attr:`check`, then the recipe's flags against the run's
        KL ``schedule`` (a :class:`~pyro_vae.estimators.variants.KLSchedule`): one line naming the
        conflict."""
        self._check_guide(config)
        self._check_net_and_estimator(config)
        if config.prior not in self.priors:
            raise UserError(
                f"--prior {config.prior} is not available for --model {config.model}; it offers "
                f"{', '.join(self.priors)}"
            )
        if self.check is not None:  # the model's own rules (e.g. hierarchical: --latent-dims)
            self.check(config)
        self._check_recipe(config, schedule)

    def _check_recipe(self, config, schedule):
        """NVAE's recipe: KL balancing needs several latent groups and the KL warm-up (β < 1),
        spectral regularization conv weights."""
        groups = self.latent_groups(config) if self.latent_groups else 1
        if config.kl_balance and groups < 2:
            raise UserError(
                f"{option('kl_balance')} balances the KL of several latent groups, and "
                f"{option('model', repr(config.model))} has {groups}; use a hierarchical or "
                f"deep-hierarchical model with more than one, or leave out {option('kl_balance')}"
            )
        if config.kl_balance and (schedule.is_identity or config.elbo == "enum"):
            raise UserError(
                f"{option('kl_balance')} weighs each latent group's KL while β < 1, during the "
                f"KL warm-up: pass {option('kl_warmup_epochs', '10')} (and an estimator other "
                f"than enum), or leave out {option('kl_balance')}"
            )
        if config.spectral_reg and config.net != "conv":
            raise UserError(
                f"{option('spectral_reg')} regularizes conv weights, and "
                f"{option('model', repr(config.model))} with {option('net', repr(config.net))} "
                f"has none; pass {option('net', repr('conv'))} or leave out "
                f"{option('spectral_reg')}"
            )

    def _check_net_and_estimator(self, config):
        """The net against the declared nets, and the estimator against the declared ones."""
        from pyro_vae.models.nets import ACTIVATIONS, GATED

        nets, net = self.nets, config.net
        if net not in nets:
            raise UserError(
                f"--model {config.model} has {' or '.join(nets)} nets only, not --net {net}; "
                f"pass --net {nets[0]} or leave --net out"
            )
        if config.activation == GATED and net != "mlp":
            raise UserError(
                f"--activation gated is a gated dense layer, for --net mlp; --net {net} takes a "
                f"pointwise activation: --activation {' or '.join(sorted(ACTIVATIONS))}"
            )
        estimators = self.estimators  # e.g. m2: a discrete latent that is not reparameterizable
        used = "free-bits" if config.free_bits else config.elbo
        if estimators is None or used in estimators:
            return
        what = "--free-bits" if used != config.elbo else f"--elbo {config.elbo}"
        without = " without --free-bits" if config.free_bits else ""
        if self.estimators_why:  # e.g. vq-vae: a point-mass guide
            raise UserError(
                f"--model {config.model} {self.estimators_why}, so it refuses {what}; use "
                f"--elbo {' or '.join(estimators)}{without}"
            )
        raise UserError(
            f"--model {config.model} samples a discrete latent that is not reparameterizable, "
            f"which {what} cannot train; use --elbo {' or '.join(estimators)}{without}"
        )

    def _check_guide(self, config):
        """The guide against the declared guides, its flows against ``--flows``, and the
        estimator's declared ``needs_inverse``."""
        from pyro_vae.estimators import ESTIMATORS
        from pyro_vae.guides import FLOWS

        guide, guides = config.guide, self.guide_names()
        if not isinstance(guide, str) or guide not in guides:
            raise UserError(
                f"unknown guide {guide!r} for --model {config.model} (--guide); choose one of "
                f"{', '.join(sorted(guides))}, or leave --guide out for its default, "
                f"{self.default_guide_name()}"
            )
        if guide in FLOWS and config.flows < 1:
            raise UserError(
                f"the {guide!r} guide is a flow: pass --flows N with N >= 1 layers (e.g. --flows 2)"
            )
        if guide not in FLOWS and (config.flows or config.flow_hidden_dims):
            flag = "--flows" if config.flows else "--flow-hidden-dims"
            raise UserError(
                f"{flag} needs a flow guide (--guide {', '.join(FLOWS)}); the {guide!r} guide has "
                f"no flows: drop {flag}"
            )
        if guide in FLOWS and not FLOWS[guide].invertible and ESTIMATORS[config.elbo].needs_inverse:
            raise UserError(
                f"--elbo {config.elbo} scores the guide at a fixed z, which needs the flow's "
                f"inverse; the {guide!r} flow has none: use --guide "
                f"{' or '.join(n for n, f in FLOWS.items() if f.invertible)}, or --elbo iwae"
            )


__all__ = ["ModelSpec", "NETS"]
