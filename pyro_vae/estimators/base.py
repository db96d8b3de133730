"""The shared code path of the per-data-point estimators: one vectorized pass, one bound per data
point.

For K particles z_ik ~ q(z | x_i) with log-weights ``log w_ik`` (see
:func:`pyro_vae.estimators.importance.log_weights`; unscaled, one column per data point),
an estimator maps the ``[K, B]`` log-weights to one bound per data point and the
loss is

.. math:: \\mathcal{L} = -\\frac{N}{B} \\sum_{i=1}^{B} \\mathrm{bound}(\\log w_{i1}, \\dots, \\log
w_{iK})

with the data plate's subsampling factor N/B applied *outside* the bound (Pyro's
``RenyiELBO`` puts it inside the log-sum-exp, which changes the bound).

A new estimator overrides :meth:`ImportanceWeightedELBO.point_bound` (its value
and, by autograd, its gradient); estimators whose gradient is not the bound's
autograd gradient (DReG, STL) override :meth:`ImportanceWeightedELBO.surrogate`
through :class:`DetachedPathELBO`.

Scaling other than subsampling (β from ``poutine.scale``, a subsampled plate
other than the data plate) is refused with a ValueError: inside a log-sum-exp a
per-site factor no longer gives a bound on log p(x).  Train β-VAEs with
``trace`` or ``meanfield``.
"""

import math

import torch
from pyro.infer import ELBO
from pyro.poutine.util import site_is_subsample

from pyro_vae.estimators.importance import (
    extra_scale,
    guess_max_plate_nesting,
    split_log_weights,
    trace_pair,
)
from pyro_vae.core.checks import UserError


def _is_one(scale):
    if torch.is_tensor(scale):
        return bool(torch.all(scale == 1))
    return scale == 1.0


class ImportanceWeightedELBO(ELBO):
    """Base class: per-data-point bounds from one batched pass of ``num_particles`` particles.

    :param int num_particles: K, particles per data point (vectorized).
    :param int max_plate_nesting: plate dims used by model and guide (default: inferred on the first
        call).
    :param str data_plate: name of the plate over data points (default: the plate that holds every
        observed site, see :func:`~pyro_vae.core.pair`).

    Model and guide are called as :class:`pyro.infer.SVI` calls them, with ``*args, **kwargs``
    passed through; the batch is the data plate's subsample.
    """

    # the trainer may trace loss and gradients once per batch size (pyro_vae.estimators.fast)
    traceable = True
    needs_inverse = False  # True where log q is scored at a detached z (see DetachedPathELBO)

    def __init__(
        self, num_particles=1, max_plate_nesting=None, vectorize_particles=True, data_plate=None
    ):
        if not vectorize_particles:
            raise UserError(
                f"{type(self).__name__} always vectorizes its particles; drop "
                "vectorize_particles=False"
            )
        if max_plate_nesting is not None and (
            isinstance(max_plate_nesting, bool)
            or not isinstance(max_plate_nesting, int)
            or max_plate_nesting < 0
        ):
            raise UserError(
                "max_plate_nesting must be a non-negative integer or None, got "
                f"{max_plate_nesting!r}"
            )
        super().__init__(
            num_particles=num_particles,
            max_plate_nesting=math.inf if max_plate_nesting is None else max_plate_nesting,
            vectorize_particles=True,
        )
        self.data_plate = data_plate

    # -- the one code path ---------------------------------------------------------------------
    def point_bound(self, log_w):
        """Map log-weights ``[K, B]`` to one bound per data point ``[B]``; its autograd gradient is
        the estimator's."""
        raise NotImplementedError

    def _trace(self, model, guide, args, kwargs, replay=None):
        if self.max_plate_nesting == math.inf:
            self.max_plate_nesting = guess_max_plate_nesting(model, guide, *args, **kwargs)
        model_trace, guide_trace, particle_dim = trace_pair(
            model,
            guide,
            *args,
            num_particles=self.num_particles,
            max_plate_nesting=self.max_plate_nesting,
            replay=replay,
            **kwargs,
        )
        try:
            weights = split_log_weights(
                model_trace, guide_trace, particle_dim, self.num_particles, self.data_plate
            )
        except ValueError as e:
            raise UserError(f"{type(self).__name__} is a bound per data point: {e}") from None
        return weights, guide_trace

    def _get_trace(self, model, guide, args, kwargs):
        """One vectorized pass: ``(model_trace, guide_trace)``."""
        weights, _ = self._trace(model, guide, args, kwargs)
        return weights.model_trace, weights.guide_trace

    def _check(self, weights):
        """Refuse pairs whose per-point weights would not give the bound (see the module
        docstring)."""
        name = type(self).__name__
        guide_sites = {n for n, s in weights.guide_trace.nodes.items() if s["type"] == "sample"}
        for tr, who in ((weights.model_trace, "model"), (weights.guide_trace, "guide")):
            for site in tr.nodes.values():
                if site["type"] != "sample":
                    continue
                if not _is_one(extra_scale(site, weights.data_plate.name)):
                    raise UserError(
                        f"{name}: {who} site {site['name']!r} is scaled by something other than "
                        "the data plate's subsampling (poutine.scale, e.g. a β-VAE, or another "
                        "subsampled plate); an importance-weighted bound with per-site scales is "
                        "not a bound on log p(x). Use make_elbo('trace') or 'meanfield' for "
                        "scaled objectives"
                    )
                if who == "guide" and not site["is_observed"] and not site["fn"].has_rsample:
                    raise UserError(
                        f"{name}: guide site {site['name']!r} ({type(site['fn']).__name__}) is not "
                        "reparameterizable; use make_elbo('trace') (score-function gradients) or "
                        "'enum'"
                    )
                if who == "model" and not site["is_observed"] and site["name"] not in guide_sites:
                    raise UserError(
                        f"{name}: model latent site {site['name']!r} has no guide site; give the "
                        "guide a site of the same name, or use make_elbo('enum') for enumerated "
                        "discrete latents"
                    )

    def surrogate(self, model, guide, *args, **kwargs):
        """Per-data-point surrogate ``[B]`` whose value is the bound and whose gradient is the
        estimator's.

        Returns ``(surrogate, scale)``, ``scale`` being the data plate's subsampling factor.
        """
        weights, _ = self._trace(model, guide, args, kwargs)
        self._check(weights)
        return self.point_bound(weights.log_w), weights.data_plate.scale

    # -- Pyro's ELBO API -------------------------------------------------------------------------
    def differentiable_loss(self, model, guide, *args, **kwargs):
        """−(subsampling factor) · Σ_i bound_i, differentiable w.r.t. model and guide parameters."""
        surrogate, scale = self.surrogate(model, guide, *args, **kwargs)
        return -scale * surrogate.sum()

    def loss(self, model, guide, *args, **kwargs):
        """The loss as a float (no gradients)."""
        with torch.no_grad():  # the bound's value needs no replay, whatever the gradient estimator
            bound, scale = ImportanceWeightedELBO.surrogate(self, model, guide, *args, **kwargs)
            return -scale * bound.sum().item()

    def loss_and_grads(self, model, guide, *args, **kwargs):
        """Backpropagate :meth:`differentiable_loss` into every parameter it touches; return the
        loss as a float."""
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        loss.backward()
        return loss.item()


