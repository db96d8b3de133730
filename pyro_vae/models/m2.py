"""Semi-supervised VAE "M2" (Kingma, Rezende, Mohamed, Welling 2014, "Semi-Supervised Learning with
Deep Generative Models", arXiv:1406.5298).

.. math:: p(x, y, z) = \\mathrm{Cat}(y; 1/C)\\, N(z; 0, I)\\, p(x | \\mathrm{decoder}(z, y)),
    \\qquad q(y, z | x) = \\mathrm{Cat}(y; \\pi(x))\\, N(z; \\mu(x, y), \\mathrm{diag}\\,\\sigma(x,
    y)^2)

Sites (all in the ``"data"`` plate): ``"y"`` the class, ``"z"`` the Gaussian latent, ``"x"``
the image.  ``model(x, y=None, labeled=None)``:

* ``y=None``: every label unknown; y is latent (the guide's site carries
  ``infer={"enumerate": "parallel"}``, so ``make_elbo("enum")`` sums over the C classes
  exactly and the other estimators sample it);
* ``y`` given, ``labeled=None``: every label known; ``"y"`` is observed;
* ``y`` and a boolean ``labeled`` mask: a mixed batch.  ``"y"`` is latent and masked to the
  unlabeled points (enumerated there), ``"y_known"`` is observed and masked to the labeled
  points, and the model adds the auxiliary classification term
  ``α · log q(y|x)`` on labeled points (site ``"y_aux"``, a ``pyro.factor``), Kingma et al.'s
  J^α with α per labeled image = ``aux_weight`` (default 0.1·N/N_labeled, their α = 0.1·N).

With ``make_elbo("enum")`` a mixed batch's enumerated guide site has batch shape
``[C, B]`` on labeled points too (their y is the known one whatever the enumerated value):
TraceEnum_ELBO then averages the C draws of z of a labeled point with the weights q(k|x),
an unbiased estimate of the same expectation; those weights are detached so that labeled
points train the classifier only through the auxiliary term.

Evaluation calls the pair without labels and so measures the marginal log p(x) bound.
"""

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pyro_vae.core.plates import data_plate
from pyro_vae.models.cvae import NUM_CLASSES, LabelDecoder, LabelEncoder, check_labels
from pyro_vae.models.nets import MLP
from pyro_vae.models.spec import ModelSpec
from pyro_vae.core.checks import UserError, option


def balanced_labeled_mask(labels, n, num_classes=NUM_CLASSES):
    """Boolean mask selecting ``n`` points with the first ``n // C`` (+1 for the first ``n % C``
    classes) of each class."""
    if not 0 <= n <= len(labels):
        raise UserError(
            f"{option('labeled')} must be between 0 and the {len(labels)} training images, got {n}"
        )
    mask = torch.zeros(len(labels), dtype=torch.bool, device=labels.device)
    for c in range(num_classes):
        want = n // num_classes + (1 if c < n % num_classes else 0)
        idx = (labels == c).nonzero().flatten()[:want]
        mask[idx] = True
    short = n - int(mask.sum())
    if short:
        mask[(~mask).nonzero().flatten()[:short]] = (
            True  # a class had too few images: fill with any others
        )
    return mask


