"""Spatial transformations shared by the spatial attacks: bilinear resampling under a flow field,
the flow's smoothness loss, and the flow field of a rotation plus translation.

A flow field f (B, 2, H, W) moves where each output pixel reads the input: pixel p = (v_p, u_p)
(row, column) of x' reads x at (v_p + Δv_p, u_p + Δu_p), with Δv = f[:, 0] (rows, down) and
Δu = f[:, 1] (columns, right), in pixels. Bilinear interpolation (Xiao et al. 2018, eq. 1):

    x'(p) = Σ_q x(q) · max(0, 1 − |v_p + Δv_p − v_q|) · max(0, 1 − |u_p + Δu_p − u_q|),

the sum over the pixels q of the image; only the (at most 4) neighbours of the sampling point
have a weight > 0. Border rule (``padding``):

* ``"zeros"`` — the formula as written: q ranges over the image only, so a neighbour outside
  it contributes nothing (the image is extended by zeros: black fill, as Engstrom et al. use);
* ``"border"`` — the sampling point is first clamped into [0, H − 1] × [0, W − 1], so a point
  outside reads the nearest border value (the image extended by replicating its border).

Both are written here with ``floor`` and ``gather`` (no ``grid_sample``), so that a zero flow
is the identity bit for bit (weight exactly 1 on the pixel itself, exactly 0 elsewhere) and an
integer flow copies pixels exactly; inside the image the two rules agree.

Xiao, Zhu, Li, He, Liu, Song. Spatially Transformed Adversarial Examples. ICLR 2018.
arXiv:1801.02612
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor

from advex.attacks import checks
from advex.attacks.base import Attack
from advex.threat import ThreatModel

__all__ = ["PADDINGS", "Padding", "TransformAttack", "flow_loss", "rigid_flow", "warp"]

Padding = Literal["zeros", "border"]
PADDINGS: tuple[str, ...] = ("zeros", "border")


def check_padding(padding: object) -> Padding:
    """``padding`` if it is a known border rule; raises ``ValueError`` naming it otherwise."""
    if padding not in PADDINGS:
        raise ValueError(f"padding: expected one of {PADDINGS}, got {padding!r}")
    return padding  # type: ignore[return-value]


def _check_flow(x: Tensor, flow: Tensor) -> None:
    if x.ndim != 4:
        raise ValueError(f"x: expected images (B, C, H, W), got shape {tuple(x.shape)}")
    b, _, h, w = x.shape
    if flow.shape != (b, 2, h, w):
        raise ValueError(f"flow: expected shape {(b, 2, h, w)}, got {tuple(flow.shape)}")


def warp(x: Tensor, flow: Tensor, *, padding: Padding = "zeros") -> Tensor:
    """x resampled bilinearly under ``flow``; differentiable in both x and the flow.

    Args:
        x: images (B, C, H, W); every channel moves with the same flow.
        flow: (B, 2, H, W) displacements in pixels: [:, 0] rows (down), [:, 1] columns (right).
            Pixel p of the output reads x at p + flow(p).
        padding: "zeros" (the paper's formula: outside pixels count as 0) or "border" (the
            sampling point is clamped into the image). See the module docstring.

    Returns:
        (B, C, H, W) resampled images, in x's dtype.
    """
    _check_flow(x, flow)
    check_padding(padding)
    b, c, h, w = x.shape
    flow = flow.to(x.dtype)
    rows = torch.arange(h, device=x.device, dtype=x.dtype).view(1, h, 1) + flow[:, 0]
    cols = torch.arange(w, device=x.device, dtype=x.dtype).view(1, 1, w) + flow[:, 1]
    if padding == "border":
        rows = rows.clamp(0, h - 1)
        cols = cols.clamp(0, w - 1)
    r0 = rows.detach().floor()
    c0 = cols.detach().floor()
    # weights of the upper/left neighbour (1 − frac) and of the lower/right one (frac)
    fr = rows - r0
    fc = cols - c0
    weights_r = (1 - fr, fr)
    weights_c = (1 - fc, fc)
    r0i = r0.long()
    c0i = c0.long()
    flat = x.reshape(b, c, h * w)
    out = None
    for dr in (0, 1):
        ri = r0i + dr
        inside_r = (ri >= 0) & (ri < h)
        for dc in (0, 1):
            ci = c0i + dc
            inside = inside_r & (ci >= 0) & (ci < w)
            index = (ri.clamp(0, h - 1) * w + ci.clamp(0, w - 1)).view(b, 1, h * w)
            value = flat.gather(2, index.expand(b, c, h * w)).view(b, c, h, w)
            weight = (weights_r[dr] * weights_c[dc]).masked_fill(~inside, 0.0)
            term = value * weight.unsqueeze(1)
            out = term if out is None else out + term
    assert out is not None
    return out


def flow_loss(flow: Tensor, eps: float = 1e-8) -> Tensor:
    """The smoothness loss L_flow of each flow field (Xiao et al. 2018, eq. 4), shape (B,).

    L_flow(f) = Σ_p Σ_{q ∈ N(p)} (√(‖Δu_p − Δu_q‖² + ‖Δv_p − Δv_q‖² + ε) − √ε),

    N(p) the 4 neighbours of p (up, down, left, right) inside the image, so each adjacent pair
    counts twice, as in the double sum. ε > 0 keeps the gradient finite where neighbours move
    alike; the constant √ε per term is subtracted, so any constant flow (a pure translation)
    has loss exactly 0, and the value is the paper's loss in the limit ε → 0 (the gradient is
    the same as without the subtraction).
    """
    if flow.ndim != 4 or flow.shape[1] != 2:
        raise ValueError(f"flow: expected shape (B, 2, H, W), got {tuple(flow.shape)}")
    if not (math.isfinite(eps) and eps > 0):
        raise ValueError(f"eps: expected a finite number > 0, got {eps!r}")
    # √ε in the flow's dtype, so that a zero difference gives exactly 0
    floor = torch.tensor(eps, dtype=flow.dtype, device=flow.device).sqrt()
    down = flow[:, :, 1:, :] - flow[:, :, :-1, :]
    right = flow[:, :, :, 1:] - flow[:, :, :, :-1]
    vertical = (down.square().sum(dim=1) + eps).sqrt() - floor
    horizontal = (right.square().sum(dim=1) + eps).sqrt() - floor
    return 2 * (vertical.flatten(1).sum(dim=1) + horizontal.flatten(1).sum(dim=1))


def rigid_flow(
    angle: Tensor, shift: Tensor, size: tuple[int, int], *, dtype: torch.dtype | None = None
) -> Tensor:
    """The flow field of a rotation about the image centre followed by a translation.

    The transform T moves the content of the image: a point q goes to R(θ)(q − c) + c + t,
    c = ((H − 1)/2, (W − 1)/2) the centre, θ > 0 turning counter-clockwise as the image is
    displayed (θ = 90° is ``torch.rot90(x, 1, dims=(-2, -1))``), t = (rows down, columns right)
    in pixels. The output pixel p reads the input at T⁻¹(p), so the flow is T⁻¹(p) − p.

    Args:
        angle: (N,) rotation angles θ in degrees.
        shift: (N, 2) translations (rows, columns) in pixels.
        size: (H, W).
        dtype: of the flow (default: angle's).

    Returns:
        (N, 2, H, W) flows for ``warp``.
    """
    if angle.ndim != 1 or shift.shape != (angle.shape[0], 2):
        raise ValueError(
            f"angle, shift: expected shapes (N,) and (N, 2), got {tuple(angle.shape)} "
            f"and {tuple(shift.shape)}"
        )
    h, w = size
    dtype = dtype or angle.dtype
    # the trigonometry in float64: sin(π) etc. are as close to exact as they can be
    theta = angle.to(torch.float64) * (math.pi / 180)
    cos = theta.cos().view(-1, 1, 1)
    sin = theta.sin().view(-1, 1, 1)
    dev = angle.device
    v = torch.arange(h, device=dev, dtype=torch.float64).view(1, h, 1) - (h - 1) / 2
    u = torch.arange(w, device=dev, dtype=torch.float64).view(1, 1, w) - (w - 1) / 2
    # p − c − t, then rotated by −θ; in (column u, row v) with v pointing down, a
    # counter-clockwise turn by θ is (u, v) ↦ (u cos θ + v sin θ, −u sin θ + v cos θ)
    shift64 = shift.to(torch.float64)
    vv = v - shift64[:, 0].view(-1, 1, 1)
    uu = u - shift64[:, 1].view(-1, 1, 1)
    src_u = uu * cos - vv * sin
    src_v = uu * sin + vv * cos
    flow = torch.stack([src_v - v, src_u - u], dim=1)
    return flow.to(dtype)


class TransformAttack(Attack):
    """Base of the attacks that transform the image rather than add δ: it returns, besides the
    points, the parameters of each returned point's transformation.

    Subclasses set ``result_type`` (an ``AttackResult`` dataclass with extra per-sample tensor
    fields), ``_extras(x)`` (those parameters at "no transformation" for a batch) and pass each
    point's parameters to ``run.forward``/``run.record`` (``extras=``): the tracker keeps those
    of the best points (see ``Attack._extras``). The threat model has ``eps=None``: its norm only
    labels the image change; ``distance`` is the attack's own measure (``metric``).
    """

    norms: ClassVar[tuple[str, ...]] = ("linf", "l2")
    needs_eps: ClassVar[bool] = False
    select: ClassVar[Any] = "distance"

    def __init__(
        self,
        threat: ThreatModel,
        *,
        seed: int = 0,
        batch_size: int | None = None,
        early_stop: bool = True,
    ) -> None:
        super().__init__(threat, seed=seed, batch_size=batch_size, early_stop=early_stop)
        checks.no_eps(threat.eps, f"{self.name} transforms the image; its size is its metric")

    def _checked(
        self, clf: Any, x: Any, y: Any, target: Any
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        x, y, target = super()._checked(clf, x, y, target)
        if x.ndim != 4:
            raise ValueError(f"x: {self.name} needs images (B, C, H, W), got {tuple(x.shape)}")
        return x, y, target
