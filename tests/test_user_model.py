"""A model defined the way a user would: one module with its pair, builder and ModelSpec, registered
with one line in pyro_vae.models.MODELS, then trained through the normal entry point."""

import json
import math
import os
import types

import pytest

from pyro_vae.app.config import Config, check_config
from pyro_vae.app.experiment import train
from pyro_vae.models import MODELS, ModelSpec

DEBIAN = "/usr/share/datasets/fashion-mnist"

USER_MODULE = '''
import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pyro_vae.models import ModelSpec


class TinyVAE(nn.Module):
    """p(z) p(x | z) with a linear decoder; q(z | x) diagonal Gaussian from a linear encoder."""

    def __init__(self, x_shape, latent_dim):
        super().__init__()
        self.x_shape, self.latent_dim = tuple(x_shape), latent_dim
        size = 1
        for s in x_shape:
            size *= s
        self.decoder = nn.Linear(latent_dim, size)
        self.encoder = nn.Linear(size, 2 * latent_dim)

    def model(self, x):
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(self.latent_dim), 1.0).to_event(1))
            logits = self.decoder(z).reshape(x.shape)
            pyro.sample("x", dist.Bernoulli(logits=logits).to_event(len(self.x_shape)), obs=x)

    def guide(self, x):
        pyro.module("encoder", self.encoder)
        loc, log_scale = self.encoder(x.reshape(x.shape[0], -1)).chunk(2, -1)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))


def build(config, x_shape, num_data=None):
    return TinyVAE(x_shape, config.latent_dim)


def check(config):
    if config.latent_dim > 64:
        raise ValueError("the tiny model takes --latent-dims up to 64")


SPEC = ModelSpec(build=build, guides=("diagonal",), nets=("mlp",), check=check)
'''


@pytest.fixture
def tiny_model(monkeypatch):
    module = types.ModuleType("tiny_vae")
    exec(USER_MODULE, module.__dict__)
    monkeypatch.setitem(MODELS, "tiny", module.SPEC)  # the one line: MODELS["tiny"] = tiny_vae.SPEC
    return module


def test_a_user_model_is_checked_by_its_own_declaration(tiny_model):
    assert isinstance(tiny_model.SPEC, ModelSpec)
    with pytest.raises(ValueError, match="--model tiny has mlp nets only"):
        check_config(Config(model="tiny", net="conv"))
    with pytest.raises(ValueError, match="unknown guide 'iaf' for --model tiny"):
        check_config(Config(model="tiny", guide="iaf", flows=1))
    with pytest.raises(ValueError, match="up to 64"):
        check_config(Config(model="tiny", latent_dim=65))


@pytest.mark.skipif(not os.path.isdir(DEBIAN), reason="needs Debian's dataset-fashion-mnist")
def test_a_user_model_trains_through_the_normal_entry_point(tiny_model, tmp_path):
    config = Config(
        model="tiny",
        out=str(tmp_path / "run"),
        limit=128,
        test_limit=64,
        epochs=1,
        batch_size=64,
        latent_dim=2,
        device="cpu",
    )
    vae, _, _ = train(config, progress=False)
    assert isinstance(vae, tiny_model.TinyVAE)
    rows = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert len(rows) == 1 and math.isfinite(rows[0]["train_loss"])
