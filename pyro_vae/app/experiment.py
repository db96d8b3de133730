"""Runs built from a :class:`~pyro_vae.app.config.Config`: the plain Python calls behind ``pyro-vae
train|evaluate|sample``.

A run directory holds ``config.json``, ``metrics.jsonl``, ``checkpoint.pt``, ``samples.png``,
``reconstructions.png``, ``interpolations.png``, ``traversals.png``, ``loss.png`` and, after
evaluation, ``eval.json`` and ``latent_scatter.png`` (``anomaly.json``,
``denoise.json``/``denoise.png`` and ``embeddings_SPLIT.npy`` after the corresponding commands;
``gradient_snr.json`` and ``gradient_snr.png`` after ``gradient-snr``). A vq-vae run adds
``code_maps.png``, and has ``samples.png`` only once ``fit-prior`` has fitted its prior.
"""

import json
import os

import pyro
import torch

from pyro_vae.app import code_prior, run
from pyro_vae.app.config import Config, check_config
from pyro_vae.app.run import LOG
from pyro_vae.core import checks as validation
from pyro_vae.data import load_data
from pyro_vae.models import MODELS
from pyro_vae.training import distributed
from pyro_vae.training.tensorboard import evaluated_step, log_evaluation
from pyro_vae.training.trainer import CHECKPOINT, Trainer, resolve_device
from pyro_vae.training.weight_ema import averaged

__all__ = ["LOG", "load_run", "resolve_device", "train"]


def train(config, resume=False, progress=True):
    """Train the run described by ``config`` into ``config.out``; return ``(vae, data, history)``.

    Every refusal (:func:`~pyro_vae.app.config.check_config`: the options, the run directory, the
    device) happens before any data is read. The run's log lines (the fast-path note, skipped
    steps) go to ``OUT/pyro-vae.log``. When it ends, the main process writes ``report.json`` (the
    model's own ``report(data)`` figures, also added to the last row of ``history``) and the run's
    pictures; under torchrun every rank returns only when rank 0 has written its files.
    """
    plan = check_config(config, resume)  # no data read yet
    config = plan.config  # the model's defaults filled in
    device = distributed.init(plan.device)  # torchrun: one rank per process
    pyro.clear_param_store()
    pyro.set_rng_seed(config.seed)
    data = load_data(**plan.data, device=device)
    vae = plan.spec(config, data.x_shape, len(data.train)).to(device)
    with run.run_log(config.out):
        main = distributed.is_main()
        if main:
            config.save(os.path.join(config.out, "config.json"))
        trainer, hooks = run.build_trainer(plan, vae, data, progress)
        history = trainer.fit(data, config.epochs, config.batch_size, resume=resume, **hooks)
        if main and hasattr(vae, "report"):
            report = vae.report(data)
            with open(os.path.join(config.out, "report.json"), "w") as f:
                json.dump(report, f, indent=2)
            if history:
                history[-1] = {**history[-1], **report}
        if main and config.pictures:
            from pyro_vae.evaluation.pictures import save_run_pictures

            vae.eval()
            x, temperature = data.test[:64], config.sample_temperature
            samples = plan.spec.prior_samples  # none from a vq-vae's uniform training prior
            save_run_pictures(
                vae.model, vae.guide, x, config.out, temperature=temperature, samples=samples
            )
            if hasattr(vae, "codebook_figures"):  # vq-vae: code maps (no prior is fitted yet)
                code_prior.save_code_maps(config.out, vae, x)
        distributed.barrier()  # the other ranks wait for rank 0's report and pictures
    return vae, data, history


