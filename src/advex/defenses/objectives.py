"""Training objectives: what one step of ``advex.defenses.train`` minimizes on a batch.

Each objective is a small object with ``loss(model, x, y, eps, generator) -> Step``: the batch
loss (a scalar to back-propagate) and the logits it was measured on (for the training accuracy
in the log). ``eps`` is the current budget of the ε ramp (the objective's own ``eps`` once the
ramp is over); the generator is the trainer's, so a seeded run is reproducible and resumable.

The inner maximizations run with the model in eval mode (as TRADES' reference code does), so
batch-norm statistics are not updated by the attack's iterates; the outer loss runs in train
mode. Gradients with respect to the inputs are taken with ``torch.autograd.grad``, so the inner
loop never touches the parameters' ``.grad``.

* ``Standard(T)``: CE(f(x)/T, y).
* ``FGSMMix(ε, α)`` (Goodfellow et al. 2015): α·CE(f(x), y) + (1−α)·CE(f(x + ε·sign ∇ₓCE), y).
* ``FastFGSM(ε, step)`` (Wong et al. 2020): CE(f(x + δ), y), δ = Π(δ₀ + step·sign ∇),
  δ₀ ~ U(−ε, ε).
* ``PGDAT(ε, steps)`` (Madry et al. 2018): CE(f(x'), y), x' = PGD on CE in the ball ∩ box.
* ``TRADES(ε, β)`` (Zhang et al. 2019): CE(f(x), y) + β·KL(p(x) ‖ p(x')), x' = PGD on the KL.
* ``ALP(ε, α, λ)`` (Kannan et al. 2018): α·CE(f(x)) + (1−α)·CE(f(x')) + λ·‖f(x) − f(x')‖₂².
* ``EnsembleAT(ε, static)`` (Tramèr et al. 2018): ½·CE(f(x)) + ½·CE(f(x')), x' = FGSM on the
  current model or on a static one, in turn.
* ``GradientPenalty(λ)`` (Ross & Doshi-Velez 2018): CE(f(x), y) + λ·‖∇ₓ CE(f(x), y)‖₂²
  (double backprop).
* ``Distillation(teacher, T)`` (Papernot et al. 2016): −Σ_k softmax(g(x)/T)_k ·
  log softmax(f(x)/T)_k.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advex.attacks import checks
from advex.norms import ascent, project, random_start
from advex.threat import Norm, ThreatModel

__all__ = [
    "ALP",
    "OBJECTIVES",
    "PGDAT",
    "TRADES",
    "Distillation",
    "EnsembleAT",
    "FGSMMix",
    "FastFGSM",
    "GradientPenalty",
    "Objective",
    "Standard",
    "Step",
    "input_attack",
]

InnerLoss = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class Step:
    """What one objective evaluation gives the trainer: the loss to minimize and the logits of
    the inputs the model was trained on (adversarial ones for adversarial objectives)."""

    loss: Tensor
    logits: Tensor


class _EvalMode:
    """Context: ``model`` in eval mode, every submodule's previous mode restored afterwards."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.modes: list[tuple[nn.Module, bool]] = []

    def __enter__(self) -> None:
        self.modes = [(m, m.training) for m in self.model.modules()]
        self.model.eval()

    def __exit__(self, *exc: object) -> None:
        for m, mode in self.modes:
            m.training = mode


def input_attack(
    model: nn.Module,
    x: Tensor,
    inner: Callable[[Tensor], Tensor],
    threat: ThreatModel,
    *,
    steps: int,
    step_size: float,
    start: Tensor,
) -> Tensor:
    """Maximize ``inner(f(x + δ))`` (a scalar) over δ in the threat's ball ∩ box by ``steps``
    projected steepest-ascent steps of size ``step_size`` from ``start``; returns x + δ (no grad).

    The training-time inner maximization: the last iterate, no re-check (it is a training
    input, not a result advex reports). Runs with the model in eval mode."""
    delta = project(start, x, threat)
    with _EvalMode(model):
        for _ in range(steps):
            delta.requires_grad_(True)
            value = inner(model(x + delta))
            (grad,) = torch.autograd.grad(value, delta)
            step = ascent(grad, threat.norm, x_adv=x + delta, bounds=threat.bounds)
            delta = project(delta.detach() + step_size * step, x, threat)
    return (x + delta).detach()


