"""What the trainer's loop tells the rest of a run: :class:`Listener` and its hooks (as Lightning's
and Keras' callbacks).

The loop (:class:`~pyro_vae.training.trainer.Trainer`) runs epochs of steps and calls, on every
listener in the order of their :attr:`Listener.order`:

======================================== ===========================================================
``on_run_start(trainer)``                once per ``fit``, after a resumed checkpoint is restored
``on_epoch_start(trainer)``              before an epoch's first step, ``trainer.epoch`` epochs done
``on_step_start(trainer)``               before each step
``on_step_end(trainer, step, loss, ok)`` after each step: its −ELBO and ``ok`` flag (device tensors)
``on_bad_steps(trainer, count, step)``   when ``count`` new non-finite steps were found (skipped)
``on_train_epoch_end(trainer, step)``    after an epoch's last step, before its metrics are taken
``on_epoch_end(trainer, metrics)``       with the epoch's metrics row (a listener may add to it)
``on_run_end(trainer)``                  when ``fit`` returns or raises
======================================== ===========================================================

A listener with state of its own that a resume needs (as Lightning's ``on_save_checkpoint``)
returns it from ``state_dict()``; the checkpoint keeps it under its class name, and a resume hands
it back to ``load_state_dict(state)`` before ``on_run_start``.

Each piece of a run is one listener in its own module: :class:`~.figures.Evaluation`,
:class:`~.guards.NaNGuard`, :class:`~.guards.SignalStop`, :class:`~.early_stopping.EarlyStopping`,
:class:`~.checkpoint.MetricsFile`, :class:`~.checkpoint.Checkpoints`,
:class:`~.tensorboard.TensorBoard`, :class:`~.console.Console`, and where asked
:class:`~.weight_ema.WeightEMA`, :class:`~.time_budget.TimeBudget` and
:class:`~.model_epochs.ModelEpochs`. A user's listener
subclasses :class:`Listener` and overrides the hooks it needs::

    class PrintKL(Listener):
        def on_epoch_end(self, trainer, metrics):
            print(trainer.epoch, metrics["test_kl"])

    Trainer(model, guide, listeners=[PrintKL()])

A listener with options declares them in :attr:`Listener.options` and checks them when made,
unless it is made with ``validate_args=False`` from values already checked where they entered (as
:func:`pyro_vae.app.run.build_trainer` does from a checked :class:`~pyro_vae.app.config.Config`).
"""

from pyro_vae.core.checks import Options


class Listener(Options):
    """Base class: every hook does nothing. :attr:`order` sorts listeners (lower first at every
    hook); :attr:`options` are its checked options (:class:`~pyro_vae.core.checks.Options`)."""

    order = 100

    def on_run_start(self, trainer):
        pass

    def on_epoch_start(self, trainer):
        pass

    def on_step_start(self, trainer):
        pass

    def on_step_end(self, trainer, step, loss, ok):
        pass

    def on_bad_steps(self, trainer, count, step):
        pass

    def on_train_epoch_end(self, trainer, step):
        pass

    def on_epoch_end(self, trainer, metrics):
        pass

    def on_run_end(self, trainer):
        pass

    def state_dict(self):
        """What the checkpoint keeps of this listener (None: nothing)."""
        return None

    def load_state_dict(self, state):
        pass


class Callback(Listener):
    """Plain functions as a listener: ``before_epoch(trainer)`` at each epoch's start (first of all
    listeners) and ``after_epoch(trainer, metrics)`` at its end (last of all)."""

    order = 1000

    def __init__(self, before_epoch=None, after_epoch=None):
        self.before_epoch, self.after_epoch = before_epoch, after_epoch

    def on_epoch_start(self, trainer):
        if self.before_epoch:
            self.before_epoch(trainer)

    def on_epoch_end(self, trainer, metrics):
        if self.after_epoch:
            self.after_epoch(trainer, metrics)


def merged(defaults, given):
    """The listeners of a run: ``defaults`` where ``given`` holds none of the same class, and
    ``given``."""
    kinds = {type(listener) for listener in given}
    return [d for d in defaults if type(d) not in kinds] + list(given)
