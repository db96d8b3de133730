"""Observation models p(x | z): turn a decoder output into a distribution over pixels.

A likelihood is an ``nn.Module`` called as ``likelihood(out, x)``; it returns a
distribution whose batch shape equals ``out.shape`` (the model adds
``.to_event``).  ``x`` is only read by the σ-VAE with the analytic σ*.

================== ===================================================================
``bernoulli``      p(x|z) = Π Bernoulli(x_d; sigmoid(out_d)); for binary or [0, 1] data
``gaussian``       p(x|z) = Π N(x_d; out_d, σ²), fixed σ (``sigma``, default 0.1)
``learned-gaussian`` p(x|z) = Π N(x_d; out_d, σ_d²), one learned σ per pixel
``sigma-vae``      p(x|z) = Π N(x_d; out_d, σ²), one shared learned σ (Rybkin et al. 2021);
                   ``optimal=True`` uses σ* = sqrt(MSE) instead of a parameter
``discretized-logistic`` 8-bit pixels: p(x_d = k/255 | z) = Σ_j π_dj [F_dj(k + ½) − F_dj(k − ½)], a
                   mixture of ``mixtures`` logistics per sub-pixel with open edge bins (Salimans et
                   al. 2017)
``categorical``    8-bit pixels: p(x_d = k/255 | z) = softmax(out_d)_k, 256 logits per sub-pixel
================== ===================================================================

The 8-bit likelihoods (:data:`EIGHT_BIT`) read grey levels x = k/255 in [0, 1]
(``binarize="none"``) and score the bin k = round(255 x): they are normalized over the
256 values, so −log p(x) is in nats of the discrete distribution and
bits/dim = −log p(x) / (D ln 2).  Their decoders output more than one number per
sub-pixel: :meth:`params_shape` gives the decoder output shape for data of ``x_shape``
(parameters stacked along the first, channel axis).
"""

import math

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.distributions import TorchDistribution, constraints
from torch import nn
from pyro_vae.core.checks import UserError, option


class Likelihood(nn.Module):
    """Base of the likelihoods: ``forward(out, x)`` returns the distribution; the decoder emits
    ``params_shape``."""

    def params_shape(self, x_shape):
        """Shape of the decoder output for data points of ``x_shape`` (one number per pixel by
        default)."""
        return tuple(x_shape)


class Bernoulli(Likelihood):
    """Bernoulli with logits ``out``.

    Grey levels in [0, 1] are accepted (the usual continuous relaxation, then
    ``log p`` is minus the binary cross-entropy and not a normalized density).
    """

    unit_interval = (
        True  # data must lie in [0, 1] (checked by pyro_vae.core.checks before training)
    )

    def forward(self, out, x=None):
        return dist.Bernoulli(logits=out, validate_args=False)


class Gaussian(Likelihood):
    """Gaussian with mean ``out`` and fixed standard deviation ``sigma``."""

    def __init__(self, sigma=0.1):
        super().__init__()
        if not sigma > 0:
            raise UserError(f"{option('sigma')} must be > 0, got {sigma}")
        self.sigma = float(sigma)

    def forward(self, out, x=None):
        return dist.Normal(out, self.sigma)


class LearnedGaussian(Gaussian):
    """Gaussian with mean ``out`` and one learned σ_d per pixel (σ_d = exp(log_sigma_d), not a
    function of z)."""

    def __init__(self, x_shape, sigma=0.1):
        super().__init__(sigma)
        self.log_sigma = nn.Parameter(torch.full(tuple(x_shape), math.log(sigma)))

    def forward(self, out, x=None):
        return dist.Normal(out, self.log_sigma.exp())


