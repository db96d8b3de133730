"""Input checks run once, early, by the public entry points; each failure is one actionable line.

Every check raises :class:`~pyro_vae.core.errors.UserError` (a :class:`ValueError`) whose
message names the option through :func:`~pyro_vae.core.errors.option`, says what was wrong and
what to change, so that ``pyro-vae`` prints it without a traceback. Checks that need the data's
values (:func:`check_images`) cost one device sync per call and run once per dataset, never per
training step.
"""

import math
import numbers
import os

from pyro_vae.core.errors import (  # noqa: F401 (re-exported: checks.UserError, …)
    DataUnavailableError,
    MissingFileError,
    RunExistsError,
    UserError,
    naming_flags,
    option,
)

# torch is imported by the checks that need it, so that `pyro-vae --help` (config.py imports
# this) stays fast


CHECKPOINT_KEYS = ("epoch", "params", "optim", "rng")


def _number(name, value, integral, in_range, what, hint):
    """``value`` is a number of the kind ``integral`` asks for (not a bool) and ``in_range(value)``;
    else a UserError that says ``name must be WHAT``."""
    kind = numbers.Integral if integral else numbers.Real
    if isinstance(value, bool) or not isinstance(value, kind):
        raise UserError(
            f"{option(name)} must be {what}, got {value!r} ({type(value).__name__}){hint}"
        )
    if not ((integral or math.isfinite(value)) and in_range(value)):
        raise UserError(f"{option(name)} must be {what}, got {value!r}{hint}")
    return int(value) if integral else float(value)


def check_positive_int(name, value, hint=""):
    """``value`` is an ``int`` (not a bool) ≥ 1."""
    return _number(name, value, True, lambda v: v >= 1, "a positive integer", hint)


def check_nonnegative_int(name, value, hint=""):
    """``value`` is an ``int`` (not a bool) ≥ 0."""
    return _number(name, value, True, lambda v: v >= 0, "an integer >= 0", hint)


def check_positive_float(name, value, hint=""):
    """``value`` is a finite real number > 0 (the learning rate, σ, a clipping norm, …)."""
    return _number(name, value, False, lambda v: v > 0, "a finite positive number", hint)


def check_nonnegative_float(name, value, hint=""):
    """``value`` is a finite real number ≥ 0 (β, a free-bits floor, a loss weight)."""
    return _number(name, value, False, lambda v: v >= 0, "a finite number >= 0", hint)


def check_fraction(name, value, hint=""):
    """``value`` is a real number in (0, 1] (a decay factor)."""
    return _number(name, value, False, lambda v: 0 < v <= 1, "a number in (0, 1]", hint)


# The one check of each training option, by its Python name (a Config field, or an argument of
# Trainer, fit, make_optimizer, make_elbo): Config.validate calls it for a configured run, the
# Python entry point for a call. Each has an example value for the message (or None) and a note.
# None is accepted for the options in OPTIONAL.
OPTIONS = {
    "particles": (check_positive_int, "1", ""),
    "eval_particles": (check_positive_int, None, ""),
    "epochs": (check_positive_int, "10", ""),
    "batch_size": (check_positive_int, "128", ""),
    "lr": (check_positive_float, "1e-3", ""),
    "lr_decay": (check_fraction, None, "; 1 keeps the learning rate constant"),
    "clip_norm": (check_positive_float, "10", ", or None for no clipping"),
    "max_bad_steps": (check_positive_int, "10", ""),
    "bad_lr_factor": (check_fraction, None, "; e.g. 0.5 halves the learning rate"),
    "log_every": (check_positive_int, None, ""),
    "check_every": (check_positive_int, None, ""),
    "images_every": (check_nonnegative_int, None, "; 0: no images in TensorBoard"),
    "diagnostic_images": (check_nonnegative_int, None, "; 0: no per-epoch active units"),
    "early_stopping": (check_positive_int, "50", ", or None to train every epoch"),
    "warmup_epochs": (check_nonnegative_int, None, ""),
    "kl_warmup_epochs": (check_nonnegative_int, None, "; 0: no warm-up"),
    "beta": (check_nonnegative_float, None, "; 1 is the plain ELBO"),
    "free_bits": (check_nonnegative_float, None, "; nats per latent dimension, 0: off"),
    "limit": (check_positive_int, "1000", ", or None for all"),
    "test_limit": (check_positive_int, "1000", ", or None for all"),
    "image_size": (check_positive_int, "32", ", or None for the images' own size"),
    "test_fraction": (
        lambda name, v, hint: _number(
            name, v, False, lambda f: 0 < f < 1, "a number in (0, 1)", hint
        ),
        "0.1",
        "",
    ),
    "weight_ema": (
        lambda name, v, hint: _number(name, v, False, lambda d: 0 <= d < 1, "in [0, 1)", hint),
        "0.999",
        "; 0: off",
    ),
    "spectral_reg": (check_nonnegative_float, "0.1", "; λ per image, 0: off"),
    "time_budget": (check_nonnegative_float, "30", "; minutes of training, 0: off"),
    "skip_threshold": (
        check_positive_float,
        None,
        "; a gradient norm (nats per image in a Config), or None: off",
    ),
}
OPTIONAL = (
    "clip_norm",
    "check_every",
    "early_stopping",
    "limit",
    "test_limit",
    "image_size",
    "skip_threshold",
)


