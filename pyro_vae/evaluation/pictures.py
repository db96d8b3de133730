"""Pictures of a model/guide pair, taken from its own traces (so user-written pairs get them too).

Image sites are read from the model's observed site (default ``"x"``): its
distribution's ``mean`` is the picture (Bernoulli probabilities, Gaussian means).
Decoding a chosen latent z → image conditions the model on it
(``poutine.condition(model, data={"z": z})``) and reads that mean, so nothing
about the decoder is assumed.

Grids are written with :func:`torchvision.utils.save_image` (2-pixel padding): a grid of
``r`` rows and ``c`` columns of 28×28 images is ``(30 r + 2) × (30 c + 2)`` pixels.
"""

import json
import os

import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions import Independent
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import prune_subsample_sites
from torchvision.utils import save_image

from pyro_vae.core.checks import UserError
from pyro_vae.evaluation.latents import posterior_means


def _observed_site(trace, exclude=()):
    """The name of the one observed site of a model trace; one ValueError line naming ``obs_site``
    otherwise."""
    observed = [
        n
        for n, s in trace.nodes.items()
        if s["type"] == "sample" and s["is_observed"] and n not in exclude
    ]
    if len(observed) != 1:
        raise UserError(
            f"the model observes {len(observed)} sites ({', '.join(observed) or 'none'}); pass "
            f"obs_site=NAME of its observed images"
        )
    return observed[0]


def _obs_mean(trace, obs_site=None):
    """The mean of the observed site ``obs_site`` (default: the model's one observed site), clamped
    to [0, 1]."""
    obs_site = _observed_site(trace) if obs_site is None else obs_site
    if obs_site not in trace.nodes:
        raise UserError(
            f"the model has no site {obs_site!r}; pass obs_site=NAME of its observed images"
        )
    return trace.nodes[obs_site]["fn"].mean.clamp(0, 1)


class _Temper(Messenger):
    """Draws every Gaussian latent at temperature τ: N(μ, σ²) becomes N(μ, (τσ)²), site by site, so
    a group's conditional prior reads the tempered groups above it (NVAE, VDVAE); other
    distributions and ``exclude`` are left as they are."""

    def __init__(self, temperature, exclude=()):
        super().__init__()
        self.temperature, self.exclude = temperature, set(exclude)

    def _pyro_sample(self, msg):
        if msg["name"] in self.exclude or msg["is_observed"] or msg["value"] is not None:
            return
        fn, dims = msg["fn"], 0
        while isinstance(fn, Independent):
            fn, dims = fn.base_dist, dims + fn.reinterpreted_batch_ndims
        if type(fn) in (dist.Normal, torch.distributions.Normal):
            msg["fn"] = dist.Normal(fn.loc, self.temperature * fn.scale).to_event(dims)


def samples_name(temperature=1.0):
    """The samples picture's name: ``samples`` at τ = 1, else ``samples_tτ`` (e.g.
    ``samples_t0.7``)."""
    return "samples" if temperature == 1 else f"samples_t{temperature:g}"


@torch.no_grad()
def prior_samples(model, x, obs_site=None, temperature=1.0):
    """Mean of p(x|z) for z drawn from the prior, one per row of ``x`` (``x`` only sets shape,
    device and dtype).

    ``temperature`` τ scales the standard deviation of every Gaussian latent's (conditional) prior.
    """
    with poutine.block():
        # the one observed site, read before uncondition turns it into a latent
        if obs_site is None:
            obs_site = _observed_site(poutine.trace(model).get_trace(x))
        sampler = poutine.uncondition(model)
        if temperature != 1:
            sampler = _Temper(temperature, exclude=[obs_site])(sampler)
        trace = poutine.trace(sampler).get_trace(x)
    return _obs_mean(trace, obs_site)


@torch.no_grad()
def reconstructions(model, guide, x, obs_site=None):
    """Mean of p(x|z) for z ~ q(z|x)."""
    with poutine.block():
        guide_trace = poutine.trace(guide).get_trace(x)
        trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x)
    return _obs_mean(trace, obs_site)