def _random_start(x: Tensor, threat: ThreatModel, generator: torch.Generator) -> Tensor:
    """A uniform random point of the ball (``norms.random_start``) drawn from the trainer's CPU
    generator, on ``x``'s device."""
    if x.device.type == "cpu":
        return random_start(x, threat, generator)
    return random_start(x.cpu(), threat, generator).to(x.device)


def _fgsm_mixture(
    model: nn.Module, source: nn.Module, x: Tensor, y: Tensor, threat: ThreatModel, alpha: float
) -> Step:
    """α·CE(f(x), y) + (1−α)·CE(f(x'), y), x' one FGSM step of size ε on ``source``'s CE."""
    x_adv = input_attack(
        source,
        x,
        lambda z: F.cross_entropy(z, y, reduction="sum"),
        threat,
        steps=1,
        step_size=threat.budget(),
        start=torch.zeros_like(x),
    )
    adv = model(x_adv)
    loss = alpha * F.cross_entropy(model(x), y) + (1 - alpha) * F.cross_entropy(adv, y)
    return Step(loss, adv)


class Objective(abc.ABC):
    """A training objective (see the module table). Subclasses set ``name`` and ``loss``."""

    name: ClassVar[str] = "objective"
    #: whether the objective uses the ε budget (the trainer ramps it and validates with it)
    adversarial: ClassVar[bool] = True

    def __init__(self, *, eps: float = 0.0, norm: str = "linf") -> None:
        if self.adversarial:
            checks.positive("eps", eps)
        if norm not in ("linf", "l2", "l1"):
            raise ValueError(f"norm: expected one of linf, l2, l1, got {norm!r}")
        self.eps = float(eps)
        self.norm: Norm = norm  # type: ignore[assignment]

    def threat(self, eps: float, bounds: tuple[float, float]) -> ThreatModel:
        """The inner attack's threat model at the current (ramped) budget."""
        return ThreatModel(self.norm, max(float(eps), 1e-12), bounds=bounds)

    @abc.abstractmethod
    def loss(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        *,
        eps: float,
        generator: torch.Generator,
        bounds: tuple[float, float] = (0.0, 1.0),
        step: int = 0,
    ) -> Step:
        """The batch loss at budget ``eps`` (``step`` is the trainer's global step counter)."""

    def params(self) -> dict[str, Any]:
        """The objective's settings, for checkpoints, logs and model cards."""
        out: dict[str, Any] = {"objective": self.name}
        if self.adversarial:
            out.update(eps=self.eps, norm=self.norm)
        return out

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self.params().items() if k != "objective")
        return f"{type(self).__name__}({inner})"


class Standard(Objective):
    """Cross-entropy of f(x)/T (T = 1: standard training; T > 1: a distillation teacher)."""

    name: ClassVar[str] = "standard"
    adversarial: ClassVar[bool] = False

    def __init__(self, *, temperature: float = 1.0) -> None:
        super().__init__()
        checks.positive("temperature", temperature)
        self.temperature = float(temperature)

    def loss(self, model, x, y, *, eps, generator, bounds=(0.0, 1.0), step=0):  # type: ignore[no-untyped-def]
        logits = model(x)
        return Step(F.cross_entropy(logits / self.temperature, y), logits)

    def params(self) -> dict[str, Any]:
        return {**super().params(), "temperature": self.temperature}


class FGSMMix(Objective):
    """Goodfellow et al. (ICLR 2015, arXiv:1412.6572): α·CE(x) + (1−α)·CE(x + ε·sign ∇ₓCE)."""

    name: ClassVar[str] = "fgsm"

    def __init__(self, *, eps: float, alpha: float = 0.5, norm: str = "linf") -> None:
        super().__init__(eps=eps, norm=norm)
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha: expected a weight in [0, 1], got {alpha!r}")
        self.alpha = float(alpha)

    def loss(self, model, x, y, *, eps, generator, bounds=(0.0, 1.0), step=0):  # type: ignore[no-untyped-def]
        return _fgsm_mixture(model, model, x, y, self.threat(eps, bounds), self.alpha)

    def params(self) -> dict[str, Any]:
        return {**super().params(), "alpha": self.alpha}


