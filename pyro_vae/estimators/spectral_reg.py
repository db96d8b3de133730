"""NVAE's spectral regularization [1] as a model handler: :func:`spectral_regularized` adds
:math:`-\\lambda \\sum_{\\text{conv}} \\sigma_{\\max}(W)` to the log-joint of every data point.

σ_max of each convolution's weight, reshaped to ``[out, in·k·k]``, comes from one step of power
iteration per model call in training mode (as :func:`torch.nn.utils.spectral_norm`): with the
buffers u, v,

.. math:: v \\leftarrow \\frac{W^\\top u}{\\lVert W^\\top u \\rVert}, \\quad
    u \\leftarrow \\frac{W v}{\\lVert W v \\rVert}, \\quad \\sigma = u^\\top W v,
    \\quad \\frac{\\partial\\sigma}{\\partial W} = u v^\\top

(u, v updated under ``no_grad``; only σ carries a gradient).

The penalty is one ``pyro.factor`` inside the model's data plate, placed at its first observed site,
with the same value for every data point. So each image's log-weight falls by λ·Σσ, whatever the
estimator (``trace`` adds it to the ELBO, ``iwae``/``dreg``/``renyi`` shift each bound by it), and
with the built-in models' data plate, scaled to the full-data ELBO of N images, the loss gains
N·λ·Σσ: λ is NVAE's per-image λ (its loss is the mean −ELBO per image + λ·Σσ). The factor is added
in training mode only, so the evaluation's ELBO leaves it out; the buffers are module buffers,
saved in the checkpoint and read and written by the fast path's captured step like any other.

1. A. Vahdat, J. Kautz, "NVAE: A Deep Hierarchical Variational Autoencoder", NeurIPS 2020,
   arXiv:2007.03898.
"""

import functools

import pyro
import torch
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample
from torch import nn

from pyro_vae.core.checks import Options, UserError

SITE = "spectral_reg"


class SpectralPenalty(Options, nn.Module):
    """``forward() = weight · Σ σ_max(W)`` over the ``nn.Conv2d`` (and 1d, 3d) weights W of
    ``module``; in training mode each call first takes one power-iteration step."""

    options = {"weight": "spectral_reg"}

    def __init__(self, module, weight, validate_args=True):
        super().__init__()
        self.weight = weight
        if validate_args:
            self.check_options()
        self.convs = [
            m for m in module.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d))
        ]
        if not self.convs:
            raise UserError(
                f"spectral regularization acts on conv weights, and {type(module).__name__} has "
                "none; use a conv net (--net conv) or leave out --spectral-reg"
            )
        for i, conv in enumerate(self.convs):
            out, rest = conv.weight.shape[0], conv.weight[0].numel()
            w = conv.weight.detach()
            self.register_buffer(
                f"u{i}", nn.functional.normalize(w.new_empty(out).normal_(), dim=0)
            )
            self.register_buffer(
                f"v{i}", nn.functional.normalize(w.new_empty(rest).normal_(), dim=0)
            )

    def sigmas(self):
        """σ_max of each conv weight, differentiable in the weights (u, v fixed)."""
        found = []
        for i, conv in enumerate(self.convs):
            w, u, v = conv.weight.flatten(1), getattr(self, f"u{i}"), getattr(self, f"v{i}")
            if self.training:
                with torch.no_grad():
                    v.copy_(nn.functional.normalize(w.t() @ u, dim=0))
                    u.copy_(nn.functional.normalize(w @ v, dim=0))
            found.append(u @ (w @ v))
        return torch.stack(found)

    def forward(self):
        return self.weight * self.sigmas().sum()


class _FactorAtObservation(Messenger):
    """Add ``pyro.factor(SITE, -penalty())`` right after the first observed site of each call, so
    inside its plates (the data plate), in training mode only."""

    def __init__(self, penalty):
        super().__init__()
        self.penalty, self.done = penalty, False

    def __enter__(self):
        self.done = not self.penalty.training
        return super().__enter__()

    def _postprocess_message(self, msg):
        if self.done or msg["type"] != "sample" or not msg["is_observed"] or site_is_subsample(msg):
            return
        self.done = True
        frames = [f for f in msg["cond_indep_stack"] if f.vectorized and f.dim is not None]
        shape = [1] * max((-f.dim for f in frames), default=0)
        for f in frames:  # one copy per data point (and particle): the value its plates give it
            shape[f.dim] = f.size
        pyro.factor(SITE, -self.penalty().expand(shape))


def spectral_regularized(model, penalty):
    """``model`` whose every data point's log-joint falls by ``penalty()`` (a
    :class:`SpectralPenalty`) in training mode; give the trainer ``penalty`` among its modules (its
    mode, and its buffers in the checkpoint)."""

    @functools.wraps(model)
    def regularized(*args, **kwargs):
        with _FactorAtObservation(penalty):
            return model(*args, **kwargs)

    return regularized
