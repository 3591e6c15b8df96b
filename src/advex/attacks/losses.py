"""Attack losses, all oriented for maximization and all per-sample (shape (B,)).

Each loss has the signature ``loss(logits, y, target) -> Tensor`` where ``target`` is None for an
untargeted attack. Targeted and untargeted are handled here, once:

* ``ce``: L = CE(z, y) untargeted; L = −CE(z, t) targeted.
* ``margin`` (Carlini & Wagner 2017, f₆): L = min(max_{j≠y} z_j − z_y, κ) untargeted;
  L = min(z_t − max_{j≠t} z_j, κ) targeted. L > 0 exactly when the attack succeeds.
* ``dlr`` (Croce & Hein 2020): L = −(z_y − max_{j≠y} z_j)/(z_π1 − z_π3) untargeted;
  L = −(z_y − z_t)/(z_π1 − (z_π3 + z_π4)/2) targeted, z_π sorted decreasingly. Invariant to
  shifts and scales of the logits; needs at least 3 (untargeted) or 4 (targeted) classes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import torch.nn.functional as F
from torch import Tensor

__all__ = ["LOSSES", "Loss", "ce", "dlr", "get", "margin"]

Loss = Callable[[Tensor, Tensor, Tensor | None], Tensor]

_DLR_EPS = 1e-12


def _other_max(logits: Tensor, label: Tensor) -> Tensor:
    """max_{j ≠ label} z_j per sample."""
    masked = logits.scatter(1, label.unsqueeze(1), -math.inf)
    return masked.amax(dim=1)


def ce(logits: Tensor, y: Tensor, target: Tensor | None = None) -> Tensor:
    """Cross-entropy toward leaving y (untargeted) or reaching target (targeted)."""
    if target is None:
        return F.cross_entropy(logits, y, reduction="none")
    return -F.cross_entropy(logits, target, reduction="none")


def margin(
    logits: Tensor, y: Tensor, target: Tensor | None = None, *, kappa: float = math.inf
) -> Tensor:
    """C&W margin, clipped at confidence κ; positive iff the point is adversarial."""
    if target is None:
        value = _other_max(logits, y) - logits.gather(1, y.unsqueeze(1)).squeeze(1)
    else:
        value = logits.gather(1, target.unsqueeze(1)).squeeze(1) - _other_max(logits, target)
    return value.clamp(max=kappa) if math.isfinite(kappa) else value


def dlr(logits: Tensor, y: Tensor, target: Tensor | None = None) -> Tensor:
    """Difference of logits ratio (untargeted or targeted)."""
    k = logits.shape[1]
    need = 3 if target is None else 4
    if k < need:
        raise ValueError(f"loss: DLR needs at least {need} classes, the model has {k}")
    ordered = logits.sort(dim=1, descending=True).values
    z_y = logits.gather(1, y.unsqueeze(1)).squeeze(1)
    if target is None:
        return (_other_max(logits, y) - z_y) / (ordered[:, 0] - ordered[:, 2] + _DLR_EPS)
    z_t = logits.gather(1, target.unsqueeze(1)).squeeze(1)
    scale = ordered[:, 0] - 0.5 * (ordered[:, 2] + ordered[:, 3]) + _DLR_EPS
    return -(z_y - z_t) / scale


LOSSES: dict[str, Loss] = {"ce": ce, "margin": margin, "dlr": dlr}


def get(name: str | Loss, *, kappa: float | None = None) -> Loss:
    """Look up a loss by name ('ce', 'margin', 'dlr') or pass a callable through."""
    if callable(name):
        return name
    if name not in LOSSES:
        raise ValueError(f"loss: expected one of {sorted(LOSSES)}, got {name!r}")
    if name == "margin" and kappa is not None:
        return partial(margin, kappa=kappa)
    return LOSSES[name]
