"""Normalizing-flow guides: q(z|x) = the law of z = f_K ∘ … ∘ f_1(ε; h), ε ~ N(μ(h), diag σ(h)²), h
= encoder(x).

.. math:: \\log q(z|x) = \\log N(ε; μ(h), σ(h)^2) − \\sum_{k=1}^K \\log |\\det ∂f_k / ∂ε_{k-1}|

Every layer is conditioned on the same context ``h`` as the base Gaussian (which
comes from the head of :class:`~pyro_vae.guides.DiagonalGuide`).  Layers, by guide name:

============= ================================================================ =========
name          layer f_k                                                         inverse
============= ================================================================ =========
``iaf``       affine autoregressive, z' = μ(z_<, h) + σ(z_<, h) ⊙ z [1]; the   yes (D passes)
              variable order is reversed between layers
``spline``    rational-linear spline autoregressive [2], orders as ``iaf``      yes (D passes)
``householder`` reflection z' = (I − 2 v vᵀ/‖v‖²) z, v = v(h) [3]               yes
``sylvester`` z' = z + Q R tanh(S Qᵀ z + b), all conditioned on h [4]           no
``planar``    z' = z + u tanh(wᵀz + b), (u, w, b) = g(h) [5]                   no
``radial``    z' = z + β (z − z₀)/(α + ‖z − z₀‖), (z₀, α, β) = g(h) [5]         no
============= ================================================================ =========

The non-invertible flows score only the z they sampled themselves (Pyro caches
each layer's input); estimators that re-score a detached z (DReG, STL) must check
``guide.invertible`` first.  Pyro's ``JitTrace_ELBO`` breaks on the per-call
conditioned transforms (pyro-ppl/pyro#3132); the trainer's fast path records ATen
ops with ``make_fx`` instead, which follows them (checked against the plain loss
and gradients for every flow), so flow guides set ``jit_compatible = True``.

Design decision (Pyro conditional transforms, not Zuko).  We build on Pyro's
``Conditional*`` transforms and write only what Pyro lacks (the conditional
Sylvester flow, :mod:`pyro_vae.guides.sylvester`).  Reasons: (a) no new
dependency — Pyro is already required, Zuko would be one more package pinned in
``setup.cfg``; (b) Pyro's conditional MADE (``ConditionalAutoRegressiveNN``)
expands the context ``[B, C]`` against vectorized particles ``[K, B, D]``, and
the dense hypernets' parameters broadcast the same way, which is exactly the
shape contract of our particle plate; (c) Pyro's transforms cache x ↔ y, which is
what lets planar/radial/Sylvester score their own samples at all.  Against it:
Pyro's flows are no longer developed (its docs point to Zuko, bridged by
``pyro.contrib.zuko.ZukoToPyro``), and Zuko offers more flows (NSF, NAF, UNAF,
coupling) with inverses everywhere.  Because a guide here only needs
``distribution(context)`` returning a torch ``Distribution`` with ``rsample`` and
``log_prob``, a Zuko flow ``flow(h)`` can be dropped into an
:class:`~pyro_vae.guides.AmortizedGuide` subclass later without touching any
estimator or the trainer.

References:
[1] Kingma, Salimans, Jozefowicz, Chen, Sutskever, Welling. Improving Variational Inference
    with Inverse Autoregressive Flow. NeurIPS 2016, arXiv:1606.04934.
[2] Durkan, Bekasov, Murray, Papamakarios. Neural Spline Flows. NeurIPS 2019; Dolatabadi,
    Erfani, Leckie. Invertible Generative Modeling using Linear Rational Splines. AISTATS 2020.
[3] Tomczak, Welling. Improving Variational Auto-Encoders using Householder Flow. arXiv:1611.09630.
[4] van den Berg, Hasenclever, Tomczak, Welling. Sylvester Normalizing Flows for Variational
    Inference. UAI 2018, arXiv:1803.05649.
[5] Rezende, Mohamed. Variational Inference with Normalizing Flows. ICML 2015, arXiv:1505.05770.
"""

import inspect
from typing import Callable, NamedTuple

import pyro.distributions as dist
import torch
from pyro.distributions.transforms import (
    ConditionalAffineAutoregressive,
    ConditionalHouseholder,
    ConditionalPlanar,
    ConditionalRadial,
    ConditionalSplineAutoregressive,
)
from pyro.nn import ConditionalAutoRegressiveNN, DenseNN
from torch import nn

