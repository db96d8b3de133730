"""What each epoch records besides the training loss: the ELBO of held-out data split into
reconstruction and KL, and active units and KL per latent dimension (the listener
:class:`Evaluation`).

They draw their random numbers from a fork of the RNG (the caller's ``torch.random.fork_rng``), so
they leave the training trajectory as it would be without them; the networks are in eval mode while
they are taken.
"""

import contextlib
import logging

import torch

from pyro_vae.evaluation.latents import active_units, posterior_moments
from pyro_vae.evaluation.terms import elbo_terms, latent_pass
from pyro_vae.training import distributed
from pyro_vae.training.listeners import Listener

logger = logging.getLogger(__name__)

# draws per image of the per-epoch posterior means (of the groups above a site): with their Monte
# Carlo noise subtracted (active_units) the variance of the means has no bias for any number of
# draws, and with 8 its noise has s.d. ≈ 0.006 on 1000 images for a unit whose conditional mean
# varies with unit variance over the draws (less for the rest; the threshold is 0.01); the 64 draws
# of ``pyro-vae evaluate`` cost about 7 epochs of a deep hierarchy on 2000 images
MEAN_DRAWS = 8


@contextlib.contextmanager
def eval_mode(modules):
    """The ``modules`` in eval mode inside the block, in train mode after it."""
    for m in modules:
        m.train(False)
    try:
        yield
    finally:
        for m in modules:
            m.train(True)


def cuda_devices(where):
    """The CUDA device of a tensor or device as a list for :func:`torch.random.fork_rng` (empty on a
    CPU)."""
    device = where.device if torch.is_tensor(where) else where
    return [device] if device.type == "cuda" else []


def elbo_figures(model, guide, x, num_particles=1, batch_size=1000, batch_call=None):
    """Mean ``elbo``, ``recon`` = E_q[log p(x|z)] and ``kl`` = E_q[log q − log p] per data point of
    ``x`` (nats; ``elbo = recon − kl``), from one pass; under torch.distributed each rank scores its
    share."""
    recon, kl = elbo_terms(
        model,
        guide,
        distributed.shard(x),
        num_particles=num_particles,
        batch_size=batch_size,
        batch_call=batch_call,
    )
    elbo = recon - kl
    total = distributed.all_sum(
        torch.stack([elbo.sum(), recon.sum(), kl.sum(), elbo.new_tensor(float(len(elbo)))])
    )
    return dict(zip(("elbo", "recon", "kl"), (total[:3] / total[3]).tolist()))


def latent_figures(model, guide, x, batch_size=1000, batch_call=None):
    """``{"active_units": {site: count}, "kl_per_dim": {site: [KL of each dimension]}}`` on data
    ``x`` (see :mod:`pyro_vae.evaluation.latents` and :mod:`pyro_vae.evaluation.terms`; a site whose
    q does not factorize has no ``kl_per_dim`` entry; the means from :data:`MEAN_DRAWS` draws,
    their noise subtracted)."""
    _, _, per_dim = latent_pass(model, guide, x, batch_size=batch_size, batch_call=batch_call)
    means, noise = posterior_moments(
        guide, x, mc_samples=MEAN_DRAWS, batch_size=batch_size, batch_call=batch_call
    )
    active = active_units(means, noise=noise)
    return {
        "active_units": {site: count for site, (count, _) in active.items()},
        "kl_per_dim": {site: t.mean(0).tolist() for site, t in per_dim.items() if t is not None},
    }


def latent_figures_or_none(model, guide, x, batch_call=None):
    """:func:`latent_figures`, or None (with one warning) for a user pair the evaluator cannot
    read."""
    try:
        return latent_figures(model, guide, x, batch_call=batch_call)
    except Exception as e:  # noqa: BLE001 - training goes on without these figures
        logger.warning(
            f"per-epoch active units / KL per dimension turned off: {type(e).__name__}: {e}"
        )
        return None


class Evaluation(Listener):
    """At each epoch's end: ``test_elbo``, ``test_recon``, ``test_kl`` on the test images,
    ``validation_elbo`` on the validation images, and ``active_units`` and ``kl_per_dim`` on the
    first ``diagnostic_images`` test images (0: not computed), each with ``particles`` samples per
    image, on a fork of the RNG and in eval mode."""

    order = 0
    options = {"particles": "eval_particles", "diagnostic_images": "diagnostic_images"}

    def __init__(self, particles=1, diagnostic_images=1000, validate_args=True):
        self.particles, self.diagnostic_images = particles, diagnostic_images
        if validate_args:
            self.check_options()

    def on_epoch_end(self, trainer, metrics):
        run, pair = trainer.run, (trainer.model, trainer.guide)
        if run.test_x is not None:
            metrics.update({f"test_{k}": v for k, v in self.terms(trainer, run.test_x).items()})
        with torch.random.fork_rng(devices=cuda_devices(run.device)):  # training's stream stays
            if run.val_x is not None:
                metrics["validation_elbo"] = self.terms(trainer, run.val_x)["elbo"]
            if run.test_x is not None and self.diagnostic_images:
                with eval_mode(trainer.modules):  # None: a pair they fail on; off from now on
                    found = latent_figures_or_none(
                        *pair, run.test_x[: self.diagnostic_images], trainer.batch_call
                    )
                self.diagnostic_images = self.diagnostic_images if found is not None else 0
                metrics.update(found or {})

    def terms(self, trainer, x, batch_size=1000):
        """Mean ``elbo``, ``recon`` and ``kl`` per image of ``x`` (:func:`elbo_figures`)."""
        with eval_mode(trainer.modules):
            return elbo_figures(
                trainer.model, trainer.guide, x, self.particles, batch_size, trainer.batch_call
            )
