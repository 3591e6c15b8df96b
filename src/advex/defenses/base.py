"""What every inference-time defense shares: its kind, its randomness, and how it is composed.

A defense is an ``nn.Module`` that maps inputs in pixel space to inputs in pixel space (an
input transformation, a purifier, a noise layer) and is put in front of a model with
``defend(model, *defenses)``. Two class attributes tell the adaptive evaluation what it needs
to see through (``advex.defenses.adaptive``):

* ``randomized``: the output is random → attacks average their gradients over draws (EOT);
* ``differentiable``: False when the forward pass has no useful gradient (rounding, JPEG,
  median filters) → attacks replace its backward pass (BPDA, ``backward_surrogate``).

Randomness comes only from the module's own ``torch.Generator`` (CPU; draws are moved to the
input's device), so a defense is deterministic under a fixed seed: ``seed(model, s)`` reseeds
every advex defense inside a model.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import ClassVar

import torch
from torch import Tensor, nn

from advex.model import Classifier, as_classifier

__all__ = ["Defense", "defend", "defenses_in", "is_nondifferentiable", "is_randomized", "seed"]


class Defense(nn.Module):
    """Base class of advex's inference-time defenses (pixel space → pixel space).

    Subclasses implement ``forward``; random ones draw through ``self.rand``/``self.randn``/
    ``self.randint`` (the module's generator), never through torch's global generator.
    A defense stays active in eval mode: it is part of the deployed model.
    """

    #: the output depends on random draws (EOT applies)
    randomized: ClassVar[bool] = False
    #: the forward pass has a usable gradient (False: BPDA applies)
    differentiable: ClassVar[bool] = True

    def __init__(self, *, seed: int = 0) -> None:
        super().__init__()
        self.generator = torch.Generator().manual_seed(int(seed))

    def reseed(self, seed: int) -> None:
        """Restart this defense's random stream at ``seed``."""
        self.generator.manual_seed(int(seed))

    def backward_surrogate(self, x: Tensor) -> Tensor:
        """A differentiable function whose gradient stands in for this defense's (BPDA).

        The default is the identity (straight-through: the defense is treated as g(x) ≈ x on
        the backward pass). Defenses with a better smooth approximation override it."""
        return x

    # ----- random draws from the module's own generator ---------------------------------
    def rand(self, *shape: int, like: Tensor) -> Tensor:
        """Uniform [0, 1) draws of ``shape`` on ``like``'s device and dtype."""
        return torch.rand(shape, generator=self.generator).to(like.device, like.dtype)

    def randn(self, *shape: int, like: Tensor) -> Tensor:
        """Standard normal draws of ``shape`` on ``like``'s device and dtype."""
        return torch.randn(shape, generator=self.generator).to(like.device, like.dtype)

    def randint(self, low: int, high: int, *shape: int, like: Tensor) -> Tensor:
        """Integers in [low, high) of ``shape`` on ``like``'s device (int64)."""
        return torch.randint(low, high, shape, generator=self.generator).to(like.device)


def defenses_in(model: nn.Module) -> Iterator[Defense]:
    """Every advex ``Defense`` inside ``model`` (itself included), in module order."""
    for m in model.modules():
        if isinstance(m, Defense):
            yield m


def is_randomized(model: nn.Module) -> bool:
    """Whether ``model`` contains a randomized advex defense."""
    return any(d.randomized for d in defenses_in(model))


def is_nondifferentiable(model: nn.Module) -> bool:
    """Whether ``model`` contains an advex defense without a usable gradient."""
    return any(not d.differentiable for d in defenses_in(model))


def seed(model: nn.Module, value: int) -> None:
    """Reseed every advex defense inside ``model``: the i-th one gets ``value + i``."""
    for i, d in enumerate(defenses_in(model)):
        d.reseed(int(value) + i)


def defend(model: nn.Module, *defenses: nn.Module) -> Classifier:
    """The deployed model ``model ∘ d_k ∘ … ∘ d_1``: defenses applied in the order given.

    ``model`` may be a plain module or an ``advex.Classifier`` (its normalization and bounds are
    kept: the defenses act in pixel space, before the normalization)."""
    if not defenses:
        raise ValueError("defenses: give at least one defense to put in front of the model")
    for i, d in enumerate(defenses):
        if not isinstance(d, nn.Module):
            raise TypeError(f"defenses[{i}]: expected an nn.Module, got {type(d).__name__}")
    clf = as_classifier(model)
    return Classifier(
        nn.Sequential(*defenses, clf),
        num_classes=clf.num_classes,
        bounds=clf.bounds,
        channels_last=False,
    )
