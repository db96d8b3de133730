"""The trainer's side of the fast path (:class:`~pyro_vae.estimators.fast.FastELBO`): the batches
that prove a captured step, its capture once per run, its recheck at each epoch's start, and what
each metrics row says of what capturing cost."""

import torch

from pyro_vae.estimators import FastELBO
from pyro_vae.estimators.fast import proof_rows, traceable_batches
from pyro_vae.training import checkpoint, distributed


def proof_batches(train, batch_size, call):
    """Two different batches of each size an epoch of ``train`` uses, on this rank, as the pair's
    ``call(x, idx) -> (args, kwargs)``; None where a batch is not the pair's one argument."""
    everything = torch.arange(len(train), device=train.device)
    rows = [distributed.shard(everything[s]) for s in proof_rows(len(train), batch_size)]
    return traceable_batches([call(train[idx], idx) for idx in rows if len(idx)])


def capture(trainer, probes, planned_steps):
    """Capture the steps of ``trainer`` on ``probes`` (once per trainer; ``planned_steps`` decide
    whether compiling pays); return what it cost this process, a part of every metrics row:
    ``compile_seconds``, ``compile_cache_hit``, ``fast_route`` and the code's ``commit``."""
    elbo, commit = trainer.elbo, {"commit": checkpoint.source_commit()}
    if not isinstance(elbo, FastELBO):
        return {"compile_seconds": 0.0, "compile_cache_hit": None, "fast_route": "off"} | commit
    if probes is None:
        elbo.refuse("the batch is not the pair's one argument")
    elif not elbo.steps:
        trainer.set_training(True)  # the mode the steps run in (a trace keeps it)
        trainer.enable_fast_path(probes, planned_steps=planned_steps)
    return {
        "compile_seconds": elbo.compile_seconds,
        "compile_cache_hit": elbo.cache_hit,
        "fast_route": elbo.route,
    } | commit


def recheck(trainer, x, kwargs):
    """At an epoch's start: drop the fast path when a plain and a traced step on ``x`` disagree."""
    since = f"from epoch {trainer.epoch + 1} on"
    trainer.elbo.recheck(trainer.model, trainer.guide, x, kwargs, since=since)
