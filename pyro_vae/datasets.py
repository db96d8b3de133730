"""Image sources beyond the IDX datasets, as tensors: in-memory arrays and array files
(``npy:PATH``), torch Datasets and torchvision datasets by name; folders of the user's own images
(``folder:PATH``) are read by :mod:`pyro_vae.image_files` into the same form. Then the splits
(a test set split off, validation held out, a class left out) and the float images of
:func:`pyro_vae.data.load_data`.

``npy:PATH`` (or ``pt:PATH``): an array ``[N, H, W]``, ``[N, C, H, W]`` or ``[N, H, W, C]`` (C = 1
or 3), uint8 or float in [0, 1], in a ``.npy``, ``.npz`` or ``.pt`` file. Labels:
``npy:IMAGES.npy,LABELS.npy``, or the keys ``x``/``images`` and ``y``/``labels`` of an ``.npz`` or a
saved dict (``x_test``/``y_test``: a test split); a ``.pt`` may also hold a tuple ``(images,
labels)``.

``load_data``'s ``name`` (the Config field ``dataset``) takes ``folder:PATH``, ``npy:PATH`` (or
``pt:PATH``), a torchvision name of :data:`TORCHVISION` (downloaded into the data root by
torchvision's own class), or in Python an array, tensor or torch ``Dataset``.

Every reader returns uint8 images (floats stay floats) ``[N, C, H, W]`` and int64 labels, −1 for
unlabelled data (:data:`UNLABELLED`). Sizes: ``image_size=S`` resizes the shorter side to S and
crops the centre S × S; without it the images keep their own size, which must then be shared.
"""

import os

import numpy as np
import torch
import torch.nn.functional as F

from pyro_vae.core.checks import DataUnavailableError, MissingFileError, UserError, option

UNLABELLED = -1
BINARIZE_SEED = 0  # the one draw of binarized evaluation images
PREFIXES = ("folder", "npy", "pt")
# name -> (torchvision class, train kwargs, test kwargs, default image size or None)
TORCHVISION = {
    "kmnist": ("KMNIST", {"train": True}, {"train": False}, None),
    "emnist": (
        "EMNIST",
        {"split": "balanced", "train": True},
        {"split": "balanced", "train": False},
        None,
    ),
    "cifar10": ("CIFAR10", {"train": True}, {"train": False}, None),
    "cifar100": ("CIFAR100", {"train": True}, {"train": False}, None),
    "svhn": ("SVHN", {"split": "train"}, {"split": "test"}, None),
    "celeba": ("CelebA", {"split": "train"}, {"split": "test"}, 64),
    "omniglot": ("Omniglot", {"background": True}, {"background": False}, None),
}


# ---------------------------------------------------------------------------------------------
# tensors of images: layout, range, size
# ---------------------------------------------------------------------------------------------
def as_images(x, where="the array"):
    """``x`` (array or tensor) as ``[N, C, H, W]``: uint8 kept, other integers in 0…255 → uint8,
    floats in [0, 1]."""
    x = torch.as_tensor(np.asarray(x) if not torch.is_tensor(x) else x)
    if x.dim() == 3:
        x = x.unsqueeze(1)
    elif x.dim() == 4:
        if x.shape[1] not in (1, 3) and x.shape[3] in (1, 3):
            x = x.permute(0, 3, 1, 2)
        elif x.shape[1] not in (1, 3):
            raise UserError(
                f"{where} has shape {tuple(x.shape)}: neither [N, C, H, W] nor [N, H, W, C] with "
                "1 or 3 channels; reshape it to one of those layouts"
            )
    else:
        raise UserError(
            f"{where} has rank {x.dim()} (shape {tuple(x.shape)}); images must be [N, H, W], "
            f"[N, C, H, W] or [N, H, W, C]"
        )
    if len(x) == 0:
        raise UserError(f"{where} holds no images (shape {tuple(x.shape)})")
    if x.dtype == torch.bool:
        x = x.to(torch.uint8) * 255
    if x.dtype == torch.uint8:
        return x.contiguous()
    if not x.is_floating_point():
        lo, hi = int(x.min()), int(x.max())
        if lo < 0 or hi > 255:
            raise UserError(
                f"{where} holds integers in [{lo}, {hi}]; 8-bit images need 0…255 (uint8), or pass "
                "floats in [0, 1]"
            )
        return x.to(torch.uint8).contiguous()
    if not torch.isfinite(x).all():
        raise UserError(f"{where} holds NaN or infinite values; clean or drop those images first")
    lo, hi = x.min().item(), x.max().item()
    if lo < 0 or hi > 1:
        raise UserError(
            f"{where} holds floats in [{lo:.4g}, {hi:.4g}]; images must be in [0, 1]: divide 8-bit "
            "values by 255 (or save them as uint8)"
        )
    return x.contiguous()