class _MeanPath(Messenger):
    """Sets every latent site that is not observed or conditioned to its distribution's mean when it
    has a finite one (a one-hot categorical: its probabilities); the others (a class label, whose
    mean is NaN) are sampled."""

    def _pyro_sample(self, msg):
        if msg["is_observed"] or msg["value"] is not None:
            return
        try:
            mean = msg["fn"].mean
        except (NotImplementedError, AttributeError):
            return
        if torch.is_tensor(mean) and mean.is_floating_point() and torch.isfinite(mean).all():
            msg["value"] = mean


@torch.no_grad()
def decode(model, latents, x, obs_site=None):
    """Mean of p(x | z) for chosen latents: the model conditioned on ``latents`` = ``{site: [n,
    ...]}``.

    ``x`` (n rows) only sets the batch, shape, device and dtype the model is called with.
    Latent sites not in ``latents`` take the mean of their conditional distribution in the model
    (e.g. z₁ = E[z₁ | z₂] in a hierarchical model conditioned on z₂), or a sample when it has none.
    """
    n = len(x)
    for name, z in latents.items():
        if len(z) != n:
            raise UserError(
                f"latent {name!r} has {len(z)} rows but x has {n}; pass one latent per image"
            )
    with poutine.block():
        trace = poutine.trace(_MeanPath()(poutine.condition(model, data=latents))).get_trace(x)
    # the conditioned latents count as observed here: the one other observed site
    if obs_site is None:
        obs_site = _observed_site(prune_subsample_sites(trace), exclude=latents)
    return _obs_mean(trace, obs_site)


def _model_latent_order(model, x):
    with poutine.block():
        trace = poutine.trace(model).get_trace(x[:1])
    return [
        name
        for name, site in trace.nodes.items()
        if site["type"] == "sample" and not site["is_observed"]
    ]


def _probe(x, n):
    """``n`` rows shaped like ``x`` (the model's batch for decoding)."""
    return x[:1].expand(n, *x.shape[1:])


@torch.no_grad()
def interpolations(model, guide, x_from, x_to, steps=10, obs_site=None):
    r"""Decoded straight lines between posterior means: ``[pairs, steps, *x_shape]``.

    .. math:: z(t) = (1 − t)\,E_q[z | x_a] + t\,E_q[z | x_b], \quad t ∈ \{0, 1/(s−1), …, 1\}

    Every latent site of the guide is interpolated (one path per pair of images).
    """
    if len(x_from) != len(x_to) or steps < 2:
        raise UserError(
            f"need as many start as end images and steps >= 2, got {len(x_from)}, {len(x_to)}, "
            f"{steps}"
        )
    a, b = posterior_means(guide, x_from), posterior_means(guide, x_to)
    return _interpolations(model, a, b, x_from, steps, obs_site)


def _interpolations(model, a, b, x_from, steps, obs_site):
    """:func:`interpolations` between the posterior means ``a`` and ``b`` (``{site: [pairs,
    ...]}``) of the images ``x_from`` and their partners."""
    t = torch.linspace(0, 1, steps, dtype=x_from.dtype, device=x_from.device)
    latents = {}
    for name in a:
        shape = (1, steps) + (1,) * (a[name].dim() - 1)
        za, zb = a[name].unsqueeze(1), b[name].unsqueeze(1)
        latents[name] = (za + t.reshape(shape) * (zb - za)).reshape(-1, *a[name].shape[1:])
    images = decode(model, latents, _probe(x_from, len(x_from) * steps), obs_site)
    return images.reshape(len(x_from), steps, *x_from.shape[1:])


@torch.no_grad()
def traversals(model, guide, x, site=None, values=None, max_dims=32, obs_site=None):
    """Decoded traversals of each latent dimension around the posterior mean of one image ``x[:1]``.

    Row d sets dimension d of ``site`` (default: the guide's first latent site) to each of
    ``values`` (default: −3 … 3 in 9 steps, i.e. ±3 prior standard deviations) and keeps the
    other dimensions, and the sites the model samples before ``site``, at E_q[z | x]; sites the
    model samples after it take their conditional mean given it (see :func:`decode`).
    Returns ``[dims, len(values), *x_shape]``.
    """
    return _traversals(model, posterior_means(guide, x[:1]), x, site, values, max_dims, obs_site)


