"""The data plate shared by every model and guide.

Contract: a model and its guide both take the batch ``x`` first and put each
data point's sites inside ``pyro.plate("data", ...)`` at dim -1 (or at the
dim of their choice, as long as both agree).  With ``num_data`` set, the plate
records the full dataset size, so every log-density inside it is scaled by
``num_data / len(x)`` and the loss estimates the full-data ELBO.
"""

import pyro
import torch


def data_plate(x, num_data=None, name="data", dim=-1):
    """``pyro.plate(name, num_data, subsample=arange(len(x)))``: a plate over the batch with scale
    num_data / len(x)."""
    batch = x.shape[0]
    if num_data is None:
        return pyro.plate(name, batch, dim=dim)
    return pyro.plate(name, num_data, subsample=torch.arange(batch, device=x.device), dim=dim)
