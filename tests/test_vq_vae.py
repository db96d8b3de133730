"""VQ-VAE as a Pyro pair (pyro_vae.models.vq_vae, pyro_vae.models.quantizer): the straight-through
gradient, the nearest code, the EMA update and the codebook gradient against their closed forms,
dead-code restarts, the honest bound ELBO = log p(x|c) − P log K, the refusals, and the CLI."""

import json
import math
import os

import pyro
import pytest
import torch
from torchvision.io import read_image

from pyro_vae import Config
from pyro_vae.app.config import check_config
from pyro_vae.core.checks import UserError
from pyro_vae.estimators import make_elbo
from pyro_vae.models import build_model
from pyro_vae.models.quantizer import VectorQuantizer, nearest, perplexity, straight_through
from pyro_vae.models.vq_vae import UniformCodes, level_sizes

DEBIAN = "/usr/share/datasets/fashion-mnist"
needs_data = pytest.mark.skipif(
    not os.path.isdir(DEBIAN), reason="needs Debian's dataset-fashion-mnist"
)
DT = torch.float64


def tiny(levels=1, **kw):
    fields = dict(
        model="vq-vae",
        levels=levels,
        likelihood="discretized-logistic",
        binarize="none",
        codebook_size=16,
        code_dim=4,
        conv_channels=4,
        mixtures=2,
    )
    return Config(**{**fields, **kw})


def grey_images(n=6, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 1, size, size), generator=g).to(DT) / 255


# -- the quantizer ---------------------------------------------------------------------------------
def test_straight_through_has_the_code_value_and_the_identity_gradient():
    z = torch.randn(3, 4, 5, 5, dtype=DT, requires_grad=True)
    code = torch.randn(3, 4, 5, 5, dtype=DT)
    w = torch.randn(3, 4, 5, 5, dtype=DT)
    z_q = straight_through(z, code)
    (grad,) = torch.autograd.grad((w * z_q).sum(), z)
    assert torch.equal(z_q.detach(), z.detach() + (code - z.detach()))
    assert torch.allclose(z_q, code, atol=1e-12) and torch.equal(grad, w)
    q = VectorQuantizer(7, 4).to(DT).eval()
    z_q, idx, _ = q.quantize(z)
    (grad,) = torch.autograd.grad((w * z_q).sum(), z)  # through the quantizer, the same identity
    assert torch.equal(grad, w) and torch.allclose(z_q, q.lookup(idx))


def test_nearest_code_against_brute_force():
    g = torch.Generator().manual_seed(1)
    flat, embedding = (
        torch.randn(200, 3, generator=g, dtype=DT),
        torch.randn(9, 3, generator=g, dtype=DT),
    )
    brute = torch.tensor(
        [min(range(9), key=lambda k: ((z - embedding[k]) ** 2).sum().item()) for z in flat]
    )
    assert torch.equal(nearest(flat, embedding), brute)
    q = VectorQuantizer(9, 3).to(DT)
    q.embedding.copy_(embedding)
    z = flat.reshape(8, 5, 5, 3).movedim(-1, 1)  # [B, D, h, w]: position (b, i, j) is row 25b+5i+j
    assert torch.equal(q.indices(z), brute.reshape(8, 5, 5))


def test_ema_update_equals_the_closed_form():
    gamma, eps = 0.9, 1e-5
    q = VectorQuantizer(3, 2, ema=True, decay=gamma, eps=eps).to(DT)
    e0 = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]], dtype=DT)
    q.embedding.copy_(e0)
    q.ema_sum.copy_(e0)  # N = 1 per code, m = e
    z = torch.tensor(
        [[1.0, 0.0], [0.0, 1.0], [9.0, 1.0], [-1.0, 0.0]], dtype=DT
    )  # codes 0, 0, 1, 0
    q.quantize(z.T.reshape(1, 2, 1, 4))
    n = torch.tensor([3.0, 1.0, 0.0], dtype=DT)
    sums = torch.tensor([[0.0, 1.0], [9.0, 1.0], [0.0, 0.0]], dtype=DT)
    N = gamma * 1 + (1 - gamma) * n
    m = gamma * e0 + (1 - gamma) * sums
    smoothed = (N + eps) / (N.sum() + 3 * eps) * N.sum()
    assert torch.allclose(q.ema_count, N) and torch.allclose(q.ema_sum, m)
    assert torch.allclose(q.embedding, m / smoothed[:, None]) and torch.equal(q.counts, n)
    before = q.embedding.clone()
    q.eval()
    q.quantize(z.T.reshape(1, 2, 1, 4))  # eval mode: no update, no counts
    assert torch.equal(q.embedding, before) and torch.equal(q.counts, n)


