"""Importance weighted autoencoders: VAE vs IWAE for k = 1, 5, 50 (Burda et al. 2016, Table 1).

Trains the same model with the ELBO averaged over k samples (``--elbos trace``, "VAE")
and with the k-sample importance-weighted bound (``iwae``; ``dreg`` gives the same bound
with doubly-reparameterized guide gradients [2]), then reports the test NLL estimated
with 5000 importance samples (:func:`pyro_vae.log_likelihood`, via :func:`pyro_vae.evaluate`)
and the number of active units (Var_x E_q[z_j] > 0.01), per latent layer.

One stochastic layer: 784-200-200-50 with tanh MLPs.  Two stochastic layers (``--layers 2``):
the ``hierarchical`` model with latent sizes 100, 50 and the bottom-up guide; its nets
between the latent layers have one hidden layer of 200 units (the paper: two of 100).
Burda et al.'s schedule (``--schedule burda``): stage i = 0 … 7 runs 3^i epochs at
learning rate 1e-3 · 10^(−i/7), 3280 epochs in all (``--stages`` keeps the first few).
The paper's Adam ε = 1e-4 is not exposed by pyro_vae's optimizer (it uses 1e-8).

Everything is a plain library call (``Config`` → :func:`pyro_vae.models.build_model` →
:class:`pyro_vae.Trainer` → :func:`pyro_vae.evaluate`); one run is also ``pyro-vae train --elbo iwae
--particles 5 --hidden-dims 200,200 --latent-dim 50 --activation tanh``. Run directories go under
``--out``.

References:
    1. Y. Burda, R. Grosse, R. Salakhutdinov. Importance Weighted Autoencoders. ICLR 2016,
       arXiv:1509.00519.
    2. G. Tucker, D. Lawson, S. Gu, C. J. Maddison. Doubly Reparameterized Gradient Estimators for
       Monte Carlo Objectives. ICLR 2019, arXiv:1810.04152.
"""

import json
import os
import time

import pyro
import torch

from pyro_vae import Config, Optimization, Trainer, evaluate, load_data
from pyro_vae.training.figures import Evaluation
from pyro_vae.app.scripts import int_list, parse_script_args, script_parser
from pyro_vae.models import MODELS, build_model
from pyro_vae.training.trainer import resolve_device


def burda_schedule(stages=8):
    """Burda et al.'s schedule: ``[(epochs, lr)]`` with 3^i epochs at 1e-3 · 10^(−i/7) for stage
    i."""
    return [(3**i, 1e-3 * 10 ** (-i / 7)) for i in range(stages)]


def architecture(layers, hidden_dims, latent_dims):
    """Config overrides for one or two stochastic layers."""
    if layers == 1:
        return dict(
            model="vae", hidden_dims=hidden_dims, latent_dim=latent_dims[-1], guide="diagonal"
        )
    if "hierarchical" not in MODELS:
        raise ValueError(
            "--layers 2 needs the 'hierarchical' model, which is not registered in "
            "pyro_vae.app.experiment"
        )
    return dict(
        model="hierarchical", hidden_dims=hidden_dims, latent_dims=latent_dims, guide="bottom-up"
    )


def run(config, schedule, data, nll_samples, progress=False):
    """Train ``config`` through ``schedule`` (``[(epochs, lr)]``) and return its test figures."""
    # module names repeat across runs: each run starts from fresh parameters
    pyro.clear_param_store()
    pyro.set_rng_seed(config.seed)
    vae = build_model(config, data.x_shape, num_data=len(data.train)).to(data.train.device)
    os.makedirs(config.out, exist_ok=True)
    config.save(os.path.join(config.out, "config.json"))
    trainer = Trainer(
        vae.model,
        vae.guide,
        config.elbo,
        config.particles,
        Optimization(config.lr),
        out_dir=config.out,
        progress=progress,
        modules=[vae],
        listeners=[Evaluation(config.eval_particles)],
    )
    start, done, history = time.perf_counter(), 0, []
    for epochs, lr in schedule:
        trainer.options.lr = lr
        done += epochs
        history += trainer.fit(data, done, config.batch_size)
    seconds = time.perf_counter() - start
    vae.eval()
    result = evaluate(vae.model, vae.guide, data.test, nll_samples=nll_samples, verbose=False)
    return {
        "nll": result["nll"],
        "test_elbo": result["elbo"],
        "active_units": result["active_units"],
        "epochs": done,
        "train_seconds": seconds,
    }


def main(args):
    device = resolve_device(args.device)
    torch.manual_seed(args.seed)
    data = load_data(
        args.dataset,
        args.data_dir,
        "dynamic",
        limit=args.limit,
        test_limit=args.test_limit,
        device=device,
    )
    schedule = burda_schedule(args.stages) if args.schedule == "burda" else [(args.epochs, args.lr)]
    rows = []
    for layers in args.layers:
        for k in args.k:
            for elbo in args.elbos:
                out = os.path.join(args.out, f"{layers}layer-{elbo}-k{k}")
                config = Config(
                    dataset=args.dataset,
                    activation="tanh",
                    elbo=elbo,
                    particles=k,
                    lr=schedule[0][1],
                    epochs=sum(e for e, _ in schedule),
                    batch_size=args.batch_size,
                    seed=args.seed,
                    device=str(device),
                    out=out,
                    pictures=False,
                    **architecture(layers, args.hidden_dims, args.latent_dims),
                )
                row = {
                    "layers": layers,
                    "elbo": elbo,
                    "k": k,
                    **run(config, schedule, data, args.nll_samples),
                }
                rows.append(row)
                print(
                    f"{layers} layer(s)  {elbo:>5}  k={k:<3}  test NLL {row['nll']:8.2f}  "
                    f"test ELBO {row['test_elbo']:8.2f}  active units {row['active_units']}  "
                    f"({row['train_seconds']:.0f} s)",
                    flush=True,
                )
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump({"settings": {k: v for k, v in vars(args).items()}, "runs": rows}, f, indent=2)
    return rows


def parse_args(argv=None):
    p = script_parser(__doc__, "iwae", resume=False)
    p.add_argument("--dataset", default="fashion-mnist", help="fashion-mnist or mnist")
    p.add_argument(
        "--elbos",
        type=lambda s: s.split(","),
        default=["trace", "iwae"],
        help="comma-separated estimator names compared at each k (trace = VAE, iwae, dreg, …)",
    )
    p.add_argument("--k", type=int_list, default=[1, 5, 50], help="comma-separated particle counts")
    p.add_argument(
        "--layers", type=int_list, default=[1], help="stochastic layers to run: 1, 2 or 1,2"
    )
    p.add_argument("--hidden-dims", type=int_list, default=[200, 200])
    p.add_argument(
        "--latent-dims",
        type=int_list,
        default=[100, 50],
        help="latent sizes, z1 first; one layer uses the last (50)",
    )
    p.add_argument(
        "--schedule",
        choices=["constant", "burda"],
        default="constant",
        help="constant: --epochs at --lr; burda: 3^i epochs at 1e-3·10^(-i/7), i < --stages",
    )
    p.add_argument(
        "--stages", type=int, default=8, help="stages of the burda schedule (8: 3280 epochs)"
    )
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=20)
    p.add_argument("--nll-samples", type=int, default=5000)
    return parse_script_args(
        p,
        argv,
        smoke=dict(
            epochs=1,
            limit=200,
            test_limit=50,
            nll_samples=20,
            batch_size=50,
            k=[1, 5],
            hidden_dims=[32],
            latent_dims=[8, 4],
        ),
    )


if __name__ == "__main__":
    main(parse_args())
