"""VQ-VAE and VQ-VAE-2 as a Pyro pair: the guide is a point mass on the quantized feature maps, the
model a uniform prior over the codes at every position and a conv decoder.

.. math:: q(c | x) = δ(c − Q(E(x))), \\qquad p(c) = \\prod_{\\text{positions}} \\tfrac{1}{K},
          \\qquad \\mathrm{ELBO}(x) = \\log p(x | c) − P \\log K,

with Q the nearest-code quantizer of :mod:`pyro_vae.models.quantizer` and P the number of code
positions over all levels (a point mass on one of K codes has KL = log K to the uniform prior at
each position). The reported bound is that honest one: the loss is reconstruction + P log K. The
codebook and commitment terms L(x) enter the loss as the guide factor ``"vq_loss"`` of value
L − sg(L): zero, so the ELBO that every estimator and the evaluator report is unchanged, with the
gradient of L, so ``--elbo trace`` minimises it (Pyro subtracts a guide factor from the ELBO).

Sites, inside the ``"data"`` plate: ``"codes"`` for one level; ``"codes_top"`` then
``"codes_bottom"`` for two, each ``Delta(z_q).to_event(3)`` of shape ``[D, h, w]`` in the guide and
:class:`UniformCodes` in the model; ``"x"``. Levels (VQ-VAE-2, Razavi et al. 2019): the bottom codes
at H/2 × W/2, the top codes at H/4 × W/4 (7×7 and 14×14 for 28×28 images); the bottom encoder reads
the top's quantized codes, and the decoder reads both.

Estimators: ``trace`` and ``meanfield`` (the same loss here: no closed-form KL between a point mass
and :class:`UniformCodes`, so it takes log p − log q at the code map). A point mass makes every
particle the same code map, so the bounds per data point (iwae, dreg, renyi) equal the ELBO and
leave the guide's factor out of their loss; STL replays the guide, which would move an EMA codebook
twice a step; free bits have no KL to shape.

Codebook upkeep between epochs (:meth:`VQVAE.begin_epoch`, :meth:`VQVAE.end_epoch`): before the
first epoch every code is set to an encoder output; after each, the codes no step chose are
restarted from encoder outputs, counted per level (with ``--no-code-restarts`` they are left as
they are and the counts stay 0), and the epoch's usage and perplexity per level join its metrics
row. ``pyro-vae train`` calls them through the listener
:class:`~pyro_vae.training.model_epochs.ModelEpochs`; a Python run adds ``ModelEpochs(vae)`` to the
trainer's listeners. Samples need a learned prior over the codes: :mod:`.code_prior`.
"""

import contextlib

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import TorchDistribution, constraints
from torch import nn

from pyro_vae.core.checks import UserError, check_choice
from pyro_vae.core.plates import data_plate
from pyro_vae.models.nets import ResBlock, Upsample, activation, apply_conv, he_init
from pyro_vae.models.quantizer import VectorQuantizer, channels_first, ranks
from pyro_vae.models.spec import ModelSpec

LEVELS = (1, 2)
CODEBOOKS = ("ema", "loss")


class UniformCodes(TorchDistribution):
    """The training prior of one level's code map ``[D, h, w]``: each position one of the K codes
    ``embedding [K, D]``, uniformly, so log p(c) = −h w log K for every code map c. Values are not
    checked against the codebook (a straight-through code is the code only up to rounding)."""

    arg_constraints = {}
    support = constraints.independent(constraints.real, 3)

    def __init__(self, embedding, size, batch_shape=torch.Size(), validate_args=False):
        self.embedding, self.size = embedding, tuple(size)
        event_shape = torch.Size((embedding.shape[-1], *self.size))
        super().__init__(torch.Size(batch_shape), event_shape, validate_args=False)

    def expand(self, batch_shape, _instance=None):
        return UniformCodes(self.embedding, self.size, batch_shape)

    def sample(self, sample_shape=torch.Size()):
        shape = torch.Size(sample_shape) + self.batch_shape + self.size
        idx = torch.randint(len(self.embedding), shape, device=self.embedding.device)
        return channels_first(self.embedding.detach()[idx])

    def log_prob(self, value):
        positions = self.size[0] * self.size[1]
        log_k = torch.log(value.new_tensor(float(len(self.embedding))))
        batch = torch.broadcast_shapes(value.shape[: value.dim() - 3], self.batch_shape)
        return (-positions * log_k).expand(batch)


