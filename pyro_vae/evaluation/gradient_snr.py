"""The estimator lab: the signal-to-noise ratio of each estimator's gradient, on any pair.

For an estimator at K particles, R independent draws g_1 … g_R of its gradient on one fixed batch
give, for every parameter entry j, the mean ĝ_j and variance s_j² of the draws, and

.. math:: \\mathrm{SNR}_j = \\frac{|\\hat g_j|}{s_j}, \\qquad
          V = \\sum_j s_j^2 \\ (\\text{the total gradient variance, the trace of the covariance}).

The SNR of a group of parameters (the guide's φ, the model's θ) is summarized by the median and the
quartiles of SNR_j over its entries.  Rainforth et al. (2018) showed that the IWAE bound's guide
gradient has SNR = O(1/√K): its signal vanishes faster than its noise, while the model's SNR grows
as O(√K); DReG (Tucker et al. 2019) keeps the guide's SNR growing, and STL (Roeder et al. 2017) has
zero variance when q is the exact posterior.

Gradients are those of the estimator's objective (the bound, maximised: g = −∇ loss) with respect
to the unconstrained parameters, at the scale the pair gives its batch (e.g. ``num_data / B`` of a
subsampled data plate), as the optimizer receives them.  A parameter that the guide reads is a
guide parameter unless the model reads it too (a VampPrior's encoder): then it is a model parameter.

References:
    1. T. Rainforth, A. R. Kosiorek, T. A. Le, C. J. Maddison, M. Igl, F. Wood, Y. W. Teh. Tighter
       Variational Bounds are Not Necessarily Better. ICML 2018, arXiv:1802.04537.
    2. G. Tucker, D. Lawson, S. Gu, C. J. Maddison. Doubly Reparameterized Gradient Estimators for
       Monte Carlo Objectives. ICLR 2019, arXiv:1810.04152.
    3. G. Roeder, Y. Wu, D. Duvenaud. Sticking the Landing: Simple, Lower-Variance Gradient
       Estimators for Variational Inference. NeurIPS 2017, arXiv:1703.09194.
"""

import math
import time
from typing import Dict, NamedTuple, Tuple

import pyro
import torch

from pyro_vae.core.checks import UserError, check_choice, check_option, check_positive_int, option
from pyro_vae.core.pair import checked_probe, row_caller
from pyro_vae.estimators import ESTIMATORS, make_elbo


class Moments(NamedTuple):
    """Per-entry moments of R gradient draws: ``mean`` and ``variance`` (unbiased, R − 1) per
    parameter name, float64; ``guide_params`` and ``model_params`` split the names; ``seconds``
    per gradient."""

    mean: Dict[str, torch.Tensor]
    variance: Dict[str, torch.Tensor]
    repeats: int
    seconds: float
    guide_params: Tuple[str, ...]
    model_params: Tuple[str, ...]


class SNRSummary(NamedTuple):
    """SNR_j = |ĝ_j| / s_j over a group's entries: ``median``, ``q25``, ``q75``; ``variance`` =
    Σ_j s_j²; ``entries``: those with a nonzero draw (all-zero draws have no SNR)."""

    median: float
    q25: float
    q75: float
    variance: float
    entries: int


class GradientSNR(NamedTuple):
    """One row of the lab: estimator ``elbo`` at ``particles`` K; ``guide`` and ``model``
    :class:`SNRSummary`; ``seconds`` per gradient (one loss and its backward pass)."""

    elbo: str
    particles: int
    guide: SNRSummary
    model: SNRSummary
    seconds: float

    def as_row(self):
        """The JSON row: each SNR the median over entries (NaN as None), its quartiles beside it."""
        number = lambda v: None if math.isnan(v) else v  # noqa: E731
        return {
            "elbo": self.elbo,
            "particles": self.particles,
            "guide_snr": number(self.guide.median),
            "model_snr": number(self.model.median),
            "guide_variance": number(self.guide.variance),
            "model_variance": number(self.model.variance),
            "seconds": self.seconds,
            "guide_snr_quartiles": [number(self.guide.q25), number(self.guide.q75)],
            "model_snr_quartiles": [number(self.model.q25), number(self.model.q75)],
        }


def split_params(info):
    """``(guide_params, model_params)`` of a probed pair (:class:`~pyro_vae.core.pair.PairInfo`):
    the param sites each trace touched; a param that both read counts as the model's."""

    def touched(trace):
        return {name for name, site in trace.nodes.items() if site["type"] == "param"}

    model = touched(info.model_trace)
    return tuple(sorted(touched(info.guide_trace) - model)), tuple(sorted(model))


