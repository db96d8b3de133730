"""``pyro-vae fit-prior RUN``: a learned prior over a vq-vae run's codes
(:class:`~pyro_vae.models.code_prior.CodePrior`) trained into ``RUN/prior/`` (its own
``checkpoint.pt``, ``metrics.jsonl`` and TensorBoard events; ``--resume`` continues it exactly),
and what reads it: ``pyro-vae sample`` decodes codes drawn from it, ``pyro-vae evaluate`` adds its
bound.

The bound under the fitted prior keeps the point-mass guide: ELBO_prior(x) = log p(x | c) +
log p_prior(c) with c the codes of x, so −ELBO_prior / (D ln 2) bounds the bits per dimension of an
8-bit likelihood from above.
"""

import json
import math
import os

import pyro

from pyro_vae.core import checks as validation
from pyro_vae.core.checks import UserError
from pyro_vae.models.code_prior import CodePrior
from pyro_vae.training.figures import Evaluation
from pyro_vae.training.optim import Optimization
from pyro_vae.training.tensorboard import TensorBoard
from pyro_vae.training.trainer import CHECKPOINT, Trainer

PRIOR = "prior"  # the folder in the run directory
OPTIONS = {"channels": 64, "layers": 6, "lr": 3e-4}  # fit-prior's defaults, saved in prior.json


def _options(run_dir, resume, given):
    """The prior's options: ``given`` over :data:`OPTIONS` for a new prior (written to prior.json),
    those of prior.json for a resume (where ``given`` may only repeat them)."""
    out = prior_dir(run_dir)
    path, held = os.path.join(out, "prior.json"), os.path.exists(os.path.join(out, CHECKPOINT))
    if held and not resume:
        raise UserError(
            f"{out!r} already holds a fitted prior; pass --resume (with more --epochs) to continue "
            "it, or delete that folder"
        )
    if resume and not held:
        raise UserError(f"--resume: {out!r} holds no prior yet; run fit-prior without --resume")
    unknown = sorted(set(given) - set(OPTIONS))
    if unknown:
        raise UserError(f"unknown fit-prior option(s) {unknown}; valid: {sorted(OPTIONS)}")
    if resume:
        with open(path) as f:
            saved = json.load(f)
        if any(saved[k] != v for k, v in given.items()):
            raise UserError(f"--resume: the options differ from those saved in {path}")
        return saved
    options = {**OPTIONS, **given}
    for name in ("channels", "layers"):
        validation.check_positive_int(name, options[name])
    validation.check_option("lr", options["lr"])
    os.makedirs(out, exist_ok=True)
    with open(path, "w") as f:
        json.dump(options, f)
    return options


def prior_dir(run_dir):
    return os.path.join(run_dir, PRIOR)


def _check_vq_run(vae, config):
    if not hasattr(vae, "codebook_figures"):
        raise UserError(
            f"fit-prior learns a prior over the codes of a --model vq-vae run; this run's model "
            f"is {config.model!r}"
        )


def fit_prior(run_dir, config, vae, data, epochs=10, resume=False, progress=True, **options):
    """Fit the prior of the vq-vae run in ``run_dir`` (its ``config``, ``vae`` and ``data``, from
    :func:`~pyro_vae.app.experiment.load_run`) for ``epochs`` epochs, counting resumed ones, on
    its training images; return ``(prior, history)``. ``options``: the PixelCNNs' ``channels``
    and ``layers`` and the learning rate ``lr`` (:data:`OPTIONS`), kept in ``RUN/prior/prior.json``
    (a resume takes them from there)."""
    validation.check_positive_int("epochs", epochs, "; e.g. --epochs 10")
    _check_vq_run(vae, config)
    options = _options(run_dir, resume, options)
    pyro.clear_param_store()  # the VQ-VAE's modules keep their weights; only the prior's are fitted
    pyro.set_rng_seed(config.seed)
    size = {k: options[k] for k in ("channels", "layers")}
    prior = CodePrior(vae, num_data=len(data.train), **size).to(data.train.device)
    listeners = [
        Evaluation(diagnostic_images=0),  # test_elbo: log p(c) per test image
        TensorBoard(config.log_every, images_every=0, enabled=config.tensorboard),
    ]
    trainer = Trainer(
        prior.model,
        prior.guide,
        "trace",
        optim=Optimization(options["lr"]),
        out_dir=prior_dir(run_dir),
        modules=[prior],
        fast=False if config.fast == "off" else config.fast,
        progress=progress,
        listeners=listeners,
    )
    history = trainer.fit(data, epochs, config.batch_size, resume=resume)
    if config.pictures:  # the run's samples.png, now drawn from the fitted prior
        save_prior_samples(run_dir, vae, data.test, os.path.join(run_dir, "samples.png"))
    return prior, history


