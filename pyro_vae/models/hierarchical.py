"""Hierarchical VAEs: L stochastic layers with a bottom-up or a top-down (ladder) guide.

.. math::

    p(x, z_1, …, z_L) = p(x | z_1)\\, p(z_1 | z_2) ⋯ p(z_{L-1} | z_L)\\, p(z_L), \\qquad p(z_L) =
    N(0, I),

with Gaussian conditionals p(z_l | z_{l+1}) = N(μ_l(z_{l+1}), diag σ_l(z_{l+1})²) from MLPs.
Sites ``"z1"`` (next to x) … ``"zL"`` (top), each with event shape ``[latent_dims[l-1]]``,
and ``"x"``, all inside the ``"data"`` plate; the model samples zL, …, z1, then x.

Guides (both diagonal Gaussian at every layer, so with ``meanfield`` each layer's KL is
analytic given the sample of the layer above; it is an unbiased ELBO with the top-down guide):

* :class:`BottomUpGuide`: q(z_1 | x) q(z_2 | z_1) ⋯ q(z_L | z_{L-1}), the two-layer IWAE
  architecture [1].  For a Markov chain the exact posterior factorizes the same way,
  p(z_{l+1} | z_l, x) = p(z_{l+1} | z_l), so conditioning on x higher up is unnecessary.
  Its sites run against the model's order, so ``meanfield`` is *biased* with it (the analytic
  KL of z_l averages over a fresh z_l though z_{l+1} was drawn given the sampled one; Pyro
  warns); use ``trace`` or an importance-weighted estimator with the bottom-up guide.
* :class:`LadderGuide` (``top-down``): a deterministic bottom-up pass d_l = f_l(d_{l-1}),
  d_0 = x, gives Gaussian estimates N(μ̂_l, σ̂_l²); sampling then runs top-down, and each
  q(z_l | z_{l+1}, x) is the precision-weighted product of the estimate and the model's own
  prior p(z_l | z_{l+1}) (σ⁻² = σ̂⁻² + σ_p⁻², μ = σ²(μ̂ σ̂⁻² + μ_p σ_p⁻²)), the ladder VAE [2].
  The prior nets are the model's (registered once, as ``"priors"``).

With ``prior='vampprior'`` the top layer's prior is the VampPrior (Tomczak & Welling 2018) p(z_L) =
(1/K) Σ_k q(z_L | u_k), the mixture of the top-down guide's top layer at K learned pseudo-inputs
(:mod:`pyro_vae.models.priors`); it needs the top-down guide, whose q(z_L | x) depends on x alone
(the bottom-up guide's is a marginal over z_1 … z_{L-1}).

Each layer is sampled by :meth:`HierarchicalVAE.sample_layer`, the one place where a
per-layer scale (KL warm-up, free bits) can act on model and guide alike.

References:

1. Burda, Grosse, Salakhutdinov (2016), "Importance Weighted Autoencoders", arXiv:1509.00519.
2. Sønderby, Raiko, Maaløe, Sønderby, Winther (2016), "Ladder Variational Autoencoders",
   arXiv:1602.02282.
"""

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn

from pyro_vae.core.plates import data_plate
from pyro_vae.models.priors import VampPrior
from pyro_vae.core.checks import UserError, option
from pyro_vae.models.spec import ModelSpec


class GaussianConditional(nn.Module):
    """N(μ(h), diag σ(h)²) with [μ, ρ] = net(h), σ = softplus(ρ) + min_scale.

    :param net: module ``[..., *in_shape] -> [..., 2 * dim]``.
    :returns: ``(loc, scale)``, each ``[..., dim]``.
    """

    def __init__(self, net, dim, min_scale=1e-5):
        super().__init__()
        self.net = net
        self.dim = dim
        self.min_scale = min_scale

    def forward(self, h):
        out = self.net(h)
        if out.shape[-1] != 2 * self.dim:
            raise UserError(
                f"the net of a GaussianConditional over {self.dim} latents must output 2 * "
                f"{self.dim} = {2 * self.dim} features (loc and raw scale), got {out.shape[-1]}"
            )
        loc, raw = out.chunk(2, dim=-1)
        return loc, F.softplus(raw) + self.min_scale