class M2(nn.Module):
    """The M2 model; see the module docstring.

    :param classifier: net ``x -> logits [..., C]`` of q(y|x).
    :param encoder: :class:`~pyro_vae.models.cvae.LabelEncoder` of q(z|x, y).
    :param decoder: :class:`~pyro_vae.models.cvae.LabelDecoder` of p(x|z, y).
    :param float aux_weight: α per labeled image (None: 0.1·N/N_labeled, set by
        :meth:`batch_kwargs`).
    :param int labeled: number of labeled training images used by :meth:`batch_kwargs`.
    """

    def __init__(
        self,
        classifier,
        encoder,
        decoder,
        likelihood,
        latent_dim,
        x_shape,
        num_classes=NUM_CLASSES,
        num_data=None,
        aux_weight=None,
        labeled=1000,
    ):
        super().__init__()
        self.classifier, self.encoder, self.decoder, self.likelihood = (
            classifier,
            encoder,
            decoder,
            likelihood,
        )
        self.latent_dim, self.x_shape, self.num_classes = latent_dim, tuple(x_shape), num_classes
        self.num_data, self.aux_weight, self.labeled = num_data, aux_weight, labeled

    def _check(self, x, y, labeled):
        if y is not None:
            check_labels(y, x, self.num_classes)
        if labeled is not None:
            if y is None:
                raise UserError("labeled needs the labels y (any class where the label is unknown)")
            if (
                not torch.is_tensor(labeled)
                or labeled.dtype != torch.bool
                or labeled.shape != x.shape[:1]
            ):
                raise UserError(
                    f"labeled must be a boolean tensor of shape [{len(x)}], got "
                    f"{getattr(labeled, 'dtype', type(labeled).__name__)}"
                )

    def model(self, x, y=None, labeled=None):
        """p(y) p(z) p(x | z, y), plus α log q(y|x) on labeled points of a mixed batch."""
        pyro.module("m2", self)
        self._check(x, y, labeled)
        with data_plate(x, self.num_data):
            prior = dist.Categorical(logits=x.new_zeros(self.num_classes))
            if labeled is None:
                y = pyro.sample("y", prior, obs=y)
            else:
                unknown = pyro.sample("y", prior.mask(~labeled))
                pyro.sample("y_known", prior.mask(labeled), obs=y)
                if self.aux_weight:
                    log_q = dist.Categorical(logits=self.classifier(x)).log_prob(y)
                    pyro.factor(
                        "y_aux",
                        self.aux_weight * torch.where(labeled, log_q, torch.zeros_like(log_q)),
                    )
                y = torch.where(labeled, y, unknown)
            z = pyro.sample("z", dist.Normal(x.new_zeros(self.latent_dim), 1.0).to_event(1))
            out = self.decoder(z, y)
            pyro.sample("x", self.likelihood(out, x).to_event(len(self.x_shape)), obs=x)
        return out

    def guide(self, x, y=None, labeled=None):
        """q(y | x) (enumerable) where the label is unknown, then q(z | x, y)."""
        pyro.module("m2", self)
        with data_plate(x, self.num_data):
            if y is None or labeled is not None:
                logits = self.classifier(x)
                if (
                    labeled is not None
                ):  # labeled points: weights without gradient, log q masked out
                    logits = torch.where(labeled.unsqueeze(-1), logits.detach(), logits)
                q = dist.Categorical(logits=logits)
                if labeled is not None:
                    q = q.mask(~labeled)
                unknown = pyro.sample("y", q, infer={"enumerate": "parallel"})
                y = unknown if labeled is None else torch.where(labeled, y, unknown)
            loc, scale = self.encoder(x, y)
            return pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    @torch.no_grad()
    def classify(self, x, batch_size=1000):
        """The most probable class under q(y|x), ``[N]``."""
        return torch.cat(
            [
                self.classifier(x[i : i + batch_size]).argmax(-1)
                for i in range(0, len(x), batch_size)
            ]
        )

    def accuracy(self, x, labels):
        """Fraction of images whose argmax q(y|x) is their label."""
        was = self.training
        self.eval()
        try:
            return (self.classify(x) == labels.to(x.device)).double().mean().item()
        finally:
            self.train(was)

    def batch_kwargs(self, data):
        """``index -> {"y", "labeled"}`` for training batches: :attr:`labeled` class-balanced
        labeled images.

        Unknown labels are passed as class 0 (never read: masked). Sets the default α =
        0.1·N/N_labeled.
        """
        labels = data.train_labels.to(data.train.device)
        mask = balanced_labeled_mask(labels, self.labeled, self.num_classes)
        if self.aux_weight is None:
            self.aux_weight = 0.1 * len(labels) / max(self.labeled, 1)
        known = torch.where(mask, labels, torch.zeros_like(labels))
        return lambda idx: {"y": known[idx], "labeled": mask[idx]}

    def report(self, data):
        """Test classification accuracy of q(y|x)."""
        return {
            "test_accuracy": self.accuracy(data.test, data.test_labels),
            "labeled": self.labeled,
        }


def build_m2(config, x_shape, num_data=None):
    """M2 with MLP nets of ``config.hidden_dims`` (``net='mlp'`` only); ``config.labeled`` labeled
    images."""
    from pyro_vae.models.likelihoods import make_likelihood

    if config.net != "mlp":
        raise UserError(f"the m2 model uses MLP nets; pass {option('net', repr('mlp'))}")
    classifier = MLP(x_shape, config.hidden_dims, NUM_CLASSES, config.activation)
    encoder = LabelEncoder(
        x_shape, config.hidden_dims, config.latent_dim, NUM_CLASSES, config.activation
    )
    likelihood = make_likelihood(config.likelihood, x_shape, config.sigma, config.mixtures)
    decoder = LabelDecoder(
        config.latent_dim,
        list(reversed(config.hidden_dims)),
        likelihood.params_shape(x_shape),
        NUM_CLASSES,
        config.activation,
    )
    return M2(
        classifier,
        encoder,
        decoder,
        likelihood,
        config.latent_dim,
        x_shape,
        NUM_CLASSES,
        num_data,
        config.aux_weight,
        config.labeled,
    )


# its own guide q(y | x) q(z | x, y), MLP nets, and the estimators that train a guide with a
# discrete site y (score function or enumeration; the others need reparameterized sites)
SPEC = ModelSpec(build=build_m2, guides=("diagonal",), nets=("mlp",), estimators=("trace", "enum"))