def load_prior(run_dir, vae, x):
    """The fitted :class:`CodePrior` of the run (in eval mode), or None before ``fit-prior``;
    ``x``: images that set the device and register the parameters."""
    path = os.path.join(prior_dir(run_dir), CHECKPOINT)
    if not os.path.exists(path):
        return None
    pyro.clear_param_store()  # the VQ-VAE registers its own again when it is next called
    with open(os.path.join(prior_dir(run_dir), "prior.json")) as f:
        options = json.load(f)
    size = {k: options[k] for k in ("channels", "layers")}
    prior = CodePrior(vae, **size).to(x.device)
    trainer = Trainer(prior.model, prior.guide, modules=[prior], progress=False)
    trainer.load_state_dict(validation.load_checkpoint(path), x[:2])
    prior.eval()
    return prior


def save_prior_samples(run_dir, vae, x, path, n=64, missing_ok=False):
    """Draw ``n`` code maps from the fitted prior, decode them (the mean of p(x | c)) and write
    them as a grid to ``path``; when no prior is fitted, one line says what to run (or, with
    ``missing_ok``, nothing is written and None returned)."""
    from torchvision.utils import save_image

    from pyro_vae.evaluation.pictures import decode

    prior = load_prior(run_dir, vae, x)
    if prior is None and missing_ok:
        return None
    if prior is None:
        raise UserError(
            f"a vq-vae run draws samples from a learned prior over its codes: run "
            f"`pyro-vae fit-prior {run_dir}` first"
        )
    codes = prior.sample(n, x.device)
    latents = {
        site: q.lookup(c).to(x.dtype) for site, q, c in zip(vae.sites, vae.quantizers, codes)
    }
    images = decode(vae.model, latents, x[:1].expand(n, *x.shape[1:]))
    save_image(images.clamp(0, 1).cpu(), path, nrow=8)
    return path


def save_code_maps(run_dir, vae, x):
    """``RUN/code_maps.png``: the code index at every position of each level for the first 8
    images ``x`` (:mod:`pyro_vae.evaluation.code_maps`). Returns its path."""
    from pyro_vae.evaluation import code_maps

    sizes = [q.num_codes for q in vae.quantizers]
    path = os.path.join(run_dir, "code_maps.png")
    return code_maps.save_code_maps(x[:8], vae.code_indices(x[:8]), sizes, path)


def save_pictures(run_dir, vae, x):
    """A vq-vae run's own pictures: ``code_maps.png`` (:func:`save_code_maps`) and, once the prior
    is fitted, ``samples.png`` drawn from it (before, none: codes drawn from the uniform training
    prior decode to noise). Returns the paths written."""
    paths = {"code_maps": save_code_maps(run_dir, vae, x)}
    samples = os.path.join(run_dir, "samples.png")
    if save_prior_samples(run_dir, vae, x, samples, missing_ok=True):
        paths["samples"] = samples
    return paths


def code_figures(run_dir, vae, x, result):
    """``evaluate``'s vq-vae figures on images ``x``: ``codebook_usage`` and ``perplexity`` per
    level and, once the prior is fitted, ``prior_elbo`` (log p(x | c) + log p_prior(c) per image)
    and, for an 8-bit likelihood, ``prior_bits_per_dim``."""
    from pyro_vae.evaluation.terms import elbo_terms

    figures = vae.codebook_figures(x)
    prior = load_prior(run_dir, vae, x)
    if prior is None:
        return figures
    log_prior, _ = elbo_terms(prior.model, prior.guide, x)
    figures["prior_elbo"] = result["recon"] + log_prior.double().mean().item()
    if getattr(vae.likelihood, "eight_bit", False) is True:
        figures["prior_bits_per_dim"] = -figures["prior_elbo"] / (x[0].numel() * math.log(2))
    return figures


__all__ = [
    "code_figures",
    "fit_prior",
    "load_prior",
    "prior_dir",
    "save_code_maps",
    "save_pictures",
    "save_prior_samples",
]