def precision_merge(loc1, scale1, loc2, scale2):
    """Normalized product of two diagonal Gaussians: σ⁻² = σ₁⁻² + σ₂⁻², μ = σ²(μ₁σ₁⁻² + μ₂σ₂⁻²)."""
    prec1, prec2 = scale1.pow(-2), scale2.pow(-2)
    var = 1 / (prec1 + prec2)
    return var * (loc1 * prec1 + loc2 * prec2), var.sqrt()


class HierarchicalVAE(nn.Module):
    """L-layer VAE: a container of ``model(x)`` and ``guide(x)`` (see the module docstring).

    :param decoder: module ``[..., latent_dims[0]] -> [..., *x_shape]`` (likelihood parameters).
    :param priors: ``L − 1`` :class:`GaussianConditional` s; ``priors[l]`` maps z_{l+2} to
        p(z_{l+1} | z_{l+2}) (0-based ``l``, so ``priors[0]`` is p(z1 | z2)).
    :param guide: a :class:`BottomUpGuide` or :class:`LadderGuide`.
    :param likelihood: module ``(out, x) -> distribution`` (see :mod:`pyro_vae.models.likelihoods`).
    :param latent_dims: sizes of z1 … zL.
    :param num_data: full training-set size for the data plate's scale (None: no scaling).
    :param pseudo_inputs: a :class:`~pyro_vae.models.priors.PseudoInputs` for a VampPrior on z_L
        (top-down guide only), or ``None`` for N(0, I).
    """

    def __init__(
        self,
        decoder,
        priors,
        guide,
        likelihood,
        latent_dims,
        x_shape,
        num_data=None,
        pseudo_inputs=None,
    ):
        super().__init__()
        latent_dims = list(latent_dims)
        if not latent_dims or any(
            isinstance(d, bool) or not isinstance(d, int) or d <= 0 for d in latent_dims
        ):
            raise UserError(
                f"{option('latent_dims')} must be a non-empty list of positive integers, got "
                f"{latent_dims!r}"
            )
        if len(priors) != len(latent_dims) - 1:
            raise UserError(
                f"{len(latent_dims)} latent layers need {len(latent_dims) - 1} prior conditionals "
                f"p(z_l | z_l+1), got {len(priors)}"
            )
        self.decoder = decoder
        self.priors = nn.ModuleList(priors)
        self.guide_module = guide
        self.likelihood = likelihood
        self.latent_dims = latent_dims
        self.x_shape = tuple(x_shape)
        self.num_data = num_data
        if pseudo_inputs is not None and not isinstance(guide, LadderGuide):
            raise UserError(
                f"{option('prior', repr('vampprior'))} on the hierarchical model needs the "
                "top-down guide (its q(z_L | x) is a Gaussian of x alone), got "
                f"{type(guide).__name__}; pass {option('guide', repr('top-down'))}"
            )
        self.pseudo_inputs = pseudo_inputs

    jit_compatible = True  # no data-dependent control flow or state: the trainer may trace its loss

    @property
    def sites(self):
        """Latent site names from x upwards: ``["z1", …, "zL"]``."""
        return [f"z{l + 1}" for l in range(len(self.latent_dims))]

    def prior(self, layer, z_above, x):
        """``(loc, scale)`` of p(z_{layer+1} | z_above) (0-based ``layer``); the top layer's is N(0,
        I) on x's device/dtype."""
        if layer == len(self.latent_dims) - 1:
            dim = self.latent_dims[layer]
            return x.new_zeros(dim), x.new_ones(dim)
        return self.priors[layer](z_above)

    def vampprior(self, x):
        """p(z_L) = (1/K) Σ_k q(z_L | u_k): the guide's top layer at the pseudo-inputs, on x's
        device and dtype."""
        pyro.module("pseudo_inputs", self.pseudo_inputs)
        pyro.module(
            self.guide_module.name, self.guide_module
        )  # the guide's nets, registered once under its name
        loc, scale = self.guide_module.top(self.pseudo_inputs().to(x), self)
        return VampPrior(dist.Normal(loc, scale).to_event(1))

    def sample_layer(self, layer, loc, scale):
        """Sample site ``z{layer+1}`` from N(loc, diag scale²) (event dim 1); used by model and
        guides alike."""
        return pyro.sample(self.sites[layer], dist.Normal(loc, scale).to_event(1))

    def register_priors(self):
        """``pyro.module("priors", …)``: the prior nets, under one name whether the model or a guide
        uses them."""
        if len(self.priors):
            pyro.module("priors", self.priors)

    def model(self, x):
        """p(zL) ⋯ p(z1 | z2) p(x | z1) for ``x`` of shape ``[B, *x_shape]``; returns the decoder
        output."""
        pyro.module("decoder", self.decoder)
        self.register_priors()
        if any(p.requires_grad for p in self.likelihood.parameters()):
            pyro.module("likelihood", self.likelihood)
        top = self.vampprior(x) if self.pseudo_inputs is not None else None
        with data_plate(x, self.num_data):
            z = None
            for layer in reversed(range(len(self.latent_dims))):
                if top is not None and layer == len(self.latent_dims) - 1:
                    z = pyro.sample(self.sites[layer], top)
                else:
                    z = self.sample_layer(layer, *self.prior(layer, z, x))
            out = self.decoder(z)
            pyro.sample("x", self.likelihood(out, x).to_event(len(self.x_shape)), obs=x)
        return out

    def guide(self, x):
        """q(z1, …, zL | x), sampled inside the same data plate as the model; returns ``[z1, …,
        zL]``."""
        return self.guide_module(x, self)