def _traversals(model, means, x, site, values, max_dims, obs_site):
    """:func:`traversals` around the posterior ``means`` (``{site: [1, ...]}``) of ``x[:1]``."""
    site = site or next(iter(means))
    if site not in means:
        raise UserError(f"the guide has no latent site {site!r}; its sites are {list(means)}")
    if values is None:
        values = torch.linspace(-3, 3, 9)
    values = torch.as_tensor(values, dtype=x.dtype, device=x.device)
    z0 = means[site].reshape(-1)
    dims = min(z0.numel(), max_dims)
    grid = z0.repeat(dims, len(values), 1)  # [dims, V, D]
    idx = torch.arange(dims, device=x.device)
    grid[idx, :, idx] = values
    n = dims * len(values)
    order = _model_latent_order(model, x)
    before = order[: order.index(site)] if site in order else list(means)
    latents = {
        name: means[name].expand(n, *means[name].shape[1:]) for name in before if name in means
    }
    latents[site] = grid.reshape(n, *means[site].shape[1:])
    images = decode(model, latents, _probe(x, n), obs_site)
    return images.reshape(dims, len(values), *x.shape[1:])


def project_2d(z):
    """Points ``[N, D]`` → ``[N, 2]``: unchanged when D ≤ 2 (padded with zeros if D = 1), else the
    first two PCA scores."""
    z = z.reshape(len(z), -1).double()
    if z.shape[1] <= 2:
        return torch.cat([z, z.new_zeros(len(z), 2 - z.shape[1])], 1)
    centred = z - z.mean(0)
    _, _, v = torch.linalg.svd(centred, full_matrices=False)
    return centred @ v[:2].T


