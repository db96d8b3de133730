"""Vector quantization of encoder feature maps: the nearest of K codes with a straight-through
gradient, a codebook learned by exponential moving averages or by its loss, dead-code restarts,
and the codebook's usage and perplexity.

.. math:: k(z) = \\arg\\min_k \\|z - e_k\\|^2, \\qquad z_q = z + \\mathrm{sg}(e_{k(z)} - z),

so z_q equals the code e_k in value and has the identity as its Jacobian with respect to z (van
den Oord et al. [1]). Per image, the loss adds β Σ ‖z − sg(e_k)‖² (commitment) and, with
``ema=False``, Σ ‖sg(z) − e_k‖² (codebook); with ``ema=True`` the codebook instead follows, in
training mode, the moving averages of [1, appendix A.1] with Laplace smoothing ε (Sonnet's
``VectorQuantizerEMA``):

.. math:: N_k ← γ N_k + (1 − γ) n_k, \\quad m_k ← γ m_k + (1 − γ) \\textstyle\\sum_{k(z_i) = k} z_i,
          \\quad e_k = m_k / \\tilde N_k, \\quad \\tilde N_k = (N_k + ε)\\,n / (n + K ε),\\ n = Σ N.

Why not ``vector-quantize-pytorch`` (version 1.32.0 read before choosing): its ``forward`` expires
dead codes inside the training step, with ``mask.sum().item()``, ``if not torch.any(...)`` and
boolean-mask writes (``embed[mask] = sampled``): a host read and data-dependent shapes that the
fast path's captured step (:mod:`pyro_vae.estimators.capture`) refuses, so every vq-vae run would
fall back to plain steps. Its expiry threshold is on the EMA cluster size, not "unused over an
epoch"; its losses come back as tensors outside the Pyro pair; and it brings four dependencies
(einops, einx, loguru, torch-einops-utils). Here the step does only fixed-shape ops (argmin,
``index_add_``, in-place moving averages of module buffers, which the fast path lifts into inputs
of its graph and writes back), and the restarts of dead codes happen between epochs, on the host.

The buffers (``embedding``, ``ema_count``, ``ema_sum``, ``counts`` of the current epoch,
``restarts`` so far) are module buffers, so a checkpoint holds them and a resume is exact.

Under torchrun (``torch.distributed``, each rank a share of every batch) every rank holds the same
codebook: a step sums the codes' uses n_k and sums Σ z_i over the ranks before the moving averages
(one all-reduce), so they are those of one process with the global batch; the epoch's usage counts
are summed over the ranks at its end; the dead codes are then restarted from rank 0's encoder
outputs, its codebook broadcast to the others. The all-reduce inside the step is a collective the
fast path does not capture, so an EMA codebook under torchrun takes plain steps.

References:

1. van den Oord, Vinyals, Kavukcuoglu (2017), "Neural Discrete Representation Learning",
   arXiv:1711.00937.
2. Razavi, van den Oord, Vinyals (2019), "Generating Diverse High-Fidelity Images with VQ-VAE-2",
   arXiv:1906.00446.
"""

import torch
import torch.distributed as dist
from torch import nn


def straight_through(z, code):
    """z + sg(code − z): the value of ``code``, the gradient of ``z``."""
    return z + (code - z).detach()


def nearest(flat, embedding):
    """Index of the nearest code of ``embedding [K, D]`` to every row of ``flat [M, D]`` (squared
    Euclidean distance ‖z‖² − 2 z·e + ‖e‖², ties to the lowest index)."""
    distances = (
        flat.pow(2).sum(-1, keepdim=True) - 2 * flat @ embedding.T + embedding.pow(2).sum(-1)
    )
    return distances.argmin(-1)


def perplexity(counts):
    """exp(−Σ p_k log p_k) of the code frequencies p = counts / Σ counts: K when every code is
    used equally, 1 when one code takes all (0 log 0 = 0)."""
    p = counts / counts.sum().clamp_min(1)
    return torch.exp(-torch.special.xlogy(p, p).sum())


def ranks():
    """The number of torchrun processes that share the codebook (1 without torch.distributed)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def all_sum_(*tensors):
    """Replace each tensor by its sum over the ranks, in place, in one all-reduce."""
    if ranks() == 1:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    for t, part in zip(tensors, flat.split([t.numel() for t in tensors])):
        t.copy_(part.view_as(t))


def from_rank0_(*tensors):
    """Overwrite each tensor by rank 0's, in place."""
    if ranks() > 1:
        for t in tensors:
            dist.broadcast(t, src=0)


def channels_last(z):
    """``[..., D, h, w]`` → ``[..., h, w, D]``, one code vector per position."""
    return z.movedim(-3, -1)


def channels_first(z):
    return z.movedim(-1, -3)


