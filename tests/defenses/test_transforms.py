"""Input-transformation defenses: shapes, bounds, determinism under a seed, closed forms, and
parity with reference implementations (PIL's libjpeg-turbo for JPEG, scipy.ndimage for the
median and Gaussian filters, F.interpolate + F.pad for resize-and-pad)."""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from advex import data, zoo
from advex.defenses.base import Defense, defend, is_nondifferentiable, is_randomized, seed
from advex.defenses.transforms import (
    JPEG,
    BitDepth,
    GaussianBlur,
    GaussianNoise,
    MedianFilter,
    RandomFlip,
    RandomRotate,
    RandomTranslate,
    ResizePad,
    _resize_pad,
    jpeg_quantization_table,
)

# name → factory(bounds, seed); every defense at settings that change typical images
FACTORIES: dict[str, Callable[..., Defense]] = {
    "resize_pad": lambda b=(0.0, 1.0), s=0: ResizePad(bounds=b, fill=b[0], seed=s),
    "jpeg": lambda b=(0.0, 1.0), s=0: JPEG(60, bounds=b, seed=s),
    "jpeg_444": lambda b=(0.0, 1.0), s=0: JPEG(60, chroma_subsampling=False, bounds=b, seed=s),
    "bit_depth": lambda b=(0.0, 1.0), s=0: BitDepth(3, bounds=b, seed=s),
    "median": lambda b=(0.0, 1.0), s=0: MedianFilter(3, seed=s),
    "blur": lambda b=(0.0, 1.0), s=0: GaussianBlur(1.0, bounds=b, seed=s),
    "noise": lambda b=(0.0, 1.0), s=0: GaussianNoise(0.3, bounds=b, seed=s),
    "translate": lambda b=(0.0, 1.0), s=0: RandomTranslate(3, bounds=b, fill=b[0], seed=s),
    "rotate": lambda b=(0.0, 1.0), s=0: RandomRotate(30.0, bounds=b, fill=b[0], seed=s),
    "flip": lambda b=(0.0, 1.0), s=0: RandomFlip(0.5, "both", seed=s),
}
RANDOMIZED = ["resize_pad", "noise", "translate", "rotate", "flip"]
NONDIFFERENTIABLE = ["jpeg", "jpeg_444", "bit_depth"]


def _images(shape: tuple[int, ...], seed_: int = 0, bounds: tuple[float, float] = (0, 1)) -> Tensor:
    g = torch.Generator().manual_seed(seed_)
    lo, hi = bounds
    return lo + (hi - lo) * torch.rand(shape, generator=g)


@pytest.fixture(scope="module")
def mnist() -> tuple[Tensor, Tensor]:
    x, y = data.load("mnist5k", split="test")
    return x[:200], y[:200]


# ----- every defense -------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(FACTORIES))
@pytest.mark.parametrize("shape", [(4, 1, 28, 28), (3, 3, 13, 18), (2, 2, 9, 9)])
@pytest.mark.parametrize("bounds", [(0.0, 1.0), (-1.0, 2.0)])
def test_shape_dtype_and_bounds_kept(name: str, shape: tuple[int, ...], bounds) -> None:
    x = _images(shape, bounds=bounds)
    out = FACTORIES[name](bounds)(x)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert float(out.min()) >= bounds[0] and float(out.max()) <= bounds[1]
    assert not torch.equal(out, x), "every defense at these settings changes random images"


@pytest.mark.parametrize("name", RANDOMIZED)
def test_randomized_same_seed_same_output_other_seed_other(name: str) -> None:
    x = _images((6, 3, 16, 16))
    a, b, c = FACTORIES[name](s=5), FACTORIES[name](s=5), FACTORIES[name](s=6)
    first = a(x)
    assert torch.equal(first, b(x))
    assert not torch.equal(first, c(x))
    assert not torch.equal(first, a(x)), "a second call draws again"
    a.reseed(5)
    assert torch.equal(first, a(x))
    model = defend(torch.nn.Flatten(), FACTORIES[name](s=0))
    seed(model, 5)  # the only defense inside gets seed 5
    assert torch.equal(model.module[0](x), first)


@pytest.mark.parametrize("name", [n for n in FACTORIES if n not in RANDOMIZED])
def test_deterministic_defenses_repeat_exactly(name: str) -> None:
    x = _images((4, 3, 16, 16))
    assert torch.equal(FACTORIES[name](s=0)(x), FACTORIES[name](s=9)(x))


