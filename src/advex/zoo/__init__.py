"""The model zoo: small architectures with trained weights, shipped as safetensors.

``list_models()`` describes what ships (one ``ModelCard`` each); ``load(name)`` returns a
ready ``advex.Classifier`` (eval mode, bounds (0, 1)); ``load_file(path, architecture)`` loads
the user's own weights for one of the zoo architectures. Loading never unpickles: weights are
read with ``safetensors.torch.load_file``, and ``.pt``/``.pth`` files only through
``torch.load(..., weights_only=True)``.

The weights were made by ``python -m advex.zoo.train`` (seeded, deterministic on a given
machine); each file's safetensors metadata records the training command, seed and the
accuracies measured right after training, which the cards in ``advex/zoo/cards/`` repeat.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file as _safetensors_load
from torch import Tensor

from advex.model import Classifier
from advex.zoo.architectures import ARCHITECTURES, ZooNet, build

__all__ = [
    "ARCHITECTURES",
    "MODELS",
    "ModelCard",
    "card_path",
    "list_models",
    "load",
    "load_file",
    "weights_path",
]

_HERE = Path(__file__).resolve().parent
_PREFIX = "zoo:"


@dataclass(frozen=True)
class _Entry:
    architecture: str
    dataset: str
    description: str


#: The shipped models: name → (architecture, dataset, description). The numbers live in each
#: weights file's metadata, written by ``advex.zoo.train``.
MODELS: dict[str, _Entry] = {
    "mnist_cnn": _Entry(
        "mnist_cnn", "mnist5k", "small CNN, standard training on the mnist5k train split"
    ),
    "mnist_mlp": _Entry(
        "mnist_mlp", "mnist5k", "784-100-100-10 ReLU MLP, standard training on mnist5k"
    ),
    "mnist_cnn_pgd": _Entry(
        "mnist_cnn",
        "mnist5k",
        "small CNN, PGD adversarial training (Madry et al.) at Linf eps=0.3 on mnist5k",
    ),
    "mnist_wide_pgd": _Entry(
        "mnist_cnn_wide",
        "mnist5k",
        "wide CNN, PGD adversarial training at Linf eps=0.3 with `advex train` on mnist5k",
    ),
    "mnist_cnn_trades": _Entry(
        "mnist_cnn",
        "mnist5k",
        "small CNN, TRADES (beta=6) at Linf eps=0.3 with `advex train` on mnist5k",
    ),
    "digits_mlp": _Entry(
        "digits_mlp", "digits", "64-32-10 ReLU MLP, standard training on the 8x8 digits"
    ),
}


@dataclass(frozen=True)
class ModelCard:
    """What one shipped model is and how well it did when it was trained.

    Attributes:
        name: the zoo name, e.g. ``"mnist_cnn"`` (``load`` also accepts ``"zoo:mnist_cnn"``).
        architecture: key of ``ARCHITECTURES``.
        dataset: the ``advex.data`` spec it was trained on (train split).
        input_shape: (C, H, W) of one input, values in [0, 1].
        num_classes: number of logits.
        description: one line.
        clean_accuracy: accuracy on the dataset's test split, measured after training.
        training_command: the command that produced the weights.
        seed: the training seed.
        train_seconds: training wall time (2 CPU threads), evaluation excluded.
        robust_accuracy: robust accuracy on the test split under ``robust_attack`` (the
            adversarially trained models only), else None.
        robust_attack: the attack and its exact settings, else None.
    """

    name: str
    architecture: str
    dataset: str
    input_shape: tuple[int, int, int]
    num_classes: int
    description: str
    clean_accuracy: float
    training_command: str
    seed: int
    train_seconds: float
    robust_accuracy: float | None = None
    robust_attack: str | None = None


def weights_path(name: str) -> Path:
    """Path of the shipped weights file of model ``name`` (``"zoo:"`` prefix accepted)."""
    return _HERE / "weights" / f"{_canonical(name)}.safetensors"


def card_path(name: str) -> Path:
    """Path of the markdown model card of model ``name`` (``"zoo:"`` prefix accepted)."""
    return _HERE / "cards" / f"{_canonical(name)}.md"


def list_models() -> list[ModelCard]:
    """One card per shipped model, in catalogue order (reads only the files' headers)."""
    return [_card(name) for name in MODELS]


def load(name: str, *, device: str | torch.device = "cpu") -> Classifier:
    """A shipped model as an ``advex.Classifier`` in eval mode with bounds (0, 1).

    Args:
        name: a name from ``list_models()``, optionally prefixed ``"zoo:"``.
        device: where to put the weights.

    Raises:
        ValueError: unknown name (the message lists the known ones).
        FileNotFoundError: the weights file is missing from the installation.
    """
    key = _canonical(name)
    entry = MODELS[key]
    module = build(entry.architecture)
    path = weights_path(key)
    if not path.is_file():
        raise FileNotFoundError(
            f"zoo: weights for {key!r} are missing at {str(path)!r}; "
            f"retrain with: python -m advex.zoo.train --model {key}"
        )
    _load_state(module, _safetensors_load(str(path), device="cpu"), str(path))
    return _wrap(module, device)


def load_file(
    path: str | os.PathLike[str], architecture: str, *, device: str | torch.device = "cpu"
) -> Classifier:
    """The user's weights for a zoo architecture, as an ``advex.Classifier``.

    Args:
        path: a ``.safetensors`` file, or a ``.pt``/``.pth`` file holding a state dict (read
            with ``torch.load(weights_only=True)``; a ``{"state_dict": ...}`` wrapper and the
            ``module.`` prefix of a saved ``advex.Classifier`` are accepted).
        architecture: key of ``ARCHITECTURES``.
        device: where to put the weights.

    Raises:
        FileNotFoundError: no such file.
        ValueError: unknown architecture or file suffix; the keys or shapes do not match.
        TypeError: the file does not hold a mapping of names to tensors.
    """
    if not isinstance(architecture, str) or architecture not in ARCHITECTURES:
        raise ValueError(
            f"architecture: unknown {architecture!r}; known: {', '.join(sorted(ARCHITECTURES))}"
        )
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"path: no such weights file: {str(p)!r}")
    suffix = p.suffix.lower()
    state: object
    if suffix == ".safetensors":
        state = _safetensors_load(str(p), device="cpu")
    elif suffix in (".pt", ".pth"):
        try:
            state = torch.load(str(p), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            raise ValueError(
                f"path: {str(p)!r} holds objects other than tensors and plain containers, "
                "which are never unpickled; save model.state_dict() instead "
                "(or convert it to .safetensors)"
            ) from err
    else:
        raise ValueError(
            f"path: expected a .safetensors, .pt or .pth file, got suffix {p.suffix!r}"
        )
    if isinstance(state, Mapping) and set(state) == {"state_dict"}:
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()
    ):
        raise TypeError(
            f"path: {str(p)!r} does not hold a state dict (a mapping of names to tensors)"
        )
    module = build(architecture)
    _load_state(module, dict(state), str(p))
    return _wrap(module, device)


