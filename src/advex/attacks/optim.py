"""Optimizers for batches of independent per-sample problems, with state that follows early stop.

``torch.optim`` keeps one state per parameter tensor; an attack's parameter is a batch of
independent problems whose rows leave the batch as they finish (``Tracker.shrink``). These
optimizers keep their state row-aligned and drop rows with ``keep``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["Adam"]


class Adam:
    """Adam (Kingma & Ba 2015) descending a batch of independent problems, one row per sample.

    m ← β₁m + (1−β₁)g,  v ← β₂v + (1−β₂)g²,  w ← w − lr·m̂/(√v̂ + ε) with per-row bias corrections
    m̂ = m/(1−β₁^{t_i}), v̂ = v/(1−β₂^{t_i}): each row has its own step count t_i, so ``reset(rows)``
    restarts some samples' problems (e.g. C&W's next constant) while the others go on. ``lr`` is a
    number or a per-sample tensor (B,).
    """

    def __init__(
        self, lr: float | Tensor, *, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8
    ) -> None:
        if isinstance(lr, float | int) and not (math.isfinite(lr) and lr > 0):
            raise ValueError(f"lr: expected a number > 0, got {lr!r}")
        if not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"betas: expected two numbers in [0, 1), got {betas!r}")
        self.lr = lr
        self.betas = betas
        self.eps = eps
        self.m: Tensor | None = None
        self.v: Tensor | None = None
        self.t: Tensor | None = None

    def reset(self, rows: Tensor | None = None) -> None:
        """Restart the moments and step counts of ``rows`` ((B,) bool), or of every row."""
        if rows is None or self.m is None or self.v is None or self.t is None:
            self.m = self.v = self.t = None
            return
        col = rows.reshape((-1,) + (1,) * (self.m.ndim - 1))
        self.m = self.m.masked_fill(col, 0.0)
        self.v = self.v.masked_fill(col, 0.0)
        self.t = self.t.masked_fill(rows, 0.0)

    def step(self, w: Tensor, grad: Tensor) -> Tensor:
        """One descent step on ``w`` (B, ...) with gradient ``grad``; returns the new ``w``."""
        b1, b2 = self.betas
        if self.m is None or self.v is None or self.t is None:
            self.m = torch.zeros_like(grad)
            self.v = torch.zeros_like(grad)
            self.t = torch.zeros(grad.shape[0], device=grad.device, dtype=grad.dtype)
        self.t += 1
        self.m.mul_(b1).add_(grad, alpha=1 - b1)
        self.v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
        shape = (-1,) + (1,) * (w.ndim - 1)
        c1 = (1 - b1**self.t).reshape(shape)
        c2 = (1 - b2**self.t).reshape(shape)
        lr = self.lr.reshape(shape) if isinstance(self.lr, Tensor) else self.lr
        return w - lr * (self.m / c1) / ((self.v / c2).sqrt() + self.eps)

    def keep(self, mask: Tensor) -> None:
        """Keep only the rows where ``mask`` (B,) is True (the samples still being attacked)."""
        if self.m is not None and self.v is not None and self.t is not None:
            self.m, self.v, self.t = self.m[mask], self.v[mask], self.t[mask]
        if isinstance(self.lr, Tensor):
            self.lr = self.lr[mask]