def check_grid(elbos, particles, repeats):
    """Check the lab's options where they enter: estimator names, K ≥ 1, R ≥ 2 (for a variance)."""
    if isinstance(elbos, str) or not list(elbos):
        raise UserError(
            f"{option('elbos')} must be a non-empty list of estimator names, got {elbos!r}"
        )
    for name in elbos:
        check_choice("estimator", name, ESTIMATORS, "elbos")
    if isinstance(particles, int) or not list(particles):
        raise UserError(
            f"{option('particles')} must be a non-empty list of particle counts, got {particles!r}"
        )
    for k in particles:
        check_option("particles", k)
    if check_positive_int("repeats", repeats) < 2:
        raise UserError(
            f"{option('repeats')} must be at least 2 (a variance needs two draws), got {repeats}"
        )


def _estimator(name, particles, data_plate, info):
    """:func:`~pyro_vae.make_elbo`, told the plate nesting the probe found, as the trainer tells it
    (the vectorized particles' plate counted), so that no estimator guesses it again."""
    estimator = make_elbo(name, particles, data_plate=data_plate)
    if getattr(estimator, "max_plate_nesting", None) == math.inf:
        vectorized = getattr(estimator, "vectorize_particles", False) and particles > 1
        estimator.max_plate_nesting = info.max_plate_nesting + int(vectorized)
    return estimator


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _moments(estimator, model, guide, args, kwargs, groups, repeats):
    """Welford's running mean and variance (float64) of ``repeats`` draws of −∇ loss, and the
    seconds each draw took; one untimed call first (a first call may trace or guess more)."""
    guide_params, model_params = groups
    names = guide_params + model_params
    store = dict(pyro.get_param_store().named_parameters())  # unconstrained, as optimizers see them
    tensors = [store[n] for n in names]
    device = tensors[0].device if tensors else torch.device("cpu")
    estimator.differentiable_loss(model, guide, *args, **kwargs)
    mean = [torch.zeros_like(t, dtype=torch.float64) for t in tensors]
    m2 = [torch.zeros_like(t, dtype=torch.float64) for t in tensors]
    seconds = 0.0
    for r in range(1, repeats + 1):
        _sync(device)
        start = time.perf_counter()
        loss = estimator.differentiable_loss(model, guide, *args, **kwargs)
        grads = torch.autograd.grad(loss, tensors, allow_unused=True) if tensors else ()
        _sync(device)
        seconds += time.perf_counter() - start
        for m, s, g in zip(mean, m2, grads):
            g = torch.zeros_like(m) if g is None else -g.detach().to(torch.float64)
            delta = g - m
            m += delta / r
            s += delta * (g - m)
    variance = {n: s / (repeats - 1) for n, s in zip(names, m2)}
    return Moments(
        mean=dict(zip(names, mean)),
        variance=variance,
        repeats=repeats,
        seconds=seconds / repeats,
        guide_params=guide_params,
        model_params=model_params,
    )


def gradient_moments(
    model,
    guide,
    data,
    *args,
    elbo="trace",
    particles=1,
    repeats=100,
    batch_call=None,
    data_plate=None,
    **kwargs,
):
    """The mean ĝ and variance s² of each parameter entry over ``repeats`` draws of the gradient of
    the estimator ``elbo`` at ``particles`` K on the batch ``data``: a :class:`Moments`.

    ĝ estimates ∇ of the estimator's expected bound (the ELBO for trace, meanfield, stl; the IWAE
    bound for iwae, dreg) with standard error s / √R.  ``batch_call(x, idx) -> (args, kwargs)``:
    how the pair takes the batch (default ``model(data)``), followed by ``*args, **kwargs``;
    ``data_plate``: as for :func:`~pyro_vae.make_elbo`.
    """
    check_grid([elbo], [particles], repeats)
    args, kwargs = row_caller(data, args, kwargs, batch_call)(slice(None))
    info = checked_probe(model, guide, *args, data_plate=data_plate, **kwargs)
    return _moments(
        _estimator(elbo, particles, data_plate, info),
        model,
        guide,
        args,
        kwargs,
        split_params(info),
        repeats,
    )


def summarize(moments, names):
    """The :class:`SNRSummary` of the entries of parameters ``names`` (NaN: no nonzero draw)."""
    if not names:
        return SNRSummary(math.nan, math.nan, math.nan, 0.0, 0)
    mean = torch.cat([moments.mean[n].flatten() for n in names])
    variance = torch.cat([moments.variance[n].flatten() for n in names])
    std = variance.sqrt()
    live = (mean != 0) | (std != 0)
    snr = (mean.abs()[live] / std[live]).sort().values  # a zero std with a nonzero mean: SNR = inf
    total = variance.sum().item()
    if not len(snr):
        return SNRSummary(math.nan, math.nan, math.nan, total, 0)
    at = lambda p: snr[round(p * (len(snr) - 1))].item()  # noqa: E731  (nearest rank: inf-safe)
    return SNRSummary(at(0.5), at(0.25), at(0.75), total, len(snr))


