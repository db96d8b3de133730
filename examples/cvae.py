"""Conditional VAE on Fashion-MNIST labels: train p(x|y), then draw images of each class.

Writes ``class_K.png`` (prior samples of class K) for every class into the run directory.

References: 1. Sohn, Lee, Yan 2015, "Learning Structured Output Representation using Deep Conditional Generative
Models".
"""
import argparse
import os

from pyro_vae.app.config import Config
from pyro_vae.app.experiment import output_dir, sample_run, train


def main(args):
    config = Config(model="cvae", epochs=args.epochs, limit=args.limit, test_limit=args.test_limit,
                    hidden_dims=args.hidden_dims, latent_dim=args.latent_dim, out=args.out,
                    pictures=not args.smoke, device=args.device)
    _, _, history = train(config, resume=args.resume, progress=False)
    paths = [sample_run(args.out, n=args.n, out=os.path.join(args.out, f"class_{k}.png"), device=args.device,
                        label=k) for k in range(10)]
    print(f"test ELBO (labels marginalized) {history[-1]['test_elbo']:.2f}; samples: {args.out}/class_K.png")
    return paths


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--n", type=int, default=16, help="images per class")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--test-limit", type=int, default=None)
    p.add_argument("--hidden-dims", type=int, nargs="+", default=[400])
    p.add_argument("--latent-dim", type=int, default=20)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default=None,
                   help="run directory (default runs/cvae, or runs/cvae-2, … when taken; "
                        "--smoke: a fresh temporary one)")
    p.add_argument("--resume", action="store_true", help="continue the run(s) in --out")
    p.add_argument("--smoke", action="store_true", help="tiny run: 1 epoch on 256 images")
    args = p.parse_args(argv)
    args.out = output_dir(args.out, "cvae", args.smoke, args.resume)
    if args.smoke:
        args.epochs, args.limit, args.test_limit, args.hidden_dims, args.latent_dim, args.n = 1, 256, 128, [32], 4, 4
    return args


if __name__ == "__main__":
    main(parse_args())
