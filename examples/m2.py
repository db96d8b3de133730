"""Semi-supervised M2 on Fashion-MNIST with few labels: test accuracy of q(y|x).

The label is observed on ``--labeled`` class-balanced training images and enumerated
exactly with TraceEnum_ELBO on the others, plus the auxiliary classification term
α log q(y|x) on labeled images (:mod:`pyro_vae.models.m2`).

References: 1. Kingma, Rezende, Mohamed, Welling 2014, "Semi-Supervised Learning with Deep
Generative Models".
"""

import json

from pyro_vae.app.config import Config
from pyro_vae.app.experiment import train
from pyro_vae.app.scripts import int_list, parse_script_args, script_parser


def main(args):
    config = Config(
        model="m2",
        elbo="enum",
        labeled=args.labeled,
        epochs=args.epochs,
        limit=args.limit,
        test_limit=args.test_limit,
        hidden_dims=args.hidden_dims,
        latent_dim=args.latent_dim,
        out=args.out,
        pictures=False,
        device=args.device,
        seed=args.seed,
        data_dir=args.data_dir,
    )
    _, _, history = train(config, resume=args.resume, progress=False)
    result = {k: history[-1][k] for k in ("test_accuracy", "labeled", "test_elbo", "epoch")}
    print(json.dumps(result))
    return result


def parse_args(argv=None):
    p = script_parser(__doc__, "m2", smoke="tiny run: 1 epoch on 256 images, 50 labels")
    p.add_argument("--labeled", type=int, default=1000)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--hidden-dims", type=int_list, default=[500])
    p.add_argument("--latent-dim", type=int, default=50)
    return parse_script_args(
        p,
        argv,
        smoke=dict(epochs=1, limit=256, test_limit=128, labeled=50, hidden_dims=[32], latent_dim=4),
    )


if __name__ == "__main__":
    main(parse_args())
