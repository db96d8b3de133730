"""Pyro's ``Trace_ELBO`` and ``TraceMeanField_ELBO`` with the loss kept on the device.

Pyro's ``differentiable_loss`` returns ``loss + (surrogate − item(surrogate))``, with ``loss``
summed from ``.item()`` floats, and reads the loss once more to warn on NaN: three host reads a
step, which stall a GPU and which a captured graph (:mod:`pyro_vae.estimators.capture`) cannot
follow. The classes here override the smallest pieces, the per-particle terms and their sum, so that
both stay tensors:

.. math:: \\mathcal{L} = \\mathrm{stop}(\\ell) + (s - \\mathrm{stop}(s)),

the value ℓ (−ELBO) and the gradient of the surrogate s exactly as Pyro's. Everything else (the
traces, ``loss``, ``loss_and_grads``, validation) is Pyro's own. The trainer's NaN guard replaces
``warn_if_nan``.
"""

import pyro.infer
import torch
from pyro.distributions.util import is_identically_zero, scale_and_mask
from pyro.infer import TraceEnum_ELBO
from pyro.infer.trace_elbo import _compute_log_r
from pyro.infer.util import check_fully_reparametrized, is_validation_enabled
from torch.distributions import kl_divergence


class _DeviceLoss:
    """``differentiable_loss`` as the mean over particles of ``_differentiable_loss_particle``'s
    tensors."""

    traceable = True  # no host reads: the fast path can capture it (pyro_vae.estimators.fast)
    needs_inverse = False  # scores the guide only at its own samples

    def differentiable_loss(self, model, guide, *args, **kwargs):
        loss = surrogate = 0.0
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            value, particle = self._differentiable_loss_particle(model_trace, guide_trace)
            loss = loss + value / self.num_particles
            surrogate = surrogate + particle / self.num_particles
        return loss + (surrogate - surrogate.detach())


class DeviceTrace_ELBO(_DeviceLoss, pyro.infer.Trace_ELBO):
    """:class:`pyro.infer.Trace_ELBO` whose ``differentiable_loss`` reads nothing on the host."""

    def _differentiable_loss_particle(self, model_trace, guide_trace):
        """(−ELBO, −surrogate ELBO) of one particle: Σ log p − Σ log q, and the score-function
        surrogate."""
        elbo = surrogate = 0.0
        for site in model_trace.nodes.values():
            if site["type"] == "sample":
                elbo = elbo + site["log_prob_sum"]
        surrogate = elbo
        log_r = None
        for site in guide_trace.nodes.values():
            if site["type"] != "sample":
                continue
            _, score_function_term, entropy_term = site["score_parts"]
            elbo = elbo - site["log_prob_sum"]
            if not is_identically_zero(entropy_term):
                surrogate = surrogate - entropy_term.sum()
            if not is_identically_zero(score_function_term):
                log_r = _compute_log_r(model_trace, guide_trace) if log_r is None else log_r
                surrogate = (
                    surrogate + (log_r.sum_to(site["cond_indep_stack"]) * score_function_term).sum()
                )
        return -torch.as_tensor(elbo).detach(), -surrogate


class DeviceTraceMeanField_ELBO(_DeviceLoss, pyro.infer.TraceMeanField_ELBO):
    """:class:`pyro.infer.TraceMeanField_ELBO` (analytic KL(q‖p) where torch has it) with the loss
    on the device."""

    def _differentiable_loss_particle(self, model_trace, guide_trace):
        """(−ELBO, −ELBO) of one particle: Σ log p(x|z) − Σ KL(q‖p), the KL by sampling where it has
        no form."""
        elbo = 0.0
        for name, site in model_trace.nodes.items():
            if site["type"] != "sample":
                continue
            if site["is_observed"]:
                elbo = elbo + site["log_prob_sum"]
                continue
            guide_site = guide_trace.nodes[name]
            if is_validation_enabled():
                check_fully_reparametrized(guide_site)
            try:
                kl = kl_divergence(guide_site["fn"], site["fn"])
            except NotImplementedError:
                elbo = elbo + site["log_prob_sum"] - guide_site["score_parts"].entropy_term.sum()
                continue
            kl = scale_and_mask(kl, scale=guide_site["scale"], mask=guide_site["mask"])
            elbo = elbo - (
                kl.sum() if torch.is_tensor(kl) else kl * guide_site["fn"].batch_shape.numel()
            )
        for name, guide_site in guide_trace.nodes.items():  # auxiliary guide sites
            if guide_site["type"] == "sample" and name not in model_trace.nodes:
                elbo = elbo - guide_site["score_parts"].entropy_term.sum()
        return -elbo.detach(), -elbo


def device_twin(elbo):
    """``elbo`` itself when it reads nothing on the host (``traceable = True``); for an instance of
    Pyro's ``Trace_ELBO`` or ``TraceMeanField_ELBO``, a copy of the same settings that keeps its
    loss on the device; else None."""
    if getattr(elbo, "traceable", False) is True:
        return elbo
    twin = {
        pyro.infer.Trace_ELBO: DeviceTrace_ELBO,
        pyro.infer.TraceMeanField_ELBO: DeviceTraceMeanField_ELBO,
    }
    cls = twin.get(type(elbo))
    if cls is None:
        return None
    copy = cls.__new__(cls)
    copy.__dict__.update(vars(elbo))  # the same particles, plate nesting, vectorization
    return copy


class Enum_ELBO(TraceEnum_ELBO):
    """Pyro's ``TraceEnum_ELBO`` with this package's estimator declarations."""

    traceable = False  # Pyro's enumeration reads values on the host
    needs_inverse = False
