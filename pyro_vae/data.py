"""Image datasets held on the training device as one tensor each; batches are index slices.

Sources (:func:`load_data`'s ``name``): ``mnist``, ``fashion-mnist``, the torchvision names of
:data:`pyro_vae.datasets.TORCHVISION` (kmnist, emnist, cifar10, cifar100, svhn, celeba, omniglot),
``folder:PATH``, ``npy:PATH``/``pt:PATH``, or in Python an array, tensor or torch ``Dataset``
(see :mod:`pyro_vae.datasets` and :mod:`pyro_vae.image_files`). A source without a test set gets
one split off with a fixed seed.

``load_images(name, root)`` reads MNIST or Fashion-MNIST through torchvision. When torchvision
cannot download (no internet), Fashion-MNIST falls back to the gzipped IDX files of Debian's
``dataset-fashion-mnist`` package (``/usr/share/datasets/fashion-mnist``), copied into
``root/FashionMNIST/raw``.

Binarization (``binarize``):

* ``"none"``: grey levels in [0, 1];
* ``"dynamic"``: training batches are resampled x ~ Bernoulli(grey level) every time
  they are drawn; validation and test images are binarized once with a fixed seed;
* ``"static"``: every image binarized once with a fixed seed.

8-bit images are carried as grey levels k/255 (``binarize="none"``); the 8-bit likelihoods
(``discretized-logistic``, ``categorical``) score the bin round(255 x).
"""

import gzip
import os
import shutil
from dataclasses import dataclass
from typing import Optional

import torch

from pyro_vae import datasets, image_files
from pyro_vae.core.checks import (
    DataUnavailableError,
    MissingFileError,
    UserError,
    check_option,
    option,
)

DATASETS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}
BINARIZE = ("dynamic", "static", "none")
DEBIAN_DIRS = {"fashion-mnist": "/usr/share/datasets/fashion-mnist"}
FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def default_root():
    """``$PYRO_VAE_DATA``, else ``~/.cache/pyro_vae``."""
    return os.environ.get(
        "PYRO_VAE_DATA", os.path.join(os.path.expanduser("~"), ".cache", "pyro_vae")
    )


def _copy_local_files(name, root, source):
    raw = os.path.join(root, DATASETS[name], "raw")
    os.makedirs(raw, exist_ok=True)
    for f in FILES:
        target = os.path.join(raw, f)
        if os.path.exists(target):
            continue
        for candidate, opener in (
            (os.path.join(source, f + ".gz"), gzip.open),
            (os.path.join(source, f), open),
        ):
            if os.path.exists(candidate):
                with opener(candidate, "rb") as src, open(target + ".part", "wb") as dst:
                    shutil.copyfileobj(src, dst)
                os.replace(target + ".part", target)
                break
        else:
            return False
    return True


def load_images(name, root=None, train=True):
    """Return ``(images, labels)``: uint8 ``[N, 1, 28, 28]`` and int64 ``[N]`` for one split of
    ``name``."""
    import torchvision

    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    root = root or default_root()
    cls = getattr(torchvision.datasets, DATASETS[name])
    if root and not os.path.isdir(root) and os.path.exists(root):
        raise UserError(f"data directory {root!r} is not a directory")
    try:
        ds = cls(root, train=train, download=False)
    except RuntimeError:
        ds = None
    if ds is None:
        debian = DEBIAN_DIRS.get(name)
        if debian and os.path.isdir(debian) and _copy_local_files(name, root, debian):
            ds = cls(root, train=train, download=False)
        else:
            try:
                ds = cls(root, train=train, download=True)
            except Exception as e:  # no internet, blocked mirror, …
                fixes = (
                    f"put the four IDX files ({', '.join(FILES)}, gzipped or not) in a folder and "
                    f"pass {option('data_dir', 'FOLDER')}"
                )
                if name == "fashion-mnist":
                    fixes = (
                        "install Debian's package (apt-get install dataset-fashion-mnist), or "
                        + fixes
                    )
                reason = " ".join(str(e).split())[:300]
                raise DataUnavailableError(
                    f"could not load {name}: torchvision's download failed ({type(e).__name__}: "
                    f"{reason}) and no local copy was found under {root!r}. To fix: {fixes}."
                ) from None
    return ds.data.unsqueeze(1), ds.targets.long()


def _resolve_root(name, data_dir):
    """A ``data_dir`` may be a torchvision root or a folder of raw IDX files; return a torchvision
    root."""
    if data_dir is None:
        return default_root()
    if not os.path.isdir(data_dir):
        raise MissingFileError(
            f"data directory {data_dir!r} does not exist; pass an existing folder as "
            f"{option('data_dir', '')}"
        )
    if any(
        os.path.exists(os.path.join(data_dir, f + ext)) for f in FILES[:1] for ext in ("", ".gz")
    ):
        root = os.path.join(data_dir, "_torchvision")
        if not _copy_local_files(name, root, data_dir):
            raise MissingFileError(f"{data_dir!r} holds only some of the IDX files {FILES}")
        return root
    return data_dir


