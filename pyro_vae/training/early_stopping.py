"""Early stopping on the validation ELBO: the best epoch of a run's metrics, when to stop, what
``best.pt`` keeps."""

import math

import pyro
from tqdm.auto import tqdm

from pyro_vae.core.checks import UserError, check_option, option
from pyro_vae.training import distributed
from pyro_vae.training.listeners import Listener


def best_epoch(history):
    """The epoch with the highest finite ``validation_elbo`` among the metrics rows ``history`` (the
    first of ties), or None."""
    scored = [
        (m["validation_elbo"], -m["epoch"])
        for m in history
        if m.get("validation_elbo") is not None and math.isfinite(m["validation_elbo"])
    ]
    return -max(scored)[1] if scored else None


def should_stop(history, epoch, patience, warmup_epochs=0):
    """Whether ``patience`` epochs have passed since the best validation ELBO, counted from the
    warm-up's end.

    It is read from ``history`` alone, so a resumed run continues the count exactly.
    """
    best = best_epoch(history)
    return bool(history) and best is not None and epoch - max(best, warmup_epochs) >= patience


def snapshot(epoch, modules):
    """Parameters and the ``modules``' buffers now (on the CPU), with the epoch: what ``best.pt``
    holds."""
    store = pyro.get_param_store()
    return {
        "epoch": epoch,
        "params": {name: p.detach().cpu().clone() for name, p in store.named_parameters()},
        "buffers": {
            i: {k: b.detach().cpu().clone() for k, b in m.named_buffers()}
            for i, m in enumerate(modules)
        },
    }


class EarlyStopping(Listener):
    """Stop once ``validation_elbo`` has not improved for ``patience`` epochs in a row after the
    first ``warmup_epochs`` (the count stays at 0 during warm-up); the parameters of the best epoch
    are kept in ``trainer.best`` (saved in the checkpoint and in ``best.pt`` by
    :class:`~.checkpoint.Checkpoints`)."""

    # after the evaluation that gives validation_elbo, before the checkpoint that saves the best
    order = 10

    def __init__(self, patience, warmup_epochs=0):
        check_option("early_stopping", patience)
        check_option("warmup_epochs", warmup_epochs)
        self.patience, self.warmup_epochs = patience, warmup_epochs

    def on_run_start(self, trainer):
        if trainer.run.val_x is None:
            raise UserError(
                "early stopping watches the validation ELBO, but the data has no validation split; "
                f"load it with {option('validation', 'N')} (e.g. 10000), pass val_x, or leave out "
                + option("early_stopping")
            )
        self._update(trainer)

    def on_epoch_end(self, trainer, metrics):
        if best_epoch(trainer.history) == trainer.epoch:
            trainer.best = snapshot(trainer.epoch, trainer.modules)
        self._update(trainer)

    def on_run_end(self, trainer):
        if trainer.stopped and trainer.progress and distributed.is_main():
            tqdm.write(
                f"early stopping after epoch {trainer.epoch}: the validation ELBO peaked at epoch "
                f"{best_epoch(trainer.history)}"
            )

    def _update(self, trainer):
        trainer.stopped = should_stop(
            trainer.history, trainer.epoch, self.patience, self.warmup_epochs
        )
