"""Dataset loading (offline fallbacks, clear errors) and device-resident batching."""

import gzip
import os

import numpy as np
import pytest
import torch

from pyro_vae import data as data_mod
from pyro_vae.data import FILES, ImageData, load_data

DEBIAN = "/usr/share/datasets/fashion-mnist"
needs_fashion = pytest.mark.skipif(
    not os.path.isdir(DEBIAN), reason="needs Debian's dataset-fashion-mnist"
)


def _write_idx(folder, n_train=6, n_test=4, gz=True):
    """Write tiny valid IDX files (images of constant value i*10, labels i % 10)."""
    os.makedirs(folder, exist_ok=True)

    def images(n):
        header = np.array([0x00000803, n, 28, 28], dtype=">i4").tobytes()
        body = np.repeat(np.arange(n, dtype=np.uint8) * 10, 28 * 28).tobytes()
        return header + body

    def labels(n):
        return (
            np.array([0x00000801, n], dtype=">i4").tobytes()
            + (np.arange(n) % 10).astype(np.uint8).tobytes()
        )

    blobs = dict(zip(FILES, (images(n_train), labels(n_train), images(n_test), labels(n_test))))
    for name, blob in blobs.items():
        if gz:
            with gzip.open(os.path.join(folder, name + ".gz"), "wb") as f:
                f.write(blob)
        else:
            with open(os.path.join(folder, name), "wb") as f:
                f.write(blob)


@pytest.mark.parametrize("gz", [True, False])
def test_data_dir_with_raw_idx_files(tmp_path, gz):
    _write_idx(tmp_path / "idx", gz=gz)
    d = load_data("mnist", str(tmp_path / "idx"), binarize="none")
    assert d.train.shape == (6, 1, 28, 28) and d.test.shape == (4, 1, 28, 28)
    torch.testing.assert_close(d.train[:, 0, 0, 0], torch.arange(6) * 10 / 255.0)
    assert d.train_labels.tolist() == [0, 1, 2, 3, 4, 5]


def test_missing_data_everywhere_names_both_fixes(tmp_path, monkeypatch):
    monkeypatch.setattr(data_mod, "DEBIAN_DIRS", {"fashion-mnist": str(tmp_path / "nowhere")})

    def no_download(*args, **kwargs):
        raise RuntimeError("no internet")

    import torchvision

    monkeypatch.setattr(torchvision.datasets.FashionMNIST, "download", no_download)
    with pytest.raises(RuntimeError) as e:
        load_data("fashion-mnist", str(tmp_path))
    assert "apt-get install dataset-fashion-mnist" in str(e.value) and "data_dir=FOLDER" in str(
        e.value
    )


def test_missing_data_dir_and_bad_names(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_data("fashion-mnist", str(tmp_path / "absent"))
    with pytest.raises(ValueError, match="fashion-mnist"):
        load_data("cifar", str(tmp_path))
    with pytest.raises(ValueError, match="dynamic"):
        load_data("mnist", str(tmp_path), binarize="sometimes")


def _toy(binarize):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(10, 1, 2, 2, generator=g)
    return ImageData(
        train=x,
        train_labels=torch.arange(10),
        test=x[:3],
        test_labels=torch.arange(3),
        binarize=binarize,
    )


def test_batches_cover_every_image_once_per_epoch():
    d = _toy("none")
    xs, idx = zip(*d.batches(3))
    seen = torch.cat(idx)
    assert sorted(seen.tolist()) == list(range(10))
    torch.testing.assert_close(torch.cat(xs), d.train[seen])


def test_dynamic_binarization_resamples_each_batch_with_the_grey_level_as_probability():
    d = _toy("dynamic")
    draws = torch.stack(
        [torch.cat([x for x, _ in d.batches(10, shuffle=False)]) for _ in range(2000)]
    )
    assert set(draws.unique().tolist()) <= {0.0, 1.0}
    # mean of 2000 Bernoulli draws: standard error ≤ 0.5/sqrt(2000) ≈ 0.011
    torch.testing.assert_close(draws.mean(0), d.train, atol=0.05, rtol=0)


@needs_fashion
def test_fashion_mnist_from_debian_files_standard_split(tmp_path, monkeypatch):
    monkeypatch.setenv("PYRO_VAE_DATA", str(tmp_path))
    d = load_data("fashion-mnist", binarize="static", validation=10000)
    assert (len(d.train), len(d.val), len(d.test)) == (50000, 10000, 10000)
    assert set(d.train[:100].unique().tolist()) == {0.0, 1.0}
    # static binarization uses a fixed seed: loading again gives the same images
    again = load_data("fashion-mnist", binarize="static", validation=10000, limit=100)
    torch.testing.assert_close(again.train, d.train[:100])
    assert d.test_labels.bincount().tolist() == [1000] * 10
