"""The pieces of a training run (:func:`pyro_vae.app.experiment.train`) built from its checked
:class:`~pyro_vae.app.config.Plan`: the run directory (new, or resumed with the same options), its
log file, the trainer with its listeners, and what is written when it ends."""

import contextlib
import json
import logging
import os

from pyro_vae.app import code_prior
from pyro_vae.app.config import Config
from pyro_vae.core import checks
from pyro_vae.estimators import make_elbo
from pyro_vae.estimators.variants import beta_scale
from pyro_vae.training import distributed
from pyro_vae.training.checkpoint import CHECKPOINT, METRICS
from pyro_vae.training.console import Console
from pyro_vae.training.figures import Evaluation
from pyro_vae.training.guards import NaNGuard
from pyro_vae.training.model_epochs import ModelEpochs
from pyro_vae.training.optim import Optimization
from pyro_vae.training.tensorboard import TensorBoard
from pyro_vae.training.trainer import Trainer

# the run's log: the trainer's log lines, and the traceback of a failed command (cli.py)
LOG = "pyro-vae.log"
# what a resumed run may change: more epochs, and the folder of a moved run
FREE_ON_RESUME = ("epochs", "out")


def check_run_dir(config, resume):
    """``config.out`` holds no run (a new one), or, with ``resume``, a run of the same options
    whose checkpoint loads: refused before any data is read."""
    out = config.out
    config_path = os.path.join(out, "config.json")
    held = [f for f in ("config.json", CHECKPOINT, METRICS) if os.path.exists(os.path.join(out, f))]
    if held and not resume:
        raise checks.RunExistsError(
            f"{out!r} already holds a run ({', '.join(held)}); pass --resume to continue it "
            f"or choose another --out"
        )
    if not resume:
        return
    if not os.path.exists(os.path.join(out, CHECKPOINT)):
        raise checks.MissingFileError(
            f"--resume: {out!r} has no {CHECKPOINT}; start a new run without --resume"
        )
    if not os.path.exists(config_path):
        raise checks.MissingFileError(
            f"--resume: {out!r} has no config.json, so it was not written by pyro-vae "
            f"train; start a new run in another --out"
        )
    checks.load_checkpoint(os.path.join(out, CHECKPOINT))  # corrupt or foreign: fail now
    saved = {k: v for k, v in Config.load(config_path).to_dict().items() if k not in FREE_ON_RESUME}
    if saved != {k: v for k, v in config.to_dict().items() if k not in FREE_ON_RESUME}:
        raise checks.UserError(
            f"--resume: the options differ from those saved in {config_path}; "
            "only --epochs may change when resuming (and --out, for a moved run folder)"
        )


@contextlib.contextmanager
def run_log(out):
    """The package's log lines (the fast-path note, skipped steps) also go to ``OUT/pyro-vae.log``
    inside the block, written by the main process."""
    logger, level = logging.getLogger("pyro_vae"), logging.getLogger("pyro_vae").level
    os.makedirs(out, exist_ok=True)
    if not distributed.is_main():
        yield
        return
    handler = logging.FileHandler(os.path.join(out, LOG))
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S")
    )
    handler.setLevel(logging.INFO)
    logger.setLevel(min(logger.getEffectiveLevel(), logging.INFO))
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        handler.close()


def build_trainer(plan, vae, data, progress=True):
    """The run's :class:`~pyro_vae.training.trainer.Trainer` of ``vae`` on ``data``, and the keyword
    arguments of its ``fit``: the KL schedule, early stopping, and the model's optional hooks
    (``on_epoch(completed epochs)``, e.g. a temperature's annealing; ``batch_kwargs(data)``, index
    → extra model and guide arguments such as labels)."""
    config, schedule = plan.config, plan.schedule
    model, guide, elbo, before_epoch = vae.model, vae.guide, config.elbo, None
    if not schedule.is_identity or config.free_bits:  # β-VAE, KL warm-up, free bits
        # tensors set before each epoch (also after --resume): the traced step reads them
        beta = schedule.weights(data.train.device)
        model, guide = beta_scale(model, beta), beta_scale(guide, beta)
        before_epoch = lambda t: schedule.set_epoch(t.epoch)  # noqa: E731
        if config.free_bits:
            elbo = make_elbo("free-bits", config.particles, free_bits=config.free_bits)
    # --skip-threshold G is nats per image; the built-in models scale the batch to the full-data
    # ELBO of N images, so ‖∇ loss‖ = N · ‖∇ loss per image‖
    skip = None if config.skip_threshold is None else config.skip_threshold * len(data.train)
    optim = Optimization(config.lr, config.optimizer, config.lr_decay, config.clip_norm, skip)
    listeners = [
        Evaluation(config.eval_particles),
        NaNGuard(config.max_bad_steps),
        TensorBoard(
            config.log_every,
            config.images_every,
            enabled=config.tensorboard,
            samples=plan.spec.prior_samples,
        ),
    ] + ([Console(config.log_every)] if progress else [])
    if hasattr(vae, "end_epoch"):  # the model's own work between epochs (vq-vae: its codebooks)
        listeners.append(ModelEpochs(vae))
    fast = False if config.fast == "off" else config.fast
    trainer = Trainer(
        model,
        guide,
        elbo,
        config.particles,
        optim,
        out_dir=config.out,
        modules=[vae],
        fast=fast,
        progress=progress,
        listeners=listeners,
    )
    on_epoch = getattr(vae, "on_epoch", None)
    hooks = dict(
        callback=(lambda t, metrics: on_epoch(t.epoch)) if on_epoch else None,
        batch_kwargs=vae.batch_kwargs(data) if hasattr(vae, "batch_kwargs") else None,
        before_epoch=before_epoch,
        early_stopping=config.early_stopping,
        warmup_epochs=config.kl_warmup_epochs,
    )
    return trainer, hooks


def finish(plan, vae, data, history):
    """What the main process writes when the run ends: ``report.json`` (the model's own
    ``report(data)`` figures, also added to the last row of ``history``) and the run's pictures
    (samples where the model's own prior draws them; a vq-vae's code maps)."""
    config = plan.config
    if hasattr(vae, "report"):
        report = vae.report(data)
        with open(os.path.join(config.out, "report.json"), "w") as f:
            json.dump(report, f, indent=2)
        if history:
            history[-1] = {**history[-1], **report}
    if config.pictures:
        from pyro_vae.evaluation.pictures import save_run_pictures

        vae.eval()
        x, temperature = data.test[:64], config.sample_temperature
        samples = plan.spec.prior_samples
        save_run_pictures(
            vae.model, vae.guide, x, config.out, temperature=temperature, samples=samples
        )
        if hasattr(vae, "codebook_figures"):  # vq-vae: code maps, samples once a prior is fitted
            code_prior.save_pictures(config.out, vae, x)