def test_codebook_loss_gradient_equals_the_closed_form():
    """--codebook loss: ∂/∂e_k of Σ_i ‖sg(z_i) − e_{k(i)}‖² is 2 Σ_{k(i)=k} (e_k − z_i); the
    commitment term gives β · 2 (z_i − e_{k(i)}) to z."""
    q = VectorQuantizer(5, 3, ema=False).to(DT)
    z = torch.randn(2, 3, 4, 4, dtype=DT, requires_grad=True)
    _, idx, loss = q.quantize(z, commitment=0.25)
    grad_e, grad_z = torch.autograd.grad(loss.sum(), [q.embedding, z])
    flat, idx = z.detach().movedim(1, -1).reshape(-1, 3), idx.reshape(-1)
    expected = torch.zeros(5, 3, dtype=DT).index_add_(
        0, idx, 2 * (q.embedding.detach()[idx] - flat)
    )
    assert torch.allclose(grad_e, expected)
    codes = q.lookup(idx.reshape(2, 4, 4)).detach()
    assert torch.allclose(grad_z, 0.25 * 2 * (z.detach() - codes))


def test_dead_codes_are_restarted_from_encoder_outputs_and_counted():
    q = VectorQuantizer(4, 2).to(DT)
    q.embedding.copy_(torch.tensor([[0.0, 0.0], [50.0, 0], [0, 50.0], [50.0, 50.0]], dtype=DT))
    z = 0.1 * torch.randn(3, 2, 2, 2, dtype=DT)  # every position nearest to code 0
    q.quantize(z)
    figures = q.end_epoch(z)
    assert figures == {"usage": 0.25, "perplexity": pytest.approx(1.0)}
    assert int(q.restarts) == 3 and torch.equal(q.counts, torch.zeros(4, dtype=DT))
    rows = z.movedim(1, -1).reshape(-1, 2)
    for k in (1, 2, 3):  # each restarted code is one of the encoder outputs, its EMA one use of it
        assert (rows == q.embedding[k]).all(-1).any() and q.ema_count[k] == 1
        assert torch.equal(q.ema_sum[k], q.embedding[k])
    assert q.ema_count[0].item() == pytest.approx(0.99 + 0.01 * 12)  # code 0 kept: its 12 uses
    q.end_epoch(z)  # an epoch without steps knows of no dead code
    assert int(q.restarts) == 3


