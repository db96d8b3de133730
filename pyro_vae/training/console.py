"""What a run prints: a progress bar per epoch with the running loss, one line per epoch, the fast
path's note."""

from tqdm.auto import tqdm

from pyro_vae.training import distributed
from pyro_vae.training.listeners import Listener


class Console(Listener):
    """The progress bar of each epoch (the running loss every ``log_every`` steps) and one line of
    metrics per epoch, printed by the main process; the fast path's note once when the run
    starts."""

    order = 50
    options = {"log_every": "log_every"}

    def __init__(self, log_every=50, validate_args=True):
        self.log_every = log_every
        self.bar = None
        if validate_args:
            self.check_options()

    def on_run_start(self, trainer):
        if distributed.is_main() and trainer.fast_note:
            tqdm.write(trainer.fast_note)

    def on_epoch_start(self, trainer):
        self.bar = tqdm(
            total=trainer.run.steps_per_epoch,
            desc=f"epoch {trainer.epoch + 1}/{trainer.run.epochs}",
            leave=False,
            disable=not distributed.is_main(),
        )
        self.note = trainer.fast_note

    def on_step_end(self, trainer, step, loss, ok):
        self.bar.update(1)
        if step % self.log_every == 0 and step > trainer.bad_steps:
            self.bar.set_postfix(loss=f"{trainer.running_loss(step):.2f}")

    def on_train_epoch_end(self, trainer, step):
        self.bar.close()

    def on_epoch_end(self, trainer, metrics):
        if not distributed.is_main():
            return
        if trainer.fast_note != self.note:  # the fast path was dropped at this epoch's start
            tqdm.write(trainer.fast_note)
        shown = {k: v for k, v in metrics.items() if k not in ("fast_path_note", "kl_per_dim")}
        tqdm.write(
            " ".join(
                f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in shown.items()
            )
        )

    def on_run_end(self, trainer):
        if self.bar is not None:
            self.bar.close()
