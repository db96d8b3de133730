"""Training: the SVI :class:`~pyro_vae.training.trainer.Trainer`, a loop over the pieces it uses
(the step :mod:`.svi`,
:mod:`.checkpoint`, the NaN and signal :mod:`.guards`, per-epoch :mod:`.figures`,
    :mod:`.early_stopping`,
:mod:`.tensorboard`), its fast path (:mod:`.capture`, :mod:`.fast`, :mod:`.optim`) and data-parallel
runs under torchrun (:mod:`.distributed`)."""
