"""One classifier interface for everything advex attacks, trains against, or certifies.

``Classifier`` wraps an ``nn.Module`` that maps inputs in pixel space (within ``bounds``) to
logits. It applies an optional input normalization (x − mean)/std inside the wrapper so attacks
always work in pixel space, puts the module in eval mode for the duration of an attack and
restores every submodule's previous mode afterwards, validates inputs, warns when outputs look
like probabilities rather than logits, and counts forward and backward passes.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["Classifier", "ProbabilityOutputWarning", "as_classifier", "check_inputs"]


class ProbabilityOutputWarning(UserWarning):
    """The model's outputs sum to one and lie in [0, 1]: probabilities, not logits.

    Gradient attacks on softmax outputs suffer vanishing gradients (a form of gradient masking);
    cross-entropy and margin losses expect logits. Remove the final softmax layer.
    """


class Classifier(nn.Module):
    """A classifier ``x ↦ logits`` in pixel space.

    Args:
        module: the network; it receives ``(x − mean)/std`` when a normalization is given.
        mean, std: per-channel normalization applied inside the wrapper (sequences or tensors
            broadcastable to (1, C, 1, 1)); None for none.
        num_classes: number of classes; inferred from the first forward pass when None.
        bounds: the valid input range, used by input checks.
        channels_last: run the module with 4-D weights in channels-last memory format while
            attacking (restored afterwards). Same function, different float summation order
            (differences ~1e-6 in the logits); on CPU max-pooling and convolutions run much
            faster in that layout (about 1.5× for the bundled CNNs, forward and backward).
            None (default): on for modules that contain a ``Conv2d``.
    """

    def __init__(
        self,
        module: nn.Module,
        *,
        mean: Sequence[float] | Tensor | None = None,
        std: Sequence[float] | Tensor | None = None,
        num_classes: int | None = None,
        bounds: tuple[float, float] = (0.0, 1.0),
        channels_last: bool | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(module, nn.Module):
            raise TypeError(f"module: expected a torch.nn.Module, got {type(module).__name__}")
        self.module = module
        self.bounds = (float(bounds[0]), float(bounds[1]))
        self.num_classes = num_classes
        self.mean: Tensor | None
        self.std: Tensor | None
        self.register_buffer("mean", _channel_tensor(mean, "mean"), persistent=False)
        self.register_buffer("std", _channel_tensor(std, "std"), persistent=False)
        if self.std is not None and bool((self.std <= 0).any()):
            raise ValueError("std: every entry must be > 0")
        if channels_last is None:
            channels_last = any(isinstance(m, nn.Conv2d) for m in module.modules())
        self.channels_last = bool(channels_last)
        self.forward_count = 0
        self.backward_count = 0
        self._checked_outputs = False
        self._attacking = False

    def forward(self, x: Tensor) -> Tensor:
        """Logits for a batch of pixel-space inputs, shape (B, K)."""
        z = x
        if self.mean is not None:
            z = z - self.mean.to(z.dtype)
        if self.std is not None:
            z = z / self.std.to(z.dtype)
        if self._attacking and self.channels_last and z.ndim == 4:
            z = z.to(memory_format=torch.channels_last)
        logits = self.module(z)
        if not isinstance(logits, Tensor) or logits.ndim != 2 or logits.shape[0] != x.shape[0]:
            shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
            raise ValueError(
                f"model output: expected logits of shape (B, K) with B={x.shape[0]}, got {shape}"
            )
        self.forward_count += x.shape[0]
        if self.num_classes is None:
            self.num_classes = int(logits.shape[1])
        if not self._checked_outputs:
            self._checked_outputs = True
            warn_if_probabilities(logits.detach())
        return logits

    @property
    def device(self) -> torch.device:
        """Device of the first parameter or buffer (CPU for parameter-free modules)."""
        for p in self.module.parameters():
            return p.device
        for b in self.module.buffers():
            return b.device
        return torch.device("cpu")

    @contextlib.contextmanager
    def attacking(self) -> Iterator[Classifier]:
        """Eval mode and frozen parameters for an attack; every submodule's mode is restored
        (and, with ``channels_last``, every 4-D weight's memory layout). Re-entrant."""
        if self._attacking:
            yield self
            return
        modes = [(m, m.training) for m in self.modules()]
        grads = [(p, p.requires_grad) for p in self.parameters()]
        layouts: list[tuple[Tensor, Tensor]] = []
        self.eval()
        for p, _ in grads:
            p.requires_grad_(False)
        if self.channels_last:
            for t in (*self.module.parameters(), *self.module.buffers()):
                if t.ndim == 4:  # .to restrides even where size-1 dims make layouts ambiguous
                    layouts.append((t, t.data))
                    t.data = t.data.to(memory_format=torch.channels_last)
        self._attacking = True
        try:
            yield self
        finally:
            self._attacking = False
            for t, original in layouts:
                t.data = original
            for m, mode in modes:
                m.training = mode
            for p, flag in grads:
                p.requires_grad_(flag)

    def logits(self, x: Tensor, batch_size: int = 1024) -> Tensor:
        """Logits (B, K) on this model's device, computed in eval mode without gradients."""
        dev = self.device
        with torch.no_grad(), self.attacking():
            return torch.cat(
                [self(x[i : i + batch_size].to(dev)) for i in range(0, len(x), batch_size)]
            )

    def predict(self, x: Tensor, batch_size: int = 1024) -> Tensor:
        """Top-1 labels (B,), computed without gradients in batches."""
        return self.logits(x, batch_size).argmax(dim=1)

    def oracle(self, access: str = "scores", *, budget: int | None = None) -> Any:
        """Black-box access to this model at ``access`` ("scores" or "label"): an
        ``advex.oracle.Oracle`` that gives no gradients and counts every query."""
        from advex.oracle import as_oracle

        return as_oracle(self, access, bounds=self.bounds, budget=budget)  # type: ignore[arg-type]


def looks_like_probabilities(logits: Tensor, atol: float = 1e-3) -> bool:
    """Whether every row of ``logits`` (B, K), K ≥ 2, lies in [0, 1] and sums to 1 (± atol)."""
    if logits.ndim != 2 or logits.numel() == 0 or logits.shape[1] < 2:
        return False
    rows = logits.sum(dim=1)
    return (
        bool((logits >= 0).all())
        and bool((logits <= 1).all())
        and bool(torch.allclose(rows, torch.ones_like(rows), atol=atol))
    )


def warn_if_probabilities(logits: Tensor) -> None:
    """Warn (ProbabilityOutputWarning) when every row is in [0, 1] and sums to 1."""
    if looks_like_probabilities(logits):
        warnings.warn(
            "model outputs look like probabilities (in [0, 1], rows sum to 1): attacks expect "
            "logits, and softmax outputs cause vanishing gradients. Remove the final softmax.",
            ProbabilityOutputWarning,
            stacklevel=3,
        )


def _channel_tensor(value: Sequence[float] | Tensor | None, name: str) -> Tensor | None:
    if value is None:
        return None
    t = torch.as_tensor(value, dtype=torch.float32)
    if t.ndim == 1:
        t = t.reshape(1, -1, 1, 1)
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name}: must be finite")
    return t