@pytest.mark.parametrize("name", list(FACTORIES))
def test_flags_on_the_defended_model(name: str) -> None:
    model = defend(torch.nn.Flatten(), FACTORIES[name]())
    assert is_randomized(model) is (name in RANDOMIZED)
    assert is_nondifferentiable(model) is (name in NONDIFFERENTIABLE)


@pytest.mark.parametrize("name", [n for n in FACTORIES if n not in NONDIFFERENTIABLE])
def test_differentiable_defenses_pass_a_gradient(name: str) -> None:
    x = _images((3, 1, 12, 12)).mul(0.8).add(0.1).requires_grad_(True)
    out = FACTORIES[name]()(x)
    (grad,) = torch.autograd.grad((out * torch.linspace(0, 1, out.numel()).view_as(out)).sum(), x)
    assert torch.isfinite(grad).all() and float(grad.abs().sum()) > 0


@pytest.mark.parametrize("name", list(FACTORIES))
def test_rejects_non_image_input(name: str) -> None:
    d = FACTORIES[name]()
    with pytest.raises((TypeError, ValueError), match="x"):
        d(torch.zeros(5, 3, 4, 4, dtype=torch.int64))
    if name not in ("bit_depth", "noise"):  # pointwise: any shape
        with pytest.raises(ValueError, match=r"x: expected images of shape \(B, C, H, W\)"):
            d(torch.zeros(3, 8, 8))


def test_extra_repr_names_the_settings() -> None:
    assert "quality=60" in repr(FACTORIES["jpeg"]())
    assert "bits=3" in repr(BitDepth(3))
    assert "sigma=1.0, kernel_size=7" in repr(GaussianBlur(1.0))
    assert "max_degrees=30.0" in repr(RandomRotate(30))
    assert "min_size=20" in repr(ResizePad(20))
    assert "dims='vertical'" in repr(RandomFlip(dims="vertical"))


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda: JPEG(0), ValueError, "quality"),
        (lambda: JPEG(101), ValueError, "quality"),
        (lambda: JPEG(75.0), TypeError, "quality"),
        (lambda: JPEG(True), TypeError, "quality"),
        (lambda: JPEG(chroma_subsampling=1), TypeError, "chroma_subsampling"),
        (lambda: JPEG(bounds=(1.0, 0.0)), ValueError, "bounds"),
        (lambda: JPEG(bounds=(0.0,)), TypeError, "bounds"),
        (lambda: BitDepth(0), ValueError, "bits"),
        (lambda: BitDepth(17), ValueError, "bits"),
        (lambda: GaussianBlur(0.0), ValueError, "sigma"),
        (lambda: GaussianBlur(-1.0), ValueError, "sigma"),
        (lambda: GaussianBlur(1.0, 4), ValueError, "kernel_size"),
        (lambda: GaussianNoise(-0.1), ValueError, "sigma"),
        (lambda: GaussianNoise(float("nan")), ValueError, "sigma"),
        (lambda: GaussianNoise(0.1, clip=1), TypeError, "clip"),
        (lambda: MedianFilter(0), ValueError, "kernel_size"),
        (lambda: ResizePad(0), ValueError, "min_size"),
        (lambda: ResizePad(fill=2.0), ValueError, "fill"),
        (lambda: RandomTranslate(-1), ValueError, "max_shift"),
        (lambda: RandomTranslate(2.5), TypeError, "max_shift"),
        (lambda: RandomRotate(-3.0), ValueError, "max_degrees"),
        (lambda: RandomRotate(10, fill=-0.5), ValueError, "fill"),
        (lambda: RandomFlip(1.5), ValueError, "p"),
        (lambda: RandomFlip(dims="diagonal"), ValueError, "dims"),
    ],
)
def test_bad_arguments_raise_naming_them(make, error, message: str) -> None:
    with pytest.raises(error, match=message):
        make()


def test_size_dependent_errors_at_call_time() -> None:
    with pytest.raises(ValueError, match="min_size: 30 exceeds the image height 28"):
        ResizePad(30)(torch.zeros(1, 1, 28, 28))
    with pytest.raises(ValueError, match="kernel_size: 9 is too large"):
        GaussianBlur(1.0, 9)(torch.zeros(1, 1, 4, 4))


# ----- ResizePad -----------------------------------------------------------------------------
def test_resize_pad_at_full_size_is_the_identity() -> None:
    x = _images((5, 3, 28, 28))
    assert torch.equal(ResizePad(28)(x), x)


