"""Input transformations: defenses that map a batch of images to a batch of images.

Each class is a ``Defense`` (``advex.defenses.base``) acting on (B, C, H, W) tensors in pixel
space, any number of channels, and returning a tensor of the same shape inside ``bounds``.
Randomized ones (``randomized = True``: the adaptive evaluation averages gradients over draws,
EOT) draw one transformation per sample from the defense's own generator; non-differentiable
ones (``differentiable = False``: the adaptive evaluation replaces the backward pass, BPDA) give
``backward_surrogate``, a differentiable stand-in (identity unless stated).

========================  ==========  ==============  ==========================================
class                     randomized  differentiable  source
========================  ==========  ==============  ==========================================
``ResizePad``             yes         yes             Xie et al. 2018
``JPEG``                  no          no (cubic)      Dziugaite et al. 2016; Guo et al. 2018
``BitDepth``              no          no (identity)   Xu et al. 2018 (feature squeezing)
``MedianFilter``          no          yes             Xu et al. 2018 (feature squeezing)
``GaussianBlur``          no          yes             a low-pass filter
``GaussianNoise``         yes         yes             Gaussian noise (as in randomized smoothing)
``RandomTranslate``       yes         yes             random spatial transforms
``RandomRotate``          yes         yes             random spatial transforms
``RandomFlip``            yes         yes             random spatial transforms
========================  ==========  ==============  ==========================================

These defenses are known to fall to adaptive attacks (Athalye et al. 2018); advex ships them so
that evaluations can show it.

References:
    Xie, Wang, Zhang, Ren, Yuille. Mitigating Adversarial Effects Through Randomization.
    ICLR 2018. arXiv:1711.01991
    Dziugaite, Ghahramani, Roy. A study of the effect of JPG compression on adversarial images.
    2016. arXiv:1608.00853
    Guo, Rana, Cisse, van der Maaten. Countering Adversarial Images using Input
    Transformations. ICLR 2018. arXiv:1711.00117
    Shin, Song. JPEG-resistant Adversarial Images. NIPS 2017 Workshop on Machine Learning and
    Computer Security.
    Xu, Evans, Qi. Feature Squeezing: Detecting Adversarial Examples in Deep Neural Networks.
    NDSS 2018. arXiv:1704.01155
    Athalye, Carlini, Wagner. Obfuscated Gradients Give a False Sense of Security: Circumventing
    Defenses to Adversarial Examples. ICML 2018. arXiv:1802.00420
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from advex.attacks.spatial import rigid_flow, warp
from advex.defenses.base import Defense

__all__ = [
    "JPEG",
    "BitDepth",
    "GaussianBlur",
    "GaussianNoise",
    "MedianFilter",
    "RandomFlip",
    "RandomRotate",
    "RandomTranslate",
    "ResizePad",
    "jpeg_quantization_table",
]

Bounds = tuple[float, float]


# ----- argument checks ---------------------------------------------------------------------
def _check_bounds(bounds: object) -> Bounds:
    if (
        not isinstance(bounds, tuple | list)
        or len(bounds) != 2
        or not all(isinstance(b, int | float) and not isinstance(b, bool) for b in bounds)
    ):
        raise TypeError(f"bounds: expected a pair of numbers (lo, hi), got {bounds!r}")
    lo, hi = float(bounds[0]), float(bounds[1])
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"bounds: expected finite lo < hi, got {bounds!r}")
    return lo, hi


def _check_int(name: str, value: object, low: int, high: int | None = None) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__}")
    if value < low or (high is not None and value > high):
        upper = "" if high is None else f", <= {high}"
        raise ValueError(f"{name}: expected an int >= {low}{upper}, got {value}")
    return value


def _check_float(name: str, value: object, *, positive: bool = False) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise TypeError(f"{name}: expected a number, got {type(value).__name__}")
    v = float(value)
    if not math.isfinite(v) or v < 0 or (positive and v == 0):
        raise ValueError(f"{name}: expected a finite number {'>' if positive else '>='} 0, got {v}")
    return v


def _check_fill(fill: object, bounds: Bounds) -> float:
    if not isinstance(fill, int | float) or isinstance(fill, bool):
        raise TypeError(f"fill: expected a number, got {type(fill).__name__}")
    if not bounds[0] <= float(fill) <= bounds[1]:
        raise ValueError(f"fill: expected a value inside bounds {bounds}, got {fill}")
    return float(fill)


def _check_images(x: object) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"x: expected a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 4:
        raise ValueError(f"x: expected images of shape (B, C, H, W), got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"x: expected a floating-point tensor, got {x.dtype}")
    return x


# ----- random resizing and padding ---------------------------------------------------------
#: Xie et al. resize 299×299 inputs to rnd ∈ [299, 331) and pad to 331×331.
XIE_RATIO = 299 / 331


def _resize_pad(
    x: Tensor, size: Tensor, width: Tensor, top: Tensor, left: Tensor, fill: float
) -> Tensor:
    """Each x[b] resized bilinearly to size[b] × width[b] and put at (top[b], left[b]) of an
    H × W canvas of ``fill``: ``F.interpolate(mode="bilinear", align_corners=False)`` (no
    antialiasing) and ``F.pad``, per sample, in one batched resampling.

    Output pixel (i, j) inside the pasted image reads x at rows (i − top + ½)·H/size − ½ and
    columns (j − left + ½)·W/width − ½ (computed in float64: a full-size image is copied
    exactly)."""
    b, _, h, w = x.shape
    dev = x.device
    rows = torch.arange(h, device=dev, dtype=torch.float64).view(1, h, 1)
    cols = torch.arange(w, device=dev, dtype=torch.float64).view(1, 1, w)
    s = size.to(torch.float64).view(b, 1, 1)
    sw = width.to(torch.float64).view(b, 1, 1)
    t = top.to(torch.float64).view(b, 1, 1)
    lf = left.to(torch.float64).view(b, 1, 1)
    src_r = (rows - t + 0.5) * (h / s) - 0.5
    src_c = (cols - lf + 0.5) * (w / sw) - 0.5
    flow = torch.stack([(src_r - rows).expand(b, h, w), (src_c - cols).expand(b, h, w)], dim=1)
    inside = (rows >= t) & (rows < t + s) & (cols >= lf) & (cols < lf + sw)  # (B, H, W)
    out = warp(x, flow.to(x.dtype), padding="border")
    return torch.where(inside.unsqueeze(1), out, torch.full_like(out, fill))


class ResizePad(Defense):
    """Random resizing and random padding (Xie et al. 2018), for fixed-size models.

    Per sample, draw a side s uniformly from {min_size, …, H}, resize the image bilinearly to
    s × round(s·W/H), and place it at a uniformly drawn offset (top ∈ {0, …, H − s}, left
    likewise) on an H × W canvas of ``fill`` (zero padding). The paper enlarges 299-pixel
    images to rnd ∈ [299, 331) and pads them to 331 for a network that accepts any size; here the
    model keeps its input size, so the image shrinks instead, by the same ratio:
    default min_size = round(H · 299/331). Bilinear resizing (no antialiasing) and padding are
    differentiable. s = H leaves a sample unchanged, exactly.

    Args:
        min_size: smallest side (≥ 1, ≤ H at call time); None for round(H · 299/331).
        fill: value of the padding (inside ``bounds``).
        bounds: the pixel range (outputs are clipped to it).
        seed: of the defense's generator.

    Xie, Wang, Zhang, Ren, Yuille. Mitigating Adversarial Effects Through Randomization.
    ICLR 2018. arXiv:1711.01991
    """

    randomized: ClassVar[bool] = True
    differentiable: ClassVar[bool] = True

    def __init__(
        self,
        min_size: int | None = None,
        *,
        fill: float = 0.0,
        bounds: Bounds = (0.0, 1.0),
        seed: int = 0,
    ) -> None:
        super().__init__(seed=seed)
        self.min_size = None if min_size is None else _check_int("min_size", min_size, 1)
        self.bounds = _check_bounds(bounds)
        self.fill = _check_fill(fill, self.bounds)

    def forward(self, x: Tensor) -> Tensor:
        x = _check_images(x)
        b, _, h, w = x.shape
        low = max(1, round(h * XIE_RATIO)) if self.min_size is None else self.min_size
        if low > h:
            raise ValueError(f"min_size: {low} exceeds the image height {h}")
        size = torch.randint(low, h + 1, (b,), generator=self.generator)
        width = (size * w / h).round().long().clamp(1, w)
        u = torch.rand(b, 2, generator=self.generator)
        top = (u[:, 0] * (h - size + 1)).floor().long()
        left = (u[:, 1] * (w - width + 1)).floor().long()
        dev = x.device
        out = _resize_pad(x, size.to(dev), width.to(dev), top.to(dev), left.to(dev), self.fill)
        return out.clamp(*self.bounds)

    def extra_repr(self) -> str:
        return f"min_size={self.min_size}, fill={self.fill}, bounds={self.bounds}"


# ----- JPEG ----------------------------------------------------------------------------------
#: ITU-T T.81 Annex K.1 (the IJG libjpeg base tables), natural (row-major) order.
_LUMA_TABLE = (
    (16, 11, 10, 16, 24, 40, 51, 61),
    (12, 12, 14, 19, 26, 58, 60, 55),
    (14, 13, 16, 24, 40, 57, 69, 56),
    (14, 17, 22, 29, 51, 87, 80, 62),
    (18, 22, 37, 56, 68, 109, 103, 77),
    (24, 35, 55, 64, 81, 104, 113, 92),
    (49, 64, 78, 87, 103, 121, 120, 101),
    (72, 92, 95, 98, 112, 100, 103, 99),
)
_CHROMA_TABLE = (
    (17, 18, 24, 47, 99, 99, 99, 99),
    (18, 21, 26, 66, 99, 99, 99, 99),
    (24, 26, 56, 99, 99, 99, 99, 99),
    (47, 66, 99, 99, 99, 99, 99, 99),
    *((99,) * 8 for _ in range(4)),
)


def jpeg_quantization_table(quality: int, *, chroma: bool = False) -> Tensor:
    """The IJG quantization table for ``quality`` ∈ [1, 100], (8, 8) float64.

    Q = clamp(⌊(Q_base · S + 50) / 100⌋, 1, 255), S = ⌊5000 / quality⌋ below 50 and
    200 − 2·quality from 50 on (libjpeg's ``jpeg_quality_scaling``, baseline tables)."""
    quality = _check_int("quality", quality, 1, 100)
    scale = 5000 // quality if quality < 50 else 200 - 2 * quality
    base = torch.tensor(_CHROMA_TABLE if chroma else _LUMA_TABLE, dtype=torch.int64)
    return ((base * scale + 50) // 100).clamp(1, 255).to(torch.float64)


def _dct_matrix() -> Tensor:
    """The orthonormal 8-point DCT-II matrix D, D[k, n] = α_k cos(π(2n + 1)k / 16)."""
    n = torch.arange(8, dtype=torch.float64)
    d = torch.cos(math.pi * (2 * n.view(1, 8) + 1) * n.view(8, 1) / 16) * math.sqrt(2 / 8)
    d[0] = math.sqrt(1 / 8)
    return d


def _cubic_round(t: Tensor) -> Tensor:
    """round(t) + (t − round(t))³ (Shin & Song 2017): rounding with a non-zero gradient."""
    r = torch.round(t).detach()
    return r + (t - r) ** 3


def _identity(t: Tensor) -> Tensor:
    return t


def _replicate_to(p: Tensor, multiple: int) -> Tensor:
    h, w = p.shape[-2:]
    ph, pw = -h % multiple, -w % multiple
    return F.pad(p, (0, pw, 0, ph), mode="replicate") if ph or pw else p


def _shift(p: Tensor, dim: int, step: int) -> Tensor:
    """p moved by one along ``dim`` (step −1: each entry takes its predecessor's value, +1: its
    successor's), the edge entry replicated."""
    n = p.shape[dim]
    if step < 0:
        return torch.cat([p.narrow(dim, 0, 1), p.narrow(dim, 0, n - 1)], dim=dim)
    return torch.cat([p.narrow(dim, 1, n - 1), p.narrow(dim, n - 1, 1)], dim=dim)


def _interleave(a: Tensor, b: Tensor, dim: int) -> Tensor:
    """a[0], b[0], a[1], b[1], … along ``dim``."""
    dim = dim % a.ndim
    shape = list(a.shape)
    shape[dim] *= 2
    return torch.stack([a, b], dim=dim + 1).reshape(shape)


class JPEG(Defense):
    """JPEG compression and decompression (baseline, IJG quality scaling), in batched torch.

    The codec of libjpeg as an 8-bit encoder/decoder pair would run it, on each image:

    1. map to [0, 255] and round to 8 bits;
    2. C = 3: RGB → YCbCr (JFIF: Y = 0.299R + 0.587G + 0.114B, Cb, Cr offset by 128), rounded;
       with ``chroma_subsampling`` (4:2:0, libjpeg's default) Cb and Cr are averaged over 2 × 2
       pixels. C ≠ 3: every channel is coded as a grayscale image (luma table);
    3. pad each plane to whole 8 × 8 blocks (16 × 16 before subsampling) by edge replication;
    4. per block B − 128: coefficients F = D (B − 128) Dᵀ (orthonormal DCT-II, D 8 × 8);
    5. quantize F̂ = Q · round(F / Q), Q the IJG table for ``quality`` (``jpeg_quantization_table``);
    6. decode: Dᵀ F̂ D + 128, rounded and clipped to [0, 255]; chroma upsampled by libjpeg's
       "fancy" (triangular, 3/4–1/4) filter; YCbCr → RGB, rounded and clipped; crop, map back.

    Differences from libjpeg: a float DCT (libjpeg's default is a 13-bit integer one) and
    round-half-to-even at ties. Against PIL (libjpeg-turbo) at quality 75 on MNIST digits: mean
    |difference| 0.13 gray levels, 7 % of the pixels differ at all, a few by one quantization
    step of a coefficient that lies near a rounding tie (tests/defenses/test_transforms.py).

    Not differentiable (rounding): ``backward_surrogate`` is the same pipeline with the
    coefficient rounding of step 5 replaced by round(t) + (t − round(t))³ (Shin & Song 2017) and
    the pixel-domain roundings (steps 1, 2, 6, half a gray level each) dropped. Its gradient
    3(t − round t)² vanishes where a coefficient is an integer multiple of its quantization step,
    e.g. on blocks of constant colour, until the input moves off them (PGD's random start does).

    Args:
        quality: IJG quality in [1, 100] (75: libjpeg's and PIL's default).
        chroma_subsampling: 4:2:0 chroma subsampling for 3-channel images (PIL's default);
            False keeps full-resolution chroma (4:4:4).
        bounds: the pixel range mapped to [0, 255].
        seed: unused (the transformation is deterministic); kept for the common signature.

    Dziugaite, Ghahramani, Roy. A study of the effect of JPG compression on adversarial
    images. 2016. arXiv:1608.00853; Guo, Rana, Cisse, van der Maaten. Countering Adversarial
    Images using Input Transformations. ICLR 2018. arXiv:1711.00117; Shin, Song.
    JPEG-resistant Adversarial Images. NIPS 2017 Workshop on Machine Learning and Computer
    Security.
    """

    randomized: ClassVar[bool] = False
    differentiable: ClassVar[bool] = False

    luma_table: Tensor
    chroma_table: Tensor
    dct: Tensor

    def __init__(
        self,
        quality: int = 75,
        *,
        chroma_subsampling: bool = True,
        bounds: Bounds = (0.0, 1.0),
        seed: int = 0,
    ) -> None:
        super().__init__(seed=seed)
        self.quality = _check_int("quality", quality, 1, 100)
        if not isinstance(chroma_subsampling, bool):
            raise TypeError(
                f"chroma_subsampling: expected a bool, got {type(chroma_subsampling).__name__}"
            )
        self.chroma_subsampling = chroma_subsampling
        self.bounds = _check_bounds(bounds)
        self.register_buffer("luma_table", jpeg_quantization_table(quality), persistent=False)
        self.register_buffer(
            "chroma_table", jpeg_quantization_table(quality, chroma=True), persistent=False
        )
        self.register_buffer("dct", _dct_matrix(), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return self._codec(_check_images(x), exact=True)

    def backward_surrogate(self, x: Tensor) -> Tensor:
        """The codec with cubic rounding of the coefficients (Shin & Song 2017): differentiable
        almost everywhere (it jumps by ¾ of a step where round jumps by one), on MNIST at
        quality 75 within 0.4 gray levels of ``forward`` on average."""
        return self._codec(_check_images(x), exact=False)

    def _codec(self, x: Tensor, *, exact: bool) -> Tensor:
        lo, hi = self.bounds
        rnd: Callable[[Tensor], Tensor] = torch.round if exact else _identity
        t = rnd((x - lo) * (255.0 / (hi - lo))).clamp(0.0, 255.0)
        if t.shape[1] == 3:
            out = self._color(t, rnd, exact)
        else:
            out = self._planes(t, self.luma_table, exact)
        return (out * ((hi - lo) / 255.0) + lo).clamp(lo, hi)

    def _planes(self, p: Tensor, table: Tensor, exact: bool) -> Tensor:
        """Steps 3–6 for every channel of p (B, C, H, W) in [0, 255], each a plane."""
        h, w = p.shape[-2:]
        d = self.dct.to(p.dtype)
        q = table.to(p.dtype)
        blocks = _replicate_to(p, 8) - 128.0
        b, c, hp, wp = blocks.shape
        blocks = blocks.reshape(b, c, hp // 8, 8, wp // 8, 8).transpose(3, 4)
        coef = d @ blocks @ d.T
        coef = (torch.round if exact else _cubic_round)(coef / q) * q
        blocks = (d.T @ coef @ d).transpose(3, 4).reshape(b, c, hp, wp) + 128.0
        if exact:
            blocks = torch.round(blocks)
        return blocks.clamp(0.0, 255.0)[..., :h, :w]

    def _color(self, t: Tensor, rnd: Callable[[Tensor], Tensor], exact: bool) -> Tensor:
        """Steps 2–6 for RGB images t (B, 3, H, W) in [0, 255]."""
        r, g, b = t.unbind(dim=1)
        y = rnd(0.299 * r + 0.587 * g + 0.114 * b).unsqueeze(1)
        cb = rnd(-0.168736 * r - 0.331264 * g + 0.5 * b + 128.0)
        cr = rnd(0.5 * r - 0.418688 * g - 0.081312 * b + 128.0)
        chroma = torch.stack([cb, cr], dim=1)
        y = self._planes(y, self.luma_table, exact)
        if self.chroma_subsampling:
            # as libjpeg: edges replicated to whole 16 × 16 MCUs, then 2 × 2 means; the decoder
            # upsamples the ⌈H/2⌉ × ⌈W/2⌉ chroma planes, edges replicated
            h, w = t.shape[-2:]
            chroma = self._downsample(_replicate_to(chroma, 16), exact)
            chroma = self._planes(chroma, self.chroma_table, exact)[
                ..., : (h + 1) // 2, : (w + 1) // 2
            ]
            chroma = self._upsample(chroma, exact)[..., :h, :w]
        else:
            chroma = self._planes(chroma, self.chroma_table, exact)
        y = y.squeeze(1)
        cb, cr = chroma[:, 0] - 128.0, chroma[:, 1] - 128.0
        rgb = torch.stack(
            [y + 1.402 * cr, y - 0.344136 * cb - 0.714136 * cr, y + 1.772 * cb], dim=1
        )
        return rnd(rgb).clamp(0.0, 255.0)

    @staticmethod
    def _downsample(c: Tensor, exact: bool) -> Tensor:
        """2 × 2 means; exact: libjpeg's (sum + bias) >> 2 with bias 1, 2, 1, 2, … by column."""
        s = F.avg_pool2d(c, 2, divisor_override=1)
        if not exact:
            return s / 4
        bias = 1.0 + (torch.arange(s.shape[-1], device=s.device) % 2).to(s.dtype)
        return torch.floor((s + bias) / 4)

    @staticmethod
    def _upsample(c: Tensor, exact: bool) -> Tensor:
        """libjpeg's h2v2 "fancy" upsampling: each output pixel is (9·near + 3·side + 3·side' +
        1·diagonal) / 16 of the four nearest chroma samples, edges replicated; exact: the
        integer rounding (S + 8) >> 4 on even columns, (S + 7) >> 4 on odd ones."""
        rows = _interleave(3 * c + _shift(c, -2, -1), 3 * c + _shift(c, -2, 1), dim=-2)
        even = 3 * rows + _shift(rows, -1, -1)
        odd = 3 * rows + _shift(rows, -1, 1)
        if exact:
            even, odd = torch.floor((even + 8) / 16), torch.floor((odd + 7) / 16)
        else:
            even, odd = even / 16, odd / 16
        return _interleave(even, odd, dim=-1)

    def extra_repr(self) -> str:
        sub = "" if self.chroma_subsampling else ", chroma_subsampling=False"
        return f"quality={self.quality}{sub}, bounds={self.bounds}"


# ----- feature squeezing ---------------------------------------------------------------------
class BitDepth(Defense):
    """Bit-depth reduction (feature squeezing, Xu et al. 2018): each pixel rounded to the nearest
    of 2^bits levels spanning the bounds,

        g(x) = lo + (hi − lo) · round((x − lo)/(hi − lo) · L) / L,   L = 2^bits − 1.

    Not differentiable (its gradient is zero almost everywhere); ``backward_surrogate`` is the
    identity (straight-through, as BPDA uses it in Athalye et al. 2018).

    Args:
        bits: 1 to 16 (1: a binary image; Xu et al. use 1 bit on MNIST).
        bounds: the pixel range.

    Xu, Evans, Qi. Feature Squeezing: Detecting Adversarial Examples in Deep Neural Networks.
    NDSS 2018. arXiv:1704.01155
    """

    randomized: ClassVar[bool] = False
    differentiable: ClassVar[bool] = False

    def __init__(self, bits: int, *, bounds: Bounds = (0.0, 1.0), seed: int = 0) -> None:
        super().__init__(seed=seed)
        self.bits = _check_int("bits", bits, 1, 16)
        self.bounds = _check_bounds(bounds)

    def forward(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor) or not x.is_floating_point():
            raise TypeError("x: expected a floating-point torch.Tensor")
        lo, hi = self.bounds
        levels = 2**self.bits - 1
        k = torch.round((x.clamp(lo, hi) - lo) * (levels / (hi - lo)))
        if lo == 0.0 and hi == 1.0:
            return k / levels
        return (k / levels * (hi - lo) + lo).clamp(lo, hi)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, bounds={self.bounds}"


def _symmetric_index(n: int, before: int, after: int, device: torch.device) -> Tensor:
    """Indices of a length-n axis extended by half-sample symmetry (d c b a | a b c d | d c b a,
    scipy.ndimage's "reflect"), ``before`` entries before and ``after`` after."""
    i = torch.arange(-before, n + after, device=device) % (2 * n)
    return torch.where(i < n, i, 2 * n - 1 - i)


class MedianFilter(Defense):
    """Median smoothing (feature squeezing's local smoothing, Xu et al. 2018): each pixel of
    each channel replaced by the median of the k × k window around it,

        g(x)_{c,i,j} = median{x_{c,i+a,j+b} : a, b ∈ {−⌊k/2⌋, …, k − 1 − ⌊k/2⌋}},

    the image extended by half-sample symmetry, as ``scipy.ndimage.median_filter`` (Xu et al.'s
    implementation) does; for even k the upper of the two middle values (scipy's rank k²/2).

    Marked differentiable: the median is piecewise linear (it selects one input per output, like
    max-pooling), so its gradient is exact almost everywhere and gradient attacks go through it
    directly (He et al. 2017 break feature squeezing's median filter so); treating it with BPDA
    would only throw that gradient away.

    Args:
        kernel_size: k ≥ 1 (Xu et al.: 2 for MNIST and CIFAR-10, 2–3 for ImageNet).

    Xu, Evans, Qi. Feature Squeezing: Detecting Adversarial Examples in Deep Neural Networks.
    NDSS 2018. arXiv:1704.01155; He, Wei, Chen, Carlini, Song. Adversarial Example Defenses:
    Ensembles of Weak Defenses are not Strong. WOOT 2017. arXiv:1706.04701
    """

    randomized: ClassVar[bool] = False
    differentiable: ClassVar[bool] = True

    def __init__(self, kernel_size: int = 3, *, seed: int = 0) -> None:
        super().__init__(seed=seed)
        self.kernel_size = _check_int("kernel_size", kernel_size, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = _check_images(x)
        k = self.kernel_size
        if k == 1:
            return x
        _, _, h, w = x.shape
        before, after = k // 2, k - 1 - k // 2
        xp = x.index_select(2, _symmetric_index(h, before, after, x.device))
        xp = xp.index_select(3, _symmetric_index(w, before, after, x.device))
        windows = xp.unfold(2, k, 1).unfold(3, k, 1).flatten(-2)  # (B, C, H, W, k²)
        return windows.kthvalue(k * k // 2 + 1, dim=-1).values

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}"


# ----- smoothing and noise -------------------------------------------------------------------
class GaussianBlur(Defense):
    """Gaussian blur: a depthwise convolution with the normalized kernel

        w_i = exp(−i² / 2σ²) / Σ_j exp(−j² / 2σ²),   i ∈ {−r, …, r},  k = 2r + 1,

    applied along rows then columns (separable), each channel alone, the image extended by
    reflection (d c b | a b c d | c b a). Weights sum to one, so a constant image is unchanged
    and outputs stay in the bounds. Deterministic and differentiable.

    Args:
        sigma: standard deviation in pixels, > 0.
        kernel_size: odd k; None for 2⌈3σ⌉ + 1. Reflection needs k ≤ 2·min(H, W) − 1.
        bounds: the pixel range (outputs are clipped to it, against rounding).
    """

    randomized: ClassVar[bool] = False
    differentiable: ClassVar[bool] = True

    def __init__(
        self,
        sigma: float,
        kernel_size: int | None = None,
        *,
        bounds: Bounds = (0.0, 1.0),
        seed: int = 0,
    ) -> None:
        super().__init__(seed=seed)
        self.sigma = _check_float("sigma", sigma, positive=True)
        if kernel_size is None:
            kernel_size = 2 * math.ceil(3 * self.sigma) + 1
        self.kernel_size = _check_int("kernel_size", kernel_size, 1)
        if self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size: expected an odd int, got {self.kernel_size}")
        self.bounds = _check_bounds(bounds)

    def kernel(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """The normalized 1-D kernel, shape (k,)."""
        r = self.kernel_size // 2
        i = torch.arange(-r, r + 1, dtype=torch.float64)
        g = torch.exp(-(i**2) / (2 * self.sigma**2))
        return (g / g.sum()).to(dtype)

    def forward(self, x: Tensor) -> Tensor:
        x = _check_images(x)
        k = self.kernel_size
        if k == 1:
            return x
        _, c, h, w = x.shape
        r = k // 2
        if r >= min(h, w):
            raise ValueError(
                f"kernel_size: {k} is too large for reflection padding of a {h}×{w} image "
                f"(at most {2 * min(h, w) - 1})"
            )
        g = self.kernel(x.dtype).to(x.device)
        out = F.pad(x, (r, r, r, r), mode="reflect")
        out = F.conv2d(out, g.view(1, 1, k, 1).expand(c, 1, k, 1), groups=c)
        out = F.conv2d(out, g.view(1, 1, 1, k).expand(c, 1, 1, k), groups=c)
        return out.clamp(*self.bounds)

    def extra_repr(self) -> str:
        return f"sigma={self.sigma}, kernel_size={self.kernel_size}, bounds={self.bounds}"


class GaussianNoise(Defense):
    """Additive Gaussian noise: g(x) = clip(x + σ·z, lo, hi), z ~ N(0, I) drawn afresh on every
    call (the noise of randomized smoothing, Cohen et al. 2019, used as a plain defense).

    Args:
        sigma: standard deviation, ≥ 0 (0: the identity).
        clip: clip to the bounds (False: outputs may leave them, as in randomized smoothing).
        bounds: the pixel range.
        seed: of the defense's generator.

    Cohen, Rosenfeld, Kolter. Certified Adversarial Robustness via Randomized Smoothing.
    ICML 2019. arXiv:1902.02918
    """

    randomized: ClassVar[bool] = True
    differentiable: ClassVar[bool] = True

    def __init__(
        self, sigma: float, *, clip: bool = True, bounds: Bounds = (0.0, 1.0), seed: int = 0
    ) -> None:
        super().__init__(seed=seed)
        self.sigma = _check_float("sigma", sigma)
        if not isinstance(clip, bool):
            raise TypeError(f"clip: expected a bool, got {type(clip).__name__}")
        self.clip = clip
        self.bounds = _check_bounds(bounds)

    def forward(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor) or not x.is_floating_point():
            raise TypeError("x: expected a floating-point torch.Tensor")
        out = x + self.sigma * self.randn(*x.shape, like=x)
        return out.clamp(*self.bounds) if self.clip else out

    def extra_repr(self) -> str:
        return f"sigma={self.sigma}, clip={self.clip}, bounds={self.bounds}"


# ----- random spatial transformations --------------------------------------------------------
class RandomTranslate(Defense):
    """Random translation by whole pixels: per sample (Δrow, Δcol) uniform in
    {−m, …, m}², g(x)_{i,j} = x_{i−Δrow, j−Δcol}, pixels shifted in from outside set to ``fill``.
    Exact copies (integer shifts), differentiable.

    Args:
        max_shift: m ≥ 0 in pixels.
        fill: value of the uncovered pixels (inside ``bounds``).
        bounds: the pixel range.
        seed: of the defense's generator.
    """

    randomized: ClassVar[bool] = True
    differentiable: ClassVar[bool] = True

    def __init__(
        self, max_shift: int, *, fill: float = 0.0, bounds: Bounds = (0.0, 1.0), seed: int = 0
    ) -> None:
        super().__init__(seed=seed)
        self.max_shift = _check_int("max_shift", max_shift, 0)
        self.bounds = _check_bounds(bounds)
        self.fill = _check_fill(fill, self.bounds)

    def forward(self, x: Tensor) -> Tensor:
        x = _check_images(x)
        m = self.max_shift
        shift = self.randint(-m, m + 1, x.shape[0], 2, like=x)
        angle = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
        flow = rigid_flow(angle, shift.to(torch.float64), (x.shape[2], x.shape[3]), dtype=x.dtype)
        return (warp(x - self.fill, flow, padding="zeros") + self.fill).clamp(*self.bounds)

    def extra_repr(self) -> str:
        return f"max_shift={self.max_shift}, fill={self.fill}, bounds={self.bounds}"


class RandomRotate(Defense):
    """Random rotation about the image centre: per sample θ uniform in [−max_degrees,
    max_degrees]; the output pixel p reads x bilinearly at R(−θ)(p − c) + c, pixels from outside
    the image set to ``fill`` (``advex.attacks.spatial.warp``, zeros padding). θ = 0 is the
    identity exactly. Differentiable.

    Args:
        max_degrees: ≥ 0.
        fill: value of the uncovered pixels (inside ``bounds``).
        bounds: the pixel range.
        seed: of the defense's generator.
    """

    randomized: ClassVar[bool] = True
    differentiable: ClassVar[bool] = True

    def __init__(
        self,
        max_degrees: float,
        *,
        fill: float = 0.0,
        bounds: Bounds = (0.0, 1.0),
        seed: int = 0,
    ) -> None:
        super().__init__(seed=seed)
        self.max_degrees = _check_float("max_degrees", max_degrees)
        self.bounds = _check_bounds(bounds)
        self.fill = _check_fill(fill, self.bounds)

    def forward(self, x: Tensor) -> Tensor:
        x = _check_images(x)
        b = x.shape[0]
        u = torch.rand(b, generator=self.generator, dtype=torch.float64)
        angle = ((2 * u - 1) * self.max_degrees).to(x.device)
        shift = torch.zeros(b, 2, dtype=torch.float64, device=x.device)
        flow = rigid_flow(angle, shift, (x.shape[2], x.shape[3]), dtype=x.dtype)
        return (warp(x - self.fill, flow, padding="zeros") + self.fill).clamp(*self.bounds)

    def extra_repr(self) -> str:
        return f"max_degrees={self.max_degrees}, fill={self.fill}, bounds={self.bounds}"


FlipDims = Literal["horizontal", "vertical", "both"]


class RandomFlip(Defense):
    """Random mirror flips: per sample, with probability p, x reversed left–right
    ("horizontal"), top–bottom ("vertical"), or each of the two independently ("both").
    Exact copies, differentiable.

    Args:
        p: flip probability in [0, 1].
        dims: "horizontal", "vertical" or "both".
        seed: of the defense's generator.
    """

    randomized: ClassVar[bool] = True
    differentiable: ClassVar[bool] = True

    def __init__(self, p: float = 0.5, dims: FlipDims = "horizontal", *, seed: int = 0) -> None:
        super().__init__(seed=seed)
        self.p = _check_float("p", p)
        if self.p > 1:
            raise ValueError(f"p: expected a probability in [0, 1], got {self.p}")
        if dims not in ("horizontal", "vertical", "both"):
            raise ValueError(f"dims: expected 'horizontal', 'vertical' or 'both', got {dims!r}")
        self.dims: FlipDims = dims

    def forward(self, x: Tensor) -> Tensor:
        x = _check_images(x)
        flip = self.rand(x.shape[0], 2, like=x) < self.p  # (B, [columns, rows])
        if self.dims in ("horizontal", "both"):
            x = torch.where(flip[:, 0].view(-1, 1, 1, 1), x.flip(-1), x)
        if self.dims in ("vertical", "both"):
            x = torch.where(flip[:, 1].view(-1, 1, 1, 1), x.flip(-2), x)
        return x

    def extra_repr(self) -> str:
        return f"p={self.p}, dims={self.dims!r}"
