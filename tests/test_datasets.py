"""Data sources beyond the IDX files: image folders, arrays, torch Datasets, torchvision by name;
bad data in one line."""

import os
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from pyro_vae import Trainer, load_data
from pyro_vae.app.config import Config
from pyro_vae.datasets import UNLABELLED, fit_size
from pyro_vae.models import build_model


def _rgb(n, size=32, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _save(folder, arrays, ext="png", start=0):
    os.makedirs(folder, exist_ok=True)
    for i, a in enumerate(arrays):
        Image.fromarray(a).save(os.path.join(folder, f"{start + i:04d}.{ext}"))


def _bag(x):
    """Multiset of images (uint8 [N, C, H, W] or floats k/255): equal bags hold the same images."""
    x = torch.as_tensor(x)
    x = (x * 255).round().to(torch.uint8) if x.is_floating_point() else x
    return Counter(bytes(im.contiguous().numpy()) for im in x)


@pytest.fixture(scope="module")
def rgb_folder(tmp_path_factory):
    """300 random 32×32 RGB PNGs: 200 in cat/, 100 in dog/."""
    root = tmp_path_factory.mktemp("images")
    images = _rgb(300)
    _save(root / "cat", images[:200])
    _save(root / "dog", images[200:])
    return str(root), images


def test_folder_of_rgb_pngs_is_read_exactly_with_class_labels_and_a_seeded_test_split(rgb_folder):
    root, images = rgb_folder
    d = load_data(f"folder:{root}", binarize="none")
    assert d.x_shape == (3, 32, 32) and (len(d.train), len(d.test)) == (270, 30)  # 10 % split off
    everything = torch.cat([d.train, d.test])
    # every pixel is the PNG's value k/255: the bags of images match exactly
    assert _bag(everything) == _bag(torch.as_tensor(images).permute(0, 3, 1, 2))
    labels = torch.cat([d.train_labels, d.test_labels])
    assert labels.bincount().tolist() == [200, 100]
    cats = _bag(torch.as_tensor(images[:200]).permute(0, 3, 1, 2))
    assert all(
        cats[bytes((x * 255).round().to(torch.uint8).numpy())] for x in everything[labels == 0]
    )
    again = load_data(f"folder:{root}", binarize="none")
    torch.testing.assert_close(again.test, d.test)  # fixed seed: the same test split
    other = load_data(f"folder:{root}", binarize="none", split_seed=1, test_fraction=0.2)
    assert len(other.test) == 60 and _bag(other.test) != _bag(d.test)


def test_unlabelled_folder_with_train_and_test_subfolders_and_grey_images(tmp_path):
    grey = np.random.default_rng(1).integers(0, 256, (12, 20, 24), dtype=np.uint8)
    _save(tmp_path / "train", grey[:9])
    _save(tmp_path / "test", grey[9:])
    d = load_data(f"folder:{tmp_path}", binarize="none")
    assert d.x_shape == (1, 20, 24) and (len(d.train), len(d.test)) == (9, 3)
    torch.testing.assert_close(
        d.test[:, 0], torch.as_tensor(grey[9:]) / 255.0
    )  # sorted file names, no shuffling
    assert set(d.train_labels.tolist()) == {UNLABELLED}


def test_grey_and_rgb_together_become_rgb_and_image_size_resizes_and_crops(tmp_path):
    _save(tmp_path, [np.full((40, 40), 7, np.uint8)])
    _save(tmp_path, [np.full((40, 40, 3), (10, 20, 30), np.uint8)], start=1)
    _save(tmp_path, [np.full((32, 48, 3), 200, np.uint8)], ext="jpg", start=2)
    with pytest.raises(ValueError, match=r"2 different sizes.*image_size=N"):
        load_data(f"folder:{tmp_path}", binarize="none")
    d = load_data(f"folder:{tmp_path}", binarize="none", image_size=16, test_fraction=0.34)
    x = torch.cat([d.train, d.test])
    assert x.shape == (3, 3, 16, 16)
    colours = {tuple((im[:, 8, 8] * 255).round().int().tolist()) for im in x}
    assert (7, 7, 7) in colours and (
        10,
        20,
        30,
    ) in colours  # grey replicated over RGB; constant images survive
    assert any(abs(c[0] - 200) <= 2 for c in colours)  # the JPEG, within its compression error


def test_fit_size_keeps_constant_images_and_crops_the_centre():
    x = torch.zeros(1, 1, 8, 12, dtype=torch.uint8)
    x[..., 1:11] = 255  # all but the outer columns
    y = fit_size(x, 4)  # shorter side 8 → 4: 4×6, the centre 4×4 is inside the bright band
    assert y.shape == (1, 1, 4, 4) and y.dtype == torch.uint8 and (y == 255).all()


def test_arrays_in_every_layout_npz_keys_and_pt_tuples(tmp_path):
    images = _rgb(50, 8)
    labels = np.arange(50) % 5
    np.save(tmp_path / "nhwc.npy", images)
    np.save(tmp_path / "labels.npy", labels)
    a = load_data(f"npy:{tmp_path / 'nhwc.npy'},{tmp_path / 'labels.npy'}", binarize="none")
    assert a.x_shape == (3, 8, 8) and len(a.test) == 5
    assert _bag(torch.cat([a.train, a.test])) == _bag(torch.as_tensor(images).permute(0, 3, 1, 2))
    np.savez(
        tmp_path / "split.npz",
        images=images.transpose(0, 3, 1, 2) / 255.0,
        labels=labels,
        x_test=images[:4].transpose(0, 3, 1, 2),
        y_test=labels[:4],
    )
    b = load_data(f"npy:{tmp_path / 'split.npz'}", binarize="none")
    assert (len(b.train), len(b.test)) == (50, 4) and b.test_labels.tolist() == [0, 1, 2, 3]
    torch.testing.assert_close(b.train, torch.as_tensor(images).permute(0, 3, 1, 2).float() / 255)
    grey = torch.rand(30, 6, 6)
    torch.save((grey, torch.arange(30)), tmp_path / "grey.pt")
    c = load_data(f"pt:{tmp_path / 'grey.pt'}", binarize="none", test_fraction=0.5)
    assert c.x_shape == (1, 6, 6) and len(c.test) == 15
    assert sorted(torch.cat([c.train_labels, c.test_labels]).tolist()) == list(range(30))
    torch.testing.assert_close(
        c.train[:, 0], grey[c.train_labels]
    )  # label i is image i: pairs stay together


def test_python_sources_arrays_and_datasets(tmp_path):
    x = torch.rand(40, 1, 5, 5)
    d = load_data(x, labels=torch.arange(40) % 2, binarize="none")
    assert len(d.train) + len(d.test) == 40 and d.train_labels.max() == 1
    pil = [Image.fromarray(a) for a in _rgb(10, 6)]
    ds = load_data(
        ListDataset([(im, i) for i, im in enumerate(pil)]), binarize="none", test_fraction=0.2
    )
    assert ds.x_shape == (3, 6, 6) and sorted(
        torch.cat([ds.train_labels, ds.test_labels]).tolist()
    ) == list(range(10))


class ListDataset(torch.utils.data.Dataset):
    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def test_trainer_fit_accepts_a_torch_dataset():
    x = (torch.rand(64, 1, 4, 4) * 255).round() / 255
    config = Config(likelihood="categorical", binarize="none", latent_dim=2, hidden_dims=[8])
    vae = build_model(config, (1, 4, 4), num_data=64)
    trainer = Trainer(vae.model, vae.guide, "trace", modules=[vae], progress=False)
    history = trainer.fit(
        torch.utils.data.TensorDataset(x, torch.zeros(64)), epochs=1, batch_size=32, test_x=x[:8]
    )
    # a 256-way categorical: −log p(x) ≤ 8 ln 2 per value at the start, finite after one epoch
    assert len(history) == 1 and -history[0]["test_elbo"] < 16 * 8 * np.log(2) + 10
    with pytest.raises(TypeError, match="torch Dataset"):
        trainer.fit([1, 2, 3], epochs=1)


# ---------------------------------------------------------------------------------------------
# torchvision by name: its own classes, on files laid out the way they read them
# ---------------------------------------------------------------------------------------------
def _idx(path, array):
    magic = {3: 0x803, 1: 0x801}[array.ndim]
    with open(path, "wb") as f:
        f.write(
            np.array([magic, *array.shape], dtype=">i4").tobytes()
            + array.astype(np.uint8).tobytes()
        )


def test_kmnist_and_emnist_through_torchvision_classes(tmp_path):
    image = np.zeros((28, 28), np.uint8)
    image[0, :] = 255  # the first row: transposed, it is the first column
    images, labels = np.stack([image] * 4), np.arange(4)
    raw = tmp_path / "KMNIST" / "raw"
    raw.mkdir(parents=True)
    for split in ("train", "t10k"):
        _idx(raw / f"{split}-images-idx3-ubyte", images)
        _idx(raw / f"{split}-labels-idx1-ubyte", labels)
    k = load_data("kmnist", str(tmp_path), binarize="none")
    assert k.x_shape == (1, 28, 28) and k.train_labels.tolist() == [0, 1, 2, 3]
    assert (k.train[:, 0, 0, :] == 1).all() and k.train[:, 0, 1:, :].sum() == 0
    raw = tmp_path / "EMNIST" / "raw"
    raw.mkdir(parents=True)
    for split in ("train", "test"):
        _idx(raw / f"emnist-balanced-{split}-images-idx3-ubyte", images)
        _idx(raw / f"emnist-balanced-{split}-labels-idx1-ubyte", labels)
    e = load_data("emnist", str(tmp_path), binarize="none", image_size=14)
    assert (
        e.x_shape == (1, 14, 14)
        and e.train[:, 0, :, 0].min() > 0.4
        and e.train[:, 0, :, 3:].sum() == 0
    )


def test_lazy_torchvision_dataset_omniglot_is_read_item_by_item(monkeypatch, tmp_path):
    import torchvision

    class FakeOmniglot(
        torch.utils.data.Dataset
    ):  # torchvision's Omniglot yields (PIL image "L", class)
        def __init__(self, root, background=True, download=False):
            self.n = 6 if background else 2

        def __len__(self):
            return self.n

        def __getitem__(self, i):
            return Image.fromarray(np.full((105, 105), 255, np.uint8)), i

    monkeypatch.setattr(torchvision.datasets, "Omniglot", FakeOmniglot)
    d = load_data("omniglot", str(tmp_path), binarize="none", image_size=28)
    assert d.x_shape == (1, 28, 28) and len(d.train) == 6 and len(d.test) == 2
    assert d.train.max() == 0  # white background → 0 (strokes are 1, as in MNIST)


def test_offline_torchvision_dataset_names_the_manual_fix(monkeypatch, tmp_path):
    import torchvision

    def no_internet(self):
        raise OSError("no internet")

    monkeypatch.setattr(torchvision.datasets.CIFAR10, "download", no_internet)
    with pytest.raises(RuntimeError) as e:
        load_data("cifar10", str(tmp_path))
    message = str(e.value)
    assert (
        "torchvision.datasets.CIFAR10('DIR', download=True" in message and "data_dir=DIR" in message
    )
    assert "\n" not in message


# ---------------------------------------------------------------------------------------------
# bad data: one line each
# ---------------------------------------------------------------------------------------------
def _bad_png(path):
    path.mkdir(parents=True, exist_ok=True)
    (path / "broken.png").write_bytes(b"not an image at all")


def _truncated_png(path):
    _save(path, _rgb(1))
    data = (path / "0000.png").read_bytes()
    (path / "0000.png").write_bytes(data[: len(data) // 2])


BAD = [
    (
        "empty folder",
        lambda p: (p / "empty").mkdir(),
        "folder:{}/empty",
        ValueError,
        "holds no images",
    ),
    ("missing folder", lambda p: None, "folder:{}/absent", FileNotFoundError, "does not exist"),
    (
        "unreadable file",
        lambda p: _bad_png(p / "bad"),
        "folder:{}/bad",
        ValueError,
        r"cannot read image .*broken.png",
    ),
    (
        "truncated file",
        lambda p: _truncated_png(p / "cut"),
        "folder:{}/cut",
        ValueError,
        r"cannot read .*0000.png",
    ),
    (
        "mixed sizes",
        lambda p: (_save(p / "mix", _rgb(1, 8)), _save(p / "mix", _rgb(1, 9), start=1)),
        "folder:{}/mix",
        ValueError,
        r"different sizes.*image_size=N",
    ),
    (
        "top level and classes",
        lambda p: (_save(p / "both", _rgb(1)), _save(p / "both" / "a", _rgb(1))),
        "folder:{}/both",
        ValueError,
        r"both at its top level .* and in subfolders",
    ),
    (
        "rank 2",
        lambda p: np.save(p / "flat.npy", np.zeros((5, 784))),
        "npy:{}/flat.npy",
        ValueError,
        "rank 2",
    ),
    (
        "rank 5",
        lambda p: np.save(p / "r5.npy", np.zeros((2, 1, 1, 4, 4))),
        "npy:{}/r5.npy",
        ValueError,
        "rank 5",
    ),
    (
        "channels",
        lambda p: np.save(p / "c5.npy", np.zeros((2, 5, 4, 4))),
        "npy:{}/c5.npy",
        ValueError,
        "neither",
    ),
    (
        "floats above 1",
        lambda p: np.save(p / "big.npy", np.full((3, 4, 4), 1.5)),
        "npy:{}/big.npy",
        ValueError,
        r"floats in \[1.5, 1.5\].*divide 8-bit values by 255",
    ),
    (
        "integers above 255",
        lambda p: np.save(p / "i.npy", np.full((3, 4, 4), 300)),
        "npy:{}/i.npy",
        ValueError,
        r"integers in \[300, 300\]",
    ),
    (
        "NaN",
        lambda p: np.save(p / "nan.npy", np.full((3, 4, 4), np.nan)),
        "npy:{}/nan.npy",
        ValueError,
        "NaN",
    ),
    (
        "labels of the wrong length",
        lambda p: (
            np.save(p / "x.npy", np.zeros((3, 4, 4))),
            np.save(p / "y.npy", np.zeros(2, int)),
        ),
        "npy:{0}/x.npy,{0}/y.npy",
        ValueError,
        r"one integer label per image \(3\)",
    ),
    (
        "not an array file",
        lambda p: (p / "x.csv").write_text("1,2"),
        "npy:{}/x.csv",
        ValueError,
        ".npy, .npz or .pt",
    ),
    ("unknown name", lambda p: None, "imagenet", ValueError, "folder:PATH"),
]


@pytest.mark.parametrize("what, make, source, error, message", BAD, ids=[b[0] for b in BAD])
def test_bad_data_gets_one_line(tmp_path, what, make, source, error, message):
    make(tmp_path)
    with pytest.raises(error, match=message) as e:
        load_data(source.format(tmp_path), binarize="none")
    assert "\n" not in str(e.value)