def test_without_restarts_unused_codes_only_decay_and_end_epoch_leaves_them():
    """restart_dead=False: a code no step chose keeps its moving averages decayed by γ per step,
    N_k = γ^s N_k(0) and m_k = γ^s m_k(0), so e_k = m_k / Ñ_k; ``end_epoch`` reports the usage and
    perplexity, restarts nothing and changes no codebook buffer."""
    gamma, eps, steps = 0.9, 1e-5, 3
    q = VectorQuantizer(4, 2, decay=gamma, eps=eps, restart_dead=False).to(DT)
    e0 = torch.tensor([[0.0, 0.0], [50.0, 0], [0, 50.0], [50.0, 50.0]], dtype=DT)
    q.embedding.copy_(e0)
    q.ema_sum.copy_(e0)  # N = 1 per code, m = e
    z = 0.1 * torch.randn(3, 2, 2, 2, dtype=DT)  # every position nearest to code 0
    for _ in range(steps):
        q.quantize(z)
    N, m = gamma**steps * torch.ones(3, dtype=DT), gamma**steps * e0[1:]
    smoothed = (N + eps) / (q.ema_count.sum() + 4 * eps) * q.ema_count.sum()
    assert torch.allclose(q.ema_count[1:], N, rtol=1e-14, atol=0)
    assert torch.allclose(q.ema_sum[1:], m, rtol=1e-14, atol=0)
    assert torch.allclose(q.embedding[1:], m / smoothed[:, None], rtol=1e-12, atol=0)
    before = {k: b.clone() for k, b in q.named_buffers() if k != "counts"}
    figures = q.end_epoch(z)
    assert figures == {"usage": 0.25, "perplexity": pytest.approx(1.0)}
    assert int(q.restarts) == 0 and torch.equal(q.counts, torch.zeros(4, dtype=DT))
    for k, b in before.items():
        assert torch.equal(dict(q.named_buffers())[k], b), k


def test_no_code_restarts_reaches_every_level_and_counts_stay_zero():
    # 128 codes and at most 6 · 16 code positions per level: some codes must stay unused
    vae = build_model(tiny(2, code_restarts=False, codebook_size=128), (1, 8, 8)).to(DT)
    assert [q.restart_dead for q in vae.quantizers] == [False, False]
    x = grey_images()
    vae.begin_epoch(0, x)  # the codebooks still start at encoder outputs
    vae.guide(x)  # one training step's counts and EMA update
    unused = [q.counts == 0 for q in vae.quantizers]
    assert all(u.any() for u in unused)  # dead codes that a restart would have moved
    before = [q.embedding.clone() for q in vae.quantizers]
    figures = vae.end_epoch(x)
    assert figures["dead_code_restarts"] == [0, 0]
    assert figures["codebook_usage"] == [1 - u.double().mean().item() for u in unused]
    for b, q in zip(before, vae.quantizers):
        assert torch.equal(b, q.embedding)
    assert build_model(tiny(2), (1, 8, 8)).quantizers[0].restart_dead  # on by default


def test_perplexity_of_uniform_and_of_one_code():
    assert perplexity(torch.tensor([5.0, 5.0, 5.0, 5.0])).item() == pytest.approx(4.0)
    assert perplexity(torch.tensor([0.0, 7.0, 0.0])).item() == pytest.approx(1.0)


# -- the pair -------------------------------------------------------------------------------------
@pytest.mark.parametrize("levels, channels", [(1, 1), (2, 1), (2, 3)])
def test_bound_is_reconstruction_plus_positions_log_k(levels, channels):
    """−ELBO = −log p(x | c) + P log K exactly, P the code positions of every level, whatever the
    codebook and commitment terms, which enter the gradient only; grey or colour images."""
    vae = build_model(tiny(levels, commitment=3.0), (channels, 8, 8)).to(DT)
    x = grey_images().expand(-1, channels, -1, -1) ** torch.arange(1.0, channels + 1)[:, None, None]
    vae.eval()  # no EMA move between the trace and the direct computation
    loss = make_elbo("trace").differentiable_loss(vae.model, vae.guide, x)
    meanfield = make_elbo("meanfield").differentiable_loss(vae.model, vae.guide, x)
    assert meanfield.item() == pytest.approx(loss.item(), rel=1e-12)
    with torch.no_grad():
        codes = [z_q for z_q, _, _ in vae.encode(x)]
        recon = vae.likelihood(vae.nets.decode(codes), x).to_event(3).log_prob(x).sum()
    positions = sum(h * w for h, w in vae.nets.sizes)
    assert positions == (16 if levels == 1 else 20)
    assert loss.item() == pytest.approx(
        (-recon + len(x) * positions * math.log(16)).item(), rel=1e-10
    )
    log_p = UniformCodes(vae.quantizers[0].embedding, (4, 4)).expand([6]).log_prob(codes[-1])
    assert torch.allclose(log_p, torch.full((6,), -16 * math.log(16), dtype=DT))


