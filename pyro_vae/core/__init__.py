"""The lowest layer: facts about a model/guide pair read from one trace (:mod:`.pair`), input
checks (:mod:`.checks`), the data plate (:mod:`.plates`), KL per dimension (:mod:`.kl`), particles
in passes of bounded memory (:mod:`.chunks`) and freed CPU memory (:mod:`.host_memory`).  Imports
nothing above it; its names are imported on first use, so that ``pyro-vae --help`` imports neither
torch nor pyro."""

import importlib

_PROBE = (
    "PairInfo",
    "PlateInfo",
    "batch_as_argument",
    "checked_probe",
    "find_data_plate",
    "plate_nesting",
    "probe",
)
__all__ = list(_PROBE)


def __getattr__(name):
    if name in _PROBE:
        return getattr(importlib.import_module(f"{__name__}.pair"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
