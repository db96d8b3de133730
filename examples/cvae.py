"""Conditional VAE on Fashion-MNIST labels: train p(x|y), then draw images of each class.

Writes ``class_K.png`` (prior samples of class K) for every class into the run directory.

References: 1. Sohn, Lee, Yan 2015, "Learning Structured Output Representation using Deep
Conditional Generative Models".
"""

import os

from pyro_vae.app.config import Config
from pyro_vae.app.experiment import sample_run, train
from pyro_vae.app.scripts import int_list, parse_script_args, script_parser


def main(args):
    config = Config(
        model="cvae",
        epochs=args.epochs,
        limit=args.limit,
        test_limit=args.test_limit,
        hidden_dims=args.hidden_dims,
        latent_dim=args.latent_dim,
        out=args.out,
        pictures=not args.smoke,
        device=args.device,
        seed=args.seed,
        data_dir=args.data_dir,
    )
    _, _, history = train(config, resume=args.resume, progress=False)
    paths = [
        sample_run(
            args.out,
            n=args.n,
            out=os.path.join(args.out, f"class_{k}.png"),
            device=args.device,
            label=k,
        )
        for k in range(10)
    ]
    print(
        f"test ELBO (labels marginalized) {history[-1]['test_elbo']:.2f}; samples: "
        f"{args.out}/class_K.png"
    )
    return paths


def parse_args(argv=None):
    p = script_parser(__doc__, "cvae", smoke="tiny run: 1 epoch on 256 images")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--n", type=int, default=16, help="images per class")
    p.add_argument("--hidden-dims", type=int_list, default=[400])
    p.add_argument("--latent-dim", type=int, default=20)
    return parse_script_args(
        p,
        argv,
        smoke=dict(epochs=1, limit=256, test_limit=128, hidden_dims=[32], latent_dim=4, n=4),
    )


if __name__ == "__main__":
    main(parse_args())
