"""Semi-supervised M2, the conditional VAE and relaxed categorical latents: numbers against explicit
sums."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import TraceEnum_ELBO

from pyro_vae.app.config import Config
from pyro_vae.evaluation.pictures import prior_samples
from pyro_vae.models import build_model
from pyro_vae.models.m2 import balanced_labeled_mask
from pyro_vae.models.relaxed_categorical import RelaxedCategoricalVAE

C, B, X = 10, 5, (1, 4, 4)


def _m2(aux_weight):
    torch.manual_seed(0)
    m = build_model(
        Config(model="m2", hidden_dims=[16], latent_dim=2, aux_weight=aux_weight), X
    ).double()
    x = torch.bernoulli(torch.rand(B, *X)).double()
    return m, x


def _per_class_terms(m, x, y_each_class, seed):
    """log p(z) + log p(x|z,y) − log q(z|x,y) for z drawn per class with the RNG stream TraceEnum
    uses, [C, B]."""
    torch.manual_seed(seed)
    loc, scale = m.encoder(x, y_each_class)
    z = dist.Normal(loc, scale).rsample()
    return (
        dist.Normal(0.0, 1.0).log_prob(z).sum(-1)
        - dist.Normal(loc, scale).log_prob(z).sum(-1)
        + m.likelihood(m.decoder(z, y_each_class), x).log_prob(x).sum([-1, -2, -3])
    )


def test_m2_enumerated_loss_is_the_explicit_sum_over_classes():
    m, x = _m2(aux_weight=0.7)
    y = torch.tensor([1, 0, 3, 0, 2])
    labeled = torch.tensor([True, False, True, False, False])
    elbo = TraceEnum_ELBO(max_plate_nesting=1)
    torch.manual_seed(5)
    loss = elbo.loss(m.model, m.guide, x, y=y, labeled=labeled)
    classes = torch.arange(C).reshape(C, 1).expand(C, B)
    term = _per_class_terms(m, x, torch.where(labeled, y, classes), seed=5)
    log_q = m.classifier(x).log_softmax(-1).T  # [C, B]
    q = log_q.exp()
    log_py = -math.log(C)
    unlabeled = (q * (log_py + term - log_q)).sum(0)
    # labeled: log p(y) + α log q(y|x) + the C draws of z averaged with weights q(k|x)
    known = log_py + 0.7 * log_q.gather(0, y[None]).squeeze(0) + (q * term).sum(0)
    expected = -torch.where(labeled, known, unlabeled).sum()
    assert loss == pytest.approx(expected.item(), rel=1e-9)


def test_m2_unlabeled_loss_and_all_labeled_loss():
    m, x = _m2(aux_weight=0.0)
    elbo = TraceEnum_ELBO(max_plate_nesting=1)
    torch.manual_seed(5)
    loss = elbo.loss(m.model, m.guide, x)
    term = _per_class_terms(m, x, torch.arange(C).reshape(C, 1).expand(C, B), seed=5)
    log_q = m.classifier(x).log_softmax(-1).T
    expected = -(log_q.exp() * (-math.log(C) + term - log_q)).sum()
    assert loss == pytest.approx(expected.item(), rel=1e-9)


def test_balanced_labels():
    labels = torch.arange(100) % 10
    mask = balanced_labeled_mask(labels, 23)
    assert int(mask.sum()) == 23
    assert torch.bincount(labels[mask], minlength=10).tolist() == [3, 3, 3] + [2] * 7
    with pytest.raises(ValueError, match="labeled"):
        balanced_labeled_mask(labels, 101)


def test_cvae_conditions_on_labels_and_marginalizes_without():
    torch.manual_seed(0)
    cvae = build_model(Config(model="cvae", hidden_dims=[16], latent_dim=2), X)
    x = torch.bernoulli(torch.rand(B, *X))
    y = torch.tensor([0, 1, 2, 3, 4])
    with_y = pyro.poutine.trace(cvae.model).get_trace(x, y=y)
    assert "y" not in with_y.nodes  # labels are inputs, not sites
    without = pyro.poutine.trace(cvae.model).get_trace(x)
    assert without.nodes["y"]["fn"].probs.allclose(torch.full((C,), 0.1))
    # the decoder sees the label: class 3 and class 7 give different images from the same z
    z = torch.zeros(1, 2)
    assert not torch.allclose(
        cvae.decoder(z, torch.tensor([3])), cvae.decoder(z, torch.tensor([7]))
    )
    with pytest.raises(ValueError, match="labels y"):
        cvae.model(x, y=y.float())
    images = prior_samples(lambda x: cvae.model(x, y=torch.full((len(x),), 3)), x)
    assert images.shape == x.shape


def test_relaxed_categorical_on_simplex_and_near_one_hot_at_low_temperature():
    tops = []
    for tau in (2.0, 0.5, 0.1, 0.01):
        torch.manual_seed(0)
        vae = build_model(
            Config(
                model="relaxed-categorical",
                hidden_dims=[16],
                latent_dim=3,
                categories=4,
                temperature=tau,
                min_temperature=tau,
            ),
            X,
        )
        x = torch.bernoulli(torch.rand(2000, *X))
        z = pyro.poutine.trace(vae.guide).get_trace(x).nodes["z"]["value"]
        assert z.shape == (2000, 3, 4)
        assert (z >= 0).all() and torch.allclose(z.sum(-1), torch.ones(2000, 3), atol=1e-5)
        tops.append(z.max(-1).values.mean().item())  # 1 exactly for one-hot vectors
    # the mean largest component rises towards 1 as τ falls (uniform 1/4 would give 0.25)
    assert tops == sorted(tops) and tops[0] < 0.6 and tops[-1] > 0.98, tops


def test_relaxed_temperature_anneals_and_evaluation_is_hard():
    vae = build_model(
        Config(
            model="relaxed-categorical",
            hidden_dims=[16],
            latent_dim=3,
            categories=4,
            temperature=1.0,
            min_temperature=0.3,
            temperature_decay=0.5,
        ),
        X,
    )
    assert isinstance(vae, RelaxedCategoricalVAE)
    assert [vae.anneal(e) for e in range(4)] == [1.0, 0.5, 0.3, 0.3]
    vae.eval()
    z = pyro.poutine.trace(vae.guide).get_trace(torch.zeros(7, *X)).nodes["z"]["value"]
    assert set(z.unique().tolist()) == {0.0, 1.0} and (z.sum(-1) == 1).all()
