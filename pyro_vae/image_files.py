"""Images from the user's own image files: the ``folder:PATH`` source (arrays saved in files,
``npy:PATH``, are read by :func:`pyro_vae.datasets.read_array`).

``folder:PATH``: PNG/JPEG (also BMP, GIF, WebP, TIFF) images, grey or RGB (all RGB if any is
colour). Class subfolders give labels (sorted names → 0, 1, …); images directly in PATH are
unlabelled. ``PATH/train`` and ``PATH/test`` (each laid out the same way) are used as the two
splits. The reader returns what :mod:`pyro_vae.datasets`' readers return: uint8 images ``[N, C, H,
W]`` and int64 labels, −1 for unlabelled data.
"""

import os

import torch

from pyro_vae.core.checks import MissingFileError, UserError, option
from pyro_vae.datasets import UNLABELLED, pil_array, stack_images

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
