"""Random Self-Ensemble (RSE): noise layers inside the network and an ensemble over the noise.

RSE puts a layer z ↦ z + ε, ε ~ N(0, σ²I), in front of the network's layers, active both in
training and at inference: σ = σ_init before the first layer (noise on the input) and σ_inner
before every other one. At inference it predicts with the average of the softmax outputs over
n independent passes (the "self-ensemble"),

    p(x) = (1/n) Σ_{i=1..n} softmax(f_{ε_i}(x)),

which ``SelfEnsemble`` returns as log p(x): valid logits (softmax(log p) = p) for attacks.

The noise layers are advex ``Defense``s (``randomized = True``), so ``is_randomized`` sees them
in any model that contains them, ``seed(model, s)`` reseeds them, and the adaptive evaluation
applies EOT. The paper trains the network with the noise layers in place (the function below
only builds the architecture; train it, e.g. with ``advex.defenses.training``, for the
accuracies the paper reports).

Differences from the paper: noise goes before every ``Conv2d`` and ``Linear`` layer (the paper
places it before the convolutions of its VGG/ResNet models; ``layers=`` chooses).

Liu, Cheng, Zhang, Hsieh. Towards Robust Neural Networks via Random Self-ensemble. ECCV 2018.
arXiv:1712.00673
"""

from __future__ import annotations

import copy
import math
from typing import ClassVar

import torch
from torch import Tensor, nn

from advex.defenses.base import Defense

__all__ = ["NoiseLayer", "SelfEnsemble", "random_self_ensemble", "strip_noise"]


def _check_sigma(name: str, value: object) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise TypeError(f"{name}: expected a number, got {type(value).__name__}")
    v = float(value)
    if not (math.isfinite(v) and v >= 0):
        raise ValueError(f"{name}: expected a finite number >= 0, got {v}")
    return v


class NoiseLayer(Defense):
    """z ↦ z + σ·ε, ε ~ N(0, I) drawn afresh on every call from the layer's generator, for
    inputs of any shape; active in training and in eval mode (it is part of the model).
    σ = 0 returns its input unchanged.

    Args:
        sigma: standard deviation σ ≥ 0.
        seed: of the layer's generator.

    Liu, Cheng, Zhang, Hsieh. Towards Robust Neural Networks via Random Self-ensemble.
    ECCV 2018. arXiv:1712.00673
    """

    randomized: ClassVar[bool] = True
    differentiable: ClassVar[bool] = True

    def __init__(self, sigma: float, *, seed: int = 0) -> None:
        super().__init__(seed=seed)
        self.sigma = _check_sigma("sigma", sigma)

    def forward(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor) or not x.is_floating_point():
            raise TypeError("x: expected a floating-point torch.Tensor")
        if self.sigma == 0:
            return x
        return x + self.sigma * self.randn(*x.shape, like=x)

    def extra_repr(self) -> str:
        return f"sigma={self.sigma}"


def _targets(
    model: nn.Module, layers: tuple[type[nn.Module], ...]
) -> list[tuple[nn.Module, str, nn.Module]]:
    """(parent, attribute, layer) for every layer of the given types in module order, skipping
    the inside of advex defenses and layers already behind a NoiseLayer."""
    found: list[tuple[nn.Module, str, nn.Module]] = []
    seen: set[int] = set()

    def visit(parent: nn.Module) -> None:
        children = list(parent.named_children())
        for i, (name, child) in enumerate(children):
            if id(child) in seen or isinstance(child, Defense):
                continue
            seen.add(id(child))
            already = i > 0 and isinstance(children[i - 1][1], NoiseLayer)
            if isinstance(child, layers) and not already:
                found.append((parent, name, child))
            else:
                visit(child)

    visit(model)
    return found


