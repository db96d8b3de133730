"""Training: the SVI :class:`~pyro_vae.training.trainer.Trainer`, a loop over the pieces it uses
(the step :mod:`.svi`, :mod:`.checkpoint`, the NaN and signal :mod:`.guards`, per-epoch
:mod:`.figures`, :mod:`.early_stopping`, :mod:`.tensorboard`, :mod:`.console`, the weights'
moving average :mod:`.weight_ema`; the
:class:`~.listeners.Listener` hooks they share), its fast path (:mod:`.fast_path`, over
:mod:`pyro_vae.estimators.fast`; :mod:`.optim`) and data-parallel runs under torchrun
(:mod:`.distributed`)."""
