"""pyro_vae: variational autoencoders written the Pyro way.

Every model and guide is a Pyro function taking the batch ``x`` first; estimators
are swapped by name with :func:`make_elbo`, guides with :func:`make_guide`.
"""
from .config import Config
from .data import load_data
from .estimators import make_elbo
from .evaluation import elbo_per_point, evaluate
from .guides import make_guide
from .hierarchical import HierarchicalVAE
from .importance import log_likelihood, log_weights
from .likelihoods import make_likelihood
from .models import VAE
from .plates import data_plate
from .priors import PseudoInputs, VampPrior
from .training import Trainer
from .variants import FreeBitsELBO, KLSchedule, beta_scale

__version__ = "0.1.0"

__all__ = ["Config", "Trainer", "VAE", "data_plate", "elbo_per_point", "evaluate", "load_data", "log_likelihood",
           "log_weights", "make_elbo", "make_guide", "make_likelihood", "FreeBitsELBO", "KLSchedule", "beta_scale",
           "HierarchicalVAE", "PseudoInputs", "VampPrior"]
