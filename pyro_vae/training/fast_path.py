"""The trainer's side of the fast path (:class:`~pyro_vae.estimators.fast.FastELBO`): the batches
that prove a captured step, its capture once per run, and what each metrics row says of what
capturing cost (the recheck at each epoch's start is :meth:`FastELBO.recheck`)."""

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


def capture(elbo, model, guide, probes, planned_steps):
    """Capture the steps of ``elbo`` on the pair's ``probes`` (once per estimator, the modules in
    the mode the steps run in; ``planned_steps`` decide whether compiling pays); return what it
    cost this process, a part of every metrics row: ``compile_seconds``, ``compile_cache_hit``,
    ``fast_route`` and the code's ``commit``."""
    commit = {"commit": checkpoint.source_commit()}
    if not isinstance(elbo, FastELBO):
        return {"compile_seconds": 0.0, "compile_cache_hit": None, "fast_route": "off"} | commit
    if probes is None:
        elbo.refuse("the batch is not the pair's one argument")
    elif not elbo.steps:
        elbo.prepare(model, guide, probes, planned_steps)
    return {
        "compile_seconds": elbo.compile_seconds,
        "compile_cache_hit": elbo.cache_hit,
        "fast_route": elbo.route,
    } | commit
