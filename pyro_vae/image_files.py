"""Images from the user's own files: ``folder:PATH`` and ``npy:PATH`` (``pt:PATH``) sources.

* ``folder:PATH``: PNG/JPEG (also BMP, GIF, WebP, TIFF) images, grey or RGB (all RGB if any is
  colour). Class subfolders give labels (sorted names → 0, 1, …); images directly in PATH are
  unlabelled. ``PATH/train`` and ``PATH/test`` (each laid out the same way) are used as the two
  splits.
* ``npy:PATH`` (or ``pt:PATH``): an array ``[N, H, W]``, ``[N, C, H, W]`` or ``[N, H, W, C]`` (C = 1
  or 3), uint8 or float in [0, 1], in a ``.npy``, ``.npz`` or ``.pt`` file. Labels:
  ``npy:IMAGES.npy,LABELS.npy``, or the keys ``x``/``images`` and ``y``/``labels`` of an ``.npz`` or
  a saved dict (``x_test``/``y_test``: a test split); a ``.pt`` may also hold a tuple ``(images,
  labels)``.

Both readers return what :mod:`pyro_vae.datasets`' readers return: uint8 images (floats stay
floats) ``[N, C, H, W]`` and int64 labels, −1 for unlabelled data.
"""

import os

import numpy as np
import torch

from pyro_vae.core.checks import MissingFileError, UserError, option
from pyro_vae.datasets import UNLABELLED, from_arrays, pil_array, stack_images

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


# ---------------------------------------------------------------------------------------------
# folders
# ---------------------------------------------------------------------------------------------
def _image_files(folder, recursive):
    out = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        out += [
            os.path.join(root, f) for f in sorted(files) if f.lower().endswith(IMAGE_EXTENSIONS)
        ]
        if not recursive:
            break
    return out


def _scan(path):
    """``{class name or None: [files]}`` of one split folder."""
    subdirs = sorted(
        d
        for d in os.listdir(path)
        if os.path.isdir(os.path.join(path, d)) and not d.startswith(".")
    )
    classes = {d: _image_files(os.path.join(path, d), True) for d in subdirs}
    classes = {d: f for d, f in classes.items() if f}
    top = _image_files(path, False)
    if classes and top:
        raise UserError(
            f"{path!r} holds images both at its top level ({os.path.basename(top[0])}, …) and in "
            f"subfolders ({', '.join(list(classes)[:3])}); put every image in a class subfolder, "
            "or none"
        )
    if not classes and not top:
        raise UserError(
            f"{path!r} holds no images ({', '.join(IMAGE_EXTENSIONS)}); point folder:PATH at a "
            "folder of images or of class subfolders of images"
        )
    return classes or {None: top}


def read_folder(path, image_size=None):
    """``(train_x, train_y, test_x, test_y)`` from a folder (``test_*`` None unless it has train/
    and test/)."""
    from PIL import Image

    if not os.path.isdir(path):
        raise MissingFileError(
            f"image folder {path!r} does not exist; pass {option('dataset', repr('folder:PATH'))} "
            "with an existing folder"
        )
    split_dirs = [os.path.join(path, s) for s in ("train", "test")]
    splits = (
        [_scan(p) for p in split_dirs] if all(map(os.path.isdir, split_dirs)) else [_scan(path)]
    )
    names = sorted({c for s in splits for c in s if c is not None})
    if names and any(None in s for s in splits):
        raise UserError(f"{path!r}: train/ and test/ must both use class subfolders, or neither")
    index = {c: i for i, c in enumerate(names)}
    arrays, labels, files, sizes = [], [], [], []
    for split in splits:
        n = 0
        for c, paths in split.items():
            for f in paths:
                try:
                    image = Image.open(f)
                except Exception as e:
                    raise UserError(
                        f"cannot read image {f!r} ({type(e).__name__}); remove or replace the file"
                    ) from None
                with image:
                    arrays.append(pil_array(image, f"image {f!r}"))
                labels.append(index.get(c, UNLABELLED))
                files.append(os.path.relpath(f, path))
                n += 1
        sizes.append(n)
    x = stack_images(arrays, files, repr(path), image_size)
    y = torch.tensor(labels, dtype=torch.long)
    if len(splits) == 1:
        return x, y, None, None
    return x[: sizes[0]], y[: sizes[0]], x[sizes[0] :], y[sizes[0] :]


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
