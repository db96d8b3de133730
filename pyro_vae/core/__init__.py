"""The lowest layer: facts about a model/guide pair read from one trace (:mod:`.probe`).  Imports nothing above it."""
from pyro_vae.core.probe import PairInfo, PlateInfo, checked_probe, find_data_plate, plate_nesting, probe

__all__ = ["PairInfo", "PlateInfo", "checked_probe", "find_data_plate", "plate_nesting", "probe"]
