"""VQ-VAE with one and two levels against the conv Gaussian VAE, on Fashion-MNIST grey levels and on
colour photographs, on one small budget; codebook usage with and without dead-code restarts
(issue #30, item 8).

Every run: ``--likelihood discretized-logistic`` (10 mixtures), batch 64, Adam 1e-3, the same
epochs, plain steps (``--fast off``: no compile time in the seconds). Grey levels: the first
``--train`` Fashion-MNIST training images and ``--test`` test images, ``--binarize none``. Colour:
32×32 patches of the sample photographs (:func:`colour_photos.patches`; test patches only from each
photo's held-out right quarter). Models: ``vq-vae --levels 1``, ``--levels 2``, ``--levels 2
--no-code-restarts`` (codebooks of 512 codes of size 64), and ``vae --net conv --latent-dim 16``.
Bits/dim: vq-vae's under its uniform training prior (reconstruction + positions · log 512, what
``evaluate`` gives before ``fit-prior``; a point mass, so NLL = −ELBO); the conv VAE's ELBO and its
NLL with ``--k`` importance samples. Writes ``vq_vae_compare.md`` and ``.json`` beside this file.

    OMP_NUM_THREADS=1 nice -n 5 python benchmarks/vq_vae_compare.py [--train 2000 --test 500
    --epochs 3 --k 20 --out /tmp/vq_vae_compare]
"""

import argparse
import json
import math
import os
import shutil
import sys
import time

import numpy as np
import torch

from pyro_vae.app.config import Config
from pyro_vae.app.experiment import evaluate_run, train
from pyro_vae.core.checks import UserError
from pyro_vae.models.vq_vae import level_sizes

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from colour_photos import patches  # noqa: E402

MODELS = {  # name: config fields
    "vq-vae, 1 level": dict(model="vq-vae", levels=1),
    "vq-vae, 2 levels": dict(model="vq-vae", levels=2),
    "vq-vae, 2 levels, no restarts": dict(model="vq-vae", levels=2, code_restarts=False),
    "conv VAE, 16 latents": dict(model="vae", net="conv", latent_dim=16),
}


def datasets(args):
    """``{name: (config fields, image shape)}``; writes the colour patches to an npz."""
    train_x, test_x = patches(args.train, args.test)
    os.makedirs(args.out, exist_ok=True)
    npz = os.path.join(args.out, "patches.npz")
    np.savez(npz, x=train_x.transpose(0, 2, 3, 1), x_test=test_x.transpose(0, 2, 3, 1))
    grey = dict(dataset="fashion-mnist", binarize="none", limit=args.train, test_limit=args.test)
    return {
        "Fashion-MNIST grey levels": (grey, (1, 28, 28)),
        "colour photographs, 32×32 patches": (dict(dataset=f"npy:{npz}"), (3, 32, 32)),
    }


def one_run(data, shape, fields, out, args):
    """Train and evaluate one model on images of ``shape``; its row of figures."""
    shutil.rmtree(out, ignore_errors=True)
    config = Config(
        **data,
        **fields,
        likelihood="discretized-logistic",
        batch_size=64,
        epochs=args.epochs,
        out=out,
        fast="off",
        device="cpu",
        pictures=False,
        tensorboard=False,
    )
    start = time.time()
    _, _, history = train(config, progress=False)
    trained = time.time() - start
    vq = fields["model"] == "vq-vae"
    result = evaluate_run(out, nll_samples=1 if vq else args.k, pictures=False)
    row = {
        "recon_mse": result["recon_mse"],
        "elbo": result["elbo"],
        "nll": result["nll"],
        "bits_per_dim": result["bits_per_dim"],
        "elbo_bits_per_dim": -result["elbo"] / (math.prod(shape) * math.log(2)),
        "train_seconds": trained,
        "seconds": time.time() - start,
        "epochs": history,
    }
    if vq:
        last = history[-1]
        row.update(
            train_usage=last["codebook_usage"],
            train_perplexity=last["perplexity"],
            restarts=last["dead_code_restarts"],
            test_usage=result["codebook_usage"],
            test_perplexity=result["perplexity"],
        )
    return row


def divides(shape):
    """What ``--levels 1`` and ``2`` do with images of ``shape``: their code-map sizes, or the
    refusal's line (keys "1", "2", as JSON keeps them)."""
    found = {}
    for levels in (1, 2):
        try:
            found[str(levels)] = " and ".join(f"{h}×{w}" for h, w in level_sizes(shape[1:], levels))
        except UserError as e:
            found[str(levels)] = f"refused: {e}"
    return found


