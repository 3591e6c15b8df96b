"""Sanity checks that catch a broken robustness evaluation (gradient masking and friends).

A robust accuracy is only an upper bound: it is as good as the attack that produced it. These
checks look for the signs that the attack, not the model, is what failed (Athalye et al. 2018;
Carlini et al. 2019, "On evaluating adversarial robustness"; AutoAttack's checks). Each returns a
``Flag``: whether it fired, one line on what was seen, and what to do about it.

* ``probability_outputs``: every output row is in [0, 1] and sums to 1 — softmax outputs
  saturate and hide gradients from CE/margin losses.
* ``randomized_model``: two forward passes on the same inputs disagree.
* ``vanishing_gradients``: the input gradient of the margin loss max_{j≠y} z_j − z_y is
  (numerically) zero on more than ``GRADIENT_FRACTION`` of the samples.
* ``blackbox_stronger``: a black-box member of the ensemble (Square) broke more than
  ``BLACKBOX_FRACTION`` of the samples after every white-box member had failed on them.
* ``large_eps``: PGD from x (no random start, margin loss) with a budget that covers the whole
  box (L∞: hi − lo; L2: (hi − lo)·√d; L1: (hi − lo)·d) leaves more than ``LARGE_EPS_FRACTION`` of
  the clean-correct samples robust — with such a budget any sample can be turned into any input,
  so the gradient signal must be broken.
* ``not_converged``: APGD-CE with twice the steps and three restarts (another seed) breaks
  samples the evaluation left robust — at least ``CONVERGENCE_MIN_BROKEN`` of them, lowering
  the estimated robust accuracy by more than ``CONVERGENCE_DROP`` (absolute).
* ``nondeterministic``: the evaluation's first attack, run twice with the same seed on the same
  samples, returns different results.

The checks that run attacks use at most ``max_samples`` samples, so they cost a fraction of the
evaluation itself.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

from advex.attacks import losses
from advex.attacks.apgd import APGD
from advex.attacks.base import Attack
from advex.attacks.ensemble import Ensemble, EnsembleResult
from advex.attacks.pgd import PGD
from advex.model import Classifier, as_classifier, looks_like_probabilities
from advex.result import AttackResult
from advex.threat import ThreatModel

__all__ = [
    "BLACK_BOX",
    "Flag",
    "blackbox_stronger",
    "large_eps",
    "nondeterministic",
    "not_converged",
    "probability_outputs",
    "randomized_model",
    "run_checks",
    "vanishing_gradients",
]

#: Attack names that use no gradients (a success of theirs where gradients failed is a warning).
BLACK_BOX: frozenset[str] = frozenset({"square"})
#: Fraction of samples with zero gradient above which ``vanishing_gradients`` fires.
GRADIENT_FRACTION = 0.01
#: Gradient norms (L1, per sample) at or below this count as zero.
GRADIENT_ZERO = 1e-12
#: Fraction of all samples broken only by a black-box member above which the flag fires
#: (AutoAttack's check uses 0.2 %).
BLACKBOX_FRACTION = 0.002
#: Fraction of the clean-correct samples left robust at an unbounded budget that fires.
LARGE_EPS_FRACTION = 0.01
#: Absolute drop of the estimated robust accuracy under a stronger attack that fires ...
CONVERGENCE_DROP = 0.005
#: ... when it comes from at least this many newly broken samples (one can fall to a lucky
#: random start of the stronger run's other seed).
CONVERGENCE_MIN_BROKEN = 2
#: Relative tolerance of ``randomized_model`` on logits (float noise is not randomness).
RANDOM_RTOL = 1e-5


@dataclass(frozen=True)
class Flag:
    """The outcome of one sanity check.

    Attributes:
        name: the check's name.
        fired: True when the check found a problem.
        message: one line on what was measured.
        advice: what to do when it fired.
        value: the measured quantity the decision was made on (None if not measured).
    """

    name: str
    fired: bool
    message: str
    advice: str
    value: float | None = None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if out["value"] is not None and not math.isfinite(out["value"]):
            out["value"] = None
        return out


def _subset(x: Tensor, y: Tensor, n: int) -> tuple[Tensor, Tensor]:
    return x[:n], y[:n]


def probability_outputs(clf: Classifier, x: Tensor) -> Flag:
    """Fires when the model's outputs look like probabilities instead of logits."""
    fired = looks_like_probabilities(clf.logits(x))
    return Flag(
        "probability_outputs",
        fired,
        "outputs are in [0, 1] and every row sums to 1: the model returns probabilities"
        if fired
        else "outputs are not probabilities",
        "remove the final softmax so attacks see logits; saturated softmax outputs hide the "
        "gradients that CE and margin losses need",
    )