def check_option(name, value, argument=None):
    """Check the training option ``name`` (:data:`OPTIONS`) where it enters; the message names
    ``argument`` (the caller's own name for it, e.g. ``num_particles``; default ``name``)."""
    if value is None and name in OPTIONAL:
        return None
    check, example, note = OPTIONS[name]
    hint = "" if example is None else f"; e.g. {option(name, example)}"
    return check(argument or name, value, hint + note)


class Options:
    """A piece made with options (a listener, an estimator): it declares them in :attr:`options`
    and calls :meth:`check_options` when made, unless made with ``validate_args=False`` from values
    already checked where they entered (a :class:`~pyro_vae.app.config.Config`)."""

    options = {}  # {attribute: its option in OPTIONS}

    def check_options(self):
        """:func:`check_option` on each attribute named in :attr:`options`."""
        for attribute, name in self.options.items():
            check_option(name, getattr(self, attribute))


def check_choice(kind, value, choices, argument=None):
    """``value`` is one of ``choices`` (a registry's names); the message lists them and names
    ``argument``."""
    if not isinstance(value, str):
        raise UserError(f"{kind} name must be a string, got {value!r} ({type(value).__name__})")
    if value not in choices:
        where = f" ({option(argument, repr(value))})" if argument else ""
        raise UserError(
            f"unknown {kind} {value!r}{where}; choose one of {', '.join(sorted(choices))}"
        )
    return value


def check_images(x, name="x", x_shape=None, unit_interval=False):
    """``x`` is a non-empty floating tensor ``[N, *x_shape]`` of finite values (in [0, 1] if
    ``unit_interval``).

    One reduction and one host sync over the whole tensor: call it once per dataset.
    """
    import torch

    if not torch.is_tensor(x):
        raise TypeError(f"{name} must be a torch.Tensor of images [N, ...], got {type(x).__name__}")
    if not (x.is_floating_point()):
        raise TypeError(
            f"{name} must be a floating-point tensor, got dtype {x.dtype}; convert it with "
            f"{name}.float() (and divide 8-bit images by 255)"
        )
    if x.dim() < 1 or len(x) == 0:
        raise UserError(
            f"{name} must have shape [N, ...] with N >= 1 data points, got {tuple(x.shape)}"
        )
    if x_shape is not None and tuple(x.shape[1:]) != tuple(x_shape):
        raise UserError(
            f"{name} has data points of shape {tuple(x.shape[1:])} but the model expects "
            f"{tuple(x_shape)}; reshape the data to [N, {', '.join(map(str, x_shape))}] or build "
            "the model for this shape"
        )
    finite = torch.isfinite(x).all()
    if unit_interval:
        lo, hi = torch.aminmax(torch.nan_to_num(x, 0.5, 0.5, 0.5))
        finite, lo, hi = torch.stack([finite.to(x.dtype), lo, hi]).tolist()
    else:
        finite, lo, hi = bool(finite), 0.0, 1.0
    if not finite:
        bad = (~torch.isfinite(x)).sum().item()
        raise UserError(
            f"{name} holds {bad} NaN or infinite value(s); clean or drop those data points first"
        )
    if unit_interval and (lo < 0 or hi > 1):
        raise UserError(
            f"{name} has values in [{lo:.4g}, {hi:.4g}] but the Bernoulli likelihood needs values "
            "in [0, 1] (so do the 8-bit ones); rescale the data (e.g. divide 8-bit images by 255) "
            f"or use a Gaussian likelihood ({option('likelihood', repr('gaussian'))} or "
            f"{option('likelihood', repr('sigma-vae'))})"
        )
    return x