class BottomUpGuide(nn.Module):
    """q(z_1 | x) Π_l q(z_{l+1} | z_l), each a diagonal Gaussian.

    :param conditionals: L :class:`GaussianConditional` s; the first reads x, the l-th reads z_l.
    """

    def __init__(self, conditionals, name="guide"):
        super().__init__()
        self.conditionals = nn.ModuleList(conditionals)
        self.name = name

    def forward(self, x, hvae):
        if len(self.conditionals) != len(hvae.latent_dims):
            raise UserError(
                f"this guide has {len(self.conditionals)} layers, the model {len(hvae.latent_dims)}"
            )
        pyro.module(self.name, self)
        zs, h = [], x
        with data_plate(x, hvae.num_data):
            for layer, conditional in enumerate(self.conditionals):
                h = hvae.sample_layer(layer, *conditional(h))
                zs.append(h)
        return zs


class LadderGuide(nn.Module):
    """Top-down (ladder) guide: q(z_L | x) Π_l q(z_l | z_{l+1}, x) with precision-weighted merges.

    .. math:: d_l = f_l(d_{l-1}),\\ d_0 = x; \\quad
              q(z_l | z_{l+1}, x) ∝ N(z_l; μ̂_l(d_l), σ̂_l(d_l)²)\\, p(z_l | z_{l+1})

    :param up: L deterministic modules f_1 … f_L (f_1 reads x).
    :param heads: L :class:`GaussianConditional` s giving (μ̂_l, σ̂_l) from d_l.
    """

    def __init__(self, up, heads, name="guide"):
        super().__init__()
        if len(up) != len(heads):
            raise UserError(
                f"a ladder guide needs one head per deterministic layer, got {len(up)} and "
                f"{len(heads)}"
            )
        self.up = nn.ModuleList(up)
        self.heads = nn.ModuleList(heads)
        self.name = name

    def estimates(self, x):
        """The bottom-up Gaussian estimates ``[(μ̂_1, σ̂_1), …, (μ̂_L, σ̂_L)]``, each ``[B,
        d_l]``."""
        d, out = x, []
        for f, head in zip(self.up, self.heads):
            d = f(d)
            out.append(head(d))
        return out

    def top(self, x, hvae):
        """``(loc, scale)`` of q(z_L | x): the top estimate merged with N(0, I), the top layer of
        :meth:`forward`."""
        d = x
        for f in self.up:
            d = f(d)
        return precision_merge(*self.heads[-1](d), *hvae.prior(len(hvae.latent_dims) - 1, None, x))

    def forward(self, x, hvae):
        if len(self.heads) != len(hvae.latent_dims):
            raise UserError(
                f"this guide has {len(self.heads)} layers, the model {len(hvae.latent_dims)}"
            )
        pyro.module(self.name, self)
        hvae.register_priors()
        estimates = self.estimates(x)
        zs, z = [], None
        with data_plate(x, hvae.num_data):
            for layer in reversed(range(len(hvae.latent_dims))):
                loc, scale = precision_merge(*estimates[layer], *hvae.prior(layer, z, x))
                z = hvae.sample_layer(layer, loc, scale)
                zs.append(z)
        return zs[::-1]