def fit_size(x, size):
    """Resize ``[..., C, H, W]`` so its shorter side is ``size`` (antialiased bilinear), then crop
    the centre ``size × size``; uint8 stays uint8 (rounded). ``size=None`` or a match: unchanged."""
    if size is None or tuple(x.shape[-2:]) == (size, size):
        return x
    h, w = x.shape[-2:]
    scale = size / min(h, w)
    new = (max(size, round(h * scale)), max(size, round(w * scale)))
    y = x.reshape(-1, *x.shape[-3:]).float()
    if new != (h, w):
        y = F.interpolate(y, size=new, mode="bilinear", antialias=True, align_corners=False)
    top, left = (new[0] - size) // 2, (new[1] - size) // 2
    y = y[..., top : top + size, left : left + size]
    if x.dtype == torch.uint8:
        y = y.round().clamp(0, 255).to(torch.uint8)
    else:
        y = y.clamp(0, 1).to(x.dtype)
    return y.reshape(*x.shape[:-3], *y.shape[-3:])


def pil_array(image, where):
    """A PIL image as a uint8 array ``[H, W]`` (grey) or ``[H, W, 3]`` (colour)."""
    try:
        image.load()
    except Exception as e:  # truncated or corrupt
        raise UserError(
            f"cannot read {where} ({type(e).__name__}: {e}); remove or replace the file"
        ) from None
    grey = image.mode in ("1", "L", "LA", "I", "I;16", "F") or (
        image.mode == "P" and _grey_palette(image)
    )
    return np.array(image.convert("L" if grey else "RGB"))