def load_run(run_dir, device="auto", data=True):
    """Rebuild a run from its directory: ``(config, vae, data)`` with the checkpoint's parameters,
    in eval mode."""
    config_path = os.path.join(run_dir, "config.json")
    ckpt_path = os.path.join(run_dir, CHECKPOINT)
    for path in (config_path, ckpt_path):
        if not os.path.exists(path):
            raise validation.MissingFileError(
                f"{run_dir!r} is not a finished run: {os.path.basename(path)} is missing"
            )
    plan = check_config(Config.load(config_path))
    config = plan.config
    device = resolve_device(device)
    state = validation.load_checkpoint(ckpt_path)
    if config.early_stopping and state.get("best"):  # the parameters of the best epoch
        state = {**state, **{k: state["best"][k] for k in ("params", "buffers")}}
    else:  # --weight-ema: the weights' moving average
        state = averaged(state)
    pyro.clear_param_store()
    dataset = load_data(**plan.data, device=device) if data else None
    x_shape = dataset.x_shape if dataset else (1, 28, 28)
    num_data = len(dataset.train) if dataset else None
    vae = plan.spec(config, x_shape, num_data).to(device)
    trainer = Trainer(
        vae.model, vae.guide, config.elbo, config.particles, modules=[vae], progress=False
    )
    probe = dataset.test[:2] if dataset else torch.zeros(2, *x_shape, device=device)
    trainer.load_state_dict(state, probe)
    vae.eval()
    return config, vae, dataset


def _eval_split(data, split, limit):
    x, labels = data.split(split)
    if limit is not None:
        if limit < 2:
            raise validation.UserError(f"--limit must be at least 2 images, got {limit}")
        x, labels = x[:limit], labels[:limit]
    return x, labels


def evaluate_run(run_dir, nll_samples=5000, limit=None, split="test", device="auto", pictures=True):
    """Evaluate a run on ``split``; write and return the ``eval.json`` figures (see
    :func:`~pyro_vae.evaluate`).

    With ``pictures``, also (re)writes the run's PNGs from the evaluated images, including
    interpolations, traversals and the scatter of posterior means coloured by label.
    """
    from pyro_vae.evaluation.applications import embeddings
    from pyro_vae.evaluation.metrics import evaluate
    from pyro_vae.evaluation.pictures import save_latent_scatter, save_run_pictures

    config, vae, data = load_run(run_dir, device)
    x, labels = _eval_split(data, split, limit)
    result = {"split": split, **evaluate(vae.model, vae.guide, x, nll_samples=nll_samples)}
    if hasattr(vae, "codebook_figures"):  # vq-vae: codebook usage, perplexity, its prior's bound
        result.update(code_prior.code_figures(run_dir, vae, x, result))
    if config.tensorboard:
        log_evaluation(run_dir, result, evaluated_step(run_dir, config), split)
    if pictures:
        samples = MODELS[config.model].prior_samples  # vq-vae: from its fitted prior, below
        paths = save_run_pictures(
            vae.model,
            vae.guide,
            x[:64],
            run_dir,
            temperature=config.sample_temperature,
            samples=samples,
        )
        if hasattr(vae, "codebook_figures"):  # vq-vae: code maps, samples from its fitted prior
            paths.update(code_prior.save_pictures(run_dir, vae, x))
        save_latent_scatter(
            embeddings(vae.guide, x[:5000]),
            labels[:5000],
            os.path.join(run_dir, "latent_scatter.png"),
            title=f"posterior means, {split} ({min(len(x), 5000)} images)",
        )
        result["pictures"] = sorted(
            os.path.basename(p) for p in list(paths.values()) + ["latent_scatter.png"]
        )
    with open(os.path.join(run_dir, "eval.json"), "w") as f:
        json.dump(result, f, indent=2)
    return result


