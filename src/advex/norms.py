"""Norms, exact projections onto ball ∩ box, random points in balls, steepest ascent, quantization.

Everything here works on batches: the first dimension is the sample, the rest is flattened.
Budgets ``eps`` are a float or a per-sample tensor of shape (B,).

Projections solve, per sample, the Euclidean projection onto the feasible set

    Π(v) = argmin_δ ‖δ − v‖₂   s.t.  ‖δ‖_p ≤ ε,   l ≤ δ ≤ u,      l = lo − x ≤ 0 ≤ u = hi − x,

exactly (up to floating point) for every norm:

* L∞: δ = clip(v, max(−ε, l), min(ε, u)) — the two boxes intersect into one.
* L2: by the KKT conditions δ = clip(s·v, l, u) for one s ∈ (0, 1]; ‖clip(s·v)‖² is piecewise
  quadratic in s with breakpoints b_i/|v_i|, so sorting them gives s in closed form.
* L1: δ = sign(v)·clip(|v| − λ, 0, b) for one λ ≥ 0 (soft-thresholding, then the box);
  Σ clip(|v_i| − λ, 0, b_i) is piecewise linear in λ, so sorting its 2D breakpoints gives λ in
  closed form — the sort-based simplex projection of Duchi et al. (ICML 2008) extended to the box.
* L0: keep the k coordinates whose clipped value reduces ‖δ − v‖² the most, i.e. the largest
  v_i² − (v_i − clip(v_i))², then clip; exact for the L0 ball ∩ box.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from advex.threat import ThreatModel

__all__ = [
    "ascent",
    "box_limits",
    "lp_norm",
    "on_grid",
    "project",
    "project_ball",
    "quantize",
    "random_start",
    "round_to_grid",
    "shrink_into",
]

_NEWTON_STEPS = 20
#: A distance to the box's side that no perturbation reaches, standing in for an infinite one;
#: its square is finite in float32.
_FAR = 1e18
_TINY = 1e-12


def _flat(t: Tensor) -> Tensor:
    return t.flatten(1)


def _eps_column(eps: float | Tensor, like: Tensor) -> Tensor:
    """Budget as a (B, 1) tensor on ``like``'s device and dtype."""
    if isinstance(eps, Tensor):
        return eps.to(device=like.device, dtype=like.dtype).reshape(-1, 1)
    return torch.full((like.shape[0], 1), float(eps), device=like.device, dtype=like.dtype)


def lp_norm(delta: Tensor, norm: str) -> Tensor:
    """Per-sample norm ‖δ‖_p of a batch, shape (B,). L0 counts non-zero elements."""
    d = _flat(delta)
    if norm == "linf":
        return d.abs().amax(dim=1) if d.shape[1] else d.new_zeros(d.shape[0])
    if norm == "l2":
        return d.norm(p=2, dim=1)
    if norm == "l1":
        return d.abs().sum(dim=1)
    if norm == "l0":
        return (d != 0).sum(dim=1).to(d.dtype)
    raise ValueError(f"norm: expected one of linf, l2, l1, l0, got {norm!r}")


def box_limits(x: Tensor, bounds: tuple[float, float]) -> tuple[Tensor, Tensor]:
    """Per-element limits (l, u) on δ so that lo ≤ x + δ ≤ hi."""
    return bounds[0] - x, bounds[1] - x


