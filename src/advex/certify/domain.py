"""The input domain of a certificate: an Lp ball intersected with the box.

D = {x : ‖x − x₀‖_p ≤ ε, lo ≤ x ≤ hi}, for a batch of centres x₀ (B, n) in float64. The
certifiers need two things of it: the tightest elementwise box containing D (``box``), and the
minimum of linear functions over D (``minimize``), which is where backward bound propagation
(CROWN) ends. Both are exact for L∞ and L1; for L2 ``minimize`` returns the larger of two sound
lower bounds, a·x₀ − ε‖a‖₂ (the ball) and the box minimum.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from advex.norms import lp_norm, project_ball

__all__ = ["NORMS", "InputDomain"]

NORMS = ("linf", "l2", "l1")


@dataclass(frozen=True)
class InputDomain:
    """{x : ‖x − center‖_p ≤ eps} ∩ [bounds]; ``center`` (B, n) float64, ``eps`` (B,) float64.

    Build it with ``InputDomain.ball(x, eps, norm, bounds)``.
    """

    center: Tensor
    eps: Tensor
    norm: str
    bounds: tuple[float, float] = (0.0, 1.0)

    @classmethod
    def ball(
        cls,
        x: Tensor,
        eps: float | Tensor,
        norm: str = "linf",
        bounds: tuple[float, float] = (0.0, 1.0),
    ) -> InputDomain:
        """The domain around each row of ``x`` (B, ...) with radius ``eps`` (a float or (B,)).

        Raises:
            ValueError: unknown norm, negative or non-finite eps, x outside the box or NaN.
        """
        if norm not in NORMS:
            raise ValueError(f"norm: expected one of {', '.join(NORMS)}, got {norm!r}")
        center = x.detach().reshape(x.shape[0], -1).to(torch.float64).cpu()
        if not bool(torch.isfinite(center).all()):
            raise ValueError("x: contains NaN or Inf")
        lo, hi = float(bounds[0]), float(bounds[1])
        if not lo < hi:
            raise ValueError(f"bounds: expected lo < hi, got {bounds}")
        if center.numel() and (float(center.min()) < lo - 1e-6 or float(center.max()) > hi + 1e-6):
            raise ValueError(f"x: values must lie in bounds [{lo:g}, {hi:g}]")
        e = torch.as_tensor(eps, dtype=torch.float64).reshape(-1).cpu()
        if e.numel() == 1:
            e = e.expand(center.shape[0]).clone()
        if e.numel() != center.shape[0]:
            raise ValueError(f"eps: expected a number or {center.shape[0]} values, got {e.numel()}")
        if not bool(torch.isfinite(e).all()) or bool((e < 0).any()):
            raise ValueError("eps: must be finite and >= 0")
        return cls(center.clamp(lo, hi), e, norm, (lo, hi))

    @property
    def batch(self) -> int:
        return int(self.center.shape[0])

    def box(self) -> tuple[Tensor, Tensor]:
        """Elementwise bounds (B, n): [max(lo, x₀ − ε), min(hi, x₀ + ε)], tight for every norm."""
        e = self.eps[:, None]
        lo, hi = self.bounds
        return (self.center - e).clamp_min(lo), (self.center + e).clamp_max(hi)

    def contains(self, x: Tensor, tol: float = 1e-9) -> Tensor:
        """Whether each row of ``x`` (B, ...) lies in D (within ``tol``): a (B,) bool tensor."""
        v = x.reshape(x.shape[0], -1).to(torch.float64).cpu()
        size = lp_norm(v - self.center, self.norm)
        lo, hi = self.bounds
        inside = (v >= lo - tol).all(dim=1) & (v <= hi + tol).all(dim=1)
        return inside & (size <= self.eps + tol)

    def project(self, v: Tensor) -> Tensor:
        """Rows ``v`` (B, n) moved to their nearest points of D (Euclidean projection onto the
        ball ∩ box, ``advex.norms.project_ball``)."""
        v = v.reshape(v.shape[0], -1).to(torch.float64)
        delta = project_ball(v - self.center, self.center, self.norm, self.eps, self.bounds)
        return self.center + delta

    def minimize(self, a: Tensor) -> Tensor:
        """min_{x ∈ D} a·x for rows a (B, K, n) → (B, K): exact for L∞ and L1, a sound lower
        bound for L2."""
        lo, hi = self.box()
        box_min = (a.clamp_min(0) * lo[:, None]).sum(-1) + (a.clamp_max(0) * hi[:, None]).sum(-1)
        if self.norm == "linf":
            return box_min
        base = (a * self.center[:, None]).sum(-1)
        if self.norm == "l2":
            return torch.maximum(box_min, base - self.eps[:, None] * a.norm(dim=-1))
        # L1: move coordinates in order of |a_i| (largest first) toward the side that lowers
        # a·x, each up to its box limit, until the budget ε is spent (a fractional knapsack).
        c = self.center[:, None]
        room = torch.where(a > 0, c - lo[:, None], hi[:, None] - c)
        gain, order = a.abs().sort(dim=-1, descending=True)
        room = room.gather(-1, order)
        before = room.cumsum(-1) - room
        step = (self.eps[:, None, None] - before).clamp_min(0).minimum(room)
        return base - (gain * step).sum(-1)
