"""The ELBO with the sticking-the-landing gradient (STL; Roeder et al. 2017).

.. math:: \\nabla_\\phi \\mathcal{L} \\approx \\frac{1}{K} \\sum_k
    \\frac{\\partial \\log w_k}{\\partial z_k} \\frac{d z_k}{d \\phi}

drops the score term E_q[∇φ log q(z)] = 0 of the reparameterized ELBO gradient;
when q is the exact posterior, log w is constant in z and the gradient is
exactly zero.  Model parameters get the ELBO's gradient (1/K) Σ_k ∇θ log p(x, z_k).

STL is an ELBO, a sum of per-site terms: like :class:`~pyro.infer.Trace_ELBO` it takes
every scale (``poutine.scale``, subsampled plates), every plate structure and global
latents.  Each reparameterized guide site's log q(z) is re-evaluated at the detached
z̄ = stop(z), and ``log q(z) − [log q(z̄) − stop(log q(z̄))]`` replaces it: the value is
unchanged, and the φ-gradient keeps only the path through z, as if log q were scored with
detached variational parameters.  Non-reparameterized sites keep Trace_ELBO's score-function
treatment.

References:
    1. G. Roeder, Y. Wu, D. Duvenaud. Sticking the Landing: Simple, Lower-Variance Gradient
       Estimators for Variational Inference. NeurIPS 2017, arXiv:1703.09194.
"""

from pyro import poutine
from pyro.poutine.util import prune_subsample_sites, site_is_subsample

from pyro_vae.estimators.trace import DeviceTrace_ELBO
from pyro_vae.core.checks import UserError


def _reparameterized(site):
    return (
        site["type"] == "sample"
        and not site["is_observed"]
        and not site_is_subsample(site)
        and site["fn"].has_rsample
    )


def _log_q_at_detached_z(guide, recorded, args, kwargs):
    """The guide replayed at z̄ = stop(z) of its ``recorded`` trace (subsample sites kept, so the
    indices match), with ``log_prob`` at every reparameterized site: log q(z̄), differentiable in φ
    but not in z."""
    replay = recorded.copy()
    for name, site in recorded.nodes.items():
        if _reparameterized(site):
            replay.nodes[name] = dict(site, value=site["value"].detach())
    try:
        fixed = prune_subsample_sites(
            poutine.trace(poutine.replay(guide, trace=replay)).get_trace(*args, **kwargs)
        )
        fixed.compute_log_prob(site_filter=lambda name, site: _reparameterized(site))
    except NotImplementedError as e:
        raise UserError(
            f"STL_ELBO evaluates log q(z|x) at a fixed z, which needs the guide's inverse "
            f"transform; this guide has none ({e or 'NotImplementedError'}). Use an invertible "
            f"flow, or make_elbo('trace')"
        ) from None
    return fixed


class STL_ELBO(DeviceTrace_ELBO):
    """Trace_ELBO whose reparameterized guide sites give the guide gradient only their path term.

    Takes the options of :class:`~pyro.infer.Trace_ELBO` (``num_particles``,
    ``vectorize_particles``, ``max_plate_nesting``, …).  Overrides one piece, :meth:`_get_trace`:
    Pyro's own traces, with the entropy term of each reparameterized guide site's score parts
    corrected as in the module docstring.
    """

    needs_inverse = True  # log q(z̄) at a detached z̄: a flow guide must be invertible

    def _get_trace(self, model, guide, args, kwargs):
        tape = poutine.trace()  # records the guide's trace before Pyro prunes its subsample sites

        def recorded_guide(*args, **kwargs):
            with tape:
                return guide(*args, **kwargs)

        model_trace, guide_trace = super()._get_trace(model, recorded_guide, args, kwargs)
        fixed = _log_q_at_detached_z(guide, tape.trace, args, kwargs)
        for name, site in guide_trace.nodes.items():
            if _reparameterized(site):  # Trace_ELBO differentiates each site's entropy term
                at_fixed = fixed.nodes[name]["log_prob"]
                parts = site["score_parts"]
                site["score_parts"] = parts._replace(
                    entropy_term=parts.entropy_term - (at_fixed - at_fixed.detach())
                )
        return model_trace, guide_trace
