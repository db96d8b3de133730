"""The ELBO with the sticking-the-landing gradient (STL; Roeder et al. 2017).

.. math:: \\nabla_\\phi \\mathcal{L} \\approx \\frac{1}{K} \\sum_k \\frac{\\partial \\log w_k}{\\partial z_k}
    \\frac{d z_k}{d \\phi}

drops the score term E_q[∇φ log q(z)] = 0 of the reparameterized ELBO gradient;
when q is the exact posterior, log w is constant in z and the gradient is
exactly zero.  Model parameters get the ELBO's gradient (1/K) Σ_k ∇θ log p(x, z_k).

STL is an ELBO, a sum of per-site terms: like :class:`~pyro.infer.Trace_ELBO` it takes
every scale (``poutine.scale``, subsampled plates), every plate structure and global
latents.  Each reparameterized guide site's log q(z) is re-evaluated at the detached
z̄ = stop(z), and ``log q(z) − [log q(z̄) − stop(log q(z̄))]`` replaces it: the value is
unchanged, and the φ-gradient keeps only the path through z.  Non-reparameterized
sites keep Trace_ELBO's score-function treatment.

References:
    1. G. Roeder, Y. Wu, D. Duvenaud. Sticking the Landing: Simple, Lower-Variance Gradient Estimators for
       Variational Inference. NeurIPS 2017, arXiv:1703.09194.
"""

from pyro import poutine
from pyro.infer.util import is_validation_enabled
from pyro.poutine.util import prune_subsample_sites, site_is_subsample
from pyro.util import check_if_enumerated, check_model_guide_match, check_site_shape

from pyro_vae.estimators.trace import DeviceTrace_ELBO


def _reparameterized(site):
    return (
        site["type"] == "sample"
        and not site["is_observed"]
        and not site_is_subsample(site)
        and site["fn"].has_rsample
    )


class STL_ELBO(DeviceTrace_ELBO):
    """Trace_ELBO whose reparameterized guide sites contribute only their path derivative to the guide gradient.

    Takes the options of :class:`~pyro.infer.Trace_ELBO` (``num_particles``, ``vectorize_particles``,
    ``max_plate_nesting``, …).
    """

    needs_inverse = True  # log q(z̄) at a detached z̄: a flow guide must be invertible

    def _get_trace(self, model, guide, args, kwargs):
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        replay = guide_trace.copy()
        for name, site in guide_trace.nodes.items():
            if _reparameterized(site):
                replay.nodes[name] = dict(site, value=site["value"].detach())
        try:
            fixed = prune_subsample_sites(
                poutine.trace(poutine.replay(guide, trace=replay)).get_trace(*args, **kwargs)
            )
            fixed.compute_log_prob(site_filter=lambda name, site: _reparameterized(site))
        except NotImplementedError as e:
            raise ValueError(
                f"STL_ELBO evaluates log q(z|x) at a fixed z, which needs the guide's inverse "
                f"transform; this guide has none ({e or 'NotImplementedError'}). Use an invertible "
                f"flow, or make_elbo('trace')"
            ) from None
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(
            *args, **kwargs
        )
        if is_validation_enabled():
            check_model_guide_match(model_trace, guide_trace, self.max_plate_nesting)
            check_if_enumerated(guide_trace)
        guide_trace, model_trace = (
            prune_subsample_sites(guide_trace),
            prune_subsample_sites(model_trace),
        )
        model_trace.compute_log_prob()
        guide_trace.compute_score_parts()
        for name, site in guide_trace.nodes.items():
            if is_validation_enabled() and site["type"] == "sample":
                check_site_shape(site, self.max_plate_nesting)
            if _reparameterized(
                site
            ):  # Trace_ELBO differentiates the entropy term of each site's score parts
                at_fixed = fixed.nodes[name]["log_prob"]
                parts = site["score_parts"]
                site["score_parts"] = parts._replace(
                    entropy_term=parts.entropy_term - (at_fixed - at_fixed.detach())
                )
        if is_validation_enabled():
            for site in model_trace.nodes.values():
                if site["type"] == "sample":
                    check_site_shape(site, self.max_plate_nesting)
        return model_trace, guide_trace
