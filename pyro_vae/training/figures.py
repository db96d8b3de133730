"""What each epoch records besides the training loss: the ELBO of held-out data split into reconstruction and KL,
active units and KL per latent dimension, and the TensorBoard row and pictures.

They draw their random numbers from a fork of the RNG (the caller's ``torch.random.fork_rng``), so they leave the
training trajectory as it would be without them; the networks are in eval mode while they are taken.
"""
import contextlib
import logging

import torch

from pyro_vae.evaluation.metrics import _latent_pass, active_units, elbo_terms, posterior_means
from pyro_vae.training import distributed
from pyro_vae.training.tensorboard import picture_grids

logger = logging.getLogger(__name__)


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


def cuda_devices(x):
    """The CUDA device of tensor ``x`` as a list for :func:`torch.random.fork_rng` (empty on a CPU)."""
    return [x.device] if x.device.type == "cuda" else []


def elbo_figures(model, guide, x, num_particles=1, batch_size=1000, batch_call=None):
    """Mean ``elbo``, ``recon`` = E_q[log p(x|z)] and ``kl`` = E_q[log q − log p] per data point of ``x`` (nats;
    ``elbo = recon − kl``), from one pass; under torch.distributed each rank scores its share."""
    recon, kl = elbo_terms(model, guide, distributed.shard(x), num_particles=num_particles, batch_size=batch_size,
                           batch_call=batch_call)
    elbo = recon - kl
    total = distributed.all_sum(torch.stack([elbo.sum(), recon.sum(), kl.sum(), elbo.new_tensor(float(len(elbo)))]))
    return dict(zip(("elbo", "recon", "kl"), (total[:3] / total[3]).tolist()))


def latent_figures(model, guide, x, batch_size=1000, batch_call=None):
    """``{"active_units": {site: count}, "kl_per_dim": {site: [KL of each dimension]}}`` on data ``x`` (see
    :mod:`pyro_vae.evaluation.metrics`; a site whose q does not factorize has no ``kl_per_dim`` entry)."""
    _, _, per_dim = _latent_pass(model, guide, x, batch_size=batch_size, batch_call=batch_call)
    active = active_units(posterior_means(guide, x, batch_size=batch_size, batch_call=batch_call))
    return {"active_units": {site: count for site, (count, _) in active.items()},
            "kl_per_dim": {site: t.mean(0).tolist() for site, t in per_dim.items() if t is not None}}


def latent_figures_or_none(model, guide, x, batch_call=None):
    """:func:`latent_figures`, or None (with one warning) for a user pair the evaluator cannot read."""
    try:
        return latent_figures(model, guide, x, batch_call=batch_call)
    except Exception as e:  # noqa: BLE001 - training goes on without these figures
        logger.warning(f"per-epoch active units / KL per dimension turned off: {type(e).__name__}: {e}")
        return None


def write_epoch(tb, metrics, step, model=None, guide=None, x=None, modules=()):
    """Write the epoch's row at ``step`` and, given images ``x``, the samples and reconstructions of the pair, then
    flush: the events are on disk before the checkpoint that includes the epoch.  Returns False when the pictures
    failed (e.g. a pair without an observed image site), with one warning."""
    tb.row(metrics, step)
    ok = True
    if x is not None:
        try:
            with eval_mode(modules), torch.random.fork_rng(devices=cuda_devices(x)):
                grids = picture_grids(model, guide, x)
            for tag, images in grids.items():
                tb.images(tag, images, step)
        except Exception as e:  # noqa: BLE001 - training goes on without the pictures
            logger.warning(f"TensorBoard images turned off: {type(e).__name__}: {e}")
            ok = False
    tb.flush()
    return ok