class SigmaVAE(Gaussian):
    """σ-VAE: Gaussian with one σ shared by all pixels (Rybkin, Daniilidis, Levine 2021, "Simple and
    Effective VAE Training with Calibrated Decoders").

    With ``optimal=False`` σ is a learned parameter.  With ``optimal=True`` σ is the
    maximum-likelihood value for the current batch, σ*² = mean((x − out)²), which gives
    the profile likelihood ``−D/2·(log 2πσ*² + 1)`` per image; a running average of σ*
    (buffer ``sigma_star``) is used in eval mode and when no ``x`` is given (sampling).
    Use it for continuous images when the Gaussian σ is unknown: it balances
    reconstruction against KL without tuning a β.
    """

    def __init__(self, optimal=False, sigma=0.1, min_sigma=1e-3, momentum=0.01):
        super().__init__(sigma)
        self.optimal = optimal
        self.min_sigma = min_sigma
        self.momentum = momentum
        if optimal:
            self.register_buffer("sigma_star", torch.tensor(float(sigma)))
        else:
            self.log_sigma = nn.Parameter(torch.tensor(math.log(sigma)))

    def forward(self, out, x=None):
        if not self.optimal:
            return dist.Normal(out, self.log_sigma.exp().clamp(min=self.min_sigma))
        if x is None or not self.training:
            sigma = self.sigma_star.to(out)
        else:
            sigma = (x - out).pow(2).mean().sqrt().clamp(min=self.min_sigma)
            with torch.no_grad():
                self.sigma_star.lerp_(sigma.detach().to(self.sigma_star), self.momentum)
        return dist.Normal(out, sigma)


BINS = 256  # 8-bit pixels


def _bins(x):
    """Bin index k = round(255 x) of grey levels x ∈ [0, 1], clamped to 0 … 255 (no host reads:
    traceable)."""
    return (x * (BINS - 1)).round().clamp(0, BINS - 1)


class EightBit(TorchDistribution):
    """A distribution over 8-bit grey levels x ∈ {0, 1/255, …, 1}, elementwise (event shape ``()``).

    Subclasses give :meth:`bin_log_prob` (log p of the bin index k as a float tensor) and
    ``_sample_bins``.
    """

    arg_constraints = {}
    support = constraints.unit_interval  # the 256 grid points k/255 of it
    bins = BINS

    def log_prob(self, value):
        return self.bin_log_prob(_bins(value))

    def sample(self, sample_shape=torch.Size()):
        with torch.no_grad():
            return self._sample_bins(torch.Size(sample_shape)) / (BINS - 1)


