"""A model/guide pair written from scratch, trained by pyro_vae's trainer.

Shows the contract every pyro_vae tool relies on: ``model(x)`` and ``guide(x)``
take the batch first, put their per-image sites in ``pyro.plate("data", ...)``
and register their networks with ``pyro.module``.  Nothing else is needed: the
same :class:`pyro_vae.Trainer`, estimators (``--elbo``) and evaluation work on it.

The pair here is the VAE of Kingma & Welling [1] written by hand, with one
twist: a learned per-dimension prior scale (a plain ``pyro.param``).

References:
    1. D. P. Kingma, M. Welling, "Auto-Encoding Variational Bayes", ICLR 2014.
"""

import pyro
import pyro.distributions as dist
from torch import nn

from pyro_vae import Optimization, Trainer, evaluate, load_data
from pyro_vae.app.scripts import parse_script_args, script_parser
from pyro_vae.evaluation.pictures import save_run_pictures
from pyro_vae.training.trainer import resolve_device

LATENT, HIDDEN, PIXELS = 16, 256, 784
encoder = nn.Sequential(
    nn.Flatten(), nn.Linear(PIXELS, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, 2 * LATENT)
)
decoder = nn.Sequential(nn.Linear(LATENT, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, PIXELS))


def model(x):
    pyro.module("decoder", decoder)
    log_prior_scale = pyro.param("log_prior_scale", x.new_zeros(LATENT))
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Normal(x.new_zeros(LATENT), log_prior_scale.exp()).to_event(1))
        logits = decoder(z).reshape(*z.shape[:-1], *x.shape[1:])
        pyro.sample("x", dist.Bernoulli(logits=logits, validate_args=False).to_event(3), obs=x)


def guide(x):
    pyro.module("encoder", encoder)
    loc, log_scale = encoder(x).chunk(2, dim=-1)
    with pyro.plate("data", len(x)):
        pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))


def main(args):
    pyro.set_rng_seed(args.seed)
    device = resolve_device(args.device)
    encoder.to(device), decoder.to(device)
    data = load_data(
        "fashion-mnist",
        args.data_dir,
        binarize="dynamic",
        limit=args.limit,
        test_limit=args.test_limit,
        device=device,
    )
    trainer = Trainer(
        model,
        guide,
        elbo=args.elbo,
        particles=args.particles,
        optim=Optimization(lr=args.lr),
        out_dir=args.out,
        progress=not args.smoke,
    )
    history = trainer.fit(data, args.epochs, args.batch_size)
    result = evaluate(model, guide, data.test, nll_samples=args.nll_samples)
    save_run_pictures(model, guide, data.test[:64], args.out)
    print(
        f"first epoch test ELBO {history[0]['test_elbo']:.2f}, last "
        f"{history[-1]['test_elbo']:.2f}; "
        f"test NLL ({args.nll_samples} samples) {result['nll']:.2f}; pictures in {args.out}"
    )
    return history, result


def parse_args(argv=None):
    p = script_parser(__doc__, "custom_model_guide", resume=False)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--elbo", default="trace", help="any estimator name of pyro_vae.make_elbo")
    p.add_argument("--particles", type=int, default=1)
    p.add_argument("--nll-samples", type=int, default=500)
    return parse_script_args(
        p, argv, smoke=dict(epochs=2, limit=1000, test_limit=200, nll_samples=20)
    )


if __name__ == "__main__":
    main(parse_args())
