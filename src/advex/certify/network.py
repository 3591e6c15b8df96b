"""A piecewise-linear network as a flat list of layers, in float64, for the certifiers.

Every tensor between layers is a flattened vector (C·H·W in PyTorch's row-major order), so a
layer is one of

* ``Affine`` — z = A·v + b. Subclasses ``Dense`` (A given), ``Conv`` (a 2-D convolution,
  optionally grouped; average pooling is one), ``Scale`` (A diagonal: normalization, a lone
  BatchNorm). Each can apply A (``forward``), apply Aᵀ to a batch of rows (``backward``: the
  step of backward bound propagation, Λ ↦ Λ·A) and return A as a SciPy sparse matrix
  (``matrix``: the MILP's equality constraints).
* ``ReLU`` — z = max(v, 0) elementwise.
* ``MaxPool`` — z_j = max_{i ∈ G_j} v_i over index groups ``groups`` (n_out, k).

``Network.from_module`` reads an ``nn.Module`` (``nn.Sequential`` trees of Linear, Conv2d, ReLU,
Flatten, AvgPool2d, MaxPool2d, BatchNorm1d/2d, Dropout and Identity; an advex ``Classifier``'s
input normalization): BatchNorm is folded into the affine layer before it, the normalization
into the affine layer after it where that is exact (a Dense layer, or a Conv without padding),
and consecutive Dense/Scale layers are merged. Anything else raises naming the layer.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "Affine",
    "Conv",
    "Dense",
    "Layer",
    "MaxPool",
    "Network",
    "ReLU",
    "Scale",
    "UnsupportedLayerError",
    "merge_affine",
]

Shape = tuple[int, ...]


class UnsupportedLayerError(ValueError):
    """The network holds a layer the certifiers cannot encode exactly."""


def _size(shape: Shape) -> int:
    return int(np.prod(shape)) if shape else 1


class Layer(ABC):
    """A layer mapping flattened vectors (B, in_size) to (B, out_size)."""

    in_shape: Shape
    out_shape: Shape

    @property
    def in_size(self) -> int:
        return _size(self.in_shape)

    @property
    def out_size(self) -> int:
        return _size(self.out_shape)

    @abstractmethod
    def forward(self, v: Tensor) -> Tensor:
        """The layer's output for rows v (B, in_size)."""


