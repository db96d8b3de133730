"""β-VAE on Fashion-MNIST: the KL / reconstruction trade-off of β = 1 and β = 4.

Trains the same VAE (same data, seed and budget) with the latent sites' log-densities
weighted by β (:func:`pyro_vae.estimators.variants.beta_scale`, ``--beta``) and prints the test
reconstruction term E_q log p(x|z) and KL per image.  Larger β buys a smaller KL with a
worse reconstruction.

References: 1. Higgins et al. 2017, "β-VAE: Learning Basic Visual Concepts with a Constrained
Variational Framework".
"""

import json
import os

from pyro_vae.app.config import Config
from pyro_vae.app.experiment import train
from pyro_vae.app.scripts import int_list, parse_script_args, script_parser
from pyro_vae.evaluation.metrics import elbo_terms


def main(args):
    rows = {}
    for beta in args.betas:
        config = Config(
            beta=beta,
            elbo="meanfield",
            epochs=args.epochs,
            limit=args.limit,
            test_limit=args.test_limit,
            hidden_dims=args.hidden_dims,
            latent_dim=args.latent_dim,
            kl_warmup_epochs=args.warmup,
            out=os.path.join(args.out, f"beta{beta:g}"),
            pictures=not args.smoke,
            device=args.device,
            seed=args.seed,
            data_dir=args.data_dir,
        )
        vae, data, _ = train(config, resume=args.resume, progress=False)
        vae.eval()
        recon, kl = elbo_terms(vae.model, vae.guide, data.test, num_particles=4)
        rows[f"beta={beta:g}"] = {
            "recon": recon.mean().item(),
            "kl": kl.mean().item(),
            "elbo": (recon - kl).mean().item(),
        }
        print(
            f"β = {beta:g}: recon {rows[f'beta={beta:g}']['recon']:.2f}  KL "
            f"{rows[f'beta={beta:g}']['kl']:.2f} "
            f"nats per image"
        )
    with open(os.path.join(args.out, "beta_vae.json"), "w") as f:
        json.dump(rows, f, indent=2)
    return rows


def parse_args(argv=None):
    p = script_parser(__doc__, "beta_vae", smoke="tiny run: 1 epoch on 256 images")
    p.add_argument("--betas", type=float, nargs="+", default=[1.0, 4.0])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--warmup", type=int, default=0, help="KL warm-up epochs")
    p.add_argument("--hidden-dims", type=int_list, default=[400])
    p.add_argument("--latent-dim", type=int, default=20)
    return parse_script_args(
        p, argv, smoke=dict(epochs=1, limit=256, test_limit=128, hidden_dims=[32], latent_dim=4)
    )


if __name__ == "__main__":
    main(parse_args())
