"""pyro_vae: variational autoencoders written the Pyro way.

Every model and guide is a Pyro function taking the batch ``x`` first; estimators
are swapped by name with :func:`make_elbo`, guides with :func:`make_guide`.
"""
from pyro_vae.app.config import Config
from pyro_vae.core.plates import data_plate
from pyro_vae.data import load_data
from pyro_vae.estimators import make_elbo
from pyro_vae.estimators.importance import log_likelihood, log_weights
from pyro_vae.estimators.variants import FreeBitsELBO, KLSchedule, beta_scale
from pyro_vae.evaluation.metrics import elbo_per_point, evaluate
from pyro_vae.guides import make_guide
from pyro_vae.models.hierarchical import HierarchicalVAE
from pyro_vae.models.likelihoods import make_likelihood
from pyro_vae.models.vae import VAE
from pyro_vae.training.trainer import Trainer

__version__ = "0.1.0"

__all__ = ["Config", "Trainer", "VAE", "data_plate", "elbo_per_point", "evaluate", "load_data", "log_likelihood",
           "log_weights", "make_elbo", "make_guide", "make_likelihood", "FreeBitsELBO", "KLSchedule", "beta_scale",
           "HierarchicalVAE"]