class FastFGSM(Objective):
    """Wong, Rice, Kolter (ICLR 2020, arXiv:2001.03994): FGSM from a uniform random start,
    step 1.25·ε by default, then CE on the result."""

    name: ClassVar[str] = "fast"

    def __init__(self, *, eps: float, step_size: float | None = None, norm: str = "linf") -> None:
        super().__init__(eps=eps, norm=norm)
        if step_size is not None:
            checks.positive("step_size", step_size)
        self.step_size = None if step_size is None else float(step_size)

    def loss(self, model, x, y, *, eps, generator, bounds=(0.0, 1.0), step=0):  # type: ignore[no-untyped-def]
        threat = self.threat(eps, bounds)
        size = self.step_size * eps / self.eps if self.step_size else 1.25 * threat.budget()
        x_adv = input_attack(
            model,
            x,
            lambda z: F.cross_entropy(z, y, reduction="sum"),
            threat,
            steps=1,
            step_size=size,
            start=_random_start(x, threat, generator),
        )
        logits = model(x_adv)
        return Step(F.cross_entropy(logits, y), logits)

    def params(self) -> dict[str, Any]:
        return {**super().params(), "step_size": self.step_size}


class _Iterative(Objective):
    """Shared settings of the objectives with a multi-step inner maximization."""

    def __init__(
        self, *, eps: float, steps: int, step_size: float | None, norm: str = "linf"
    ) -> None:
        super().__init__(eps=eps, norm=norm)
        self.steps = checks.positive_int("steps", steps)
        if step_size is not None:
            checks.positive("step_size", step_size)
        self.step_size = None if step_size is None else float(step_size)

    def _size(self, eps: float) -> float:
        """Step size at the current budget: the given one scaled with the ramp, else 2.5·ε/steps."""
        if self.step_size is not None:
            return self.step_size * eps / self.eps
        return 2.5 * eps / self.steps

    def params(self) -> dict[str, Any]:
        return {**super().params(), "steps": self.steps, "step_size": self.step_size}


class PGDAT(_Iterative):
    """Madry et al. (ICLR 2018, arXiv:1706.06083): CE at the PGD point x' (random start,
    ``steps`` steps of 2.5·ε/steps unless given, last iterate)."""

    name: ClassVar[str] = "pgd"

    def __init__(
        self, *, eps: float, steps: int = 10, step_size: float | None = None, norm: str = "linf"
    ) -> None:
        super().__init__(eps=eps, steps=steps, step_size=step_size, norm=norm)

    def adversarial_batch(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        eps: float,
        generator: torch.Generator,
        bounds: tuple[float, float],
    ) -> Tensor:
        """The PGD point x' of each sample at budget ``eps``."""
        threat = self.threat(eps, bounds)
        return input_attack(
            model,
            x,
            lambda z: F.cross_entropy(z, y, reduction="sum"),
            threat,
            steps=self.steps,
            step_size=self._size(eps),
            start=_random_start(x, threat, generator),
        )

    def loss(self, model, x, y, *, eps, generator, bounds=(0.0, 1.0), step=0):  # type: ignore[no-untyped-def]
        x_adv = self.adversarial_batch(model, x, y, eps, generator, bounds)
        logits = model(x_adv)
        return Step(F.cross_entropy(logits, y), logits)


