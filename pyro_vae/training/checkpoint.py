"""Run-directory files written so that no crash, interrupt or NaN loses them: atomic writes, the
state a resume restores (parameters, module buffers, optimizer and RNG states) and its restoring,
and the two listeners that write them.

Run directory (``out_dir``):

=================== ======================================================================
``metrics.jsonl``   one JSON object per completed epoch: ``epoch``, ``train_loss`` (mean
                    −ELBO per training image over the finite steps, nats), ``test_elbo``
                    (mean ELBO per test image), ``seconds``, ``lr`` (at the epoch's end),
                    ``steps``, ``bad_steps`` (skipped non-finite steps), ``fast_path``
                    (whether the epoch's steps replayed one traced graph) and
                    ``fast_path_note`` (how, or why not); ``test_recon`` and ``test_kl``
                    (``test_elbo = test_recon − test_kl``); ``validation_elbo`` when the data
                    has a validation split; ``active_units`` and ``kl_per_dim`` (``{site: …}``,
                    on the first ``diagnostic_images`` test images); ``skipped_updates`` with
                    ``skip_threshold`` (updates skipped for their gradient norm); in the first
                    row a process trains, ``compile_seconds`` (0 when nothing was compiled) and
                    ``compile_cache_hit`` (whether inductor's cache held the graph),
                    ``fast_route`` ("compile", "trace" or "off": how that process's steps
                    ran) and ``commit`` (the code's git commit, ``+dirty`` if edited)
``checkpoint.pt``   epoch, params, module buffers, optimizer state, RNG states, learning-rate
                    scale, the metrics of every completed epoch, (early stopping) the best
                    epoch's parameters and the listeners' states (``listeners``, e.g. the
                    weights' moving average of ``--weight-ema``); written atomically
                    (temporary file, fsync, rename) before the first epoch and after each one
``best.pt``         early stopping: ``epoch``, ``params``, ``buffers`` of the epoch with the
                    highest ``validation_elbo``
``events.out.*``    TensorBoard event files: the same rows, the running loss, pictures
=================== ======================================================================
"""

import json
import os

import pyro
import torch

from pyro_vae.core.checks import UserError
from pyro_vae.core.pair import checked_probe
from pyro_vae.training.listeners import Listener

CHECKPOINT = "checkpoint.pt"
BEST = "best.pt"
METRICS = "metrics.jsonl"


def atomic_save(obj, path):
    """``torch.save`` to a temporary file in the same folder, fsync it, then rename it over
    ``path``."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_write_lines(lines, path):
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.writelines(lines)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def capture(modules, optim, **extra):
    """The state to save: every Pyro parameter, the ``modules``' buffers, the optimizer's and the
    RNGs' states, and ``extra`` (epoch, history, …)."""
    rng = pyro.util.get_rng_state()
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    store = pyro.get_param_store()
    return {
        "params": {name: p.detach().cpu() for name, p in store.named_parameters()},
        "buffers": {i: {k: b.cpu() for k, b in m.named_buffers()} for i, m in enumerate(modules)},
        "optim": optim.get_state(),
        "rng": rng,
        **extra,
    }


