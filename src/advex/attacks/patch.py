"""Adversarial patch: one image region that, pasted anywhere, makes the model see the target.

A patch p ∈ [lo, hi]^{C×s×s} is fitted on a dataset X under random placements and then pasted on
images never seen. With the patch operator A(p, x, l, t) — p resampled at side length L and
rotated by θ (the transformation t), centred at l, pasted over x — the attack solves

    p̂ = argmax_p  E_{x∼X, t∼T, l∼L} [ log Pr(ŷ = target | A(p, x, l, t)) ]     (targeted)
    p̂ = argmax_p  E_{x∼X, t∼T, l∼L} [ CE(f(A(p, x, l, t)), y) ]               (untargeted)

over minibatches of X, each image with its own random draw of (l, t): expectation over
transformation. A pastes through a binary mask m of the pixels whose centres lie inside the
placed square (or disc, ``shape="circle"``), x' = (1 − m)·x + m·T(p), where T(p) resamples the
patch bilinearly at the placement (``grid_sample``), so x' is differentiable in p. Each step is
Adam on p (loss averaged over the minibatch), projected back onto the box:

    p ← clip_[lo, hi](p + Adam(∇_p E[log Pr(target | A(p, x, l, t))])).

Placements: side L = scale·min(H, W) with scale uniform in ``scale`` (a fraction of the image
side, so the patch covers about scale² of the image area), θ uniform in ±``max_rotation``
degrees, and the position uniform over all places where the whole rotated patch lies inside the
image (nothing is clipped, nothing wraps around).

Brown, Mané, Roy, Abadi, Gilmer. Adversarial Patch. NIPS 2017 Workshop on Machine Learning and
Computer Security. arXiv:1712.09665

Differences from the paper:

* the paper's printed patches are discs, and it rates the attack against the patch's size
  relative to the image; here the patch is square by default (``shape="circle"`` gives the
  disc) and its size is drawn as a fraction of the image *side*: the default scale (0.3, 0.4)
  covers 9–16 % of the image area. The transformations are location, scale and rotation (the
  paper's digital setting); the disguised ("camouflage") variant is not implemented.
* the optimiser is Adam with a projection onto the box (our choice); the untargeted loss is an
  addition for untargeted threat models.
* after each epoch the patch is rated on the fit data (with fresh placements); the patch of the
  best epoch (targeted success rate, or fooling rate untargeted) is returned, not the last.

Small images need large patches: on the bundled MNIST CNN (28×28, target 3, 300 fit images, 20
epochs) the held-out targeted success at random placements is 0.14 for a side of 0.35 (10 px),
0.44 for 0.45, 0.64 for 0.5 and 0.95 for 0.6 of the image side.

Threat model: ``norm="l0"`` with ``eps=None`` — a patch changes a bounded set of pixels (at most
C·(number of covered pixels) elements), fixed by ``scale``, not by an ε. The reported distance
(metric ``"patch_area"``) is, per sample, the fraction of image pixels the patch mask covers.
"""

from __future__ import annotations

import math
import numbers
import time
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from advex.attacks import checks, losses
from advex.attacks.fitted import DatasetAttack, Fitted
from advex.attacks.optim import Adam
from advex.model import Classifier, as_classifier, check_inputs
from advex.result import AttackResult, make_valid
from advex.threat import ThreatModel

__all__ = ["AdversarialPatch", "Patch", "Placement", "paste"]

SHAPES = ("square", "circle")


class Placement(NamedTuple):
    """Where a patch lies on each image of a batch (pixel units, rows down, columns right).

    Attributes:
        center: (B, 2) centre (row, col) of the patch.
        side: (B,) side length L of the placed patch (the disc's diameter for circles).
        angle: (B,) rotation in degrees, counter-clockwise as displayed.
    """

    center: Tensor
    side: Tensor
    angle: Tensor

    def corners(self) -> Tensor:
        """(B, 4, 2) corners (row, col) of the placed square (the disc's bounding square when
        unrotated)."""
        rad = torch.deg2rad(self.angle)
        c, s = torch.cos(rad), torch.sin(rad)
        half = self.side / 2
        unit = torch.tensor([[-1.0, -1.0], [-1.0, 1.0], [1.0, 1.0], [1.0, -1.0]])
        u = unit[:, 1].to(self.side)  # patch column direction
        v = unit[:, 0].to(self.side)  # patch row direction
        # d = (L/2)·M·(u, v) in (col, row) with M = [[cos, sin], [−sin, cos]] (y points down)
        dcol = half[:, None] * (c[:, None] * u + s[:, None] * v)
        drow = half[:, None] * (-s[:, None] * u + c[:, None] * v)
        return torch.stack([self.center[:, :1] + drow, self.center[:, 1:] + dcol], dim=2)


