"""SVI training loop over device-resident data, with metrics, atomic checkpoints and exact resume.

The trainer takes any ``model``/``guide`` callables whose first argument is the
batch ``x``; the built-in VAE's ``vae.model`` and ``vae.guide`` are one such pair.

Run directory (``out_dir``):

=================== ======================================================================
``metrics.jsonl``   one JSON object per epoch: ``epoch``, ``train_loss`` (mean −ELBO per
                    training image, nats), ``test_elbo`` (mean ELBO per test image),
                    ``seconds``, ``lr``, ``steps``
``checkpoint.pt``   params, optimizer state, RNG states and epoch, written atomically
=================== ======================================================================
"""
import json
import math
import os
import time

import pyro
import pyro.optim
import torch
from pyro import poutine
from pyro.infer import SVI
from pyro.infer.util import zero_grads
from tqdm.auto import tqdm

from .data import ImageData
from .estimators import make_elbo
from .evaluation import elbo_per_point
from .importance import guess_max_plate_nesting

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"


class DeviceSVI(SVI):
    """:class:`pyro.infer.SVI` whose :meth:`step` returns the loss as a tensor on the data's device.

    It uses the estimator's ``differentiable_loss`` and never calls ``.item()``, so a
    step does not wait for the device; estimators without ``differentiable_loss`` fall
    back to ``loss_and_grads``.
    """

    def step(self, *args, **kwargs):
        if not hasattr(self.loss, "differentiable_loss"):
            return torch.as_tensor(super().step(*args, **kwargs))
        with poutine.trace(param_only=True) as param_capture:
            loss = self.loss.differentiable_loss(self.model, self.guide, *args, **kwargs)
            loss.backward()
        params = {site["value"].unconstrained() for site in param_capture.trace.nodes.values()}
        self.optim(params)
        zero_grads(params)
        return loss.detach()


def resolve_device(device="auto"):
    """``auto`` → ``cuda`` when available, else ``cpu``; checks that a requested CUDA device exists."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} was asked for but CUDA is not available; use --device cpu or auto")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r} does not exist: this machine has {torch.cuda.device_count()} GPU(s)")
    return dev


def make_optimizer(name="adam", lr=1e-3, clip_norm=None):
    """A :mod:`pyro.optim` optimizer whose learning rate can be changed later with :func:`set_lr`."""
    state = {"lr": lr}
    cls = {"adam": pyro.optim.Adam, "clipped-adam": pyro.optim.ClippedAdam}[name]
    clip_args = {"clip_norm": clip_norm} if clip_norm else {}
    optim = cls(lambda param_name: dict(state), clip_args=clip_args)
    optim._pyro_vae_lr = state
    return optim


def set_lr(optim, lr):
    """Set the learning rate of every parameter's optimizer, present and future."""
    optim._pyro_vae_lr["lr"] = lr
    for opt in optim.optim_objs.values():
        for group in opt.param_groups:
            group["lr"] = lr


def _atomic_save(obj, path):
    tmp = f"{path}.tmp{os.getpid()}"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def data_scale(model, guide, x, data_plate="data"):
    """The factor ``full_size / batch_size`` of the pair's data plate (1 when not subsampled)."""
    with poutine.block():
        trace = poutine.trace(guide).get_trace(x)
    for site in trace.nodes.values():
        for f in site.get("cond_indep_stack", ()):
            if f.name == data_plate and f.full_size:
                return f.full_size / f.size
    return 1.0