def anomaly_run(
    run_dir, anomaly_class=None, score="nll", num_samples=1000, limit=None, device="auto"
):
    """ROC AUC of per-image anomaly scores: test images of ``anomaly_class`` (default: the run's
    ``exclude_class``) are the positives, the other test images the negatives. Writes
    ``anomaly.json``.
    """
    from pyro_vae.evaluation.applications import anomaly_scores, roc_auc

    config, vae, data = load_run(run_dir, device)
    cls = config.exclude_class if anomaly_class is None else anomaly_class
    if cls is None:
        raise validation.UserError(
            "which class is anomalous? pass --class K, or train with --exclude-class K"
        )
    x, labels = _eval_split(data, "test", limit)
    positive = labels == cls
    scores = anomaly_scores(vae.model, vae.guide, x, score=score, num_samples=num_samples)
    result = {
        "anomaly_class": int(cls),
        "score": score,
        "num_samples": num_samples,
        "auc": roc_auc(scores, positive),
        "anomalous": int(positive.sum()),
        "normal": int((~positive).sum()),
        "mean_score_anomalous": scores[positive].mean().item(),
        "mean_score_normal": scores[~positive].mean().item(),
        "auc_per_normal_class": {
            int(c): roc_auc(scores[positive | (labels == c)], positive[positive | (labels == c)])
            for c in labels.unique().tolist()
            if c != cls
        },
    }
    with open(os.path.join(run_dir, "anomaly.json"), "w") as f:
        json.dump(result, f, indent=2)
    return result


def denoise_run(run_dir, kind="mask", level=0.5, limit=1000, seed=0, device="auto"):
    """Corrupt test images, reconstruct them through the run's VAE; write ``denoise.json`` and
    ``denoise.png``.

    ``denoise.png`` has rows of 8 clean images, their corrupted versions and the reconstructions.
    """
    from torchvision.utils import save_image

    from pyro_vae.evaluation.applications import denoise

    config, vae, data = load_run(run_dir, device)
    x, _ = _eval_split(data, "test", limit)
    out = denoise(vae.model, vae.guide, x, kind, level, seed)
    rows = []
    for start in range(0, min(len(x), 32), 8):
        rows += [
            x[start : start + 8],
            out["noisy"][start : start + 8],
            out["denoised"][start : start + 8],
        ]
    save_image(torch.cat(rows), os.path.join(run_dir, "denoise.png"), nrow=8)
    result = {
        "corruption": kind,
        "level": level,
        "images": len(x),
        **{k: v for k, v in out.items() if not torch.is_tensor(v)},
    }
    with open(os.path.join(run_dir, "denoise.json"), "w") as f:
        json.dump(result, f, indent=2)
    return result


def embed_run(run_dir, split="test", limit=None, out=None, device="auto"):
    """Write posterior means ``[N, D]`` and labels of ``split`` as ``embeddings_SPLIT.npy`` and
    ``embeddings_SPLIT_labels.npy`` in ``out`` (default: the run directory); return the two
    paths."""
    from pyro_vae.evaluation.applications import save_embeddings

    config, vae, data = load_run(run_dir, device)
    x, labels = _eval_split(data, split, limit)
    return save_embeddings(vae.guide, x, labels, out or run_dir, prefix=f"embeddings_{split}")


def sample_run(run_dir, n=64, out=None, device="auto", label=None, temperature=None):
    """Write a fresh grid of ``n`` prior samples (default ``RUN_DIR/samples.png``, or
    ``samples_tT.png`` at a temperature T ≠ 1); return its path.

    ``label``: class of the images, for conditional models (``--model cvae``).  ``temperature``: τ
    multiplying the prior's standard deviation at every Gaussian latent (default: the run's
    ``sample_temperature``).
    """
    from pyro_vae.evaluation.pictures import samples_name, save_samples
    from pyro_vae.models.cvae import CVAE

    if temperature is not None:
        validation.check_positive_float("temperature", temperature, "; e.g. --temperature 0.7")
    config, vae, data = load_run(run_dir, device)
    temperature = config.sample_temperature if temperature is None else temperature
    path = out or os.path.join(run_dir, samples_name(temperature) + ".png")
    if hasattr(vae, "codebook_figures"):  # vq-vae: codes drawn from its fitted prior
        return code_prior.save_prior_samples(run_dir, vae, data.test, path, n)
    probe = data.test[:1].expand(n, *data.x_shape)
    model = vae.model
    if label is not None:
        if not isinstance(vae, CVAE):
            raise validation.UserError(
                "--label needs a conditional model (--model cvae); this run's model is "
                f"{config.model!r}"
            )
        if not 0 <= label < vae.num_classes:
            raise validation.UserError(
                f"--label must be a class in [0, {vae.num_classes}), got {label}"
            )
        labels = torch.full((n,), label, dtype=torch.long, device=probe.device)
        model = lambda x: vae.model(x, y=labels)  # noqa: E731
    save_samples(model, probe, path, n=n, temperature=temperature)
    return path