# ----- helpers -----------------------------------------------------------------------------


def _canonical(name: str) -> str:
    if not isinstance(name, str):
        raise TypeError(f"name: expected a str, got {type(name).__name__}")
    key = name[len(_PREFIX) :] if name.startswith(_PREFIX) else name
    if key not in MODELS:
        raise ValueError(f"name: unknown zoo model {name!r}; known: {', '.join(MODELS)}")
    return key


def _card(name: str) -> ModelCard:
    entry = MODELS[name]
    path = weights_path(name)
    if not path.is_file():
        raise FileNotFoundError(
            f"zoo: weights for {name!r} are missing at {str(path)!r}; "
            f"retrain with: python -m advex.zoo.train --model {name}"
        )
    with safe_open(str(path), framework="pt") as f:
        meta: dict[str, str] = f.metadata() or {}
    arch = ARCHITECTURES[entry.architecture]
    robust = meta.get("robust_accuracy")
    return ModelCard(
        name=name,
        architecture=entry.architecture,
        dataset=entry.dataset,
        input_shape=arch.input_shape,
        num_classes=arch.num_classes,
        description=entry.description,
        clean_accuracy=float(meta["clean_accuracy"]),
        training_command=meta["training_command"],
        seed=int(meta["seed"]),
        train_seconds=float(meta["train_seconds"]),
        robust_accuracy=None if robust is None else float(robust),
        robust_attack=meta.get("robust_attack"),
    )


def _load_state(module: ZooNet, state: dict[str, Tensor], source: str) -> None:
    """Copy ``state`` into ``module``, naming every missing, unexpected or misshapen key."""
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys {missing}")
    if unexpected:
        problems.append(f"unexpected keys {unexpected}")
    if shapes:
        problems.append(f"shape mismatches [{'; '.join(shapes)}]")
    if problems:
        raise ValueError(
            f"weights {source!r} do not fit architecture {type(module).__name__}: "
            + ", ".join(problems)
        )
    for k, v in state.items():
        if not torch.is_floating_point(v):
            raise TypeError(f"weights {source!r}: {k} has dtype {v.dtype}, expected floating")
    module.load_state_dict({k: v.to(torch.float32) for k, v in state.items()}, strict=True)


def _wrap(module: ZooNet, device: str | torch.device) -> Classifier:
    module = module.to(device).eval()
    return Classifier(module, num_classes=module.num_classes, bounds=(0.0, 1.0)).eval()
