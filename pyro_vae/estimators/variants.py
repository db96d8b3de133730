"""Weights on the KL term for any model/guide pair: β-VAE, KL warm-up and free bits.

* β-VAE (Higgins et al. 2017): :func:`beta_scale` multiplies the log-density of every
  *latent* (unobserved) sample site of the model and of the guide by β, exactly like
  ``poutine.scale`` restricted to those sites, so with ``trace`` or ``meanfield`` the loss is

  .. math:: -\\mathbb{E}_q[\\log p(x|z)] + \\beta\\,\\mathrm{KL}(q(z|x)\\,\\|\\,p(z))

  (TraceMeanField_ELBO's analytic KL gets the factor too).  β may be one number or a
  ``{site: β}`` dict (per-layer β for hierarchical models, sites ``z1 … zL``).
* KL warm-up (Bowman et al. 2016; Sønderby et al. 2016): :class:`KLSchedule` gives
  β(e) = β · min(1, e / E) before epoch e + 1 (e completed epochs), so the first epoch is a
  plain autoencoder and epoch E + 1 on uses the full β; per site when β is a dict.  β lives
  in 0-d tensors (:meth:`KLSchedule.weights`) that :meth:`KLSchedule.set_epoch` updates in
  place before each epoch (``Trainer.fit(before_epoch=...)``), so the trainer's traced step
  reads the current β instead of freezing the first one.
* Free bits (Kingma et al. 2016, "Improved Variational Inference with Inverse
  Autoregressive Flow", eq. 15): :class:`FreeBits_ELBO` minimises

  .. math:: -\\frac{N}{B}\\sum_{i=1}^B \\mathbb{E}_q[\\log p(x_i|z)] + N \\sum_g \\beta_g
      \\max\\big(\\lambda, \\tfrac{1}{B}\\textstyle\\sum_i \\mathrm{KL}_g(x_i)\\big)

  with the KL of each group averaged over the minibatch.  Groups: each *latent dimension*
  of a site whose guide and prior factorize over dimensions with an analytic elementwise
  KL (diagonal Gaussians); otherwise the *whole site* (flows, relaxed categoricals), with
  the Monte Carlo KL log q − log p.  β_g is the site's β from :func:`beta_scale`.

Importance-weighted estimators (``iwae``, ``dreg``, ``stl``, ``renyi``) refuse scaled sites:
a per-site factor inside a log-sum-exp is no longer a bound on log p(x) (see
:mod:`pyro_vae.estimators.base`), so β ≠ 1, warm-up and free bits need ``trace``,
``meanfield`` or ``enum``; :func:`check_estimator` says so before training starts.

References:
1. Higgins et al. 2017, "β-VAE: Learning Basic Visual Concepts with a Constrained Variational
   Framework".
2. Bowman et al. 2016, "Generating Sentences from a Continuous Space" (KL annealing).
3. Kingma et al. 2016, "Improved Variational Inference with Inverse Autoregressive Flow" (free
   bits).
"""

import math

import torch
from pyro.infer import ELBO
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample

from pyro_vae.core.checks import Options, UserError, check_kl_weights, check_option
from pyro_vae.core.kl import elementwise_kl
from pyro_vae.estimators.importance import (
    extra_scale,
    guess_max_plate_nesting,
    per_particle_and_point,
    split_log_weights,
    trace_pair,
)

# sums of per-site terms, which take any per-site weight; free-bits: FreeBits_ELBO reads β per site
SCALED_ESTIMATORS = ("trace", "meanfield", "stl", "enum", "free-bits")


def _check_beta(beta, what="beta"):
    if isinstance(beta, dict):
        for site, b in beta.items():
            _check_beta(b, f"beta[{site!r}]")
        return
    if torch.is_tensor(beta):
        if beta.dim() != 0 or not beta.is_floating_point():
            raise UserError(
                f"{what} must be a 0-d floating-point tensor when it is a tensor, got shape "
                f"{tuple(beta.shape)} and dtype {beta.dtype}"
            )
        return  # its value may change during a run (KLSchedule.set_epoch): it is read at every site
    check_option("beta", beta, what)


