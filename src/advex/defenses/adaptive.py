"""Adaptive attacks on defended models: BPDA through non-differentiable steps, EOT over randomness.

A defense that rounds, compresses or filters its input (bit-depth reduction, JPEG, a median
filter) gives an attack no gradient; a randomized one (noise, random resizing, random shifts)
gives it the gradient of one random draw. Both make a gradient attack fail without making the
model robust ("obfuscated gradients"). Athalye, Carlini and Wagner attack through them with

* BPDA (Backward Pass Differentiable Approximation): on the forward pass the defense g is
  applied exactly; on the backward pass it is replaced by a differentiable s ≈ g, so the attack
  follows ∇ₓ f(g(x)) ≈ J_s(x)ᵀ ∇f(g(x)). With s(x) = x (straight-through) this is
  ∇f evaluated at the defended point g(x).
* EOT (Expectation over Transformation): for a random defense t ~ T the attack optimizes the
  expectation E_t[f(t(x))], estimated by the mean over n independent draws; its gradient is
  the mean of the per-draw gradients.

``adapt(model)`` builds the attack-time view of a deployed model (every non-differentiable advex
defense inside behind ``BPDA``, the whole in ``EOT`` when a defense is randomized), sharing the
model's parameters; ``Adaptive(attack)`` runs any advex attack on that view and re-decides every
returned point on the deployed model. ``advex evaluate`` applies it automatically to models that
contain such a defense.

Athalye, Carlini, Wagner. Obfuscated Gradients Give a False Sense of Security: Circumventing
Defenses to Adversarial Examples. ICML 2018. arXiv:1802.00420

Deliberate choices:

* EOT averages the logits over the draws (see ``EOT``), so every attack runs on it unchanged.
* The deployed model of a randomized defense is re-checked on one draw from the defenses'
  generators reseeded deterministically (``advex.defenses.base.seed``): a point counts as
  adversarial when the deployed randomized model misclassifies it on that seeded draw, and the
  same seed gives the same result.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from advex.attacks import checks
from advex.attacks.base import Attack, Tracker, check_active
from advex.attacks.ensemble import Ensemble, EnsembleResult
from advex.defenses.base import Defense, defenses_in, is_nondifferentiable, is_randomized
from advex.defenses.base import seed as seed_defenses
from advex.model import Classifier, as_classifier
from advex.result import AttackResult, finalize, succeeded

__all__ = ["BPDA", "EOT", "Adaptive", "adapt", "needs_adapting", "splittable"]

#: The backward passes BPDA can use by name.
BACKWARDS: tuple[str, ...] = ("surrogate", "identity")

Backward = str | Callable[[Tensor], Tensor]


def _check_backward(backward: Any) -> Backward:
    if isinstance(backward, str):
        if backward not in BACKWARDS:
            raise ValueError(
                f"backward: expected one of {', '.join(BACKWARDS)} or a callable, got {backward!r}"
            )
        return backward
    if not callable(backward):
        kind = type(backward).__name__
        raise TypeError(f"backward: expected 'surrogate', 'identity' or a callable, got {kind}")
    return backward


def _backward_name(backward: Backward) -> str:
    if isinstance(backward, str):
        return backward
    return str(getattr(backward, "__name__", type(backward).__name__))


class BPDA(nn.Module):
    """A defense with a differentiable stand-in on the backward pass (Athalye et al. 2018, §4.1).

    The output is ``defense(x)`` exactly; its gradient is that of s(x), computed as
    g(x) + (s(x) − s(x)) with g(x) and the second s(x) detached: the forward value is untouched
    (s − s = 0 exactly) and the backward pass is J_sᵀ.

    Args:
        defense: the module whose backward pass is replaced (its parameters and generator are
            shared, not copied).
        backward: s: "surrogate" (the defense's ``backward_surrogate``: the identity unless the
            defense has a better smooth approximation), "identity" (straight-through,
            s(x) = x), or a callable x ↦ s(x) with the defense's output shape.
    """

    def __init__(self, defense: nn.Module, backward: Backward = "surrogate") -> None:
        super().__init__()
        if not isinstance(defense, nn.Module):
            raise TypeError(f"defense: expected an nn.Module, got {type(defense).__name__}")
        self.defense = defense
        self.backward = _check_backward(backward)

    def surrogate(self, x: Tensor) -> Tensor:
        """s(x): the function whose gradient stands in for the defense's."""
        if callable(self.backward):
            return self.backward(x)
        if self.backward == "surrogate" and isinstance(self.defense, Defense):
            return self.defense.backward_surrogate(x)
        return x

    def forward(self, x: Tensor) -> Tensor:
        out = self.defense(x)
        if not (torch.is_grad_enabled() and x.requires_grad):
            return out
        s = self.surrogate(x)
        if not isinstance(s, Tensor) or s.shape != out.shape:
            got = tuple(s.shape) if isinstance(s, Tensor) else type(s).__name__
            raise ValueError(
                f"backward: the surrogate gives {got} where the defense gives "
                f"{tuple(out.shape)}; pass a backward callable with the defense's output shape"
            )
        return out.detach() + (s - s.detach())

    def extra_repr(self) -> str:
        return f"backward={_backward_name(self.backward)!r}"