def fmt(values, scale=1.0, digits=1):
    return ", ".join(f"{scale * v:.{digits}f}" for v in values)


def table(rows):
    """The markdown table of one dataset's rows."""
    lines = [
        "| model | recon_mse | bits/dim (ELBO) | bits/dim (NLL) | usage, last epoch (%) | "
        "usage, test (%) | perplexity, test (of 512) | restarts | s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in rows.items():
        vq = "restarts" in r
        usage = [fmt(r[k], 100) for k in ("train_usage", "test_usage")] if vq else ["", ""]
        lines.append(
            f"| {name} | {r['recon_mse']:.5f} | {r['elbo_bits_per_dim']:.3f} | "
            f"{r['bits_per_dim']:.3f} | {usage[0]} | {usage[1]} | "
            f"{fmt(r['test_perplexity']) if vq else ''} | "
            f"{', '.join(map(str, r['restarts'])) if vq else ''} | {r['seconds']:.0f} |"
        )
    return lines


def epochs_table(rows):
    """Codebook usage and restarts so far after each epoch, per level, of the vq-vae rows."""
    lines = [
        "| model | usage per epoch (%) | restarts so far, per epoch |",
        "| --- | --- | --- |",
    ]
    for name, r in rows.items():
        if "restarts" in r:
            usage = " → ".join(fmt(e["codebook_usage"], 100, 0) for e in r["epochs"])
            restarts = " → ".join(fmt(e["dead_code_restarts"], digits=0) for e in r["epochs"])
            lines.append(f"| {name} | {usage} | {restarts} |")
    return lines


def markdown(args, results, sizes):
    total = sum(r["seconds"] for rows in results.values() for r in rows.values())
    lines = [
        "# VQ-VAE (1 and 2 levels) against the conv Gaussian VAE: grey levels, colour photographs",
        "",
        f"`OMP_NUM_THREADS=1 nice -n 5 python benchmarks/vq_vae_compare.py --train {args.train} "
        f"--test {args.test} --epochs {args.epochs} --k {args.k}`: {total / 60:.0f} min in all on "
        "a 2-core CPU shared with other jobs, each run once (seed 0). Every run: "
        "`--likelihood discretized-logistic`, batch 64, Adam 1e-3, `--fast off`; vq-vae with "
        "512 codes of size 64 per level, EMA codebooks. Test figures on the test images; "
        "vq-vae's bits/dim are under its uniform training prior (no `fit-prior`), so ELBO = NLL; "
        f"the conv VAE's NLL with K = {args.k}. Usage and perplexity per level, top first; "
        "restarts: dead codes restarted so far, per level. Numbers and every metrics row: "
        "`vq_vae_compare.json`.",
        "",
    ]
    for name, rows in results.items():
        lines += [f"## {name}", ""]
        lines += [
            f"Code maps: `--levels 1` {sizes[name]['1']}; `--levels 2` {sizes[name]['2']}.",
            "",
        ]
        lines += table(rows) + [""] + epochs_table(rows) + [""]
    return lines


def write_markdown(args, results, sizes):
    with open(os.path.join(HERE, "vq_vae_compare.md"), "w") as f:
        f.write("\n".join(markdown(args, results, sizes)) + "\n")


def main(args):
    if args.md_only:  # the tables again, from the json of the last run
        with open(os.path.join(HERE, "vq_vae_compare.json")) as f:
            saved = json.load(f)
        args = argparse.Namespace(**saved["args"])
        return write_markdown(args, saved["results"], saved["sizes"])
    torch.set_num_threads(args.threads)
    results, sizes = {}, {}
    for name, (data, shape) in datasets(args).items():
        sizes[name], results[name] = divides(shape), {}
        for model, fields in MODELS.items():
            slug = f"{name.split()[0]}-{model}".lower().replace(",", "").replace(" ", "-")
            results[name][model] = one_run(data, shape, fields, os.path.join(args.out, slug), args)
            print(name, model, {k: v for k, v in results[name][model].items() if k != "epochs"})
    with open(os.path.join(HERE, "vq_vae_compare.json"), "w") as f:
        json.dump({"args": vars(args), "sizes": sizes, "results": results}, f, indent=2)
    write_markdown(args, results, sizes)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train", type=int, default=2000)
    p.add_argument("--test", type=int, default=500)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--k", type=int, default=20, help="importance samples of the conv VAE's NLL")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="/tmp/vq_vae_compare")
    p.add_argument("--md-only", action="store_true", help="rewrite the md from the json")
    main(p.parse_args())