def extent(side: Tensor, angle: Tensor, shape: str) -> Tensor:
    """Side of the axis-aligned bounding box of a placed patch: L(|cos θ| + |sin θ|) for a
    square, L for a disc."""
    if shape == "circle":
        return side
    rad = torch.deg2rad(angle)
    return side * (torch.cos(rad).abs() + torch.sin(rad).abs())


def _patch_coordinates(placement: Placement, height: int, width: int) -> Tensor:
    """(B, H, W, 2) coordinates (u, v) ∈ [−1, 1]² inside the patch of every pixel centre.

    Inverts d = (L/2)·M·(u, v): (u, v) = (2/L)·Mᵀ·d, d the offset (col, row) of the pixel centre
    from the patch centre."""
    center, side, angle = placement
    dtype, device = side.dtype, side.device
    rows = torch.arange(height, device=device, dtype=dtype) + 0.5
    cols = torch.arange(width, device=device, dtype=dtype) + 0.5
    drow = rows[None, :, None] - center[:, 0, None, None]  # (B, H, 1)
    dcol = cols[None, None, :] - center[:, 1, None, None]  # (B, 1, W)
    rad = torch.deg2rad(angle)
    c = torch.cos(rad)[:, None, None]
    s = torch.sin(rad)[:, None, None]
    scale = (2 / side)[:, None, None]
    u = scale * (c * dcol - s * drow)
    v = scale * (s * dcol + c * drow)
    return torch.stack([u, v], dim=3)


def paste(x: Tensor, patch: Tensor, placement: Placement, shape: str = "square") -> Tensor:
    """A(p, x, l, t): ``patch`` (C, s, s) placed on ``x`` (B, C, H, W) at ``placement``.

    Pixels whose centres lie inside the placed square (disc) take the bilinearly resampled patch,
    all others keep x exactly. Differentiable with respect to ``patch``."""
    return _paste(x, patch, placement, shape)[0]


def _paste(x: Tensor, patch: Tensor, placement: Placement, shape: str) -> tuple[Tensor, Tensor]:
    """``paste`` and the (B, H, W) mask of the covered pixels."""
    b, _, height, width = x.shape
    grid = _patch_coordinates(placement, height, width).to(patch.dtype)
    mask = covered(grid, shape)
    texture = F.grid_sample(
        patch.unsqueeze(0).expand(b, -1, -1, -1),
        grid,
        mode="bilinear",
        padding_mode="border",
        align_corners=False,
    )
    return torch.where(mask[:, None], texture.to(x.dtype), x), mask


def covered(grid: Tensor, shape: str) -> Tensor:
    """(B, H, W) bool: the pixel centres inside the patch, from their patch coordinates."""
    if shape == "circle":
        return grid.square().sum(dim=3) <= 1
    return grid.abs().amax(dim=3) <= 1


def _check_scale(scale: object) -> tuple[float, float]:
    pair: Any = (scale, scale) if isinstance(scale, numbers.Real) else scale
    try:
        first, second = pair
    except (TypeError, ValueError):
        raise ValueError(
            f"scale: expected a number or a pair (min, max) in (0, 1], got {scale!r}"
        ) from None
    lo = checks.fraction("scale", first, closed=True)
    hi = checks.fraction("scale", second, closed=True)
    if lo > hi:
        raise ValueError(f"scale: expected min <= max, got {scale!r}")
    return lo, hi


def _widest(max_rotation: float, shape: str) -> float:
    """max over |θ| ≤ max_rotation of the bounding-box factor |cos θ| + |sin θ| (1 for discs)."""
    if shape == "circle":
        return 1.0
    worst = math.radians(min(max_rotation, 45.0))
    return math.cos(worst) + math.sin(worst)