class BetaScaleMessenger(Messenger):
    """Multiply the scale of every latent (unobserved, non-subsample) sample site by β.

    :param beta: a number, a 0-d tensor, a dict ``{site: β}`` of those (sites not in it keep β = 1),
        or a callable with no argument returning one of those (read at every site). A tensor is read
        at every step, also by the trainer's traced fast path, so a schedule that changes it in
        place (:meth:`KLSchedule.weights`) needs no Python at each step; a number is a constant of
        the trace. Checked by :func:`beta_scale`, the handler a user calls.
    """

    def __init__(self, beta=1.0):
        super().__init__()
        self.beta = beta

    def current(self):
        """The β in force now (a number or a dict)."""
        beta = self.beta() if callable(self.beta) else self.beta
        return beta

    def _process_message(self, msg):
        if msg["type"] != "sample" or msg["is_observed"] or site_is_subsample(msg):
            return
        beta = self.current()
        if isinstance(beta, dict):
            beta = beta.get(msg["name"], 1.0)
        if torch.is_tensor(beta) or beta != 1.0:
            msg["scale"] = beta * msg["scale"]


def beta_scale(fn=None, beta=1.0):
    """Handler: scale the log-densities of the latent sites of ``fn`` (a model or a guide) by
    ``beta``.

    Wrap both model and guide with the same β: ``beta_scale(model, 4.0)``, ``beta_scale(guide,
    4.0)``.

    >>> import pyro, pyro.distributions as dist, torch
    >>> from pyro import poutine
    >>> def model():
    ...     z = pyro.sample("z", dist.Normal(0., 1.))
    ...     pyro.sample("x", dist.Normal(z, 1.), obs=torch.tensor(0.))
    >>> tr = poutine.trace(beta_scale(model, 4.0)).get_trace()
    >>> tr.nodes["z"]["scale"], tr.nodes["x"]["scale"]
    (4.0, 1.0)
    """
    if not callable(beta):
        _check_beta(beta)
    msngr = BetaScaleMessenger(beta)
    return msngr(fn) if fn is not None else msngr


class KLSchedule:
    """Linear KL warm-up: β(e) = β · min(1, e / E) after e completed epochs (β itself when E = 0).

    :param beta: the final β, a number or ``{site: β}`` (each site warms up alike).
    :param int warmup_epochs: E, epochs over which β rises from 0.
    :param bool validate_args: check both (False: they were checked where they entered, e.g. a
        :class:`~pyro_vae.app.config.Config`).
    """

    def __init__(self, beta=1.0, warmup_epochs=0, validate_args=True):
        self.beta, self.warmup_epochs = beta, warmup_epochs
        self._weights = None
        if validate_args:
            self._validate()

    def _validate(self):
        _check_beta(self.beta)
        check_option("kl_warmup_epochs", self.warmup_epochs)

    def weights(self, device=None):
        """β(e) as 0-d tensors on ``device`` (one, or ``{site: tensor}``) that :meth:`set_epoch`
        updates in place.

        Give them to :func:`beta_scale`: the loss, plain or traced once (the trainer's fast path),
        then reads the current β at every step. Created at the first call, holding β(0).
        """
        if self._weights is None:
            value = self(0)
            make = lambda b: torch.tensor(float(b), device=device)  # noqa: E731
            self._weights = (
                {k: make(b) for k, b in value.items()} if isinstance(value, dict) else make(value)
            )
        return self._weights

    def weighted(self, fn, device=None):
        """``fn`` (a model or a guide) with the log-density of every latent site multiplied by
        β(e): the tensors of :meth:`weights` on ``device``, which :meth:`set_epoch` updates."""
        return BetaScaleMessenger(self.weights(device))(fn)

    def set_epoch(self, epoch):
        """Set the tensors of :meth:`weights` to β(``epoch``) (``epoch`` completed epochs), in
        place; return β."""
        value, weights = self(epoch), self.weights()
        with torch.no_grad():
            if isinstance(value, dict):
                for site, b in value.items():
                    weights[site].fill_(b)
            else:
                weights.fill_(value)
        return value

    def factor(self, epoch):
        """min(1, e / E): the fraction of β in force after ``epoch`` completed epochs."""
        if epoch < 0:
            raise UserError(f"epoch must be >= 0, got {epoch}")
        return 1.0 if self.warmup_epochs == 0 else min(1.0, epoch / self.warmup_epochs)

    def __call__(self, epoch):
        f = self.factor(epoch)
        if isinstance(self.beta, dict):
            return {site: b * f for site, b in self.beta.items()}
        return self.beta * f

    @property
    def is_identity(self):
        """True when the schedule is β = 1 at every epoch (nothing to scale)."""
        values = self.beta.values() if isinstance(self.beta, dict) else [self.beta]
        return self.warmup_epochs == 0 and all(b == 1.0 for b in values)


