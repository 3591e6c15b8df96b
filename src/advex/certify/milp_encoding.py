"""A piecewise-linear network as a mixed-integer linear program (Tjeng et al. 2019).

Given sound bounds l ≤ v ≤ u on the input of every layer (``LayerBounds``), the graph of the
network over the input box, {(x, v₁, v₂, …) : v_{i+1} = layer_i(v_i), l₀ ≤ x ≤ u₀}, is written
exactly with a continuous column for every layer input (bounded by [l, u]) and a binary column
only where a nonlinearity is undecided:

* affine layer v' = A·v + b:  A·v − v' = −b  (equality rows; A = ``layer.matrix()``);
* ReLU z = max(v, 0), per neuron:  u ≤ 0 → z = 0 (eliminated: the constant 0);  l ≥ 0 → z = v
  (the same column);  l < 0 < u → a binary a and the asymmetric big-M rows

      z ≥ v,   z ≥ 0,   z ≤ v − l·(1 − a),   z ≤ u·a;

* max pool z = max_{i∈G} v_i: inputs with u_i < max_{k∈G} l_k are never the maximum and are
  dropped; with one input i left, z = v_i (the same column); otherwise a binary a_i per input
  left (R) and

      Σ_{i∈R} a_i = 1,   z ≥ v_i,   z ≤ v_i + (u_R − l_i)·(1 − a_i),   u_R = max_{k∈R} u_k.

Every feasible point has v_i equal to the network's values at x (up to the solver's
tolerances), so minimizing a linear function of the last hidden layer over it is exact. The
logits are not columns: specifications A·z − b are folded into the last affine layer
(``NetworkColumns.output_form``).

``MilpBuilder`` collects columns and rows as vectorised blocks (one block per layer, no loop per
coefficient) and ``Milp.highs`` passes the whole model to HiGHS in one call.

Tjeng, Xiao, Tedrake. Evaluating Robustness of Neural Networks with Mixed Integer Programming.
ICLR 2019. arXiv:1711.07356
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

from advex.certify.bounds import LayerBounds
from advex.certify.highs import new_highs
from advex.certify.network import Affine, MaxPool, Network, ReLU

__all__ = [
    "Milp",
    "MilpBuilder",
    "NetworkColumns",
    "encode_network",
]

#: Column index meaning "the constant 0" (an eliminated, always-inactive ReLU).
ZERO = -1

Array = np.ndarray[Any, Any]


@dataclass(frozen=True)
class Milp:
    """min cost·v + offset s.t. row_lower ≤ matrix·v ≤ row_upper, col_lower ≤ v ≤ col_upper,
    v_k integer where ``integer[k]``; ``matrix`` (rows, cols) CSC."""

    col_lower: Array
    col_upper: Array
    integer: Array
    matrix: sp.csc_matrix
    row_lower: Array
    row_upper: Array

    @property
    def num_col(self) -> int:
        return int(self.col_lower.shape[0])

    @property
    def num_row(self) -> int:
        return int(self.row_lower.shape[0])

    def highs(self, cost: Array, offset: float = 0.0, options: dict[str, Any] | None = None) -> Any:
        """A ``highspy.Highs`` holding this model with objective cost·v + offset (minimized)."""
        h = new_highs()
        h.setOptionValue("output_flag", False)
        for name, value in (options or {}).items():
            h.setOptionValue(name, value)
        m = self.matrix
        h.passModel(
            self.num_col,
            self.num_row,
            int(m.nnz),
            1,  # MatrixFormat.kColwise
            1,  # ObjSense.kMinimize
            float(offset),
            np.ascontiguousarray(cost, dtype=np.float64),
            self.col_lower,
            self.col_upper,
            self.row_lower,
            self.row_upper,
            m.indptr.astype(np.int32),
            m.indices.astype(np.int32),
            m.data.astype(np.float64),
            self.integer.astype(np.int32),
        )
        return h

    def violation(self, v: Array) -> float:
        """The largest violation of a row or column bound by the point ``v`` (num_col,)."""
        act = self.matrix @ v
        rows = np.maximum(self.row_lower - act, act - self.row_upper)
        cols = np.maximum(self.col_lower - v, v - self.col_upper)
        ints = np.abs(v - np.round(v))[self.integer.astype(bool)]
        return float(max(rows.max(initial=0.0), cols.max(initial=0.0), ints.max(initial=0.0)))


@dataclass
class MilpBuilder:
    """Columns and rows added block by block; ``build`` assembles the sparse model."""

    col_lower: list[Array] = field(default_factory=list)
    col_upper: list[Array] = field(default_factory=list)
    integer: list[Array] = field(default_factory=list)
    entries: list[tuple[Array, Array, Array]] = field(default_factory=list)
    row_lower: list[Array] = field(default_factory=list)
    row_upper: list[Array] = field(default_factory=list)
    num_col: int = 0
    num_row: int = 0

    def copy(self) -> MilpBuilder:
        """An independent builder with the same blocks (the arrays are shared, never mutated)."""
        return MilpBuilder(
            list(self.col_lower),
            list(self.col_upper),
            list(self.integer),
            list(self.entries),
            list(self.row_lower),
            list(self.row_upper),
            self.num_col,
            self.num_row,
        )

    def columns(self, lower: Array, upper: Array, integer: bool = False) -> Array:
        """Add len(lower) columns with these bounds; returns their indices."""
        lo = np.asarray(lower, dtype=np.float64).reshape(-1)
        hi = np.asarray(upper, dtype=np.float64).reshape(-1)
        idx = np.arange(self.num_col, self.num_col + lo.shape[0])
        self.col_lower.append(lo)
        self.col_upper.append(np.maximum(hi, lo))
        self.integer.append(np.full(lo.shape[0], int(integer), dtype=np.int8))
        self.num_col += lo.shape[0]
        return idx

    def rows(self, rows: Array, cols: Array, vals: Array, lower: Array, upper: Array) -> Array:
        """Add len(lower) rows lower ≤ Σ vals·v[cols] ≤ upper; ``rows`` index the new rows
        (0 … len(lower) − 1). Entries on the constant column ``ZERO`` are dropped; duplicates
        are summed. Returns the new rows' indices."""
        lo = np.asarray(lower, dtype=np.float64).reshape(-1)
        hi = np.asarray(upper, dtype=np.float64).reshape(-1)
        r = np.asarray(rows, dtype=np.int64).reshape(-1)
        c = np.asarray(cols, dtype=np.int64).reshape(-1)
        v = np.asarray(vals, dtype=np.float64).reshape(-1)
        keep = (c != ZERO) & (v != 0)
        self.entries.append((r[keep] + self.num_row, c[keep], v[keep]))
        self.row_lower.append(lo)
        self.row_upper.append(hi)
        idx = np.arange(self.num_row, self.num_row + lo.shape[0])
        self.num_row += lo.shape[0]
        return idx

    def build(self) -> Milp:
        """The assembled model."""
        if self.entries:
            r = np.concatenate([e[0] for e in self.entries])
            c = np.concatenate([e[1] for e in self.entries])
            v = np.concatenate([e[2] for e in self.entries])
        else:
            r = c = np.zeros(0, dtype=np.int64)
            v = np.zeros(0)
        matrix = sp.csc_matrix((v, (r, c)), shape=(self.num_row, self.num_col))
        matrix.sum_duplicates()

        def cat(parts: list[Array], dtype: Any) -> Array:
            return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype=dtype)

        return Milp(
            cat(self.col_lower, np.float64),
            cat(self.col_upper, np.float64),
            cat(self.integer, np.int8),
            matrix,
            cat(self.row_lower, np.float64),
            cat(self.row_upper, np.float64),
        )