def as_classifier(model: Any, *, bounds: tuple[float, float] | None = None) -> Classifier:
    """Coerce what the user has into a ``Classifier`` (an ``nn.Module`` or a Classifier)."""
    if isinstance(model, Classifier):
        return model
    if isinstance(model, nn.Module):
        return Classifier(model, bounds=bounds or (0.0, 1.0))
    raise TypeError(
        f"model: expected a torch.nn.Module or advex.Classifier, got {type(model).__name__}"
    )


def check_inputs(
    x: Any,
    y: Any,
    *,
    bounds: tuple[float, float],
    num_classes: int | None = None,
    target: Any = None,
    name_x: str = "x",
    tol: float = 1e-6,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Validate a batch and its labels; returns (x, y, target) as tensors.

    Raises ``TypeError`` for wrong types or dtypes and ``ValueError`` for wrong shapes, NaN or
    Inf, values outside ``bounds`` (beyond ``tol``), labels out of range or mismatched lengths.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"{name_x}: expected a torch.Tensor, got {type(x).__name__}")
    if not torch.is_floating_point(x):
        raise TypeError(f"{name_x}: expected a floating-point tensor, got dtype {x.dtype}")
    if x.ndim < 2:
        raise ValueError(
            f"{name_x}: expected shape (B, ...) with at least 2 dims, got {tuple(x.shape)}"
        )
    if x.shape[0] == 0:
        raise ValueError(f"{name_x}: the batch is empty")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name_x}: contains NaN or Inf")
    lo, hi = bounds
    xmin, xmax = float(x.min()), float(x.max())
    if xmin < lo - tol or xmax > hi + tol:
        raise ValueError(
            f"{name_x}: values must lie in bounds [{lo:g}, {hi:g}], found [{xmin:g}, {xmax:g}] "
            f"(scale pixels to the bounds; normalization belongs in the Classifier)"
        )
    y_t = _labels(y, "y", x, num_classes)
    t_t = None if target is None else _labels(target, "target", x, num_classes)
    return x, y_t, t_t


def _labels(y: Any, name: str, x: Tensor, num_classes: int | None) -> Tensor:
    if not isinstance(y, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor of class indices, got {type(y).__name__}")
    if torch.is_floating_point(y) or y.dtype == torch.bool or torch.is_complex(y):
        raise TypeError(f"{name}: expected an integer tensor of class indices, got dtype {y.dtype}")
    if y.ndim != 1:
        raise ValueError(f"{name}: expected shape (B,), got {tuple(y.shape)}")
    if y.shape[0] != x.shape[0]:
        raise ValueError(f"{name}: has {y.shape[0]} labels for a batch of {x.shape[0]} inputs")
    if y.numel() and int(y.min()) < 0:
        raise ValueError(f"{name}: labels must be >= 0, found {int(y.min())}")
    if num_classes is not None and y.numel() and int(y.max()) >= num_classes:
        raise ValueError(
            f"{name}: labels must be < num_classes={num_classes}, found {int(y.max())}"
        )
    return y.to(device=x.device, dtype=torch.long)
