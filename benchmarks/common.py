"""Shared mechanics of the benchmark scripts: batching, peer availability, paired timing ratios,
the ART wrapper, and predictions recomputed outside every library."""

from __future__ import annotations

import statistics

import torch
from torch import Tensor, nn

PEER_MODULES = {"torchattacks": "torchattacks", "foolbox": "foolbox", "art": "art"}


def batches(x: Tensor, y: Tensor, size: int) -> list[tuple[Tensor, Tensor]]:
    return [(x[i : i + size], y[i : i + size]) for i in range(0, len(x), size)]


def available(name: str) -> bool:
    """Whether the peer library ``name`` (torchattacks, foolbox, art) can be imported."""
    try:
        __import__(PEER_MODULES[name])
    except ImportError:
        return False
    return True


def split_available(peers: list[str]) -> tuple[list[str], list[str]]:
    """(installed, missing) among ``peers``; prints a hint when some are missing."""
    missing = [p for p in peers if not available(p)]
    if missing:
        print(f"not installed (run `make bench`): {', '.join(missing)}")
    return [p for p in peers if p not in missing], missing


def paired(times: dict[str, list[float]], a: str, b: str) -> float:
    """Median over runs of time(a)/time(b), each pair measured back to back."""
    return statistics.median(ta / tb for ta, tb in zip(times[a], times[b], strict=True))


def predict(model: nn.Module, x: Tensor, size: int = 500) -> Tensor:
    """Labels of ``model`` on ``x``, computed here (no library's own bookkeeping)."""
    with torch.no_grad():
        return torch.cat([model(x[i : i + size]).argmax(1) for i in range(0, len(x), size)])


def art_classifier(model: nn.Module, x: Tensor, num_classes: int = 10):  # type: ignore[no-untyped-def]
    """ART's PyTorchClassifier around ``model`` for inputs shaped like ``x``, box [0, 1]."""
    from art.estimators.classification import PyTorchClassifier

    return PyTorchClassifier(
        model=model,
        loss=nn.CrossEntropyLoss(),
        input_shape=tuple(x.shape[1:]),
        nb_classes=num_classes,
        clip_values=(0.0, 1.0),
        device_type="cpu",
    )