def fit_prior_run(run_dir, epochs=10, resume=False, device="auto", progress=True, **options):
    """``pyro-vae fit-prior``: a learned prior over the codes of a vq-vae run, in ``RUN/prior``
    (:func:`~pyro_vae.app.code_prior.fit_prior`, ``options`` its ``channels``, ``layers``,
    ``lr``); returns ``(prior, history)``."""
    config, vae, data = load_run(run_dir, device)
    return code_prior.fit_prior(run_dir, config, vae, data, epochs, resume, progress, **options)


# -- the estimator lab (issue #32) ----------------------------------------------------------------
def gradient_snr_run(
    run_dir,
    elbos=("trace", "iwae", "dreg", "stl"),
    particles=(1, 10, 100),
    repeats=100,
    batch_size=100,
    split="train",
    device="auto",
    seed=0,
):
    """The gradient SNR of each estimator × K on the first ``batch_size`` images of ``split``
    (:func:`~pyro_vae.evaluation.gradient_snr.gradient_snr`); writes ``gradient_snr.json`` and
    ``gradient_snr.png`` into the run, adds ``gradient_snr/…`` to its TensorBoard events (step =
    K) and returns the JSON object."""
    from pyro_vae.evaluation.gradient_snr import check_grid, gradient_snr, save_snr_plot

    check_grid(elbos, particles, repeats)  # every refusal before the run is loaded
    validation.check_positive_int("batch_size", batch_size)
    if not os.path.isdir(run_dir):
        raise validation.MissingFileError(f"no run directory {run_dir!r}")
    config, vae, data = load_run(run_dir, device)
    x, _ = _eval_split(data, split, batch_size)
    pyro.set_rng_seed(seed)
    rows = gradient_snr(
        vae.model, vae.guide, x, elbos=list(elbos), particles=list(particles), repeats=repeats
    )
    title = f"{config.model} on {config.dataset}: {len(x)} {split} images, R = {repeats}"
    picture = save_snr_plot(rows, os.path.join(run_dir, "gradient_snr.png"), title=title)
    result = {
        "rows": [r.as_row() for r in rows],
        "repeats": repeats,
        "batch_size": len(x),
        "split": split,
        "picture": os.path.basename(picture),
    }
    with open(os.path.join(run_dir, "gradient_snr.json"), "w") as f:
        json.dump(result, f, indent=2)
    if config.tensorboard:
        _log_gradient_snr(run_dir, rows, picture)
    return result


def _log_gradient_snr(run_dir, rows, picture):
    """``gradient_snr/{guide,model}/ELBO`` (median SNR), ``gradient_variance/…`` and
    ``gradient_seconds/ELBO`` at step K, and the picture."""
    from matplotlib.image import imread

    from pyro_vae.training.tensorboard import RunWriter

    writer = RunWriter(run_dir)
    try:
        for r in rows:
            for group in ("guide", "model"):
                summary = getattr(r, group)
                writer.scalar(f"gradient_snr/{group}/{r.elbo}", summary.median, r.particles)
                writer.scalar(f"gradient_variance/{group}/{r.elbo}", summary.variance, r.particles)
            writer.scalar(f"gradient_seconds/{r.elbo}", r.seconds, r.particles)
        image = torch.as_tensor(imread(picture)[..., :3]).permute(2, 0, 1)
        writer.images("gradient_snr", image[None], 0, nrow=1)
    finally:
        writer.close()
