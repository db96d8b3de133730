"""Early stopping on the validation ELBO: the best epoch of a run's metrics, when to stop, what ``best.pt`` keeps."""
import math

import pyro


def best_epoch(history):
    """The epoch with the highest finite ``validation_elbo`` among the metrics rows ``history`` (the first of ties),
    or None."""
    scored = [(m["validation_elbo"], -m["epoch"]) for m in history
              if m.get("validation_elbo") is not None and math.isfinite(m["validation_elbo"])]
    return -max(scored)[1] if scored else None


def should_stop(history, epoch, patience, warmup_epochs=0):
    """Whether ``patience`` epochs have passed since the best validation ELBO, counted from the warm-up's end.

    It is read from ``history`` alone, so a resumed run continues the count exactly.
    """
    best = best_epoch(history)
    return bool(history) and best is not None and epoch - max(best, warmup_epochs) >= patience


def snapshot(epoch, modules):
    """Parameters and the ``modules``' buffers now (on the CPU), with the epoch: what ``best.pt`` holds."""
    store = pyro.get_param_store()
    return {"epoch": epoch,
            "params": {name: p.detach().cpu().clone() for name, p in store.named_parameters()},
            "buffers": {i: {k: b.detach().cpu().clone() for k, b in m.named_buffers()} for i, m in enumerate(modules)}}
