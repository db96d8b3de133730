"""What a user's mistake raises, and how its one-line message names an option.

:class:`UserError` (a :class:`ValueError`) is the one class the ``pyro-vae`` command line reports
with exit status 2; its kinds are also the built-in errors a Python caller may catch. A message
names an option through :func:`option`: the Python argument (``lr=1e-3``) for a Python caller, the
flag (``--lr 1e-3``) while the command line runs inside :func:`naming_flags`.
"""

import contextlib


class UserError(ValueError):
    """A mistake of the user's (an option, the data, a file), told in one line that names the option
    and what to change; the CLI prints it without a traceback and exits with status 2."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder the user named (a run, a checkpoint, a data directory) is not there."""


class RunExistsError(UserError, FileExistsError):
    """The run directory already holds a run that the command would overwrite."""


class DataUnavailableError(UserError, RuntimeError):
    """A dataset is neither on disk nor downloadable here; the message says how to get it."""


_FLAGS = {}  # option name -> command-line flag, while the command line runs (naming_flags)


@contextlib.contextmanager
def naming_flags(flags):
    """Within the block, :func:`option` names each option ``name`` by its flag ``flags[name]``
    (``{"kl_warmup_epochs": "--kl-warmup-epochs", …}``): the command line's one mapping."""
    global _FLAGS
    saved, _FLAGS = _FLAGS, dict(flags)
    try:
        yield
    finally:
        _FLAGS = saved


def option(name, value=None):
    """The option ``name`` as a message names it, set to ``value`` written as in Python: for a
    Python caller ``lr``, ``lr=1e-3``, ``guide='top-down'``, ``lr=`` (``value=""``); inside
    :func:`naming_flags` the flags ``--lr``, ``--lr 1e-3``, ``--guide top-down``, ``--lr``
    (``latent_dims=[64, 32]`` → ``--latent-dims 64,32``, ``tensorboard=False`` →
    ``--no-tensorboard``, ``resume=True`` → ``--resume``)."""
    flag = _FLAGS.get(name)
    if flag is None:
        return name if value is None else f"{name}={value}"
    if value in (None, "", "True"):
        return flag
    if value == "False":
        return "--no-" + flag[2:]
    if value.startswith("["):
        value = ",".join(v.strip() for v in value[1:-1].split(","))
    return f"{flag} " + value.strip("'\"")
