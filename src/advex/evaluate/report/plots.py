"""The report's figures, drawn with matplotlib's Agg renderer and returned as PNG bytes.

No pyplot: each figure is a ``matplotlib.figure.Figure`` rendered by ``FigureCanvasAgg``, so
drawing needs no display, touches no global state and works beside any user backend.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import Tensor

__all__ = ["Curve", "Example", "accuracy_plot", "examples_figure"]

_LINESTYLES = ("-", "--", ":", "-.")
_MARKERS = ("o", "s", "^", "D", "v", "P")


@dataclass(frozen=True)
class Curve:
    """One line of an accuracy plot: robust accuracy at each ε, starting from clean accuracy."""

    model: str
    attack: str
    eps: Sequence[float]
    robust_accuracy: Sequence[float]
    clean_accuracy: float
    markers: bool = True  # False for dense curves (derived from minimum-norm distances)


@dataclass(frozen=True)
class Example:
    """One sample for the example grid: clean and adversarial input (C, H, W) and labels."""

    x: Tensor
    x_adv: Tensor
    y: int
    clean_pred: int
    pred: int


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()


def accuracy_plot(curves: Sequence[Curve], norm: str) -> bytes:
    """Robust accuracy against ε for one norm: colour per model, line style per attack."""
    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.add_subplot()
    models = list(dict.fromkeys(c.model for c in curves))
    attacks = list(dict.fromkeys(c.attack for c in curves))
    colors = [f"C{i % 10}" for i in range(len(models))]
    for c in curves:
        i, j = models.index(c.model), attacks.index(c.attack)
        order = np.argsort(np.asarray(c.eps, dtype=float))
        eps = [0.0, *np.asarray(c.eps, dtype=float)[order]]
        acc = [c.clean_accuracy, *np.asarray(c.robust_accuracy, dtype=float)[order]]
        ax.plot(
            eps,
            acc,
            color=colors[i],
            linestyle=_LINESTYLES[j % len(_LINESTYLES)],
            marker=_MARKERS[j % len(_MARKERS)] if c.markers else None,
            markersize=4,
            label=f"{c.model} · {c.attack}",
        )
    symbol = {"linf": "∞", "l2": "2", "l1": "1", "l0": "0"}.get(norm, norm)
    ax.set_xlabel(f"ε (L{symbol})")
    ax.set_ylabel("robust accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlim(left=0)
    ax.grid(True, alpha=0.3)
    ax.set_title(f"Robust accuracy against L{symbol} budget")
    ax.legend(fontsize=8, loc="best")
    return _png(fig)


def _image(t: Tensor) -> np.ndarray:
    """(C, H, W) tensor → (H, W) or (H, W, C) array for imshow."""
    a = t.detach().cpu().float().numpy()
    if a.ndim == 3 and a.shape[0] == 1:
        return a[0]
    if a.ndim == 3:
        return np.transpose(a, (1, 2, 0))
    return a


def examples_figure(
    examples: Sequence[Example],
    *,
    bounds: tuple[float, float] = (0.0, 1.0),
    class_names: Sequence[str] | None = None,
) -> bytes:
    """Columns of samples; rows: clean input, perturbation (scaled per image), adversarial input.

    The perturbation δ = x_adv − x is shown as 0.5 + δ/(2·max|δ|): mid-gray is no change, the
    extremes are ±max|δ| of that image.
    """
    if not examples:
        raise ValueError("examples: expected at least one example")
    lo, hi = bounds
    n = len(examples)
    fig = Figure(figsize=(1.45 * n + 0.6, 4.9))
    axes = fig.subplots(3, n, squeeze=False)

    def name(k: int) -> str:
        return class_names[k] if class_names is not None and k < len(class_names) else str(k)

    for j, ex in enumerate(examples):
        clean = (_image(ex.x) - lo) / (hi - lo)
        adv = (_image(ex.x_adv) - lo) / (hi - lo)
        delta = _image(ex.x_adv) - _image(ex.x)
        scale = float(np.abs(delta).max())
        shown = 0.5 + delta / (2 * scale) if scale > 0 else np.full_like(delta, 0.5)
        cmap = "gray" if clean.ndim == 2 else None
        for i, img in enumerate((clean, shown, adv)):
            ax = axes[i][j]
            ax.imshow(np.clip(img, 0, 1), cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[0][j].set_title(
            f"pred {name(ex.clean_pred)}\ntrue {name(ex.y)}",
            fontsize=9,
            color="black" if ex.clean_pred == ex.y else "tab:red",
        )
        axes[1][j].set_title(f"max|δ| {scale:.3g}", fontsize=8)
        axes[2][j].set_title(
            f"pred {name(ex.pred)}",
            fontsize=9,
            color="black" if ex.pred == ex.y else "tab:red",
        )
    axes[0][0].set_ylabel("clean")
    axes[1][0].set_ylabel("perturbation\n(scaled)")
    axes[2][0].set_ylabel("adversarial")
    return _png(fig)
