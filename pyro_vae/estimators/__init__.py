"""ELBO estimators, swapped by name with :func:`make_elbo`.

Every estimator is a :class:`pyro.infer.ELBO` with ``loss``, ``loss_and_grads``
and ``differentiable_loss``, usable in :class:`pyro.infer.SVI`.  Particles are
vectorized (one batched pass over ``num_particles`` samples).

=========== ===================================================================
``trace``     Pyro's Trace_ELBO, its loss kept on the device (:mod:`.trace`)
``meanfield`` Pyro's TraceMeanField_ELBO (analytic KL where available), likewise
``iwae``      importance-weighted bound per data point (:mod:`.iwae`)
``dreg``      IWAE bound, doubly-reparameterized guide gradient (:mod:`.dreg`)
``stl``       ELBO, sticking-the-landing guide gradient (:mod:`.stl`)
``renyi``     Rényi bound of order ``alpha`` per data point (:mod:`.renyi`)
``enum``      Pyro's TraceEnum_ELBO, for enumerated discrete latents
=========== ===================================================================

The bounds per data point (iwae, dreg, renyi) share one code path (:mod:`.base`):
subsampling is applied outside the log-sum-exp, other per-site scales are refused.
``trace``, ``meanfield`` and ``stl`` are ELBOs, sums of per-site terms, and take every
pair that Pyro's ``Trace_ELBO`` takes.  Every estimator calls the pair as SVI does.

``make_elbo(name, fast="auto")`` wraps the estimator in :class:`~.fast.FastELBO`, which replays its
loss and gradients from one captured graph (the trainer does this itself, see
``Trainer(fast=...)``).
"""

import inspect

from pyro_vae.core.checks import UserError, check_choice, check_option
from pyro_vae.estimators.base import DetachedPathELBO, ImportanceWeightedELBO
from pyro_vae.estimators.dreg import DReG_ELBO
from pyro_vae.estimators.fast import FastELBO
from pyro_vae.estimators.iwae import IWAE_ELBO
from pyro_vae.estimators.kl_balance import KLBalanced_ELBO
from pyro_vae.estimators.renyi import RenyiBound_ELBO
from pyro_vae.estimators.stl import STL_ELBO
from pyro_vae.estimators.trace import DeviceTrace_ELBO, DeviceTraceMeanField_ELBO, Enum_ELBO
from pyro_vae.estimators.variants import FreeBits_ELBO

# every estimator, listed explicitly: each class declares ``needs_inverse`` (scores the guide at a
# detached z, so a flow guide must be invertible) and ``traceable`` (the fast path may capture it)
ESTIMATORS = {
    "trace": DeviceTrace_ELBO,
    "meanfield": DeviceTraceMeanField_ELBO,
    "enum": Enum_ELBO,
    "iwae": IWAE_ELBO,
    "dreg": DReG_ELBO,
    "stl": STL_ELBO,
    "renyi": RenyiBound_ELBO,
    "free-bits": FreeBits_ELBO,
}


def register_elbo(name):
    """Decorator adding an estimator class ``f(num_particles, **options)`` to :data:`ESTIMATORS`.

    The class declares ``needs_inverse`` and ``traceable`` as class attributes.
    """

    def decorator(builder):
        ESTIMATORS[name] = builder
        return builder

    return decorator


def _options_of(builder):
    return sorted(
        set(inspect.signature(builder).parameters) - {"self", "num_particles", "args", "kwargs"}
    )


def make_elbo(name, num_particles=1, data_plate=None, fast=False, **options):
    """Return the estimator ``name`` with ``num_particles`` vectorized particles.

    :param str name: one of :data:`ESTIMATORS`: ``trace`` (Trace_ELBO), ``meanfield``
        (TraceMeanField_ELBO, analytic KL where available), ``iwae``, ``dreg``, ``stl``,
        ``renyi`` (option ``alpha``), ``enum`` (TraceEnum_ELBO) and any registered later.
    :param int num_particles: samples per data point, drawn in one batched pass.
    :param str data_plate: the plate over data points, for the estimators that take one (the bounds
        per data point); the ELBOs read every scale from the trace and need no name.
    :param fast: False, or a :class:`~pyro_vae.estimators.fast.FastELBO` mode (``"auto"``,
        ``"compile"``, ``"trace"``): the estimator's loss and gradients replayed from one captured
        graph per batch size.
    :param options: estimator options, e.g. ``max_plate_nesting``; an unknown option raises
        ValueError.
    """
    check_choice("estimator", name, ESTIMATORS)
    check_option("particles", num_particles, "num_particles")
    builder = ESTIMATORS[name]
    valid = _options_of(builder)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise UserError(
            f"unknown option(s) {unknown} for estimator {name!r}; valid options: {valid}"
        )
    if data_plate is not None and "data_plate" in valid:
        options["data_plate"] = data_plate
    options.setdefault("vectorize_particles", True)
    elbo = builder(num_particles=num_particles, **options)
    return elbo if fast is False else FastELBO(elbo, fast)


__all__ = [
    "DReG_ELBO",
    "DetachedPathELBO",
    "Enum_ELBO",
    "FreeBits_ELBO",
    "DeviceTraceMeanField_ELBO",
    "DeviceTrace_ELBO",
    "ESTIMATORS",
    "FastELBO",
    "IWAE_ELBO",
    "ImportanceWeightedELBO",
    "KLBalanced_ELBO",
    "RenyiBound_ELBO",
    "STL_ELBO",
    "make_elbo",
    "register_elbo",
]