def test_guide_factor_adds_the_commitment_gradient_to_the_encoder():
    """The guide's factor L − sg(L): the encoder's gradient of the loss is that of −log p(x|c)
    plus β Σ ‖z − sg(e)‖², nothing else (EMA codebook: no codebook term)."""
    grads = {}
    for beta in (0.0, 2.0):
        pyro.clear_param_store()
        torch.manual_seed(0)
        vae = build_model(tiny(1, commitment=beta), (1, 8, 8)).to(DT).eval()
        x = grey_images()
        loss = make_elbo("trace").differentiable_loss(vae.model, vae.guide, x)
        weight = vae.nets.bottom[1].weight
        grads[beta] = torch.autograd.grad(loss, weight)[0]
        commit = sum(level[2].sum() for level in vae.encode(x)) / beta if beta else None
    (commit_grad,) = torch.autograd.grad(commit, weight)
    assert torch.allclose(grads[2.0] - grads[0.0], 2.0 * commit_grad)


def test_level_sizes_and_the_one_line_refusals():
    assert level_sizes((28, 28), 2) == [(7, 7), (14, 14)] and level_sizes((32, 32), 1) == [(16, 16)]
    with pytest.raises(UserError, match="multiples of 4"):
        level_sizes((30, 30), 2)
    with pytest.raises(UserError, match="--image-size that is a multiple of 4"):
        check_config(tiny(2, image_size=30))
    with pytest.raises(
        UserError, match="point-mass guide.*refuses --elbo iwae; use --elbo trace or"
    ):
        check_config(tiny(elbo="iwae"))
    with pytest.raises(UserError, match="refuses --elbo stl"):
        check_config(tiny(elbo="stl"))
    check_config(tiny(elbo="meanfield"))
    with pytest.raises(UserError, match="refuses --free-bits"):
        check_config(tiny(free_bits=0.1))
    with pytest.raises(UserError, match="--beta changes nothing"):
        check_config(tiny(beta=2.0))
    with pytest.raises(UserError, match="conv nets only, not --net mlp"):
        check_config(tiny(net="mlp"))
    with pytest.raises(UserError, match="--levels must be 1 or 2"):
        check_config(tiny(3))
    with pytest.raises(UserError, match="codebook"):
        check_config(tiny(codebook="kmeans"))
    with pytest.raises(UserError, match="codebook_size"):
        tiny(codebook_size=0)