def parse_source(name):
    """``(kind, argument)``: ``("folder", path)``, ``("array", path)``, ``("torchvision", name)`` or
    ``(None, name)``."""
    kind, sep, rest = name.partition(":")
    if sep and kind in datasets.PREFIXES:
        if not rest:
            raise UserError(
                f"{option('dataset', repr(name))} names no path; pass e.g. "
                + option("dataset", repr(f"{kind}:/data/my_images"))
            )
        return ("folder" if kind == "folder" else "array"), rest
    if name in datasets.TORCHVISION:
        return "torchvision", name
    return None, name


def check_source(name):
    """``name`` is a known dataset or a ``folder:``/``npy:``/``pt:`` source whose path exists
    (one-line errors)."""
    if not isinstance(name, str):
        raise UserError(
            f"{option('dataset')} must be a name such as fashion-mnist or folder:PATH, got "
            f"{type(name).__name__}"
        )
    kind, arg = parse_source(name)
    if kind is None and name not in DATASETS:
        names = ", ".join([*DATASETS, *datasets.TORCHVISION])
        raise UserError(
            f"unknown dataset {name!r}; choose one of {names}, or folder:PATH, npy:PATH (.npy, "
            ".npz, .pt)"
        )
    path = arg.partition(",")[0] if kind == "array" else arg
    if kind in ("folder", "array") and not os.path.exists(path):
        what = "image folder" if kind == "folder" else "array file"
        raise MissingFileError(
            f"{what} {path!r} does not exist; pass "
            f"{option('dataset', repr(name.partition(':')[0] + ':PATH'))} with an existing path"
        )
    return kind


def read_source(name, data_dir=None, image_size=None, labels=None):
    """``(train_x, train_y, test_x, test_y)`` of any source (``test_*`` None when it has no test
    set).

    Images are uint8 (or float in [0, 1] from float arrays and tensor Datasets) ``[N, C, H, W]``.
    """
    if isinstance(name, str):
        kind = check_source(name)
        if kind is None:  # mnist, fashion-mnist
            root = _resolve_root(name, data_dir)
            x, y = load_images(name, root, train=True)
            tx, ty = load_images(name, root, train=False)
        elif kind == "folder":
            return image_files.read_folder(name.partition(":")[2], image_size)
        elif kind == "array":
            x, y, tx, ty = datasets.read_array(name.partition(":")[2], labels)
        else:
            root = data_dir or default_root()
            if data_dir is not None and not os.path.isdir(data_dir):
                raise MissingFileError(
                    f"data directory {data_dir!r} does not exist; pass an existing folder as "
                    f"{option('data_dir', '')}"
                )
            return datasets.read_torchvision(name, root, image_size)
    elif torch.is_tensor(name) or hasattr(name, "__array__"):
        x, y, tx, ty = datasets.from_arrays(name, labels)
    elif isinstance(name, torch.utils.data.Dataset):
        x, y = datasets.dataset_tensors(name, image_size)
        x, y, tx, ty = datasets.from_arrays(x, y, where="the dataset")
    else:
        raise TypeError(
            "data source must be a dataset name, folder:PATH, npy:PATH, an array or tensor of "
            f"images, or a torch Dataset; got {type(name).__name__}"
        )
    fit = lambda t: None if t is None else datasets.fit_size(t, image_size)  # noqa: E731
    return fit(x), y, fit(tx), ty


@dataclass
class ImageData:
    """Train/validation/test images as float tensors in [0, 1] on one device.

    ``train`` holds grey levels when ``binarize == "dynamic"`` (binarized per batch by
    :meth:`batches`), binary values when ``"static"``; ``val``/``test`` are ready to use.
    """

    train: torch.Tensor
    train_labels: torch.Tensor
    test: torch.Tensor
    test_labels: torch.Tensor
    val: Optional[torch.Tensor] = None
    val_labels: Optional[torch.Tensor] = None
    binarize: str = "dynamic"

    @property
    def x_shape(self):
        return tuple(self.train.shape[1:])

    def to(self, device):
        fields = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in self.__dict__.items()}
        return ImageData(**fields)

    def batches(self, batch_size, shuffle=True, drop_last=False, generator=None, shard=None):
        """Yield ``(x, index)`` training batches: index slices of a permutation drawn on the data's
        device.

        ``shard`` (e.g. :func:`pyro_vae.training.distributed.shard`) maps each global batch of
        indices to this process's share of it.
        """
        n = len(self.train)
        order = (
            torch.randperm(n, device=self.train.device, generator=generator) if shuffle else None
        )
        stop = n - n % batch_size if drop_last else n
        for start in range(0, stop, batch_size):
            idx = order[start : start + batch_size] if shuffle else slice(start, start + batch_size)
            if shard is not None:
                idx = shard(idx if shuffle else torch.arange(n, device=self.train.device)[idx])
            x = self.train[idx]
            if self.binarize == "dynamic":
                x = torch.bernoulli(x, generator=generator)
            yield x, idx

    def split(self, name):
        """Evaluation images and labels of ``name`` in {"train", "val", "test"} (train binarized
        once if dynamic)."""
        if name == "test":
            return self.test, self.test_labels
        if name == "val":
            if self.val is None:
                raise UserError(
                    "this dataset has no validation split; build it with "
                    + option("validation", "N")
                )
            return self.val, self.val_labels
        if name == "train":
            x = datasets.binarize_once(self.train) if self.binarize == "dynamic" else self.train
            return x, self.train_labels
        raise UserError(f"unknown split {name!r}; choose train, val or test")


