"""The pair contract: every estimator and ``log_likelihood`` take a pair the way ``pyro.infer.SVI``
does.

Each pair below is the linear-Gaussian model (closed-form log p(x), posterior and ELBO) written
another way Pyro users write pairs: data closed over, data as a keyword, (labels, images)
positionally, other site and plate names, a subsampled plate, a global latent, ``poutine.scale``, a
non-amortized guide. At the exact posterior every bound equals log p(x) (times the plate's and
poutine's scales), to float64 round-off.
"""

import math
import os

import pyro
import pyro.distributions as dist
import pytest
import torch
from linear_gaussian import LinearGaussian
from pyro import poutine
from pyro.distributions import constraints

from pyro_vae import log_likelihood, make_elbo
from pyro_vae.core import probe

ELBOS = ["trace", "meanfield", "stl"]  # sums of per-site terms: every scale and plate structure
BOUNDS = ["iwae", "dreg", "renyi"]  # per data point: need a data plate, refuse other scales
N, B = 12, 4


def exact_posterior(lg, x):
    mean, cov = lg.posterior(x)
    return mean, torch.linalg.cholesky(cov[0])


def z_prior(lg, like):
    return dist.Normal(like.new_zeros(lg.latent_dim), 1.0).to_event(1)


def likelihood(lg, z):
    return dist.Normal(z @ lg.W.T + lg.b, lg.sigma).to_event(1)


def pairs(lg, X):
    """name -> (model, guide, args, kwargs, scale, per_point): the exact loss is −scale · Σ_i log
    p(x_i) over the points in the data plate (``X`` or its subsample ``X[idx]``); ``per_point``: the
    per-data-point bounds apply."""
    mean, tril = exact_posterior(lg, X)
    idx = torch.tensor([1, 5, 6, 10])
    out = {}

    def closed_model():
        with pyro.plate("data", len(X)):
            z = pyro.sample("z", z_prior(lg, X))
            pyro.sample("x", likelihood(lg, z), obs=X)

    def closed_guide():
        with pyro.plate("data", len(X)):
            pyro.sample("z", dist.MultivariateNormal(mean, scale_tril=tril))

    out["closed-over"] = (closed_model, closed_guide, (), {}, 1.0, True)

    def kw_model(*, images):
        with pyro.plate("data", len(images)):
            z = pyro.sample("z", z_prior(lg, images))
            pyro.sample("x", likelihood(lg, z), obs=images)

    def kw_guide(images):
        m, t = exact_posterior(lg, images)
        with pyro.plate("data", len(images)):
            pyro.sample("z", dist.MultivariateNormal(m, scale_tril=t))

    out["keyword"] = (kw_model, kw_guide, (), {"images": X}, 1.0, True)

    def pos_model(labels, images):
        with pyro.plate("data", len(images)):
            z = pyro.sample("z", z_prior(lg, images))
            pyro.sample("x", likelihood(lg, z), obs=images)

    def pos_guide(labels, images):
        m, t = exact_posterior(lg, images)
        with pyro.plate("data", len(labels)):
            pyro.sample("z", dist.MultivariateNormal(m, scale_tril=t))

    out["positional"] = (pos_model, pos_guide, (torch.arange(len(X)), X), {}, 1.0, True)

    def named_model(x):
        with pyro.plate(
            "points", len(x), dim=-2
        ):  # another name and dim, and an inner plate over coordinates
            z = pyro.sample("code", dist.Normal(x.new_zeros(1, lg.latent_dim), 1.0).to_event(1))
            with pyro.plate("coords", lg.obs_dim, dim=-1):
                loc = (z @ lg.W.T + lg.b).squeeze(-2)  # [N, D]
                pyro.sample("pixels", dist.Normal(loc, lg.sigma), obs=x)

    def named_guide(x):
        m, t = exact_posterior(lg, x)
        with pyro.plate("points", len(x), dim=-2):
            pyro.sample("code", dist.MultivariateNormal(m.unsqueeze(-2), scale_tril=t))

    out["names"] = (named_model, named_guide, (X,), {}, 1.0, True)

    def sub_model(x, idx):
        with pyro.plate("data", len(x), subsample=idx) as i:
            z = pyro.sample("z", z_prior(lg, x))
            pyro.sample("x", likelihood(lg, z), obs=x[i])

    def sub_guide(x, idx):
        with pyro.plate("data", len(x), subsample=idx) as i:
            pyro.sample("z", dist.MultivariateNormal(mean[i], scale_tril=tril))

    out["subsampled"] = (sub_model, sub_guide, (X, idx), {}, N / B, True)

    def global_model(x):
        pyro.sample(
            "g", dist.Normal(x.new_zeros(()), 1.0)
        )  # a global latent that x does not depend on
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", z_prior(lg, x))
            pyro.sample("x", likelihood(lg, z), obs=x)

    def global_guide(x):
        pyro.sample("g", dist.Normal(x.new_zeros(()), 1.0))  # its exact posterior is its prior
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.MultivariateNormal(mean, scale_tril=tril))

    out["global latent"] = (global_model, global_guide, (X,), {}, 1.0, False)

    def nonamortized_guide(x):
        loc = pyro.param("loc", mean.clone())  # one free location per data point, [N, d]
        t = pyro.param("tril", tril.clone(), constraint=constraints.lower_cholesky)
        with pyro.plate("data", len(loc)):
            pyro.sample("z", dist.MultivariateNormal(loc, scale_tril=t))

    def plain_model(x):
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", z_prior(lg, x))
            pyro.sample("x", likelihood(lg, z), obs=x)

    out["non-amortized"] = (plain_model, nonamortized_guide, (X,), {}, 1.0, True)
    out["poutine.scale"] = (
        poutine.scale(plain_model, scale=0.25),
        poutine.scale(kw_guide, scale=0.25),
        (X,),
        {},
        0.25,
        False,
    )
    return out, idx