def check_estimator(name, scaled=True, free_bits=0.0):
    """UserError unless estimator ``name`` supports the KL weights asked for (see the module
    docstring; :func:`~pyro_vae.core.checks.check_kl_weights` with :data:`SCALED_ESTIMATORS`)."""
    check_kl_weights(name, scaled, free_bits, SCALED_ESTIMATORS)


# ---------------------------------------------------------------------------------------------
# free bits
# ---------------------------------------------------------------------------------------------
def _group_kl(q_site, p_site):
    """Per-group KL of one latent site: ``(tensor batch_shape + group_shape, group_ndims)``.

    Analytic per element when q and p factorize over the event and ``kl_divergence`` is
    registered for their bases; else the Monte Carlo log q − log p of the whole site.
    """
    value = q_site["value"]
    kl = elementwise_kl(q_site["fn"], p_site["fn"], value, monte_carlo=False)
    if kl is not None:
        return kl, q_site["fn"].event_dim
    return q_site["fn"].log_prob(value) - p_site["fn"].log_prob(value), 0


def _mean_over_points(t, site, group_ndims, particle_dim, data_plate):
    """Reduce ``t`` (site batch dims + group dims) to ``[G]``: mean over particles and data points,
    sum over other plates."""
    if site["mask"] is not None:
        mask = torch.as_tensor(site["mask"], device=t.device)
        t = t * mask.reshape(mask.shape + (1,) * group_ndims)
    return (
        per_particle_and_point(t, site, particle_dim, group_ndims, data_plate)
        .mean([0, 1])
        .reshape(-1)
    )


