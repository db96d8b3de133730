"""pyro_vae: variational autoencoders written the Pyro way.

Every model and guide is a Pyro function, called the way :class:`pyro.infer.SVI` calls it;
estimators are swapped by name with :func:`make_elbo`, guides with :func:`make_guide`.

The names below are imported on first use (PEP 562), so ``import pyro_vae.app.config`` and
``pyro-vae --help`` do not import torch and Pyro.
"""

import importlib

_EXPORTS = {  # imported on first use, so that `pyro-vae --help` imports neither torch nor pyro
    "Config": "app.config",
    "data_plate": "core.plates",
    "probe": "core.pair",
    "UserError": "core.errors",
    "ModelSpec": "models.spec",
    "load_data": "data",
    "make_elbo": "estimators",
    "log_likelihood": "estimators.importance",
    "log_weights": "estimators.importance",
    "FreeBits_ELBO": "estimators.variants",
    "KLSchedule": "estimators.variants",
    "beta_scale": "estimators.variants",
    "elbo_per_point": "evaluation.terms",
    "evaluate": "evaluation.metrics",
    "make_guide": "guides",
    "HierarchicalVAE": "models.hierarchical",
    "make_likelihood": "models.likelihoods",
    "VAE": "models.vae",
    "VampPrior": "models.priors",
    "PseudoInputs": "models.priors",
    "Trainer": "training.trainer",
    "Optimization": "training.optim",
    "Listener": "training.listeners",
    "gradient_snr": "evaluation.gradient_snr",  # the estimator lab (issue #32)
}

__version__ = "0.1.0"

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