WAYS = [
    "closed-over",
    "keyword",
    "positional",
    "names",
    "subsampled",
    "global latent",
    "poutine.scale",
    "non-amortized",
]


def setup(way):
    lg = LinearGaussian()
    X = lg.sample(N)
    table, idx = pairs(lg, X)
    model, guide, args, kwargs, scale, per_point = table[way]
    x_in_plate = X[idx] if way == "subsampled" else X
    return lg, model, guide, args, kwargs, scale, per_point, lg.log_px(x_in_plate)


@pytest.mark.parametrize("way", WAYS)
@pytest.mark.parametrize("name", ELBOS + BOUNDS)
def test_every_estimator_takes_the_pair_as_svi_does_and_is_exact_at_the_posterior(way, name):
    lg, model, guide, args, kwargs, scale, per_point, log_px = setup(way)
    elbo = make_elbo(name, num_particles=5)
    if name in BOUNDS and not per_point:
        with pytest.raises(ValueError) as e:
            elbo.loss(model, guide, *args, **kwargs)
        assert "\n" not in str(e.value) and (
            "poutine.scale" in str(e.value) or "data plate" in str(e.value)
        )
        return
    expected = -scale * log_px.sum()
    assert elbo.loss(model, guide, *args, **kwargs) == pytest.approx(expected.item(), rel=1e-10)
    loss = elbo.differentiable_loss(model, guide, *args, **kwargs)
    torch.testing.assert_close(loss, expected, rtol=1e-10, atol=1e-9)


@pytest.mark.parametrize("way", [w for w in WAYS if w != "global latent"])
def test_log_likelihood_takes_the_pair_as_svi_does(way):
    lg, model, guide, args, kwargs, scale, per_point, log_px = setup(way)
    for max_elements in (
        2**16,
        8,
    ):  # 8 < N: forces chunks of points, or of particles where points cannot split
        est = log_likelihood(
            model, guide, *args, num_samples=20, max_elements=max_elements, **kwargs
        )
        torch.testing.assert_close(est, log_px, rtol=1e-10, atol=1e-9)


def test_log_likelihood_of_a_global_latent_pair_is_refused_in_one_line():
    lg, model, guide, args, kwargs, *_ = setup("global latent")
    with pytest.raises(ValueError, match="global latent") as e:
        log_likelihood(model, guide, *args, num_samples=4, **kwargs)
    assert "\n" not in str(e.value)