def _detached_replay_trace(guide_trace):
    """A copy of ``guide_trace`` whose latent values are detached (subsample sites kept, so indices
    match)."""
    replay = guide_trace.copy()
    for name, site in guide_trace.nodes.items():
        if site["type"] == "sample" and not site["is_observed"] and not site_is_subsample(site):
            replay.nodes[name] = dict(site, value=site["value"].detach())
    return replay


class DetachedPathELBO(ImportanceWeightedELBO):
    """Base of estimators that keep only the path derivative of the guide (DReG, STL).

    With z = z(ε, φ) live and the pair replayed at z̄ = stop(z), so that
    ``lp̄ = log p(x, z̄)`` and ``lq̄ = log q(z̄ | x)`` carry no path through z,

    .. math:: S_i = \\mathrm{bound}_i + \\sum_k a_{ik} \\bar{lp}_{ik} + \\sum_k c_{ik} \\left[\\log
        w_{ik} - \\bar{lp}_{ik} + \\bar{lq}_{ik}\\right] \\quad (\\text{minus their values}),

    with constants a = ∂bound/∂log w (model parameters get exactly the bound's
    gradient Σ a ∂θ log p, since the θ-parts of the last bracket cancel) and
    c = :meth:`path_weights` (guide parameters get Σ c ∂log w/∂z · dz/dφ: the
    score term ∂φ log q at fixed z cancels).  This holds for any guide, including
    hierarchical guides whose later sites depend on earlier z, because the replay
    re-evaluates every guide distribution at z̄.  Flow guides need the flow's
    inverse for the replay; a non-invertible guide is refused.
    """

    needs_inverse = True  # log q(z̄) at a detached z̄: a flow guide must be invertible

    def path_weights(self, log_w):
        """Constant weights ``[K, B]`` of the path derivative for the guide parameters."""
        raise NotImplementedError

    def surrogate(self, model, guide, *args, **kwargs):
        live, live_guide_trace = self._trace(model, guide, args, kwargs)
        self._check(live)
        try:
            fixed, _ = self._trace(
                model, guide, args, kwargs, replay=_detached_replay_trace(live_guide_trace)
            )
        except NotImplementedError as e:
            raise UserError(
                f"{type(self).__name__} evaluates log q(z|x) at a fixed z, which needs the guide's "
                f"inverse transform; this guide has none ({e or 'NotImplementedError'}). Use an "
                f"invertible flow, or make_elbo('iwae') / 'trace'"
            ) from None
        log_w = live.log_w
        lw = log_w.detach().requires_grad_()
        with torch.enable_grad():
            bound = self.point_bound(lw)
            (model_weights,) = torch.autograd.grad(bound.sum(), lw)
        path = self.path_weights(log_w.detach())
        lp_fixed = fixed.obs + fixed.prior
        model_part = (model_weights * lp_fixed).sum(0)
        guide_part = (path * (log_w - lp_fixed + fixed.guide)).sum(0)
        surrogate = (
            bound.detach() + (model_part - model_part.detach()) + (guide_part - guide_part.detach())
        )
        return surrogate, live.data_plate.scale