from pyro_vae.guides.diagonal import DiagonalGuide
from pyro_vae.guides.sylvester import ConditionalSylvester
from pyro_vae.core.checks import UserError, option


class Flow(NamedTuple):
    """A registered flow: ``layer(latent_dim, context_dim, hidden_dims, index, **options)`` builds
    layer ``index``."""

    layer: Callable
    invertible: bool


FLOWS = {}


def register_flow(name, invertible):
    """Decorator adding a layer builder to :data:`FLOWS` (and, via :mod:`pyro_vae.guides`, a guide
    ``name``)."""

    def decorator(layer):
        FLOWS[name] = Flow(layer, invertible)
        return layer

    return decorator


def _order(latent_dim, index):
    """Variable order of autoregressive layer ``index``: identity, then reversed, alternately."""
    order = torch.arange(latent_dim)
    return order.flip(0) if index % 2 else order


class _ConditionalAffineAutoregressive(ConditionalAffineAutoregressive):
    """Pyro's conditional IAF whose inverse walks the variable order as Python ints.

    Pyro's ``AffineAutoregressive._inverse`` loops ``for idx in arn.permutation`` (a tensor) and
    indexes with each 0-d tensor, a host read per variable: a traced step
    (:mod:`pyro_vae.estimators.fast`) cannot follow it, so DReG and STL, which invert the flow,
    would lose the fast path. The order is fixed at construction.
    """

    def __init__(self, nn, **kwargs):
        super().__init__(nn, **kwargs)
        self._order = nn.permutation.tolist()

    def condition(self, context):
        transform = super().condition(context)
        transform.arn.permutation = self._order  # only the inverse reads it
        return transform


@register_flow("iaf", invertible=True)
def iaf_layer(latent_dim, context_dim, hidden_dims, index):
    """z' = μ(z_<, h) + σ(z_<, h) ⊙ z with a conditional MADE; log|det| = Σ log σ."""
    arn = ConditionalAutoRegressiveNN(
        latent_dim, context_dim, hidden_dims, permutation=_order(latent_dim, index)
    )
    return _ConditionalAffineAutoregressive(arn)


@register_flow("spline", invertible=True)
def spline_layer(latent_dim, context_dim, hidden_dims, index, count_bins=8, bound=3.0):
    """Monotone rational-linear spline on [−bound, bound] per coordinate (identity outside),
    autoregressive in z."""
    arn = ConditionalAutoRegressiveNN(
        latent_dim,
        context_dim,
        hidden_dims,
        param_dims=[count_bins, count_bins, count_bins - 1, count_bins],
        permutation=_order(latent_dim, index),
    )
    return ConditionalSplineAutoregressive(
        latent_dim, arn, count_bins=count_bins, bound=bound, order="linear"
    )


@register_flow("householder", invertible=True)
def householder_layer(latent_dim, context_dim, hidden_dims, index):
    """z' = (I − 2 v vᵀ/‖v‖²) z with v = g(h); volume-preserving (log|det| = 0)."""
    return ConditionalHouseholder(
        latent_dim, DenseNN(context_dim, hidden_dims, param_dims=[latent_dim])
    )


@register_flow("planar", invertible=False)
def planar_layer(latent_dim, context_dim, hidden_dims, index):
    """z' = z + û tanh(wᵀz + b); log|det| = log|1 + ûᵀw tanh'(wᵀz + b)|."""
    return ConditionalPlanar(
        DenseNN(context_dim, hidden_dims, param_dims=[1, latent_dim, latent_dim])
    )


@register_flow("radial", invertible=False)
def radial_layer(latent_dim, context_dim, hidden_dims, index):
    """z' = z + β (z − z₀)/(α + r), r = ‖z − z₀‖; log|det| = (D−1) log(1 + βh) + log(1 + βh +
    βh'r)."""
    return ConditionalRadial(DenseNN(context_dim, hidden_dims, param_dims=[latent_dim, 1, 1]))


@register_flow("sylvester", invertible=False)
def sylvester_layer(latent_dim, context_dim, hidden_dims, index, reflections=None):
    """z' = z + Q R tanh(S Qᵀ z + b) with Q a product of ``reflections`` Householder reflections
    (default D)."""
    return ConditionalSylvester(latent_dim, context_dim, hidden_dims, reflections=reflections)