def test_log_likelihood_of_a_non_amortized_guide_off_the_posterior_is_within_002_nats():
    """q_i = N(m_i + 0.2 sd, (1.1)² Σ) per point, as free parameters: the pair runs on all N points
    only, so the particles are split (max_elements 600 → 50 per pass); K = 4000 leaves a bias far
    below 0.02 nats."""
    lg = LinearGaussian()
    X = lg.sample(N)
    mean, tril = exact_posterior(lg, X)
    loc0 = mean + 0.2 * tril.diagonal()

    def guide(x):
        loc = pyro.param("loc", loc0.clone())
        with pyro.plate("data", len(loc)):
            pyro.sample("z", dist.MultivariateNormal(loc, scale_tril=1.1 * tril))

    def model(x):
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", z_prior(lg, x))
            pyro.sample("x", likelihood(lg, z), obs=x)

    est = log_likelihood(model, guide, X, num_samples=4000, max_elements=600)
    assert (est - lg.log_px(X)).abs().max() < 0.02
    assert pyro.param("loc").shape == (
        N,
        lg.latent_dim,
    )  # the trial on a sub-batch left no half-size parameter


# ---- gradients against the closed-form ELBO gradient, under subsampling and scaling
# ----------------------------
def closed_form_elbo(x, W, b, sigma, m, s2):
    """Σ_i ELBO_i for q_i = N(m_i, diag s2_i) under z ~ N(0, I), x | z ~ N(Wz + b, σ²I)."""
    D, d = W.shape
    resid = x - m @ W.T - b
    expected_loglik = -0.5 * D * math.log(2 * math.pi * sigma**2) - 0.5 / sigma**2 * (
        resid.pow(2).sum(-1) + s2 @ W.pow(2).sum(0)
    )
    kl = 0.5 * (s2.sum(-1) + m.pow(2).sum(-1) - d - s2.log().sum(-1))
    return (expected_loglik - kl).sum()


@pytest.mark.parametrize("name", ELBOS)
def test_gradients_equal_the_closed_form_elbo_gradient_under_subsampling_and_scaling(name):
    """With a subsampled plate (N = 12, B = 4) and poutine.scale(0.5) on both, the expected gradient
    of every parameter (model: W, b; non-amortized guide: loc, log_scale) is 0.5 · N/B · ∇ Σ_{i ∈
    idx} ELBO_i. The mean of R = 30 estimates of K = 200 particles each is within 5 standard errors
    of it, and of the same order."""
    lg = LinearGaussian()
    X = lg.sample(N)
    mean, _ = lg.posterior(X)
    sd = lg.precision().diagonal().rsqrt()
    idx = torch.tensor([0, 3, 4, 9])
    init = {
        "W": lg.W + 0.3,
        "b": lg.b - 0.2,
        "loc": mean + 0.4 * sd,
        "log_scale": (0.7 * sd).log().expand(N, -1),
    }

    def model(x, idx):
        W, b = pyro.param("W", init["W"].clone()), pyro.param("b", init["b"].clone())
        with pyro.plate("data", len(x), subsample=idx) as i:
            z = pyro.sample("z", z_prior(lg, x))
            pyro.sample("x", dist.Normal(z @ W.T + b, lg.sigma).to_event(1), obs=x[i])

    def guide(x, idx):
        loc, log_scale = (
            pyro.param("loc", init["loc"].clone()),
            pyro.param("log_scale", init["log_scale"].clone()),
        )
        with pyro.plate("data", len(x), subsample=idx) as i:
            pyro.sample("z", dist.Normal(loc[i], log_scale[i].exp()).to_event(1))

    s = 0.5
    model, guide = poutine.scale(model, scale=s), poutine.scale(guide, scale=s)
    leaves = {k: v.clone().requires_grad_() for k, v in init.items()}
    exact = (
        s
        * N
        / B
        * closed_form_elbo(
            X[idx],
            leaves["W"],
            leaves["b"],
            lg.sigma,
            leaves["loc"][idx],
            leaves["log_scale"][idx].exp().pow(2),
        )
    )
    exact_grads = dict(zip(leaves, torch.autograd.grad(-exact, list(leaves.values()))))
    elbo = make_elbo(name, num_particles=200)
    R, samples = 30, {k: [] for k in init}
    for _ in range(R):
        for _, p in pyro.get_param_store().named_parameters():
            p.grad = None
        elbo.loss_and_grads(model, guide, X, idx)
        for k in init:
            samples[k].append(pyro.param(k).unconstrained().grad.clone())
    for k in init:
        g = torch.stack(samples[k])
        err = (g.mean(0) - exact_grads[k]).abs()
        se = g.std(0) / math.sqrt(R)
        assert (err <= 5 * se + 1e-8 * (1 + exact_grads[k].abs())).all(), (k, err.max(), se.max())
        assert exact_grads[k].abs().max() > 10 * se.max(), (
            f"{k}: the test would pass for any estimate"
        )


