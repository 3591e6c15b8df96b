"""Transferability matrix: attack each source model white-box, evaluate the points on targets.

For sources s and targets t, with x'_s the points the attack found on s (one run per source):

    rates[s, t]       = #{i ∈ B_s ∩ C_t : t fooled at x'_{s,i}} / #(B_s ∩ C_t)
    counts[s, t]      = #(B_s ∩ C_t)
    error_rates[s, t] = #{i : t(x'_{s,i}) ≠ y_i} / n

B_s = the samples the attack broke on s (s classifies x_i correctly and the re-checked
x'_{s,i} succeeds on s), C_t = the samples t classifies correctly when clean, "fooled" =
t(x') ≠ y (untargeted) or t(x') = target (targeted). ``rates`` is the transfer success rate of
Papernot et al. (2016), measured only where transfer is meaningful: a point that did not fool
its source, or a sample the target already gets wrong, says nothing about transfer. NaN where
B_s ∩ C_t is empty. ``error_rates`` is the plain alternative: the target's error on all n
adversarial points (clean errors included), i.e. 1 − its accuracy under the transferred attack.
With s = t, rates[s, s] = 1 by construction (the source's own re-check).

Papernot, McDaniel, Goodfellow. Transferability in Machine Learning: from Phenomena to Black-Box
Attacks using Adversarial Samples. 2016. arXiv:1605.07277
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from advex.attacks.base import Attack
from advex.model import as_classifier, check_inputs
from advex.oracle import Oracle
from advex.result import AttackResult, succeeded
from advex.threat import ThreatModel

__all__ = ["TransferMatrix", "matrix", "transfer"]


@dataclass(eq=False)
class TransferMatrix:
    """Transfer success of one attack between source and target models.

    Attributes:
        sources: source model names (rows); ``targets``: target model names (columns).
        rates: (S, T) float64 transfer success rate on the samples the source attack broke and
            the target classifies correctly when clean (NaN where there are none).
        counts: (S, T) long, the number of those samples (the denominators of ``rates``).
        error_rates: (S, T) float64, the target's error rate on all n transferred points.
        source_success: (S,) float64, the white-box success rate on each source (over its
            clean-correct samples).
        target_accuracy: (T,) float64, each target's clean accuracy.
        n: number of samples; ``attack``: the attack's name; ``threat``: its threat model.
        results: the attack's result on each source (x_adv and the per-sample fields).
    """

    sources: tuple[str, ...]
    targets: tuple[str, ...]
    rates: Tensor
    counts: Tensor
    error_rates: Tensor
    source_success: Tensor
    target_accuracy: Tensor
    n: int
    attack: str
    threat: ThreatModel
    results: dict[str, AttackResult] = field(default_factory=dict, repr=False)

    def rate(self, source: str, target: str) -> float:
        """rates[source, target] by name."""
        return float(
            self.rates[
                self._index(self.sources, source, "source"),
                self._index(self.targets, target, "target"),
            ]
        )

    @staticmethod
    def _index(names: tuple[str, ...], name: str, what: str) -> int:
        if name not in names:
            raise ValueError(f"{what}: unknown name {name!r}; known: {', '.join(names)}")
        return names.index(name)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: names, the matrices as nested lists (NaN as None), the settings."""
        return {
            "attack": self.attack,
            "threat": self.threat.describe(),
            "n": self.n,
            "sources": list(self.sources),
            "targets": list(self.targets),
            "rates": _nested(self.rates),
            "counts": self.counts.tolist(),
            "error_rates": _nested(self.error_rates),
            "source_success": _nested(self.source_success),
            "target_accuracy": _nested(self.target_accuracy),
        }

    def __str__(self) -> str:
        head = (
            f"transfer success of {self.attack} ({self.threat.describe()}), n={self.n}: "
            "rows = source, columns = target; rate (samples broken on the source and "
            "clean-correct on the target)"
        )
        cells = [
            [
                _cell(float(self.rates[i, j]), int(self.counts[i, j]))
                for j in range(len(self.targets))
            ]
            for i in range(len(self.sources))
        ]
        first = max(len("source \\ target"), *(len(s) for s in self.sources))
        widths = [max(len(t), *(len(row[j]) for row in cells)) for j, t in enumerate(self.targets)]
        lines = [
            head,
            "  ".join(
                ["source \\ target".ljust(first)]
                + [t.rjust(w) for t, w in zip(self.targets, widths, strict=True)]
            ),
        ]
        for name, row in zip(self.sources, cells, strict=True):
            parts = [c.rjust(w) for c, w in zip(row, widths, strict=True)]
            lines.append("  ".join([name.ljust(first), *parts]))
        return "\n".join(lines)


def _cell(rate: float, count: int) -> str:
    return f"{'—' if math.isnan(rate) else f'{rate:.3f}'} ({count})"


def _nested(t: Tensor) -> Any:
    values = t.tolist()

    def clean(v: Any) -> Any:
        if isinstance(v, list):
            return [clean(u) for u in v]
        return None if isinstance(v, float) and math.isnan(v) else v

    return clean(values)


