"""Per-sample binary search over the trade-off constant c of penalty-form attacks.

C&W, EAD and L-BFGS minimize D(δ) + c·L(x + δ) (or c·D + L) for a constant c that must be large
enough for the attack to succeed and small enough to keep δ small. Carlini & Wagner (2017, §V):
start from c₀; after each run, on success the smallest known sufficient c is ``upper = min(upper,
c)``, on failure the largest known insufficient c is ``lower = max(lower, c)``; the next c is the
midpoint (lower + upper)/2 once an upper bound exists, else c·``factor`` (×10 in the paper).
One constant per sample; state is indexed by the sample's row in the batch.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["ConstantSearch"]


class ConstantSearch:
    """Binary search over c per sample: ``c[rows]`` to read, ``update(rows, success)`` to step.

    Args:
        n: number of samples (rows of the batch).
        initial: c₀ for every sample.
        factor: growth of c while no run has succeeded yet.
        increasing: True when a larger c makes success *more* likely (C&W: D + c·L); False for
            the form c·D + L (L-BFGS), where a smaller c does — the search then runs on 1/c.
    """

    def __init__(
        self,
        n: int,
        initial: float,
        *,
        factor: float = 10.0,
        increasing: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if not (math.isfinite(initial) and initial > 0):
            raise ValueError(f"initial_const: expected a number > 0, got {initial!r}")
        if not (math.isfinite(factor) and factor > 1):
            raise ValueError(f"factor: expected a number > 1, got {factor!r}")
        self.factor = factor
        self.increasing = increasing
        start = float(initial) if increasing else 1.0 / float(initial)
        # s = c (increasing) or 1/c; success is monotone increasing in s.
        self._s = torch.full((n,), start, device=device, dtype=dtype)
        self.lower = torch.zeros(n, device=device, dtype=dtype)  # largest s known to fail
        self.upper = torch.full((n,), math.inf, device=device, dtype=dtype)  # smallest success

    @property
    def c(self) -> Tensor:
        """The current constant per sample, shape (n,)."""
        return self._s if self.increasing else 1.0 / self._s

    def found(self) -> Tensor:
        """(n,) bool: some run has succeeded for this sample."""
        return torch.isfinite(self.upper)

    def update(self, rows: Tensor, success: Tensor) -> None:
        """Record whether the run with ``c[rows]`` succeeded and set the next constant."""
        s = self._s[rows]
        upper = torch.where(success, torch.minimum(self.upper[rows], s), self.upper[rows])
        lower = torch.where(success, self.lower[rows], torch.maximum(self.lower[rows], s))
        nxt = torch.where(torch.isfinite(upper), (lower + upper) / 2, s * self.factor)
        self.upper[rows] = upper
        self.lower[rows] = lower
        self._s[rows] = nxt