def test_probe_reads_the_data_plate_sites_and_params_from_one_trace():
    lg = LinearGaussian()
    X = lg.sample(N)
    table, idx = pairs(lg, X)
    model, guide, args, kwargs, *_ = table["subsampled"]
    info = probe(model, guide, *args, **kwargs)
    assert (info.data_plate.name, info.data_plate.size, info.data_plate.subsample_size) == (
        "data",
        N,
        B,
    )
    assert info.data_plate.scale == N / B and info.batch_size == B and info.max_plate_nesting == 1
    assert info.observed == {"x": (lg.obs_dim,)} and info.latent == {"z": (lg.latent_dim,)}
    model, guide, args, kwargs, *_ = table["names"]
    info = probe(
        model, guide, *args, **kwargs
    )  # the observed site is in "points" and "coords": the outer one
    assert (
        info.data_plate.name == "points"
        and info.max_plate_nesting == 2
        and info.observed == {"pixels": ()}
    )
    assert probe(model, guide, *args, data_plate="coords", **kwargs).data_plate.size == lg.obs_dim
    with pytest.raises(ValueError, match="data_plate='nope'"):
        probe(model, guide, *args, data_plate="nope", **kwargs)
    model, guide, args, kwargs, *_ = table["non-amortized"]
    assert probe(model, guide, *args, **kwargs).params == ("loc", "tril")


# ---- the Trainer, evaluate and the pictures on a pair with other names, subsampling and per-point
# parameters ----
def named_subsampled_pair(lg, X):
    """Plate "points" with the dataset size (scale N / B), observed site "obs", and a non-amortized
    guide at the exact posterior whose per-point parameters are indexed by the batch's rows
    (``batch_kwargs``)."""
    mean, tril = exact_posterior(lg, X)

    def model(x, idx=None):
        with pyro.plate("points", len(X), subsample=torch.arange(len(x))):
            z = pyro.sample("z", z_prior(lg, x))
            pyro.sample("obs", dist.Normal(z @ lg.W.T + lg.b, lg.sigma).to_event(1), obs=x)

    def guide(x, idx=None):
        loc = pyro.param("loc", mean.clone())
        rows = torch.arange(len(x)) if idx is None else idx
        with pyro.plate("points", len(X), subsample=torch.arange(len(x))):
            pyro.sample("z", dist.MultivariateNormal(loc[rows], scale_tril=tril))

    return model, guide


def test_trainer_scales_the_loss_by_the_data_plate_whatever_its_name():
    """With STL at the exact posterior every gradient is zero up to round-off (which Adam would blow
    up to steps of lr: lr = 1e-9 keeps them negligible), so each epoch's train_loss is the mean −log
    p(x) per image exactly: the trainer found plate "points" and its scale N / B."""
    from pyro_vae import Optimization, Trainer

    lg = LinearGaussian()
    X = lg.sample(N)
    model, guide = named_subsampled_pair(lg, X)
    trainer = Trainer(
        model, guide, elbo="stl", particles=3, optim=Optimization(lr=1e-9), progress=False
    )
    history = trainer.fit(X, epochs=2, batch_size=B, batch_kwargs=lambda idx: {"idx": idx})
    assert trainer.pair.data_plate.name == "points" and trainer.pair.observed == {
        "obs": (lg.obs_dim,)
    }
    for row in history:
        assert row["train_loss"] == pytest.approx(-lg.log_px(X).mean().item(), rel=1e-10)
    torch.testing.assert_close(pyro.param("loc").detach(), exact_posterior(lg, X)[0])