def model_x_shape(model):
    """The data-point shape a built-in model expects (``model.__self__.x_shape``), or None for a
    plain function."""
    owner = getattr(model, "__self__", None)
    shape = getattr(owner, "x_shape", None)
    return tuple(shape) if shape is not None else None


def model_wants_unit_interval(model):
    """True when ``model`` is a built-in model whose likelihood needs data in [0, 1] (it says
    ``unit_interval``)."""
    owner = getattr(model, "__self__", None)
    return getattr(getattr(owner, "likelihood", None), "unit_interval", False) is True


def model_is_eight_bit(model):
    """True when ``model`` is a built-in model with an 8-bit likelihood (it says ``eight_bit``)."""
    return (
        getattr(getattr(getattr(model, "__self__", None), "likelihood", None), "eight_bit", False)
        is True
    )


def check_data_for_model(model, x, name="x"):
    """:func:`check_images` with the shape and range the model's own attributes ask for."""
    return check_images(
        x, name, x_shape=model_x_shape(model), unit_interval=model_wants_unit_interval(model)
    )


def check_pair_runs(model, guide, x, *args, **kwargs):
    """Trace ``guide`` and ``model`` once on ``x[:2]`` and return their max plate nesting; a failure
    deep in torch becomes one UserError line (:func:`~pyro_vae.core.checked_probe`)."""
    from pyro_vae.core.pair import checked_probe

    return checked_probe(model, guide, x[:2], *args, **kwargs).max_plate_nesting


def check_device(device):
    """``device`` names an existing device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` with N < the
    GPU count."""
    import torch

    if isinstance(device, torch.device):
        device = str(device)
    if not isinstance(device, str):
        raise UserError(f"device must be a string such as 'cpu' or 'cuda:0', got {device!r}")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UserError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(
                f"device {device!r} was asked for but CUDA is not available here; "
                f"use {option('device', repr('cpu'))} or {option('device', repr('auto'))}"
            )
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise UserError(
                f"device {device!r} does not exist: this machine has {count} GPU(s), "
                f"cuda:0 … cuda:{count - 1}"
            )
    elif dev.type != "cpu":
        raise UserError(f"unsupported device {device!r}; use auto, cpu, cuda or cuda:N")
    return dev


def load_checkpoint(path):
    """Read a trainer checkpoint; a missing, unreadable or foreign file raises one actionable
    error."""
    import torch

    if not os.path.exists(path):
        raise MissingFileError(
            f"no checkpoint at {path!r}; train the run first (without {option('resume', 'True')} "
            "to start it)"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # truncated file, not a torch file, pickle error …
        raise UserError(
            f"checkpoint {path!r} is unreadable ({type(e).__name__}); it may be corrupt or "
            "truncated: restore it from a backup or start a new run in another directory"
        ) from None
    missing = [k for k in CHECKPOINT_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise UserError(
            f"{path!r} is not a pyro_vae checkpoint (missing {missing}); point to a run directory "
            f"written by pyro-vae train"
        )
    return state


def check_eight_bit(eight_bit, binarize, likelihood="the 8-bit likelihood"):
    """An 8-bit likelihood needs the grey levels k/255 (``binarize="none"``), not binarized
    images."""
    if eight_bit and binarize != "none":
        raise UserError(
            f"the {likelihood} likelihood models 8-bit grey levels but the data is binarized "
            f"({option('binarize', repr(binarize))}); pass {option('binarize', repr('none'))}"
        )


def check_kl_weights(elbo, scaled, free_bits, weighted):
    """A β, a KL warm-up (``scaled``) or ``free_bits`` only with an estimator that is a sum of
    per-site terms (``weighted``: their names); free bits not with enumerated latents."""
    if (scaled or free_bits) and elbo not in weighted:
        name = lambda e: option("elbo", repr(e))  # noqa: E731
        raise UserError(
            f"{name(elbo)} is an importance-weighted bound: a β or free-bits weight on the KL "
            "inside its log-sum-exp is no longer a bound on log p(x), so it is refused; use "
            f"{name('trace')}, {name('meanfield')} or {name('stl')} with {option('beta', '')}, "
            f"{option('kl_warmup_epochs', '')} or {option('free_bits', '')} (or leave those out)"
        )
    if free_bits and elbo == "enum":
        raise UserError(
            f"{option('free_bits')} does not support enumerated discrete latents "
            f"({option('elbo', repr('enum'))}); use {option('elbo', repr('trace'))} or "
            f"{option('elbo', repr('meanfield'))}, or leave out {option('free_bits')}"
        )