def training_data(data, test_x=None, model=None):
    """``(ImageData, test images)`` of what the trainer is given, checked once against ``model``'s
    own shape and range (:func:`~pyro_vae.core.checks.check_data_for_model`): an :class:`ImageData`,
    a tensor of images ``[N, ...]``, or a torch ``Dataset`` of images or ``(image, label, …)`` items
    (labels unused; uint8 becomes floats in [0, 1]). ``test_x``: the test images (default
    ``data.test``)."""
    from pyro_vae.core import checks

    if isinstance(data, torch.utils.data.Dataset):
        data = datasets.dataset_tensors(data, where="the training Dataset")[0]
        data = data.float() / 255 if data.dtype == torch.uint8 else data
    if torch.is_tensor(data):
        checks.check_data_for_model(model, data, "training data")
        data = ImageData(
            train=data, train_labels=None, test=test_x, test_labels=None, binarize="none"
        )
    elif not isinstance(data, ImageData):
        raise TypeError(
            "data must be an ImageData (from load_data) or a tensor of images [N, ...] (or a "
            f"torch Dataset of them), got {type(data).__name__}"
        )
    else:
        checks.check_eight_bit(checks.model_is_eight_bit(model), data.binarize)
        unit = checks.model_wants_unit_interval(model) or data.binarize == "dynamic"
        checks.check_images(data.train, "training data", checks.model_x_shape(model), unit)
    test_x = data.test if test_x is None else test_x
    if test_x is not None:
        checks.check_data_for_model(model, test_x, "test data")
        if test_x.shape[1:] != data.train.shape[1:] or test_x.device != data.train.device:
            raise UserError(
                f"test data {tuple(test_x.shape)} on {test_x.device} does not match the training "
                f"data {tuple(data.train.shape)} on {data.train.device}; give both the same shape "
                "and device"
            )
    return data, test_x


def load_data(
    name="fashion-mnist",
    data_dir=None,
    binarize="dynamic",
    validation=0,
    limit=None,
    test_limit=None,
    device="cpu",
    dtype=torch.float32,
    exclude_class=None,
    image_size=None,
    test_fraction=0.1,
    labels=None,
    split_seed=0,
):
    """Load ``name`` as an :class:`ImageData` on ``device``.

    :param name: a dataset name, ``folder:PATH``, ``npy:PATH`` / ``pt:PATH`` (see
        :mod:`pyro_vae.datasets`), or an array / tensor of images (``labels``: its labels) or a
        torch ``Dataset``.
    :param int image_size: resize (shorter side) and centre-crop every image to ``image_size ×
        image_size``.
    :param float test_fraction: share of the images split off as the test set (seed ``split_seed``)
        when the source has none.
    :param int validation: hold out the last ``validation`` training images (e.g. 10000 for the
        50k/10k/10k split).
    :param int limit: keep only the first ``limit`` training images (smoke runs).
    :param int test_limit: keep only the first ``test_limit`` test images.
    :param int exclude_class: drop this label from the training (and validation) images, e.g. for
        anomaly detection.
    """
    if binarize not in BINARIZE:
        raise UserError(f"unknown binarize mode {binarize!r}; choose one of {', '.join(BINARIZE)}")
    sizes = dict(limit=limit, test_limit=test_limit, image_size=image_size)
    for name_, value in dict(sizes, test_fraction=test_fraction).items():
        check_option(name_, value)
    train, train_y, test, test_y = read_source(name, data_dir, image_size, labels)
    if test is None:
        train, train_y, test, test_y = datasets.split_off(train, train_y, test_fraction, split_seed)
    train, train_y, val, val_y = datasets.hold_out(train, train_y, validation)
    if exclude_class is not None:
        train, train_y = datasets.without_label(exclude_class, train, train_y)
        if val is not None:
            val, val_y = datasets.without_label(exclude_class, val, val_y)
    if limit:
        train, train_y = train[:limit], train_y[:limit]
    if test_limit:
        test, test_y = test[:test_limit], test_y[:test_limit]
    evaluated = binarize != "none"  # validation and test images are binarized once
    data = ImageData(
        train=datasets.as_floats(train, dtype, binarize == "static"),
        train_labels=train_y,
        test=datasets.as_floats(test, dtype, evaluated),
        test_labels=test_y,
        val=None if val is None else datasets.as_floats(val, dtype, evaluated),
        val_labels=val_y,
        binarize=binarize,
    )
    return data.to(device)
