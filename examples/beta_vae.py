"""β-VAE on Fashion-MNIST: the KL / reconstruction trade-off of β = 1 and β = 4.

Trains the same VAE (same data, seed and budget) with the latent sites' log-densities
weighted by β (:func:`pyro_vae.estimators.variants.beta_scale`, ``--beta``) and prints the test
reconstruction term E_q log p(x|z) and KL per image.  Larger β buys a smaller KL with a
worse reconstruction.

References: 1. Higgins et al. 2017, "β-VAE: Learning Basic Visual Concepts with a Constrained Variational Framework".
"""
import argparse
import json
import os

from pyro_vae.app.config import Config
from pyro_vae.app.experiment import output_dir, train
from pyro_vae.evaluation.metrics import elbo_terms


def main(args):
    rows = {}
    for beta in args.betas:
        config = Config(beta=beta, elbo="meanfield", epochs=args.epochs, limit=args.limit, test_limit=args.test_limit,
                        hidden_dims=args.hidden_dims, latent_dim=args.latent_dim, kl_warmup_epochs=args.warmup,
                        out=os.path.join(args.out, f"beta{beta:g}"), pictures=not args.smoke, device=args.device)
        vae, data, _ = train(config, resume=args.resume, progress=False)
        vae.eval()
        recon, kl = elbo_terms(vae.model, vae.guide, data.test, num_particles=4)
        rows[f"beta={beta:g}"] = {"recon": recon.mean().item(), "kl": kl.mean().item(),
                                  "elbo": (recon - kl).mean().item()}
        print(f"β = {beta:g}: recon {rows[f'beta={beta:g}']['recon']:.2f}  KL {rows[f'beta={beta:g}']['kl']:.2f} "
              f"nats per image")
    with open(os.path.join(args.out, "beta_vae.json"), "w") as f:
        json.dump(rows, f, indent=2)
    return rows


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--betas", type=float, nargs="+", default=[1.0, 4.0])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--warmup", type=int, default=0, help="KL warm-up epochs")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--test-limit", type=int, default=None)
    p.add_argument("--hidden-dims", type=int, nargs="+", default=[400])
    p.add_argument("--latent-dim", type=int, default=20)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default=None,
                   help="run directory (default runs/beta_vae, or runs/beta_vae-2, … when taken; "
                        "--smoke: a fresh temporary one)")
    p.add_argument("--resume", action="store_true", help="continue the run(s) in --out")
    p.add_argument("--smoke", action="store_true", help="tiny run: 1 epoch on 256 images")
    args = p.parse_args(argv)
    args.out = output_dir(args.out, "beta_vae", args.smoke, args.resume)
    if args.smoke:
        args.epochs, args.limit, args.test_limit, args.hidden_dims, args.latent_dim = 1, 256, 128, [32], 4
    return args


if __name__ == "__main__":
    main(parse_args())
