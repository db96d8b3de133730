"""One probe of a model/guide pair: trace the guide once, replay the model against it, and read
every fact that the trainer, the estimators, the evaluator and the pictures need from those two
traces.

Pairs are called the way :class:`pyro.infer.SVI` calls them, ``model(*args, **kwargs)`` and
``guide(*args, **kwargs)``, with nothing required: the batch is found from the *data plate*, never
from ``len(args[0])``. The data plate is the plate that every observed site sits in; where several
plates qualify (e.g. ``data`` around ``pixels``) the one that is subsampled, else the one named
``"data"``, else the outermost one is taken, and ``data_plate=NAME`` says which where that guess is
not wanted.
"""

from typing import Dict, NamedTuple, Optional, Tuple

import torch
from pyro import poutine
from pyro.poutine.util import prune_subsample_sites
from pyro_vae.core.errors import UserError


class PlateInfo(NamedTuple):
    """A plate as traced: ``size`` (the full size N), ``subsample_size`` (the batch B in this call),
    its ``dim`` and ``scale`` = N / B, the factor that makes a batch's log-density estimate the full
    data's."""

    name: str
    size: int
    subsample_size: int
    dim: Optional[int]

    @property
    def scale(self):
        return self.size / self.subsample_size


class PairInfo(NamedTuple):
    """What one probe of a pair found.

    :param int max_plate_nesting: batch dims its vectorized plates use.
    :param PlateInfo data_plate: the plate over data points (None when no observed site sits in a
        plate).
    :param dict observed: ``{site: event_shape}`` of the model's observed sites.
    :param dict latent: ``{site: event_shape}`` of the guide's latent sites, in the guide's order.
    :param dict plates: ``{name: PlateInfo}`` of every plate of model and guide.
    :param tuple params: the names of every ``pyro.param`` (``pyro.module`` parameters included)
        they read.
    """

    max_plate_nesting: int
    data_plate: Optional[PlateInfo]
    observed: Dict[str, Tuple[int, ...]]
    latent: Dict[str, Tuple[int, ...]]
    plates: Dict[str, PlateInfo]
    params: Tuple[str, ...]
    model_trace: object
    guide_trace: object

    @property
    def batch_size(self):
        """Data points in this call: the data plate's subsample size."""
        return None if self.data_plate is None else self.data_plate.subsample_size


def plate_nesting(*traces):
    """The number of batch dims the vectorized plates of ``traces`` use."""
    dims = [
        -f.dim
        for tr in traces
        for site in tr.nodes.values()
        if site["type"] == "sample"
        for f in site["cond_indep_stack"]
        if f.vectorized
    ]
    return max(dims, default=0)


def _plates(*traces):
    plates = {}
    for tr in traces:
        for site in tr.nodes.values():
            for f in site.get("cond_indep_stack", ()):
                if f.name not in plates:
                    plates[f.name] = PlateInfo(f.name, f.full_size or f.size, f.size, f.dim)
    return plates


def find_data_plate(model_trace, guide_trace=None, name=None, ignore=()):
    """The :class:`PlateInfo` of the data plate of a traced pair, or None when no observed site is
    in a plate.

    ``name`` picks it; otherwise it is the plate that every observed site sits in (see the module
    docstring). ``ignore``: plates that are never the data plate (e.g. a plate over particles).
    """
    traces = [t for t in (model_trace, guide_trace) if t is not None]
    plates = _plates(*traces)
    if name is not None:
        if name not in plates:
            raise UserError(
                f"no site of the model or guide is inside the plate {name!r} "
                f"(data_plate={name!r}); their plates are "
                f"{sorted(p for p in plates if p not in ignore) or 'none'}"
            )
        return plates[name]
    observed = [
        s
        for s in model_trace.nodes.values()
        if s["type"] == "sample" and s["is_observed"] and not s["name"].startswith("_")
    ]
    if not observed:
        return None
    common = None
    for site in observed:
        names = [
            f.name for f in site["cond_indep_stack"] if f.name not in ignore
        ]  # outermost first
        common = names if common is None else [n for n in common if n in names]
    if not common:
        return None
    if len(common) == 1:
        return plates[common[0]]
    subsampled = [n for n in common if plates[n].size != plates[n].subsample_size]
    if len(subsampled) == 1:
        return plates[subsampled[0]]
    if "data" in common:
        return plates["data"]
    sites = [s for t in traces for s in t.nodes.values() if s["type"] == "sample"]
    count = {n: sum(any(f.name == n for f in s["cond_indep_stack"]) for s in sites) for n in common}
    return plates[
        max(common, key=lambda n: count[n])
    ]  # holds the most sites (latents too); ties: the outermost