@dataclass
class NetworkColumns:
    """Where the network lives in a ``MilpBuilder``.

    Attributes:
        net: the encoded network.
        layer_cols: for every layer i, the columns holding its input (``ZERO``: the constant 0).
        unstable: the number of ReLUs that needed a binary.
        relu: (layer index, neuron indices, binary columns) per ReLU layer.
        pool: (layer index, output index per binary, input index per binary, binary columns)
            per max-pool layer.
    """

    net: Network
    layer_cols: list[Array]
    unstable: int = 0
    relu: list[tuple[int, Array, Array]] = field(default_factory=list)
    pool: list[tuple[int, Array, Array, Array]] = field(default_factory=list)

    @property
    def inputs(self) -> Array:
        """The columns of the input x (n,)."""
        return self.layer_cols[0]

    def output_form(self, a: Tensor, b: Tensor) -> tuple[Array, Array, Array]:
        """A·z − b as a linear form in the columns: (cols (p,), coef (m, p), const (m,)) with
        A·z − b = coef·v[cols] + const, z the logits. Duplicate columns are merged."""
        last = self.net.layers[-1]
        if not isinstance(last, Affine):  # pragma: no cover - Network checks this
            raise TypeError("network: must end with an affine layer")
        a64 = torch.as_tensor(a, dtype=torch.float64)
        coef = last.backward(a64).numpy()  # (m, in)
        const = (a64 @ last.bias - torch.as_tensor(b, dtype=torch.float64)).numpy()
        cols = self.layer_cols[-1]
        keep = cols != ZERO
        uniq, inverse = np.unique(cols[keep], return_inverse=True)
        merged = np.zeros((coef.shape[0], uniq.shape[0]))
        np.add.at(merged.T, inverse, coef[:, keep].T)
        return uniq, merged, const

    def assign(self, x: Tensor, num_col: int) -> Array:
        """The network's columns at input ``x`` (n,) or (1, ...): values of every layer input
        and the binaries of the active branches; NaN in columns not owned by the network."""
        out = np.full(num_col, np.nan)
        acts = [a[0].numpy() for a in self.net.activations(x.reshape(1, -1))]
        for cols, value in zip(self.layer_cols, acts, strict=False):
            keep = cols != ZERO
            out[cols[keep]] = value[keep]
        for i, neurons, binaries in self.relu:
            out[binaries] = (acts[i][neurons] > 0).astype(np.float64)
        for i, outs, members, binaries in self.pool:
            value = acts[i][members]
            best = acts[i + 1][outs]
            chosen = np.zeros(binaries.shape[0])
            taken: set[int] = set()
            for k in np.flatnonzero(value >= best):
                if int(outs[k]) not in taken:
                    taken.add(int(outs[k]))
                    chosen[k] = 1.0
            out[binaries] = chosen
        return out