def test_resize_pad_matches_interpolate_then_pad() -> None:
    x = _images((4, 2, 20, 24), seed_=1)
    size, width = torch.tensor([20, 15, 17, 11]), torch.tensor([24, 18, 20, 13])
    top, left = torch.tensor([0, 3, 0, 9]), torch.tensor([0, 6, 4, 0])
    out = _resize_pad(x, size, width, top, left, 0.25)
    for i in range(4):
        small = F.interpolate(x[i : i + 1], size=(int(size[i]), int(width[i])), mode="bilinear")
        t, lf = int(top[i]), int(left[i])
        pads = (lf, 24 - lf - int(width[i]), t, 20 - t - int(size[i]))
        ref = F.pad(small, pads, value=0.25)
        torch.testing.assert_close(out[i : i + 1], ref, atol=1e-5, rtol=0)


def test_resize_pad_draws_a_side_in_range_per_sample() -> None:
    x = torch.ones(200, 1, 28, 28)
    out = ResizePad(20, seed=3)(x)  # a white square of side s on black
    rows = (out > 0).any(dim=3).sum(dim=(1, 2))
    cols = (out > 0).any(dim=2).sum(dim=(1, 2))
    assert torch.equal(rows, cols)
    assert set(rows.tolist()) == set(range(20, 29)), "every side in [min_size, H] occurs"
    # default: the paper's ratio 299/331 of the side, round(28 · 0.903) = 25
    sides = (ResizePad(seed=3)(x) > 0).any(dim=3).sum(dim=(1, 2))
    assert set(sides.tolist()) == {25, 26, 27, 28}


