"""The built-in VAE's Pyro functions: ELBO for fixed noise against a hand computation, subsampling,
devices."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from linear_gaussian import LinearGaussian
from pyro import poutine
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

from pyro_vae import VAE, make_guide, make_likelihood
from pyro_vae.models.nets import MLP, ConvDecoder, ConvEncoder

X_SHAPE = (1, 6, 6)


def small_vae(latent_dim=3, num_data=None, conv=False):
    if conv:
        x_shape = (1, 28, 28)
        encoder, decoder = ConvEncoder(16, width=4), ConvDecoder(latent_dim, width=4)
    else:
        x_shape = X_SHAPE
        encoder = MLP(x_shape, [], 8, final_activation=True)
        decoder = MLP(latent_dim, [8], x_shape)
    guide = make_guide("diagonal", encoder, 16 if conv else 8, latent_dim)
    return VAE(
        decoder,
        guide,
        make_likelihood("bernoulli", x_shape),
        latent_dim,
        x_shape,
        num_data=num_data,
    )


def binary_batch(n, x_shape=X_SHAPE, dtype=torch.float32, device="cpu"):
    g = torch.Generator().manual_seed(3)
    return torch.bernoulli(torch.full((n, *x_shape), 0.3), generator=g).to(
        dtype=dtype, device=device
    )


def _hand_terms(vae, x, z):
    """log p(x|z), log p(z), log q(z|x) and the analytic KL, written out by hand for a Bernoulli MLP
    VAE."""
    logits = vae.decoder(z).reshape(len(x), -1)
    p = torch.sigmoid(logits)
    xf = x.reshape(len(x), -1)
    log_px_z = (xf * p.log() + (1 - xf) * (1 - p).log()).sum(-1)
    log_pz = (-0.5 * z**2 - 0.5 * math.log(2 * math.pi)).sum(-1)
    loc, scale = vae.guide_module.base(vae.guide_module.encoder(x))
    log_qz = (-0.5 * ((z - loc) / scale) ** 2 - scale.log() - 0.5 * math.log(2 * math.pi)).sum(-1)
    kl = 0.5 * (loc**2 + scale**2 - 1 - 2 * scale.log()).sum(-1)
    return log_px_z, log_pz, log_qz, kl


@pytest.mark.parametrize("num_data", [None, 40])
def test_elbo_for_fixed_noise_matches_hand_computation(num_data):
    vae = small_vae(num_data=num_data)
    x = binary_batch(5)
    guide_trace = poutine.trace(vae.guide).get_trace(x)
    z = guide_trace.nodes["z"]["value"]
    model, guide = (
        poutine.replay(vae.model, trace=guide_trace),
        poutine.replay(vae.guide, trace=guide_trace),
    )
    log_px_z, log_pz, log_qz, kl = _hand_terms(vae, x, z)
    scale = (num_data or len(x)) / len(x)
    expected_trace = scale * (log_px_z + log_pz - log_qz).sum()
    expected_meanfield = scale * (log_px_z - kl).sum()
    torch.testing.assert_close(
        -Trace_ELBO().loss(model, guide, x), expected_trace.item(), rtol=1e-5, atol=1e-4
    )
    torch.testing.assert_close(
        -TraceMeanField_ELBO().loss(model, guide, x),
        expected_meanfield.item(),
        rtol=1e-5,
        atol=1e-4,
    )


def test_site_names_plate_and_shapes():
    vae = small_vae(latent_dim=3, num_data=100)
    x = binary_batch(4)
    guide_trace = poutine.trace(vae.guide).get_trace(x)
    model_trace = poutine.trace(poutine.replay(vae.model, trace=guide_trace)).get_trace(x)
    z, obs = model_trace.nodes["z"], model_trace.nodes["x"]
    assert z["value"].shape == (4, 3) and z["fn"].event_shape == (3,)
    assert obs["is_observed"] and obs["fn"].event_shape == X_SHAPE and obs["fn"].batch_shape == (4,)
    frame = z["cond_indep_stack"][0]
    assert (frame.name, frame.dim, frame.size, frame.full_size) == ("data", -1, 4, 100)
    assert z["scale"] == 25.0


def test_subsampled_loss_is_unbiased_for_the_full_data_elbo():
    """E over random minibatches and z of −loss equals the closed-form full-data ELBO Σ_i ELBO_i."""
    lg = LinearGaussian(latent_dim=2, obs_dim=3)
    n, b = 24, 6
    x = lg.sample(n)
    g = torch.Generator().manual_seed(5)
    loc = torch.randn(n, 2, generator=g, dtype=torch.float64)
    scale = 0.3 + torch.rand(n, 2, generator=g, dtype=torch.float64)
    full = lg.elbo(x, loc, scale**2).sum().item()
    estimates = []
    for _ in range(1500):
        idx = torch.randperm(n, generator=g)[:b]
        guide = lg.meanfield_guide(loc[idx], scale[idx])
        estimates.append(
            -Trace_ELBO().loss(
                lambda xb: lg.model(xb, num_data=n), lambda xb: guide(xb, num_data=n), x[idx]
            )
        )
    est = torch.tensor(estimates, dtype=torch.float64)
    stderr = est.std().item() / math.sqrt(len(est))
    assert abs(est.mean().item() - full) < 4 * stderr, (est.mean().item(), full, stderr)
    # and the scale matters: without num_data the estimate is b/n of it
    assert abs(full) > 20 * stderr


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sites_follow_the_data_device_and_dtype(device, dtype):
    vae = small_vae().to(device=device, dtype=dtype)
    x = binary_batch(3, dtype=dtype, device=device)
    guide_trace = poutine.trace(vae.guide).get_trace(x)
    model_trace = poutine.trace(poutine.replay(vae.model, trace=guide_trace)).get_trace(x)
    for site in ("z", "x"):
        value = model_trace.nodes[site]["value"]
        assert value.dtype == dtype and value.device.type == device.type
        assert model_trace.nodes[site]["fn"].log_prob(value).dtype == dtype
    loss = Trace_ELBO().differentiable_loss(vae.model, vae.guide, x)
    assert loss.dtype == dtype and torch.isfinite(loss)


def test_conv_vae_runs_with_vectorized_particles():
    vae = small_vae(latent_dim=2, conv=True)
    x = binary_batch(3, x_shape=(1, 28, 28))
    elbo = Trace_ELBO(num_particles=4, vectorize_particles=True, max_plate_nesting=1)
    loss = elbo.differentiable_loss(vae.model, vae.guide, x)
    loss.backward()
    grads = [p.grad for p in vae.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    # a Bernoulli image has at most 784·log 2 nats of −log p per image: the initial loss is in that
    # range
    assert 0 < loss.item() / 3 < 2 * 784 * math.log(2)


def test_prior_is_standard_normal():
    vae = small_vae(latent_dim=4)
    x = binary_batch(2)
    trace = poutine.trace(vae.model).get_trace(x)
    prior = trace.nodes["z"]["fn"]
    assert isinstance(prior.base_dist, dist.Normal)
    torch.testing.assert_close(prior.base_dist.loc, torch.zeros(2, 4))
    torch.testing.assert_close(prior.base_dist.scale, torch.ones(2, 4))


def test_bad_latent_dim_is_rejected():
    with pytest.raises(ValueError, match="latent_dim"):
        make_guide("diagonal", torch.nn.Identity(), 8, 0)
    with pytest.raises(ValueError, match="unknown guide"):
        make_guide("nope", torch.nn.Identity(), 8, 2)
    pyro.clear_param_store()


def test_gated_mlp_layer_is_the_gated_dense_formula():
    """--activation gated: every hidden layer is h = (W x + b) ⊙ σ(V x + c), written out here from
    its weights."""
    torch.manual_seed(0)
    net = MLP(5, [4, 3], 2, "gated", final_activation=True)
    x = torch.randn(7, 5)
    h = x
    for linear in (m for m in net if isinstance(m, torch.nn.Linear)):
        w, v = linear.weight.chunk(2, dim=0)
        b, c = linear.bias.chunk(2)
        h = (h @ w.T + b) * torch.sigmoid(h @ v.T + c)
    assert torch.allclose(net(x), h, atol=1e-6) and net(x).shape == (7, 2)
    plain = MLP(5, [4], 2, "gated")  # without a final activation the output layer stays linear
    assert isinstance(plain[-1], torch.nn.Linear) and plain[-1].out_features == 2


def test_gated_activation_is_refused_for_conv_nets_before_any_data_is_read():
    from pyro_vae.app.config import Config, check_config

    with pytest.raises(ValueError, match="--activation gated .* --net mlp"):
        check_config(Config(net="conv", activation="gated"))
