"""A training run from its checked :class:`~pyro_vae.app.config.Plan`, and its pieces: the run
directory (new, or resumed with the same options), its log file, its data, the trainer with its
listeners, and what is written when it ends."""

import contextlib
import json
import logging
import os

import pyro

from pyro_vae.app.config import Config
from pyro_vae.core import checks
from pyro_vae.data import load_data
from pyro_vae.estimators import make_elbo
from pyro_vae.estimators.variants import beta_scale
from pyro_vae.training import distributed
from pyro_vae.training.checkpoint import CHECKPOINT, METRICS
from pyro_vae.training.console import Console
from pyro_vae.training.figures import Evaluation
from pyro_vae.training.guards import NaNGuard
from pyro_vae.training.optim import Optimization
from pyro_vae.training.tensorboard import TensorBoard
from pyro_vae.training.trainer import Trainer

# the run's log: the trainer's log lines, and the traceback of a failed command (cli.py)
LOG = "pyro-vae.log"
# what a resumed run may change: more epochs, and the folder of a moved run
FREE_ON_RESUME = ("epochs", "out")


def train(plan, resume=False, progress=True):
    """Train the checked run ``plan`` (:func:`~pyro_vae.app.config.check_config`) into its
    ``config.out``; return ``(vae, data, history)`` (:func:`pyro_vae.app.experiment.train`)."""
    config = plan.config
    check_run_dir(config, resume)
    device = checks.check_device(config.device)
    device = distributed.init(device)  # torchrun: one rank per process
    pyro.clear_param_store()
    pyro.set_rng_seed(config.seed)
    vae, data, trainer, hooks = build(plan, device, progress)
    with run_log(config.out):
        if distributed.is_main():
            config.save(os.path.join(config.out, "config.json"))
        history = trainer.fit(data, config.epochs, config.batch_size, resume=resume, **hooks)
        if distributed.is_main() and hasattr(vae, "report"):  # the model's own final figures
            report = vae.report(data)
            with open(os.path.join(config.out, "report.json"), "w") as f:
                json.dump(report, f, indent=2)
            if history:
                history[-1] = {**history[-1], **report}
        if distributed.is_main() and config.pictures:
            from pyro_vae.evaluation.pictures import save_run_pictures

            vae.eval()
            x, temperature = data.test[:64], config.sample_temperature
            save_run_pictures(vae.model, vae.guide, x, config.out, temperature=temperature)
        distributed.barrier()  # the other ranks wait for rank 0's report and pictures
    return vae, data, history


def check_run_dir(config, resume):
    """``config.out`` holds no run (a new one), or, with ``resume``, a run of the same options
    whose checkpoint loads: refused before any data is read."""
    out = config.out
    config_path = os.path.join(out, "config.json")
    held = [f for f in ("config.json", CHECKPOINT, METRICS) if os.path.exists(os.path.join(out, f))]
    if held and not resume:
        raise FileExistsError(
            f"{out!r} already holds a run ({', '.join(held)}); pass --resume to continue it "
            f"or choose another --out"
        )
    if not resume:
        return
    if not os.path.exists(os.path.join(out, CHECKPOINT)):
        raise FileNotFoundError(
            f"--resume: {out!r} has no {CHECKPOINT}; start a new run without --resume"
        )
    if not os.path.exists(config_path):
        raise FileNotFoundError(
            f"--resume: {out!r} has no config.json, so it was not written by pyro-vae "
            f"train; start a new run in another --out"
        )
    checks.load_checkpoint(os.path.join(out, CHECKPOINT))  # corrupt or foreign: fail now
    saved = {k: v for k, v in Config.load(config_path).to_dict().items() if k not in FREE_ON_RESUME}
    if saved != {k: v for k, v in config.to_dict().items() if k not in FREE_ON_RESUME}:
        raise ValueError(
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


def run_data(config, device):
    """The run's :class:`~pyro_vae.data.ImageData` on ``device``, as its data options say."""
    return load_data(
        config.dataset,
        config.data_dir,
        config.binarize,
        config.validation,
        config.limit,
        config.test_limit,
        device=device,
        exclude_class=config.exclude_class,
        image_size=config.image_size,
        test_fraction=config.test_fraction,
    )


def build(plan, device, progress=True):
    """``(vae, data, trainer, hooks)``: the run's data on ``device``, its model built by the
    model's spec, the :class:`~pyro_vae.training.trainer.Trainer` and the keyword arguments of its
    ``fit``: the KL schedule, early stopping, and the model's optional hooks (``on_epoch(completed
    epochs)``, e.g. a temperature's annealing; ``batch_kwargs(data)``, index → extra model and
    guide arguments such as labels)."""
    config, schedule = plan.config, plan.schedule
    data = run_data(config, device)
    vae = plan.spec(config, data.x_shape, len(data.train)).to(device)
    model, guide, elbo, before_epoch = vae.model, vae.guide, config.elbo, None
    if not schedule.is_identity or config.free_bits:  # β-VAE, KL warm-up, free bits
        # tensors set before each epoch (also after --resume): the traced step reads them
        beta = schedule.weights(device)
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
        TensorBoard(config.log_every, config.images_every, enabled=config.tensorboard),
    ] + ([Console(config.log_every)] if progress else [])
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
    return vae, data, trainer, hooks