# ----- JPEG ----------------------------------------------------------------------------------
def _pil_jpeg(x: Tensor, quality: int, subsampling: int | None = None) -> Tensor:
    """Round trip of each image through PIL's JPEG encoder/decoder (8-bit)."""
    image_module = pytest.importorskip("PIL.Image")
    mode = "L" if x.shape[1] == 1 else "RGB"
    out = []
    for img in x:
        a = (img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        im = image_module.fromarray(a[..., 0] if mode == "L" else a, mode)
        buf = io.BytesIO()
        kwargs = {} if subsampling is None else {"subsampling": subsampling}
        im.save(buf, format="JPEG", quality=quality, **kwargs)
        b = np.asarray(image_module.open(io.BytesIO(buf.getvalue())).convert(mode))
        out.append(torch.from_numpy(b.astype(np.float32) / 255).reshape(a.shape).permute(2, 0, 1))
    return torch.stack(out)


def test_quantization_tables_follow_ijg_scaling() -> None:
    assert jpeg_quantization_table(50)[0].tolist() == [16, 11, 10, 16, 24, 40, 51, 61]
    assert jpeg_quantization_table(75)[0, :3].tolist() == [8, 6, 5]  # ⌊(Q·50 + 50)/100⌋
    assert jpeg_quantization_table(10, chroma=True)[7, 7] == 255  # 99 · 500 capped at 255
    assert torch.equal(jpeg_quantization_table(100), torch.ones(8, 8, dtype=torch.float64))


@pytest.mark.parametrize(("quality", "mean_tol"), [(50, 0.2), (75, 0.2), (90, 0.2)])
def test_jpeg_matches_pil_on_mnist(mnist, quality: int, mean_tol: float) -> None:
    """Measured on these 200 digits, quality 50 / 75 / 90: mean |ours − PIL| = 0.11 / 0.13 /
    0.14 gray levels (JPEG itself moves pixels by 4.1 / 2.6 / 1.2 levels on average); 4.3 /
    6.7 / 9.9 % of the pixels differ at all; the largest differences, 22 / 19 / 9 levels, are
    one quantization step of a coefficient that lies near a rounding tie, where the float DCT
    and libjpeg-turbo's integer DCT round differently."""
    x, _ = mnist
    ours, ref = JPEG(quality)(x), _pil_jpeg(x, quality)
    diff = (ours - ref).abs() * 255
    assert float(diff.mean()) < mean_tol
    assert float((diff > 0.5).float().mean()) < 0.1
    assert float(((ours - x).abs() * 255).mean()) > 5 * float(diff.mean())


@pytest.mark.parametrize("subsampling", [0, 2])  # PIL: 0 = 4:4:4, 2 = 4:2:0
@pytest.mark.parametrize("quality", [50, 95])
def test_jpeg_matches_pil_on_colour_images(subsampling: int, quality: int) -> None:
    """Smooth random RGB images of odd sizes. Measured mean |ours − PIL| (gray levels), 4:4:4
    and 4:2:0: 0.25 and 0.33 at quality 50, 0.43 and 0.50 at 95, against a change of 6.8 /
    13.6 and 1.9 / 7.2 levels by the codec itself."""
    g = torch.Generator().manual_seed(0)
    x = F.interpolate(torch.rand(8, 3, 9, 11, generator=g), size=(37, 45), mode="bicubic")
    x = (x.clamp(0, 1) * 255).round() / 255
    ours = JPEG(quality, chroma_subsampling=subsampling == 2)(x)
    diff = (ours - _pil_jpeg(x, quality, subsampling)).abs() * 255
    assert float(diff.mean()) < 0.7
    assert float(((ours - x).abs() * 255).mean()) > 3 * float(diff.mean())


def test_jpeg_output_is_8_bit_and_quality_100_is_near_identity(mnist) -> None:
    x, _ = mnist
    out = JPEG(100)(x)
    assert float((out * 255 - (out * 255).round()).abs().max()) < 1e-4
    assert float((out - x).abs().max()) * 255 < 2.5  # measured: at most 2 gray levels
    assert float((out - x).abs().mean()) < 0.1 / 255
    # colour noise at 4:4:4: the two colour conversions round too (measured: at most 3 levels)
    x_rgb = _images((2, 3, 16, 16)).mul(255).round().div(255)
    rgb = JPEG(100, chroma_subsampling=False)(x_rgb)
    assert float((rgb - x_rgb).abs().max()) * 255 < 3.5


def test_jpeg_surrogate_is_close_to_the_codec_and_differentiable(mnist) -> None:
    x, _ = mnist
    jpeg = JPEG(75)
    gap = (jpeg.backward_surrogate(x) - jpeg(x)).abs()
    assert float(gap.mean()) < 1 / 255  # measured 0.39 gray levels
    # finite differences in float64, away from the clipping and the rounding ties
    for shape in [(1, 1, 8, 8), (1, 3, 10, 8)]:
        xs = _images(shape, seed_=4).mul(0.5).add(0.25).double().requires_grad_(True)
        for sub in (True, False):
            codec = JPEG(50, chroma_subsampling=sub).double()
            assert torch.autograd.gradcheck(
                codec.backward_surrogate, (xs,), atol=1e-5, fast_mode=True
            )


# ----- feature squeezing ---------------------------------------------------------------------
@pytest.mark.parametrize("bits", [1, 2, 5, 8])
def test_bit_depth_output_is_on_the_grid(bits: int) -> None:
    x = _images((4, 3, 10, 10), seed_=bits)
    levels = 2**bits - 1
    out = BitDepth(bits)(x)
    assert torch.equal(out, torch.round(out * levels) / levels)
    assert float((out - x).abs().max()) <= 0.5 / levels + 1e-7
    assert len(out.unique()) <= levels + 1
    out2 = BitDepth(bits, bounds=(-1.0, 1.0))(2 * x - 1)
    assert torch.allclose(out2, 2 * out - 1, atol=1e-6)


def test_one_bit_is_a_threshold_at_half() -> None:
    x = torch.tensor([0.0, 0.49, 0.51, 1.0]).view(1, 1, 2, 2)
    assert BitDepth(1)(x).flatten().tolist() == [0.0, 0.0, 1.0, 1.0]


@pytest.mark.parametrize("k", [2, 3, 5])
def test_median_filter_matches_scipy(k: int) -> None:
    ndimage = pytest.importorskip("scipy.ndimage")
    x = _images((2, 3, 11, 14), seed_=k)
    ref = ndimage.median_filter(x.numpy(), size=(1, 1, k, k), mode="reflect")
    assert torch.equal(MedianFilter(k)(x), torch.from_numpy(ref))


def test_median_filter_removes_salt_noise() -> None:
    x = torch.full((1, 1, 9, 9), 0.5)
    x[0, 0, 4, 4] = 1.0
    assert torch.equal(MedianFilter(3)(x), torch.full_like(x, 0.5))


# ----- blur and noise ------------------------------------------------------------------------
def test_gaussian_blur_matches_scipy() -> None:
    ndimage = pytest.importorskip("scipy.ndimage")
    x = _images((2, 2, 12, 15), seed_=7).double()
    ref = ndimage.gaussian_filter(x.numpy(), sigma=(0, 0, 1.0, 1.0), mode="mirror", truncate=3.0)
    out = GaussianBlur(1.0)(x)
    torch.testing.assert_close(out, torch.from_numpy(ref), atol=1e-12, rtol=0)


def test_gaussian_blur_tiny_sigma_is_identity_and_constants_stay() -> None:
    x = _images((3, 3, 10, 10))
    torch.testing.assert_close(GaussianBlur(0.1)(x), x, atol=1e-7, rtol=0)
    const = torch.full((2, 3, 10, 10), 0.3)
    out = GaussianBlur(2.0, 7)(const)
    torch.testing.assert_close(out, const, atol=1e-6, rtol=0)
    assert abs(float(out.mean()) - 0.3) < 1e-6


def test_gaussian_noise_has_the_right_scale() -> None:
    x = torch.full((50, 1, 20, 20), 0.5)
    noise = GaussianNoise(0.1, clip=False)(x) - x
    assert abs(float(noise.std()) - 0.1) < 0.003 and abs(float(noise.mean())) < 0.003
    assert float(GaussianNoise(0.0)(x).sub(x).abs().max()) == 0.0
    clipped = GaussianNoise(2.0)(x)
    assert float(clipped.min()) == 0.0 and float(clipped.max()) == 1.0


# ----- spatial -------------------------------------------------------------------------------
def test_rotate_by_zero_degrees_is_the_identity() -> None:
    x = _images((4, 3, 15, 20))
    assert torch.equal(RandomRotate(0.0)(x), x)


def test_rotate_keeps_the_centre_pixel_and_rotates_a_square_grid() -> None:
    x = _images((8, 2, 15, 15))
    out = RandomRotate(45.0, seed=1)(x)
    torch.testing.assert_close(out[..., 7, 7], x[..., 7, 7], atol=1e-6, rtol=0)
    # a constant image keeps its value where the rotated image still covers the pixel
    const = torch.full((8, 1, 15, 15), 0.7)
    out = RandomRotate(45.0, seed=1)(const)
    torch.testing.assert_close(out[..., 5:10, 5:10], const[..., 5:10, 5:10], atol=1e-6, rtol=0)


def test_translate_moves_each_image_by_whole_pixels() -> None:
    x = _images((20, 1, 10, 12))
    out = RandomTranslate(2, fill=0.0, seed=2)(x)
    seen = set()
    for i in range(20):
        match = []
        for dr in range(-2, 3):
            for dc in range(-2, 3):
                ref = torch.zeros_like(x[i])
                src = x[i][:, max(0, -dr) : 10 - max(0, dr), max(0, -dc) : 12 - max(0, dc)]
                ref[:, max(0, dr) : 10 + min(0, dr), max(0, dc) : 12 + min(0, dc)] = src
                if torch.equal(out[i], ref):
                    match.append((dr, dc))
        assert len(match) == 1
        seen.add(match[0])
    assert len(seen) > 5
    assert torch.equal(RandomTranslate(0)(x), x)


def test_flip_probability_and_axes() -> None:
    x = _images((30, 2, 6, 7))
    assert torch.equal(RandomFlip(1.0)(x), x.flip(-1))
    assert torch.equal(RandomFlip(1.0, "vertical")(x), x.flip(-2))
    assert torch.equal(RandomFlip(1.0, "both")(x), x.flip(-1).flip(-2))
    assert torch.equal(RandomFlip(0.0, "both")(x), x)
    out = RandomFlip(0.5, seed=3)(x)
    flipped = torch.tensor([torch.equal(o, f) for o, f in zip(out, x.flip(-1), strict=True)])
    kept = torch.tensor([torch.equal(o, xi) for o, xi in zip(out, x, strict=True)])
    assert bool((flipped ^ kept).all()) and 5 < int(flipped.sum()) < 25


# ----- a zoo model behind the deterministic squeezers ----------------------------------------
def test_zoo_cnn_keeps_its_clean_accuracy_behind_bit_depth_and_jpeg(mnist) -> None:
    """mnist_cnn on the first 200 mnist5k test digits (measured): 98.0 % plain, 98.0 % behind
    BitDepth(1), 98.0 % behind JPEG(75), 97.5 % behind both."""
    x, y = mnist
    model = zoo.load("mnist_cnn")
    plain = float((model.predict(x) == y).float().mean())
    for defenses in [(BitDepth(1),), (JPEG(75),), (BitDepth(1), JPEG(75))]:
        acc = float((defend(model, *defenses).predict(x) == y).float().mean())
        assert acc >= 0.96 and acc >= plain - 0.02, (defenses, acc, plain)