def test_evaluate_reads_the_data_plate_and_sites_from_the_trace():
    from pyro_vae import evaluate

    lg = LinearGaussian()
    X = lg.sample(N)
    model, guide = named_subsampled_pair(lg, X)
    result = evaluate(model, guide, X, nll_samples=10, verbose=False)
    assert result["elbo"] == pytest.approx(
        lg.log_px(X).mean().item(), rel=1e-10
    )  # exact posterior: ELBO = log p
    assert result["nll"] == pytest.approx(-lg.log_px(X).mean().item(), rel=1e-10)
    assert result["latent_sites"] == ["z"] and result["latent_dims"] == lg.latent_dim


def test_pictures_find_the_observed_site_whatever_its_name(tmp_path):
    """The pictures of a pair whose observed site is "obs" in plate "points": every file is written,
    and the reconstructions are the exact posterior's decoded means (clamped to [0, 1] as
    images)."""
    from pyro_vae.evaluation.pictures import reconstructions, save_run_pictures

    lg = LinearGaussian.unit_range(obs_dim=16, sigma=0.1, w_scale=0.05)
    X = lg.sample(N).reshape(N, 1, 4, 4).clamp(0, 1)
    mean, tril = exact_posterior(lg, X.reshape(N, -1))

    def model(x):
        with pyro.plate("points", len(x)):
            z = pyro.sample("z", z_prior(lg, x))
            loc = (z @ lg.W.T + lg.b).reshape(*z.shape[:-1], 1, 4, 4)
            pyro.sample("obs", dist.Normal(loc, lg.sigma).to_event(3), obs=x)

    def guide(x):
        m, t = exact_posterior(lg, x.reshape(len(x), -1))
        with pyro.plate("points", len(x)):
            pyro.sample("z", dist.MultivariateNormal(m, scale_tril=t))

    paths = save_run_pictures(model, guide, X, str(tmp_path), labels=torch.arange(N))
    assert all(os.path.getsize(p) > 0 for p in paths.values()) and len(paths) == 5
    recon = reconstructions(model, guide, X)
    assert recon.shape == X.shape and ((recon >= 0) & (recon <= 1)).all()


# ---- batch_call: the Trainer and evaluate take pairs that do not take the batch as their one
# argument ------------
def trainable_pairs(lg, X):
    """name -> (model, guide, batch_call): the linear-Gaussian model with a linear amortized guide
    q(z|x) = N(x A + c, L Lᵀ) (parameters A, c, L; the exact posterior is one of them), written
    three ways."""

    def encode(x):
        A = pyro.param("A", torch.zeros(lg.obs_dim, lg.latent_dim, dtype=x.dtype))
        c = pyro.param("c", torch.zeros(lg.latent_dim, dtype=x.dtype))
        L = pyro.param(
            "L", torch.eye(lg.latent_dim, dtype=x.dtype), constraint=constraints.lower_cholesky
        )
        return x @ A + c, L

    def kw_model(x=None):
        with pyro.plate("data", len(x)):
            pyro.sample("x", likelihood(lg, pyro.sample("z", z_prior(lg, x))), obs=x)

    def kw_guide(x=None):
        loc, L = encode(x)
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.MultivariateNormal(loc, scale_tril=L))

    def named_model(images):
        with pyro.plate("points", len(images)):
            pyro.sample("obs", likelihood(lg, pyro.sample("code", z_prior(lg, images))), obs=images)

    def named_guide(images):
        loc, L = encode(images)
        with pyro.plate("points", len(images)):
            pyro.sample("code", dist.MultivariateNormal(loc, scale_tril=L))

    def closed_model(idx):  # the data closed over, the plate subsampled by the batch's indices
        with pyro.plate("data", len(X), subsample=idx):
            pyro.sample("x", likelihood(lg, pyro.sample("z", z_prior(lg, X))), obs=X[idx])

    def closed_guide(idx):
        loc, L = encode(X[idx])
        with pyro.plate("data", len(X), subsample=idx):
            pyro.sample("z", dist.MultivariateNormal(loc, scale_tril=L))

    return {
        "keyword": (kw_model, kw_guide, lambda x, idx: ((), {"x": x})),
        "names": (named_model, named_guide, None),
        "closed-over, subsampled": (closed_model, closed_guide, lambda x, idx: ((idx,), {})),
    }


