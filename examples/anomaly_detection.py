"""Anomaly detection with a VAE: train on Fashion-MNIST without one class, flag that class by its
likelihood.

A VAE trained on the normal classes only assigns the held-out class a lower marginal likelihood,
so the per-image score −log p(x) (importance-sampled, [1]) or −ELBO separates the two; the
figure of merit is the ROC AUC of the score for held-out-class versus normal test images
(0.5: no better than chance, 1: perfect).  Likelihood scores are known to fail for some pairs of
datasets [2] (simple images can be likelier than the training images), so the example also
reports the AUC against each normal class separately.

Everything goes through the library: ``pyro_vae.app.experiment.train`` with ``exclude_class``, then
``pyro_vae.app.experiment.anomaly_run`` (the plain call behind ``pyro-vae anomaly RUN_DIR``).

References:
    1. Y. Burda, R. Grosse, R. Salakhutdinov, "Importance Weighted Autoencoders", ICLR 2016.
    2. E. Nalisnick et al., "Do Deep Generative Models Know What They Don't Know?", ICLR 2019.
"""

import os

from pyro_vae import Config
from pyro_vae.app import experiment
from pyro_vae.app.scripts import parse_script_args, script_parser

CLASSES = (
    "T-shirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
)


def main(args):
    config = Config(
        dataset="fashion-mnist",
        data_dir=args.data_dir,
        exclude_class=args.anomaly_class,
        latent_dim=args.latent_dim,
        epochs=args.epochs,
        limit=args.limit,
        test_limit=args.test_limit,
        seed=args.seed,
        device=args.device,
        out=args.out,
        pictures=not args.smoke,
    )
    experiment.train(config, resume=args.resume, progress=not args.smoke)
    result = experiment.anomaly_run(
        args.out, score=args.score, num_samples=args.samples, device=args.device
    )
    name = CLASSES[args.anomaly_class]
    print(
        f"held-out class {args.anomaly_class} ({name}): ROC AUC of per-image "
        f"{'−log p(x)' if args.score == 'nll' else '−ELBO'} = {result['auc']:.3f} "
        f"({result['anomalous']} anomalous vs {result['normal']} normal test images; mean score "
        f"{result['mean_score_anomalous']:.1f} vs {result['mean_score_normal']:.1f} nats)"
    )
    print(
        "AUC against each normal class: "
        + ", ".join(f"{CLASSES[c]} {auc:.2f}" for c, auc in result["auc_per_normal_class"].items())
    )
    print(f"results in {os.path.join(args.out, 'anomaly.json')}")
    return result


def parse_args(argv=None):
    p = script_parser(__doc__, "anomaly_detection")
    p.add_argument(
        "--anomaly-class", type=int, default=8, help="the class left out of training (8: bag)"
    )
    p.add_argument(
        "--score", choices=["nll", "elbo"], default="nll", help="nll: −log p(x); elbo: −ELBO"
    )
    p.add_argument(
        "--samples", type=int, default=200, help="importance samples per image for the score"
    )
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--latent-dim", type=int, default=20)
    args = parse_script_args(p, argv, smoke=dict(epochs=2, limit=2000, test_limit=500, samples=10))
    if not 0 <= args.anomaly_class < len(CLASSES):
        p.error(f"--anomaly-class must be in 0..9, got {args.anomaly_class}")
    return args


if __name__ == "__main__":
    main(parse_args())