def _sample(
    n: int,
    height: int,
    width: int,
    scale: tuple[float, float],
    max_rotation: float,
    shape: str,
    generator: torch.Generator,
    device: torch.device,
    dtype: torch.dtype,
) -> Placement:
    """n random placements, one draw of 4 uniforms per image: scale, angle, row, column."""
    draw = torch.rand(n, 4, generator=generator, device=device, dtype=dtype)
    lo, hi = scale
    side = (lo + (hi - lo) * draw[:, 0]) * min(height, width)
    angle = (2 * draw[:, 1] - 1) * max_rotation
    box = extent(side, angle, shape)
    row = draw[:, 2] * (height - box).clamp(min=0) + box / 2
    col = draw[:, 3] * (width - box).clamp(min=0) + box / 2
    return Placement(torch.stack([row, col], dim=1), side, angle)


@dataclass(kw_only=True, eq=False)
class Patch(Fitted):
    """A fitted adversarial patch and the distribution of its placements.

    Attributes:
        patch: (C, s, s) patch values in the box.
        scale: (min, max) side of the placed patch as a fraction of the image's shorter side.
        max_rotation: placements rotate by an angle uniform in ±max_rotation degrees.
        shape: "square", or "circle" (the disc inscribed in the square).
        target: the class a targeted patch was fitted for (None untargeted).

    Metric "patch_area": ``apply`` reports, per sample, the fraction of image pixels the
    patch mask covers (``perturb`` knows it while placing); ``distance(x, x_adv)`` for other
    pairs is the fraction of pixels that changed, a lower bound.
    """

    patch: Tensor
    scale: tuple[float, float] = (0.3, 0.4)
    max_rotation: float = 22.5
    shape: str = "square"
    target: int | None = None
    metric: str | None = "patch_area"

    # ----- placements ---------------------------------------------------------------------
    def sample(self, x: Tensor, generator: torch.Generator) -> Placement:
        """Random placements for the images ``x`` (B, C, H, W), drawn from ``generator``."""
        _check_images(x, self.patch.shape[0])
        return _sample(
            x.shape[0],
            x.shape[-2],
            x.shape[-1],
            self.scale,
            self.max_rotation,
            self.shape,
            generator,
            x.device,
            x.dtype,
        )

    def placement(
        self,
        x: Tensor,
        *,
        location: tuple[float, float] | None = None,
        scale: float | None = None,
        angle: float = 0.0,
    ) -> Placement:
        """One fixed placement for every image of ``x`` (see ``place``)."""
        _check_images(x, self.patch.shape[0])
        b, _, height, width = x.shape
        if isinstance(angle, bool) or not isinstance(angle, numbers.Real):
            raise ValueError(f"angle: expected a number of degrees, got {angle!r}")
        if scale is None:
            length = float(self.patch.shape[-1])
        else:
            length = checks.fraction("scale", scale, closed=True) * min(height, width)
        opts = {"device": x.device, "dtype": x.dtype}
        side = torch.full((b,), length, **opts)
        turn = torch.full((b,), float(angle), **opts)
        box = float(extent(side[:1], turn[:1], self.shape)[0])
        if location is None:
            top, left = (height - box) / 2, (width - box) / 2
        else:
            try:
                top, left = (float(v) for v in location)
            except (TypeError, ValueError):
                raise ValueError(
                    f"location: expected (row, col) of the patch's top-left corner, "
                    f"got {location!r}"
                ) from None
        tol = 1e-4
        if min(top, left) < -tol or top + box > height + tol or left + box > width + tol:
            raise ValueError(
                f"location: the patch ({box:.3g} px across, rotated by {angle:g}°) placed at "
                f"{(top, left)} does not fit inside the {height}×{width} image"
            )
        center = torch.tensor([top + box / 2, left + box / 2], **opts).expand(b, 2)
        return Placement(center.clone(), side, turn)

    def paste(self, x: Tensor, placement: Placement) -> Tensor:
        """x with the patch pasted at ``placement`` (before the box/grid checks of ``apply``)."""
        _check_images(x, self.patch.shape[0])
        return paste(x, self.patch.to(x.device), placement, self.shape)

    def place(
        self,
        x: Tensor,
        *,
        location: tuple[float, float] | None = None,
        scale: float | None = None,
        angle: float = 0.0,
    ) -> Tensor:
        """Paste the patch at one fixed place on every image of ``x`` (B, C, H, W).

        Args:
            location: (row, col) in pixels of the top-left corner of the placed patch's
                bounding box; None centres it. The whole patch must lie inside the image
                (``ValueError`` otherwise).
            scale: side as a fraction of the image's shorter side; None: the patch's own
                resolution s (one patch pixel per image pixel when unrotated).
            angle: rotation in degrees, counter-clockwise as displayed.
        """
        placement = self.placement(x, location=location, scale=scale, angle=angle)
        return self.paste(x, placement)

    def mask(self, x: Tensor, placement: Placement) -> Tensor:
        """(B, H, W) bool: the pixels of ``x`` the patch covers at ``placement``."""
        grid = _patch_coordinates(placement, x.shape[-2], x.shape[-1])
        return covered(grid, self.shape)

    # ----- the Fitted protocol ---------------------------------------------------------------
    def transform(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """The patch pasted on each image at a random placement drawn from ``generator``."""
        return self.perturb(x, generator)[0]

    def perturb(self, x: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor | None]:
        """The pasted images and the fraction of each image's pixels the patch covers."""
        placement = self.sample(x, generator)
        x_adv, mask = _paste(x, self.patch.to(x.device), placement, self.shape)
        return x_adv, mask.flatten(1).float().mean(dim=1).to(x.dtype)

    def distance(self, x: Tensor, x_adv: Tensor) -> Tensor | None:
        """(B,) fraction of the pixels where x_adv differs from x in some channel: a lower
        bound on the covered area (a patch pixel may equal the pixel it covers); ``apply``
        reports the covered area itself (``perturb``)."""
        return (x_adv != x).any(dim=1).flatten(1).float().mean(dim=1).to(x.dtype)

    def apply(
        self,
        model: Any,
        x: Tensor,
        y: Tensor,
        target: int | Tensor | None = None,
        *,
        seed: int = 0,
        batch_size: int | None = None,
    ) -> AttackResult:
        """Paste the patch on ``x`` at random placements (from ``seed``) and return the re-checked
        result. ``target``: an int or (B,) labels; None for a targeted patch means its own
        ``target``."""
        if target is None and self.threat.targeted:
            target = self.target
        if target is not None and not isinstance(target, Tensor):
            target = _full_target(target, y)
        return super().apply(model, x, y, target, seed=seed, batch_size=batch_size)

    def success_rate(
        self,
        model: Any,
        x: Tensor,
        target: int | None = None,
        *,
        placements: int = 10,
        seed: int = 0,
        batch_size: int = 500,
    ) -> float:
        """Fraction of (image, placement) pairs the model labels ``target``.

        Each image of ``x`` gets ``placements`` independent random placements; the points are
        made valid (box, grid) as in ``apply``. ``target`` defaults to the patch's own. Leave
        images of the target class out of ``x``: they count as successes without any patch.
        """
        placements = checks.positive_int("placements", placements)
        batch_size = checks.positive_int("batch_size", batch_size)
        if target is None:
            target = self.target
        if target is None:
            raise ValueError("target: this patch is untargeted; pass the class to rate")
        clf = as_classifier(model, bounds=self.threat.bounds)
        if isinstance(x, Tensor):
            x = x.to(clf.device)
        labels = _full_target(target, torch.zeros(len(x), dtype=torch.long, device=x.device))
        x, labels, _ = check_inputs(
            x, labels, bounds=self.threat.bounds, num_classes=clf.num_classes
        )
        threat = self.threat.replace(targeted=True)
        hits = 0
        for k in range(placements):
            result = self._apply(
                clf, x.detach(), labels, labels, threat, seed * placements + k, batch_size
            )
            hits += int(result.success.sum())
        return hits / (x.shape[0] * placements)


def _check_images(x: Tensor, channels: int) -> None:
    if not isinstance(x, Tensor) or x.ndim != 4:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"x: expected images of shape (B, C, H, W), got {shape}")
    if x.shape[1] != channels:
        raise ValueError(f"x: the patch has {channels} channels, the images {x.shape[1]}")