def restore(state, modules, optim):
    """Put a :func:`capture` back: parameters (already registered), buffers, optimizer and RNG
    states.

    A checkpoint of another model raises UserError naming the first differing parameters.
    """
    store = pyro.get_param_store()
    current = dict(store.named_parameters())
    missing = sorted(set(state["params"]) - set(current))
    extra = sorted(set(current) - set(state["params"]))
    fix = (
        "load it with the options it was trained with, or with the pyro_vae version that wrote it "
        "(the conv nets' layers changed in issue #33)"
    )
    if missing or extra:
        raise UserError(
            f"checkpoint does not match this model: missing here {missing[:5]}, "
            f"not in checkpoint {extra[:5]}; {fix}"
        )
    for name, value in state["params"].items():
        if current[name].shape != value.shape:
            raise UserError(
                f"checkpoint does not match this model: parameter {name!r} has shape "
                f"{tuple(value.shape)} in the checkpoint and {tuple(current[name].shape)} here; "
                + fix
            )
    buffers = state.get("buffers", {})
    for i, m in enumerate(modules):
        for k, b in m.named_buffers():
            if k not in buffers.get(i, {}) or buffers[i][k].shape != b.shape:
                raise UserError(
                    f"checkpoint does not match this model: buffer {k!r} of module {i} is "
                    f"missing or has another shape"
                )
    with torch.no_grad():
        for name, value in state["params"].items():
            current[name].copy_(value)
        for i, m in enumerate(modules):
            for k, b in m.named_buffers():
                b.copy_(buffers[i][k])
    # the optimizer state now, not lazily at the first step, so that set_lr reaches it
    optim.set_state(state["optim"])
    pending = [current[k] for k in sorted(state["optim"]) if k in current]
    for p in pending:
        p.grad = None
    optim(pending)  # no gradients: creates the optimizer and loads the states without a step
    rng = dict(state["rng"])
    cuda = rng.pop("cuda", None)
    pyro.util.set_rng_state(rng)
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def resume(trainer, state, x):
    """Put a checkpoint's ``state`` back into ``trainer``: the pair traced once on the batch ``x``
    registers every parameter, then :func:`restore`, then the epoch, the learning-rate scale, the
    metrics rows, the best epoch and the listeners' own states. A checkpoint of another model
    raises ValueError naming the first differing parameters."""
    args, kwargs = trainer.batch_call(x, torch.arange(len(x), device=x.device))
    checked_probe(trainer.model, trainer.guide, *args, data_plate=trainer.data_plate, **kwargs)
    restore(state, trainer.modules, trainer.optim)
    trainer.epoch = state["epoch"]
    trainer.lr_scale = state.get("lr_scale", 1.0)
    trainer.history = list(state.get("history", []))
    trainer.best = state.get("best")
    kept = state.get("listeners", {})
    for listener in trainer.listeners:
        if type(listener).__name__ in kept:
            listener.load_state_dict(kept[type(listener).__name__])


class MetricsFile(Listener):
    """``metrics.jsonl``: one JSON row per completed epoch, appended at its end; rewritten from the
    checkpoint's copy of the rows when a run starts, so a resumed run's file holds exactly the
    completed epochs."""

    order = 20

    def on_run_start(self, trainer):
        if trainer.writes:
            atomic_write_lines(
                [json.dumps(m) + "\n" for m in trainer.history],
                os.path.join(trainer.out_dir, METRICS),
            )

    def on_epoch_end(self, trainer, metrics):
        if trainer.writes:
            with open(os.path.join(trainer.out_dir, METRICS), "a") as f:
                f.write(json.dumps(metrics) + "\n")


class Checkpoints(Listener):
    """``checkpoint.pt``, everything the next epoch reads (:meth:`Trainer.state_dict`), written
    atomically before the first epoch and after each one; ``best.pt``, the best epoch's parameters
    under early stopping."""

    order = 40  # after the metrics file and TensorBoard: their rows are on disk first

    def on_run_start(self, trainer):
        if not trainer.writes:
            return
        if trainer.epoch == 0:  # an interrupted first epoch still resumes exactly
            trainer.save_checkpoint()
        if trainer.best is not None:
            atomic_save(trainer.best, os.path.join(trainer.out_dir, BEST))

    def on_epoch_end(self, trainer, metrics):
        if not trainer.writes:
            return
        trainer.save_checkpoint()
        if trainer.best is not None and trainer.best["epoch"] == trainer.epoch:
            atomic_save(trainer.best, os.path.join(trainer.out_dir, BEST))


def source_commit():
    """The git commit of the code that runs (``+dirty`` when its tracked files differ), or None."""
    import subprocess

    here = os.path.dirname(os.path.abspath(__file__))
    try:
        git = ["git", "-C", here]
        head = subprocess.run(
            git + ["rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
        if head.returncode:
            return None
        dirty = subprocess.run(
            git + ["status", "--porcelain", "--untracked-files=no", "--", ".."],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return head.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None