def save_latent_scatter(means, labels, path, title=None):
    """Scatter of posterior means ``[N, D]`` (PCA to 2-D when D > 2) coloured by integer
    ``labels``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xy = project_2d(means).cpu().numpy()
    labels = labels.cpu().numpy() if torch.is_tensor(labels) else labels
    fig, ax = plt.subplots(figsize=(5.5, 5))
    points = ax.scatter(xy[:, 0], xy[:, 1], c=labels, cmap="tab10", s=4, alpha=0.7)
    pca = means.reshape(len(means), -1).shape[1] > 2
    ax.set_xlabel("PC 1" if pca else "z₁")
    ax.set_ylabel("PC 2" if pca else "z₂")
    ax.set_title(title or ("posterior means, PCA" if pca else "posterior means"))
    fig.colorbar(points, ax=ax, label="label")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def save_samples(model, x, path, n=64, nrow=8, obs_site=None, temperature=1.0):
    """Write a grid of ``n`` prior samples (at ``temperature``, see :func:`prior_samples`) to
    ``path``."""
    save_image(
        prior_samples(model, x[:n], obs_site, temperature).reshape(-1, *x.shape[1:]),
        path,
        nrow=nrow,
    )


def save_reconstructions(model, guide, x, path, n=32, nrow=8, obs_site=None):
    """Write rows of ``nrow`` test inputs, each above a row of their reconstructions."""
    x = x[:n]
    recon = reconstructions(model, guide, x, obs_site).reshape(x.shape)
    rows = []
    for start in range(0, len(x), nrow):
        rows += [x[start : start + nrow], recon[start : start + nrow]]
    save_image(torch.cat(rows), path, nrow=nrow)


def save_loss_curve(metrics_path, path):
    """Plot train loss (−ELBO) and −test ELBO per epoch from ``metrics.jsonl``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(metrics_path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    epochs = [r["epoch"] for r in rows]
    ax.plot(epochs, [r["train_loss"] for r in rows], "o-", label="train loss (−ELBO)")
    if all("test_elbo" in r for r in rows):
        ax.plot(epochs, [-r["test_elbo"] for r in rows], "s-", label="test −ELBO")
    ax.set_xlabel("epoch")
    ax.set_ylabel("nats per image")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def save_interpolations(model, guide, x, path, pairs=8, steps=10, obs_site=None):
    """Write ``pairs`` rows, each decoding ``steps`` points on the line from E_q[z|x_i] to
    E_q[z|x_{i+pairs}]."""
    _save_interpolations(
        model, posterior_means(guide, x[: 2 * pairs]), x, path, pairs, steps, obs_site
    )


def _save_interpolations(model, means, x, path, pairs=8, steps=10, obs_site=None):
    """:func:`save_interpolations` from the posterior ``means`` of the first images of ``x``."""
    if len(x) < 2:
        raise UserError(f"interpolations need at least 2 images, got {len(x)}")
    pairs = min(pairs, len(x) // 2)
    a, b = _rows(means, 0, pairs), _rows(means, pairs, 2 * pairs)
    images = _interpolations(model, a, b, x[:pairs], steps, obs_site)
    save_image(images.reshape(-1, *x.shape[1:]), path, nrow=steps)


def save_traversals(model, guide, x, path, site=None, steps=9, max_dims=32, obs_site=None):
    """Write one row per latent dimension of ``site``, traversing it over −3 … 3 around E_q[z |
    x[0]]."""
    _save_traversals(model, posterior_means(guide, x[:1]), x, path, site, steps, max_dims, obs_site)


def _save_traversals(model, means, x, path, site=None, steps=9, max_dims=32, obs_site=None):
    """:func:`save_traversals` from the posterior ``means`` of the first images of ``x``."""
    values = torch.linspace(-3, 3, steps)
    images = _traversals(model, _rows(means, 0, 1), x[:1], site, values, max_dims, obs_site)
    save_image(images.reshape(-1, *x.shape[1:]), path, nrow=steps)


def _rows(means, start, stop):
    """Rows ``start:stop`` of each site's posterior means ``{site: [N, ...]}``."""
    return {name: m[start:stop] for name, m in means.items()}


def save_run_pictures(
    model, guide, x, out_dir, labels=None, obs_site=None, temperature=1.0, samples=True
):
    """The pictures of a run directory, from images ``x`` (and their ``labels``, for the scatter).

    samples.png, reconstructions.png, interpolations.png, traversals.png, loss.png (when
    ``metrics.jsonl`` exists) and latent_scatter.png (when ``labels`` are given); with
    ``temperature`` τ ≠ 1 also samples_tτ.png, prior samples at τ (:func:`prior_samples`).
    ``obs_site``: the observed images' site (default: the model's one observed site);
    ``samples=False``: no samples (a model whose own prior does not draw them). Returns the paths.
    """
    names = ("samples",) * samples + ("reconstructions", "interpolations", "traversals")
    paths = {name: os.path.join(out_dir, name + ".png") for name in names}
    if samples:
        save_samples(model, x, paths["samples"], obs_site=obs_site)
    if samples and temperature != 1:
        paths["tempered_samples"] = os.path.join(out_dir, samples_name(temperature) + ".png")
        save_samples(
            model, x, paths["tempered_samples"], obs_site=obs_site, temperature=temperature
        )
    save_reconstructions(model, guide, x, paths["reconstructions"], obs_site=obs_site)
    means = posterior_means(guide, x)  # one pass for the pictures of latent space below
    _save_interpolations(model, means, x, paths["interpolations"], obs_site=obs_site)
    _save_traversals(model, means, x, paths["traversals"], obs_site=obs_site)
    metrics = os.path.join(out_dir, "metrics.jsonl")
    if os.path.exists(metrics):
        paths["loss"] = os.path.join(out_dir, "loss.png")
        save_loss_curve(metrics, paths["loss"])
    if labels is not None:
        first = next(iter(means))
        paths["latent_scatter"] = os.path.join(out_dir, "latent_scatter.png")
        save_latent_scatter(
            means[first],
            labels[: len(x)],
            paths["latent_scatter"],
            title=f"posterior means of {first!r} ({len(x)} images)",
        )
    return paths