@pytest.mark.parametrize("way", ["keyword", "names", "closed-over, subsampled"])
def test_trainer_and_evaluate_take_the_pair_through_batch_call(way):
    """Training lowers the loss; evaluate's ELBO of the trained guide is the closed-form ELBO of
    q(z|x_i) = N(x_i A + c, L Lᵀ) (400 particles on 64 points: a standard error near 0.01 nats), its
    NLL the exact −log p(x) within 0.05 nats, and at the exact posterior evaluate's ELBO is log p(x)
    to round-off."""
    from pyro_vae import Optimization, Trainer, evaluate

    lg = LinearGaussian()
    X = lg.sample(64)
    model, guide, batch_call = trainable_pairs(lg, X)[way]
    trainer = Trainer(
        model,
        guide,
        elbo="trace",
        optim=Optimization(lr=0.05),
        progress=False,
        batch_call=batch_call,
    )
    history = trainer.fit(X, epochs=15, batch_size=16, test_x=X)
    assert history[-1]["train_loss"] < history[0]["train_loss"] - 1.0
    assert "active_units" in history[-1] and history[-1]["test_elbo"] == pytest.approx(
        -history[-1]["train_loss"], abs=0.5
    )
    if way == "keyword":
        assert "the batch is not the pair's one argument" in trainer.fast_note
    A, c, L = (pyro.param(n).detach() for n in ("A", "c", "L"))
    closed = lg.elbo(X, X @ A + c, (L @ L.T).expand(len(X), -1, -1)).mean().item()
    result = evaluate(
        model, guide, X, nll_samples=400, elbo_particles=400, verbose=False, batch_call=batch_call
    )
    assert result["elbo"] == pytest.approx(closed, abs=0.05)
    assert result["nll"] == pytest.approx(-lg.log_px(X).mean().item(), abs=0.05)
    assert result["latent_dims"] == lg.latent_dim and result["images"] == len(X)
    mean, tril = exact_posterior(lg, X)  # the exact posterior: A = W Σ / σ², c = −b A, L = chol(Σ)
    cov = tril @ tril.T
    pyro.get_param_store()["A"] = lg.W @ cov.T / lg.sigma**2
    pyro.get_param_store()["c"] = -lg.b @ (lg.W @ cov.T / lg.sigma**2)
    pyro.get_param_store()["L"] = tril
    exact = evaluate(model, guide, X, nll_samples=5, verbose=False, batch_call=batch_call)
    assert exact["elbo"] == pytest.approx(lg.log_px(X).mean().item(), rel=1e-10)


@pytest.mark.parametrize("max_elements", [2**16, 24])
def test_evaluate_runs_a_non_amortized_guide_on_the_whole_data(max_elements):
    """One free q_i per data point over a plate of N, not indexed by the batch: evaluate cannot
    chunk the data (runs_per_point), so it takes all N points at once and splits the particles (24
    // 12 = 2 per pass). At the exact posterior its ELBO and NLL are the exact mean log p(x) per
    point."""
    from pyro_vae import evaluate

    lg = LinearGaussian()
    X = lg.sample(N)
    model, guide, *_ = pairs(lg, X)[0]["non-amortized"]
    result = evaluate(
        model,
        guide,
        X,
        nll_samples=10,
        elbo_particles=5,
        batch_size=4,
        max_elements=max_elements,
        verbose=False,
    )
    assert result["elbo"] == pytest.approx(lg.log_px(X).mean().item(), rel=1e-10)
    assert result["nll"] == pytest.approx(-lg.log_px(X).mean().item(), rel=1e-10)
    assert result["kl"] > 0 and result["latent_dims"] == lg.latent_dim
    assert (
        result["kl_per_dim"] is None
    )  # q_i is a full-covariance Gaussian: its KL does not split per dimension
    assert pyro.param("loc").shape == (N, lg.latent_dim)
