"""VAE with relaxed categorical latents (Jang, Gu, Poole 2017, "Categorical Reparameterization with
Gumbel-Softmax"; Maddison, Mnih, Teh 2017, "The Concrete Distribution").

.. math:: p(z) = \\prod_{m=1}^M \\mathrm{RelaxedOneHotCat}(z_m; \\tau, 1/C), \\qquad q(z|x) =
    \\prod_m \\mathrm{RelaxedOneHotCat}(z_m; \\tau, \\pi_m(x)), \\qquad p(x | \\mathrm{decoder}(z))

The latent site ``"z"`` has event shape ``[M, C]`` (M = ``latent_dim`` categorical
variables of C = ``categories`` classes); each row lies on the simplex and tends to a
one-hot vector as the temperature τ → 0.  The loss is the relaxed ELBO (Monte Carlo
log q − log p of the two Concrete densities at the same τ).  τ is a buffer annealed after
each epoch, τ ← max(τ_min, τ_0 · decay^epoch) (Jang et al.'s exponential schedule), and is
saved in checkpoints.

Evaluation uses hard categories: in eval mode (``module.eval()``, as the trainer's test
ELBO and ``pyro-vae evaluate`` do) prior and guide are ``OneHotCategorical`` with the same
probabilities, so the ELBO and log p(x) are those of the discrete model.  Guide logits are
log-probabilities clamped at −20 so that relaxed samples never underflow to an exact 0.
"""

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pyro_vae.core.plates import data_plate
from pyro_vae.models.spec import ModelSpec
from pyro_vae.core.checks import UserError, option

MIN_LOGIT = -20.0


class RelaxedCategoricalVAE(nn.Module):
    """VAE with M relaxed categorical latents of C classes; see the module docstring.

    :param encoder: net ``x -> logits [..., M, C]``.
    :param decoder: net ``[..., M, C] -> [..., *x_shape]``.
    """

    def __init__(
        self,
        encoder,
        decoder,
        likelihood,
        num_vars,
        categories,
        x_shape,
        num_data=None,
        temperature=1.0,
        min_temperature=0.5,
        temperature_decay=1.0,
    ):
        super().__init__()
        if num_vars < 1 or categories < 2:
            raise UserError(
                f"need at least one categorical latent of >= 2 classes, got {num_vars} × "
                f"{categories}"
            )
        if not 0 < min_temperature <= temperature:
            raise UserError(
                f"need 0 < {option('min_temperature')} <= {option('temperature')}, got "
                f"{min_temperature} and {temperature}"
            )
        self.encoder, self.decoder, self.likelihood = encoder, decoder, likelihood
        self.num_vars, self.categories, self.x_shape, self.num_data = (
            num_vars,
            categories,
            tuple(x_shape),
            num_data,
        )
        self.initial_temperature, self.min_temperature, self.temperature_decay = (
            temperature,
            min_temperature,
            temperature_decay,
        )
        self.register_buffer("temperature", torch.tensor(float(temperature)))

    def anneal(self, epoch):
        """Set τ = max(τ_min, τ_0 · decay^epoch) for training after ``epoch`` completed epochs;
        return it."""
        tau = max(self.min_temperature, self.initial_temperature * self.temperature_decay**epoch)
        self.temperature.fill_(tau)
        return tau

    on_epoch = anneal

    def latent(self, logits):
        """Relaxed one-hot distribution at the current τ in training mode, hard one-hot in eval
        mode."""
        if self.training:
            return dist.RelaxedOneHotCategorical(
                self.temperature.to(logits), logits=logits
            ).to_event(1)
        return dist.OneHotCategorical(logits=logits).to_event(1)

    def model(self, x):
        """p(z) p(x | z) with p(z_m) uniform over the C classes."""
        pyro.module("relaxed_vae", self)
        with data_plate(x, self.num_data):
            z = pyro.sample("z", self.latent(x.new_zeros(self.num_vars, self.categories)))
            out = self.decoder(z)
            pyro.sample("x", self.likelihood(out, x).to_event(len(self.x_shape)), obs=x)
        return out

    def guide(self, x):
        """q(z | x) with logits = max(log_softmax(encoder(x)), −20)."""
        pyro.module("relaxed_vae", self)
        with data_plate(x, self.num_data):
            logits = self.encoder(x).log_softmax(-1).clamp(min=MIN_LOGIT)
            return pyro.sample("z", self.latent(logits))


def build_relaxed_categorical(config, x_shape, num_data=None):
    """``config.latent_dim`` relaxed categorical latents of ``config.categories`` classes with MLP
    or conv nets."""
    from pyro_vae.models.builders import make_decoder, make_encoder
    from pyro_vae.models.likelihoods import make_likelihood
    from pyro_vae.models.nets import MLP

    m, c = config.latent_dim, config.categories
    hidden = config.hidden_dims[-1]
    encoder = nn.Sequential(
        make_encoder(config, x_shape, hidden), MLP(hidden, [], (m, c), config.activation)
    )
    likelihood = make_likelihood(config.likelihood, x_shape, config.sigma, config.mixtures)
    if config.net == "mlp":
        decoder = MLP(
            (m, c),
            list(reversed(config.hidden_dims)),
            likelihood.params_shape(x_shape),
            config.activation,
        )
    else:
        decoder = nn.Sequential(nn.Flatten(-2), make_decoder(config, x_shape, m * c))
    return RelaxedCategoricalVAE(
        encoder,
        decoder,
        likelihood,
        m,
        c,
        x_shape,
        num_data,
        config.temperature,
        config.min_temperature,
        config.temperature_decay,
    )


# its own guide: factorized (relaxed) categoricals q(z_m | x)
SPEC = ModelSpec(build=build_relaxed_categorical, guides=("categorical",))
