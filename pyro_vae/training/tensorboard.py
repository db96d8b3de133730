"""TensorBoard event files for a run directory, written from the same rows as ``metrics.jsonl``.

Tags are the keys of the trainer's metrics row, so what TensorBoard shows is what
``metrics.jsonl`` holds: a number ``row[k]`` is the scalar ``k`` (booleans as 0/1), a dict or
list is flattened with ``/`` (``active_units/z``, ``kl_per_dim/z/07``), a string is a text
entry written when it changes (e.g. ``fast_path_note``).  The horizontal axis is the
optimizer step: an epoch's row is written at its last step, ``epoch · steps_per_epoch``,
and the running training loss every ``log_every`` steps under ``running_loss``.  Images:
``samples`` (prior samples, where the model's own prior draws them) and ``reconstructions``
(test inputs above their reconstructions).  ``pyro-vae evaluate`` adds ``eval/SPLIT/…`` (NLL,
bits/dim, ELBO, …).

On resume the writer is opened with ``purge_step`` = the first step after the checkpoint, so
the events of an interrupted epoch are dropped by TensorBoard and no step appears twice.
"""

import logging
import math
import numbers

import torch

from pyro_vae.training.early_stopping import best_epoch
from pyro_vae.training.figures import cuda_devices, eval_mode
from pyro_vae.training.listeners import Listener

logger = logging.getLogger(__name__)

SKIPPED = ("epoch",)  # the step axis already says it


def flatten(row, prefix=""):
    """``(scalars, texts)``: ``{tag: float}`` and ``{tag: str}`` of a metrics row (nested
    dicts/lists joined by ``/``)."""
    scalars, texts = {}, {}
    for key, value in row.items():
        if not prefix and key in SKIPPED:
            continue
        tag = f"{prefix}{key}"
        if isinstance(value, bool):
            scalars[tag] = float(value)
        elif isinstance(value, numbers.Real):
            if math.isfinite(value):
                scalars[tag] = float(value)
        elif isinstance(value, str):
            texts[tag] = value
        elif isinstance(value, dict):
            s, t = flatten(value, tag + "/")
            scalars.update(s)
            texts.update(t)
        elif isinstance(value, (list, tuple)):
            width = len(str(max(len(value) - 1, 0)))
            s, t = flatten({f"{i:0{width}d}": v for i, v in enumerate(value)}, tag + "/")
            scalars.update(s)
            texts.update(t)
    return scalars, texts


class RunWriter:
    """A :class:`torch.utils.tensorboard.SummaryWriter` on a run directory.

    :param log_dir: the run directory (event files ``events.out.tfevents.*`` go there).
    :param purge_step: on resume, the first step after the checkpoint; events at or after it are
        dropped.
    """

    def __init__(self, log_dir, purge_step=None):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir, purge_step=purge_step, flush_secs=30)
        self._texts = {}

    def row(self, row, step):
        """Every scalar of a metrics row at ``step``; each text entry when it differs from the last
        one written."""
        scalars, texts = flatten(row)
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, step)
        for tag, text in texts.items():
            if self._texts.get(tag) != text:
                self.writer.add_text(tag, text, step)
                self._texts[tag] = text

    def scalar(self, tag, value, step):
        self.writer.add_scalar(tag, value, step)

    def images(self, tag, images, step, nrow=8):
        """A grid of images ``[N, C, H, W]`` in [0, 1]."""
        from torchvision.utils import make_grid

        self.writer.add_image(
            tag, make_grid(images.detach().float().clamp(0, 1).cpu(), nrow=nrow, padding=2), step
        )

    def flush(self):
        self.writer.flush()

    def close(self):
        self.writer.close()


@torch.no_grad()
def picture_grids(model, guide, x, n=32, samples=True):
    """``{"samples": [n, ...], "reconstructions": [2n, ...]}``: prior samples (left out with
    ``samples=False``), and rows of 8 inputs above their reconstructions (from the first ``n``
    images of ``x``)."""
    from pyro_vae.evaluation.pictures import prior_samples, reconstructions

    x, grids = x[:n], {}
    if samples:
        drawn = prior_samples(model, x[:1].expand(n, *x.shape[1:]))
        grids["samples"] = drawn.reshape(-1, *x.shape[1:])
    recon = reconstructions(model, guide, x)
    rows = []
    for start in range(0, len(x), 8):
        rows += [x[start : start + 8], recon[start : start + 8].reshape(-1, *x.shape[1:])]
    return {**grids, "reconstructions": torch.cat(rows)}


