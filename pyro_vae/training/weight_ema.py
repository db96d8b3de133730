"""An exponential moving average of the weights, used for evaluation and sampling (VDVAE [1]):
the listener :class:`WeightEMA`.

After every optimizer step the shadow θ̄ of each parameter θ (unconstrained, as the optimizer sees
it) moves towards it, :math:`\\bar\\theta_n = d\\,\\bar\\theta_{n-1} + (1-d)\\,\\theta_n`, so
:math:`\\bar\\theta_n = d^n\\theta_0 + \\sum_{k=1}^n (1-d)\\,d^{n-k}\\theta_k`. The update is
:func:`torch.optim.swa_utils.get_ema_multi_avg_fn`, torch's own multi-tensor EMA (one
``torch._foreach_lerp_`` over all parameters, no host sync). Its wrapper
:class:`~torch.optim.swa_utils.AveragedModel` does not fit: it deep-copies one ``nn.Module``, while
a run's parameters live in Pyro's param store (a user pair may have no module at all), and a copy
would not see the fast path's in-place updates; here the shadow is a list of tensors beside the
store, updated outside the (replayed or compiled) step, after it.

Only parameters are averaged; module buffers (a vq-vae's moving-average codebook, the spectral
penalty's u and v) are used as they are, as ``AveragedModel(use_buffers=False)`` does.

At each epoch's end the shadow is swapped into the store for the evaluation, early stopping's best
parameters and the pictures, and the raw weights come back before the checkpoint is written, so
training continues from them; the checkpoint holds both (``listeners["WeightEMA"]``), so a resume
is exact. When ``fit`` returns the store holds the shadow, for what follows (the report, the
pictures, ``pyro-vae evaluate`` and ``sample``, which read it from the checkpoint:
:func:`averaged`).

1. R. Child, "Very Deep VAEs Generalize Autoregressive Models and Can Outperform Them on Images",
   ICLR 2021, arXiv:2011.10650.
"""

import pyro
import torch
from torch.optim.swa_utils import get_ema_multi_avg_fn

from pyro_vae.training.listeners import Listener


def _store():
    """The param store's ``{name: unconstrained parameter}``, by name."""
    return dict(sorted(pyro.get_param_store().named_parameters()))


class WeightEMA(Listener):
    """Keep θ̄ ← d·θ̄ + (1−d)·θ after every step (``decay`` d in [0, 1)) and evaluate with it.

    :attr:`shadow` is ``{name: θ̄}``; it starts at the parameters when the first run starts."""

    # its on_train_epoch_end swaps the shadow in after the model's own epoch work (5, on raw
    # weights); its on_epoch_end puts the raw weights back after the evaluation (0), early
    # stopping (10) and TensorBoard's pictures (30), before the checkpoint (40)
    order = 35
    options = {"decay": "weight_ema"}

    def __init__(self, decay=0.999, validate_args=True):
        self.decay, self.shadow, self.raw = decay, None, None
        if validate_args:
            self.check_options()
        self._update = get_ema_multi_avg_fn(decay)

    def on_run_start(self, trainer):
        self._swap_back()  # a second fit of the same trainer trains on from the raw weights
        store = _store()
        if self.shadow is None:
            self.shadow = {k: p.detach().clone() for k, p in store.items()}
        names = [k for k in self.shadow if k in store]
        self._pairs = [self.shadow[k] for k in names], [store[k] for k in names]

    def on_step_end(self, trainer, step, loss, ok):
        self._update(*self._pairs, None)

    def on_train_epoch_end(self, trainer, step):
        self._swap_in()

    def on_epoch_end(self, trainer, metrics):
        self._swap_back()

    def on_run_end(self, trainer):
        self._swap_in()

    def _swap_in(self):
        """The shadow into the store; the raw weights kept in :attr:`raw`."""
        if self.raw is None and self.shadow is not None:
            shadow, params = self._pairs
            with torch.no_grad():
                self.raw = [p.detach().clone() for p in params]
                torch._foreach_copy_(params, shadow)

    def _swap_back(self):
        if self.raw is not None:
            with torch.no_grad():
                torch._foreach_copy_(self._pairs[1], self.raw)
            self.raw = None

    def state_dict(self):
        if self.shadow is None:
            return None
        return {"decay": self.decay, "shadow": {k: t.cpu() for k, t in self.shadow.items()}}

    def load_state_dict(self, state):
        """Restore a :meth:`state_dict` (the store already holds the checkpoint's raw weights)."""
        store = _store()
        self.raw = None
        self.shadow = {k: t.to(store[k]) for k, t in state["shadow"].items() if k in store}


def averaged(state):
    """A checkpoint's ``state`` with the shadow of its :class:`WeightEMA` as its parameters (itself
    when it has none)."""
    ema = state.get("listeners", {}).get(WeightEMA.__name__)
    return state if ema is None else {**state, "params": {**state["params"], **ema["shadow"]}}
