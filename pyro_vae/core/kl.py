"""KL(q ‖ p) per latent dimension, for distributions that factorize over their event."""

import torch
from pyro.distributions import Independent
from torch.distributions import kl_divergence


def _elementwise_base(fn):
    """The elementwise base distribution of ``Independent(…(base))`` with a scalar event, or
    None."""
    while isinstance(fn, Independent):
        fn = fn.base_dist
    return fn if fn.event_shape == () else None


def elementwise_kl(q_fn, p_fn, value, monte_carlo=True):
    """KL(q ‖ p) per element of ``value`` (shape ``batch + event``) when q and p factorize over the
    event.

    Analytic where ``kl_divergence`` is registered for the elementwise bases; else, with
    ``monte_carlo``, log q(z_d) − log p(z_d) at ``value``.  None when q or p does not
    factorize (a flow, a full-covariance Gaussian) or (``monte_carlo=False``) no KL is registered.
    """
    q_base, p_base = _elementwise_base(q_fn), _elementwise_base(p_fn)
    if q_base is None or p_base is None or q_fn.event_dim != p_fn.event_dim:
        return None
    try:
        kl = kl_divergence(q_base, p_base)
        return kl.expand(torch.broadcast_shapes(kl.shape, value.shape))
    except (NotImplementedError, RuntimeError):
        pass
    if not monte_carlo:
        return None
    lq, lp = q_base.log_prob(value), p_base.log_prob(value)
    return lq - lp if lq.shape == lp.shape == value.shape else None