def encode_network(
    builder: MilpBuilder, net: Network, bounds: LayerBounds, index: int = 0
) -> NetworkColumns:
    """Add the exact encoding of ``net`` over sample ``index`` of ``bounds`` to ``builder``
    (see the module docstring). The input columns are bounded by the input box of ``bounds``.

    Raises:
        ValueError: ``bounds`` do not match the network's layers.
    """
    if len(bounds.lower) != len(net.layers) + 1:
        raise ValueError(
            f"bounds: {len(bounds.lower)} layers of bounds for a network of "
            f"{len(net.layers)} layers (expected {len(net.layers) + 1})"
        )
    lower = [t[index].detach().to(torch.float64).cpu().numpy() for t in bounds.lower]
    upper = [t[index].detach().to(torch.float64).cpu().numpy() for t in bounds.upper]
    cols = builder.columns(lower[0], upper[0])
    enc = NetworkColumns(net, [cols])
    for i, layer in enumerate(net.layers[:-1]):
        if isinstance(layer, Affine):
            cols = _affine(builder, layer, cols, lower[i + 1], upper[i + 1])
        elif isinstance(layer, ReLU):
            cols = _relu(builder, enc, i, cols, lower[i], upper[i], upper[i + 1])
        elif isinstance(layer, MaxPool):
            cols = _maxpool(builder, enc, i, layer, cols, lower[i], upper[i], upper[i + 1])
        else:  # pragma: no cover - Network admits no other layer
            raise TypeError(f"layer {i}: cannot encode {type(layer).__name__}")
        enc.layer_cols.append(cols)
    return enc


