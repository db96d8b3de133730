"""Data-parallel SVI across processes started by ``torchrun`` (``torch.distributed``).

Every rank holds the whole model and the whole (device-resident) dataset, draws the same permutation
each epoch and takes its share of every global batch (``idx[rank::world_size]``). After each
backward pass the gradients of all Pyro parameters are averaged across ranks in one flattened
all-reduce, so every rank takes the same optimizer step. The data plate's scale ``num_data /
local_batch`` averaged over ranks gives ``num_data / global_batch`` times the global batch's sum:
the estimate of the full-data ELBO is the one of a single process with the global batch. Rank 0
alone writes metrics, pictures and checkpoints; evaluation is sharded and summed. Backend: NCCL for
CUDA devices, one rank a GPU; gloo for CPUs, and for CUDA when a machine runs more ranks than it has
GPUs (NCCL refuses two ranks on one GPU; gloo reduces CUDA tensors through the host).
"""

import os

import torch
import torch.distributed as dist


def launched():
    """True when the process was started by torchrun with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(device):
    """Join the process group torchrun set up; return the device this rank should use.

    ``device`` is the requested device; for CUDA each rank takes ``cuda:(LOCAL_RANK mod the GPU
    count)``.
    """
    if not launched():
        return device
    backend = "gloo"
    if device.type == "cuda":
        gpus = torch.cuda.device_count()
        local = int(os.environ.get("LOCAL_RANK", "0"))
        device = torch.device("cuda", local % gpus)
        torch.cuda.set_device(device)
        ranks_here = int(os.environ.get("LOCAL_WORLD_SIZE", str(local + 1)))
        backend = "nccl" if ranks_here <= gpus else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend)
    return device


def active():
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank():
    return dist.get_rank() if active() else 0


def world_size():
    return dist.get_world_size() if active() else 1


def is_main():
    """Whether this process writes files (rank 0, or the only process)."""
    return rank() == 0


def shard(index):
    """This rank's share of a global batch of indices."""
    return index[rank() :: world_size()] if active() else index


def broadcast_parameters(params):
    """Make every rank start from rank 0's parameter values."""
    if active():
        for p in params:
            dist.broadcast(p.data, src=0)


def average_gradients(params):
    """Replace each parameter's gradient by its mean over ranks (one flattened all-reduce).

    ``params`` must be listed in the same order on every rank (sort them by name).
    """
    if not active():
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset : offset + n].view_as(p).clone()
        offset += n


def all_sum(tensor):
    """Sum of ``tensor`` over ranks (returned, not in place)."""
    if not active():
        return tensor
    tensor = tensor.clone()
    dist.all_reduce(tensor)
    return tensor


def all_gather_objects(obj):
    """A list with every rank's ``obj`` (for RNG states in checkpoints)."""
    if not active():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier():
    if active():
        dist.barrier()


def shutdown():
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