class TRADES(_Iterative):
    """Zhang et al. (ICML 2019, arXiv:1901.08573):

        CE(f(x), y) + β · (1/B) Σ_i KL(p(x_i) ‖ p(x'_i)),
        x' = argmax_{x' ∈ ball ∩ box} KL(p(x) ‖ p(x')),

    the inner maximum by ``steps`` signed-gradient steps from x + 0.001·N(0, I) (the reference
    code's start) against the clean prediction p(x), held fixed."""

    name: ClassVar[str] = "trades"

    def __init__(
        self,
        *,
        eps: float,
        beta: float = 6.0,
        steps: int = 10,
        step_size: float | None = None,
        norm: str = "linf",
    ) -> None:
        super().__init__(eps=eps, steps=steps, step_size=step_size, norm=norm)
        checks.positive("beta", beta)
        self.beta = float(beta)

    def loss(self, model, x, y, *, eps, generator, bounds=(0.0, 1.0), step=0):  # type: ignore[no-untyped-def]
        threat = self.threat(eps, bounds)
        with torch.no_grad(), _EvalMode(model):
            p_clean = F.softmax(model(x), dim=1)
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype)
        start = 0.001 * noise.to(x.device)
        x_adv = input_attack(
            model,
            x,
            lambda z: F.kl_div(F.log_softmax(z, dim=1), p_clean, reduction="sum"),
            threat,
            steps=self.steps,
            step_size=self._size(eps),
            start=start,
        )
        clean = model(x)
        adv = model(x_adv)
        kl = F.kl_div(F.log_softmax(adv, dim=1), F.softmax(clean, dim=1), reduction="batchmean")
        return Step(F.cross_entropy(clean, y) + self.beta * kl, adv)

    def params(self) -> dict[str, Any]:
        return {**super().params(), "beta": self.beta}


class ALP(PGDAT):
    """Adversarial logit pairing (Kannan, Kurakin, Goodfellow 2018, arXiv:1803.06373):

        α·CE(f(x), y) + (1−α)·CE(f(x'), y) + λ·(1/B) Σ_i ‖f(x_i) − f(x'_i)‖₂²,

    x' the PGD point of ``PGDAT``. (Engstrom et al. 2018 showed the pairing term alone adds
    little robustness; advex's evaluation makes that measurable.)"""

    name: ClassVar[str] = "alp"

    def __init__(
        self,
        *,
        eps: float,
        alpha: float = 0.5,
        weight: float = 0.5,
        steps: int = 10,
        step_size: float | None = None,
        norm: str = "linf",
    ) -> None:
        super().__init__(eps=eps, steps=steps, step_size=step_size, norm=norm)
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha: expected a weight in [0, 1], got {alpha!r}")
        self.alpha = float(alpha)
        self.weight = checks.non_negative("weight", weight)

    def loss(self, model, x, y, *, eps, generator, bounds=(0.0, 1.0), step=0):  # type: ignore[no-untyped-def]
        x_adv = self.adversarial_batch(model, x, y, eps, generator, bounds)
        clean = model(x)
        adv = model(x_adv)
        pairing = (clean - adv).pow(2).sum(dim=1).mean()
        loss = (
            self.alpha * F.cross_entropy(clean, y)
            + (1 - self.alpha) * F.cross_entropy(adv, y)
            + self.weight * pairing
        )
        return Step(loss, adv)

    def params(self) -> dict[str, Any]:
        return {**super().params(), "alpha": self.alpha, "weight": self.weight}