def _event_shape(site):
    return tuple(site["fn"].event_shape)


def check_observed_shapes(model_trace):
    """Raise ValueError when an observed site's data would be broadcast to its distribution's
    shape."""
    for name, site in model_trace.nodes.items():
        if site["type"] == "sample" and site["is_observed"] and torch.is_tensor(site["value"]):
            shape, value = tuple(site["fn"].shape()), tuple(site["value"].shape)
            if torch.broadcast_shapes(shape, value) != value:
                raise UserError(
                    f"the observed site {name!r} got data of shape {value} but its distribution "
                    f"has shape {shape}: the data would be broadcast; give data whose shape matches"
                )


def probe(model, guide, *args, data_plate=None, **kwargs):
    """Trace ``guide(*args, **kwargs)`` once, replay ``model`` against it, and return their
    :class:`PairInfo`.

    Nothing is recorded in an outer trace (the probe runs under ``poutine.block``); parameters
    are registered in the param store as a first call of the pair would.
    """
    with poutine.block():
        with poutine.trace(param_only=True) as params:
            guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
            model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(
                *args, **kwargs
            )
    check_observed_shapes(model_trace)
    plates = _plates(model_trace, guide_trace)
    pruned_model, pruned_guide = (
        prune_subsample_sites(model_trace),
        prune_subsample_sites(guide_trace),
    )
    observed = {
        n: _event_shape(s)
        for n, s in pruned_model.nodes.items()
        if s["type"] == "sample" and s["is_observed"]
    }
    latent = {
        n: _event_shape(s)
        for n, s in pruned_guide.nodes.items()
        if s["type"] == "sample" and not s["is_observed"]
    }
    return PairInfo(
        max_plate_nesting=plate_nesting(model_trace, guide_trace),
        data_plate=find_data_plate(model_trace, guide_trace, data_plate),
        observed=observed,
        latent=latent,
        plates=plates,
        params=tuple(sorted(n for n, s in params.trace.nodes.items() if s["type"] == "param")),
        model_trace=model_trace,
        guide_trace=guide_trace,
    )


def _shapes(args, kwargs):
    items = [tuple(a.shape) for a in args if torch.is_tensor(a)]
    items += [f"{k}={tuple(v.shape)}" for k, v in kwargs.items() if torch.is_tensor(v)]
    return ", ".join(str(i) for i in items) or "no tensors"


def checked_probe(model, guide, *args, data_plate=None, **kwargs):
    """:func:`probe`, with a failure deep in torch (a shape that does not fit a layer, a wrong dtype
    or device) turned into one ValueError line that names the shapes of the arguments."""
    try:
        return probe(model, guide, *args, data_plate=data_plate, **kwargs)
    except (RuntimeError, ValueError, IndexError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(
            f"the model/guide pair fails on a batch of shape {_shapes(args, kwargs)}: {first}; "
            f"check that the data's shape, dtype and device fit the model"
        ) from None


def batch_as_argument(x, idx):
    """The default ``batch_call`` of the trainer and :func:`~pyro_vae.evaluate`: rows ``x`` (at
    indices ``idx`` of the data) become the pair's one positional argument, ``model(x)``; returns
    ``(args, kwargs)`` as SVI takes them.

    Other pairs say how they take a batch with their own ``batch_call(x, idx) -> (args, kwargs)``:
    ``lambda x, idx: ((), {"x": x})`` for ``model(x=None)``, ``lambda x, idx: ((x, labels[idx]),
    {})`` for ``model(images, labels)``, ``lambda x, idx: ((idx,), {})`` for data closed over and a
    plate subsampled by ``idx``.
    """
    return (x,), {}


def row_caller(x, args=(), kwargs=None, batch_call=None):
    """``call(rows) -> (args, kwargs)``: the pair's arguments on the rows ``rows`` (a slice) of
    ``x``, from ``batch_call(x[rows], idx[rows])`` (default :func:`batch_as_argument`), followed by
    the extra ``args`` and ``kwargs``."""
    batch_call, kwargs = batch_call or batch_as_argument, kwargs or {}
    idx = torch.arange(len(x), device=x.device)

    def call(rows):
        a, kw = batch_call(x[rows], idx[rows])
        return (*a, *args), {**kw, **kwargs}

    return call