def test_codebook_size_zero_exits_2_with_one_line(tmp_path, capsys):
    from pyro_vae.app.cli import main

    with pytest.raises(SystemExit) as e:
        main(["train", "--model", "vq-vae", "--codebook-size", "0", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and "codebook" in err
    assert not (tmp_path / "r").exists()


# -- the CLI ---------------------------------------------------------------------------------------
@pytest.fixture
def data_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("PYRO_VAE_DATA", str(tmp_path_factory.getbasetemp() / "data"))


SMALL = [
    "--model",
    "vq-vae",
    "--limit",
    "256",
    "--test-limit",
    "32",
    "--epochs",
    "1",
    "--binarize",
    "none",
    "--likelihood",
    "discretized-logistic",
    "--mixtures",
    "2",
    "--conv-channels",
    "8",
    "--codebook-size",
    "64",
    "--code-dim",
    "8",
]


@needs_data
@pytest.mark.parametrize("levels, codebook", [(1, "loss"), (2, "ema")])
def test_cli_trains_evaluates_and_draws(levels, codebook, tmp_path, capsys, data_cache):
    from pyro_vae.app.cli import main

    out = tmp_path / "run"
    flags = ["--levels", str(levels), "--codebook", codebook, "--quiet", "--out", str(out)]
    main(["train", *SMALL, *flags])
    row = json.loads(open(out / "metrics.jsonl").readline())
    assert math.isfinite(row["train_loss"]) and row["fast_path"], row["fast_path_note"]
    positions = 196 + (49 if levels == 2 else 0)
    assert row["test_kl"] == pytest.approx(positions * math.log(64), rel=1e-5)
    for key in ("codebook_usage", "perplexity", "dead_code_restarts"):
        assert len(row[key]) == levels, key
    assert all(0 < u <= 1 for u in row["codebook_usage"])
    assert all(1 <= p <= 64 for p in row["perplexity"])
    for name in ("reconstructions", "interpolations", "traversals"):
        assert (out / f"{name}.png").stat().st_size > 0, name
    assert not (out / "samples.png").exists()  # uniform codes decode to noise: no samples yet
    code_maps = read_image(str(out / "code_maps.png"))  # 8 images above a row of codes per level
    assert code_maps.shape == (3, 30 * (1 + levels) + 2, 30 * 8 + 2)
    capsys.readouterr()
    main(["evaluate", str(out), "--nll-samples", "2", "--limit", "16", "--json", "--no-pictures"])
    result = json.loads(capsys.readouterr().out)
    assert len(result["codebook_usage"]) == len(result["perplexity"]) == levels
    assert result["kl"] == pytest.approx(positions * math.log(64), rel=1e-5)
    for key in ("recon_mse", "bits_per_dim", "nll", "elbo"):
        assert math.isfinite(result[key]), key
    assert result["nll"] == pytest.approx(-result["elbo"], rel=1e-5)  # a point mass: nll = −ELBO


@needs_data
def test_cli_no_code_restarts_trains_with_zero_restarts(tmp_path, data_cache):
    from pyro_vae.app.cli import main

    out = tmp_path / "run"
    main(["train", *SMALL, "--epochs", "2", "--no-code-restarts", "--quiet", "--out", str(out)])
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert json.load(open(out / "config.json"))["code_restarts"] is False
    assert [r["dead_code_restarts"] for r in rows] == [[0], [0]]
    assert any(u < 1 for r in rows for u in r["codebook_usage"])  # there were dead codes


@needs_data
def test_fast_path_matches_plain_steps_and_resume_is_exact(tmp_path, data_cache):
    """The EMA update is graph state: ``--fast trace`` gives the plain steps' losses; two epochs
    equal one epoch and a resume, buffers (codebook, EMA, counts, restarts) included."""
    from pyro_vae.app.experiment import train

    fields = dict(
        tiny(2, limit=128, test_limit=16, batch_size=64, epochs=2).to_dict(),
        pictures=False,
        tensorboard=False,
        device="cpu",
    )
    runs = {}
    for name, fast, epochs in (("off", "off", 2), ("trace", "trace", 2), ("resumed", "trace", 1)):
        config = Config(**{**fields, "fast": fast, "epochs": epochs, "out": str(tmp_path / name)})
        vae, _, history = train(config, progress=False)
        if name == "resumed":
            vae, _, history = train(
                Config(**{**config.to_dict(), "epochs": 2}), resume=True, progress=False
            )
        runs[name] = (vae, history)
    plain, traced, resumed = runs["off"][1], runs["trace"][1], runs["resumed"][1]
    assert traced[0]["fast_path"] and not plain[0]["fast_path"]
    for a, b in zip(plain, traced):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
        assert a["codebook_usage"] == pytest.approx(b["codebook_usage"], abs=0.02)
    assert [r["train_loss"] for r in resumed] == [r["train_loss"] for r in traced]
    assert resumed[-1]["dead_code_restarts"] == traced[-1]["dead_code_restarts"]
    buffers = dict(runs["trace"][0].named_buffers())
    for k, b in runs["resumed"][0].named_buffers():
        assert torch.equal(b, buffers[k]), k


# -- pictures --------------------------------------------------------------------------------------
def test_code_maps_colour_each_position_by_its_code(tmp_path):
    """Each position of a level is a block of its code's colour (palette[k], distinct for
    distinct k) under the image it encodes; 8-bit PNG rounding only."""
    from pyro_vae.evaluation.code_maps import palette, save_code_maps

    colours = palette(512)
    assert torch.allclose(colours[0], torch.tensor([1.0, 0.0, 0.0]))  # hue 0: red
    assert len(torch.unique((colours * 255).round(), dim=0)) > 200  # neighbours differ
    vae = build_model(tiny(2), (1, 8, 8)).to(DT)
    x = grey_images(3)
    top, bottom = vae.code_indices(x)
    assert top.shape == (3, 2, 2) and bottom.shape == (3, 4, 4)
    path = save_code_maps(x, [top, bottom], [16, 16], str(tmp_path / "code_maps.png"))
    picture = read_image(path).movedim(0, -1) / 255  # [2 + 3·10, 2 + 3·10, 3]
    assert picture.shape == (32, 32, 3)
    for row, (idx, block) in enumerate(((top, 4), (bottom, 2)), 1):
        for b, i, j in ((0, 0, 0), (2, idx.shape[1] - 1, 0), (1, 1, 1)):
            y0, x0 = 2 + 10 * row + block * i, 2 + 10 * b + block * j
            pixels = picture[y0 : y0 + block, x0 : x0 + block].reshape(-1, 3)
            expected = palette(16)[idx[b, i, j]]
            assert torch.allclose(pixels, expected.expand_as(pixels), atol=1 / 255), (row, b)
    assert torch.allclose(picture[2:10, 2:10, 0], x[0, 0].float(), atol=1 / 255)  # the image


def test_training_pictures_leave_out_uniform_prior_samples():
    """TensorBoard's grids for vq-vae: reconstructions only (samples come from a fitted prior)."""
    from pyro_vae.models import MODELS
    from pyro_vae.training.tensorboard import picture_grids

    vae = build_model(tiny(1), (1, 8, 8)).to(DT).eval()
    samples = MODELS["vq-vae"].prior_samples
    grids = picture_grids(vae.model, vae.guide, grey_images(8), n=8, samples=samples)
    assert list(grids) == ["reconstructions"] and grids["reconstructions"].shape == (16, 1, 8, 8)


# -- the learned prior over the codes (fit-prior) -------------------------------------------------
def test_pixelcnn_logits_at_a_position_read_only_the_codes_before_it():
    """Raster-order causality: changing the code at position p leaves the logits at p and before
    it unchanged (and changes some after it)."""
    from pyro_vae.models.code_prior import GatedPixelCNN

    net = GatedPixelCNN(5, (4, 5), channels=8, layers=3).to(DT)
    codes = torch.randint(0, 5, (2, 4, 5))
    base = net(codes).detach()
    for p in range(20):
        changed = codes.clone()
        changed.view(2, -1)[:, p] = (changed.view(2, -1)[:, p] + 1) % 5
        diff = (net(changed).detach() - base).abs().reshape(2, 20, 5).amax((0, 2))
        assert (diff[: p + 1] == 0).all(), p
        assert p == 19 or diff[p + 1 :].max() > 0, p


def test_prior_sites_and_conditioning_of_two_levels():
    """log p(c) = Σ log softmax of the PixelCNNs' logits at the observed codes; the bottom reads
    the top codes, the top does not read the bottom."""
    from pyro import poutine

    from pyro_vae.models.code_prior import CodePrior

    vae = build_model(tiny(2), (1, 8, 8)).to(DT)
    prior = CodePrior(vae, channels=8, layers=2).to(DT)
    x = grey_images()
    trace = poutine.trace(prior.model).get_trace(x)
    codes = prior.codes(x)
    expected = sum(
        torch.log_softmax(prior.logits(level, codes), -1).gather(-1, codes[level][..., None]).sum()
        for level in (0, 1)
    )
    assert trace.log_prob_sum().item() == pytest.approx(expected.item(), rel=1e-12)
    assert list(prior.sites) == ["codes_top", "codes_bottom"]
    for rows in (1, 3):  # the first rows alone give their own logits (what sampling uses)
        assert torch.allclose(prior.logits(1, codes, rows), prior.logits(1, codes)[:, :rows])
    other = [codes[0], (codes[1] + 1) % 16]
    assert torch.equal(prior.logits(0, other), prior.logits(0, codes))
    other = [(codes[0] + 1) % 16, codes[1]]
    assert not torch.equal(prior.logits(1, other), prior.logits(1, codes))


def test_prior_samples_follow_the_conditionals():
    """With a head that ignores its input (zero weights, bias log π), every position draws π."""
    from pyro_vae.models.code_prior import CodePrior

    vae = build_model(tiny(1, codebook_size=4), (1, 4, 4)).to(DT)
    prior = CodePrior(vae, channels=4, layers=1).to(DT)
    pi = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=DT)
    with torch.no_grad():
        prior.pixelcnns[0].head[1].weight.zero_()
        prior.pixelcnns[0].head[1].bias.copy_(pi.log())
    (codes,) = prior.sample(4000)
    freq = torch.bincount(codes.reshape(-1), minlength=4).to(DT) / codes.numel()
    assert torch.allclose(freq, pi, atol=0.02)  # 16 000 draws: standard error < 0.004


@needs_data
def test_fit_prior_resumes_exactly_then_samples_and_evaluates(tmp_path, capsys, data_cache):
    import shutil

    from pyro_vae.app.cli import main

    run = tmp_path / "run"
    quick = ["--limit", "64", "--batch-size", "64", "--fast", "off", "--no-pictures"]
    main(
        ["train", *SMALL, "--levels", "2", *quick, "--no-tensorboard", "--quiet", "--out", str(run)]
    )
    with pytest.raises(SystemExit) as e:  # before fit-prior: one line says what to run
        main(["sample", str(run)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and f"pyro-vae fit-prior {run}" in err
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    small = ["--channels", "8", "--layers", "2", "--quiet"]
    main(["fit-prior", str(run), "--epochs", "2", *small])
    main(["fit-prior", str(copy), "--epochs", "1", *small])
    main(["fit-prior", str(copy), "--epochs", "2", "--resume", "--quiet"])
    with pytest.raises(SystemExit) as e:  # a resume keeps the saved options
        main(["fit-prior", str(copy), "--epochs", "3", "--resume", "--channels", "16"])
    assert e.value.code == 2 and "options differ" in capsys.readouterr().err
    rows = [[json.loads(line) for line in open(d / "prior" / "metrics.jsonl")] for d in (run, copy)]
    assert [r["train_loss"] for r in rows[0]] == [r["train_loss"] for r in rows[1]]
    assert len(rows[0]) == 2 and all(math.isfinite(r["test_elbo"]) for r in rows[0])
    capsys.readouterr()
    main(["sample", str(run), "--n", "4"])
    assert (run / "samples.png").stat().st_size > 0
    main(["evaluate", str(run), "--nll-samples", "0", "--limit", "16", "--json"])  # pictures too
    result = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert result["prior_bits_per_dim"] == pytest.approx(
        -result["prior_elbo"] / (784 * math.log(2))
    )
    assert result["prior_elbo"] - result["recon"] < 0  # log p_prior(c) of a normalized prior


def test_first_epoch_sets_every_code_to_an_encoder_output_and_forgets_earlier_counts():
    vae = build_model(tiny(2), (1, 8, 8)).to(DT)
    x = grey_images()
    vae.guide(x)  # a call before training (the trainer's probe) counts codes
    assert all(q.counts.sum() > 0 for q in vae.quantizers)
    vae.begin_epoch(0, x)
    outputs = vae.encoder_outputs(x)
    for q, z in zip(vae.quantizers, outputs):
        rows = z.movedim(1, -1).reshape(-1, 4)
        assert (q.embedding[:, None, :] == rows[None]).all(-1).any(-1).all()
        assert q.counts.sum() == 0 and int(q.restarts) == 0
    before = [q.embedding.clone() for q in vae.quantizers]
    vae.begin_epoch(1, x)  # later epochs: nothing
    assert all(torch.equal(b, q.embedding) for b, q in zip(before, vae.quantizers))