def randomized_model(clf: Classifier, x: Tensor) -> Flag:
    """Fires when two forward passes (eval mode, no gradients) disagree."""
    a, b = clf.logits(x), clf.logits(x)
    scale = float(a.abs().max()) if a.numel() else 0.0
    diff = float((a - b).abs().max()) if a.numel() else 0.0
    fired = diff > RANDOM_RTOL * (1.0 + scale)
    return Flag(
        "randomized_model",
        fired,
        f"two forward passes on the same inputs differ by up to {diff:.3g} in the logits"
        if fired
        else "repeated forward passes agree",
        "the model is randomized: attack the expectation (EOT: average gradients over many "
        "forward passes) and report robust accuracy of the randomized prediction",
        diff,
    )


def vanishing_gradients(clf: Classifier, x: Tensor, y: Tensor) -> Flag:
    """Fires when ∇ₓ margin is (numerically) zero on more than ``GRADIENT_FRACTION``."""
    with clf.attacking():
        point = x.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            value = losses.margin(clf(point), y)
            (grad,) = torch.autograd.grad(value.sum(), point)
    norms = grad.flatten(1).abs().sum(dim=1)
    zero = int((norms <= GRADIENT_ZERO).sum())
    frac = zero / max(len(x), 1)
    fired = frac > GRADIENT_FRACTION
    return Flag(
        "vanishing_gradients",
        fired,
        f"{zero} of {len(x)} samples have a zero input gradient of the margin loss",
        "gradients are masked (a non-differentiable or saturated step): attack through it with "
        "BPDA (a differentiable stand-in on the backward pass) and rely on black-box attacks",
        frac,
    )


def blackbox_stronger(result: AttackResult) -> Flag:
    """Fires when black-box members broke samples every white-box member before them missed."""
    if not isinstance(result, EnsembleResult):
        return Flag(
            "blackbox_stronger",
            False,
            "not measured: the evaluation was not an ensemble",
            "",
            None,
        )
    names = [n for n in result.members[1:] if n in BLACK_BOX]
    if not names:
        return Flag(
            "blackbox_stronger",
            False,
            "not measured: the ensemble has no black-box attack",
            "",
            None,
        )
    members = result.members
    black = [
        i
        for i, n in enumerate(members)
        if n in BLACK_BOX and any(m not in BLACK_BOX for m in members[:i])
    ]
    count = int(sum(int((result.broken_by == i).sum()) for i in black))
    frac = count / max(len(result), 1)
    fired = frac > BLACKBOX_FRACTION
    return Flag(
        "blackbox_stronger",
        fired,
        f"{', '.join(sorted(set(names)))} (black-box) broke {count} of {len(result)} samples "
        "that the white-box attacks before it failed on",
        "white-box attacks do not see the true gradient (gradient masking): use BPDA/EOT, and "
        "trust the ensemble's number, never a white-box-only one",
        frac,
    )


def _unbounded(threat: ThreatModel, x: Tensor) -> ThreatModel:
    lo, hi = threat.bounds
    d = x[0].numel()
    eps = {"linf": hi - lo, "l2": (hi - lo) * math.sqrt(d), "l1": (hi - lo) * d}[threat.norm]
    return ThreatModel(norm=threat.norm, eps=eps, bounds=threat.bounds, targeted=False)


def large_eps(clf: Classifier, x: Tensor, y: Tensor, threat: ThreatModel, *, seed: int) -> Flag:
    """Fires when PGD with a budget covering the whole box leaves samples robust."""
    if threat.norm not in ("linf", "l2", "l1"):
        return Flag("large_eps", False, f"not measured for norm {threat.norm}", "", None)
    wide = _unbounded(threat, x)
    attack = PGD(wide, steps=100, random_start=False, loss="margin", seed=seed)
    res = attack(clf, x, y)
    correct = res.clean_correct
    n = int(correct.sum())
    left = int((res.pred == res.y)[correct].sum())
    frac = left / n if n else 0.0
    fired = frac > LARGE_EPS_FRACTION
    return Flag(
        "large_eps",
        fired,
        f"PGD-100 at {threat.norm} ε={wide.eps:.4g} (the whole input range) left {left} of {n} "
        "clean-correct samples robust",
        "robust accuracy must reach 0 when ε covers the whole input range: the gradient signal "
        "is broken — look for non-differentiable steps (BPDA) or randomness (EOT)",
        frac,
    )