def level_sizes(image_size, levels):
    """Code-map sizes, top first: ``[(H/4, W/4), (H/2, W/2)]`` for two levels, ``[(H/2, W/2)]`` for
    one (one :class:`UserError` line when H or W does not divide)."""
    h, w = (int(s) for s in image_size)
    k = 2**levels
    if h % k or w % k:
        raise UserError(
            f"--model vq-vae --levels {levels} halves {h}×{w} images {levels} times, so H and W "
            f"must be multiples of {k}; pass an --image-size that is a multiple of {k} or fewer "
            "--levels"
        )
    return [(h // 2**s, w // 2**s) for s in range(levels, 0, -1)]


def _conv(c_in, c_out, kernel=3, stride=1):
    return he_init(nn.Conv2d(c_in, c_out, kernel, stride, (kernel - 1) // 2 if stride == 1 else 1))


class VQNets(nn.Module):
    """The conv nets of a VQ-VAE with one or two levels, on the residual pieces of
    :mod:`pyro_vae.models.nets`.

    ``encode(x)``: x → ``stem`` (3×3 conv, residual blocks, stride-2 conv, blocks) → h at H/2;
    two levels: h → ``top`` (stride-2 conv, blocks, 1×1 conv) → z_top at H/4, and the top's
    quantized codes → ``top_up`` → features at H/2 that the bottom's 1×1 conv reads beside h.
    ``decode(codes)``: the bottom codes (and the top's, upsampled) → 3×3 conv, blocks, upsampling to
    H, blocks, 3×3 conv to the likelihood's ``out_channels``.
    """

    def __init__(
        self,
        in_channels,
        out_channels,
        image_size,
        levels=1,
        width=32,
        blocks=1,
        code_dim=64,
        activation_name="relu",
    ):
        super().__init__()
        self.sizes = level_sizes(image_size, levels)
        act = lambda: activation(activation_name)  # noqa: E731

        def res():
            return [ResBlock(width, activation_name, out_scale=0.0) for _ in range(blocks)]

        self.stem = nn.Sequential(
            _conv(in_channels, width), *res(), act(), _conv(width, width, 4, 2), *res()
        )
        self.bottom = nn.Sequential(act(), _conv(levels * width, code_dim, 1))
        self.decoder = nn.Sequential(
            _conv(levels * code_dim, width),
            *res(),
            act(),
            Upsample(width, width, image_size),
            *res(),
            act(),
            _conv(width, out_channels),
        )
        if levels == 2:
            self.top = nn.Sequential(
                act(), _conv(width, width, 4, 2), *res(), act(), _conv(width, code_dim, 1)
            )
            self.top_up = nn.Sequential(
                _conv(code_dim, width), *res(), act(), Upsample(width, width, self.sizes[1])
            )
            self.decoder_up = Upsample(code_dim, code_dim, self.sizes[1])
        self.levels = levels

    def encode(self, x, quantize):
        """``[quantize(level, z) for each level]``, top first, for images ``x [B, C, H, W]`` in
        [0, 1]; ``quantize(level, z) -> z_q`` (the bottom encoder reads the top's z_q)."""
        h = self.stem(2 * x - 1)
        out = []
        if self.levels == 2:
            out.append(quantize(0, self.top(h)))
            h = torch.cat([h, self.top_up(out[0][0])], dim=-3)
        out.append(quantize(self.levels - 1, self.bottom(h)))
        return out

    def decode(self, codes):
        """The likelihood's parameters ``[..., out_channels, H, W]`` from the code maps, top
        first."""
        bottom = codes[-1]
        if self.levels == 2:
            top = apply_conv(self.decoder_up, codes[0])
            bottom = torch.cat([bottom, top.expand(*bottom.shape[:-3], *top.shape[-3:])], dim=-3)
        return apply_conv(self.decoder, bottom)


@contextlib.contextmanager
def _frozen(module):
    """``module`` in eval mode (no codebook update, no counts) without gradients inside the
    block; its mode restored after."""
    mode = module.training
    module.train(False)
    try:
        with torch.no_grad():
            yield
    finally:
        module.train(mode)


class VQVAE(nn.Module):
    """A container of ``model(x)`` and ``guide(x)`` (see the module docstring).

    :param nets: a :class:`VQNets`.
    :param quantizers: one :class:`~pyro_vae.models.quantizer.VectorQuantizer` per level, top first.
    :param likelihood: module ``(out, x) -> distribution`` (:mod:`pyro_vae.models.likelihoods`).
    :param commitment: β, the weight of Σ ‖z − sg(e)‖² per image.
    :param num_data: full training-set size for the data plate's scale (None: no scaling).
    """

    def __init__(self, nets, quantizers, likelihood, x_shape, commitment=0.25, num_data=None):
        super().__init__()
        self.nets, self.quantizers = nets, nn.ModuleList(quantizers)
        self.likelihood, self.x_shape = likelihood, tuple(x_shape)
        self.commitment, self.num_data = commitment, num_data
        self.sites = ["codes"] if len(quantizers) == 1 else ["codes_top", "codes_bottom"]

    @property
    def jit_compatible(self):
        """False under torchrun with an EMA codebook: its step all-reduces the codebook's
        statistics, a collective that the fast path's captured step cannot hold."""
        return ranks() == 1 or not any(q.ema for q in self.quantizers)

    def _register(self):
        pyro.module("vq_nets", self.nets)
        pyro.module("codebooks", self.quantizers)  # parameters with --codebook loss, else none
        if any(p.requires_grad for p in self.likelihood.parameters()):
            pyro.module("likelihood", self.likelihood)

    def model(self, x):
        """p(c) p(x | c): uniform codes at every position of every level, then the decoder."""
        self._register()
        with data_plate(x, self.num_data):
            codes = [
                pyro.sample(site, UniformCodes(q.embedding, size))
                for site, q, size in zip(self.sites, self.quantizers, self.nets.sizes)
            ]
            out = self.nets.decode(codes)
            pyro.sample("x", self.likelihood(out, x).to_event(len(self.x_shape)), obs=x)
        return out

    def encode(self, x):
        """``[(z_q, indices, loss per image)]`` per level, top first (see
        :meth:`~pyro_vae.models.quantizer.VectorQuantizer.quantize`)."""
        return self.nets.encode(
            x, lambda level, z: self.quantizers[level].quantize(z, self.commitment)
        )

    def guide(self, x):
        """δ(c − Q(E(x))) per level, top first, and the factor of value 0 and gradient of the
        codebook and commitment terms."""
        self._register()
        with data_plate(x, self.num_data):
            levels = self.encode(x)
            for site, (z_q, _, _) in zip(self.sites, levels):
                pyro.sample(site, dist.Delta(z_q).to_event(3))
            loss = sum(level[2] for level in levels)
            pyro.factor("vq_loss", loss - loss.detach(), has_rsample=True)
        return [z_q for z_q, _, _ in levels]

    def encoder_outputs(self, x):
        """The encoder's maps ``z`` before quantization, per level (top first), without updates."""
        found = []

        def keep(level, z):
            found.append(z)
            return self.quantizers[level].quantize(z, self.commitment)

        with _frozen(self):
            self.nets.encode(x, keep)
        return found

    def begin_epoch(self, epoch, x):
        """Before the first epoch (``epoch`` 0), set every code of each level to an encoder output
        on images ``x``, top level first (the bottom's outputs read the top's new codes), and
        forget the counts of calls before training (the trainer's probe)."""
        if epoch != 0:
            return
        for level, q in enumerate(self.quantizers):
            z = self.encoder_outputs(x)[level]
            with torch.no_grad():
                q.restart(torch.ones(q.num_codes, dtype=torch.bool, device=z.device), z)
                q.counts.zero_()

    def end_epoch(self, x):
        """The epoch's ``codebook_usage`` and ``perplexity`` per level (top first), then the dead
        codes restarted from encoder outputs on ``x``: ``dead_code_restarts`` per level so far."""
        zs = self.encoder_outputs(x)
        figures = [q.end_epoch(z) for q, z in zip(self.quantizers, zs)]
        return {
            "codebook_usage": [f["usage"] for f in figures],
            "perplexity": [f["perplexity"] for f in figures],
            "dead_code_restarts": [int(q.restarts) for q in self.quantizers],
        }

    def code_indices(self, x, batch_size=1000):
        """The code index of every position of images ``x``, per level (top first): ``[N, h, w]``
        each, without updates."""
        indices = [[] for _ in self.quantizers]
        with _frozen(self):
            for start in range(0, len(x), batch_size):
                for level, (_, idx, _) in enumerate(self.encode(x[start : start + batch_size])):
                    indices[level].append(idx)
        return [torch.cat(i) for i in indices]

    def codebook_figures(self, x, batch_size=1000):
        """``codebook_usage`` and ``perplexity`` per level (top first) of the codes of images
        ``x``."""
        indices = self.code_indices(x, batch_size)
        figures = [q.figures(i) for q, i in zip(self.quantizers, indices)]
        return {
            "codebook_usage": [f["usage"] for f in figures],
            "perplexity": [f["perplexity"] for f in figures],
        }


def build_vq_vae(config, x_shape, num_data=None):
    """Build a :class:`VQVAE` from a config: ``levels``, ``codebook_size``, ``code_dim``,
    ``commitment``, ``codebook``, ``ema_decay``, ``code_restarts``, the conv nets'
    ``conv_channels``, ``conv_blocks`` and ``activation``, and the likelihood."""
    from pyro_vae.models.likelihoods import make_likelihood

    check_vq_vae(config)
    if len(x_shape) != 3:
        raise UserError(
            f"--model vq-vae needs images [C, H, W], got data points of shape {tuple(x_shape)}"
        )
    likelihood = make_likelihood(config.likelihood, x_shape, config.sigma, config.mixtures)
    nets = VQNets(
        x_shape[0],
        likelihood.params_shape(x_shape)[0],
        x_shape[1:],
        config.levels,
        config.conv_channels,
        config.conv_blocks,
        config.code_dim,
        config.activation,
    )
    quantizers = [
        VectorQuantizer(
            config.codebook_size,
            config.code_dim,
            config.codebook == "ema",
            config.ema_decay,
            restart_dead=config.code_restarts,
        )
        for _ in range(config.levels)
    ]
    return VQVAE(nets, quantizers, likelihood, x_shape, config.commitment, num_data)


def check_vq_vae(config):
    """The one-line refusals of ``--model vq-vae``, before any data is read."""
    if config.levels not in LEVELS:
        raise UserError(f"--levels must be 1 or 2 for --model vq-vae, got {config.levels!r}")
    check_choice("codebook", config.codebook, CODEBOOKS, "codebook")
    if config.beta != 1 or config.kl_warmup_epochs:
        flag = "--beta" if config.beta != 1 else "--kl-warmup-epochs"
        raise UserError(
            f"--model vq-vae's KL is the constant positions·log K, so {flag} changes nothing; "
            f"drop {flag}"
        )
    if config.image_size is not None:
        level_sizes((config.image_size, config.image_size), config.levels)


SPEC = ModelSpec(
    build=build_vq_vae,
    guides=("quantized",),
    nets=("conv",),
    estimators=("trace", "meanfield"),
    estimators_why=(
        "has a point-mass guide (every particle is the same code map) with its codebook and "
        "commitment terms as a guide factor, which only the ELBOs trace and meanfield train as "
        "written"
    ),
    check=check_vq_vae,
    prior_samples=False,  # uniform codes decode to noise: samples come from the fitted prior
)

__all__ = [
    "SPEC",
    "UniformCodes",
    "VQNets",
    "VQVAE",
    "build_vq_vae",
    "check_vq_vae",
    "level_sizes",
]