def _affine(builder: MilpBuilder, layer: Affine, cols: Array, lo: Array, hi: Array) -> Array:
    """v' = A·v + b as the rows A·v − v' = −b."""
    out = builder.columns(lo, hi)
    a = layer.matrix().tocoo()
    bias = layer.bias.numpy()
    n = out.shape[0]
    rows = np.concatenate([a.row, np.arange(n)])
    where = np.concatenate([cols[a.col], out])
    vals = np.concatenate([a.data, -np.ones(n)])
    builder.rows(rows, where, vals, -bias, -bias)
    return out


def _relu(
    builder: MilpBuilder,
    enc: NetworkColumns,
    i: int,
    cols: Array,
    lo: Array,
    hi: Array,
    out_hi: Array,
) -> Array:
    """z = max(v, 0): eliminated where stable, big-M rows with a binary where not."""
    out = np.full(cols.shape[0], ZERO, dtype=np.int64)
    active = lo >= 0
    out[active] = cols[active]
    unstable = np.flatnonzero((lo < 0) & (hi > 0))
    k = unstable.shape[0]
    if k == 0:
        return out
    low, u = lo[unstable], hi[unstable]
    a = builder.columns(np.zeros(k), np.ones(k), integer=True)
    z = builder.columns(np.zeros(k), np.minimum(u, np.maximum(out_hi[unstable], 0.0)))
    v = cols[unstable]
    r = np.arange(k)
    one = np.ones(k)
    # z − v ≥ 0
    builder.rows(np.r_[r, r], np.r_[z, v], np.r_[one, -one], np.zeros(k), np.full(k, np.inf))
    # z − v − l·a ≤ −l   (z ≤ v − l·(1 − a))
    builder.rows(np.r_[r, r, r], np.r_[z, v, a], np.r_[one, -one, -low], np.full(k, -np.inf), -low)
    # z − u·a ≤ 0
    builder.rows(np.r_[r, r], np.r_[z, a], np.r_[one, -u], np.full(k, -np.inf), np.zeros(k))
    out[unstable] = z
    enc.unstable += k
    enc.relu.append((i, unstable, a))
    return out


def _maxpool(
    builder: MilpBuilder,
    enc: NetworkColumns,
    i: int,
    layer: MaxPool,
    cols: Array,
    lo: Array,
    hi: Array,
    out_hi: Array,
) -> Array:
    """z_j = max_{i∈G_j} v_i with dominated inputs dropped; a binary per input left."""
    groups = layer.groups.numpy()  # (n_out, k)
    gl, gu = lo[groups], hi[groups]
    floor = gl.max(axis=1)  # max_k l_k: z ≥ this
    keep = gu >= floor[:, None]
    count = keep.sum(axis=1)
    out = np.full(groups.shape[0], ZERO, dtype=np.int64)
    single = np.flatnonzero(count == 1)
    out[single] = cols[groups[single, keep[single].argmax(axis=1)]]
    multi = np.flatnonzero(count > 1)
    if multi.shape[0] == 0:
        return out
    top = np.where(keep, gu, -np.inf).max(axis=1)  # u_R
    z = builder.columns(
        floor[multi], np.minimum(top[multi], np.maximum(out_hi[multi], floor[multi]))
    )
    out[multi] = z
    sub = keep[multi]
    which, member = np.nonzero(sub)  # pair p: output multi[which[p]], member member[p]
    outs = multi[which]
    inputs = groups[outs, member]
    p = which.shape[0]
    a = builder.columns(np.zeros(p), np.ones(p), integer=True)
    zc = z[which]
    vc = cols[inputs]
    big = top[outs] - lo[inputs]
    r = np.arange(p)
    one = np.ones(p)
    # Σ a_i = 1 per output
    builder.rows(which, a, np.ones(p), np.ones(multi.shape[0]), np.ones(multi.shape[0]))
    # z − v_i ≥ 0
    builder.rows(np.r_[r, r], np.r_[zc, vc], np.r_[one, -one], np.zeros(p), np.full(p, np.inf))
    # z − v_i + M·a_i ≤ M   (z ≤ v_i + M·(1 − a_i))
    builder.rows(np.r_[r, r, r], np.r_[zc, vc, a], np.r_[one, -one, big], np.full(p, -np.inf), big)
    enc.pool.append((i, outs, inputs, a))
    return out