def not_converged(
    clf: Classifier,
    x: Tensor,
    y: Tensor,
    result: AttackResult,
    *,
    seed: int,
    max_samples: int,
) -> Flag:
    """Fires when a stronger APGD run lowers the estimated robust accuracy noticeably."""
    threat = result.threat
    name = "not_converged"
    if threat.eps is None or threat.norm not in APGD.norms or threat.targeted:
        return Flag(name, False, "not measured for this threat model", "", None)
    robust = torch.nonzero(result.pred.to(y.device) == y).squeeze(1)
    n_robust = int(robust.numel())
    if n_robust == 0:
        return Flag(name, False, "no robust samples left to attack further", "", 0.0)
    rows = robust[:max_samples]
    strong = APGD(threat, loss="ce", steps=200, restarts=3, seed=seed + 1)
    res = strong(clf, x[rows], y[rows])
    broken = int((res.pred != res.y).sum())
    drop = broken / len(rows) * n_robust / len(y)
    fired = drop > CONVERGENCE_DROP and broken >= CONVERGENCE_MIN_BROKEN
    return Flag(
        name,
        fired,
        f"APGD-CE with 200 steps and 3 restarts broke {broken} of {len(rows)} samples the "
        f"evaluation left robust (robust accuracy ≈{100 * drop:.2f} points lower)",
        "the attack has not converged: run more iterations and restarts; the reported robust "
        "accuracy is an overestimate",
        drop,
    )


def nondeterministic(
    clf: Classifier, x: Tensor, y: Tensor, attack: Attack, *, max_samples: int
) -> Flag:
    """Fires when ``attack`` (its first member, for an ensemble) is not reproducible."""
    first = attack.attacks[0] if isinstance(attack, Ensemble) else attack
    xs, ys = _subset(x, y, max_samples)
    a, b = first(clf, xs, ys), first(clf, xs, ys)
    differ = (a.success != b.success) | (a.x_adv - b.x_adv).flatten(1).abs().amax(dim=1).gt(0)
    count = int(differ.sum())
    fired = count > 0
    return Flag(
        "nondeterministic",
        fired,
        f"{first.name} with the same seed gave different results on {count} of {len(xs)} samples",
        "results are not reproducible: find the randomness (dropout or batch norm in train "
        "mode, a randomized defense, non-deterministic kernels); for a randomized model use EOT",
        count / max(len(xs), 1),
    )


Check = Callable[[], Flag]


def run_checks(
    model: Any,
    x: Tensor,
    y: Tensor,
    attack: Attack,
    result: AttackResult,
    *,
    seed: int = 0,
    max_samples: int = 100,
) -> list[Flag]:
    """Every sanity check for one evaluation of ``attack`` whose outcome is ``result``.

    Args:
        model: the evaluated model (anything ``advex.as_classifier`` accepts).
        x, y: the evaluated samples and labels (the ones ``result`` was computed on).
        attack: the attack (or ensemble) that produced ``result``.
        result: its result.
        seed: seed of the extra attacks the checks run.
        max_samples: the most samples any check attacks.
    """
    clf = as_classifier(model, bounds=attack.threat.bounds)
    dev = clf.device
    x, y = x.to(dev), y.to(dev)
    xs, ys = _subset(x, y, max_samples)
    threat = attack.threat
    checks: list[Check] = [
        lambda: probability_outputs(clf, xs),
        lambda: randomized_model(clf, xs),
        lambda: vanishing_gradients(clf, xs, ys),
        lambda: blackbox_stronger(result),
        lambda: large_eps(clf, xs, ys, threat, seed=seed),
        lambda: not_converged(clf, x, y, result, seed=seed, max_samples=max_samples),
        lambda: nondeterministic(clf, x, y, attack, max_samples=min(max_samples, 64)),
    ]
    return [check() for check in checks]
