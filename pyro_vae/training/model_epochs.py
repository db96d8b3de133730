"""A model's own work between epochs, as a listener: :class:`ModelEpochs`.

A model may define ``begin_epoch(epoch, x)``, called before each epoch's first step with the
epochs done and a batch of training images, and ``end_epoch(x) -> dict``, called after the
epoch's last step: its dict joins the epoch's metrics row (e.g. vq-vae: dead-code restarts,
codebook usage and perplexity per level). Both run outside the training step, so the fast path's
captured step never sees them, and draw from the training RNG, so a resume repeats them exactly.
"""

import torch

from pyro_vae.training.listeners import Listener


class ModelEpochs(Listener):
    """Calls ``model.begin_epoch(epoch, x)`` and ``model.end_epoch(x)`` (where defined) on
    ``images`` random training images; the dict of ``end_epoch`` is added to the row."""

    order = 5  # after the evaluation's figures (0), before the metrics file (20) writes the row

    def __init__(self, model, images=256):
        self.model, self.images, self.row = model, images, {}

    def _batch(self, trainer):
        train = trainer.run.data.train
        idx = torch.randint(len(train), (min(self.images, len(train)),), device=train.device)
        return train[idx]

    def on_epoch_start(self, trainer):
        if hasattr(self.model, "begin_epoch"):
            self.model.begin_epoch(trainer.epoch, self._batch(trainer))

    def on_train_epoch_end(self, trainer, step):
        if hasattr(self.model, "end_epoch"):
            self.row = self.model.end_epoch(self._batch(trainer))

    def on_epoch_end(self, trainer, metrics):
        metrics.update(self.row)
