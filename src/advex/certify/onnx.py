"""Read a feed-forward ReLU network from an ONNX graph, without executing it.

The graph must be a chain: one input tensor x, each node consuming the tensor the previous
node produced (and any number of constants), the last one producing the single output. The
tensor between nodes is tracked as a flat vector in row-major order together with its ONNX
shape, with the batch dimension fixed to 1, and every node becomes ``Network`` layers:

* Gemm: y = α·A'·B' + β·C (A' = Aᵀ if transA, B' = Bᵀ if transB) with x = A → ``Dense``
  W = α·B'ᵀ, b = β·C. MatMul with a constant on either side → ``Dense``.
* Add / Sub / Mul / Div with a constant c broadcast to the tensor's shape → ``Scale``
  (x + c, x − c, c − x, c·x, x / c); c / x is not linear and is refused.
* BatchNormalization (inference) → ``Scale`` s = γ/√(σ² + ε), t = β − μ·s per channel.
* Conv (2-D, symmetric zero padding, strides, groups, dilation 1) → ``Conv``; AveragePool
  (unpadded) → a grouped ``Conv`` with weights 1/(kh·kw); MaxPool (unpadded) → ``MaxPool``;
  Relu → ``ReLU``.
* Flatten, Reshape, Squeeze, Unsqueeze, Identity, Dropout (inference) and a Transpose that
  only moves axes of size 1 leave the flat vector unchanged: only the tracked shape moves.

Nodes whose inputs are all constants (Constant, Identity, Cast, Shape of a tensor of known
shape, Gather, Unsqueeze, Concat, ...: the index arithmetic that ``x.view(x.size(0), -1)``
exports to) are evaluated in NumPy. Finally consecutive affine layers are folded where the
result stays exact (``network.merge_affine``: normalization into the next Dense layer or unpadded
Conv, BatchNorm into the Conv before it, a bias Add into its MatMul).

Anything else — an unsupported operator or attribute value, a tensor feeding two nodes
(branches, residual connections), several inputs or outputs — raises
``UnsupportedLayerError`` naming the node (its name and op_type).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

try:
    import onnx
    from onnx import helper, numpy_helper
except ImportError as err:  # pragma: no cover - depends on the installation
    raise ImportError(
        "advex.certify.onnx needs the onnx package: pip install 'advex[verify]'"
    ) from err

from advex.certify.network import (
    Affine,
    Conv,
    Dense,
    Layer,
    MaxPool,
    Network,
    ReLU,
    Scale,
    UnsupportedLayerError,
    merge_affine,
)

__all__ = ["network_from_onnx"]

Shape = tuple[int, ...]


def network_from_onnx(model: str | os.PathLike[str] | bytes | onnx.ModelProto) -> Network:
    """Read the ReLU network in an ONNX ``model`` (a file path, the file's bytes or a loaded
    ``ModelProto``) into a float64 ``Network``. Its ``input_shape`` is the graph input's shape
    without the batch dimension ((n,) for a plain rank-1 input).

    Raises:
        TypeError: ``model`` is of another type.
        UnsupportedLayerError: naming the first node (name and op_type) that cannot be read
            exactly, or the graph input/output that breaks the single-chain form.
    """
    proto = _load(model)
    return _Chain(proto.graph).network()


def _load(model: Any) -> onnx.ModelProto:
    if isinstance(model, onnx.ModelProto):
        return model
    if isinstance(model, (bytes, bytearray)):
        return onnx.load_from_string(bytes(model))
    if isinstance(model, (str, os.PathLike)):
        return onnx.load(os.fspath(model))
    raise TypeError(f"model: expected a path, bytes or onnx.ModelProto, got {type(model).__name__}")


def _size(shape: Shape) -> int:
    return int(np.prod(shape)) if shape else 1


def _sample(full: Shape) -> Shape:
    """The per-sample shape of a tensor of ONNX shape ``full`` (batch dimension 1)."""
    return full[1:] if len(full) >= 2 and full[0] == 1 else (_size(full),)


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _label(node: onnx.NodeProto, index: int) -> str:
    return f"node {node.name or f'#{index}'} ({node.op_type})"


class _Refused(Exception):
    """Raised while reading one node; re-raised as UnsupportedLayerError naming the node."""


# ---------------------------------------------------------------------------------------------
# Constant folding (NumPy) for nodes whose inputs are all constants.


def _axes(attrs: dict[str, Any], given: Any, rank: int) -> list[int]:
    """The ``axes`` of Squeeze/Unsqueeze (an attribute before opset 13, an input since),
    made non-negative for a tensor of ``rank``."""
    raw = attrs.get("axes", given)
    if raw is None:
        return []
    return [int(a) % rank for a in np.asarray(raw).reshape(-1)]


def _num_axes(attrs: dict[str, Any], given: Any) -> int:
    raw = attrs.get("axes", given)
    return 0 if raw is None else int(np.asarray(raw).size)


def _second(args: list[Any]) -> Any:
    return args[1] if len(args) > 1 else None


def _unsqueeze_shape(shape: Shape, attrs: dict[str, Any], given: Any) -> Shape:
    out = list(shape)
    for a in sorted(_axes(attrs, given, len(shape) + _num_axes(attrs, given))):
        out.insert(a, 1)
    return tuple(out)


def _squeeze_shape(shape: Shape, attrs: dict[str, Any], given: Any) -> Shape:
    axes = _axes(attrs, given, len(shape)) or [i for i, d in enumerate(shape) if d == 1]
    if any(shape[a] != 1 for a in axes):
        raise _Refused(f"squeezes an axis of size > 1 of {shape}")
    return tuple(d for i, d in enumerate(shape) if i not in axes)


def _reshape_shape(shape: Shape, target: np.ndarray, allowzero: int) -> Shape:
    dims = [int(d) for d in np.asarray(target).reshape(-1)]
    if not allowzero:
        dims = [shape[i] if d == 0 else d for i, d in enumerate(dims)]
    if dims.count(-1) > 1:
        raise _Refused(f"reshape target {dims} has more than one -1")
    if -1 in dims:
        known = _size(tuple(d for d in dims if d != -1))
        if known == 0 or _size(shape) % known:
            raise _Refused(f"cannot reshape {shape} to {dims}")
        dims[dims.index(-1)] = _size(shape) // known
    if _size(tuple(dims)) != _size(shape):
        raise _Refused(f"cannot reshape {shape} to {dims}")
    return tuple(dims)


def _flatten_shape(shape: Shape, axis: int) -> Shape:
    axis = axis % len(shape) if axis < 0 else axis
    return (_size(shape[:axis]), _size(shape[axis:]))


def _constant(attrs: dict[str, Any]) -> np.ndarray:
    for key in ("value", "value_float", "value_floats", "value_int", "value_ints"):
        if key in attrs:
            value = attrs[key]
            if isinstance(value, onnx.TensorProto):
                return numpy_helper.to_array(value)
            return np.asarray(value, dtype=np.float32 if "float" in key else np.int64)
    raise _Refused(f"only dense numeric values are read, got attributes {sorted(attrs)}")


def _divide(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if np.issubdtype(a.dtype, np.integer) and np.issubdtype(b.dtype, np.integer):
        return np.trunc(a / b).astype(np.result_type(a, b))
    return np.asarray(a / b)


_Fold = Callable[[list[Any], dict[str, Any]], np.ndarray]

_FOLD: dict[str, _Fold] = {
    "Constant": lambda a, k: _constant(k),
    "Identity": lambda a, k: a[0],
    "Dropout": lambda a, k: a[0],
    "Cast": lambda a, k: a[0].astype(helper.tensor_dtype_to_np_dtype(k["to"])),
    "Gather": lambda a, k: np.take(a[0], a[1], axis=k.get("axis", 0)),
    "Concat": lambda a, k: np.concatenate([np.atleast_1d(v) for v in a], axis=k["axis"]),
    "Unsqueeze": lambda a, k: a[0].reshape(_unsqueeze_shape(a[0].shape, k, _second(a))),
    "Squeeze": lambda a, k: a[0].reshape(_squeeze_shape(a[0].shape, k, _second(a))),
    "Reshape": lambda a, k: a[0].reshape(_reshape_shape(a[0].shape, a[1], k.get("allowzero", 0))),
    "Flatten": lambda a, k: a[0].reshape(_flatten_shape(a[0].shape, k.get("axis", 1))),
    "Transpose": lambda a, k: np.transpose(a[0], k.get("perm")),
    "Add": lambda a, k: np.asarray(a[0] + a[1]),
    "Sub": lambda a, k: np.asarray(a[0] - a[1]),
    "Mul": lambda a, k: np.asarray(a[0] * a[1]),
    "Div": lambda a, k: _divide(a[0], a[1]),
    "Neg": lambda a, k: np.asarray(-a[0]),
    "Sqrt": lambda a, k: np.sqrt(a[0]),
}


# ---------------------------------------------------------------------------------------------
# The chain.


def _check_attrs(attrs: dict[str, Any], allowed: set[str]) -> None:
    extra = sorted(set(attrs) - allowed)
    if extra:
        raise _Refused(f"unsupported attribute(s) {', '.join(extra)}")


def _ints(value: Any, default: list[int]) -> list[int]:
    return default if value is None else [int(v) for v in value]


def _auto_pad(attrs: dict[str, Any]) -> None:
    pad = attrs.get("auto_pad", b"NOTSET")
    pad = pad.decode() if isinstance(pad, bytes) else str(pad)
    if pad not in ("NOTSET", "VALID"):
        raise _Refused(f"auto_pad={pad} is not supported (give explicit pads)")
    if pad == "VALID" and any(_ints(attrs.get("pads"), [])):
        raise _Refused("auto_pad=VALID with non-zero pads")


class _Chain:
    """Walks the nodes of ``graph`` in order, keeping the current tensor's name and shape."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.graph = graph
        self.consts: dict[str, np.ndarray] = {
            t.name: numpy_helper.to_array(t) for t in graph.initializer
        }
        inputs = [i for i in graph.input if i.name not in self.consts]
        if len(inputs) != 1:
            names = ", ".join(i.name for i in inputs) or "none"
            raise UnsupportedLayerError(f"graph: expected one input tensor, got {names}")
        if len(graph.output) != 1:
            names = ", ".join(o.name for o in graph.output) or "none"
            raise UnsupportedLayerError(f"graph: expected one output tensor, got {names}")
        self.cur = inputs[0].name
        self.full, self.input_shape = _input_shape(inputs[0])
        self.shapes: dict[str, Shape] = {self.cur: self.full}
        self.layers: list[Layer] = []
        self.uses: dict[str, int] = {}
        for node in graph.node:
            if node.op_type == "Shape":  # reads only the (static) shape
                continue
            for name in {n for n in node.input if n}:
                self.uses[name] = self.uses.get(name, 0) + 1

    def network(self) -> Network:
        for index, node in enumerate(self.graph.node):
            try:
                self._node(node)
            except _Refused as err:
                raise UnsupportedLayerError(f"{_label(node, index)}: {err}") from None
        out = self.graph.output[0].name
        if self.cur != out:
            raise UnsupportedLayerError(
                f"graph: output {out} is not the end of the chain of nodes from the input "
                f"(the chain ends at {self.cur})"
            )
        layers = self.layers
        if not layers or not isinstance(layers[-1], Affine):  # an identity to end on logits
            n = _size(self.full)
            layers.append(
                Scale(
                    torch.ones(n, dtype=torch.float64),
                    torch.zeros(n, dtype=torch.float64),
                    in_shape=_sample(self.full),
                )
            )
        return Network(merge_affine(layers), self.input_shape)

    # -- dispatch ------------------------------------------------------------------------------

    def _node(self, node: onnx.NodeProto) -> None:
        names = [n for n in node.input if n]
        unknown = [n for n in names if n not in self.consts and n not in self.shapes]
        if unknown:
            raise _Refused(f"input {unknown[0]} is not produced by an earlier node")
        data = [n for n in names if n in self.shapes]
        attrs = _attrs(node)
        if node.op_type == "Shape" and data:
            self._shape_of(node, attrs, self.shapes[data[0]])
        elif not data:
            self._fold(node, attrs)
        else:
            self._layer(node, attrs, data)

    def _shape_of(self, node: onnx.NodeProto, attrs: dict[str, Any], shape: Shape) -> None:
        _check_attrs(attrs, {"start", "end"})
        start, end = attrs.get("start", 0), attrs.get("end", len(shape))
        self.consts[node.output[0]] = np.asarray(shape[start:end], dtype=np.int64)

    def _fold(self, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
        fold = _FOLD.get(node.op_type)
        if fold is None:
            raise _Refused("not supported on constants")
        args = [self.consts[n] if n else None for n in node.input]
        try:
            value = fold(args, attrs)
        except (ValueError, TypeError, KeyError, IndexError) as err:
            raise _Refused(f"cannot evaluate on constants ({err})") from None
        self.consts[node.output[0]] = np.asarray(value)

    def _layer(self, node: onnx.NodeProto, attrs: dict[str, Any], data: list[str]) -> None:
        if len(data) != 1 or data[0] != self.cur:
            raise _Refused(
                f"reads {', '.join(data)} but the chain is at {self.cur}: only a single chain "
                "of nodes (no branches, no residual connections) is supported"
            )
        if self.uses.get(self.cur, 0) > 1:
            raise _Refused(f"tensor {self.cur} feeds {self.uses[self.cur]} nodes (a branch)")
        handler = _HANDLERS.get(node.op_type)
        if handler is None:
            raise _Refused(f"operator not supported; supported: {', '.join(sorted(_HANDLERS))}")
        for extra in node.output[1:]:
            if extra and (self.uses.get(extra) or extra == self.graph.output[0].name):
                raise _Refused(f"its output {extra} is used; only the first output can be")
        handler(self, node, attrs)
        self.cur = node.output[0]
        self.shapes[self.cur] = self.full

    # -- helpers for handlers --------------------------------------------------------------

    def const(self, node: onnx.NodeProto, position: int, what: str) -> np.ndarray:
        name = node.input[position] if position < len(node.input) else ""
        if not name:
            raise _Refused(f"missing {what}")
        if name not in self.consts:
            raise _Refused(f"{what} ({name}) must be a constant")
        return np.asarray(self.consts[name], dtype=np.float64)

    def optional(self, node: onnx.NodeProto, position: int) -> np.ndarray | None:
        if position < len(node.input) and node.input[position]:
            return self.const(node, position, f"input {position}")
        return None

    def image(self) -> Shape:
        if len(self.full) != 4 or self.full[0] != 1:
            raise _Refused(f"needs an (N, C, H, W) tensor, got shape {self.full}")
        return self.full[1:]

    def dense(self, weight: np.ndarray, bias: np.ndarray, out_full: Shape) -> None:
        w = torch.from_numpy(np.ascontiguousarray(weight, dtype=np.float64))
        b = torch.from_numpy(np.ascontiguousarray(bias, dtype=np.float64).reshape(-1))
        self.layers.append(Dense(w, b, in_shape=(w.shape[1],), out_shape=(w.shape[0],)))
        self.full = out_full

    def scale(self, s: np.ndarray | float, t: np.ndarray | float) -> None:
        n = _size(self.full)
        s64 = np.broadcast_to(np.asarray(s, dtype=np.float64), (n,))
        t64 = np.broadcast_to(np.asarray(t, dtype=np.float64), (n,))
        self.layers.append(
            Scale(
                torch.tensor(s64, dtype=torch.float64),
                torch.tensor(t64, dtype=torch.float64),
                in_shape=_sample(self.full),
            )
        )


def _input_shape(value: onnx.ValueInfoProto) -> tuple[Shape, Shape]:
    """(ONNX shape with batch 1, per-sample ``input_shape``) of the graph input."""
    kind = value.type.WhichOneof("value")
    if kind != "tensor_type" or not value.type.tensor_type.HasField("shape"):
        raise UnsupportedLayerError(f"input {value.name}: needs a tensor type with a shape")
    dims = [
        d.dim_value if d.HasField("dim_value") else None for d in value.type.tensor_type.shape.dim
    ]
    if not dims:
        raise UnsupportedLayerError(f"input {value.name}: a scalar input is not supported")
    if len(dims) == 1:
        if not dims[0]:
            raise UnsupportedLayerError(f"input {value.name}: rank-1 input of unknown size")
        return (dims[0],), (dims[0],)
    if dims[0] not in (None, 0, 1):
        raise UnsupportedLayerError(
            f"input {value.name}: batch dimension is {dims[0]}; expected 1 or dynamic"
        )
    rest = dims[1:]
    if any(not d for d in rest):
        raise UnsupportedLayerError(
            f"input {value.name}: shape {dims} has unknown dimensions besides the batch"
        )
    sample = tuple(int(d) for d in rest if d is not None)
    return (1, *sample), sample


# ---------------------------------------------------------------------------------------------
# One handler per operator on the chain; each appends layers and sets chain.full.


def _gemm(chain: _Chain, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    _check_attrs(attrs, {"alpha", "beta", "transA", "transB"})
    if node.input[0] != chain.cur:
        raise _Refused("only the first operand (A) can be the network's tensor")
    if len(chain.full) != 2:
        raise _Refused(f"needs a rank-2 tensor, got shape {chain.full}")
    trans_a, trans_b = int(attrs.get("transA", 0)), int(attrs.get("transB", 0))
    rows, k = chain.full[::-1] if trans_a else chain.full
    if rows != 1:
        raise _Refused(f"needs a single row (batch 1), got shape {chain.full}")
    b = chain.const(node, 1, "B")
    b = b.T if trans_b else b
    if b.ndim != 2 or b.shape[0] != k:
        raise _Refused(f"B of shape {b.shape} does not fit inputs of size {k}")
    m = b.shape[1]
    alpha, beta = float(attrs.get("alpha", 1.0)), float(attrs.get("beta", 1.0))
    c = chain.optional(node, 2)
    bias = np.zeros(m) if c is None else beta * _broadcast(c, (1, m), "C")
    chain.dense(alpha * b.T, bias, (1, m))


def _matmul(chain: _Chain, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    _check_attrs(attrs, set())
    full = chain.full
    if node.input[0] == chain.cur:  # x·W: W (k, m) acts on the last axis
        w = chain.const(node, 1, "the weight")
        if w.ndim != 2 or full[-1] != w.shape[0] or _size(full[:-1]) != 1:
            raise _Refused(f"x of shape {full} times a constant of shape {w.shape}")
        chain.dense(w.T, np.zeros(w.shape[1]), (*full[:-1], w.shape[1]))
    else:  # W·x: W (m, k) acts on the first axis of a column
        w = chain.const(node, 0, "the weight")
        if w.ndim != 2 or full[0] != w.shape[1] or _size(full[1:]) != 1:
            raise _Refused(f"a constant of shape {w.shape} times x of shape {full}")
        chain.dense(w, np.zeros(w.shape[0]), (w.shape[0], *full[1:]))


def _broadcast(c: np.ndarray, full: Shape, what: str) -> np.ndarray:
    try:
        shape = np.broadcast_shapes(full, c.shape)
    except ValueError:
        shape = None
    if shape != tuple(full):
        raise _Refused(f"{what} of shape {c.shape} does not broadcast to the tensor's {full}")
    return np.broadcast_to(c, full).reshape(-1)


def _elementwise(chain: _Chain, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    _check_attrs(attrs, set())
    if len(node.input) != 2:
        raise _Refused("expects two operands")
    first = node.input[0] == chain.cur
    c = _broadcast(
        chain.const(node, 1 if first else 0, "the other operand"), chain.full, "constant"
    )
    ones = np.ones_like(c)
    if node.op_type == "Add":
        chain.scale(ones, c)
    elif node.op_type == "Sub":
        chain.scale(ones if first else -ones, -c if first else c)
    elif node.op_type == "Mul":
        chain.scale(c, 0.0)
    elif not first:
        raise _Refused("a constant divided by the tensor is not linear")
    elif bool((c == 0).any()):
        raise _Refused("division by zero")
    else:
        chain.scale(1.0 / c, 0.0)


def _batchnorm(chain: _Chain, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    _check_attrs(attrs, {"epsilon", "momentum", "training_mode", "spatial"})
    if int(attrs.get("training_mode", 0)) or int(attrs.get("spatial", 1)) != 1:
        raise _Refused("only inference mode with per-channel statistics is read")
    if len(chain.full) < 2:
        raise _Refused(f"needs an (N, C, ...) tensor, got shape {chain.full}")
    gamma, beta, mean, var = (
        chain.const(node, i, what) for i, what in enumerate(("scale", "B", "mean", "var"), 1)
    )
    eps = float(attrs.get("epsilon", 1e-5))
    s = gamma / np.sqrt(var + eps)
    t = beta - mean * s
    per = _size(chain.full[2:])
    chain.scale(np.repeat(s, per), np.repeat(t, per))


def _conv(chain: _Chain, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    _check_attrs(attrs, {"auto_pad", "dilations", "group", "kernel_shape", "pads", "strides"})
    _auto_pad(attrs)
    c, h, w = chain.image()
    weight = chain.const(node, 1, "the weight")
    groups = int(attrs.get("group", 1))
    if weight.ndim != 4 or weight.shape[1] * groups != c or weight.shape[0] % groups:
        raise _Refused(f"weight {weight.shape} with group={groups} does not fit {c} channels")
    if _ints(attrs.get("kernel_shape"), list(weight.shape[2:])) != list(weight.shape[2:]):
        raise _Refused("kernel_shape disagrees with the weight")
    if _ints(attrs.get("dilations"), [1, 1]) != [1, 1]:
        raise _Refused("dilations other than 1 are not supported")
    pads = _ints(attrs.get("pads"), [0, 0, 0, 0])
    if pads[:2] != pads[2:]:
        raise _Refused(f"asymmetric pads {pads} are not supported")
    strides = _ints(attrs.get("strides"), [1, 1])
    bias = chain.optional(node, 2)
    conv = Conv(
        torch.from_numpy(weight),
        torch.zeros(weight.shape[0], dtype=torch.float64)
        if bias is None
        else torch.from_numpy(bias),
        in_shape=(c, h, w),
        stride=(strides[0], strides[1]),
        padding=(pads[0], pads[1]),
        groups=groups,
    )
    chain.layers.append(conv)
    chain.full = (1, *conv.out_shape)


def _pool_window(chain: _Chain, attrs: dict[str, Any]) -> tuple[tuple[int, int], tuple[int, int]]:
    _auto_pad(attrs)
    kernel = _ints(attrs.get("kernel_shape"), [])
    if len(kernel) != 2:
        raise _Refused(f"needs a 2-D kernel_shape, got {kernel}")
    if any(_ints(attrs.get("pads"), [0, 0, 0, 0])):
        raise _Refused("padding is not supported")
    if _ints(attrs.get("dilations"), [1, 1]) != [1, 1]:
        raise _Refused("dilations other than 1 are not supported")
    strides = _ints(attrs.get("strides"), [1, 1])
    _, h, w = chain.image()
    if int(attrs.get("ceil_mode", 0)) and (
        (h - kernel[0]) % strides[0] or (w - kernel[1]) % strides[1]
    ):
        raise _Refused("ceil_mode=1 adds a partial window here; only floor mode is read")
    return (kernel[0], kernel[1]), (strides[0], strides[1])


def _maxpool(chain: _Chain, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    allowed = {"auto_pad", "ceil_mode", "dilations", "kernel_shape", "pads", "storage_order"}
    _check_attrs(attrs, allowed | {"strides"})
    kernel, stride = _pool_window(chain, attrs)
    pool = MaxPool.pool2d(chain.image(), kernel, stride)
    chain.layers.append(pool)
    chain.full = (1, *pool.out_shape)


def _avgpool(chain: _Chain, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    allowed = {"auto_pad", "ceil_mode", "count_include_pad", "dilations", "kernel_shape", "pads"}
    _check_attrs(attrs, allowed | {"strides"})
    kernel, stride = _pool_window(chain, attrs)
    c = chain.image()[0]
    weight = torch.full((c, 1, *kernel), 1.0 / (kernel[0] * kernel[1]), dtype=torch.float64)
    conv = Conv(weight, torch.zeros(c), in_shape=chain.image(), stride=stride, groups=c)
    chain.layers.append(conv)
    chain.full = (1, *conv.out_shape)


def _relu(chain: _Chain, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    _check_attrs(attrs, set())
    chain.layers.append(ReLU(_sample(chain.full)))


def _identity(chain: _Chain, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    _check_attrs(attrs, set())


def _dropout(chain: _Chain, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    _check_attrs(attrs, {"ratio", "seed", "is_test"})
    training = chain.optional(node, 2)
    if training is not None and bool(training.any()):
        raise _Refused("training_mode=True is random; only inference mode is read")


def _flatten(chain: _Chain, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    _check_attrs(attrs, {"axis"})
    chain.full = _flatten_shape(chain.full, int(attrs.get("axis", 1)))


def _reshape(chain: _Chain, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    _check_attrs(attrs, {"allowzero"})
    target = chain.const(node, 1, "the target shape").astype(np.int64)
    chain.full = _reshape_shape(chain.full, target, int(attrs.get("allowzero", 0)))


def _squeeze(chain: _Chain, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    _check_attrs(attrs, {"axes"})
    chain.full = _squeeze_shape(chain.full, attrs, chain.optional(node, 1))


def _unsqueeze(chain: _Chain, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    _check_attrs(attrs, {"axes"})
    chain.full = _unsqueeze_shape(chain.full, attrs, chain.optional(node, 1))


def _transpose(chain: _Chain, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
    _check_attrs(attrs, {"perm"})
    full = chain.full
    perm = _ints(attrs.get("perm"), list(range(len(full)))[::-1])
    moved = [p for p in perm if full[p] != 1]
    if moved != sorted(moved):
        raise _Refused(f"perm {perm} on shape {full} reorders the elements")
    chain.full = tuple(full[p] for p in perm)


_Handler = Callable[[_Chain, onnx.NodeProto, dict[str, Any]], None]

_HANDLERS: dict[str, _Handler] = {
    "Add": _elementwise,
    "AveragePool": _avgpool,
    "BatchNormalization": _batchnorm,
    "Conv": _conv,
    "Div": _elementwise,
    "Dropout": _dropout,
    "Flatten": _flatten,
    "Gemm": _gemm,
    "Identity": _identity,
    "MatMul": _matmul,
    "MaxPool": _maxpool,
    "Mul": _elementwise,
    "Relu": _relu,
    "Reshape": _reshape,
    "Squeeze": _squeeze,
    "Sub": _elementwise,
    "Transpose": _transpose,
    "Unsqueeze": _unsqueeze,
}
