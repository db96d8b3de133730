"""NVAE's KL balancing [1] during the KL warm-up: :class:`KLBalanced_ELBO`.

While a latent group's β < 1 (the warm-up of :class:`~pyro_vae.estimators.variants.KLSchedule`)
its KL is weighted by

.. math:: \\gamma_l = L\\,\\frac{c_l}{\\sum_{l'} c_{l'}}, \\qquad
    c_l = \\frac{\\operatorname{sg}(|\\overline{\\mathrm{KL}}_l|) + 0.01}{n_l}

(L groups, :math:`\\overline{\\mathrm{KL}}_l` the batch-mean KL per image of group l,
:math:`n_l` its latent size per image, sg the stop-gradient, 0.01 nats NVAE's floor, so the γ sum
to L), and by 1 once β ≥ 1: groups whose KL per latent unit is small are pushed less, so that none
collapses while the KL is cheap. The loss, with the free-bits floor λ (0 by default),

.. math:: \\mathcal{L} = -\\frac{N}{B}\\sum_i \\mathbb{E}_q \\log p(x_i|z)
    + N \\sum_l \\beta_l\\,\\gamma_l \\max(\\lambda, \\overline{\\mathrm{KL}}_l).

Groups are the latent sites (``z_1 … z_L``); the KL of each is analytic where it factorizes (see
:class:`~pyro_vae.estimators.variants.FreeBits_ELBO`, whose one method :meth:`kl_penalty` this
overrides). β is read from the trace on the device, so the fast path's captured step follows the
warm-up.

1. A. Vahdat, J. Kautz, "NVAE: A Deep Hierarchical Variational Autoencoder", NeurIPS 2020,
   arXiv:2007.03898 (section 3.2 and its code's ``kl_balancer``).
"""

import torch

from pyro_vae.estimators.variants import FreeBits_ELBO

FLOOR = 0.01  # nats added to each group's mean KL (NVAE's kl_per_group): no group's γ is 0


def balance(kl, sizes):
    """γ = L·c / Σc with c = (|KL̄| + 0.01) / n, from the batch-mean KLs ``kl`` [L] and the latent
    sizes ``sizes`` [L] of the groups; no gradient."""
    c = (kl.detach().abs() + FLOOR) / sizes
    return len(c) * c / c.sum()


class KLBalanced_ELBO(FreeBits_ELBO):
    """:class:`~pyro_vae.estimators.variants.FreeBits_ELBO` whose KL of each latent site is
    weighted by NVAE's balancing coefficient γ_l while its β < 1 (see the module docstring); with
    β ≥ 1 everywhere it is that estimator's loss."""

    def kl_penalty(self, kl, beta, sizes, zero):
        names = list(kl)
        if len(names) < 2:
            return super().kl_penalty(kl, beta, sizes, zero)
        totals = torch.stack([kl[n].sum() for n in names])
        gamma = balance(totals, totals.new_tensor([sizes[n] for n in names]))
        betas = torch.stack([torch.as_tensor(beta[n]).to(totals) for n in names])
        gamma = torch.where(betas < 1, gamma, torch.ones_like(gamma))
        floored = torch.stack([kl[n].clamp(min=self.free_bits).sum() for n in names])
        return zero + (betas * gamma * floored).sum()
