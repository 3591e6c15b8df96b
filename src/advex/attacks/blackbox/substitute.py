"""Substitute-model transfer attack: train a local copy from the oracle's labels, attack it.

The attacker sees top-1 labels Õ(x) only. It trains a substitute F on a small synthetic set
labelled by the oracle, crafts adversarial points on F with any white-box attack, and relies
on their transferability: what fools F often fools the oracle.

Substitute training (Algorithm 1 of Papernot et al. 2017), S_0 the initial collection:

    for ρ = 0, 1, …, rho:   D_ρ = {(x, Õ(x)) : x ∈ S_ρ},   θ_F ← train(F, D_ρ),
                            S_{ρ+1} = S_ρ ∪ {clip(x + λ_ρ · sign(J_F[Õ(x)](x))) : x ∈ R_ρ}

with J_F[c](x) = ∇ₓ log F_c(x), the gradient of the substitute's softmax output of the label
the oracle gave x (same sign as ∇ₓ F_c: F_c > 0), clip the box. Two refinements of Papernot,
McDaniel, Goodfellow (2016) bound the work:

* periodic step size λ_ρ = λ·(−1)^⌊ρ/τ⌋: rounds alternate, τ at a time, between moving away
  from the decision boundary of the oracle's label (+λ) and toward it (−λ);
* reservoir sampling: rounds ρ < σ augment every point (R_ρ = S_ρ); from round σ on, R_ρ is
  κ points of S_ρ drawn uniformly without replacement by reservoir sampling (Algorithm R).
  So |S_ρ| = n·2^ρ for ρ ≤ σ and n·2^σ + κ·(ρ − σ) after (κ ≤ n·2^σ), n = |S_0|.

Every point of S_rho is labelled once, seeds included, each round in one batched oracle call:
training spends exactly |S_rho| queries (``training_set_sizes``) — 2,000 for the defaults
(n = 100, ρ = 6, σ = 3, κ = 400), 6,400 without reservoir sampling.

The attack then runs a white-box attack (default FGSM at the threat's ε; the paper uses
ε = 0.3 L∞ on MNIST) on F for the attacked inputs and asks the oracle once about each result.

Papernot, McDaniel, Goodfellow, Jha, Celik, Swami. Practical Black-Box Attacks against Machine
Learning. AsiaCCS 2017. arXiv:1602.02697
Papernot, McDaniel, Goodfellow. Transferability in Machine Learning: from Phenomena to
Black-Box Attacks using Adversarial Samples. 2016. arXiv:1605.07277 (periodic step size,
reservoir sampling)

Choices and differences from the papers:

* ``rho`` counts augmentation rounds: F is fitted rho + 1 times, on S_0, …, S_rho, so the
  final substitute has seen every labelled point (Algorithm 1 stops after augmenting the set
  it last trained on; the paper's 6,400 labels for ρ = 6 and 100 seeds are |S_6|);
* F is warm-started: one model and one Adam optimizer (lr 1e-3, ``epochs`` passes of
  mini-batches of ``train_batch_size`` per round) go on training from round to round;
* the default substitute is a 2-hidden-layer ReLU MLP of width 200 (``substitute_mlp``, as in
  CleverHans's tutorial of this attack): cheap on a CPU. The papers compare several
  architectures; a small CNN (``architecture=lambda: substitute_cnn(shape, k)``) agrees more
  with a CNN oracle and transfers better, at several times the training cost;
* randomness: batch order and reservoir draws come from a ``torch.Generator`` seeded with
  ``seed``; the architecture's initialization (and dropout, if any) from the global generator
  inside ``torch.random.fork_rng`` seeded with ``seed``, so the caller's global RNG state is
  left unchanged;
* the initial collection: the paper hand-picks a few inputs per class from a hold-out set.
  Pass them as ``seed_data``; without it the attack uses the first ``per_class`` attacked
  inputs of each class (by the given labels y) — test inputs then help train the substitute;
* the substitute is trained once per call of the attack (before the batches), not per batch;
  its queries are not per-sample queries: they are reported as ``training_queries`` in
  ``AttackResult.params`` and on the attack (``last_training_queries``). Per sample the
  attack spends the clean pass and one query of the transferred point (``max_queries`` = 2);
* samples the substitute already misclassifies (or, targeted, already puts in the target
  class) count as broken for the white-box attack, which returns them unchanged (advex's
  convention). The oracle would then be asked about the clean input; they get the paper's
  crafting instead, one FGSM step on the substitute (x + Π(ε·s_p(∇ₓ CE)), whatever ``attack``
  is). On mnist_cnn with the defaults this lifts transfer success from 0.29 to 0.37.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advex.attacks import checks, losses
from advex.attacks.base import Attack, Tracker
from advex.attacks.blackbox.base import BlackBoxAttack
from advex.attacks.fgsm import FGSM, l0_step
from advex.model import Classifier, check_inputs
from advex.norms import ascent, project
from advex.oracle import Access, Oracle, as_oracle
from advex.result import AttackResult, succeeded
from advex.threat import ThreatModel

__all__ = [
    "Substitute",
    "SubstituteFit",
    "first_per_class",
    "fit_substitute",
    "periodic_step",
    "reservoir_sample",
    "substitute_cnn",
    "substitute_mlp",
    "train_substitute",
    "training_set_sizes",
]

#: Width of the default substitute's two hidden layers.
_HIDDEN = 200


# ----- the schedule ------------------------------------------------------------------------
def periodic_step(rho: int, lam: float, tau: int | None) -> float:
    """λ_ρ = λ·(−1)^⌊ρ/τ⌋, the augmentation step of round ``rho`` (λ for every round if
    ``tau`` is None)."""
    if tau is None:
        return lam
    return -lam if (rho // tau) % 2 else lam


def training_set_sizes(n: int, rho: int, sigma: int | None, kappa: int) -> list[int]:
    """|S_0|, …, |S_rho|: round ρ adds |S_ρ| points while ρ < σ (or always, ``sigma=None``),
    then min(κ, |S_ρ|). The last entry is the number of oracle queries training spends."""
    sizes = [n]
    for r in range(rho):
        size = sizes[-1]
        sizes.append(size + (size if sigma is None or r < sigma else min(kappa, size)))
    return sizes


def reservoir_sample(n: int, k: int, generator: torch.Generator) -> Tensor:
    """Indices of k of the n items 0, …, n − 1, uniform without replacement (Algorithm R).

    Slot s starts with item s; item i ≥ k draws r uniform in {0, …, i} and replaces slot r if
    r < k. The draws are made at once; a slot ends with the last item that drew it. Returns
    a (min(k, n),) long tensor on the CPU, in slot order.
    """
    if k >= n:
        return torch.arange(n)
    items = torch.arange(k, n)
    u = torch.rand(n - k, generator=generator, dtype=torch.float64)
    r = torch.minimum((u * (items + 1).double()).floor().long(), items)
    hit = r < k
    return torch.arange(k).scatter_reduce(0, r[hit], items[hit], reduce="amax")


# ----- the substitute ----------------------------------------------------------------------
def substitute_mlp(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """The default substitute: flatten → 200 → ReLU → 200 → ReLU → ``num_classes`` logits."""
    d = math.prod(input_shape)
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(d, _HIDDEN),
        nn.ReLU(),
        nn.Linear(_HIDDEN, _HIDDEN),
        nn.ReLU(),
        nn.Linear(_HIDDEN, num_classes),
    )


def substitute_cnn(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """A small CNN substitute for (C, H, W) images, H, W ≥ 4: conv 3×3 C→16 → ReLU → max-pool 2
    → conv 3×3 16→32 → ReLU → max-pool 2 → 100 → ReLU → ``num_classes`` logits (the layout of
    the zoo's ``mnist_cnn``). Transfers better than the MLP, at several times its cost."""
    if len(input_shape) != 3 or min(input_shape[1:]) < 4:
        raise ValueError(f"input_shape: expected (C, H, W) with H, W >= 4, got {input_shape!r}")
    c, h, w = input_shape
    return nn.Sequential(
        nn.Conv2d(c, 16, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * (h // 4) * (w // 4), 100),
        nn.ReLU(),
        nn.Linear(100, num_classes),
    )


@dataclass(eq=False)
class SubstituteFit:
    """A trained substitute and what training it cost.

    Attributes:
        model: the substitute F (eval mode), logits out.
        queries: oracle queries spent (points labelled), = sizes[-1].
        sizes: |S_0|, …, |S_rho|, the training set of each round.
        agreement: per round, the fraction of S_ρ on which F (after that round's fit) gives
            the oracle's label.
        num_classes: F's number of outputs.
    """

    model: nn.Module
    queries: int
    sizes: list[int] = field(default_factory=list)
    agreement: list[float] = field(default_factory=list)
    num_classes: int = 0


def _check_schedule(
    rho: Any,
    lam: Any,
    tau: Any,
    sigma: Any,
    kappa: Any,
    epochs: Any,
    train_batch_size: Any,
    lr: Any,
) -> None:
    if isinstance(rho, bool) or not isinstance(rho, int) or rho < 0:
        raise ValueError(f"rho: expected an integer >= 0, got {rho!r}")
    checks.positive("lam", lam)
    if tau is not None:
        checks.positive_int("tau", tau)
    if sigma is not None and (isinstance(sigma, bool) or not isinstance(sigma, int) or sigma < 0):
        raise ValueError(f"sigma: expected None or an integer >= 0, got {sigma!r}")
    checks.positive_int("kappa", kappa)
    checks.positive_int("epochs", epochs)
    checks.positive_int("train_batch_size", train_batch_size)
    checks.positive("lr", lr)


def _check_seed_data(seed_data: Any, bounds: tuple[float, float]) -> Tensor:
    if not isinstance(seed_data, Tensor):
        raise ValueError(f"seed_data: expected a torch.Tensor, got {type(seed_data).__name__}")
    dummy = torch.zeros(seed_data.shape[0] if seed_data.ndim else 0, dtype=torch.long)
    try:
        check_inputs(seed_data, dummy, bounds=bounds, name_x="seed_data")
    except TypeError as err:
        raise ValueError(str(err)) from None
    return seed_data.detach()


@contextlib.contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    """The global RNG seeded with ``seed`` inside, restored on exit (every CUDA device's too:
    ``manual_seed`` seeds them all)."""
    devices = list(range(torch.cuda.device_count())) if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def _fit_round(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    s: Tensor,
    labels: Tensor,
    epochs: int,
    batch_size: int,
    generator: torch.Generator,
) -> None:
    """``epochs`` passes of shuffled mini-batches of cross-entropy on (s, labels)."""
    model.train()
    n = s.shape[0]
    with torch.enable_grad():
        for _ in range(epochs):
            order = torch.randperm(n, generator=generator).to(s.device)
            for i in range(0, n, batch_size):
                idx = order[i : i + batch_size]
                loss = F.cross_entropy(model(s[idx]), labels[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
    model.eval()


def _jacobian_step(
    model: nn.Module, points: Tensor, labels: Tensor, step: float, bounds: tuple[float, float]
) -> Tensor:
    """clip(x + step · sign(∇ₓ log F_{label}(x))) for each point (F in eval mode)."""
    with torch.enable_grad():
        p = points.detach().clone().requires_grad_(True)
        log_p = F.log_softmax(model(p), dim=1).gather(1, labels[:, None]).sum()
        (grad,) = torch.autograd.grad(log_p, p)
    return (points + step * grad.sign()).clamp(*bounds).detach()


def _agreement(model: nn.Module, s: Tensor, labels: Tensor) -> float:
    with torch.no_grad():
        pred = torch.cat([model(s[i : i + 1024]).argmax(dim=1) for i in range(0, len(s), 1024)])
    return float((pred == labels).float().mean())


def fit_substitute(
    oracle: Any,
    seed_data: Tensor,
    *,
    architecture: Callable[[], nn.Module] | None = None,
    num_classes: int | None = None,
    rho: int = 6,
    lam: float = 0.1,
    tau: int | None = 3,
    sigma: int | None = 3,
    kappa: int = 400,
    epochs: int = 10,
    train_batch_size: int = 128,
    lr: float = 1e-3,
    seed: int = 0,
    bounds: tuple[float, float] | None = None,
) -> SubstituteFit:
    """Train a substitute of ``oracle`` from its labels (see the module docstring).

    Args:
        oracle: an ``advex.oracle.Oracle`` or anything ``as_oracle`` wraps; only its top-1
            labels are used.
        seed_data: the initial collection S_0, (n, ...) inputs in the box (no labels needed:
            the oracle labels them).
        architecture: builds a fresh substitute (logits out); default ``substitute_mlp``.
        num_classes: at least this many outputs for the default architecture; it gets the
            largest of this, ``oracle.num_classes`` and the largest label seen + 1.
        rho: augmentation rounds (substitute epochs), ≥ 0.
        lam: the augmentation step λ > 0.
        tau: the period of the step's sign; None for a constant +λ.
        sigma: the first round that augments only κ points (reservoir sampling); None: never.
        kappa: points augmented per round from round σ on.
        epochs, train_batch_size, lr: Adam training of each round.
        seed: seeds the batch order, the reservoir draws and the initialization.
        bounds: the input box; default the oracle's (an Oracle) or (0, 1).

    Raises:
        ValueError: a bad setting (named), or a substitute with too few outputs for a label
            the oracle gave.
    """
    _check_schedule(rho, lam, tau, sigma, kappa, epochs, train_batch_size, lr)
    if num_classes is not None:
        checks.positive_int("num_classes", num_classes)
    if architecture is not None and not callable(architecture):
        raise ValueError(
            f"architecture: expected a callable returning an nn.Module, got "
            f"{type(architecture).__name__}"
        )
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed: expected an integer, got {seed!r}")
    if bounds is None:
        bounds = oracle.bounds if isinstance(oracle, Oracle) else (0.0, 1.0)
    label_oracle = as_oracle(oracle, "label", bounds=bounds)
    bounds = label_oracle.bounds
    s = _check_seed_data(seed_data, bounds).to(label_oracle.device)
    generator = torch.Generator().manual_seed(seed)
    with label_oracle.attacking(), _seeded(seed, s.device):
        labels = label_oracle.labels(s)
        k = max(num_classes or 0, label_oracle.num_classes or 0, int(labels.max()) + 1)
        model = _build(architecture, tuple(s.shape[1:]), k).to(s.device)
        outputs = _outputs(model, s[:1])
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        sizes, agreement = [], []
        for r in range(rho + 1):
            _check_labels(labels, outputs)
            _fit_round(model, opt, s, labels, epochs, train_batch_size, generator)
            sizes.append(int(s.shape[0]))
            agreement.append(_agreement(model, s, labels))
            if r == rho:
                break
            if sigma is None or r < sigma:
                pick = torch.arange(s.shape[0], device=s.device)
            else:
                pick = reservoir_sample(s.shape[0], kappa, generator).to(s.device)
            step = periodic_step(r, lam, tau)
            new = _jacobian_step(model, s[pick], labels[pick], step, bounds)
            labels = torch.cat([labels, label_oracle.labels(new)])
            s = torch.cat([s, new])
    return SubstituteFit(model, int(s.shape[0]), sizes, agreement, outputs)


def train_substitute(oracle: Any, seed_data: Tensor, **options: Any) -> nn.Module:
    """The substitute F of ``oracle`` trained from ``seed_data`` (eval mode, logits out).

    Takes the keyword options of ``fit_substitute``, which also reports the queries spent.
    """
    return fit_substitute(oracle, seed_data, **options).model


def _build(
    architecture: Callable[[], nn.Module] | None, input_shape: tuple[int, ...], k: int
) -> nn.Module:
    model = substitute_mlp(input_shape, k) if architecture is None else architecture()
    if not isinstance(model, nn.Module):
        raise ValueError(
            f"architecture: expected a callable returning an nn.Module, got {type(model).__name__}"
        )
    return model


def _outputs(model: nn.Module, x: Tensor) -> int:
    model.eval()
    with torch.no_grad():
        z = model(x)
    if not isinstance(z, Tensor) or z.ndim != 2 or z.shape[0] != x.shape[0]:
        shape = tuple(z.shape) if isinstance(z, Tensor) else type(z).__name__
        raise ValueError(f"architecture: expected a model giving logits (B, K), got {shape}")
    return int(z.shape[1])


def _check_labels(labels: Tensor, outputs: int) -> None:
    top = int(labels.max())
    if top >= outputs:
        raise ValueError(
            f"architecture: the substitute gives {outputs} logits but the oracle answered "
            f"label {top}"
        )


# ----- the attack --------------------------------------------------------------------------
def _fgsm_point(
    model: Classifier, x: Tensor, y: Tensor, target: Tensor | None, threat: ThreatModel
) -> Tensor:
    """x + Π_D(ε · s_p(∇ₓ L(F(x)))) — the paper's FGSM crafting on the substitute, with L the
    cross-entropy of y (untargeted, ascended) or of the target (descended); L0: ``FGSM``'s
    step."""
    with torch.enable_grad(), model.attacking():
        point = x.detach().clone().requires_grad_(True)
        loss = losses.ce(model(point), y, target if threat.targeted else None)
        (grad,) = torch.autograd.grad(loss.sum(), point)
    if threat.norm == "l0":
        delta = l0_step(grad, x, int(threat.budget()), threat.bounds)
    else:
        direction = ascent(grad, threat.norm, x_adv=x, bounds=threat.bounds)
        delta = project(threat.budget() * direction, x, threat)
    return (x + delta).clamp(*threat.bounds).detach()


def first_per_class(x: Tensor, y: Tensor, per_class: int) -> Tensor:
    """The first ``per_class`` inputs of each class of ``y``, in their order in ``x``."""
    keep = torch.zeros_like(y, dtype=torch.bool)
    for c in torch.unique(y):
        keep[torch.nonzero(y == c).squeeze(1)[:per_class]] = True
    return x[keep]


class Substitute(BlackBoxAttack):
    """Papernot et al.'s black-box attack: train a substitute from labels, transfer an attack.

    Args:
        threat: the threat model (the white-box attack's).
        attack: the white-box advex attack run on the substitute, with the same threat model;
            default ``FGSM(threat)``.
        seed_data: the initial collection S_0, (n, ...) in the box; None: the first
            ``per_class`` attacked inputs of each class of y (see the module docstring).
        per_class: inputs per class taken from x when ``seed_data`` is None.
        architecture: builds a fresh substitute; default ``substitute_mlp`` for the input shape.
        rho, lam, tau, sigma, kappa, epochs, train_batch_size, lr: substitute training (see
            ``fit_substitute``); the defaults are the papers' (ρ = 6, λ = 0.1, τ = 3, σ = 3,
            κ = 400).
        seed: seeds training (``fit_substitute``) and the batches' generators.
        batch_size: see ``advex.attacks.base.Attack``.

    After a call, ``last_substitute`` holds the trained substitute and ``last_training_queries``
    the oracle queries its training spent (also ``result.params["training_queries"]``).
    """

    name: ClassVar[str] = "substitute"
    per_batch: ClassVar[bool] = False  # the substitute is trained on the whole input
    norms: ClassVar[tuple[str, ...]] = ("linf", "l2", "l1", "l0")
    access: ClassVar[Access] = "label"

    def __init__(
        self,
        threat: ThreatModel,
        *,
        attack: Attack | None = None,
        seed_data: Tensor | None = None,
        per_class: int = 10,
        architecture: Callable[[], nn.Module] | None = None,
        rho: int = 6,
        lam: float = 0.1,
        tau: int | None = 3,
        sigma: int | None = 3,
        kappa: int = 400,
        epochs: int = 10,
        train_batch_size: int = 128,
        lr: float = 1e-3,
        seed: int = 0,
        batch_size: int | None = None,
    ) -> None:
        super().__init__(threat, max_queries=2, seed=seed, batch_size=batch_size)
        _check_schedule(rho, lam, tau, sigma, kappa, epochs, train_batch_size, lr)
        if attack is None:
            attack = FGSM(threat)
        elif not isinstance(attack, Attack):
            raise ValueError(f"attack: expected an advex Attack, got {type(attack).__name__}")
        elif attack.threat != threat:
            raise ValueError(
                f"attack: its threat model ({attack.threat.describe()}) must be this attack's "
                f"({threat.describe()})"
            )
        if architecture is not None and not callable(architecture):
            raise ValueError(
                f"architecture: expected a callable returning an nn.Module, got "
                f"{type(architecture).__name__}"
            )
        self.attack = attack
        self.seed_data = None if seed_data is None else _check_seed_data(seed_data, threat.bounds)
        self.per_class = checks.positive_int("per_class", per_class)
        self.architecture = architecture
        self.rho, self.lam, self.tau, self.sigma, self.kappa = rho, float(lam), tau, sigma, kappa
        self.epochs, self.train_batch_size, self.lr = epochs, train_batch_size, float(lr)
        self.last_training_queries: int | None = None
        self.last_substitute: nn.Module | None = None
        self._substitute: Classifier | None = None

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
        """Train the substitute on the oracle (once), then attack x batch by batch.

        The result's ``seconds`` include the substitute's training."""
        start = time.perf_counter()
        oracle = self._wrap(model)
        x, y, target = self._checked(oracle, x, y, target)
        seed_data = self.seed_data
        if seed_data is None:
            seed_data = first_per_class(x, y, self.per_class)
        floor = int(y.max()) + 1 if target is None else max(int(y.max()), int(target.max())) + 1
        fit = fit_substitute(
            oracle,
            seed_data,
            architecture=self.architecture,
            num_classes=floor,
            rho=self.rho,
            lam=self.lam,
            tau=self.tau,
            sigma=self.sigma,
            kappa=self.kappa,
            epochs=self.epochs,
            train_batch_size=self.train_batch_size,
            lr=self.lr,
            seed=self.seed,
            bounds=self.threat.bounds,
        )
        self.last_training_queries = fit.queries
        self.last_substitute = fit.model
        self._substitute = Classifier(
            fit.model, num_classes=fit.num_classes, bounds=self.threat.bounds
        )
        try:
            result = super().__call__(
                oracle, x, y, target, active=active, batch_offset=batch_offset
            )
        finally:
            self._substitute = None
        return dataclasses.replace(result, seconds=time.perf_counter() - start)

    def _run(self, run: Tracker) -> None:
        if self._substitute is None:  # pragma: no cover - __call__ sets it
            raise RuntimeError("internal error: no substitute trained")
        for _ in run.steps(1):
            crafted = self.attack(self._substitute, run.x, run.y, run.target)
            x_adv = crafted.x_adv.to(run.x.device)
            # the substitute's own clean errors: the white-box attack returns x unchanged
            wrong = succeeded(
                crafted.clean_pred, crafted.y, crafted.target, self.threat.targeted
            ).to(x_adv.device)
            if bool(wrong.any()):
                target = None if run.target is None else run.target[wrong]
                step = _fgsm_point(
                    self._substitute, run.x[wrong], run.y[wrong], target, self.threat
                )
                x_adv[wrong] = step
            with torch.no_grad():
                run.forward(x_adv)

    def params(self) -> dict[str, Any]:
        out = super().params()
        out.pop("last_training_queries", None)
        out["training_queries"] = self.last_training_queries
        out["substitute_attack"] = self.attack.name
        arch = self.architecture
        out["architecture"] = "mlp" if arch is None else getattr(arch, "__name__", repr(arch))
        out["seed_data"] = None if self.seed_data is None else int(self.seed_data.shape[0])
        return out
