"""The training step: :class:`pyro.infer.SVI` with the loss kept on the device and bad updates
skipped there."""

import pyro
import torch
from pyro import poutine
from pyro.infer import SVI

from pyro_vae.training import distributed
from pyro_vae.training.optim import FusedOptim


class DeviceSVI(SVI):
    """:class:`pyro.infer.SVI` whose :meth:`step` returns ``(loss, ok)`` tensors and skips bad
    updates on the device.

    It uses the estimator's ``replay`` where it has one
    (:class:`~pyro_vae.estimators.fast.FastELBO`), else its ``differentiable_loss`` (or
    ``loss_and_grads`` when absent), and never reads the loss on the host. With ``guard=True`` the
    loss and the gradients are reduced on the device to one boolean ``ok`` (their sum or 2-norm is
    finite); when it is False the optimizer leaves parameters and state unchanged. With a
    :class:`FusedOptim` over fused Adam (the trainer's default) that decision is taken on the device
    too, so a step needs no host sync; other optimizers read ``ok`` on the host.
    """

    def __init__(self, model, guide, optim, loss, guard=True, **kwargs):
        super().__init__(model, guide, optim, loss, **kwargs)
        self.elbo = loss  # SVI keeps only the bound methods
        self.guard = guard

    def step(self, *args, **kwargs):
        ok = None
        # a FastELBO: loss, finiteness and gradients from one graph
        replay = getattr(self.elbo, "replay", None)
        replayed = replay(self.model, self.guide, *args, **kwargs) if replay else None
        if replayed is not None:
            loss, ok, params, grads = replayed
            for p, g in zip(params, grads):
                p.grad = g
        else:
            with poutine.trace(param_only=True) as param_capture:
                if hasattr(self.elbo, "differentiable_loss"):
                    loss = self.elbo.differentiable_loss(self.model, self.guide, *args, **kwargs)
                    loss.backward()
                    loss = loss.detach()
                else:  # a float: put it where the parameters are, as the flag's other inputs
                    loss = torch.as_tensor(
                        self.loss_and_grads(self.model, self.guide, *args, **kwargs)
                    )
            params = {site["value"].unconstrained() for site in param_capture.trace.nodes.values()}
            loss = loss.to(next(iter(params)).device) if params else loss
        if distributed.active():  # the same parameters on every rank, in the same (name) order
            store = pyro.get_param_store()
            distributed.average_gradients(sorted(params, key=store.param_name))
            ok = None  # judge the averaged gradients: every rank then takes the same decision
        if not self.guard:
            ok = torch.ones((), dtype=torch.bool, device=loss.device)
        elif ok is None:
            grads = [p.grad for p in params if p.grad is not None]
            total = loss.sum()
            if grads:  # ‖(g_1, …, g_n)‖₂ is finite iff every gradient is (or overflows ~1e19)
                total = total + _total_norm(grads).to(total)
            ok = torch.isfinite(total)
        if isinstance(self.optim, FusedOptim):
            self.optim(params, skip=None if not self.guard else ~ok)
        elif bool(ok):
            self.optim(params)
        for p in params:
            p.grad = None
        return loss, ok


def _total_norm(tensors):
    """The 2-norm of all ``tensors`` together, with multi-tensor kernels (a few launches, one pass
    over the data)."""
    if hasattr(torch.nn.utils, "get_total_norm"):  # torch >= 2.6
        return torch.nn.utils.get_total_norm(tensors)
    return torch.stack([n.float() for n in torch._foreach_norm(tensors)]).norm()
