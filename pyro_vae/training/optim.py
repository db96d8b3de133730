"""Optimizers for SVI: :class:`FusedOptim`, a drop-in :class:`pyro.optim.PyroOptim` with one torch
optimizer.

``pyro.optim.Adam`` builds one torch optimizer per parameter and calls each in
turn every step: for a VAE with a dozen parameter tensors that is a dozen
optimizer calls, a large share of a small model's step.  :class:`FusedOptim`
puts every parameter in one torch optimizer (a new param group whenever new
parameters appear), so a step is a single call; Adam uses torch's fused kernel
(``fused=True``: one kernel updates every parameter).  The update of each parameter is the same;
``get_state``/``set_state`` keep PyroOptim's per-parameter-name format, so
checkpoints move between the two.
"""

from dataclasses import dataclass
from typing import Optional

import pyro
import pyro.optim
import torch
from pyro.optim.clipped_adam import ClippedAdam as _ClippedAdam
from torch.optim.adam import adam as functional_adam


class SkippableAdam(torch.optim.Adam):
    """:class:`torch.optim.Adam` whose step can be skipped on the device: ``step(skip=flag)``.

    With the fused kernel, ``flag`` is the kernel's ``found_inf`` input (as under
    :class:`torch.amp.GradScaler`), given through torch's functional :func:`torch.optim.adam.adam`:
    parameters, moments and step counts stay as they were when it is true, and the host never reads
    it. The state is Adam's own (``step``, ``exp_avg``, ``exp_avg_sq``), so checkpoints move between
    the two.
    """

    @torch.no_grad()
    def step(self, closure=None, skip=None):
        if skip is None or not all(g["fused"] and not g["amsgrad"] for g in self.param_groups):
            if skip is not None and bool(skip):  # no fused kernel: the host reads the flag
                return None
            return super().step(closure)
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            for p in params:
                # Adam's lazy state, as torch.optim.Adam makes it for a fused group
                if not self.state[p]:
                    self.state[p].update(
                        step=torch.zeros((), dtype=torch.float32, device=p.device),
                        exp_avg=torch.zeros_like(p, memory_format=torch.preserve_format),
                        exp_avg_sq=torch.zeros_like(p, memory_format=torch.preserve_format),
                    )
            states = [self.state[p] for p in params]
            functional_adam(
                params,
                [p.grad for p in params],
                [s["exp_avg"] for s in states],
                [s["exp_avg_sq"] for s in states],
                [],
                [s["step"] for s in states],
                fused=True,
                found_inf=skip.to(params[0].device, torch.float32),
                amsgrad=False,
                beta1=group["betas"][0],
                beta2=group["betas"][1],
                lr=group["lr"],
                weight_decay=group["weight_decay"],
                eps=group["eps"],
                maximize=group["maximize"],
                decoupled_weight_decay=group.get("decoupled_weight_decay", False),
            )
        return None


def _adam(params, **options):
    """:class:`SkippableAdam` with its fused kernel (one kernel for all parameters) where the device
    has one."""
    try:
        return SkippableAdam(params, fused=True, **options)
    except RuntimeError:  # a device without the fused kernel
        return SkippableAdam(params, **options)


OPTIMIZERS = {"adam": torch.optim.Adam, "clipped-adam": _ClippedAdam}
FUSED = {torch.optim.Adam: _adam}  # the constructor FusedOptim uses instead


def _to_param(state, p):
    """A saved per-parameter optimizer state with its tensors on ``p``'s device and dtype (``step``
    as saved)."""
    return {k: (v.to(p) if torch.is_tensor(v) and k != "step" else v) for k, v in state.items()}