def _grey_palette(image):
    rgb = np.asarray(image.convert("RGB"))
    return bool((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all())


def stack_images(arrays, names, where, image_size=None):
    """Stack uint8 ``[H, W]`` / ``[H, W, 3]`` arrays into ``[N, C, H, W]`` (all RGB if any is),
    sized to ``image_size``."""
    colour = any(a.ndim == 3 for a in arrays)
    tensors = []
    for a in arrays:
        t = torch.as_tensor(a)
        t = (
            t.permute(2, 0, 1)
            if t.dim() == 3
            else t.unsqueeze(0).expand(3 if colour else 1, *t.shape)
        )
        tensors.append(fit_size(t, image_size))
    sizes = {}
    for t, n in zip(tensors, names):
        sizes.setdefault(tuple(t.shape[1:]), n)
    if len(sizes) > 1:
        examples = ", ".join(f"{h}×{w} ({n})" for (h, w), n in list(sizes.items())[:3])
        raise UserError(
            f"the images of {where} have {len(sizes)} different sizes, e.g. {examples}; pass "
            f"{option('image_size', 'N')} to resize and crop them all to N×N"
        )
    return torch.stack(tensors)


# ---------------------------------------------------------------------------------------------
# arrays
# ---------------------------------------------------------------------------------------------
def _labels(y, n, where):
    y = torch.as_tensor(np.asarray(y) if not torch.is_tensor(y) else y)
    if y.dim() != 1 or len(y) != n or y.is_floating_point() and not (y == y.round()).all():
        raise UserError(
            f"{where} must be one integer label per image ({n}), got shape {tuple(y.shape)} of "
            f"{y.dtype}"
        )
    return y.long()


def from_arrays(x, labels=None, test=None, test_labels=None, where="the array"):
    """Checked ``(train_x, train_y, test_x, test_y)`` from in-memory arrays or tensors."""
    x = as_images(x, where)
    y = (
        torch.full((len(x),), UNLABELLED)
        if labels is None
        else _labels(labels, len(x), f"the labels of {where}")
    )
    if test is None:
        return x, y, None, None
    test = as_images(test, f"the test images of {where}")
    if test.shape[1:] != x.shape[1:]:
        raise UserError(
            f"the test images of {where} are {tuple(test.shape[1:])}, the training images "
            f"{tuple(x.shape[1:])}; give both the same shape"
        )
    ty = (
        torch.full((len(test),), UNLABELLED)
        if test_labels is None
        else _labels(test_labels, len(test), f"the test labels of {where}")
    )
    return x, y, test, ty


# ---------------------------------------------------------------------------------------------
# torch Datasets and torchvision
# ---------------------------------------------------------------------------------------------
def dataset_tensors(ds, image_size=None, where="the dataset"):
    """``(x, labels)`` of a map-style torch Dataset whose items are an image (tensor, array or PIL
    image) or a tuple ``(image, label, …)``; PIL images become uint8 ``[C, H, W]`` (sized to
    ``image_size``), non-integer labels −1."""
    from PIL import Image

    try:
        n = len(ds)
    except TypeError:
        raise TypeError(
            f"{where} must be a map-style torch Dataset with __len__ and __getitem__, got "
            f"{type(ds).__name__}"
        ) from None
    if n == 0:
        raise UserError(f"{where} holds no items")
    images, labels, pil = [], [], False
    for i in range(n):
        item = ds[i]
        image, label = (
            (item[0], item[1] if len(item) > 1 else None)
            if isinstance(item, (tuple, list))
            else (item, None)
        )
        if isinstance(image, Image.Image):
            image, pil = pil_array(image, f"item {i} of {where}"), True
        images.append(image)
        is_int = isinstance(label, (int, np.integer)) or (
            torch.is_tensor(label) and label.numel() == 1 and not label.is_floating_point()
        )
        labels.append(int(label) if is_int else UNLABELLED)
    if pil:
        x = stack_images(images, [f"item {i}" for i in range(n)], where, image_size)
    else:
        x = torch.stack([torch.as_tensor(im) for im in images])
    return x, torch.tensor(labels, dtype=torch.long)


def read_torchvision(name, root, image_size=None):
    """``(train_x, train_y, test_x, test_y)`` of a torchvision dataset of :data:`TORCHVISION`, read
    by its own class from ``root`` (downloaded there when missing and the internet is reachable)."""
    import torchvision

    cls_name, train_kw, test_kw, default_size = TORCHVISION[name]
    cls = getattr(torchvision.datasets, cls_name)
    image_size = image_size or default_size
    out = []
    for kwargs in (train_kw, test_kw):
        try:
            ds = cls(root, download=False, **kwargs)
        except (RuntimeError, FileNotFoundError):
            try:
                ds = cls(root, download=True, **kwargs)
            except Exception as e:  # no internet, blocked mirror, quota (CelebA's Google Drive) …
                reason = " ".join(str(e).split())[:200]
                raise DataUnavailableError(
                    f"could not load {name}: it is not under {root!r} and torchvision's download "
                    f"failed ({type(e).__name__}: {reason}). To fix: on a machine with internet "
                    f"run python -c \"import torchvision; torchvision.datasets.{cls_name}('DIR', "
                    f"download=True, **{kwargs!r})\" and copy DIR's contents into {root!r} (or "
                    f"pass {option('data_dir', 'DIR')} / set $PYRO_VAE_DATA)"
                ) from None
        out += _torchvision_tensors(name, ds, image_size)
    return tuple(out)


def _torchvision_tensors(name, ds, image_size):
    if hasattr(ds, "data") and not isinstance(ds.data, list):  # (K/E)MNIST, CIFAR, SVHN
        x = as_images(ds.data, f"torchvision's {name}")
        if name == "emnist":
            x = x.transpose(-1, -2)  # EMNIST's files hold the images transposed
        y = torch.as_tensor(np.asarray(ds.targets if hasattr(ds, "targets") else ds.labels))
        return fit_size(x, image_size), y.long()
    x, y = dataset_tensors(ds, image_size, f"torchvision's {name}")
    if name == "celeba":
        y = torch.full_like(y, UNLABELLED)  # attributes, not classes
    if name == "omniglot":
        x = 255 - x  # strokes 1 on a background of 0, as in MNIST
    return x, y


def split_off(x, y, fraction, seed=0):
    """Random test split of ``round(fraction · N)`` (at least 1) images with a fixed ``seed``: ``(x,
    y, test, test_y)``."""
    if len(x) < 2:
        raise UserError(f"need at least 2 images to split off a test set, got {len(x)}")
    n_test = min(len(x) - 1, max(1, round(fraction * len(x))))
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    test, train = perm[:n_test].sort().values, perm[n_test:].sort().values
    return x[train], y[train], x[test], y[test]


def hold_out(x, y, validation):
    """``(train_x, train_y, val_x, val_y)``: the last ``validation`` images held out (None if 0)."""
    if validation < 0 or validation >= len(x):
        raise UserError(f"{option('validation')} must be in [0, {len(x)}), got {validation}")
    if not validation:
        return x, y, None, None
    return x[:-validation], y[:-validation], x[-validation:], y[-validation:]


def without_label(label, x, y):
    """The images ``x`` and labels ``y`` whose label is not ``label``."""
    keep = y != label
    return x[keep], y[keep]


def binarize_once(x, seed=BINARIZE_SEED):
    """``x ~ Bernoulli(x)`` drawn once on the CPU with a fixed ``seed`` (the same images every
    time)."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    return torch.bernoulli(x.cpu(), generator=g).to(x)


def as_floats(x, dtype, binarized):
    """``x`` as ``dtype`` in [0, 1] (uint8 divided by 255), ``binarized`` once with a fixed seed."""
    x = x.to(dtype) / 255.0 if x.dtype == torch.uint8 else x.to(dtype)
    return binarize_once(x) if binarized else x


# ---------------------------------------------------------------------------------------------
# array files: npy:PATH, pt:PATH
# ---------------------------------------------------------------------------------------------
KEYS = {
    "x": ("x", "images"),
    "y": ("y", "labels"),
    "x_test": ("x_test", "test_images"),
    "y_test": ("y_test", "test_labels"),
}


def _load_array_file(path):
    if not os.path.exists(path):
        raise MissingFileError(
            f"array file {path!r} does not exist; pass {option('dataset', repr('npy:PATH'))} "
            "with an existing .npy, .npz or .pt file"
        )
    ext = os.path.splitext(path)[1].lower()
    try:
        if ext == ".npy":
            return np.load(path, allow_pickle=False)
        if ext == ".npz":
            with np.load(path, allow_pickle=False) as f:
                return {k: f[k] for k in f.files}
        if ext in (".pt", ".pth"):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(
            f"cannot read array file {path!r} ({type(e).__name__}: {str(e)[:200]}); save it with "
            "numpy.save / numpy.savez / torch.save"
        ) from None
    raise UserError(f"array file {path!r} must end in .npy, .npz or .pt")


def _pick(d, key, path, required=False):
    for k in KEYS[key]:
        if k in d:
            return d[k]
    if required:
        raise UserError(
            f"{path!r} holds the keys {sorted(d)} but no images; name them {' or '.join(KEYS[key])}"
        )
    return None


def read_array(spec, labels=None):
    """``(train_x, train_y, test_x, test_y)`` from ``PATH`` or ``IMAGES,LABELS`` (see the module
    docstring)."""
    path, _, labels_path = spec.partition(",")
    content = _load_array_file(path)
    test = test_y = None
    if isinstance(content, (tuple, list)) and len(content) == 2:
        content, labels = content
    if isinstance(content, dict):
        x, y = _pick(content, "x", path, True), _pick(content, "y", path)
        test, test_y = _pick(content, "x_test", path), _pick(content, "y_test", path)
        labels = y if labels is None else labels
    else:
        x = content
    if labels_path:
        labels = _load_array_file(labels_path)
    return from_arrays(x, labels, test, test_y, where=repr(path))