def random_self_ensemble(
    model: nn.Module,
    *,
    init_sigma: float = 0.2,
    inner_sigma: float = 0.1,
    seed: int = 0,
    layers: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.Linear),
) -> nn.Module:
    """A copy of ``model`` with a ``NoiseLayer`` in front of every ``Conv2d``/``Linear`` layer.

    Every such child ``name`` of a submodule is replaced by ``nn.Sequential(NoiseLayer(σ), layer)``
    (the model itself, when it is one such layer, likewise): σ = ``init_sigma`` for the first in
    module order (registration order, the order of a Sequential's layers), ``inner_sigma`` for
    the others; the i-th layer's generator is seeded ``seed + i`` (as ``seed(model, seed)``
    does). ``model`` is not modified: the result is a ``copy.deepcopy`` with its weights, so load
    plain weights into ``model`` first. Layers inside advex defenses are left alone.

    State-dict keys change: ``conv1.weight`` becomes ``conv1.1.weight`` (the layer is the second
    entry of its Sequential; noise layers hold no state). A state dict saved from the result
    loads into ``random_self_ensemble`` of a fresh instance of the architecture; ``strip_noise``
    gives back a plain model with the original keys.

    Args:
        model: any ``nn.Module`` (an ``nn.Sequential``, a module with named children, an
            ``advex.Classifier``).
        init_sigma: σ of the noise before the first layer (on the input).
        inner_sigma: σ of the noise before every other layer.
        seed: seed of the first noise layer.
        layers: the layer types to put noise in front of.

    Raises:
        TypeError: ``model`` is not an nn.Module, or a bad argument type.
        ValueError: a negative or non-finite σ; ``model`` has no layer of the given types.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    init = _check_sigma("init_sigma", init_sigma)
    inner = _check_sigma("inner_sigma", inner_sigma)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seed: expected an int, got {type(seed).__name__}")
    if (
        not isinstance(layers, tuple)
        or not layers
        or not all(isinstance(t, type) and issubclass(t, nn.Module) for t in layers)
    ):
        raise TypeError(f"layers: expected a non-empty tuple of nn.Module types, got {layers!r}")
    new = copy.deepcopy(model)
    if isinstance(new, layers):
        return nn.Sequential(NoiseLayer(init, seed=seed), new)
    targets = _targets(new, layers)
    if not targets:
        names = ", ".join(t.__name__ for t in layers)
        raise ValueError(
            f"model: has no layer of the types {names} without a NoiseLayer in front of it"
        )
    for i, (parent, name, layer) in enumerate(targets):
        noise = NoiseLayer(init if i == 0 else inner, seed=seed + i)
        setattr(parent, name, nn.Sequential(noise, layer))
    return new


def strip_noise(model: nn.Module) -> nn.Module:
    """A copy of ``model`` without its noise layers: every ``nn.Sequential(NoiseLayer, layer)``
    (as ``random_self_ensemble`` builds them) is replaced by ``layer``, other NoiseLayers by
    ``nn.Identity``; the state-dict keys are those of the plain model again."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")

    def plain(m: nn.Module) -> nn.Module | None:
        if isinstance(m, NoiseLayer):
            return nn.Identity()
        if isinstance(m, nn.Sequential) and len(m) == 2 and isinstance(m[0], NoiseLayer):
            return m[1]
        return None

    new = copy.deepcopy(model)
    top = plain(new)
    if top is not None:
        new = top
    for parent in list(new.modules()):
        for name, child in list(parent.named_children()):
            replacement = plain(child)
            if replacement is not None:
                setattr(parent, name, replacement)
    return new


class SelfEnsemble(nn.Module):
    """The RSE prediction rule: log of the softmax averaged over ``samples`` passes,

        log p(x) = logsumexp_i log_softmax(f_{ε_i}(x)) − log n,

    shape (B, K); exp of each row sums to one, and as logits they give softmax = p. Each pass
    draws fresh noise from the noise layers inside ``model`` (differentiable: an attack on it
    is an EOT attack with n samples per step).

    A plain ``nn.Module``, not a ``Defense``: it maps inputs to log-probabilities, not pixels
    to pixels, so it wraps the model instead of going in front of it (``defend`` does not
    apply). Its randomness is that of the ``NoiseLayer``s inside ``model``, which
    ``is_randomized`` and ``seed`` find through it.

    Args:
        model: a network with noise layers, e.g. from ``random_self_ensemble``; outputs logits.
        samples: n ≥ 1 forward passes per call (the paper uses 10).

    Liu, Cheng, Zhang, Hsieh. Towards Robust Neural Networks via Random Self-ensemble.
    ECCV 2018. arXiv:1712.00673
    """

    def __init__(self, model: nn.Module, samples: int = 10) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(samples, int) or isinstance(samples, bool):
            raise TypeError(f"samples: expected an int, got {type(samples).__name__}")
        if samples < 1:
            raise ValueError(f"samples: expected an int >= 1, got {samples}")
        self.model = model
        self.samples = samples

    def forward(self, x: Tensor) -> Tensor:
        logp = torch.stack([torch.log_softmax(self.model(x), dim=1) for _ in range(self.samples)])
        return torch.logsumexp(logp, dim=0) - math.log(self.samples)

    def extra_repr(self) -> str:
        return f"samples={self.samples}"