class FreeBits_ELBO(ELBO, Options):
    """Negative ELBO with a floor λ on the minibatch-averaged KL of every latent dimension or site.

    .. math:: \\mathcal{L} = -\\frac{N}{B}\\sum_i \\mathbb{E}_q \\log p(x_i|z)
        + N \\sum_g \\beta_g \\max\\big(\\lambda, \\overline{\\mathrm{KL}}_g\\big)

    Groups g are the dimensions of a diagonal site (analytic KL) or whole sites otherwise
    (see :mod:`pyro_vae.estimators.variants`); β_g comes from :func:`beta_scale` on the pair, N/B
    from the data plate.  With λ = 0 and β = 1 the loss equals TraceMeanField_ELBO's (analytic
    KL) or Trace_ELBO's.  Particles are vectorized; guide sites must be reparameterizable.

    A :class:`pyro.infer.ELBO`: ``loss``, ``loss_and_grads`` and ``differentiable_loss`` call the
    pair as :class:`pyro.infer.SVI` does, ``model(*args, **kwargs)``; the batch is the data plate's
    subsample (see :mod:`pyro_vae.core.pair`).  A gradient reaches the KL of a group only while its
    batch mean is above λ.

    :param float free_bits: λ, nats per group.
    :param int max_plate_nesting: plate dims of model and guide (default: found on the first call).
    :param str data_plate: the plate over data points (default: found from the trace).
    :param bool validate_args: check ``free_bits`` (False: it was checked where it entered, e.g. a
        :class:`~pyro_vae.app.config.Config`).
    """

    # the trainer may trace loss and gradients once per batch size (pyro_vae.estimators.fast)
    traceable = True
    needs_inverse = False
    options = {"free_bits": "free_bits"}

    def __init__(
        self,
        num_particles=1,
        free_bits=0.0,
        max_plate_nesting=None,
        vectorize_particles=True,
        data_plate=None,
        validate_args=True,
    ):
        self.free_bits = free_bits
        if validate_args:
            self.check_options()
        if not vectorize_particles:
            raise UserError(
                "FreeBits_ELBO always vectorizes its particles; drop vectorize_particles=False"
            )
        super().__init__(
            num_particles=num_particles,
            max_plate_nesting=math.inf if max_plate_nesting is None else max_plate_nesting,
            vectorize_particles=True,
        )
        self.free_bits = float(free_bits)
        self.data_plate = data_plate

    def _log_weights(self, model, guide, args, kwargs):
        """One vectorized pass of the pair, its :class:`~.importance.LogWeights`."""
        if self.max_plate_nesting == math.inf:
            self.max_plate_nesting = guess_max_plate_nesting(model, guide, *args, **kwargs)
        model_trace, guide_trace, particle_dim = trace_pair(
            model,
            guide,
            *args,
            num_particles=self.num_particles,
            max_plate_nesting=self.max_plate_nesting,
            **kwargs,
        )
        try:
            return split_log_weights(
                model_trace, guide_trace, particle_dim, self.num_particles, self.data_plate
            )
        except ValueError as e:
            raise UserError(f"FreeBits_ELBO averages the KL over the batch: {e}") from None

    def _get_trace(self, model, guide, args, kwargs):
        """One vectorized pass: ``(model_trace, guide_trace)``, without subsample sites."""
        weights = self._log_weights(model, guide, args, kwargs)
        return weights.model_trace, weights.guide_trace

    def _terms(self, model, guide, args, kwargs):
        """``(recon, kl, plate, beta, sizes)``: :meth:`terms` with the data plate's
        :class:`~pyro_vae.core.PlateInfo` in place of its factor N/B, and each site's latent size
        per data point."""
        weights = self._log_weights(model, guide, args, kwargs)
        particle_dim = -(self.max_plate_nesting + 1)
        plate = weights.data_plate
        model_trace, guide_trace = weights.model_trace, weights.guide_trace
        kl, beta, sizes = {}, {}, {}
        for name, q_site in guide_trace.nodes.items():
            if q_site["type"] != "sample" or q_site["is_observed"]:
                continue
            p_site = _model_site(name, q_site, model_trace)
            t, group_ndims = _group_kl(q_site, p_site)
            kl[name] = _mean_over_points(t, q_site, group_ndims, particle_dim, plate.name)
            beta[name] = extra_scale(q_site, plate.name)
            sizes[name] = q_site["fn"].event_shape.numel()  # per data point
        for name, p_site in model_trace.nodes.items():
            if p_site["type"] == "sample" and not p_site["is_observed"] and name not in kl:
                raise UserError(
                    f"FreeBits_ELBO: model latent site {name!r} has no guide site of the same name"
                )
        return weights.obs.mean(0).sum(), kl, plate, beta, sizes

    def terms(self, model, guide, *args, **kwargs):
        """``(recon, kl, scale, beta)``: recon = Σ_i E_q log p(x_i|z) (a scalar), kl =
        ``{site: [G] tensor}`` minibatch-mean KLs, scale = the data plate's factor N/B and beta =
        ``{site: β}``."""
        recon, kl, plate, beta, _ = self._terms(model, guide, args, kwargs)
        return recon, kl, plate.scale, beta

    def differentiable_loss(self, model, guide, *args, **kwargs):
        """The loss above, differentiable w.r.t. model and guide parameters."""
        recon, kl, plate, beta, sizes = self._terms(model, guide, args, kwargs)
        penalty = self.kl_penalty(kl, beta, sizes, recon.new_zeros(()))
        return -plate.scale * recon + plate.scale * plate.subsample_size * penalty

    def kl_penalty(self, kl, beta, sizes, zero):
        """The KL part of the loss per data point, Σ_g β_g max(λ, KL̄_g), from the ``{site: [G]}``
        batch-mean KLs, ``{site: β}`` and ``{site: latent size per data point}``."""
        return sum((beta[n] * kl[n].clamp(min=self.free_bits).sum() for n in kl), zero)

    def loss(self, model, guide, *args, **kwargs):
        """The loss as a float (no gradients)."""
        with torch.no_grad():
            return self.differentiable_loss(model, guide, *args, **kwargs).item()

    def loss_and_grads(self, model, guide, *args, **kwargs):
        """Backpropagate :meth:`differentiable_loss` into the parameters; return the loss."""
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        loss.backward()
        return loss.item()


def _model_site(name, q_site, model_trace):
    """The model's site of guide site ``name``; ValueError where free bits cannot take its KL."""
    if not q_site["fn"].has_rsample:
        raise UserError(
            f"FreeBits_ELBO: guide site {name!r} ({type(q_site['fn']).__name__}) is not "
            f"reparameterizable; free bits need reparameterized latents"
        )
    p_site = model_trace.nodes.get(name)
    if p_site is None or p_site["type"] != "sample":
        raise UserError(
            f"FreeBits_ELBO: the guide samples {name!r} but the model has no site of that name"
        )
    return p_site


__all__ = ["BetaScaleMessenger", "FreeBits_ELBO", "KLSchedule", "beta_scale", "check_estimator"]