class EOT(nn.Module):
    """The mean logits of a randomized model over independent draws (Athalye et al. 2018, §4.2).

    ``EOT(model, n)(x)`` = z̄(x) = (1/n) Σ_{i=1..n} z(t_i(x)): the batch is repeated n times in
    one forward pass (or in passes of ``chunk`` draws each) so every row gets its own draw of
    the model's randomness, and the n logit vectors of each sample are averaged.

    What is averaged: the logits, not the loss. Any attack then runs unchanged on a model whose
    gradient is the mean of the per-draw gradients, ∇z̄ = (1/n) Σ_i ∇z(t_i(x)) (the gradient of
    a mean is the mean of the gradients). For a loss that is linear in the logits — the margin
    z_j − z_y for a fixed pair of classes, the numerator of DLR — L(z̄) is exactly the mean of the
    per-draw losses and ∇L(z̄) = E_t[∇L(z(t(x)))], Athalye et al.'s EOT gradient. For cross-entropy
    the per-draw Jacobians are averaged with the weights softmax(z̄) − e_y of the mean instead of
    each draw's own (AutoAttack's rand version averages the CE gradients; the two agree to first
    order when the draws agree). Averaging logits is also what makes the attack's bookkeeping
    (success, best point) refer to the expected prediction argmax z̄.

    Args:
        model: the randomized model (its logits (B, K)); shared, not copied.
        samples: n, the draws averaged per forward pass.
        chunk: the most draws evaluated in one pass of the model (batches of chunk·B rows;
            None: all n at once). With gradients, each chunk's activations are recomputed on the
            backward pass (checkpointing, the advex defenses' generators replayed to the same
            draws), so memory is bounded by one chunk's.
    """

    def __init__(self, model: nn.Module, samples: int = 10, *, chunk: int | None = None) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
        self.model = model
        self.samples = checks.positive_int("samples", samples)
        self.chunk = None if chunk is None else checks.positive_int("chunk", chunk)

    def _draws(self, x: Tensor, k: int) -> Tensor:
        """Σ over k draws of the logits (B, K): one pass on the batch repeated k times."""
        reps = x.repeat(k, *(1,) * (x.ndim - 1))
        logits = self.model(reps)
        return logits.reshape(k, x.shape[0], -1).sum(dim=0)

    def _replayed(self, k: int) -> Callable[[Tensor], Tensor]:
        """``_draws`` that gives the same draws when checkpointing recomputes it."""
        generators = [d.generator for d in defenses_in(self.model)]
        before = [g.get_state() for g in generators]
        first = [True]

        def run(x: Tensor) -> Tensor:
            if first[0]:
                first[0] = False
                return self._draws(x, k)
            now = [g.get_state() for g in generators]
            for g, state in zip(generators, before, strict=True):
                g.set_state(state)
            try:
                return self._draws(x, k)
            finally:
                for g, state in zip(generators, now, strict=True):
                    g.set_state(state)

        return run

    def forward(self, x: Tensor) -> Tensor:
        per = min(self.chunk or self.samples, self.samples)
        sizes = [per] * (self.samples // per)
        if self.samples % per:
            sizes.append(self.samples % per)
        recompute = len(sizes) > 1 and torch.is_grad_enabled() and x.requires_grad
        total: Tensor | None = None
        for k in sizes:
            if recompute:
                part = checkpoint(self._replayed(k), x, use_reentrant=False)
                assert isinstance(part, Tensor)
            else:
                part = self._draws(x, k)
            total = part if total is None else total + part
        assert total is not None
        return total / self.samples

    def extra_repr(self) -> str:
        return f"samples={self.samples}, chunk={self.chunk}"


def needs_adapting(model: nn.Module) -> bool:
    """Whether ``model`` contains a randomized or non-differentiable advex ``Defense``."""
    return is_randomized(model) or is_nondifferentiable(model)


def _with_bpda(module: nn.Module, backward: Backward) -> nn.Module:
    """``module`` with every non-differentiable Defense behind BPDA; containers whose children
    change are shallow copies (new child table, the same parameters and buffers)."""
    if isinstance(module, BPDA):
        return module
    if isinstance(module, Defense) and not module.differentiable:
        return BPDA(module, backward)
    changed = {}
    for name, child in module.named_children():
        new = _with_bpda(child, backward)
        if new is not child:
            changed[name] = new
    if not changed:
        return module
    clone = copy.copy(module)
    # copy.copy shares the instance dict's tables: give the copy its own child table
    clone._modules = {**module._modules, **changed}
    return clone


def adapt(
    model: nn.Module,
    *,
    eot_samples: int = 10,
    bpda: Backward = "surrogate",
    eot_chunk: int | None = None,
) -> Classifier:
    """The attack-time view of a deployed model: BPDA through its non-differentiable advex
    defenses and, when one of its defenses is randomized, EOT over ``eot_samples`` draws.

    The user's model is neither changed nor copied: modules on the path to a replaced defense
    are shallow copies, every parameter, buffer and defense (with its generator) is the same
    object. Bounds, normalization and ``num_classes`` are kept. A model with nothing to adapt
    is returned as it is (as a Classifier); adapting a view again changes nothing.

    Args:
        model: the deployed model (an ``advex.Classifier`` or an ``nn.Module`` giving logits).
        eot_samples: draws averaged per forward pass for a randomized model (1: no EOT).
        bpda: the backward pass of the non-differentiable defenses (see ``BPDA``).
        eot_chunk: the most draws per pass of the model (see ``EOT``; None: all at once).
    """
    clf = as_classifier(model)
    eot_samples = checks.positive_int("eot_samples", eot_samples)
    bpda = _check_backward(bpda)
    view = _with_bpda(clf, bpda)
    assert isinstance(view, Classifier)
    already = any(isinstance(m, EOT) for m in view.modules())
    if eot_samples > 1 and is_randomized(view) and not already:
        view = Classifier(
            EOT(view, eot_samples, chunk=eot_chunk),
            num_classes=clf.num_classes,
            bounds=clf.bounds,
            channels_last=clf.channels_last,
        )
    return view


def splittable(attack: Attack) -> bool:
    """Whether ``attack`` gives on a slice of the data exactly that slice of a call on all."""
    if isinstance(attack, Adaptive):
        return splittable(attack.attack)
    if isinstance(attack, Ensemble):
        return all(splittable(a) for a in attack.attacks)
    return attack.per_batch


def _without_early_stop(attack: Attack) -> Attack:
    """A shallow copy of ``attack`` (of an ensemble's members) that never stops early."""
    if isinstance(attack, Ensemble):
        members = copy.copy(attack)
        members.attacks = [_without_early_stop(a) for a in attack.attacks]
        return members
    if not attack.early_stop:
        return attack
    clone = copy.copy(attack)
    clone.early_stop = False
    return clone


def _stream(seed: int, batch: int, purpose: int) -> int:
    """The defenses' seed for batch ``batch`` of a call: purpose 0 the attack, 1 the re-check
    (``seed_defenses`` adds the defense's index, < 1000, to it)."""
    return ((seed * 1_000_003 + batch) * 2 + purpose) * 1000


class Adaptive(Attack):
    """Run ``attack`` on the adapted view of a model, then decide every point on the model.

    ``Adaptive(attack)(model, x, y)`` runs ``attack`` on ``adapt(model)`` (BPDA, EOT) and passes
    its points through ``advex.result.finalize`` on the deployed ``model``: validity (box, ball,
    grid) and success come from the deployed model, not the view. Per sample the better of the
    attack's point and the clean input is kept (a sample the deployed model already
    misclassifies is not robust). Queries, gradients and steps are the inner attack's (a query
    of an EOT view is one pass of ``eot_samples`` draws); ``rechecks`` adds the three passes on
    the deployed model (clean, attack's point, final).

    Randomized models: a point counts as adversarial when the deployed randomized model
    misclassifies it on the seeded draw — before the re-check of batch i the defenses'
    generators are reseeded from (``seed``, i), and before the attack from another stream, so
    the same seed gives the same result and the attack never sees the deciding draw. On a
    randomized model the inner attack spends its whole budget (early stop off, on a shallow
    copy): stopping where the mean prediction of the EOT view first flips leaves points on the
    boundary of the expectation, which one draw misclassifies only about half the time; going
    on maximizes the expected loss and returns the point of largest margin on the view.

    An ensemble is wrapped whole (``Adaptive(standard(threat))``): its members run on the view,
    each only on the samples the earlier ones left robust there (for a deterministic defense
    the view's decisions are the deployed model's), and the ensemble's result is re-decided on
    the deployed model (``broken_by`` is −1 where that re-check undid a member's success).

    Args:
        attack: any advex attack or ensemble (not already adaptive).
        eot_samples: draws averaged per forward pass of a randomized model.
        bpda: the backward pass of non-differentiable defenses ("surrogate", "identity" or a
            callable; see ``BPDA``).
        eot_chunk: the most draws per pass of the model (memory; see ``EOT``).
    """

    name: ClassVar[str] = "adaptive"
    needs_eps: ClassVar[bool] = False

    def __init__(
        self,
        attack: Attack,
        *,
        eot_samples: int = 10,
        bpda: Backward = "surrogate",
        eot_chunk: int | None = None,
    ) -> None:
        if not isinstance(attack, Attack):
            raise TypeError(f"attack: expected an advex attack, got {type(attack).__name__}")
        if isinstance(attack, Adaptive):
            raise ValueError("attack: is already Adaptive; wrap the inner attack once")
        super().__init__(
            attack.threat, seed=attack.seed, batch_size=attack.batch_size, early_stop=True
        )
        self.attack = attack
        self.eot_samples = checks.positive_int("eot_samples", eot_samples)
        self.bpda = _check_backward(bpda)
        self.eot_chunk = None if eot_chunk is None else checks.positive_int("eot_chunk", eot_chunk)

    def view(self, model: nn.Module) -> Classifier:
        """The model the inner attack runs on: ``adapt(model)`` with these settings."""
        return adapt(model, eot_samples=self.eot_samples, bpda=self.bpda, eot_chunk=self.eot_chunk)

    def settings(self) -> dict[str, Any]:
        """The adaptive settings, for results: EOT draws and the BPDA backward pass."""
        return {"eot_samples": self.eot_samples, "bpda": _backward_name(self.bpda)}

    def params(self) -> dict[str, Any]:
        return {**self.attack.params(), "adaptive": self.settings()}

    def _applied(self, view: nn.Module) -> dict[str, Any]:
        """The inner attack's params and what was applied to this model: the EOT draws (None
        for a deterministic model) and the BPDA backward (None without BPDA)."""
        eot = next((m.samples for m in view.modules() if isinstance(m, EOT)), None)
        bpda = any(isinstance(m, BPDA) for m in view.modules())
        applied = {"eot_samples": eot, "bpda": _backward_name(self.bpda) if bpda else None}
        return {**self.attack.params(), "adaptive": applied}

    def __call__(
        self,
        model: Any,
        x: Tensor,
        y: Tensor,
        target: Tensor | None = None,
        *,
        active: Tensor | None = None,
        batch_offset: int = 0,
    ) -> AttackResult:
        """Attack the view of ``model``, decide on ``model`` (see the class docstring).

        ``active`` and ``batch_offset`` as ``Attack.__call__``: batch i of the call (of the
        inner attack's ``batch_size``) runs as batch ``batch_offset + i``."""
        batch_offset = checks.non_negative_int("batch_offset", batch_offset)
        deployed = as_classifier(model, bounds=self.threat.bounds)
        x, y, target = self._checked(deployed, x, y, target)
        active = check_active(active, x)
        view = self.view(deployed)
        start = time.perf_counter()
        n = x.shape[0]
        size = (self.batch_size or n) if splittable(self.attack) else n
        parts = []
        for i, lo in enumerate(range(0, n, size)):
            rows = slice(lo, lo + size)
            parts.append(
                self._piece(
                    deployed,
                    view,
                    x[rows],
                    y[rows],
                    None if target is None else target[rows],
                    None if active is None else active[rows],
                    batch_offset + i,
                )
            )
        return type(parts[0]).concat(parts, seconds=time.perf_counter() - start)

    def _piece(
        self,
        deployed: Classifier,
        view: Classifier,
        x: Tensor,
        y: Tensor,
        target: Tensor | None,
        active: Tensor | None,
        index: int,
    ) -> AttackResult:
        """One batch: the inner attack on the view, then the re-check on the deployed model."""
        start = time.perf_counter()
        seed_defenses(deployed, _stream(self.seed, index, 0))
        attack = self.attack
        if is_randomized(view):
            attack = _without_early_stop(attack)
        inner = attack(view, x, y, target, active=active, batch_offset=index)
        target = inner.target
        x_adv = inner.x_adv.to(x.device, x.dtype)
        check = _stream(self.seed, index, 1)
        targeted = self.threat.targeted
        with torch.no_grad(), deployed.attacking():
            seed_defenses(deployed, check)
            clean_pred = deployed(x).argmax(dim=1)
            seed_defenses(deployed, check)
            adv_pred = deployed(x_adv).argmax(dim=1)
            keep_clean = succeeded(clean_pred, y, target, targeted) & ~succeeded(
                adv_pred, y, target, targeted
            )
            view_shape = (-1,) + (1,) * (x.ndim - 1)
            candidate = torch.where(keep_clean.reshape(view_shape), x, x_adv)
            measure = None
            if inner.metric is not None:
                measure = torch.where(keep_clean, torch.zeros_like(inner.distance), inner.distance)
            seed_defenses(deployed, check)
            checked = finalize(
                deployed,
                x,
                y,
                candidate,
                self.threat,
                target=target,
                clean_pred=clean_pred,
                queries=inner.queries,
                gradients=inner.gradients,
                steps=inner.steps,
                seconds=0.0,
                attack=inner.attack,
                params=self._applied(view),
                distance=measure,
                metric=inner.metric,
            )
        assert checked.rechecks is not None
        rechecks = checked.rechecks + 2
        if inner.rechecks is not None:
            rechecks = rechecks + inner.rechecks.to(rechecks.device)
        changes: dict[str, Any] = {
            "x_adv": checked.x_adv,
            "success": checked.success,
            "distance": checked.distance,
            "pred": checked.pred,
            "target": target,
            "clean_pred": clean_pred,
            "rechecks": rechecks,
            "params": checked.params,
            "seconds": time.perf_counter() - start,
        }
        if isinstance(inner, EnsembleResult):
            kept = checked.success & ~keep_clean
            changes["broken_by"] = torch.where(
                kept, inner.broken_by.to(kept.device), torch.full_like(inner.broken_by, -1)
            )
        return dataclasses.replace(inner, **changes)

    def _targets(self, clf: Any, x: Tensor, y: Tensor, target: Tensor | None) -> Tensor:
        return self.attack._targets(clf, x, y, target)

    def _run(self, run: Tracker) -> None:  # pragma: no cover - __call__ runs the inner attack
        raise TypeError("Adaptive runs its inner attack; call it, do not run it in a Tracker")

    def __repr__(self) -> str:
        return f"Adaptive({self.attack!r}, eot_samples={self.eot_samples}, bpda={self.bpda!r})"
