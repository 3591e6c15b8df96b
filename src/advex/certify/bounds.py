"""Sound bounds on every layer of a piecewise-linear network over an input domain.

For an input domain D (``InputDomain``: an Lp ball ∩ box) and a ``Network`` whose layer k maps
v_k to v_{k+1} (v_0 = x, v_L = the logits), ``layer_bounds`` returns elementwise bounds
l_k ≤ v_k ≤ u_k for every k and every x ∈ D, by one of ``METHODS``:

* ``ibp`` — interval arithmetic: an affine layer maps the box [l, u] with centre c and radius r
  to A·c + b ± |A|·r (the w⁺/w⁻ split of the lecture notes); ReLU and max are monotone.
* ``crown`` — backward linear bound propagation (CROWN; DeepPoly). For the input v_t of every
  ReLU and max-pool, and for the logits, rows λ (one per neuron and sign) are carried back to
  the input: through an affine layer λ·v_{k+1} = (λA)·v_k + λ·b; through a ReLU whose input lies
  in [l, u] with l < 0 < u by α·v ≤ relu(v) ≤ u/(u−l)·(v − l), α = 1 if u ≥ −l else 0 (the lower
  line where λ ≥ 0, the upper one where λ < 0; stable neurons are exact); through a max-pool
  z = max_{i∈G} v_i, with i* = argmax_i l_i, by z ≥ v_{i*} and either z ≤ v_{i*} + (U − l_{i*})⁺,
  U = max_{i≠i*} u_i, or z ≤ max_i u_i, whichever is lower on average over [l_{i*}, u_{i*}]
  (exact when v_{i*} dominates: l_{i*} ≥ U). The final λ'·x + c is minimized over D exactly
  (``InputDomain.minimize``; a sound bound for L2). Only neurons whose relaxation the bounds
  still change are back-substituted (unstable ReLUs, max-pool inputs that may win); every
  bound is intersected with interval arithmetic from the previous layer, so CROWN is never
  looser than IBP. The first affine layer is skipped for L∞, where intervals are exact.
* ``lp`` — the LP relaxation (HiGHS), on every neuron at the input of a ReLU or max-pool and
  on the logits ("LP-all" of Salman et al.): per sample, the network up to the layer before
  v_t, each unstable ReLU by its triangle z ≥ 0, z ≥ v, z ≤ u/(u−l)·(v−l) (stable ones exact),
  each max-pool by z ≥ v_i, z ≤ v_i + (max_{k≠i} u_k − l_i)⁺ and z ≤ Σ_i (v_i − l_i) + max_i l_i
  over the inputs that may win, every variable within its best known bounds, and the domain:
  the box, plus t ≥ ±(x − x₀), Σ t ≤ ε for L1 (L2 keeps only the box, which is sound). Each
  neuron is minimized and maximized, the objective changed in place so HiGHS starts from the
  previous basis. The value used is a weak-duality bound computed from the solver's row prices
  y, c·x ≥ Σ_r min(y_r·lo_r, y_r·hi_r) + min_{x ∈ column box} (c − Aᵀy)·x, which holds for every
  y (so solver tolerances cannot make it unsound), less 1e-10 of its terms' magnitude for
  rounding; it is used only when HiGHS reports Optimal, otherwise the earlier bound stays.
  The relaxation lies inside CROWN's (the triangle contains CROWN's two lines, and the bounds
  are tighter layer by layer), so for L∞ and L1 every LP bound is at least as tight as CROWN's
  (up to that margin); for L2 CROWN may be tighter, as it sees the ball. Deliberate difference
  from "LP only on unstable neurons": solving every neuron is what makes the elementwise
  comparison hold — ``progressive`` is the cheap schedule.
* ``progressive`` — IA → CROWN → LP layer by layer, the LP only on the neurons CROWN left
  unstable; for margins, the LP runs only on the samples CROWN did not certify (and whose
  clean prediction is right), on their margins ≤ 0, and stops at the first margin the LP cannot
  lift above 0 (that sample cannot be certified).

``margin_bounds`` returns lower bounds on the logit margins z_y − z_j over D: IBP through the
last layer composed with the specification rows e_y − e_j; CROWN back-substitutes those rows
from the logits (tighter than bounding the logits one by one); LP minimizes them over the
relaxation. A sample whose every margin bound is > 0 is certified robust (``bounds``), and
``certified_radius`` bisects ε for the largest radius the bounds certify.

Floating point: everything runs in float64 on the float64 network (``Network``); the bounds
are sound for that network up to float64 rounding (≈1e-12 relative), not for a float32 forward
pass of the original module.

Zhang, Weng, Chen, Hsieh, Daniel. Efficient Neural Network Robustness Certification with
General Activation Functions. NeurIPS 2018. arXiv:1811.00866
Singh, Gehr, Püschel, Vechev. An Abstract Domain for Certifying Neural Networks (DeepPoly).
POPL 2019.
Ehlers. Formal Verification of Piece-Wise Linear Feed-Forward Neural Networks. ATVA 2017.
arXiv:1705.01320 (the triangle relaxation).
Salman, Yang, Zhang, Hsieh, Zhang. A Convex Relaxation Barrier to Tight Robustness
Verification of Neural Networks. NeurIPS 2019. arXiv:1902.08722 (LP-all).
Neumaier, Shcherbina. Safe bounds in linear and mixed-integer linear programming. Math. Prog.
2004 (the weak-duality bound).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor, nn

from advex.certify.domain import NORMS, InputDomain
from advex.certify.network import Affine, Layer, MaxPool, Network, ReLU

__all__ = [
    "METHODS",
    "LayerBounds",
    "MarginBounds",
    "bounds",
    "certified_radius",
    "interval_bounds",
    "layer_bounds",
    "margin_bounds",
]

METHODS = ("ibp", "crown", "lp", "progressive")

#: Elements per block of back-substitution rows (rows × widest layer): bounds peak memory.
_BUDGET = 1 << 22


@dataclass
class LayerBounds:
    """``lower[i]``, ``upper[i]`` (B, size) bound the input of ``net.layers[i]``; the last pair
    (index ``len(net.layers)``) bounds the logits. Sound for every x in ``domain``."""

    lower: list[Tensor]
    upper: list[Tensor]
    method: str
    domain: InputDomain


@dataclass(frozen=True)
class MarginBounds:
    """What ``bounds`` proves about a batch.

    Attributes:
        margins: (B, K) lower bounds on z_y − z_j over the domain; +inf in column y.
        certified: (B,) bool, every margin bound > 0 and the clean prediction is y.
        method: one of ``METHODS``.
        norm: ``linf``, ``l2`` or ``l1``.
        eps: (B,) the radius of each sample's domain.
        seconds: wall-clock time of the call.
    """

    margins: Tensor
    certified: Tensor
    method: str
    norm: str
    eps: Tensor
    seconds: float

    @property
    def certified_accuracy(self) -> float:
        """Fraction of samples certified (nan for an empty batch)."""
        return float(self.certified.to(torch.float64).mean())


# --------------------------------------------------------------------------- interval arithmetic


def _nonlinear(layer: Layer, lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
    if isinstance(layer, ReLU):
        return lower.clamp_min(0), upper.clamp_min(0)
    if isinstance(layer, MaxPool):
        return lower[:, layer.groups].amax(-1), upper[:, layer.groups].amax(-1)
    raise TypeError(f"unknown layer {type(layer).__name__}")  # pragma: no cover


def _interval(layer: Layer, lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
    if isinstance(layer, Affine):
        return layer.interval(lower, upper)
    return _nonlinear(layer, lower, upper)


def interval_bounds(net: Network, domain: InputDomain) -> LayerBounds:
    """Interval arithmetic (IBP) through every layer."""
    lower, upper = domain.box()
    lows, ups = [lower], [upper]
    for layer in net.layers:
        lower, upper = _interval(layer, lower, upper)
        lows.append(lower)
        ups.append(upper)
    return LayerBounds(lows, ups, "ibp", domain)


# --------------------------------------------------------------------------- linear relaxations


@dataclass
class _Relax:
    """Linear bounds of a nonlinear layer per sample: output j lies between
    ``lo_slope·v[idx_j]`` and ``up_slope·v[idx_j] + up_bias`` (all (B, out)); ``idx`` None
    means idx_j = j (ReLU)."""

    idx: Tensor | None
    lo_slope: Tensor
    up_slope: Tensor
    up_bias: Tensor
    in_size: int

    def back(self, lam: Tensor, sample: Tensor) -> tuple[Tensor, Tensor]:
        """Rows λ (R, out) on the output → rows on the input and the constant (R,) of a lower
        bound of λ·z (upper line where λ < 0, lower line where λ ≥ 0)."""
        up_bias = _rows(self.up_bias, sample)
        slope = torch.where(lam >= 0, _rows(self.lo_slope, sample), _rows(self.up_slope, sample))
        coef = lam * slope
        neg = lam.clamp_max(0)
        const = neg @ up_bias[0] if up_bias.shape[0] == 1 else (neg * up_bias).sum(-1)
        if self.idx is None:
            return coef, const
        out = lam.new_zeros(lam.shape[0], self.in_size)
        idx = _rows(self.idx, sample).expand(lam.shape[0], -1)
        return out.scatter_add_(1, idx, coef), const


def _rows(t: Tensor, sample: Tensor) -> Tensor:
    """``t[sample]``; a broadcast view when every row belongs to one sample."""
    first = int(sample[0])
    if bool((sample == first).all()):
        return t[first : first + 1]
    return t[sample]


def _relu_relax(lower: Tensor, upper: Tensor) -> _Relax:
    unstable = (lower < 0) & (upper > 0)
    active = (lower >= 0).to(torch.float64)
    width = torch.where(unstable, upper - lower, torch.ones_like(lower))
    up = torch.where(unstable, upper / width, active)
    up_bias = torch.where(unstable, -lower * up, torch.zeros_like(lower))
    lo = torch.where(unstable, (upper >= -lower).to(torch.float64), active)
    return _Relax(None, lo, up, up_bias, lower.shape[1])


def _pool_relax(layer: MaxPool, lower: Tensor, upper: Tensor) -> _Relax:
    lg, ug = lower[:, layer.groups], upper[:, layer.groups]  # (B, out, k)
    best = lg.argmax(-1, keepdim=True)
    l_star, u_star = lg.gather(-1, best)[..., 0], ug.gather(-1, best)[..., 0]
    others = ug.scatter(-1, best, -torch.inf).amax(-1)  # -inf for a group of one
    gap = (others - l_star).clamp_min(0)
    top = torch.maximum(u_star, others)
    line = (l_star + u_star) / 2 + gap <= top
    idx = layer.groups.expand(lower.shape[0], -1, -1).gather(-1, best)[..., 0]
    ones = torch.ones_like(l_star)
    return _Relax(idx, ones, line.to(torch.float64), torch.where(line, gap, top), lower.shape[1])


def _relax(layer: Layer, lower: Tensor, upper: Tensor) -> _Relax:
    if isinstance(layer, ReLU):
        return _relu_relax(lower, upper)
    if isinstance(layer, MaxPool):
        return _pool_relax(layer, lower, upper)
    raise TypeError(f"unknown layer {type(layer).__name__}")  # pragma: no cover


# --------------------------------------------------------------------------- back-substitution


def _subdomain(domain: InputDomain, sample: Tensor) -> InputDomain:
    return InputDomain(domain.center[sample], domain.eps[sample], domain.norm, domain.bounds)


def _backsub(
    net: Network,
    domain: InputDomain,
    relax: dict[int, _Relax],
    t: int,
    sample: Tensor,
    cols: Tensor,
    coefs: Tensor,
) -> Tensor:
    """min over D of Σ_m coefs[r, m]·v_t[cols[r, m]] for rows r of samples ``sample`` (R,):
    a lower bound (R,), carried back through layers t−1, …, 0 in blocks of rows."""
    out = torch.empty(len(sample), dtype=torch.float64)
    width = max(max(layer.in_size, layer.out_size) for layer in net.layers[:t])
    step = max(1, _BUDGET // width)
    size = net.layers[t - 1].out_size
    for start in range(0, len(sample), step):
        s = sample[start : start + step]
        lam = torch.zeros(len(s), size, dtype=torch.float64)
        lam.scatter_add_(1, cols[start : start + step], coefs[start : start + step])
        const = torch.zeros(len(s), dtype=torch.float64)
        for k in range(t - 1, -1, -1):
            layer = net.layers[k]
            if isinstance(layer, Affine):
                const += lam @ layer.bias
                lam = layer.backward(lam)
            else:
                lam, c = relax[k].back(lam, s)
                const += c
        out[start : start + step] = _subdomain(domain, s).minimize(lam[:, None, :])[:, 0] + const
    return out


def _crown_refine(
    net: Network,
    domain: InputDomain,
    relax: dict[int, _Relax],
    t: int,
    lower: Tensor,
    upper: Tensor,
    mask: Tensor,
) -> None:
    """Tighten ``lower``/``upper`` (B, n_t) in place where ``mask`` by back-substitution."""
    b, j = mask.nonzero(as_tuple=True)
    if not len(b):
        return
    ones = torch.ones(len(b), dtype=torch.float64)
    val = _backsub(
        net,
        domain,
        relax,
        t,
        torch.cat([b, b]),
        torch.cat([j, j])[:, None],
        torch.cat([ones, -ones])[:, None],
    )
    n = len(b)
    lower[b, j] = torch.maximum(lower[b, j], val[:n])
    upper[b, j] = torch.minimum(upper[b, j], -val[n:])


def _open_groups(layer: MaxPool, lower: Tensor, upper: Tensor) -> Tensor:
    """(B, in) bool: inputs of a pooling group whose winner the bounds do not settle."""
    lg, ug = lower[:, layer.groups], upper[:, layer.groups]
    best = lg.argmax(-1, keepdim=True)
    others = ug.scatter(-1, best, -torch.inf).amax(-1)
    open_ = (others > lg.gather(-1, best)[..., 0]).to(torch.float64)  # (B, out)
    spread = open_[..., None].expand_as(lg).reshape(lower.shape[0], -1)
    flat = layer.groups.reshape(1, -1).expand(lower.shape[0], -1)
    hit = torch.zeros_like(lower).scatter_reduce_(1, flat, spread, reduce="amax")
    return hit > 0


def _refine_mask(net: Network, t: int, lower: Tensor, upper: Tensor) -> Tensor:
    """(B, n_t) bool: the neurons of v_t whose tighter bounds would change a relaxation."""
    if t == len(net.layers):
        return torch.ones_like(lower, dtype=torch.bool)
    layer = net.layers[t]
    if isinstance(layer, MaxPool):
        return _open_groups(layer, lower, upper)
    mask = (lower < 0) & (upper > 0)
    after = net.layers[t + 1] if t + 1 < len(net.layers) else None
    if isinstance(after, MaxPool):
        mask |= (upper > 0) & _open_groups(after, lower.clamp_min(0), upper.clamp_min(0))
    return mask


# --------------------------------------------------------------------------- LP relaxation


class _Clock:
    """An optional deadline shared by every LP of one call."""

    def __init__(self, seconds: float | None) -> None:
        self.deadline = None if seconds is None else time.monotonic() + seconds

    def left(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.monotonic()

    def expired(self) -> bool:
        left = self.left()
        return left is not None and left <= 0


class _LPModel:
    """One sample's LP relaxation in HiGHS, grown a layer at a time; only the objective changes
    between solves. ``exprs[k]`` gives, for each entry of v_k, its column (−1: a constant) and
    constant: stable active ReLUs alias their input's column, inactive ones are the constant 0."""

    def __init__(self, domain: InputDomain, b: int) -> None:
        import highspy

        from advex.certify.highs import new_highs

        self.h = new_highs()
        self.h.setOptionValue("output_flag", False)
        self.h.setOptionValue("threads", 1)
        self.optimal = highspy.HighsModelStatus.kOptimal
        self.col_lo: list[np.ndarray] = []
        self.col_hi: list[np.ndarray] = []
        self.coo: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.row_lo: list[np.ndarray] = []
        self.row_hi: list[np.ndarray] = []
        self.ncols = self.nrows = 0
        self.cost_cols = np.zeros(0, dtype=np.int32)
        self._cache: tuple[sp.csr_matrix, np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None
        self._cache = None
        lo, hi = (t[b].numpy() for t in domain.box())
        x = self._add_cols(lo, hi)
        self.exprs: list[tuple[np.ndarray, np.ndarray]] = [(x, np.zeros(len(x)))]
        if domain.norm == "l1":
            self._l1(x, domain.center[b].numpy(), float(domain.eps[b]), lo, hi)

    # -- building
    def _add_cols(self, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        lo, hi = np.minimum(lo, hi), np.maximum(lo, hi)
        n = len(lo)
        empty = np.zeros(0, dtype=np.int32)
        self.h.addCols(n, np.zeros(n), lo, hi, 0, np.zeros(n, dtype=np.int32), empty, np.zeros(0))
        self.col_lo.append(lo)
        self.col_hi.append(hi)
        cols = np.arange(self.ncols, self.ncols + n)
        self.ncols += n
        self._cache = None
        return cols

    def _add_rows(
        self, row: np.ndarray, col: np.ndarray, val: np.ndarray, lo: np.ndarray, hi: np.ndarray
    ) -> None:
        """Rows Σ val·x[col] ∈ [lo, hi] (COO over ``len(lo)`` new rows; duplicates summed)."""
        m = len(lo)
        if not m:
            return
        a = sp.csr_matrix((val, (row, col)), shape=(m, self.ncols))
        a.sum_duplicates()
        inf = np.inf
        self.h.addRows(
            m,
            np.where(np.isfinite(lo), lo, -inf),
            np.where(np.isfinite(hi), hi, inf),
            a.nnz,
            a.indptr[:-1].astype(np.int32),
            a.indices.astype(np.int32),
            a.data,
        )
        coo = a.tocoo()
        self.coo.append((coo.row + self.nrows, coo.col, coo.data))
        self.row_lo.append(lo)
        self.row_hi.append(hi)
        self.nrows += m
        self._cache = None

    def _terms(
        self, k: int, row: np.ndarray, idx: np.ndarray, coef: np.ndarray, m: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Terms coef·v_k[idx] in rows ``row`` → (rows, columns, values) of the variable ones
        and the (m,) constant each row receives from the constant ones."""
        cols, const = self.exprs[k]
        var = cols[idx] >= 0
        shift = np.bincount(row[~var], coef[~var] * const[idx[~var]], minlength=m)
        return row[var], cols[idx[var]], coef[var], shift

    def _linear_rows(
        self,
        new: tuple[np.ndarray, np.ndarray, np.ndarray],
        old: tuple[int, np.ndarray, np.ndarray, np.ndarray],
        lo: np.ndarray,
        hi: np.ndarray,
    ) -> None:
        """Rows (new-column terms) + (terms on v_k) ∈ [lo, hi]."""
        m = len(lo)
        k, row, idx, coef = old
        r, c, v, shift = self._terms(k, row, idx, coef, m)
        self._add_rows(
            np.concatenate([new[0], r]),
            np.concatenate([new[1], c]),
            np.concatenate([new[2], v]),
            lo - shift,
            hi - shift,
        )

    def _l1(self, x: np.ndarray, c: np.ndarray, eps: float, lo: np.ndarray, hi: np.ndarray) -> None:
        n = len(x)
        t = self._add_cols(np.zeros(n), np.maximum(c - lo, hi - c))
        r = np.arange(n)
        ones = np.ones(n)
        # t − x ≥ −c, t + x ≥ c, Σ t ≤ ε
        self._add_rows(
            np.concatenate([r, r, r + n, r + n, np.full(n, 2 * n)]),
            np.concatenate([t, x, t, x, t]),
            np.concatenate([ones, -ones, ones, ones, ones]),
            np.concatenate([-c, c, [-np.inf]]),
            np.concatenate([np.full(2 * n, np.inf), [eps]]),
        )

    def extend(self, net: Network, state: _State, b: int, upto: int) -> None:
        """Add layers until v_upto is in the model (bounds of indices ≤ upto are final)."""
        lows, ups, matrices = state.lower, state.upper, state.matrices
        while len(self.exprs) <= upto:
            k = len(self.exprs) - 1
            layer = net.layers[k]
            lo, hi = lows[k][b].numpy(), ups[k][b].numpy()
            if isinstance(layer, Affine):
                a = _matrix(matrices, net, k).tocoo()
                self._affine(k, a, layer, lows[k + 1][b].numpy(), ups[k + 1][b].numpy())
            elif isinstance(layer, ReLU):
                self._relu(k, lo, hi)
            elif isinstance(layer, MaxPool):
                self._pool(k, layer, lo, hi)

    def _affine(self, k: int, a: Any, layer: Affine, lo: np.ndarray, hi: np.ndarray) -> None:
        new = self._add_cols(lo, hi)
        n = len(new)
        bias = layer.bias.numpy()
        self._linear_rows(
            (np.arange(n), new, np.ones(n)), (k, a.row, a.col, -a.data), bias, bias.copy()
        )
        self.exprs.append((new, np.zeros(n)))

    def _relu(self, k: int, lo: np.ndarray, hi: np.ndarray) -> None:
        cols, const = self.exprs[k]
        active = lo >= 0
        unstable = (lo < 0) & (hi > 0)
        out_cols = np.where(active, cols, -1)
        out_const = np.where(active, const, 0.0)
        i = np.flatnonzero(unstable)
        z = self._add_cols(np.zeros(len(i)), hi[i])
        out_cols[i] = z
        slope = hi[i] / (hi[i] - lo[i])
        m = len(i)
        r = np.arange(m)
        # z − v ≥ 0 and z − slope·v ≤ −slope·l
        self._linear_rows(
            (np.concatenate([r, r + m]), np.concatenate([z, z]), np.ones(2 * m)),
            (
                k,
                np.concatenate([r, r + m]),
                np.concatenate([i, i]),
                np.concatenate([-np.ones(m), -slope]),
            ),
            np.concatenate([np.zeros(m), np.full(m, -np.inf)]),
            np.concatenate([np.full(m, np.inf), -slope * lo[i]]),
        )
        self.exprs.append((out_cols, out_const))

    def _pool(self, k: int, layer: MaxPool, lo: np.ndarray, hi: np.ndarray) -> None:
        cols, const = self.exprs[k]
        groups = layer.groups.numpy()
        out_cols = np.full(len(groups), -1)
        out_const = np.zeros(len(groups))
        rows: list[tuple[int, np.ndarray, np.ndarray]] = []  # (output, inputs, coefs)
        bnds: list[tuple[float, float]] = []
        for j, g in enumerate(groups):
            best = g[np.argmax(lo[g])]
            l_max = lo[best]
            keep = np.unique(np.concatenate([[best], g[hi[g] > l_max]]))
            if len(keep) == 1:
                out_cols[j], out_const[j] = cols[best], const[best]
                continue
            (z,) = self._add_cols(np.array([l_max]), np.array([hi[keep].max()]))
            out_cols[j] = z
            for i in keep:
                other = hi[keep[keep != i]].max()
                rows.append((z, np.array([i]), np.array([-1.0])))  # z − v_i ≥ 0
                bnds.append((0.0, np.inf))
                rows.append((z, np.array([i]), np.array([-1.0])))  # z − v_i ≤ gap_i
                bnds.append((-np.inf, max(other - lo[i], 0.0)))
            rows.append((z, keep, -np.ones(len(keep))))  # z − Σ v_i ≤ l_max − Σ l_i
            bnds.append((-np.inf, l_max - lo[keep].sum()))
        if rows:
            m = len(rows)
            r_old = np.concatenate([np.full(len(i), n) for n, (_, i, _) in enumerate(rows)])
            self._linear_rows(
                (np.arange(m), np.array([z for z, _, _ in rows]), np.ones(m)),
                (
                    k,
                    r_old,
                    np.concatenate([i for _, i, _ in rows]),
                    np.concatenate([c for _, _, c in rows]),
                ),
                np.array([lo_ for lo_, _ in bnds]),
                np.array([hi_ for _, hi_ in bnds]),
            )
        self.exprs.append((out_cols, out_const))

    # -- solving
    def _matrix(self) -> tuple[sp.csr_matrix, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        if self._cache is None:
            rows = np.concatenate([r for r, _, _ in self.coo]) if self.coo else np.zeros(0, int)
            cols = np.concatenate([c for _, c, _ in self.coo]) if self.coo else np.zeros(0, int)
            vals = np.concatenate([v for _, _, v in self.coo]) if self.coo else np.zeros(0)
            a = sp.csr_matrix((vals, (rows, cols)), shape=(self.nrows, self.ncols))
            self._cache = (
                a,
                np.concatenate(self.row_lo) if self.row_lo else np.zeros(0),
                np.concatenate(self.row_hi) if self.row_hi else np.zeros(0),
                np.concatenate(self.col_lo),
                np.concatenate(self.col_hi),
            )
        return self._cache

    def _safe_bound(self, cost: np.ndarray, row_dual: np.ndarray) -> float:
        """Σ_r min(y_r lo_r, y_r hi_r) + Σ_c min(d_c lo_c, d_c hi_c), d = cost − Aᵀy: a lower
        bound of min cost·x over the relaxation for any y, less a rounding margin."""
        a, rlo, rhi, clo, chi = self._matrix()
        y = np.where((row_dual > 0) & ~np.isfinite(rlo), 0.0, row_dual)
        y = np.where((y < 0) & ~np.isfinite(rhi), 0.0, y)
        finite_lo = np.where(np.isfinite(rlo), rlo, 0.0)
        finite_hi = np.where(np.isfinite(rhi), rhi, 0.0)
        row_part = np.where(y > 0, y * finite_lo, y * finite_hi)
        d = cost - a.T @ y
        col_part = np.where(d > 0, d * clo, d * chi)
        terms = np.concatenate([row_part, col_part])
        return float(terms.sum()) - 1e-10 * (1.0 + float(np.abs(terms).sum()))

    def minimize(
        self, k: int, idx: np.ndarray, coef: np.ndarray, const: float, clock: _Clock
    ) -> float | None:
        """A sound lower bound of min Σ coef·v_k[idx] + const over the relaxation, or None."""
        row = np.zeros(len(idx), dtype=np.int64)
        _, c, v, shift = self._terms(k, row, idx, coef, 1)
        offset = const + float(shift[0])
        if not len(c):
            return offset
        cols, inv = np.unique(c, return_inverse=True)
        vals = np.bincount(inv, v).astype(np.float64)
        if len(self.cost_cols):
            self.h.changeColsCost(
                len(self.cost_cols), self.cost_cols, np.zeros(len(self.cost_cols))
            )
        self.cost_cols = cols.astype(np.int32)
        self.h.changeColsCost(len(cols), self.cost_cols, vals)
        left = clock.left()
        if left is not None:
            self.h.setOptionValue("time_limit", max(left, 1e-3))
        self.h.run()
        if self.h.getModelStatus() != self.optimal:
            return None
        solution = self.h.getSolution()
        if not solution.dual_valid:
            return None
        cost = np.zeros(self.ncols)
        cost[cols] = vals
        return self._safe_bound(cost, np.asarray(solution.row_dual)) + offset


def _matrix(matrices: dict[int, sp.csr_matrix], net: Network, k: int) -> sp.csr_matrix:
    """A of affine layer k as CSR, built once per propagation."""
    if k not in matrices:
        matrices[k] = cast(Affine, net.layers[k]).matrix().tocsr()
    return matrices[k]


def _model(state: _State, b: int) -> _LPModel:
    if b not in state.models:
        state.models[b] = _LPModel(state.domain, b)
    return state.models[b]


def _lp_refine(
    net: Network,
    state: _State,
    t: int,
    lower: Tensor,
    upper: Tensor,
    mask: Tensor,
) -> None:
    """Tighten ``lower``/``upper`` (B, n_t) in place where ``mask`` by minimizing and
    maximizing each neuron over its sample's LP relaxation of layers 0 … t−2."""
    a = _matrix(state.matrices, net, t - 1)
    bias = cast(Affine, net.layers[t - 1]).bias.numpy()
    for b in mask.any(1).nonzero()[:, 0].tolist():
        model = _model(state, b)
        model.extend(net, state, b, t - 1)
        for j in mask[b].nonzero()[:, 0].tolist():
            if state.clock.expired():
                return
            idx = a.indices[a.indptr[j] : a.indptr[j + 1]]
            coef = a.data[a.indptr[j] : a.indptr[j + 1]]
            lo = model.minimize(t - 1, idx, coef, float(bias[j]), state.clock)
            if lo is not None:
                lower[b, j] = max(float(lower[b, j]), lo)
            hi = model.minimize(t - 1, idx, -coef, -float(bias[j]), state.clock)
            if hi is not None:
                upper[b, j] = min(float(upper[b, j]), -hi)


# --------------------------------------------------------------------------- propagation


@dataclass
class _State:
    """Everything one propagation builds: bounds so far, relaxations, LP models, deadline."""

    domain: InputDomain
    lower: list[Tensor]
    upper: list[Tensor]
    relax: dict[int, _Relax] = field(default_factory=dict)
    models: dict[int, _LPModel] = field(default_factory=dict)
    matrices: dict[int, sp.csr_matrix] = field(default_factory=dict)
    clock: _Clock = field(default_factory=lambda: _Clock(None))


def _refines(net: Network, t: int, logits: bool) -> bool:
    if not isinstance(net.layers[t - 1], Affine):
        return False
    if t == len(net.layers):
        return logits
    return isinstance(net.layers[t], (ReLU, MaxPool))


def _propagate(
    net: Network,
    domain: InputDomain,
    method: str,
    *,
    logits: bool = True,
    start: LayerBounds | None = None,
    time_limit: float | None = None,
) -> _State:
    """Bounds layer by layer: intervals from the previous layer's bounds (∩ ``start``), then
    CROWN and/or LP where the method asks for them."""
    lo, hi = domain.box()
    state = _State(domain, [lo], [hi], clock=_Clock(time_limit))
    crown = method in ("crown", "progressive")
    for k, layer in enumerate(net.layers):
        t = k + 1
        if not isinstance(layer, Affine):
            state.relax[k] = _relax(layer, state.lower[k], state.upper[k])
        lower, upper = _interval(layer, state.lower[k], state.upper[k])
        if start is not None:
            lower = torch.maximum(lower, start.lower[t])
            upper = torch.minimum(upper, start.upper[t])
        exact = t == 1 and domain.norm == "linf"  # an affine image of a box: intervals exact
        if method != "ibp" and not exact and _refines(net, t, logits):
            if crown:
                _crown_refine(
                    net, domain, state.relax, t, lower, upper, _refine_mask(net, t, lower, upper)
                )
            if method == "lp":  # every neuron: LP-ALL, elementwise tighter than CROWN
                _lp_refine(net, state, t, lower, upper, torch.ones_like(lower, dtype=torch.bool))
            elif method == "progressive":  # only where CROWN left the relaxation loose
                _lp_refine(net, state, t, lower, upper, _refine_mask(net, t, lower, upper))
        state.lower.append(lower)
        state.upper.append(upper)
    return state


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"method: expected one of {', '.join(METHODS)}, got {method!r}")


def layer_bounds(
    net: Network, domain: InputDomain, method: str = "ibp", *, time_limit: float | None = None
) -> LayerBounds:
    """Bounds on every layer's input and the logits by ``method`` (one of ``METHODS``).

    Args:
        time_limit: seconds for the LP steps (``lp``, ``progressive``); neurons not reached in
            time keep their earlier bounds. None: no limit.

    Raises:
        ValueError: unknown method.
    """
    _check_method(method)
    if method == "ibp":
        return interval_bounds(net, domain)
    state = _propagate(net, domain, method, time_limit=time_limit)
    return LayerBounds(state.lower, state.upper, method, domain)


# --------------------------------------------------------------------------- margins


def _spec(y: Tensor, k: int) -> Tensor:
    """(B, K, K): row j of sample b is e_{y_b} − e_j."""
    eye = torch.eye(k, dtype=torch.float64)
    return eye[y][:, None, :] - eye[None]


def _interval_margins(net: Network, lower: Tensor, upper: Tensor, y: Tensor) -> Tensor:
    """Margins by IBP through the last layer composed with the specification, (B, K)."""
    last = cast(Affine, net.layers[-1])
    k = last.out_size
    out = torch.empty(len(y), k, dtype=torch.float64)
    step = max(1, _BUDGET // (k * last.in_size))
    for s in range(0, len(y), step):
        spec = _spec(y[s : s + step], k)
        weight = last.backward(spec)  # (b, K, in)
        centre = (lower[s : s + step] + upper[s : s + step])[:, :, None] / 2
        radius = (upper[s : s + step] - lower[s : s + step])[:, :, None] / 2
        out[s : s + step] = (
            (weight @ centre)[..., 0] + spec @ last.bias - (weight.abs() @ radius)[..., 0]
        )
    return out


def _crown_margins(net: Network, state: _State, y: Tensor, mask: Tensor) -> Tensor:
    """Back-substituted margins where ``mask`` (B, K); −inf elsewhere."""
    out = torch.full(mask.shape, -torch.inf, dtype=torch.float64)
    b, j = mask.nonzero(as_tuple=True)
    if len(b):
        cols = torch.stack([y[b], j], 1)
        coefs = torch.tensor([1.0, -1.0], dtype=torch.float64).expand(len(b), 2)
        out[b, j] = _backsub(net, state.domain, state.relax, len(net.layers), b, cols, coefs)
    return out


def _lp_margins(
    net: Network, state: _State, y: Tensor, mask: Tensor, order: Tensor | None = None
) -> Tensor:
    """LP margins where ``mask`` (B, K); −inf elsewhere. With ``order`` (B, K), the columns are
    taken in that order and a sample stops at its first margin the LP leaves ≤ 0."""
    t = len(net.layers) - 1
    a = _matrix(state.matrices, net, t)
    bias = cast(Affine, net.layers[t]).bias.numpy()
    out = torch.full(mask.shape, -torch.inf, dtype=torch.float64)
    for b in mask.any(1).nonzero()[:, 0].tolist():
        model = _model(state, b)
        model.extend(net, state, b, t)
        label = int(y[b])
        row_y = slice(a.indptr[label], a.indptr[label + 1])
        columns = range(mask.shape[1]) if order is None else order[b].tolist()
        for j in columns:
            if not mask[b, j]:
                continue
            if state.clock.expired():
                return out
            row_j = slice(a.indptr[j], a.indptr[j + 1])
            idx = np.concatenate([a.indices[row_y], a.indices[row_j]])
            coef = np.concatenate([a.data[row_y], -a.data[row_j]])
            val = model.minimize(t, idx, coef, float(bias[label] - bias[j]), state.clock)
            if val is not None:
                out[b, j] = val
            if order is not None and (val is None or val <= 0):
                break
    return out


def _check_labels(y: Tensor, batch: int, k: int) -> Tensor:
    y = torch.as_tensor(y).detach().cpu()
    if y.shape != (batch,):
        raise ValueError(f"y: expected shape ({batch},), got {tuple(y.shape)}")
    if y.is_floating_point() or y.is_complex():
        raise ValueError("y: expected integer class labels")
    y = y.long()
    if batch and (int(y.min()) < 0 or int(y.max()) >= k):
        raise ValueError(f"y: labels must lie in [0, {k - 1}]")
    return y


def _others(y: Tensor, k: int) -> Tensor:
    mask = torch.ones(len(y), k, dtype=torch.bool)
    mask[torch.arange(len(y)), y] = False
    return mask


def _method_margins(net: Network, state: _State, y: Tensor, method: str) -> Tensor:
    k = net.num_classes
    out = _interval_margins(net, state.lower[-2], state.upper[-2], y)
    if method in ("crown", "progressive"):
        out = torch.maximum(out, _crown_margins(net, state, y, _others(y, k)))
    if method == "lp":
        out = torch.maximum(out, _lp_margins(net, state, y, _others(y, k)))
    return out


def _progressive_margins(
    net: Network, domain: InputDomain, y: Tensor, time_limit: float | None
) -> Tensor:
    """CROWN margins; LP (with LP-tightened layers) only where CROWN leaves a margin ≤ 0 on a
    sample whose clean prediction is right."""
    state = _propagate(net, domain, "crown", logits=False)
    out = _method_margins(net, state, y, "crown")
    rows = torch.arange(len(y))
    out[rows, y] = torch.inf
    logits = net.forward(domain.center)
    clean = logits[rows, y][:, None] - logits > 0
    clean_ok = (clean | ~_others(y, net.num_classes)).all(1)
    todo = ((out <= 0).any(1) & clean_ok).nonzero()[:, 0]
    if not len(todo):
        return out
    sub = _subdomain(domain, todo)
    start = LayerBounds(
        [t[todo] for t in state.lower], [t[todo] for t in state.upper], "crown", sub
    )
    tight = _propagate(net, sub, "progressive", logits=False, start=start, time_limit=time_limit)
    margins = torch.maximum(out[todo], _method_margins(net, tight, y[todo], "progressive"))
    margins[torch.arange(len(todo)), y[todo]] = torch.inf
    # LP on the margins still ≤ 0, most negative first, stopping at the first that stays ≤ 0.
    lp = _lp_margins(net, tight, y[todo], margins <= 0, margins.argsort(1))
    out[todo] = torch.maximum(margins, lp)
    return out


def margin_bounds(
    net: Network,
    domain: InputDomain,
    y: Tensor,
    method: str = "ibp",
    *,
    time_limit: float | None = None,
) -> Tensor:
    """Lower bounds (B, K) on z_y − z_j over the domain; +inf in column y.

    Args:
        time_limit: seconds for the LP steps (``lp``, ``progressive``). None: no limit.

    Raises:
        ValueError: unknown method, or labels ``y`` not of shape (B,) in [0, K).
    """
    _check_method(method)
    y = _check_labels(y, domain.batch, net.num_classes)
    if method == "progressive":
        return _progressive_margins(net, domain, y, time_limit)
    if method == "ibp":
        b = interval_bounds(net, domain)
        out = _interval_margins(net, b.lower[-2], b.upper[-2], y)
    else:
        state = _propagate(net, domain, method, logits=False, time_limit=time_limit)
        out = _method_margins(net, state, y, method)
    out[torch.arange(len(y)), y] = torch.inf
    return out


# --------------------------------------------------------------------------- public entry points


def _network(model: Network | nn.Module, x: Tensor) -> Network:
    if isinstance(model, Network):
        net = model
    elif isinstance(model, nn.Module):
        net = Network.from_module(model, input_shape=tuple(x.shape[1:]))
    else:
        raise TypeError(
            f"model: expected an nn.Module, advex Classifier or Network, got {type(model).__name__}"
        )
    size = int(np.prod(x.shape[1:])) if x.ndim > 1 else 0
    if x.ndim < 2 or size != net.input_size:
        raise ValueError(
            f"x: expected (B, ...) with {net.input_size} values per sample "
            f"(network input {net.input_shape}), got {tuple(x.shape)}"
        )
    return net


def _check_norm(norm: str) -> None:
    if norm not in NORMS:
        raise ValueError(f"norm: expected one of {', '.join(NORMS)}, got {norm!r}")


def bounds(
    model: Network | nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float | Tensor,
    *,
    norm: str = "linf",
    method: str = "crown",
    bounds: tuple[float, float] = (0.0, 1.0),
    time_limit: float | None = None,
) -> MarginBounds:
    """Certify each sample: lower bounds on its logit margins over {‖x' − x‖_p ≤ ε} ∩ box.

    Args:
        model: an ``nn.Module`` (``nn.Sequential`` of supported layers), an advex
            ``Classifier`` (its normalization is folded in) or a ``Network``.
        x: (B, ...) inputs inside ``bounds``.
        y: (B,) labels.
        eps: the radius, a number or (B,) values ≥ 0.
        norm: ``linf``, ``l2`` or ``l1``.
        method: one of ``METHODS``.
        bounds: the valid input range (lo, hi).
        time_limit: seconds for the LP steps; None for no limit.

    Returns:
        ``MarginBounds``; ``certified`` is sound for the float64 network.

    Raises:
        ValueError: unknown method or norm, eps < 0 or not finite, x with NaN or outside the
            box, x or y of a shape the network does not take.
        TypeError: model of an unsupported type.
    """
    start = time.perf_counter()
    _check_method(method)
    _check_norm(norm)
    if not isinstance(x, Tensor):
        raise TypeError(f"x: expected a tensor, got {type(x).__name__}")
    net = _network(model, x)
    domain = InputDomain.ball(x, eps, norm, bounds)
    labels = _check_labels(y, domain.batch, net.num_classes)
    margins = margin_bounds(net, domain, labels, method, time_limit=time_limit)
    logits = net.forward(domain.center)
    rows = torch.arange(len(labels))
    clean = logits[rows, labels][:, None] - logits
    clean[rows, labels] = torch.inf
    certified = (margins > 0).all(1) & (clean > 0).all(1)
    return MarginBounds(margins, certified, method, norm, domain.eps, time.perf_counter() - start)


def certified_radius(
    model: Network | nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    norm: str = "linf",
    method: str = "crown",
    lo: float = 0.0,
    hi: float | None = None,
    tol: float = 1e-4,
    bounds: tuple[float, float] = (0.0, 1.0),
    time_limit: float | None = None,
) -> Tensor:
    """The largest ε (within ``tol``) that ``bounds`` certifies, per sample, by bisection.

    Every returned radius was certified (or is 0), so it is a lower bound on the minimal
    adversarial distance; 0 where the clean prediction is wrong. Samples not certified at
    ``lo`` are bisected on [0, lo].

    Args:
        lo, hi: the bracket; ``hi`` defaults to the box diameter in the norm (w, w·√n, w·n
            for the box width w and n inputs).
        tol: stop when hi − lo ≤ tol.

    Returns:
        (B,) float64.

    Raises:
        ValueError: as ``bounds``; tol ≤ 0, lo < 0 or hi ≤ lo.
    """
    _check_method(method)
    _check_norm(norm)
    if not isinstance(x, Tensor):
        raise TypeError(f"x: expected a tensor, got {type(x).__name__}")
    x = x.detach().cpu()
    net = _network(model, x)
    n = net.input_size
    width = float(bounds[1]) - float(bounds[0])
    top = {"linf": width, "l2": width * n**0.5, "l1": width * n}[norm] if hi is None else hi
    if not tol > 0:
        raise ValueError(f"tol: expected > 0, got {tol}")
    if lo < 0 or not top > lo:
        raise ValueError(f"lo, hi: expected 0 <= lo < hi, got {lo}, {top}")
    first = _certify(
        net, x, y, float(lo), norm=norm, method=method, bounds=bounds, time_limit=time_limit
    )
    labels = _check_labels(y, x.shape[0], net.num_classes)
    low = torch.full((x.shape[0],), float(lo), dtype=torch.float64)
    high = torch.full((x.shape[0],), float(top), dtype=torch.float64)
    correct = net.forward(x).argmax(1) == labels
    # Not certified at lo: search [0, lo]; a wrong clean prediction: radius 0.
    high = torch.where(first.certified, high, low).where(correct, torch.zeros_like(low))
    low = torch.where(first.certified, low, torch.zeros_like(low))
    while True:
        active = (high - low > tol).nonzero()[:, 0]
        if not len(active):
            return low
        mid = (low[active] + high[active]) / 2
        res = _certify(
            net,
            x[active],
            labels[active],
            mid,
            norm=norm,
            method=method,
            bounds=bounds,
            time_limit=time_limit,
        )
        low[active] = torch.where(res.certified, mid, low[active])
        high[active] = torch.where(res.certified, high[active], mid)


_certify = bounds