class Trainer:
    """Stochastic variational inference for a model/guide pair.

    :param model: Pyro model ``model(x)``.
    :param guide: Pyro guide ``guide(x)`` with the same data plate.
    :param elbo: an estimator name for :func:`~pyro_vae.make_elbo` or a :class:`pyro.infer.ELBO`.
    :param out_dir: run directory for ``metrics.jsonl`` and ``checkpoint.pt`` (None: write nothing).
    :param modules: ``nn.Module`` s to switch between train and eval mode (optional).
    """

    def __init__(self, model, guide, elbo="trace", particles=1, lr=1e-3, optimizer="adam", lr_decay=1.0,
                 clip_norm=None, out_dir=None, log_every=50, eval_particles=1, progress=True, modules=(),
                 extra_state=None):
        self.model, self.guide = model, guide
        self.elbo = make_elbo(elbo, particles) if isinstance(elbo, str) else elbo
        self.base_lr, self.lr_decay = lr, lr_decay
        self.optim = make_optimizer(optimizer, lr, clip_norm)
        self.svi = DeviceSVI(model, guide, self.optim, self.elbo)
        self.out_dir = out_dir
        self.log_every = log_every
        self.eval_particles = eval_particles
        self.progress = progress
        self.modules = list(modules)
        self.extra_state = extra_state or {}
        self.epoch = 0
        if out_dir:
            os.makedirs(out_dir, exist_ok=True)

    # -- checkpoints -------------------------------------------------------------------------
    @property
    def checkpoint_path(self):
        return os.path.join(self.out_dir, CHECKPOINT)

    def state_dict(self):
        rng = pyro.util.get_rng_state()
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        store = pyro.get_param_store()
        return {
            "epoch": self.epoch,
            "params": {name: p.detach().cpu() for name, p in store.named_parameters()},
            "buffers": {i: {k: b.cpu() for k, b in m.named_buffers()} for i, m in enumerate(self.modules)},
            "optim": self.optim.get_state(),
            "rng": rng,
            **self.extra_state,
        }

    def save_checkpoint(self, path=None):
        _atomic_save(self.state_dict(), path or self.checkpoint_path)

    def load_state_dict(self, state, x):
        """Restore a :meth:`state_dict`; ``x`` is a batch used to register the pair's parameters first."""
        guess_max_plate_nesting(self.model, self.guide, x)  # registers every pyro.param / pyro.module
        store = pyro.get_param_store()
        current = dict(store.named_parameters())
        missing = sorted(set(state["params"]) - set(current))
        extra = sorted(set(current) - set(state["params"]))
        if missing or extra:
            raise ValueError(f"checkpoint does not match this model: missing here {missing[:5]}, "
                             f"not in checkpoint {extra[:5]}")
        for name, value in state["params"].items():
            if current[name].shape != value.shape:
                raise ValueError(f"checkpoint does not match this model: parameter {name!r} has shape "
                                 f"{tuple(value.shape)} in the checkpoint and {tuple(current[name].shape)} here")
            with torch.no_grad():
                current[name].copy_(value)
        for i, m in enumerate(self.modules):
            for k, b in m.named_buffers():
                b.copy_(state["buffers"][i][k])
        self.optim.set_state(state["optim"])
        rng = dict(state["rng"])
        cuda = rng.pop("cuda", None)
        pyro.util.set_rng_state(rng)
        if cuda is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(cuda)
        self.epoch = state["epoch"]

    def _truncate_metrics(self):
        """Keep the metrics of checkpointed epochs only, so a resumed run logs every epoch exactly once."""
        path = os.path.join(self.out_dir, METRICS)
        if not os.path.exists(path):
            return
        with open(path) as f:
            lines = [line for line in f if line.strip() and json.loads(line)["epoch"] <= self.epoch]
        with open(path + ".tmp", "w") as f:
            f.writelines(lines)
        os.replace(path + ".tmp", path)

    # -- the loop ------------------------------------------------------------------------------
    def _set_training(self, mode):
        for m in self.modules:
            m.train(mode)

    def evaluate_elbo(self, x, batch_size=1000):
        """Mean ELBO per image of ``x`` (nats)."""
        self._set_training(False)
        try:
            return elbo_per_point(self.model, self.guide, x, num_particles=self.eval_particles,
                                  batch_size=batch_size).mean().item()
        finally:
            self._set_training(True)

    def fit(self, data, epochs, batch_size=128, test_x=None, resume=False, callback=None):
        """Train for ``epochs`` epochs (in total, counting resumed ones); return the list of epoch metrics.

        :param data: an :class:`~pyro_vae.data.ImageData` or a tensor of training images.
        :param test_x: images for ``test_elbo`` (default: ``data.test``).
        :param callback: called as ``callback(trainer, metrics)`` after each epoch.
        """
        if torch.is_tensor(data):
            data = ImageData(train=data, train_labels=None, test=test_x, test_labels=None, binarize="none")
        test_x = data.test if test_x is None else test_x
        first = next(data.batches(batch_size, shuffle=False))[0]
        if resume:
            if not os.path.exists(self.checkpoint_path):
                raise FileNotFoundError(f"--resume: no checkpoint at {self.checkpoint_path}")
            self.load_state_dict(torch.load(self.checkpoint_path, weights_only=False), first)
            self._truncate_metrics()
        scale = data_scale(self.model, self.guide, first)
        history = []
        steps_per_epoch = math.ceil(len(data.train) / batch_size)
        self._set_training(True)
        while self.epoch < epochs:
            set_lr(self.optim, self.base_lr * self.lr_decay**self.epoch)
            start = time.perf_counter()
            total = torch.zeros((), device=first.device)
            bar = tqdm(data.batches(batch_size), total=steps_per_epoch, disable=not self.progress,
                       desc=f"epoch {self.epoch + 1}/{epochs}", leave=False)
            for step, (x, _) in enumerate(bar, 1):
                total += self.svi.step(x) / (scale * len(x))
                if self.progress and step % self.log_every == 0:
                    bar.set_postfix(loss=f"{total.item() / step:.2f}")
            self.epoch += 1
            metrics = {"epoch": self.epoch, "train_loss": total.item() / steps_per_epoch}
            if test_x is not None:
                metrics["test_elbo"] = self.evaluate_elbo(test_x)
            metrics.update(seconds=time.perf_counter() - start, lr=self.base_lr * self.lr_decay**(self.epoch - 1),
                           steps=steps_per_epoch)
            history.append(metrics)
            if self.out_dir:
                with open(os.path.join(self.out_dir, METRICS), "a") as f:
                    f.write(json.dumps(metrics) + "\n")
                self.save_checkpoint()
            if self.progress:
                tqdm.write(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items()))
            if callback:
                callback(self, metrics)
        return history
