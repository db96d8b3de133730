"""Hierarchical VAE: one vs two stochastic layers on Fashion-MNIST, with top-down and bottom-up
guides.

Trains, on the same budget (images, epochs, nets, estimator), a one-layer VAE with
latent size d1 and two-layer hierarchies p(x|z1) p(z1|z2) p(z2) with sizes (d1, d2),
inferred by the ladder (top-down) guide [2] and by the bottom-up guide of the
two-layer IWAE model [1]; then reports test ELBO, NLL (importance sampling),
active units and KL per layer (Burda et al.'s criterion: Var_x E_q[z_j] > 0.01).

Everything here is a plain call of the library: ``Config`` + ``experiment.train`` +
``evaluate``; the same runs are ``pyro-vae train --model hierarchical --latent-dims 64,32
--guide top-down``.  Run directories go under ``--out``.

References:
    1. Y. Burda, R. Grosse, R. Salakhutdinov, "Importance Weighted Autoencoders", ICLR 2016.
    2. C. K. Sønderby, T. Raiko, L. Maaløe, S. K. Sønderby, O. Winther, "Ladder Variational
       Autoencoders", NeurIPS 2016.
"""

import json
import os

from pyro_vae import Config, evaluate
from pyro_vae.app.experiment import train
from pyro_vae.app.scripts import int_list, parse_script_args, script_parser


def setups(d1, d2):
    """The compared runs: name -> Config overrides."""
    return {
        "1 layer": dict(model="vae", latent_dim=d1, guide="diagonal"),
        "2 layers top-down": dict(model="hierarchical", latent_dims=[d1, d2], guide="top-down"),
        "2 layers bottom-up": dict(model="hierarchical", latent_dims=[d1, d2], guide="bottom-up"),
    }


def kl_per_layer(result):
    """Sum of ``kl_per_dim`` per latent site (nats), keyed by site name."""
    sites, kl = result["latent_sites"], result["kl_per_dim"]
    if len(sites) == 1:
        kl = [kl]
    return {s: (None if k is None else round(sum(k), 3)) for s, k in zip(sites, kl)}


def main(args):
    common = dict(
        limit=args.limit,
        test_limit=args.test_limit,
        epochs=args.epochs,
        batch_size=args.batch_size,
        hidden_dims=args.hidden_dims,
        elbo=args.elbo,
        particles=args.particles,
        lr=args.lr,
        seed=args.seed,
        device=args.device,
        data_dir=args.data_dir,
        pictures=not args.smoke,
    )
    rows = {}
    for name, overrides in setups(args.d1, args.d2).items():
        out = os.path.join(args.out, name.replace(" ", "-"))
        config = Config(**common, **overrides, out=out)
        vae, data, history = train(config, resume=args.resume, progress=False)
        vae.eval()
        result = evaluate(
            vae.model, vae.guide, data.test, nll_samples=args.nll_samples, verbose=False
        )
        rows[name] = {
            "test_elbo": result["elbo"],
            "nll": result["nll"],
            "active_units": result["active_units"],
            "kl_per_layer": kl_per_layer(result),
            "train_seconds": sum(h["seconds"] for h in history),
        }
        print(
            f"{name:>20}: test ELBO {result['elbo']:8.2f}  NLL {result['nll']:8.2f}  "
            f"active units {result['active_units']}  KL per layer {rows[name]['kl_per_layer']}",
            flush=True,
        )
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump(
            {
                "settings": common
                | {"d1": args.d1, "d2": args.d2, "nll_samples": args.nll_samples},
                "runs": rows,
            },
            f,
            indent=2,
        )
    return rows


def parse_args(argv=None):
    p = script_parser(__doc__, "hierarchical")
    p.add_argument("--d1", type=int, default=64, help="size of z1 (and of the one-layer latent)")
    p.add_argument("--d2", type=int, default=32, help="size of z2")
    p.add_argument("--hidden-dims", type=int_list, default=[400])
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--elbo", default="trace", help="any estimator name of pyro_vae.make_elbo")
    p.add_argument("--particles", type=int, default=1)
    p.add_argument("--nll-samples", type=int, default=500)
    p.set_defaults(test_limit=1000)
    return parse_script_args(
        p,
        argv,
        smoke=dict(
            epochs=1, limit=500, test_limit=100, nll_samples=10, d1=16, d2=8, hidden_dims=[64]
        ),
    )


if __name__ == "__main__":
    main(parse_args())