class FlowDistribution(dist.TransformedDistribution):
    """The law of z = f_K ∘ … ∘ f_1(ε), ε ~ base; log q(z) = log base(ε) − Σ_k log|det ∂f_k|.

    ``log_prob`` of a value the distribution did not sample needs every layer's
    inverse; for a non-invertible flow it raises a ValueError saying so.
    """

    def __init__(self, base, transforms, flow="flow", invertible=True, validate_args=None):
        self.flow = flow
        self.invertible = invertible
        super().__init__(base, transforms, validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(FlowDistribution, _instance)
        new.flow, new.invertible = self.flow, self.invertible
        return super().expand(batch_shape, _instance=new)

    def log_prob(self, value):
        if self.invertible or self.transforms[-1]._cached_x_y[1] is value:
            return super().log_prob(value)
        raise UserError(
            f"the {self.flow!r} flow has no inverse: it can score only the z it sampled itself "
            "(the same tensor object), not a detached or new z. Estimators that re-score a "
            "detached z (DReG, STL) need an invertible guide: "
            f"{', '.join(n for n, f in FLOWS.items() if f.invertible)}"
        )


class FlowGuide(DiagonalGuide):
    """q(z|x): ``num_flows`` layers of the flow ``flow`` on the base N(μ(h), diag σ(h)²), all
    conditioned on h.

    :param str flow: one of :data:`FLOWS`.
    :param int num_flows: number of layers (≥ 1).
    :param hidden_dims: hidden sizes of each layer's network (MADE or hypernet); default ``[10 *
        latent_dim]``.
    :param options: the flow's own options (``spline``: ``count_bins``, ``bound``; ``sylvester``:
        ``reflections``) and ``site``, ``plate``, ``name`` of
        :class:`~pyro_vae.guides.AmortizedGuide`.

    Attributes: ``invertible`` (can log q be evaluated at any z?), ``jit_compatible = True``.
    """

    jit_compatible = (
        True  # no data-dependent control flow or state: the trainer may trace loss and gradients
    )

    def __init__(
        self, encoder, context_dim, latent_dim, flow="iaf", num_flows=1, hidden_dims=None, **options
    ):
        if flow not in FLOWS:
            raise UserError(f"unknown flow {flow!r}; choose one of {', '.join(sorted(FLOWS))}")
        if isinstance(num_flows, bool) or not isinstance(num_flows, int) or num_flows < 1:
            raise UserError(
                f"the {flow!r} guide needs num_flows >= 1, got {num_flows!r}; "
                "use the 'diagonal' guide for no flow"
            )
        layer = FLOWS[flow].layer
        own = set(inspect.signature(layer).parameters) - {
            "latent_dim",
            "context_dim",
            "hidden_dims",
            "index",
        }
        flow_options = {k: options.pop(k) for k in list(options) if k in own}
        unknown = sorted(set(options) - {"site", "plate", "name"})
        if unknown:
            raise UserError(
                f"unknown option(s) {unknown} for the {flow!r} guide; valid: "
                f"{sorted(own | {'hidden_dims', 'site', 'plate', 'name'})}"
            )
        hidden_dims = list(hidden_dims) if hidden_dims else [10 * latent_dim]
        if any(isinstance(h, bool) or not isinstance(h, int) or h <= 0 for h in hidden_dims):
            raise UserError(f"hidden_dims must be positive integers, got {hidden_dims!r}")
        if flow in ("iaf", "spline") and min(hidden_dims) < latent_dim:
            raise UserError(
                f"the {flow!r} guide's autoregressive networks need hidden sizes >= "
                f"{option('latent_dim')} ({latent_dim}), got {hidden_dims}; raise its hidden_dims"
            )
        super().__init__(encoder, context_dim, latent_dim, **options)
        self.flow = flow
        self.invertible = FLOWS[flow].invertible
        self.flows = nn.ModuleList(
            layer(latent_dim, context_dim, hidden_dims, i, **flow_options) for i in range(num_flows)
        )

    def distribution(self, context):
        """``FlowDistribution`` with batch shape ``context.shape[:-1]``; layers broadcast over extra
        leading z dims."""
        return FlowDistribution(
            super().distribution(context),
            [f.condition(context) for f in self.flows],
            flow=self.flow,
            invertible=self.invertible,
        )


__all__ = ["FLOWS", "Flow", "FlowDistribution", "FlowGuide", "register_flow"]