def _named(models: Any, what: str) -> dict[str, Any]:
    """{name: model} from a mapping or a sequence (names "0", "1", …)."""
    if isinstance(models, Mapping):
        items = list(models.items())
    elif isinstance(models, Sequence) and not isinstance(models, str):
        items = [(str(i), m) for i, m in enumerate(models)]
    else:
        raise ValueError(
            f"{what}: expected a dict name → model or a list of models, got {type(models).__name__}"
        )
    if not items:
        raise ValueError(f"{what}: expected at least one model, got none")
    out: dict[str, Any] = {}
    for name, model in items:
        if not isinstance(name, str) or not name:
            raise ValueError(f"{what}: model names must be non-empty strings, got {name!r}")
        if not isinstance(model, nn.Module | Oracle):
            raise ValueError(
                f"{what}: {name!r} must be an nn.Module, advex.Classifier or Oracle, got "
                f"{type(model).__name__}"
            )
        out[name] = model
    return out


def _labels(model: Any, x: Tensor, bounds: tuple[float, float]) -> Tensor:
    """Top-1 labels of ``model`` at ``x`` (no gradients), on x's device."""
    if isinstance(model, Oracle):
        return model.labels(x).to(x.device)
    return as_classifier(model, bounds=bounds).predict(x).to(x.device)


def transfer(
    source_models: Mapping[str, Any] | Sequence[Any],
    target_models: Mapping[str, Any] | Sequence[Any],
    attack: Attack,
    x: Tensor,
    y: Tensor,
    *,
    target: Tensor | None = None,
) -> TransferMatrix:
    """The transferability matrix of ``attack`` from each source to each target model.

    Args:
        source_models: name → model (``nn.Module`` / ``advex.Classifier``), or a list (named
            "0", "1", …); the attack runs on each (white-box, or black-box for an attack that
            takes an oracle).
        target_models: name → model (``nn.Module`` / ``Classifier`` / ``advex.oracle.Oracle``)
            or a list; only their labels are used.
        attack: an advex ``Attack`` instance (its threat model decides targeted or not).
        x: (B, ...) inputs in the threat's box; y: (B,) labels; target: (B,) target labels for a
            targeted threat.

    Returns:
        A ``TransferMatrix`` (see the module docstring for the definitions).

    Raises:
        ValueError: bad arguments (named).
    """
    if not isinstance(attack, Attack):
        raise ValueError(f"attack: expected an advex Attack instance, got {type(attack).__name__}")
    sources = _named(source_models, "source_models")
    targets = _named(target_models, "target_models")
    threat = attack.threat
    try:
        x, y, target = check_inputs(x, y, bounds=threat.bounds, target=target)
    except TypeError as err:
        raise ValueError(str(err)) from None
    if threat.targeted and target is None:
        raise ValueError("target: the attack's threat model is targeted; pass target labels")
    if not threat.targeted and target is not None:
        raise ValueError("target: given, but the attack's threat model is untargeted")
    x = x.detach()
    clean = {name: _labels(model, x, threat.bounds) for name, model in targets.items()}
    results: dict[str, AttackResult] = {}
    predictions: dict[tuple[str, str], Tensor] = {}
    for s_name, s_model in sources.items():
        res = attack(s_model, x, y, target)
        results[s_name] = res
        x_adv = res.x_adv.to(x.device)
        for t_name, t_model in targets.items():
            predictions[s_name, t_name] = _labels(t_model, x_adv, threat.bounds)
    return matrix(results, predictions, clean, y, target)


def matrix(
    results: Mapping[str, AttackResult],
    predictions: Mapping[tuple[str, str], Tensor],
    clean: Mapping[str, Tensor],
    y: Tensor,
    target: Tensor | None = None,
) -> TransferMatrix:
    """The transfer matrix from results already computed (see the module docstring).

    Args:
        results: source name → the attack's result on that source (same samples, same attack).
        predictions: (source, target) → the target's labels (B,) on the source's points; a
            missing pair is left NaN (and counted 0).
        clean: target name → its labels (B,) on the clean inputs.
        y: (B,) labels; target: (B,) target labels of a targeted attack.
    """
    if not results or not clean:
        raise ValueError("results, clean: expected at least one source and one target")
    first = next(iter(results.values()))
    threat = first.threat
    dev = torch.device("cpu")
    y = y.to(dev)
    target = None if target is None else target.to(dev)
    clean_ok = {name: pred.to(dev) == y for name, pred in clean.items()}
    s_n, t_n = len(results), len(clean)
    rates = torch.full((s_n, t_n), math.nan, dtype=torch.float64)
    counts = torch.zeros(s_n, t_n, dtype=torch.long)
    errors = torch.full((s_n, t_n), math.nan, dtype=torch.float64)
    source_success = torch.zeros(s_n, dtype=torch.float64)
    for i, (s_name, res) in enumerate(results.items()):
        if len(res) != y.shape[0]:
            raise ValueError(f"results: {s_name!r} has {len(res)} samples, y has {y.shape[0]}")
        broken = (res.success & res.clean_correct).to(dev)
        source_success[i] = res.success_rate
        for j, t_name in enumerate(clean):
            pred = predictions.get((s_name, t_name))
            if pred is None:
                continue
            pred = pred.to(dev)
            fooled = succeeded(pred, y, target, threat.targeted)
            mask = broken & clean_ok[t_name]
            counts[i, j] = int(mask.sum())
            if bool(mask.any()):
                rates[i, j] = float(fooled[mask].double().mean())
            errors[i, j] = float((pred != y).double().mean())
    accuracy = torch.tensor(
        [float(clean_ok[t].double().mean()) for t in clean], dtype=torch.float64
    )
    return TransferMatrix(
        sources=tuple(results),
        targets=tuple(clean),
        rates=rates,
        counts=counts,
        error_rates=errors,
        source_success=source_success,
        target_accuracy=accuracy,
        n=int(y.shape[0]),
        attack=first.attack,
        threat=threat,
        results=dict(results),
    )
