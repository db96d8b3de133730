"""Training: the SVI :class:`~pyro_vae.training.trainer.Trainer`, its fast path (:mod:`.fast`, :mod:`.optim`)
and data-parallel runs under torchrun (:mod:`.distributed`)."""