def _project_linf(v: Tensor, eps: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    return torch.minimum(torch.maximum(v, torch.maximum(-eps, lo)), torch.minimum(eps, hi))


def _project_l2(v: Tensor, eps: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    """Exact L2 ∩ box projection: clip(s·v) for the s ∈ [0, 1] with ‖clip(s·v)‖₂ = eps.

    Active-set Newton on s² (no sort): with S the elements saturated at s, B = Σ_S b_i² and A the
    free mass Σ_{not S} v_i², s² ← (eps² − B)/A. Saturation only lowers ‖clip(s·v)‖, so every
    iterate stays feasible and s grows monotonically until S stops changing (3–4 iterations in
    practice). Rows not settled after ``_NEWTON_STEPS`` fall back to the sort-based solution.
    The element-wise work is float arithmetic, in place or into five buffers reused by every
    iteration (masks as 0/1 floats written by ``gt`` into a float tensor): on the CPU, bool
    tensors, ``where`` and freshly allocated memory cost several times a multiply.
    """
    # s comes from detached copies (``out=`` buffers do not support autograd); a caller that
    # differentiates gets the gradient of clip(s·v) with s held fixed
    grad = v.requires_grad or lo.requires_grad or hi.requires_grad
    v_in, lo_in, hi_in = v, lo, hi
    v, lo, hi = v.detach(), lo.detach().to(v.dtype), hi.detach().to(v.dtype)
    # b_i = hi_i if v_i > 0 else −lo_i (0 where v_i = 0, which changes nothing), capped at
    # _FAR so that b² stays finite for an unbounded box (0·∞ would turn the sums into NaN)
    b2 = v.sign().mul_(_FAR).clamp_(lo, hi).square_()
    sat, free = torch.sign(b2), torch.empty_like(v)  # 0/1 masks, reused every iteration
    # elements with b_i = 0 are saturated for every s: leaving their mass out of A from the
    # start makes the first guess s² = eps²/A close (often exact) and saves Newton iterations
    a2 = v.square().mul_(sat)
    # element i saturates once s² > b_i²/v_i² (0/0 = NaN where b_i = 0: never counted as
    # saturated, and with a_i² = b_i² = 0 it adds nothing to either sum)
    ratio = b2 / a2
    eps2 = eps.square()
    s2 = (eps2 / a2.sum(dim=1, keepdim=True).clamp_min(_TINY)).clamp(max=1.0)
    settled = torch.zeros_like(s2, dtype=torch.bool)
    count = None
    for _ in range(_NEWTON_STEPS):
        torch.gt(s2, ratio, out=sat)  # at s² = ratio both sides give the same norm
        # S only grows, so an unchanged count is an unchanged S: s² is final without the sums
        n_sat = sat.sum(dim=1, keepdim=True)
        if count is not None and bool((n_sat == count).all()):
            settled = torch.ones_like(settled)
            break
        count = n_sat
        sat_b2 = torch.mul(b2, sat, out=free).sum(dim=1, keepdim=True)
        # the free mass summed directly, not total − saturated (that cancels in float32)
        free_a2 = torch.sub(1, sat, out=free).mul_(a2).sum(dim=1, keepdim=True)
        nxt = ((eps2 - sat_b2).clamp_min(0) / free_a2.clamp_min(_TINY)).clamp(max=1.0)
        nxt = torch.where(free_a2 > _TINY, torch.maximum(nxt, s2), s2)
        settled = nxt <= s2 * (1 + 1e-6)
        s2 = nxt
        if bool(settled.all()):
            break
    if grad:
        out = torch.clamp(v_in * s2.sqrt(), lo_in, hi_in)
    else:
        out = torch.mul(v, s2.sqrt(), out=free).clamp_(lo, hi)
    if not bool(settled.all()):
        out = torch.where(settled, out, _project_l2_sorted(v_in, eps, lo_in, hi_in))
    return shrink_into(out, eps, "l2")


def _project_l2_sorted(v: Tensor, eps: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    """Exact L2 ∩ box projection by sorting the breakpoints of ‖clip(s·v)‖₂² (no iteration)."""
    a = v.abs()
    b = torch.where(v > 0, hi, -lo).clamp_min(0)
    clipped = torch.minimum(torch.maximum(v, lo), hi)
    inside = clipped.norm(dim=1, keepdim=True) <= eps
    if bool(inside.all()):
        return clipped
    t = torch.where(a > 0, b / a.clamp_min(_TINY), torch.full_like(a, math.inf))
    ts, order = t.sort(dim=1)
    a2 = a.gather(1, order).square()
    b2 = torch.where(torch.isinf(ts), torch.zeros_like(ts), b.gather(1, order).square())
    prefix_b2 = b2.cumsum(dim=1)
    # Σ_{j>k} a_j², summed from the tail (a total minus a prefix loses float32 precision).
    tail = a2.flip(1).cumsum(dim=1).flip(1)
    rest_a2 = torch.cat([tail[:, 1:], torch.zeros_like(tail[:, :1])], dim=1)
    f = torch.where(
        torch.isinf(ts), torch.full_like(ts, math.inf), prefix_b2 + ts.square() * rest_a2
    )
    eps2 = eps.square()
    k = (f <= eps2).sum(dim=1, keepdim=True)  # breakpoints passed: s lies after the k-th one
    zero = torch.zeros_like(eps)
    sat_b2 = torch.where(k > 0, prefix_b2.gather(1, (k - 1).clamp_min(0)), zero)
    free_a2 = torch.where(k > 0, rest_a2.gather(1, (k - 1).clamp_min(0)), tail[:, :1])
    s = torch.sqrt((eps2 - sat_b2).clamp_min(0) / free_a2.clamp_min(_TINY))
    s = torch.where(free_a2 > 0, s, torch.ones_like(s)).clamp(max=1.0)
    out = torch.minimum(torch.maximum(s * v, lo), hi)
    return torch.where(inside, clipped, out)


def _project_l1(v: Tensor, eps: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    a = v.abs()
    b = torch.where(v > 0, hi, -lo).clamp_min(0)
    g0 = torch.minimum(a, b).sum(dim=1, keepdim=True)
    inside = g0 <= eps
    if bool(inside.all()):
        return torch.minimum(torch.maximum(v, lo), hi)
    # g(λ) = Σ clip(a_i − λ, 0, b_i): slope −1 on [max(a_i − b_i, 0), a_i] per coordinate.
    starts = (a - b).clamp_min(0)
    ends = torch.maximum(a, starts)
    events = torch.cat([starts, ends], dim=1)
    slopes = torch.cat([-torch.ones_like(a), torch.ones_like(a)], dim=1)
    events, order = events.sort(dim=1)
    slope_after = slopes.gather(1, order).cumsum(dim=1)
    gaps = events.diff(dim=1)
    g_at = torch.cat([g0, g0 + (slope_after[:, :-1] * gaps).cumsum(dim=1)], dim=1)
    k = ((g_at >= eps).sum(dim=1, keepdim=True) - 1).clamp_min(0)
    e_k = events.gather(1, k)
    s_k = slope_after.gather(1, k)
    lam = e_k + (g_at.gather(1, k) - eps) / (-s_k).clamp_min(1.0)
    lam = torch.where(inside, torch.zeros_like(lam), lam.clamp_min(0))
    out = torch.sign(v) * torch.minimum((a - lam).clamp_min(0), b)
    return shrink_into(out, eps, "l1")


def _project_l0(v: Tensor, eps: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    """Clip to the box, then keep the eps elements whose clipped value lowers ‖δ − v‖₂² most."""
    clipped = torch.minimum(torch.maximum(v, lo), hi)
    gain = v.square() - (v - clipped).square()
    order = gain.argsort(dim=1, descending=True)
    first = torch.arange(v.shape[1], device=v.device).unsqueeze(0) < eps.round()
    keep = torch.zeros_like(first).scatter(1, order, first)
    return torch.where(keep, clipped, torch.zeros_like(clipped))


def shrink_into(delta: Tensor, eps: float | Tensor, norm: str) -> Tensor:
    """Scale the samples whose ‖δ‖_p exceeds eps (by floating-point error) back onto the
    sphere; scaling toward 0 keeps a point that was in the box inside it. Any shape (B, ...);
    eps a float or per-sample (B,) or (B, 1)."""
    n = lp_norm(delta, norm)
    eps_t = torch.as_tensor(eps, dtype=n.dtype, device=n.device).reshape(-1)
    over = n > eps_t
    if not bool(over.any()):  # the common case: no pass over δ
        return delta
    scale = torch.where(over, eps_t / n.clamp_min(_TINY), torch.ones_like(n))
    return delta * scale.view(-1, *[1] * (delta.ndim - 1))


_PROJECTIONS = {"linf": _project_linf, "l2": _project_l2, "l1": _project_l1, "l0": _project_l0}


def project_ball(
    delta: Tensor,
    x: Tensor,
    norm: str,
    eps: float | Tensor | None,
    bounds: tuple[float, float],
) -> Tensor:
    """Euclidean projection of δ onto {‖δ‖_p ≤ eps} ∩ {lo ≤ x + δ ≤ hi} (exact, see module doc).

    ``eps=None`` projects onto the box only. ``eps`` may be a float or a (B,) tensor.
    """
    lo, hi = box_limits(x, bounds)
    if eps is None:
        return torch.minimum(torch.maximum(delta, lo), hi)
    if norm not in _PROJECTIONS:
        raise ValueError(f"norm: expected one of linf, l2, l1, l0, got {norm!r}")
    v = _flat(delta)
    out = _PROJECTIONS[norm](v, _eps_column(eps, v), _flat(lo), _flat(hi))
    return out.reshape(delta.shape)


def project(delta: Tensor, x: Tensor, threat: ThreatModel) -> Tensor:
    """Projection of δ onto the threat model's ball ∩ box (no quantization; see ``quantize``)."""
    return project_ball(delta, x, threat.norm, threat.eps, threat.bounds)


def random_start(
    x: Tensor, threat: ThreatModel, generator: torch.Generator | None = None
) -> Tensor:
    """A random δ, uniform in the ε-ball of the threat's norm, then projected onto the box.

    L∞: U(−ε, ε)^d. L2: ε·u^{1/d}·g/‖g‖ with g Gaussian. L1: ε·(E_1..E_d)/Σ_{0..d}E_j with
    random signs and E_j ~ Exp(1) (uniform in the cross-polytope). L0: ε random elements set
    to values uniform in the box.
    """
    if threat.eps is None:
        raise ValueError("eps: a random start needs a budget; the threat model has eps=None")
    b, d = x.shape[0], x[0].numel()

    def uniform(*shape: int) -> Tensor:
        return torch.rand(shape, generator=generator, device=x.device, dtype=x.dtype)

    eps = threat.eps
    if threat.norm == "linf":
        delta = (uniform(b, d) * 2 - 1) * eps
    elif threat.norm == "l2":
        g = torch.randn((b, d), generator=generator, device=x.device, dtype=x.dtype)
        r = uniform(b, 1) ** (1.0 / d)
        delta = eps * r * g / g.norm(dim=1, keepdim=True).clamp_min(_TINY)
    elif threat.norm == "l1":
        e = -torch.log(uniform(b, d + 1).clamp_min(1e-30))
        signs = torch.randint(0, 2, (b, d), device=x.device, generator=generator) * 2 - 1
        delta = eps * signs.to(x.dtype) * e[:, 1:] / e.sum(dim=1, keepdim=True)
    else:
        lo, hi = (_flat(t) for t in box_limits(x, threat.bounds))
        values = lo + (hi - lo) * uniform(b, d)
        keep = uniform(b, d).argsort(dim=1).argsort(dim=1) < int(eps)
        delta = torch.where(keep, values, torch.zeros_like(values))
    return project(delta.reshape(x.shape), x, threat)


def ascent(
    grad: Tensor,
    norm: str,
    *,
    x_adv: Tensor | None = None,
    bounds: tuple[float, float] | None = None,
    sparsity: float = 0.99,
) -> Tensor:
    """Steepest-ascent direction of unit norm: argmax_{‖s‖_p ≤ 1} ⟨g, s⟩ (or its sparse version).

    L∞: sign(g). L2: g/‖g‖₂. L1: the sparse direction of Tramèr & Boneh (2019): sign(g) on the
    top (1 − sparsity) fraction of coordinates by |g|, scaled to ‖s‖₁ = 1; coordinates where
    ``x_adv`` already sits on the box bound that the step would push through are skipped (Croce &
    Hein 2021), so the step is not wasted. L0 has no useful steepest-ascent direction; attacks
    that support it handle it themselves.
    """
    g = _flat(grad)
    if norm == "linf":
        out = g.sign()
    elif norm == "l2":
        out = g / g.norm(dim=1, keepdim=True).clamp_min(_TINY)
    elif norm == "l1":
        if not 0.0 <= sparsity < 1.0:
            raise ValueError(f"sparsity: expected a fraction in [0, 1), got {sparsity!r}")
        mag = g.abs()
        if x_adv is not None and bounds is not None:
            xa = _flat(x_adv)
            blocked = ((xa >= bounds[1]) & (g > 0)) | ((xa <= bounds[0]) & (g < 0))
            mag = torch.where(blocked, torch.zeros_like(mag), mag)
        k = max(1, math.ceil(round((1.0 - sparsity) * g.shape[1], 9)))
        top = mag.topk(k, dim=1).indices
        mask = torch.zeros_like(g).scatter_(1, top, 1.0) * (mag > 0)
        count = mask.sum(dim=1, keepdim=True).clamp_min(1.0)
        out = g.sign() * mask / count
    elif norm == "l0":
        raise ValueError(
            "norm: 'l0' has no steepest-ascent direction; this attack needs linf/l2/l1"
        )
    else:
        raise ValueError(f"norm: expected one of linf, l2, l1, l0, got {norm!r}")
    return out.reshape(grad.shape)


def _grid_index(x: Tensor, threat: ThreatModel) -> Tensor:
    """Position of x on the grid in units of one step (callers ensure ``levels`` is set)."""
    lo, hi = threat.bounds
    return (x - lo) / (hi - lo) * ((threat.levels or 2) - 1)


def _from_index(k: Tensor, threat: ThreatModel) -> Tensor:
    lo, hi = threat.bounds
    top = (threat.levels or 2) - 1
    if lo == 0.0 and hi == 1.0:
        return k / top
    return lo + k / top * (hi - lo)


def on_grid(x: Tensor, threat: ThreatModel, tol: float = 1e-4) -> Tensor:
    """Per-sample bool (B,): every element is a grid value lo + k·(hi − lo)/(levels − 1)."""
    if threat.levels is None:
        return torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    r = _grid_index(x, threat)
    return _flat((r - r.round()).abs() <= tol).all(dim=1)


def round_to_grid(x: Tensor, threat: ThreatModel) -> Tensor:
    """Each element rounded to the nearest grid value (for clean inputs that are not on it)."""
    if threat.levels is None:
        return x
    return _from_index(_grid_index(x, threat).round().clamp(0, threat.levels - 1), threat)


def quantize(x_adv: Tensor, x: Tensor, threat: ThreatModel, *, snap: bool = True) -> Tensor:
    """Round x' onto the value grid, toward the clean point x, so |x'_i − x_i| does not grow.

    Each element goes to the grid value next to it on x's side (floor when x' > x, ceil when
    x' < x). With x on the grid this never increases any ‖x' − x‖_p and never leaves the box.
    With ``snap`` (the default), values within 1e-4 of a grid step of a grid value are taken to be
    that value (float32 noise: x + 8/255 computed in float32 must stay on level 8, not drop to
    7), which may move them away from x by at most 1e-4 of a grid step; ``snap=False`` rounds
    strictly toward x. Without ``levels`` it returns x' unchanged.
    """
    if threat.levels is None:
        return x_adv
    r = _grid_index(x_adv, threat)
    k = torch.where(x_adv > x, r.floor(), r.ceil())
    if snap:
        near = r.round()
        k = torch.where((r - near).abs() <= 1e-4, near, k)
    return _from_index(k.clamp(0, threat.levels - 1), threat)
