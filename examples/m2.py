"""Semi-supervised M2 on Fashion-MNIST with few labels: test accuracy of q(y|x).

The label is observed on ``--labeled`` class-balanced training images and enumerated
exactly with TraceEnum_ELBO on the others, plus the auxiliary classification term
α log q(y|x) on labeled images (:mod:`pyro_vae.models.m2`).

References: 1. Kingma, Rezende, Mohamed, Welling 2014, "Semi-Supervised Learning with Deep Generative Models".
"""
import argparse
import json

from pyro_vae.app.config import Config
from pyro_vae.app.experiment import output_dir, train


def main(args):
    config = Config(model="m2", elbo="enum", labeled=args.labeled, epochs=args.epochs, limit=args.limit,
                    test_limit=args.test_limit, hidden_dims=args.hidden_dims, latent_dim=args.latent_dim,
                    out=args.out, pictures=False, device=args.device)
    _, _, history = train(config, resume=args.resume, progress=False)
    result = {k: history[-1][k] for k in ("test_accuracy", "labeled", "test_elbo", "epoch")}
    print(json.dumps(result))
    return result


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--labeled", type=int, default=1000)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--test-limit", type=int, default=None)
    p.add_argument("--hidden-dims", type=int, nargs="+", default=[500])
    p.add_argument("--latent-dim", type=int, default=50)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default=None,
                   help="run directory (default runs/m2, or runs/m2-2, … when taken; "
                        "--smoke: a fresh temporary one)")
    p.add_argument("--resume", action="store_true", help="continue the run(s) in --out")
    p.add_argument("--smoke", action="store_true", help="tiny run: 1 epoch on 256 images, 50 labels")
    args = p.parse_args(argv)
    args.out = output_dir(args.out, "m2", args.smoke, args.resume)
    if args.smoke:
        args.epochs, args.limit, args.test_limit, args.labeled = 1, 256, 128, 50
        args.hidden_dims, args.latent_dim = [32], 4
    return args


if __name__ == "__main__":
    main(parse_args())