class EnsembleAT(Objective):
    """Ensemble adversarial training (Tramèr et al., ICLR 2018, arXiv:1705.07204):
    ½·CE(f(x), y) + ½·CE(f(x'), y), x' = FGSM (ε·sign ∇ₓCE) computed on the model being
    trained or on one of the ``static`` pre-trained models, in turn (step s uses source
    s mod (k+1); 0 is the current model), so that the adversarial examples are decoupled from
    the parameters being trained. The static models are frozen and never updated."""

    name: ClassVar[str] = "ensemble"

    def __init__(
        self, *, eps: float, static: Sequence[nn.Module], alpha: float = 0.5, norm: str = "linf"
    ) -> None:
        super().__init__(eps=eps, norm=norm)
        models = list(static)
        if not models:
            raise ValueError("static: ensemble adversarial training needs at least one model")
        for i, m in enumerate(models):
            if not isinstance(m, nn.Module):
                raise TypeError(f"static[{i}]: expected an nn.Module, got {type(m).__name__}")
            m.eval()
            for p in m.parameters():
                p.requires_grad_(False)
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha: expected a weight in [0, 1], got {alpha!r}")
        self.static = models
        self.alpha = float(alpha)

    def source(self, model: nn.Module, step: int) -> nn.Module:
        """The model whose gradient crafts step ``step``'s adversarial batch."""
        k = step % (len(self.static) + 1)
        return model if k == 0 else self.static[k - 1]

    def loss(self, model, x, y, *, eps, generator, bounds=(0.0, 1.0), step=0):  # type: ignore[no-untyped-def]
        source = self.source(model, step)
        return _fgsm_mixture(model, source, x, y, self.threat(eps, bounds), self.alpha)

    def params(self) -> dict[str, Any]:
        return {**super().params(), "alpha": self.alpha, "static": len(self.static)}


class GradientPenalty(Objective):
    """Input-gradient regularization (Ross & Doshi-Velez, AAAI 2018, arXiv:1711.09404; Drucker
    & LeCun 1992): CE(f(x), y) + λ·(1/B) Σ_i ‖∇_{x_i} CE(f(x_i), y_i)‖₂², by double backprop
    (the gradient is built with ``create_graph=True`` and differentiated again)."""

    name: ClassVar[str] = "gradient_penalty"
    adversarial: ClassVar[bool] = False

    def __init__(self, *, weight: float = 1.0) -> None:
        super().__init__()
        self.weight = checks.positive("weight", weight)

    def loss(self, model, x, y, *, eps, generator, bounds=(0.0, 1.0), step=0):  # type: ignore[no-untyped-def]
        x = x.detach().requires_grad_(True)
        logits = model(x)
        per_sample = F.cross_entropy(logits, y, reduction="none")
        (grad,) = torch.autograd.grad(per_sample.sum(), x, create_graph=True)
        penalty = grad.flatten(1).pow(2).sum(dim=1).mean()
        return Step(per_sample.mean() + self.weight * penalty, logits)

    def params(self) -> dict[str, Any]:
        return {**super().params(), "weight": self.weight}


class Distillation(Objective):
    """Defensive distillation (Papernot et al., IEEE S&P 2016, arXiv:1511.04508): the student
    f matches the teacher g's soft labels at temperature T,

        −(1/B) Σ_i Σ_k softmax(g(x_i)/T)_k · log softmax(f(x_i)/T)_k,

    and is deployed at T = 1 (its raw logits). The teacher should itself have been trained at
    temperature T (``Standard(temperature=T)``). Carlini & Wagner (2017) broke it: evaluate it
    with the margin loss (C&W, APGD-DLR), which the logits' scale does not mask."""

    name: ClassVar[str] = "distillation"
    adversarial: ClassVar[bool] = False

    def __init__(self, *, teacher: nn.Module, temperature: float = 100.0) -> None:
        super().__init__()
        if not isinstance(teacher, nn.Module):
            raise TypeError(f"teacher: expected an nn.Module, got {type(teacher).__name__}")
        self.teacher = teacher.eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        self.temperature = checks.positive("temperature", temperature)

    def loss(self, model, x, y, *, eps, generator, bounds=(0.0, 1.0), step=0):  # type: ignore[no-untyped-def]
        t = self.temperature
        with torch.no_grad():
            soft = F.softmax(self.teacher(x) / t, dim=1)
        logits = model(x)
        loss = -(soft * F.log_softmax(logits / t, dim=1)).sum(dim=1).mean()
        return Step(loss, logits)

    def params(self) -> dict[str, Any]:
        return {**super().params(), "temperature": self.temperature}


#: Objective names (for the command line) → classes.
OBJECTIVES: dict[str, type[Objective]] = {
    cls.name: cls
    for cls in (
        Standard,
        FGSMMix,
        FastFGSM,
        PGDAT,
        TRADES,
        ALP,
        EnsembleAT,
        GradientPenalty,
        Distillation,
    )
}