class VectorQuantizer(nn.Module):
    """K codes of size D; ``quantize(z)`` of a feature map ``[B, D, h, w]`` (see the module
    docstring).

    :param ema: learn the codebook by moving averages (decay ``decay``), else by its loss (the
        codebook is then a parameter).
    :param restart_dead: at each epoch's end, restart the codes no step chose (False: leave them,
        only their usage and perplexity are reported).
    """

    def __init__(self, num_codes, code_dim, ema=True, decay=0.99, eps=1e-5, restart_dead=True):
        super().__init__()
        self.num_codes, self.code_dim = num_codes, code_dim
        self.ema, self.decay, self.eps = ema, decay, eps
        self.restart_dead = restart_dead
        init = torch.empty(num_codes, code_dim).uniform_(-1 / num_codes, 1 / num_codes)
        if ema:
            self.register_buffer("embedding", init)
            self.register_buffer("ema_count", torch.ones(num_codes))
            self.register_buffer("ema_sum", init.clone())
        else:
            self.embedding = nn.Parameter(init)
        self.register_buffer("counts", torch.zeros(num_codes))  # codes chosen this epoch
        self.register_buffer("restarts", torch.zeros((), dtype=torch.long))  # dead codes restarted

    def indices(self, z):
        """The nearest code of each position of ``z [..., D, h, w]``: ``[..., h, w]``."""
        flat = channels_last(z).reshape(-1, self.code_dim)
        return nearest(flat, self.embedding.detach()).reshape(channels_last(z).shape[:-1])

    def lookup(self, idx):
        """The codes ``[..., D, h, w]`` of indices ``[..., h, w]``."""
        return channels_first(self.embedding[idx])

    def quantize(self, z, commitment=0.25):
        """``(z_q, idx, loss)``: the straight-through codes of ``z [B, D, h, w]``, their indices
        ``[B, h, w]`` and the loss per image ``[B]`` (commitment, plus the codebook term when the
        codebook is a parameter). In training mode, counts the codes and updates the EMA
        codebook."""
        idx = self.indices(z)
        code = self.lookup(idx)
        loss = commitment * (z - code.detach()).pow(2).sum((-3, -2, -1))
        if not self.ema:
            loss = loss + (z.detach() - code).pow(2).sum((-3, -2, -1))
        if self.training:
            self.update(z.detach(), idx)
        return straight_through(z, code), idx, loss

    @torch.no_grad()
    def update(self, z, idx):
        """Count the codes of ``idx`` this epoch and, with EMA, move the codebook by the uses and
        sums of every rank (fixed shapes only, so the fast path can capture it in one process)."""
        flat, idx = channels_last(z).reshape(-1, self.code_dim), idx.reshape(-1)
        n = torch.zeros_like(self.counts).index_add_(0, idx, torch.ones_like(idx, dtype=z.dtype))
        self.counts.add_(n)  # this rank's: summed over ranks at the epoch's end
        if not self.ema:
            return
        sums = torch.zeros_like(self.ema_sum).index_add_(0, idx, flat.to(self.ema_sum.dtype))
        all_sum_(n, sums)
        self.ema_count.mul_(self.decay).add_(n, alpha=1 - self.decay)
        self.ema_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        total = self.ema_count.sum()
        smoothed = (self.ema_count + self.eps) / (total + self.num_codes * self.eps) * total
        self.embedding.copy_(self.ema_sum / smoothed.unsqueeze(-1))

    @torch.no_grad()
    def restart(self, dead, z):
        """Set each code where ``dead [K]`` is true to an encoder output drawn from ``z [..., D, h,
        w]`` (its moving averages to one use of it); return how many were restarted. Under
        torchrun, rank 0's choice is every rank's (``dead`` must be the same on every rank)."""
        flat = channels_last(z).reshape(-1, self.code_dim)
        which = dead.nonzero().squeeze(-1)
        if len(which) and len(flat):
            picked = flat[torch.randint(len(flat), (len(which),), device=flat.device)]
            self.embedding[which] = picked.to(self.embedding.dtype)
            if self.ema:
                self.ema_count[which] = 1.0
                self.ema_sum[which] = picked.to(self.ema_sum.dtype)
        from_rank0_(self.embedding.data, *([self.ema_count, self.ema_sum] if self.ema else []))
        return len(which) if len(flat) else 0

    @torch.no_grad()
    def end_epoch(self, z):
        """The epoch's ``usage`` (fraction of codes chosen at least once) and ``perplexity``, then
        restart the codes no step chose (from encoder outputs ``z``; not with ``restart_dead``
        False) and start counting afresh; the counts are those of every rank."""
        all_sum_(self.counts)
        figures = {
            "usage": (self.counts > 0).float().mean().item(),
            "perplexity": perplexity(self.counts).item(),
        }
        if self.restart_dead and self.counts.sum() > 0:  # no step: nothing is known to be dead
            self.restarts += self.restart(self.counts == 0, z)
        self.counts.zero_()
        return figures

    @torch.no_grad()
    def figures(self, idx):
        """``usage`` and ``perplexity`` of the codes ``idx`` (any shape), e.g. over a test set."""
        counts = torch.bincount(idx.reshape(-1), minlength=self.num_codes).float()
        return {
            "usage": (counts > 0).float().mean().item(),
            "perplexity": perplexity(counts).item(),
        }


__all__ = [
    "VectorQuantizer",
    "all_sum_",
    "channels_first",
    "channels_last",
    "nearest",
    "perplexity",
    "ranks",
    "straight_through",
]
