"""Black-box access to a classifier: what an attacker may see, enforced and counted.

An ``Oracle`` answers queries at one access level:

* ``"scores"`` — the output vector (logits or probabilities) for each input, never gradients;
* ``"label"`` — the top-1 label only; asking it for scores raises ``AccessError``.

Outputs are computed without autograd and returned detached, so no gradient can flow back to
the inputs. Every input point is counted (``queries``; ``calls`` counts the calls), and an
optional total ``budget`` is enforced (``QueryBudgetError``). A higher level can always be
restricted to a lower one (``restrict``); never the reverse.

What can be wrapped (``as_oracle``):

* an ``nn.Module`` or ``advex.Classifier`` (logits out, run in eval mode);
* a plain callable, numpy in (float32, shape (B, ...)) and numpy out: (B, K) scores, or (B,)
  integer labels — a label-only model gives a ``"label"`` oracle;
* an ONNX Runtime ``InferenceSession`` (first input, first output), so models from other
  frameworks can be attacked;
* another ``Oracle`` (restricted to the level asked for).

Per-sample query counts and per-sample budgets are kept by the attack's tracker
(``advex.attacks.blackbox.base.QueryTracker``); the oracle keeps the totals.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

__all__ = [
    "ACCESS_LEVELS",
    "Access",
    "AccessError",
    "Oracle",
    "QueryBudgetError",
    "as_oracle",
]

Access = Literal["scores", "label"]
#: Access levels from the least to the most an attacker sees.
ACCESS_LEVELS: tuple[Access, ...] = ("label", "scores")


class AccessError(PermissionError):
    """An attacker asked an oracle for more than its access level gives."""


class QueryBudgetError(RuntimeError):
    """A query would exceed the query budget."""


class _Counter:
    """Totals shared by an oracle and its restrictions."""

    __slots__ = ("budget", "calls", "queries")

    def __init__(self, budget: int | None) -> None:
        self.queries = 0
        self.calls = 0
        self.budget = budget


def _check_level(access: object) -> Access:
    if access not in ACCESS_LEVELS:
        raise ValueError(f"access: expected one of {', '.join(ACCESS_LEVELS)}, got {access!r}")
    return access


class Oracle:
    """Query access to a classifier at one level (``"scores"`` or ``"label"``).

    Args:
        fn: maps a float tensor batch (B, ...) to scores (B, K) or labels (B,); called without
            autograd. Build oracles with ``as_oracle`` rather than by hand.
        access: the level this oracle gives.
        gives: what ``fn`` returns: "scores", "labels", or None to find out on the first call.
        num_classes: K, when known (learned from the first scores otherwise).
        bounds: the valid input range; inputs outside it are refused.
        batch_size: largest batch passed to ``fn`` at once.
        budget: total number of points this oracle (and its restrictions) will answer; None for
            no limit.
        context: a context manager factory entered for a whole attack (eval mode of a module).
        device: where attacks should keep their tensors (a wrapped module's device).
    """

    __slots__ = (
        "_context",
        "_counter",
        "_fn",
        "_gives",
        "access",
        "batch_size",
        "bounds",
        "device",
        "num_classes",
    )

    def __init__(
        self,
        fn: Callable[[Tensor], Tensor],
        *,
        access: Access = "scores",
        gives: Literal["scores", "labels"] | None = None,
        num_classes: int | None = None,
        bounds: tuple[float, float] = (0.0, 1.0),
        batch_size: int = 1024,
        budget: int | None = None,
        context: Callable[[], contextlib.AbstractContextManager[Any]] | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        if not callable(fn):
            raise TypeError(f"fn: expected a callable, got {type(fn).__name__}")
        self.access = _check_level(access)
        if gives not in (None, "scores", "labels"):
            raise ValueError(f"gives: expected 'scores', 'labels' or None, got {gives!r}")
        if gives == "labels" and self.access == "scores":
            raise AccessError("access='scores' asked of a model that returns labels only")
        if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int)):
            raise ValueError(f"budget: expected a non-negative integer or None, got {budget!r}")
        if budget is not None and budget < 0:
            raise ValueError(f"budget: expected a non-negative integer or None, got {budget!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size: expected a positive integer, got {batch_size!r}")
        self._fn = fn
        self._gives = gives
        self._counter = _Counter(budget)
        self._context = context
        self.num_classes = num_classes
        self.bounds = (float(bounds[0]), float(bounds[1]))
        self.batch_size = batch_size
        self.device = torch.device(device)

    # ----- totals ---------------------------------------------------------------------------
    @property
    def queries(self) -> int:
        """Points answered so far (by this oracle and every restriction of it)."""
        return self._counter.queries

    @property
    def calls(self) -> int:
        """Calls answered so far (a call may hold many points)."""
        return self._counter.calls

    @property
    def budget(self) -> int | None:
        """Total points this oracle will answer (None: no limit)."""
        return self._counter.budget

    @property
    def budget_left(self) -> int | None:
        b = self._counter.budget
        return None if b is None else b - self._counter.queries

    # ----- queries --------------------------------------------------------------------------
    def scores(self, x: Tensor) -> Tensor:
        """Scores (B, K) at ``x`` (B, ...); ``AccessError`` for a label-only oracle."""
        if self.access == "label":
            raise AccessError(
                "this oracle gives top-1 labels only (access='label'); scores are not available"
            )
        out = self._query(x)
        if out.ndim != 2:  # pragma: no cover - _query checks what fn gives
            raise AccessError("the model behind this oracle returns labels only")
        return out

    def labels(self, x: Tensor) -> Tensor:
        """Top-1 labels (B,) at ``x`` (B, ...)."""
        out = self._query(x)
        return out.argmax(dim=1) if out.ndim == 2 else out

    def __call__(self, x: Tensor) -> Tensor:
        """What this level gives: scores for "scores", labels for "label"."""
        return self.scores(x) if self.access == "scores" else self.labels(x)

    def restrict(self, access: Access) -> Oracle:
        """The same model at ``access`` or lower, sharing this oracle's counts and budget."""
        level = _check_level(access)
        if ACCESS_LEVELS.index(level) > ACCESS_LEVELS.index(self.access):
            raise AccessError(
                f"access={level!r} asked of an oracle that gives {self.access!r} only"
            )
        other = Oracle.__new__(Oracle)
        other._fn = self._fn
        other._gives = self._gives
        other._counter = self._counter
        other._context = self._context
        other.access = level
        other.num_classes = self.num_classes
        other.bounds = self.bounds
        other.batch_size = self.batch_size
        other.device = self.device
        return other

    @contextlib.contextmanager
    def attacking(self) -> Iterator[Oracle]:
        """Held for a whole attack: a wrapped module stays in eval mode with frozen weights."""
        with self._context() if self._context is not None else contextlib.nullcontext():
            yield self

    def _query(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor) or not torch.is_floating_point(x):
            raise TypeError("x: expected a floating-point torch.Tensor")
        if x.ndim < 2 or x.shape[0] == 0:
            raise ValueError(f"x: expected a non-empty batch (B, ...), got {tuple(x.shape)}")
        x = x.detach()
        if not bool(torch.isfinite(x).all()):
            raise ValueError("x: contains NaN or Inf")
        lo, hi = self.bounds
        if float(x.min()) < lo - 1e-6 or float(x.max()) > hi + 1e-6:
            raise ValueError(f"x: the oracle takes inputs in [{lo:g}, {hi:g}]")
        n = int(x.shape[0])
        counter = self._counter
        if counter.budget is not None and counter.queries + n > counter.budget:
            raise QueryBudgetError(
                f"query budget: {n} more points would exceed the budget of {counter.budget} "
                f"({counter.queries} used)"
            )
        point = x.detach()
        with torch.no_grad():
            parts = [self._fn(point[i : i + self.batch_size]) for i in range(0, n, self.batch_size)]
        counter.queries += n
        counter.calls += 1
        out = self._checked(parts, n).to(x.device)
        return out

    def _checked(self, parts: list[Tensor], n: int) -> Tensor:
        out = torch.cat([torch.as_tensor(p).detach() for p in parts])
        if out.shape[0] != n or out.ndim not in (1, 2):
            raise ValueError(
                f"model output: expected scores (B, K) or labels (B,) with B={n}, "
                f"got shape {tuple(out.shape)}"
            )
        gives: Literal["scores", "labels"] = "scores" if out.ndim == 2 else "labels"
        if self._gives is None:
            self._gives = gives
        elif gives != self._gives:
            raise ValueError(f"model output: returned {gives} after returning {self._gives}")
        if gives == "labels":
            if self.access == "scores":
                raise AccessError("the model behind this oracle returns labels only")
            if torch.is_floating_point(out) or out.dtype == torch.bool:
                raise ValueError(f"model output: labels must be integers, got {out.dtype}")
            out = out.long()
            if out.numel() and int(out.min()) < 0:
                raise ValueError("model output: negative label")
            return out
        out = out.float() if not torch.is_floating_point(out) else out
        if not bool(torch.isfinite(out).all()):
            raise ValueError("model output: scores contain NaN or Inf")
        if self.num_classes is None:
            self.num_classes = int(out.shape[1])
        elif out.shape[1] != self.num_classes:
            raise ValueError(
                f"model output: expected {self.num_classes} scores per input, got {out.shape[1]}"
            )
        return out

    def __repr__(self) -> str:
        return f"Oracle(access={self.access!r}, queries={self.queries})"


def _numpy_fn(fn: Callable[[np.ndarray], Any]) -> Callable[[Tensor], Tensor]:
    def call(x: Tensor) -> Tensor:
        out = fn(x.detach().cpu().numpy().astype(np.float32, copy=False))
        if isinstance(out, Tensor):
            return out.detach().cpu()
        return torch.from_numpy(np.ascontiguousarray(np.asarray(out)))

    return call


def _is_onnx_session(model: Any) -> bool:
    return callable(getattr(model, "run", None)) and callable(getattr(model, "get_inputs", None))


def _onnx_fn(session: Any) -> Callable[[Tensor], Tensor]:
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise ValueError(f"ONNX session: expected a model with one input, got {len(inputs)}")
    name = inputs[0].name

    def run(x: np.ndarray) -> Any:
        return session.run(None, {name: x})[0]

    return _numpy_fn(run)


def _module_fn(module: nn.Module, bounds: tuple[float, float]) -> tuple[Any, Any, torch.device]:
    from advex.model import as_classifier

    clf = as_classifier(module, bounds=bounds)
    held = [False]

    def fn(x: Tensor) -> Tensor:
        dev = clf.device
        if held[0]:  # inside attacking(): eval mode and frozen weights already set
            return clf(x.to(dev)).to(x.device)
        return clf.logits(x.to(dev)).to(x.device)

    @contextlib.contextmanager
    def context() -> Iterator[None]:
        with clf.attacking():
            held[0] = True
            try:
                yield
            finally:
                held[0] = False

    return fn, context, clf.device


def as_oracle(
    model: Any,
    access: Access = "scores",
    *,
    bounds: tuple[float, float] = (0.0, 1.0),
    num_classes: int | None = None,
    budget: int | None = None,
    batch_size: int = 1024,
) -> Oracle:
    """An ``Oracle`` at level ``access`` for what the user has (see the module docstring).

    An existing Oracle is restricted to ``access`` (``AccessError`` if it gives less).
    """
    level = _check_level(access)
    if isinstance(model, Oracle):
        return model.restrict(level)
    opts: dict[str, Any] = {
        "access": level,
        "num_classes": num_classes,
        "bounds": bounds,
        "budget": budget,
        "batch_size": batch_size,
    }
    if isinstance(model, nn.Module):
        fn, context, device = _module_fn(model, bounds)
        return Oracle(fn, gives="scores", context=context, device=device, **opts)
    if _is_onnx_session(model):
        return Oracle(_onnx_fn(model), **opts)
    if callable(model):
        return Oracle(_numpy_fn(model), **opts)
    raise TypeError(
        f"model: expected an nn.Module, advex.Classifier, Oracle, ONNX Runtime session or a "
        f"callable (numpy in, numpy out), got {type(model).__name__}"
    )
