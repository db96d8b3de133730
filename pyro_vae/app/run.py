"""The pieces of a training run (:func:`pyro_vae.app.experiment.train`) built from its checked
:class:`~pyro_vae.app.config.Plan`: its log file, and the trainer with its listeners, the KL
schedule and the estimator. Their options were checked where they entered (the
:class:`~pyro_vae.app.config.Config`), so the pieces are made with ``validate_args=False``."""

import contextlib
import logging
import os

from pyro_vae.estimators.kl_balance import KLBalanced_ELBO
from pyro_vae.estimators.spectral_reg import SpectralPenalty, spectral_regularized
from pyro_vae.estimators.variants import FreeBits_ELBO
from pyro_vae.training import distributed
from pyro_vae.training.console import Console
from pyro_vae.training.figures import Evaluation
from pyro_vae.training.guards import NaNGuard
from pyro_vae.training.model_epochs import ModelEpochs
from pyro_vae.training.optim import Optimization
from pyro_vae.training.tensorboard import TensorBoard
from pyro_vae.training.time_budget import TimeBudget
from pyro_vae.training.trainer import Trainer
from pyro_vae.training.weight_ema import WeightEMA

# the run's log: the trainer's log lines, and the traceback of a failed command (cli.py)
LOG = "pyro-vae.log"


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


def _pair(plan, vae, device):
    """``(model, guide, elbo, before_epoch, modules)`` of the run: ``vae``'s pair with its KL
    schedule (β-VAE, KL warm-up: tensors set before each epoch, also after --resume, which the
    traced step reads), free bits, KL balancing and spectral regularization."""
    config, schedule = plan.config, plan.schedule
    model, guide, elbo, before_epoch, modules = vae.model, vae.guide, config.elbo, None, [vae]
    if not schedule.is_identity or config.free_bits:
        model, guide = schedule.weighted(model, device), schedule.weighted(guide, device)
        before_epoch = lambda t: schedule.set_epoch(t.epoch)  # noqa: E731
        if config.free_bits or config.kl_balance:
            variant = KLBalanced_ELBO if config.kl_balance else FreeBits_ELBO
            elbo = variant(config.particles, config.free_bits, validate_args=False)
    if config.spectral_reg:  # its power iteration's buffers: in the checkpoint, train/eval mode
        modules.append(SpectralPenalty(vae, config.spectral_reg, validate_args=False))
        model = spectral_regularized(model, modules[-1])
    return model, guide, elbo, before_epoch, modules


def build_trainer(plan, vae, data, progress=True):
    """The run's :class:`~pyro_vae.training.trainer.Trainer` of ``vae`` on ``data``, and the keyword
    arguments of its ``fit``: the KL schedule, early stopping, and the model's optional hooks
    (``on_epoch(completed epochs)``, e.g. a temperature's annealing; ``batch_kwargs(data)``, index
    → extra model and guide arguments such as labels)."""
    config = plan.config
    checked = dict(validate_args=False)  # the Config checked every option where it entered
    model, guide, elbo, before_epoch, modules = _pair(plan, vae, data.train.device)
    # --skip-threshold G is nats per image; the built-in models scale the batch to the full-data
    # ELBO of N images, so ‖∇ loss‖ = N · ‖∇ loss per image‖
    skip = None if config.skip_threshold is None else config.skip_threshold * len(data.train)
    optim = Optimization(config.lr, config.optimizer, config.lr_decay, config.clip_norm, skip)
    listeners = [
        Evaluation(config.eval_particles, **checked),
        NaNGuard(config.max_bad_steps, **checked),
        TensorBoard(
            config.log_every,
            config.images_every,
            config.tensorboard,
            samples=plan.spec.prior_samples,
            **checked,
        ),
    ] + ([Console(config.log_every, **checked)] if progress else [])
    if config.weight_ema:
        listeners.append(WeightEMA(config.weight_ema, **checked))
    if config.time_budget:
        listeners.append(TimeBudget(config.time_budget, **checked))
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
        modules=modules,
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