class DiscretizedLogisticMixture(EightBit):
    """Mixture of K discretized logistics per element, on the grid k/255 with open edge bins.

    .. math:: p(k) = \\sum_j \\pi_j [\\sigma((c_k + w/2 − μ_j)/s_j) − \\sigma((c_k − w/2 −
              μ_j)/s_j)], \\quad c_k = k/255,\\ w = 1/255,

    with σ(·) replaced by 1 above the top bin's lower edge and by 0 below the bottom bin's upper
    edge (so the 256 probabilities sum to 1).  Inside, log[σ(a) − σ(b)] = log σ(a) + log σ(−b) +
    log(1 − e^{−(a−b)}), exact and stable since a − b = w/s.

    :param logits: mixture logits ``[..., K]``; ``loc`` (μ, on the [0, 1] scale) and ``log_scale``
        (log s) alike.
    """

    def __init__(self, logits, loc, log_scale, validate_args=False):
        self.logits, self.loc, self.log_scale = torch.broadcast_tensors(logits, loc, log_scale)
        super().__init__(self.logits.shape[:-1], validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        shape = tuple(batch_shape) + self.logits.shape[-1:]
        return DiscretizedLogisticMixture(
            self.logits.expand(shape), self.loc.expand(shape), self.log_scale.expand(shape)
        )

    def bin_log_prob(self, k):
        k = k.unsqueeze(-1)
        inv_s = torch.exp(-self.log_scale)
        half = 0.5 / (BINS - 1)
        centred = k / (BINS - 1) - self.loc
        a, b = (
            (centred + half) * inv_s,
            (centred - half) * inv_s,
        )  # upper and lower edge, standardized
        inner = F.logsigmoid(a) + F.logsigmoid(-b) + torch.log(-torch.expm1(-2 * half * inv_s))
        lp = torch.where(
            k == 0, F.logsigmoid(a), torch.where(k == BINS - 1, F.logsigmoid(-b), inner)
        )
        return torch.logsumexp(torch.log_softmax(self.logits, -1) + lp, -1)

    @property
    def mean(self):
        """Σ_j π_j clamp(μ_j, 0, 1): the picture's grey level (the logistics' means, clamped to the
        grid's range)."""
        return (torch.softmax(self.logits, -1) * self.loc.clamp(0, 1)).sum(-1)

    def _sample_bins(self, sample_shape):
        shape = sample_shape + self.logits.shape
        j = dist.Categorical(logits=self.logits).sample(sample_shape).unsqueeze(-1)
        loc = self.loc.expand(shape).gather(-1, j).squeeze(-1)
        scale = self.log_scale.expand(shape).gather(-1, j).squeeze(-1).exp()
        u = torch.rand_like(loc).clamp(1e-6, 1 - 1e-6)
        return _bins(loc + scale * (u.log() - (-u).log1p()))


class Categorical256(EightBit):
    """256-way categorical per element: p(x = k/255) = softmax(logits)_k, ``logits`` of shape
    ``[..., 256]``."""

    def __init__(self, logits, validate_args=False):
        if logits.shape[-1] != BINS:
            raise UserError(
                f"Categorical256 needs {BINS} logits in the last dimension, got {logits.shape[-1]}"
            )
        self.logits = logits
        super().__init__(logits.shape[:-1], validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        return Categorical256(self.logits.expand(tuple(batch_shape) + (BINS,)))

    def bin_log_prob(self, k):
        shape = torch.broadcast_shapes(k.shape, self.batch_shape)
        logp = torch.log_softmax(self.logits, -1).expand(shape + (BINS,))
        return logp.gather(-1, k.long().expand(shape).unsqueeze(-1)).squeeze(-1)

    @property
    def mean(self):
        grid = torch.arange(BINS, dtype=self.logits.dtype, device=self.logits.device) / (BINS - 1)
        return torch.softmax(self.logits, -1) @ grid

    def _sample_bins(self, sample_shape):
        return dist.Categorical(logits=self.logits).sample(sample_shape).to(self.logits.dtype)


def _split_params(out, x_shape, what, per_pixel=None):
    """Decoder output ``[..., P·C, *rest]`` → ``[..., *x_shape, P]``: P numbers per sub-pixel,
    parameter-major.

    ``per_pixel``: the P the likelihood needs (None: any P, read from the shape).
    """
    x_shape = tuple(x_shape)
    event = tuple(out.shape[out.dim() - len(x_shape) :])
    p = event[0] // x_shape[0] if event and event[0] % x_shape[0] == 0 else 0
    if event[1:] != x_shape[1:] or p == 0 or (per_pixel is not None and p != per_pixel):
        want = f"{per_pixel}·{x_shape[0]}" if per_pixel else f"P·{x_shape[0]}"
        raise UserError(
            f"the {what} likelihood needs a decoder output of shape [{want}, "
            f"{', '.join(map(str, x_shape[1:]))}] per image for data of shape {x_shape}, got "
            f"{event}; build the decoder for likelihood.params_shape(x_shape)"
        )
    batch = out.shape[: out.dim() - len(x_shape)]
    return out.reshape(*batch, p, *x_shape).movedim(len(batch), -1)


class DiscretizedLogistic(Likelihood):
    """p(x|z): a :class:`DiscretizedLogisticMixture` per sub-pixel (channels independent given z).

    The decoder emits 3K numbers per sub-pixel, ``out`` of shape ``[3K·C, H, W]`` = (logits, μ − ½,
    log s + 2) × K × C; K is read from the output's shape (``mixtures`` sets :meth:`params_shape`).
    The offsets start a zero output at mid-grey with s ≈ 0.14. log s is clamped at −8 (s ≥ 3·10⁻⁴, a
    tenth of a bin).
    """

    unit_interval = eight_bit = (
        True  # data k/255 in [0, 1], scored in 256 bins (checked by pyro_vae.core.checks)
    )

    def __init__(self, x_shape, mixtures=10, min_log_scale=-8.0):
        super().__init__()
        if isinstance(mixtures, bool) or not isinstance(mixtures, int) or mixtures < 1:
            raise UserError(
                f"{option('mixtures')} must be a positive integer (logistics per pixel), got "
                f"{mixtures!r}"
            )
        self.x_shape, self.mixtures, self.min_log_scale = tuple(x_shape), mixtures, min_log_scale

    def params_shape(self, x_shape):
        return (3 * self.mixtures * x_shape[0], *x_shape[1:])

    def forward(self, out, x=None):
        params = _split_params(out, self.x_shape, "discretized-logistic")
        if params.shape[-1] % 3:
            raise UserError(
                "the discretized-logistic decoder output needs 3K numbers per sub-pixel (logits, "
                f"means, log-scales), got {params.shape[-1]}; build the decoder with "
                "params_shape(x_shape)"
            )
        logits, loc, log_scale = params.unflatten(-1, (3, -1)).unbind(-2)
        return DiscretizedLogisticMixture(
            logits, loc + 0.5, (log_scale - 2).clamp(min=self.min_log_scale)
        )


class Categorical(Likelihood):
    """p(x|z): a :class:`Categorical256` per sub-pixel; the decoder emits 256 logits per sub-pixel,
    ``[256·C, H, W]``."""

    unit_interval = eight_bit = (
        True  # data k/255 in [0, 1], scored in 256 bins (checked by pyro_vae.core.checks)
    )

    def __init__(self, x_shape):
        super().__init__()
        self.x_shape = tuple(x_shape)

    def params_shape(self, x_shape):
        return (BINS * x_shape[0], *x_shape[1:])

    def forward(self, out, x=None):
        return Categorical256(_split_params(out, self.x_shape, "categorical", BINS))


LIKELIHOODS = (
    "bernoulli",
    "gaussian",
    "learned-gaussian",
    "sigma-vae",
    "sigma-vae-optimal",
    "discretized-logistic",
    "categorical",
)
EIGHT_BIT = ("discretized-logistic", "categorical")


def make_likelihood(name, x_shape, sigma=0.1, mixtures=10):
    """Build a likelihood by name: one of :data:`LIKELIHOODS` (``mixtures``: K of the discretized
    logistic)."""
    if name == "bernoulli":
        return Bernoulli()
    if name == "gaussian":
        return Gaussian(sigma)
    if name == "learned-gaussian":
        return LearnedGaussian(x_shape, sigma)
    if name == "sigma-vae":
        return SigmaVAE(optimal=False, sigma=sigma)
    if name == "sigma-vae-optimal":
        return SigmaVAE(optimal=True, sigma=sigma)
    if name == "discretized-logistic":
        return DiscretizedLogistic(x_shape, mixtures)
    if name == "categorical":
        return Categorical(x_shape)
    raise UserError(f"unknown likelihood {name!r}; choose one of {', '.join(LIKELIHOODS)}")


def discrete_dims(model, *args, **kwargs):
    """D = number of discrete values the model's observed sites score for one data point, or 0 when
    any of them is continuous: 8-bit values (:class:`EightBit`), and binary ones under a Bernoulli
    (binarized images).

    Traces ``model(*args, **kwargs)`` once (give it one data point). bits/dim of a data point is
    then −log p(x) / (D ln 2).
    """
    from pyro import poutine

    with poutine.block(), torch.no_grad():
        trace = poutine.trace(model).get_trace(*args, **kwargs)
    dims = 0
    for site in trace.nodes.values():
        if site["type"] == "sample" and site["is_observed"]:
            fn = site["fn"]
            while isinstance(fn, dist.Independent):
                fn = fn.base_dist
            binary = isinstance(fn, dist.Bernoulli) and bool(
                ((site["value"] == 0) | (site["value"] == 1)).all()
            )
            if not (isinstance(fn, EightBit) or binary):
                return 0
            dims += math.prod(
                site["fn"].event_shape
            )  # elementwise base: the event is the data point
    return dims