class Affine(Layer):
    """z = A·v + b. Subclasses implement ``apply`` (A·v), ``backward`` (Λ·A) and ``matrix``."""

    bias: Tensor  # (out_size,) float64

    @abstractmethod
    def apply(self, v: Tensor) -> Tensor:
        """A·v for rows v (B, in_size)."""

    def forward(self, v: Tensor) -> Tensor:
        return self.apply(v) + self.bias

    @abstractmethod
    def backward(self, lam: Tensor) -> Tensor:
        """Λ·A for rows Λ (..., out_size) → (..., in_size)."""

    @abstractmethod
    def matrix(self) -> sp.csr_matrix:
        """A as a SciPy CSR matrix (out_size, in_size), float64."""

    @abstractmethod
    def abs_apply(self, v: Tensor) -> Tensor:
        """|A|·v for rows v ≥ 0 (interval arithmetic: radius ↦ |A|·radius)."""

    def interval(self, lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
        """Exact image bounds of the box [lower, upper] (rows (B, in_size)) under the layer:
        centre c = (l+u)/2 and radius r = (u−l)/2 map to A·c + b ± |A|·r (the w⁺/w⁻ split)."""
        centre = self.forward((lower + upper) / 2)
        radius = self.abs_apply((upper - lower) / 2)
        return centre - radius, centre + radius


@dataclass(eq=False)
class Dense(Affine):
    """z = W·v + b with a dense W (out, in)."""

    weight: Tensor
    bias: Tensor
    in_shape: Shape = ()
    out_shape: Shape = ()

    def __post_init__(self) -> None:
        self.weight = self.weight.detach().to("cpu", torch.float64)
        self.bias = self.bias.detach().to("cpu", torch.float64)
        if not self.in_shape:
            self.in_shape = (self.weight.shape[1],)
        if not self.out_shape:
            self.out_shape = (self.weight.shape[0],)

    def apply(self, v: Tensor) -> Tensor:
        return v @ self.weight.T

    def abs_apply(self, v: Tensor) -> Tensor:
        return v @ self.weight.abs().T

    def backward(self, lam: Tensor) -> Tensor:
        return lam @ self.weight

    def matrix(self) -> sp.csr_matrix:
        return sp.csr_matrix(self.weight.numpy())


@dataclass(eq=False)
class Scale(Affine):
    """z = s ⊙ v + b (a diagonal A), e.g. (x − μ)/σ or an unfolded BatchNorm."""

    scale: Tensor
    bias: Tensor
    in_shape: Shape = ()
    out_shape: Shape = ()

    def __post_init__(self) -> None:
        self.scale = self.scale.detach().to("cpu", torch.float64).reshape(-1)
        self.bias = self.bias.detach().to("cpu", torch.float64).reshape(-1)
        if not self.in_shape:
            self.in_shape = (self.scale.numel(),)
        self.out_shape = self.in_shape

    def apply(self, v: Tensor) -> Tensor:
        return v * self.scale

    def abs_apply(self, v: Tensor) -> Tensor:
        return v * self.scale.abs()

    def backward(self, lam: Tensor) -> Tensor:
        return lam * self.scale

    def matrix(self) -> sp.csr_matrix:
        return sp.diags(self.scale.numpy()).tocsr()


@dataclass(eq=False)
class Conv(Affine):
    """A 2-D convolution (stride, zero padding, groups) on (C, H, W) vectors."""

    weight: Tensor  # (C_out, C_in/groups, kh, kw)
    bias: Tensor  # (C_out,) → expanded to (out_size,)
    in_shape: Shape = ()
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    groups: int = 1
    out_shape: Shape = field(default=())

    def __post_init__(self) -> None:
        self.weight = self.weight.detach().to("cpu", torch.float64)
        _, h, w = self.in_shape
        kh, kw = self.weight.shape[2:]
        ho = (h + 2 * self.padding[0] - kh) // self.stride[0] + 1
        wo = (w + 2 * self.padding[1] - kw) // self.stride[1] + 1
        self.out_shape = (int(self.weight.shape[0]), ho, wo)
        b = self.bias.detach().to("cpu", torch.float64).reshape(-1)
        if b.numel() == self.weight.shape[0]:
            b = b[:, None].expand(-1, ho * wo).reshape(-1)
        self.bias = b.contiguous()

    def _conv(self, v: Tensor, weight: Tensor) -> Tensor:
        x = v.reshape(-1, *self.in_shape)
        z = F.conv2d(x, weight, stride=self.stride, padding=self.padding, groups=self.groups)
        return z.reshape(v.shape[0], -1)

    def apply(self, v: Tensor) -> Tensor:
        return self._conv(v, self.weight)

    def abs_apply(self, v: Tensor) -> Tensor:
        return self._conv(v, self.weight.abs())

    def backward(self, lam: Tensor) -> Tensor:
        lead = lam.shape[:-1]
        rows = lam.reshape(-1, *self.out_shape)
        _, h, w = self.in_shape
        kh, kw = self.weight.shape[2:]
        # conv_transpose2d can produce a smaller image when the stride skips trailing rows.
        out_h = (self.out_shape[1] - 1) * self.stride[0] - 2 * self.padding[0] + kh
        out_w = (self.out_shape[2] - 1) * self.stride[1] - 2 * self.padding[1] + kw
        pad = (h - out_h, w - out_w)
        back = F.conv_transpose2d(
            rows,
            self.weight,
            stride=self.stride,
            padding=self.padding,
            output_padding=pad,
            groups=self.groups,
        )
        return back.reshape(*lead, self.in_size)

    def matrix(self) -> sp.csr_matrix:
        c, h, w = self.in_shape
        co, cig, kh, kw = self.weight.shape
        # Input positions (1-based; 0 = padding) under each kernel window: (cig·kh·kw, L) per group.
        index = torch.arange(1, c * h * w + 1, dtype=torch.float64).reshape(1, c, h, w)
        cols = F.unfold(index, (kh, kw), padding=self.padding, stride=self.stride)[0]
        cols = cols.round().long()  # (c·kh·kw, L)
        positions = cols.shape[1]
        per_group = co // self.groups
        rows_all, cols_all, vals_all = [], [], []
        for g in range(self.groups):
            block = cols[g * cig * kh * kw : (g + 1) * cig * kh * kw]  # (cig·kh·kw, L)
            w_g = self.weight[g * per_group : (g + 1) * per_group].reshape(per_group, -1)
            out_idx = (torch.arange(per_group) + g * per_group)[:, None] * positions + torch.arange(
                positions
            )  # (per_group, L)
            r = out_idx[:, None, :].expand(-1, block.shape[0], -1)
            cidx = block[None].expand(per_group, -1, -1)
            v = w_g[:, :, None].expand(-1, -1, positions)
            keep = (cidx > 0) & (v != 0)
            rows_all.append(r[keep])
            cols_all.append(cidx[keep] - 1)
            vals_all.append(v[keep])
        rows = torch.cat(rows_all).numpy()
        cols_np = torch.cat(cols_all).numpy()
        vals = torch.cat(vals_all).numpy()
        return sp.csr_matrix((vals, (rows, cols_np)), shape=(self.out_size, self.in_size))


@dataclass(eq=False)
class ReLU(Layer):
    """z = max(v, 0)."""

    in_shape: Shape
    out_shape: Shape = ()

    def __post_init__(self) -> None:
        self.out_shape = self.in_shape

    def forward(self, v: Tensor) -> Tensor:
        return v.clamp_min(0)


@dataclass(eq=False)
class MaxPool(Layer):
    """z_j = max_{i ∈ groups[j]} v_i; ``groups`` (out_size, k) holds flat input indices."""

    groups: Tensor
    in_shape: Shape
    out_shape: Shape

    def forward(self, v: Tensor) -> Tensor:
        return v[:, self.groups].amax(dim=-1)

    @staticmethod
    def pool2d(in_shape: Shape, kernel: tuple[int, int], stride: tuple[int, int]) -> MaxPool:
        """Max pooling without padding on a (C, H, W) vector."""
        c, h, w = in_shape
        index = torch.arange(c * h * w, dtype=torch.float64).reshape(1, c, h, w)
        ho = (h - kernel[0]) // stride[0] + 1
        wo = (w - kernel[1]) // stride[1] + 1
        cols = F.unfold(index.reshape(c, 1, h, w), kernel, stride=stride)  # (c, k, L)
        groups = cols.permute(0, 2, 1).reshape(c * ho * wo, -1).round().long()
        return MaxPool(groups, in_shape, (c, ho, wo))


@dataclass
class Network:
    """A feed-forward piecewise-linear network: ``layers`` applied in order to flattened inputs
    of ``input_shape``; the last layer is affine and outputs the logits."""

    layers: list[Layer]
    input_shape: Shape

    def __post_init__(self) -> None:
        if not self.layers or not isinstance(self.layers[-1], Affine):
            raise UnsupportedLayerError("network: must end with an affine layer (the logits)")
        size = _size(self.input_shape)
        for i, layer in enumerate(self.layers):
            if layer.in_size != size:
                raise UnsupportedLayerError(
                    f"network: layer {i} ({type(layer).__name__}) expects {layer.in_size} "
                    f"inputs but receives {size}"
                )
            size = layer.out_size

    @property
    def num_classes(self) -> int:
        return self.layers[-1].out_size

    @property
    def input_size(self) -> int:
        return _size(self.input_shape)

    def forward(self, x: Tensor) -> Tensor:
        """Logits (B, K) in float64 for inputs (B, *input_shape) or (B, input_size)."""
        v = x.reshape(x.shape[0], -1).to("cpu", torch.float64)
        for layer in self.layers:
            v = layer.forward(v)
        return v

    __call__ = forward

    def activations(self, x: Tensor) -> list[Tensor]:
        """The input of every layer, then the logits: ``len(layers) + 1`` tensors (B, size)."""
        v = x.reshape(x.shape[0], -1).to("cpu", torch.float64)
        out = [v]
        for layer in self.layers:
            v = layer.forward(v)
            out.append(v)
        return out

    def nonlinear(self) -> Iterator[tuple[int, Layer]]:
        """(index, layer) of every ReLU and MaxPool layer."""
        for i, layer in enumerate(self.layers):
            if isinstance(layer, (ReLU, MaxPool)):
                yield i, layer

    def num_relus(self) -> int:
        return sum(layer.in_size for _, layer in self.nonlinear() if isinstance(layer, ReLU))

    @classmethod
    def from_module(
        cls,
        module: nn.Module,
        input_shape: Shape | None = None,
        *,
        mean: Tensor | None = None,
        std: Tensor | None = None,
    ) -> Network:
        """Read a network of supported layers from ``module`` (or an advex ``Classifier``,
        whose input normalization is folded in). ``input_shape`` (C, H, W) or (D,) is taken
        from the module's ``input_shape`` attribute when not given.

        Raises:
            UnsupportedLayerError: naming the first layer that cannot be encoded exactly.
            ValueError: the input shape is unknown.
        """
        from advex.model import Classifier

        if isinstance(module, Classifier):
            mean = module.mean if mean is None else mean
            std = module.std if std is None else std
            module = module.module
        if input_shape is None:
            input_shape = getattr(module, "input_shape", None)
            if input_shape is None:
                raise ValueError(
                    "input_shape: not given and the module has no input_shape attribute"
                )
        shape: Shape = tuple(int(s) for s in input_shape)
        layers: list[Layer] = []
        if mean is not None or std is not None:
            layers.append(_normalization(shape, mean, std))
        for name, m in _leaves(module):
            shape = _append(layers, name, m, shape)
        return cls(merge_affine(layers), tuple(int(s) for s in input_shape))


def _leaves(module: nn.Module, prefix: str = "") -> Iterable[tuple[str, nn.Module]]:
    children = list(module.named_children())
    if not children:
        yield prefix or type(module).__name__, module
        return
    if not isinstance(module, nn.Sequential):
        raise UnsupportedLayerError(
            f"layer {prefix or type(module).__name__} ({type(module).__name__}): only "
            "nn.Sequential containers can be read (their forward is the chain of children)"
        )
    for name, child in children:
        yield from _leaves(child, f"{prefix}.{name}" if prefix else name)


def _normalization(shape: Shape, mean: Tensor | None, std: Tensor | None) -> Scale:
    n = _size(shape)
    channels = shape[0] if len(shape) == 3 else 1
    per = n // channels

    def expand(t: Tensor | None, default: float) -> Tensor:
        if t is None:
            return torch.full((n,), default, dtype=torch.float64)
        flat = t.detach().to("cpu", torch.float64).reshape(-1)
        if flat.numel() == 1:
            return flat.expand(n).clone()
        if flat.numel() == channels:
            return flat[:, None].expand(-1, per).reshape(-1)
        raise UnsupportedLayerError(f"normalization: {flat.numel()} values for {shape} inputs")

    m, s = expand(mean, 0.0), expand(std, 1.0)
    return Scale(1 / s, -m / s, in_shape=shape)


def _pair(v: Any) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _append(layers: list[Layer], name: str, m: nn.Module, shape: Shape) -> Shape:
    """Append the layers for module ``m`` acting on ``shape``; return the output shape."""
    kind = type(m).__name__
    if isinstance(m, (nn.Dropout, nn.Identity)):
        return shape
    if isinstance(m, nn.Flatten):
        if m.start_dim != 1 or m.end_dim != -1:
            raise UnsupportedLayerError(f"layer {name} ({kind}): only Flatten(1, -1) is read")
        return (_size(shape),)
    if isinstance(m, nn.Linear):
        layers.append(Dense(m.weight, _bias(m.bias, m.out_features), in_shape=(m.in_features,)))
        if _size(shape) != m.in_features:
            raise UnsupportedLayerError(
                f"layer {name} ({kind}): expects {m.in_features} inputs, receives {shape}"
            )
        return (m.out_features,)
    if isinstance(m, nn.ReLU):
        layers.append(ReLU(shape))
        return shape
    if isinstance(m, nn.Conv2d):
        if len(shape) != 3 or m.padding_mode != "zeros" or isinstance(m.padding, str):
            raise UnsupportedLayerError(
                f"layer {name} ({kind}): needs (C, H, W) inputs, zero and numeric padding"
            )
        if _pair(m.dilation) != (1, 1):
            raise UnsupportedLayerError(f"layer {name} ({kind}): dilation is not supported")
        conv = Conv(
            m.weight,
            _bias(m.bias, m.out_channels),
            in_shape=shape,
            stride=_pair(m.stride),
            padding=_pair(m.padding),
            groups=m.groups,
        )
        layers.append(conv)
        return conv.out_shape
    if isinstance(m, nn.AvgPool2d):
        if len(shape) != 3 or _pair(m.padding) != (0, 0) or m.ceil_mode:
            raise UnsupportedLayerError(
                f"layer {name} ({kind}): only unpadded, floor-mode average pooling is read"
            )
        kh, kw = _pair(m.kernel_size)
        c = shape[0]
        weight = torch.full((c, 1, kh, kw), 1.0 / (kh * kw), dtype=torch.float64)
        conv = Conv(
            weight,
            torch.zeros(c),
            in_shape=shape,
            stride=_pair(m.stride or m.kernel_size),
            groups=c,
        )
        layers.append(conv)
        return conv.out_shape
    if isinstance(m, nn.MaxPool2d):
        if len(shape) != 3 or _pair(m.padding) != (0, 0) or m.ceil_mode:
            raise UnsupportedLayerError(
                f"layer {name} ({kind}): only unpadded, floor-mode max pooling is read"
            )
        if _pair(m.dilation) != (1, 1):
            raise UnsupportedLayerError(f"layer {name} ({kind}): dilation is not supported")
        pool = MaxPool.pool2d(shape, _pair(m.kernel_size), _pair(m.stride or m.kernel_size))
        layers.append(pool)
        return pool.out_shape
    if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
        if m.running_mean is None or m.running_var is None:
            raise UnsupportedLayerError(f"layer {name} ({kind}): needs running statistics")
        gain = torch.ones_like(m.running_var) if m.weight is None else m.weight.detach()
        shift = torch.zeros_like(m.running_mean) if m.bias is None else m.bias.detach()
        s = gain.double().cpu() / torch.sqrt(m.running_var.double().cpu() + m.eps)
        t = shift.double().cpu() - m.running_mean.double().cpu() * s
        n = _size(shape)
        per = n // s.numel()
        layers.append(
            Scale(s[:, None].expand(-1, per).reshape(-1), t[:, None].expand(-1, per).reshape(-1))
        )
        layers[-1].in_shape = shape
        layers[-1].out_shape = shape
        return shape
    raise UnsupportedLayerError(
        f"layer {name} ({kind}) is not supported by the certifiers; supported: Linear, Conv2d, "
        "ReLU, Flatten, AvgPool2d, MaxPool2d, BatchNorm1d/2d, Dropout, Identity"
    )


def _bias(b: Tensor | None, n: int) -> Tensor:
    return torch.zeros(n, dtype=torch.float64) if b is None else b.detach().double().cpu()


def merge_affine(layers: list[Layer]) -> list[Layer]:
    """Fold consecutive affine layers where the result stays exact and small: Scale into a
    neighbouring Dense or Scale, a Scale after a Conv into the Conv (BatchNorm), and a Scale
    before an unpadded Conv whose scale is constant per channel (input normalization)."""
    out: list[Layer] = []
    for layer in layers:
        prev = out[-1] if out else None
        merged = _fold(prev, layer) if prev is not None else None
        if merged is not None:
            out[-1] = merged
        else:
            out.append(layer)
    return out


def _fold(a: Layer, b: Layer) -> Layer | None:
    if isinstance(a, Scale) and isinstance(b, Scale):
        return Scale(a.scale * b.scale, a.bias * b.scale + b.bias, in_shape=a.in_shape)
    if isinstance(a, Dense) and isinstance(b, Scale):
        return Dense(
            a.weight * b.scale[:, None], a.bias * b.scale + b.bias, a.in_shape, b.out_shape
        )
    if isinstance(a, Scale) and isinstance(b, Dense):
        return Dense(b.weight * a.scale[None, :], b.apply(a.bias[None])[0] + b.bias, a.in_shape)
    if isinstance(a, Conv) and isinstance(b, Scale):
        co, (_, ho, wo) = a.weight.shape[0], a.out_shape
        s = b.scale.reshape(co, ho * wo)
        if not bool((s == s[:, :1]).all()):
            return None
        per = s[:, 0]
        return Conv(
            a.weight * per[:, None, None, None],
            a.bias * b.scale + b.bias,
            in_shape=a.in_shape,
            stride=a.stride,
            padding=a.padding,
            groups=a.groups,
        )
    if isinstance(a, Scale) and isinstance(b, Conv) and b.padding == (0, 0) and b.groups == 1:
        c, h, w = b.in_shape
        s = a.scale.reshape(c, h * w)
        t = a.bias.reshape(c, h * w)
        if not (bool((s == s[:, :1]).all()) and bool((t == t[:, :1]).all())):
            return None
        weight = b.weight * s[:, 0][None, :, None, None]
        shift = (b.weight * t[:, 0][None, :, None, None]).sum(dim=(1, 2, 3))
        ho_wo = b.out_size // b.weight.shape[0]
        bias = b.bias + shift[:, None].expand(-1, ho_wo).reshape(-1)
        return Conv(weight, bias, in_shape=b.in_shape, stride=b.stride, padding=(0, 0), groups=1)
    return None