def _full_target(target: object, like: Tensor) -> Tensor:
    if isinstance(target, bool) or not isinstance(target, numbers.Integral) or int(target) < 0:
        raise ValueError(f"target: expected a class index >= 0, got {target!r}")
    return torch.full_like(like, int(target), dtype=torch.long)


class AdversarialPatch(DatasetAttack):
    """Brown et al.'s adversarial patch: one patch fitted with EOT over random placements.

    Args:
        threat: ``ThreatModel(norm="l0", eps=None, ...)``; ``targeted=True`` for the paper's
            setting (one target class for the whole dataset).
        size: the patch's resolution s (a (C, s, s) tensor); None: ceil(scale_max·min(H, W)),
            so no placement upsamples it.
        scale: side of the placed patch as a fraction of the image's shorter side, a number or
            a range (min, max) drawn uniformly per placement.
        max_rotation: placements rotate by an angle uniform in ±max_rotation degrees.
        shape: "square", or "circle" (the paper's disc, inscribed in the square).
        epochs: passes over the fit data.
        step_size: Adam's learning rate on the patch values.
        loss: "ce" (log-probability of the target, targeted; cross-entropy of y, untargeted),
            "margin", "dlr", or a callable (see ``advex.attacks.losses``).
        seed: seeds the generator of every random draw (initial patch, minibatches,
            placements).
        batch_size: images per Adam step (and per batch in ``apply``).

    ``fit`` fills the ``Patch``'s ``history`` with the fooling rate on the fit data after each
    epoch (one fresh placement per image, on valid points), and its ``queries`` / ``gradients``
    with the forward and backward passes per image: the clean pass, then per epoch one forward
    and backward pass for the step and one forward pass for the rating.
    """

    name: ClassVar[str] = "patch"
    norms: ClassVar[tuple[str, ...]] = ("l0",)
    needs_eps: ClassVar[bool] = False
    metric: ClassVar[str | None] = "patch_area"

    def __init__(
        self,
        threat: ThreatModel,
        *,
        size: int | None = None,
        scale: float | tuple[float, float] = (0.3, 0.4),
        max_rotation: float = 22.5,
        shape: str = "square",
        epochs: int = 10,
        step_size: float = 0.05,
        loss: str = "ce",
        seed: int = 0,
        batch_size: int | None = 32,
    ) -> None:
        super().__init__(threat, seed=seed, batch_size=batch_size)
        checks.no_eps(threat.eps, "a patch's size is set by scale")
        self.size = None if size is None else checks.positive_int("size", size)
        self.scale = _check_scale(scale)
        rotation = checks.non_negative("max_rotation", max_rotation)
        if rotation > 180:
            raise ValueError(f"max_rotation: expected degrees in [0, 180], got {max_rotation!r}")
        self.max_rotation = rotation
        if shape not in SHAPES:
            raise ValueError(f"shape: expected one of {SHAPES}, got {shape!r}")
        self.shape = shape
        widest = _widest(rotation, shape)
        if self.scale[1] * widest > 1 + 1e-9:
            raise ValueError(
                f"scale: a patch of side {self.scale[1]:g} of the image, rotated by up to "
                f"{rotation:g}°, spans {self.scale[1] * widest:.3g} of the image and cannot lie "
                "inside it; lower scale or max_rotation"
            )
        self.epochs = checks.positive_int("epochs", epochs)
        self.step_size = checks.positive("step_size", step_size)
        self.loss = loss if isinstance(loss, str) else getattr(loss, "__name__", "custom")
        self._loss = losses.get(loss)

    def params(self) -> dict[str, Any]:
        out = super().params()
        out["scale"] = list(self.scale)
        return out

    def fit(self, model: Any, x: Tensor, y: Tensor, target: int | Tensor | None = None) -> Patch:
        """Fit the patch on (x, y) (and the target class); returns the ``Patch``."""
        start = time.perf_counter()
        clf = as_classifier(model, bounds=self.threat.bounds)
        x, y = self._fit_inputs(clf, x, y)
        n, channels, height, width = x.shape
        gen = torch.Generator(device=x.device)
        gen.manual_seed(self.seed)
        size = self.size or math.ceil(self.scale[1] * min(height, width) - 1e-9)
        lo, hi = self.threat.bounds
        patch = lo + (hi - lo) * torch.rand(
            1, channels, size, size, generator=gen, device=x.device, dtype=x.dtype
        )
        batch = self.batch_size or n
        queries = gradients = 0
        history: list[float] = []
        with clf.attacking():
            with torch.no_grad():
                clean = torch.cat([clf(x[i : i + batch]).argmax(1) for i in range(0, n, batch)])
            queries += n
            tgt = self._fit_target(clf, target, y)
            best, best_rate = patch[0].clone(), -1.0
            opt = Adam(self.step_size)
            for _ in range(self.epochs):
                order = torch.randperm(n, generator=gen, device=x.device)
                for i in range(0, n, batch):
                    rows = order[i : i + batch]
                    xb, yb = x[rows], y[rows]
                    tb = None if tgt is None else tgt[rows]
                    place = self._sample(xb, gen)
                    with torch.enable_grad():
                        p = patch[0].detach().requires_grad_(True)
                        logits = clf(paste(xb, p, place, self.shape))
                        objective = self._loss(logits, yb, tb).mean()
                        (grad,) = torch.autograd.grad(objective, p)
                    clf.backward_count += len(rows)
                    queries += len(rows)
                    gradients += len(rows)
                    patch = opt.step(patch, -grad.unsqueeze(0)).clamp(lo, hi)
                fooled, rate = self._rate(clf, x, clean, tgt, patch[0], gen, batch)
                queries += n
                history.append(fooled)
                if rate >= best_rate:
                    best, best_rate = patch[0].detach().clone(), rate
        return Patch(
            attack=self.name,
            threat=self.threat,
            params=self.params(),
            seconds=time.perf_counter() - start,
            queries=queries,
            gradients=gradients,
            history=history,
            patch=best,
            scale=self.scale,
            max_rotation=self.max_rotation,
            shape=self.shape,
            target=None if tgt is None else int(tgt[0]),
        )

    # ----- pieces of fit -------------------------------------------------------------------------
    def _fit_inputs(self, clf: Classifier, x: Any, y: Any) -> tuple[Tensor, Tensor]:
        if isinstance(x, Tensor):
            x = x.to(clf.device)
            if x.ndim != 4:
                raise ValueError(f"x: expected images of shape (B, C, H, W), got {tuple(x.shape)}")
        if isinstance(y, Tensor):
            y = y.to(clf.device)
        x, y, _ = check_inputs(x, y, bounds=self.threat.bounds, num_classes=clf.num_classes)
        return x.detach(), y

    def _fit_target(self, clf: Classifier, target: object, y: Tensor) -> Tensor | None:
        """(B,) target labels, one class for all, or None; checks them against the threat."""
        if target is None:
            if self.threat.targeted:
                raise ValueError("target: the threat model is targeted; pass the target class")
            return None
        if not self.threat.targeted:
            raise ValueError("target: given, but the threat model is untargeted (targeted=False)")
        if isinstance(target, Tensor):
            if (
                target.shape != y.shape
                or target.dtype in (torch.bool,)
                or target.is_floating_point()
            ):
                raise ValueError(
                    f"target: expected an int or integer labels of shape {tuple(y.shape)}"
                )
            if target.numel() and not bool((target == target[0]).all()):
                raise ValueError("target: a patch has one target class; the labels differ")
            target = int(target[0])
        labels = _full_target(target, y)
        if clf.num_classes is not None and int(labels[0]) >= clf.num_classes:
            raise ValueError(
                f"target: expected a class < num_classes={clf.num_classes}, got {int(labels[0])}"
            )
        return labels

    def _sample(self, x: Tensor, gen: torch.Generator) -> Placement:
        return _sample(
            x.shape[0],
            x.shape[-2],
            x.shape[-1],
            self.scale,
            self.max_rotation,
            self.shape,
            gen,
            x.device,
            x.dtype,
        )

    def _rate(
        self,
        clf: Classifier,
        x: Tensor,
        clean: Tensor,
        target: Tensor | None,
        patch: Tensor,
        gen: torch.Generator,
        batch: int,
    ) -> tuple[float, float]:
        """(fooling rate, the rate the best patch is chosen by) on the fit data, one fresh
        placement per image, on valid points (box, grid)."""
        preds = []
        with torch.no_grad():
            for i in range(0, x.shape[0], batch):
                xb = x[i : i + batch]
                x_adv = make_valid(
                    paste(xb, patch, self._sample(xb, gen), self.shape), xb, self.threat
                )
                preds.append(clf(x_adv).argmax(1))
        pred = torch.cat(preds)
        fooled = float((pred != clean).float().mean())
        if target is None:
            return fooled, fooled
        return fooled, float((pred == target).float().mean())