HIERARCHICAL_GUIDES = ("top-down", "bottom-up")


def _mlp(in_dim, out_dim, hidden, activation_name):
    from pyro_vae.models.nets import MLP

    return MLP(in_dim, [hidden] if hidden else [], out_dim, activation_name)


def build_hierarchical(config, x_shape, num_data=None):
    """Build a :class:`HierarchicalVAE` from a config: ``latent_dims``, ``guide`` (top-down or
    bottom-up), nets.

    Encoder and decoder nets are the configured ones (``net``, ``hidden_dims``); the nets
    between latent layers are MLPs with one hidden layer of ``hidden_dims[-1]`` units.
    """
    from pyro_vae.models.builders import make_decoder, make_encoder
    from pyro_vae.models.likelihoods import make_likelihood
    from pyro_vae.models.nets import MLP

    dims = config.latent_dims
    if not dims:
        raise UserError(
            f"the hierarchical model needs {option('latent_dims')}, e.g. "
            f"{option('latent_dims', '[64, 32]')} (z1 next to x first)"
        )
    if config.guide not in HIERARCHICAL_GUIDES:
        raise UserError(
            f"the hierarchical model supports the guides {', '.join(HIERARCHICAL_GUIDES)}, got "
            f"{config.guide!r}; pass {option('guide', repr('top-down'))} or "
            f"{option('guide', repr('bottom-up'))}"
        )
    if config.flows:
        raise UserError(f"the hierarchical guides have no flows; use {option('flows', '0')}")
    hidden, act = config.hidden_dims[-1], config.activation
    priors = [
        GaussianConditional(_mlp(dims[l + 1], 2 * dims[l], hidden, act), dims[l])
        for l in range(len(dims) - 1)
    ]
    if config.guide == "bottom-up":
        first = GaussianConditional(
            nn.Sequential(make_encoder(config, x_shape, hidden), nn.Linear(hidden, 2 * dims[0])),
            dims[0],
        )
        rest = [
            GaussianConditional(_mlp(dims[l], 2 * dims[l + 1], hidden, act), dims[l + 1])
            for l in range(len(dims) - 1)
        ]
        guide = BottomUpGuide([first, *rest])
    else:
        up = [make_encoder(config, x_shape, hidden)]
        up += [MLP(hidden, [], hidden, act, final_activation=True) for _ in dims[1:]]
        heads = [GaussianConditional(nn.Linear(hidden, 2 * d), d) for d in dims]
        guide = LadderGuide(up, heads)
    decoder = make_decoder(config, x_shape, dims[0])
    likelihood = make_likelihood(config.likelihood, x_shape, config.sigma)
    pseudo = None
    if config.prior == "vampprior":
        from pyro_vae.models.priors import PseudoInputs

        pseudo = PseudoInputs(config.pseudo_inputs, x_shape)
    return HierarchicalVAE(
        decoder, priors, guide, likelihood, dims, x_shape, num_data, pseudo_inputs=pseudo
    )


def _check_config(config):
    if not config.latent_dims:
        raise UserError(
            f"the hierarchical model needs {option('latent_dims')}, e.g. "
            f"{option('latent_dims', '[64, 32]')} (z1 next to x first)"
        )


SPEC = ModelSpec(
    build=build_hierarchical,
    guides=HIERARCHICAL_GUIDES,
    default_guide="top-down",
    priors=("standard", "vampprior"),
    latent_groups=lambda config: len(config.latent_dims),
    check=_check_config,
)


def inverse_softplus(y):
    """ρ with softplus(ρ) = y (y > 0): ρ = y + log(−expm1(−y))."""
    y = torch.as_tensor(y)
    return y + torch.log(-torch.expm1(-y))


__all__ = [
    "BottomUpGuide",
    "GaussianConditional",
    "HierarchicalVAE",
    "LadderGuide",
    "build_hierarchical",
    "inverse_softplus",
    "precision_merge",
]