class FusedOptim(pyro.optim.PyroOptim):
    """:class:`pyro.optim.PyroOptim` whose parameters all live in one torch optimizer."""

    def __init__(self, optim_constructor, optim_args, clip_args=None, skip_threshold=None):
        super().__init__(FUSED.get(optim_constructor, optim_constructor), optim_args, clip_args)
        self.optim = None
        self._members = set()
        # skip an update whose total gradient norm exceeds this (VDVAE)
        self.skip_threshold = skip_threshold
        # updates skipped for their gradient norm since the last take_skipped(), on the device
        self.skipped = None

    def _add(self, params):
        store = pyro.get_param_store()
        group = {"params": params, **self._get_optim_args(params[0])}
        if self.optim is None:
            self.optim = self.pt_optim_constructor([group])
        else:
            self.optim.add_param_group(group)
        for p in params:
            self._members.add(p)
            self.optim_objs[p] = self.optim
            self.grad_clip[p] = self._get_grad_clip(p)
            saved = self._state_waiting_to_be_consumed.pop(store.param_name(p), None)
            if saved and saved.get("state"):
                self.optim.state[p] = _to_param(saved["state"][0], p)

    def __call__(self, params, *args, skip=None, **kwargs):
        """Step ``params``; ``skip``: an optional boolean tensor, true to leave parameters and state
        unchanged.

        With the fused Adam kernel the skip happens on the device (:class:`SkippableAdam`): the host
        never reads ``skip``. Other optimizers read it.
        """
        params = list(params)
        new = [p for p in params if p not in self._members]
        if new:
            self._add(new)
        if self.optim is None:
            return
        if self.skip_threshold is not None:
            skip = self._skip_large(params, skip)
        device_skip = skip is not None and isinstance(self.optim, SkippableAdam)
        if skip is not None and not device_skip and bool(skip):
            return
        for p in params:
            if self.grad_clip[p] is not None:
                self.grad_clip[p](p)
        # step exactly the given parameters, like PyroOptim: hide the gradients of the others
        others = self._members.difference(params) if len(params) != len(self._members) else ()
        hidden = [(p, p.grad) for p in others if p.grad is not None]
        for p, _ in hidden:
            p.grad = None
        if device_skip:
            self.optim.step(*args, skip=skip.reshape(()), **kwargs)
        else:
            self.optim.step(*args, **kwargs)
        for p, g in hidden:
            p.grad = g

    def _skip_large(self, params, skip):
        """``skip`` or'ed with ‖(g_1, …, g_n)‖₂ > ``skip_threshold`` (before any clipping), counted
        in ``skipped``; a non-finite norm is left to the NaN guard's ``skip``. On the device: no
        host sync."""
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return skip
        norm = torch.stack([g.detach().float().norm() for g in grads]).norm()
        large = torch.isfinite(norm) & (norm > self.skip_threshold)
        self.skipped = large.long() if self.skipped is None else self.skipped + large.long()
        return large if skip is None else skip | large.to(skip.device)

    def take_skipped(self):
        """The count of updates skipped for their gradient norm since the last call (an int), reset
        to 0."""
        count, self.skipped = (0 if self.skipped is None else int(self.skipped)), None
        return count

    def set_state(self, state_dict):
        """Load per-parameter states: now for parameters already held, at first sight for the
        others."""
        store = pyro.get_param_store()
        members = {store.param_name(p): p for p in self._members}
        for name, saved in state_dict.items():
            p = members.get(name)
            if p is None:
                self._state_waiting_to_be_consumed[name] = saved
            elif saved.get("state"):
                self.optim.state[p] = _to_param(saved["state"][0], p)

    def get_state(self):
        """``{param name: state dict of a one-parameter optimizer}``, as
        :meth:`pyro.optim.PyroOptim.get_state`."""
        if self.optim is None:
            return dict(self._state_waiting_to_be_consumed)
        store = pyro.get_param_store()
        state = dict(self._state_waiting_to_be_consumed)
        for group in self.optim.param_groups:
            hyper = {k: v for k, v in group.items() if k != "params"}
            for p in group["params"]:
                st = self.optim.state.get(p)
                state[store.param_name(p)] = {
                    "state": {0: dict(st)} if st else {},
                    "param_groups": [{**hyper, "params": [0]}],
                }
        return state


@dataclass
class Optimization:
    """How a run optimizes: ``optimizer`` (``adam`` or ``clipped-adam``) at learning rate ``lr``,
    multiplied by ``lr_decay`` after each epoch; ``clip_norm`` clips each parameter's gradient norm;
    ``skip_threshold`` skips every update whose total gradient norm exceeds it (VDVAE). Checked when
    made."""

    lr: float = 1e-3
    optimizer: str = "adam"
    lr_decay: float = 1.0
    clip_norm: Optional[float] = None
    skip_threshold: Optional[float] = None

    def __post_init__(self):
        from pyro_vae.core import checks

        checks.check_choice("optimizer", self.optimizer, tuple(OPTIMIZERS), "optimizer")
        for name in ("lr", "lr_decay", "clip_norm", "skip_threshold"):
            checks.check_option(name, getattr(self, name))


def make_optimizer(name="adam", lr=1e-3, clip_norm=None, fused=True, skip_threshold=None):
    """A Pyro optimizer by name (``adam`` or ``clipped-adam``); :class:`FusedOptim` unless
    ``fused=False``.

    ``clip_norm`` clips each parameter's gradient norm (``clipped-adam`` does it inside its own
    step). The learning rate can be changed later with :func:`set_lr` (e.g. a per-epoch decay).
    ``skip_threshold`` (FusedOptim only): skip every update whose total gradient 2-norm exceeds it
    (VDVAE's skip; counted in ``optim.skipped``, read with ``optim.take_skipped()``).
    """
    from pyro_vae.core import checks as validation

    validation.check_choice("optimizer", name, tuple(OPTIMIZERS), "optimizer")
    validation.check_option("lr", lr)
    validation.check_option("clip_norm", clip_norm)
    holder = {"lr": lr}
    clip_args = None
    if clip_norm and name == "clipped-adam":
        holder["clip_norm"] = clip_norm
    elif clip_norm:
        clip_args = {"clip_norm": clip_norm}
    if skip_threshold is not None:
        validation.check_option("skip_threshold", skip_threshold)
        if not fused:
            raise ValueError("skip_threshold needs the fused optimizer (fused=True)")
    cls = FusedOptim if fused else pyro.optim.PyroOptim
    extra = {"skip_threshold": skip_threshold} if skip_threshold is not None else {}
    optim = cls(OPTIMIZERS[name], lambda param_name: dict(holder), clip_args, **extra)
    optim._lr_holder = holder
    return optim


def set_lr(optim, lr):
    """Set the learning rate of every parameter's optimizer, present and future (each torch
    optimizer once)."""
    optim._lr_holder["lr"] = lr
    objs = {id(o): o for o in optim.optim_objs.values()}
    for opt in objs.values():
        for group in opt.param_groups:
            group["lr"] = lr