def gradient_snr(
    model,
    guide,
    data,
    *args,
    elbos=("trace", "iwae", "dreg", "stl"),
    particles=(1, 10, 100),
    repeats=100,
    batch_call=None,
    data_plate=None,
    **kwargs,
):
    """The lab: for each estimator in ``elbos`` and each K in ``particles``, ``repeats`` draws of
    its gradient on the same batch ``data``; one :class:`GradientSNR` row each, in that order.

    SNR_j = |mean_j| / std_j of each parameter entry, summarized over the guide's and the model's
    entries separately (see the module docstring).  Takes every pair the trainer takes:
    ``batch_call``, ``data_plate``, ``*args`` and ``**kwargs`` as for :func:`gradient_moments`.

    >>> rows = gradient_snr(vae.model, vae.guide, x[:100], elbos=["iwae", "dreg"],
    ...                     particles=[1, 10, 100])  # doctest: +SKIP
    >>> [(r.elbo, r.particles, r.guide.median) for r in rows]  # doctest: +SKIP
    """
    check_grid(elbos, particles, repeats)
    args, kwargs = row_caller(data, args, kwargs, batch_call)(slice(None))
    info = checked_probe(model, guide, *args, data_plate=data_plate, **kwargs)
    groups = split_params(info)
    rows = []
    for name in elbos:
        for k in particles:
            estimator = _estimator(name, k, data_plate, info)
            m = _moments(estimator, model, guide, args, kwargs, groups, repeats)
            guide_snr, model_snr = summarize(m, groups[0]), summarize(m, groups[1])
            rows.append(GradientSNR(name, k, guide_snr, model_snr, m.seconds))
    return rows


def snr_table(rows):
    """The rows (:class:`GradientSNR`, or their :meth:`~GradientSNR.as_row` dicts) as a text table:
    SNR medians [quartiles], total variances, milliseconds per gradient."""

    def num(v):
        return "nan" if v is None else f"{v:.3g}"

    def snr(row, group):
        q25, q75 = row[f"{group}_snr_quartiles"]
        return f"{num(row[f'{group}_snr']):>9} [{num(q25)}, {num(q75)}]"

    lines = [
        f"{'elbo':<10}{'K':>6}  {'guide SNR [q25, q75]':<30}{'model SNR [q25, q75]':<30}"
        f"{'guide var':>11}{'model var':>11}{'ms/grad':>9}"
    ]
    for r in (r.as_row() if isinstance(r, GradientSNR) else r for r in rows):
        lines.append(
            f"{r['elbo']:<10}{r['particles']:>6}  {snr(r, 'guide'):<30}"
            f"{snr(r, 'model'):<30}{num(r['guide_variance']):>11}"
            f"{num(r['model_variance']):>11}{1000 * r['seconds']:>9.1f}"
        )
    return "\n".join(lines)


def save_snr_plot(rows, path, title=None):
    """SNR against K on log axes, one line per estimator (median, quartiles shaded); one panel for
    the guide's parameters and one for the model's.  Writes ``path`` (PNG) and returns it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharex=True)
    for ax, group in zip(axes, ("guide", "model")):
        for name in dict.fromkeys(r.elbo for r in rows):  # the estimators, in the rows' order
            mine = sorted((r for r in rows if r.elbo == name), key=lambda r: r.particles)
            ks = [r.particles for r in mine]
            stats = [getattr(r, group) for r in mine]
            (line,) = ax.plot(ks, [s.median for s in stats], marker="o", label=name)
            ax.fill_between(
                ks,
                [s.q25 for s in stats],
                [s.q75 for s in stats],
                color=line.get_color(),
                alpha=0.12,
                linewidth=0,
            )
        ax.set_xscale("log")
        ax.set_yscale("log")
        for axis in (ax.xaxis, ax.yaxis):  # 0.5, 1, 2 rather than 5×10⁻¹; minor ticks: 2s and 5s
            axis.set_major_formatter(ticker.FormatStrFormatter("%g"))
            axis.set_minor_formatter(
                ticker.FuncFormatter(
                    lambda v, _: f"{v:g}" if f"{v:g}".lstrip("0.")[:1] in ("2", "5") else ""
                )
            )
        ax.set_xlabel("particles K")
        ax.set_ylabel("SNR = |mean| / std (median over entries)")
        ax.set_title(f"{group} parameters")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


__all__ = [
    "GradientSNR",
    "Moments",
    "SNRSummary",
    "check_grid",
    "gradient_moments",
    "gradient_snr",
    "save_snr_plot",
    "snr_table",
    "split_params",
    "summarize",
]
