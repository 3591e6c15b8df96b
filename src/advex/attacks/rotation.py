"""Rotation + translation attack: the worst rigid transformation of the image within a range.

Engstrom et al. ask whether a classifier survives small rotations and translations, with no
pixel noise at all. For each sample it looks over transformations T_{θ,t} — rotate the content
by θ about the image centre, then shift it by t = (rows, columns) pixels — with

    |θ| ≤ max_angle,   |t_rows|, |t_cols| ≤ max_shift,

x' = x ∘ T⁻¹ resampled bilinearly with zero (black) fill outside the image
(``advex.attacks.spatial.rigid_flow`` + ``warp``), and asks whether any x' is misclassified
(targeted: classified as the target). ``search="grid"`` tries every point of a grid of
``angles`` values of θ × ``shifts`` × ``shifts`` values of t (the paper: 31 × 5 × 5 = 775 for
±30°, ±3 px on MNIST and CIFAR-10); ``search="random"`` tries ``samples`` transformations drawn
uniformly from the range per sample (the paper's worst-of-k, k = 10). Every candidate is a
forward pass only (no gradients); the candidates of a batch go through the model in large
batches.

The distance is the size of the transformation, normalized to the range,

    d(θ, t) = max(|θ| / max_angle, |t_rows| / max_shift, |t_cols| / max_shift)  ∈ [0, 1]

(a term is left out when its bound is 0), reported as ``result.distance`` under
``result.metric == "rotation_translation"``. Among the successful candidates of a sample the
smallest transformation is returned (ties: the first in the order below); where none succeeds,
the one of largest margin, the worst case the paper reports. The angle and shift of each
returned point come back on the result (``RotationResult.angle``, ``.shift``). Grid candidates
are tried in order of increasing size (ties: smaller |θ|/max_angle + |t|₁/max_shift first), and
a sample leaves the search once no remaining candidate can be smaller than its best success.

Engstrom, Tran, Tsipras, Schmidt, Madry. Exploring the Landscape of Spatial Robustness.
ICML 2019. arXiv:1712.02779

Threat model: ``eps=None``; ``norm`` ("linf" or "l2") only labels the image change. Box and
value grid are enforced (the rounded image is what the model sees) and success re-checked by a
fresh forward pass, as for every advex result.

Differences from the paper: the paper reports the accuracy under the worst transformation; here
each sample's result is its smallest successful transformation (same success, a meaningful
distance). θ > 0 turns the content counter-clockwise as displayed; the centre is
((H − 1)/2, (W − 1)/2). ``padding="border"`` replicates the border instead of the black fill.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, cast

import torch
from torch import Tensor

from advex.attacks import checks
from advex.attacks.base import Tracker
from advex.attacks.spatial import Padding, TransformAttack, check_padding, rigid_flow, warp
from advex.norms import round_to_grid
from advex.result import AttackResult
from advex.threat import ThreatModel

__all__ = ["RotationResult", "RotationTranslation"]

SEARCHES: tuple[str, ...] = ("grid", "random")

#: Elements (points × pixels × channels) per batched forward pass.
_CHUNK_ELEMENTS = 2**19


@dataclass
class RotationResult(AttackResult):
    """An ``AttackResult`` with the transformation behind each returned point.

    Attributes:
        angle: (B,) rotation θ in degrees (counter-clockwise as displayed).
        shift: (B, 2) translation (rows down, columns right) in pixels. Both 0 where the
            attack found nothing better than x itself (samples misclassified already, or not
            attacked).
    """

    angle: Tensor | None = None
    shift: Tensor | None = None

    PER_SAMPLE: ClassVar[tuple[str, ...]] = (*AttackResult.PER_SAMPLE, "angle", "shift")


class RotationTranslation(TransformAttack):
    """Grid (or random) search over rotations and translations; returns a RotationResult.

    Args:
        threat: a ``ThreatModel`` with ``eps=None``; ``norm`` ("linf" or "l2") only labels the
            image change. Targeted or untargeted.
        max_angle: largest rotation in degrees (the paper: 30), in [0, 180].
        max_shift: largest translation along each axis in pixels (the paper: 3 on 28×28 MNIST
            and 32×32 CIFAR-10).
        angles: number of angles on the grid, evenly spaced in [−max_angle, max_angle] (31).
        shifts: number of shifts per axis on the grid, in [−max_shift, max_shift] (5).
        search: "grid" (every grid point) or "random" (``samples`` uniform draws per sample).
        samples: draws per sample for ``search="random"`` (the paper's k = 10).
        padding: "zeros" (black fill, as the paper) or "border" (replicate the border).
        seed, batch_size, early_stop: see ``advex.attacks.base.Attack`` (``seed`` drives the
            random search).
    """

    name: ClassVar[str] = "rotation_translation"
    metric: ClassVar[str | None] = "rotation_translation"
    result_type: ClassVar[type[AttackResult]] = RotationResult

    def __init__(
        self,
        threat: ThreatModel,
        *,
        max_angle: float = 30.0,
        max_shift: float = 3.0,
        angles: int = 31,
        shifts: int = 5,
        search: str = "grid",
        samples: int = 10,
        padding: Padding = "zeros",
        seed: int = 0,
        batch_size: int | None = None,
        early_stop: bool = True,
    ) -> None:
        super().__init__(threat, seed=seed, batch_size=batch_size, early_stop=early_stop)
        self.max_angle = checks.non_negative("max_angle", max_angle)
        if self.max_angle > 180:
            raise ValueError(
                f"max_angle: expected a number of degrees in [0, 180], got {max_angle!r}"
            )
        self.max_shift = checks.non_negative("max_shift", max_shift)
        if self.max_angle == 0 and self.max_shift == 0:
            raise ValueError("max_angle, max_shift: at least one must be > 0")
        self.angles = checks.positive_int("angles", angles)
        self.shifts = checks.positive_int("shifts", shifts)
        if search not in SEARCHES:
            raise ValueError(f"search: expected one of {SEARCHES}, got {search!r}")
        self.search = search
        self.samples = checks.positive_int("samples", samples)
        self.padding = check_padding(padding)

    def __call__(
        self,
        model: Any,
        x: Tensor,
        y: Tensor,
        target: Tensor | None = None,
        **options: Any,
    ) -> RotationResult:
        """Attack as ``Attack.__call__`` (``options``: its keyword arguments); the result also
        carries each point's angle and shift."""
        return cast(RotationResult, super().__call__(model, x, y, target, **options))

    def _extras(self, x: Tensor) -> dict[str, Tensor]:
        b = x.shape[0]
        return {"angle": x.new_zeros(b), "shift": x.new_zeros(b, 2)}

    # ----- candidates ------------------------------------------------------------------------
    def size(self, params: Tensor) -> Tensor:
        """d(θ, t) of candidates (..., 3) = (θ, t_rows, t_cols): the largest of |θ|/max_angle,
        |t_rows|/max_shift, |t_cols|/max_shift (terms with a zero bound left out)."""
        zero = params.new_zeros(params.shape[:-1])
        turn = params[..., 0].abs() / self.max_angle if self.max_angle > 0 else zero
        move = params[..., 1:].abs().amax(dim=-1) / self.max_shift if self.max_shift > 0 else zero
        return torch.maximum(turn, move)

    def grid(self, device: torch.device | None = None) -> Tensor:
        """The grid's candidates (G, 3) = (θ, t_rows, t_cols), in the order they are tried:
        by size, then by |θ|/max_angle + |t|₁/max_shift."""
        theta = torch.linspace(-self.max_angle, self.max_angle, self.angles, dtype=torch.float64)
        shift = torch.linspace(-self.max_shift, self.max_shift, self.shifts, dtype=torch.float64)
        if self.angles == 1 or self.max_angle == 0:
            theta = theta.new_zeros(1)
        if self.shifts == 1 or self.max_shift == 0:
            shift = shift.new_zeros(1)
        params = torch.cartesian_prod(theta, shift, shift)
        spread = params[:, 0].abs() / max(self.max_angle, 1e-12) + params[:, 1:].abs().sum(
            dim=1
        ) / max(self.max_shift, 1e-12)
        order = torch.argsort(spread, stable=True)
        params = params[order]
        order = torch.argsort(self.size(params), stable=True)
        return params[order].to(device=device)

    # ----- the search --------------------------------------------------------------------------
    def _run(self, run: Tracker) -> None:
        if self.search == "grid":
            params = self.grid(run.x.device)
            shared = True
        else:
            bound = run.x.new_tensor([self.max_angle, self.max_shift, self.max_shift])
            draws = run.rand(self.samples, 3).double() * 2 - 1  # (n, k, 3)
            params = draws * bound.double()
            shared = False
        sizes = self.size(params)  # (G,) or (n, G)
        n_candidates = params.shape[-2]
        per_point = run.x[0].numel()
        start = 0
        while start < n_candidates and run.n_active:
            chunk = max(_CHUNK_ELEMENTS // (per_point * run.n_active), 1)
            stop = min(start + chunk, n_candidates)
            if shared:
                part = params[start:stop].unsqueeze(0).expand(run.n_active, -1, -1)
                part_sizes = sizes[start:stop].unsqueeze(0).expand(run.n_active, -1)
            else:
                part, part_sizes = params[:, start:stop], sizes[:, start:stop]
            self._evaluate(run, part, part_sizes)
            start = stop
            if shared and start < n_candidates:
                # a sample whose best success is no larger than every remaining candidate is done
                best = run.best_distance[run.rows]
                finished = run.best_success[run.rows] & (best <= sizes[start])
                if bool(finished.any()):
                    run.retire(finished)
                    run.shrink()

    def _evaluate(self, run: Tracker, params: Tensor, sizes: Tensor) -> None:
        """Evaluate candidates ``params`` (n_active, g, 3) for every active sample in one
        batched forward pass; record each, and keep the angle and shift of new best points."""
        n, g = params.shape[:2]
        x = run.x
        _, c, h, w = x.shape
        order = params.transpose(0, 1).reshape(g * n, 3)  # candidate-major: j·n + i
        flow = rigid_flow(order[:, 0], order[:, 1:], (h, w), dtype=x.dtype)
        images = x.unsqueeze(0).expand(g, -1, -1, -1, -1).reshape(g * n, c, h, w)
        lo, hi = self.threat.bounds
        with torch.no_grad():
            points = round_to_grid(
                warp(images, flow, padding=self.padding).clamp(lo, hi), self.threat
            )
            logits = run.clf(points)
        run.queries[run.rows] += g
        run.step_count[run.rows] += g
        for j in range(g):
            part = slice(j * n, (j + 1) * n)
            size = sizes[:, j].to(x.dtype)
            extras = {"angle": params[:, j, 0], "shift": params[:, j, 1:]}
            run.record(points[part], logits[part], distance=size, extras=extras)
