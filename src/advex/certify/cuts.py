"""Cutting planes of the ideal ReLU formulation (Anderson et al. 2020), separated at LP points.

For one neuron y = max(0, w·x + b) whose inputs lie in a box L ≤ x ≤ U, with a ∈ {0, 1} the
binary of its big-M encoding, write for every input i

    L̆_i = L_i, Ŭ_i = U_i  where w_i ≥ 0;   L̆_i = U_i, Ŭ_i = L_i  where w_i < 0

(so w_i·L̆_i ≤ w_i·x_i ≤ w_i·Ŭ_i). The convex hull of {(x, y, a)} is y ≥ w·x + b, y ≥ 0,
0 ≤ a ≤ 1 and, for every subset I of the inputs,

    y ≤ Σ_{i∈I} w_i·(x_i − L̆_i·(1 − a)) + (b + Σ_{i∉I} w_i·Ŭ_i)·a.

I = ∅ is the big-M row y ≤ u·a and I = all is y ≤ v − l·(1 − a) (with the box's interval bounds
u, l); the 2ⁿ rows between are what the big-M relaxation misses. Given a point (x*, y*, a*),
the most violated one takes i ∈ I exactly where w_i·(x*_i − L̆_i·(1 − a*)) < w_i·Ŭ_i·a*: a
linear-time separation, vectorised here over every unstable neuron of the network at once.

Each row is valid for every point of the MILP (its columns always lie in their bounds, which
are the box), so adding rows to the LP relaxation tightens it without changing the MILP's
solutions. Rows are loosened by 1e-9 of their terms' magnitude so that rounding in their
coefficients cannot cut off a feasible point.

Anderson, Huchette, Ma, Tjandraatmadja, Vielma. Strong mixed-integer programming formulations
for trained neural networks. Math. Prog. 183, 2020. arXiv:1811.01988
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

from advex.certify.milp_encoding import ZERO, Milp, NetworkColumns
from advex.certify.network import Affine

__all__ = ["CutPool", "ReluCuts"]

Array = np.ndarray[Any, Any]

#: Rows are added only where the point violates them by more than this (relative).
MIN_VIOLATION = 1e-6
#: Relative loosening of every cut's right-hand side (rounding of its coefficients).
LOOSEN = 1e-9


@dataclass(frozen=True)
class _Layer:
    """The unstable neurons of one ReLU layer: their weight entries (neuron, column, w) and
    biases, and the columns of their outputs y and binaries a."""

    neuron: Array  # (nnz,) index into y/a
    col: Array  # (nnz,) input column
    w: Array  # (nnz,)
    bias: Array  # (k,)
    y: Array  # (k,)
    a: Array  # (k,)


class ReluCuts:
    """Separation of Anderson et al.'s cuts for every unstable ReLU of an encoded network whose
    pre-activations come straight from an affine layer (see the module docstring).

    Args:
        cols: the encoding (``encode_network``).
        milp: a model holding it; its column bounds are the boxes of the neurons' inputs.
    """

    def __init__(self, cols: NetworkColumns, milp: Milp) -> None:
        self.layers: list[_Layer] = []
        lower, upper = milp.col_lower, milp.col_upper
        for i, neurons, binaries in cols.relu:
            prev = cols.net.layers[i - 1] if i >= 1 else None
            if not isinstance(prev, Affine):
                continue
            z = cols.layer_cols[i + 1][neurons]
            rows = prev.matrix().tocsr()[neurons].tocoo()
            inputs = cols.layer_cols[i - 1][rows.col]
            keep = (inputs != ZERO) & (rows.data != 0)
            self.layers.append(
                _Layer(
                    rows.row[keep].astype(np.int64),
                    inputs[keep].astype(np.int64),
                    rows.data[keep].astype(np.float64),
                    prev.bias.numpy()[neurons].astype(np.float64),
                    z.astype(np.int64),
                    binaries.astype(np.int64),
                )
            )
        self._lower = lower
        self._upper = upper

    def separate(self, point: Array, limit: int | None = None) -> CutPool | None:
        """The most violated cut of every neuron that ``point`` (num_col,) violates by more
        than ``MIN_VIOLATION`` (relative to the row's size), the ``limit`` most violated kept;
        None if there is none."""
        mats: list[sp.coo_matrix] = []
        rhss: list[Array] = []
        scores: list[Array] = []
        n = point.shape[0]
        for layer in self.layers:
            k = layer.y.shape[0]
            w = layer.w
            lo, hi = self._lower[layer.col], self._upper[layer.col]
            lb = np.where(w >= 0, lo, hi)  # L̆
            ub = np.where(w >= 0, hi, lo)  # Ŭ
            a = np.clip(point[layer.a], 0.0, 1.0)[layer.neuron]
            x = point[layer.col]
            inside = w * (x - lb * (1.0 - a))
            outside = w * ub * a
            take = inside < outside  # i ∈ I
            bound = np.bincount(layer.neuron, np.where(take, inside, outside), minlength=k) + (
                layer.bias * np.clip(point[layer.a], 0.0, 1.0)
            )
            scale = 1.0 + np.bincount(layer.neuron, np.abs(w * ub) + np.abs(w * lb), minlength=k)
            violation = (point[layer.y] - bound) / scale
            bad = np.flatnonzero(violation > MIN_VIOLATION)
            if bad.shape[0] == 0:
                continue
            # Row: y − Σ_I w·x − (Σ_I w·L̆ + b + Σ_∉I w·Ŭ)·a ≤ −Σ_I w·L̆.
            wl = np.where(take, w * lb, 0.0)
            wu = np.where(take, 0.0, w * ub)
            coef_a = -(
                np.bincount(layer.neuron, wl, minlength=k)
                + layer.bias
                + np.bincount(layer.neuron, wu, minlength=k)
            )
            rhs = LOOSEN * scale - np.bincount(layer.neuron, wl, minlength=k)
            picked = np.zeros(k, dtype=bool)
            picked[bad] = True
            e = take & picked[layer.neuron]
            remap = np.full(k, -1, dtype=np.int64)
            remap[bad] = np.arange(bad.shape[0])
            r = np.concatenate([remap[bad], remap[bad], remap[layer.neuron[e]]])
            c = np.concatenate([layer.y[bad], layer.a[bad], layer.col[e]])
            v = np.concatenate([np.ones(bad.shape[0]), coef_a[bad], -w[e]])
            mats.append(sp.coo_matrix((v, (r, c)), shape=(bad.shape[0], n)))
            rhss.append(rhs[bad])
            scores.append(violation[bad])
        if not mats:
            return None
        matrix = sp.vstack(mats).tocsr()
        rhs = np.concatenate(rhss)
        if limit is not None and rhs.shape[0] > limit:
            keep = np.argsort(-np.concatenate(scores))[:limit]
            matrix, rhs = matrix[keep], rhs[keep]
        matrix.sum_duplicates()
        return CutPool(matrix, rhs)


@dataclass
class CutPool:
    """Rows ``matrix·v ≤ rhs`` added to a model."""

    matrix: sp.csr_matrix
    rhs: Array

    @property
    def num_row(self) -> int:
        return int(self.rhs.shape[0])

    def extend(self, other: CutPool) -> None:
        self.matrix = sp.vstack([self.matrix, other.matrix]).tocsr()
        self.rhs = np.concatenate([self.rhs, other.rhs])

    def add_to(self, milp: Milp) -> Milp:
        """``milp`` with these rows appended."""
        matrix = sp.vstack([milp.matrix, self.matrix.tocsc()]).tocsc()
        return Milp(
            milp.col_lower,
            milp.col_upper,
            milp.integer,
            matrix,
            np.concatenate([milp.row_lower, np.full(self.num_row, -np.inf)]),
            np.concatenate([milp.row_upper, self.rhs]),
        )

    def add_to_highs(self, h: Any) -> None:
        """Append these rows to a ``highspy.Highs`` holding a model of the same columns."""
        m = self.matrix.tocsr()
        h.addRows(
            self.num_row,
            np.full(self.num_row, -np.inf),
            self.rhs.astype(np.float64),
            int(m.nnz),
            m.indptr[:-1].astype(np.int32),
            m.indices.astype(np.int32),
            m.data.astype(np.float64),
        )
