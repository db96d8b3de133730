"""pyro_vae: variational autoencoders written the Pyro way.

Every model and guide is a Pyro function taking the batch ``x`` first; estimators
are swapped by name with :func:`make_elbo`, guides with :func:`make_guide`.

The names below are imported on first use (PEP 562), so ``import pyro_vae.config`` and
``pyro-vae --help`` do not import torch and Pyro.
"""
import importlib

_EXPORTS = {
    "Config": "config", "load_data": "data", "make_elbo": "estimators", "elbo_per_point": "evaluation",
    "evaluate": "evaluation", "make_guide": "guides", "HierarchicalVAE": "hierarchical", "log_likelihood": "importance",
    "log_weights": "importance", "make_likelihood": "likelihoods", "VAE": "models", "data_plate": "plates",
    "Trainer": "training", "FreeBitsELBO": "variants", "KLSchedule": "variants", "beta_scale": "variants",
}

__version__ = "0.1.0"

__all__ = ["Config", "Trainer", "VAE", "data_plate", "elbo_per_point", "evaluate", "load_data", "log_likelihood",
           "log_weights", "make_elbo", "make_guide", "make_likelihood", "FreeBitsELBO", "KLSchedule", "beta_scale",
           "HierarchicalVAE"]


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
