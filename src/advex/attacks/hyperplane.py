"""Exact minimal-norm projection onto a hyperplane intersected with a box (used by FAB).

Per sample, with x inside the box lo ≤ x ≤ hi, solve

    min_δ ‖δ‖_p   s.t.   ⟨w, x + δ⟩ + b = 0,   lo ≤ x + δ ≤ hi,      p ∈ {∞, 2, 1},

by sorting and cumulative sums, with no iterative solver. Let c = −(⟨w, x⟩ + b), the change of
⟨w, ·⟩ the step must make, and σ = sign(c). A coordinate moved against σ·w_i would only cost
norm, so δ_i = σ·sign(w_i)·m_i with 0 ≤ m_i ≤ u_i, where u_i is the room the box leaves in that
direction, and the constraint reads Σ a_i m_i = |c| with a_i = |w_i|:

* L2 (KKT): m_i = min(λ·a_i, u_i). g(λ) = Σ a_i min(λ a_i, u_i) is piecewise linear and
  increasing with breakpoints u_i/a_i; sorted, the cumulative sums give g at each breakpoint and
  λ in closed form on the piece where g(λ) = |c|.
* L∞: m_i = min(t, u_i) for the smallest t ≥ 0 with g(t) = Σ a_i min(t, u_i) = |c| — the same
  computation with breakpoints u_i (coordinates with w_i = 0 stay at 0).
* L1: a fractional knapsack (a linear program): the cheapest coordinates per unit of ⟨w, δ⟩
  are those of largest a_i; fill them in that order, each up to u_i, until Σ a_i m_i = |c|.

If |c| > Σ a_i u_i the hyperplane cannot be reached inside the box; then every coordinate with
w_i ≠ 0 moves to its limit (m = u), the box point with the largest progress σ⟨w, δ⟩ toward the
hyperplane (and of smallest norm among those).

Croce, Hein. Minimally distorted adversarial examples with a fast adaptive boundary attack.
ICML 2020. arXiv:1907.02044 (Section 3.1 and the supplement: the projections it needs).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["project_hyperplane"]


def project_hyperplane(
    x: Tensor, w: Tensor, b: Tensor, lo: Tensor | float, hi: Tensor | float, norm: str
) -> Tensor:
    """The smallest δ (in ``norm``) with ⟨w, x + δ⟩ + b = 0 and lo ≤ x + δ ≤ hi (see module doc).

    Args:
        x: points (B, ...), assumed inside the box.
        w: hyperplane normals, shaped like ``x``.
        b: offsets (B,).
        lo, hi: the box, floats or tensors broadcastable to ``x``.
        norm: 'linf', 'l2' or 'l1'.

    Returns:
        δ shaped like ``x``. Where the hyperplane is out of reach inside the box, the box point
        that gets closest to it (largest progress of ⟨w, δ⟩ toward −(⟨w, x⟩ + b)).
    """
    if norm not in ("linf", "l2", "l1"):
        raise ValueError(f"norm: expected one of linf, l2, l1, got {norm!r}")
    if w.shape != x.shape or b.shape != x.shape[:1]:
        raise ValueError(
            f"w, b: expected shapes {tuple(x.shape)} and ({x.shape[0]},), "
            f"got {tuple(w.shape)} and {tuple(b.shape)}"
        )
    flat_x, flat_w = x.flatten(1), w.flatten(1)
    c = -((flat_w * flat_x).sum(dim=1) + b).unsqueeze(1)  # (B, 1)
    toward = torch.where(c < 0, -flat_w, flat_w)  # σ·w: the direction that makes progress
    a = toward.abs()
    # room in the direction sign(σ·w_i): up to hi when positive, down to lo when negative
    up = (torch.as_tensor(hi, dtype=x.dtype, device=x.device) - x).flatten(1)
    down = (x - torch.as_tensor(lo, dtype=x.dtype, device=x.device)).flatten(1)
    room = torch.where(toward > 0, up.expand_as(a), down.expand_as(a)).clamp_min(0)
    room = torch.where(a > 0, room, torch.zeros_like(room))
    need = c.abs()
    if norm == "l1":
        m = _fill_largest_first(a, room, need)
    else:
        m = _water_fill(a, a if norm == "l2" else torch.ones_like(a), room, need)
    return (toward.sign() * m).reshape(x.shape)


def _water_fill(a: Tensor, rate: Tensor, room: Tensor, need: Tensor) -> Tensor:
    """m = min(τ·rate, room) with Σ a·m = need for the smallest τ ≥ 0 (or m = room if none).

    g(τ) = Σ a_i min(τ r_i, u_i); breakpoints τ_i = u_i/r_i, sorted ascending. On the piece after
    the k-th breakpoint, g(τ) = P_k + τ·S_k with P_k = Σ_{j≤k} a_j u_j, S_k = Σ_{j>k} a_j r_j.
    """
    active = (a > 0) & (rate > 0)
    knots = torch.where(active, room / rate.clamp_min(1e-30), torch.full_like(a, math.inf))
    knots, order = knots.sort(dim=1)
    a_s, r_s, u_s = a.gather(1, order), rate.gather(1, order), room.gather(1, order)
    filled = (a_s * u_s).cumsum(dim=1)  # P_k
    tail = (a_s * r_s).flip(1).cumsum(dim=1).flip(1)  # Σ_{j≥k}, summed from the end
    rest = torch.cat([tail[:, 1:], torch.zeros_like(tail[:, :1])], dim=1)  # S_k = Σ_{j>k}
    at_knot = torch.where(
        torch.isinf(knots), torch.full_like(knots, math.inf), filled + knots * rest
    )
    passed = (at_knot <= need).sum(dim=1, keepdim=True)  # τ lies after this many breakpoints
    prev = (passed - 1).clamp_min(0)
    p_k = torch.where(passed > 0, filled.gather(1, prev), torch.zeros_like(need))
    s_k = torch.where(passed > 0, rest.gather(1, prev), tail[:, :1])
    tau = torch.where(s_k > 0, (need - p_k) / s_k.clamp_min(1e-30), torch.full_like(need, math.inf))
    # τ = ∞ (out of reach): every active coordinate at its limit
    return torch.where(active, torch.minimum(tau * rate, room), torch.zeros_like(room))


def _fill_largest_first(a: Tensor, room: Tensor, need: Tensor) -> Tensor:
    """The L1 solution: coordinates by decreasing a_i, each up to its room, until Σ a·m = need."""
    a_s, order = a.sort(dim=1, descending=True)
    u_s = room.gather(1, order)
    gain = a_s * u_s
    before = gain.cumsum(dim=1) - gain  # progress made by the larger coordinates
    share = (need - before).clamp_min(0) / a_s.clamp_min(1e-30)
    m_s = torch.where(a_s > 0, torch.minimum(share, u_s), torch.zeros_like(u_s))
    return torch.zeros_like(m_s).scatter(1, order, m_s)
