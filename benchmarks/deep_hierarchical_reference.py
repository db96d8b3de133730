"""The deep hierarchical VAE in plain PyTorch, without Pyro: the yardstick of issue #29.

The same network as ``pyro-vae train --model deep-hierarchical`` (its :class:`TopDown` and
:class:`ResidualGuide`, built by the same builder, so the same initial weights for a seed) and the
same loss, written out: per image, with z ~ q(z | x) drawn group by group top first,

.. math::

    \\mathrm{ELBO}(x) = \\log p(x | z) + \\sum_{l=1}^{L} [\\log p(z_l | h_{l-1}) -
    \\log q(z_l | h_{l-1}, x)],

one sample (``--elbo trace``), the loss −(N / B) Σ_batch ELBO (the data plate's scale), Adam. The
same data: the first ``--limit`` Fashion-MNIST training images, dynamically binarized per batch; the
test ELBO on the first ``--test-limit`` test images binarized once. The random numbers are drawn in
the trainer's order (its probe of the first batch, then per epoch a permutation, per batch the
binarization and the guide's draws, then the test ELBO), so for a seed the two runs see the same
numbers and differ only by float rounding. Prints ``test_elbo: X`` last.

    python benchmarks/deep_hierarchical_reference.py --limit 2000 --epochs 1
"""

import argparse
import time

import torch

from pyro_vae.app.config import Config
from pyro_vae.data import load_data
from pyro_vae.models.deep_hierarchical import build_deep_hierarchical, soft_clamp

_LOG_2PI = 0.9189385332046727  # ½ log 2π


def normal_log_prob(z, loc, scale):
    """log N(z; loc, diag scale²) summed over the last three (event) dims."""
    return (-((z - loc) ** 2) / (2 * scale**2) - scale.log() - _LOG_2PI).sum((-3, -2, -1))


def elbo(vae, x):
    """Per-image ELBO ``[B]`` with one z ~ q(z | x): the top-down path runs once, for q and p."""
    top_down, nets = vae.top_down, vae.guide_module
    features = nets.features(x)
    h, log_w = top_down.initial(x), 0.0
    for l in range(top_down.num_groups):
        loc, scale = top_down.prior(l, h)
        dloc, drho = nets.delta(l, h, features)
        q = torch.distributions.Normal(loc + dloc, scale * soft_clamp(drho).exp())
        z = q.rsample()
        log_w = log_w + normal_log_prob(z, loc, scale) - normal_log_prob(z, q.loc, q.scale)
        h = top_down.update(l, h, z)
    logits = top_down.output(h)
    log_px = -torch.nn.functional.binary_cross_entropy_with_logits(logits, x, reduction="none")
    return log_px.sum((-3, -2, -1)) + log_w


def build(args, x_shape, num_data):
    """The Pyro model's nets, from its own builder (same modules, same initialization)."""
    config = Config(
        model="deep-hierarchical",
        scales=args.scales,
        groups_per_scale=args.groups_per_scale,
        hidden_channels=args.hidden_channels,
        latent_channels=args.latent_channels,
        pictures=False,
        tensorboard=False,
    )
    return build_deep_hierarchical(config, x_shape, num_data)


def test_elbo(vae, x):
    """Mean ELBO per test image (one sample each, all images at once, as the trainer's, after its
    probe of the first two)."""
    vae.eval()
    with torch.no_grad():
        elbo(vae, x[:2])
        value = elbo(vae, x).mean().item()
    vae.train()
    return value


def main(args):
    torch.manual_seed(args.seed)
    data = load_data(limit=args.limit, test_limit=args.test_limit)
    vae = build(args, data.x_shape, len(data.train))
    optim = torch.optim.Adam(vae.parameters(), lr=args.lr)
    with torch.no_grad():  # the trainer's probe of the pair on its first batch draws these
        elbo(vae, next(data.batches(args.batch_size, shuffle=False))[0])
    value = None
    for epoch in range(1, args.epochs + 1):
        start, total, steps = time.perf_counter(), 0.0, 0
        for x, _ in data.batches(args.batch_size):
            loss = -elbo(vae, x).sum() * (len(data.train) / len(x))
            optim.zero_grad(set_to_none=True)
            loss.backward()
            optim.step()
            total, steps = total + loss.detach() / len(data.train), steps + 1
        value = test_elbo(vae, data.test)
        print(
            f"epoch={epoch} train_loss={float(total) / steps:.6g} "
            f"seconds={time.perf_counter() - start:.2f} test_elbo_epoch={value:.6g}"
        )
    print(f"test_elbo: {value:.6g}")
    return value


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scales", type=int, default=2)
    p.add_argument("--groups-per-scale", type=int, default=2)
    p.add_argument("--hidden-channels", type=int, default=32)
    p.add_argument("--latent-channels", type=int, default=4)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--test-limit", type=int, default=1000)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