def log_evaluation(run_dir, result, step, split="test"):
    """Add an evaluation's figures to the run's event files as ``eval/SPLIT/KEY`` at ``step`` (the
    checkpoint's)."""
    writer = RunWriter(run_dir)
    try:
        keep = {
            k: v for k, v in result.items() if k in ("nll", "bits_per_dim", "elbo", "recon", "kl")
        }
        units, sites = result.get("active_units"), result.get("latent_sites") or ["z"]
        if units is not None:  # per site, as in the training rows: active_units/z1, …
            keep["active_units"] = dict(zip(sites, units if isinstance(units, list) else [units]))
        scalars, _ = flatten(keep, f"eval/{split}/")
        for tag, value in scalars.items():
            writer.scalar(tag, value, step)
    finally:
        writer.close()


def evaluated_step(run_dir, config):
    """The step of the parameters an evaluation reads: the last epoch's, or with early stopping the
    best epoch's."""
    import json
    import os

    path = os.path.join(run_dir, "metrics.jsonl")
    rows = [json.loads(line) for line in open(path)] if os.path.exists(path) else []
    best = best_epoch(rows) if config.early_stopping else None
    if best is not None:
        rows = [r for r in rows if r["epoch"] <= best]
    return sum(r.get("steps", 0) for r in rows)


def read_scalars(run_dir):
    """``{tag: [(step, value), …]}`` of the run's event files, read back with TensorBoard's own
    reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


__all__ = [
    "RunWriter",
    "evaluated_step",
    "flatten",
    "log_evaluation",
    "picture_grids",
    "read_scalars",
]


def write_epoch(tb, metrics, step, model=None, guide=None, x=None, modules=(), samples=True):
    """Write the epoch's row at ``step`` and, given images ``x``, the samples (with ``samples``)
    and reconstructions of the pair, then flush: the events are on disk before the checkpoint that
    includes the epoch. Returns False when the pictures failed (e.g. a pair without an observed
    image site), with one warning."""
    tb.row(metrics, step)
    ok = True
    if x is not None:
        try:
            with eval_mode(modules), torch.random.fork_rng(devices=cuda_devices(x)):
                grids = picture_grids(model, guide, x, samples=samples)
            for tag, images in grids.items():
                tb.images(tag, images, step)
        except Exception as e:  # noqa: BLE001 - training goes on without the pictures
            logger.warning(f"TensorBoard images turned off: {type(e).__name__}: {e}")
            ok = False
    tb.flush()
    return ok


class TensorBoard(Listener):
    """TensorBoard event files in the run directory: every metrics row, the running loss every
    ``log_every`` steps, and pictures (samples, reconstructions) every ``images_every`` epochs and
    at the last (0: none; ``samples=False``: reconstructions only, for a model whose own prior
    does not draw samples). On resume the writer drops the events of an interrupted epoch
    (``purge_step``)."""

    order = 30
    options = {"log_every": "log_every", "images_every": "images_every"}

    def __init__(
        self, log_every=50, images_every=1, enabled=True, samples=True, validate_args=True
    ):
        self.log_every, self.images_every, self.enabled = log_every, images_every, enabled
        self.samples = samples
        self.writer = None
        if validate_args:
            self.check_options()

    def on_run_start(self, trainer):
        if self.enabled and trainer.writes:
            self.writer = RunWriter(
                trainer.out_dir, purge_step=trainer.epoch * trainer.run.steps_per_epoch + 1
            )

    def on_step_end(self, trainer, step, loss, ok):
        if self.writer and step % self.log_every == 0 and step > trainer.bad_steps:
            self.writer.scalar(
                "running_loss",
                trainer.running_loss(step),
                (trainer.epoch) * trainer.run.steps_per_epoch + step,
            )

    def on_epoch_end(self, trainer, metrics):
        if not self.writer:
            return
        run = trainer.run
        pictures = (
            run.test_x is not None
            and self.images_every
            and (trainer.epoch % self.images_every == 0 or trainer.epoch == run.epochs)
        )
        if not write_epoch(
            self.writer,
            metrics,
            trainer.epoch * run.steps_per_epoch,
            trainer.model,
            trainer.guide,
            run.test_x if pictures else None,
            trainer.modules,
            self.samples,
        ):
            self.images_every = 0

    def on_run_end(self, trainer):
        if self.writer:
            self.writer.close()
            self.writer = None
