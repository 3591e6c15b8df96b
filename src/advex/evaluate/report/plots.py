"""The report's figures, drawn with matplotlib's Agg renderer and returned as PNG bytes.

No pyplot: each figure is a ``matplotlib.figure.Figure`` rendered by ``FigureCanvasAgg``, so
drawing needs no display, touches no global state and works beside any user backend. Text
from the run (model, attack and class names) goes through ``_text`` so that a ``$`` in a name
is drawn as a dollar sign, never parsed as mathtext.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import Tensor

__all__ = [
    "Example",
    "Line",
    "amplification",
    "examples_figure",
    "heatmap",
    "line_plot",
    "norm_symbol",
]

_LINESTYLES = ("-", "--", ":", "-.")
_MARKERS = ("o", "s", "^", "D", "v", "P")


def norm_symbol(norm: str) -> str:
    """'linf' → 'L∞', 'l2' → 'L2'."""
    return "L" + {"linf": "∞", "l2": "2", "l1": "1", "l0": "0"}.get(norm, norm)


def _text(value: object) -> str:
    """User text for matplotlib: ``$`` escaped so it is never read as mathtext."""
    return str(value).replace("$", r"\$")


@dataclass(frozen=True)
class Line:
    """One line of a plot.

    Attributes:
        label: legend entry.
        x, y: the points.
        group: lines of one group share a colour (the model); ``style``: a line style key
            (the attack) — lines with the same key share a line style and marker.
        steps: draw a step function (y holds from x[i] to x[i+1]) instead of joined markers.
        lower, upper: a 95 % interval per point, drawn as error bars (markers) or a band (steps).
        width: line width.
    """

    label: str
    x: Sequence[float]
    y: Sequence[float]
    group: str
    style: str
    steps: bool = False
    lower: Sequence[float] | None = None
    upper: Sequence[float] | None = None
    width: float = 1.3


@dataclass(frozen=True)
class Example:
    """One sample for the example grid: clean and adversarial input (C, H, W), the labels, and
    optionally the model's softmax probability of each shown prediction."""

    x: Tensor
    x_adv: Tensor
    y: int
    clean_pred: int
    pred: int
    clean_conf: float | None = None
    conf: float | None = None


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return buf.getvalue()


def line_plot(
    lines: Sequence[Line],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    xmax: float | None = None,
) -> bytes:
    """Lines on [0, xmax] × [0, 1]: colour per group, line style and marker per style key."""
    if not lines:
        raise ValueError("lines: expected at least one line")
    fig = Figure(figsize=(6.2, 3.8))
    ax = fig.add_subplot()
    groups = list(dict.fromkeys(line.group for line in lines))
    styles = list(dict.fromkeys(line.style for line in lines))
    for line in lines:
        color = f"C{groups.index(line.group) % 10}"
        j = styles.index(line.style)
        x = np.asarray(line.x, dtype=float)
        y = np.asarray(line.y, dtype=float)
        kw: dict[str, Any] = {
            "color": color,
            "linestyle": _LINESTYLES[j % len(_LINESTYLES)],
            "lw": line.width,
        }
        if line.steps:
            ax.step(x, y, where="post", label=_text(line.label), **kw)
            if line.lower is not None and line.upper is not None:
                ax.fill_between(
                    x, line.lower, line.upper, step="post", color=color, alpha=0.15, lw=0
                )
        else:
            yerr = None
            if line.lower is not None and line.upper is not None:
                lo = np.nan_to_num(y - np.asarray(line.lower, dtype=float))
                hi = np.nan_to_num(np.asarray(line.upper, dtype=float) - y)
                yerr = np.stack([np.maximum(lo, 0), np.maximum(hi, 0)])
            ax.errorbar(
                x,
                y,
                yerr=yerr,
                marker=_MARKERS[j % len(_MARKERS)],
                markersize=4,
                capsize=2.5,
                elinewidth=0.8,
                label=_text(line.label),
                **kw,
            )
    ax.set_xlabel(_text(xlabel))
    ax.set_ylabel(_text(ylabel))
    ax.set_ylim(-0.02, 1.02)
    if xmax is not None and math.isfinite(xmax) and xmax > 0:
        ax.set_xlim(-0.015 * xmax, xmax)
    else:
        ax.set_xlim(left=0)
    ax.grid(True, alpha=0.3)
    ax.set_title(_text(title), fontsize=11)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return _png(fig)


def heatmap(
    values: np.ndarray,
    counts: np.ndarray | None,
    *,
    rows: Sequence[str],
    cols: Sequence[str],
    title: str,
    xlabel: str,
    ylabel: str,
) -> bytes:
    """A matrix of rates in [0, 1] (NaN drawn gray), each cell annotated with its rate and,
    when given, its count."""
    values = np.asarray(values, dtype=float)
    s, t = values.shape
    fig = Figure(figsize=(max(3.6, 1.05 * t + 2.2), max(2.6, 0.62 * s + 1.6)))
    ax = fig.add_subplot()
    masked = np.ma.masked_invalid(values)
    cmap = colormaps["Reds"].with_extremes(bad="#dddddd")
    image = ax.imshow(masked, cmap=cmap, vmin=0.0, vmax=1.0, aspect="auto")
    for i in range(s):
        for j in range(t):
            v = values[i, j]
            text = "—" if math.isnan(v) else f"{v:.2f}"
            if counts is not None:
                text += f"\nn={int(counts[i, j])}"
            dark = not math.isnan(v) and v > 0.6
            color = "white" if dark else "black"
            ax.text(j, i, text, ha="center", va="center", fontsize=8, color=color)
    ax.set_xticks(range(t), [_text(c) for c in cols], rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(s), [_text(r) for r in rows], fontsize=8)
    ax.set_xlabel(_text(xlabel))
    ax.set_ylabel(_text(ylabel))
    ax.set_title(_text(title), fontsize=10)
    fig.colorbar(image, ax=ax, fraction=0.05, pad=0.03)
    return _png(fig)


def _image(t: Tensor) -> np.ndarray:
    """(C, H, W) tensor → (H, W) or (H, W, C) array for imshow."""
    a = t.detach().cpu().float().numpy()
    if a.ndim == 3 and a.shape[0] == 1:
        return a[0]
    if a.ndim == 3:
        return np.transpose(a, (1, 2, 0))
    return a


def amplification(delta: np.ndarray, width: float) -> float:
    """The factor a that maps the largest |δ| to half the box width: the perturbation is
    shown as 0.5 + a·δ/width (mid-gray: no change). 0 for δ = 0."""
    peak = float(np.abs(delta).max()) if delta.size else 0.0
    return 0.5 * width / peak if peak > 0 else 0.0


def examples_figure(
    examples: Sequence[Example],
    *,
    bounds: tuple[float, float] = (0.0, 1.0),
    class_names: Sequence[str] | None = None,
) -> bytes:
    """Columns of samples; rows: clean input, perturbation (amplified per image), adversarial
    input. Titles: predicted (and true) labels, with the model's confidence when known, and
    the amplification factor ×a of each perturbation (see ``amplification``)."""
    if not examples:
        raise ValueError("examples: expected at least one example")
    lo, hi = bounds
    width = hi - lo
    n = len(examples)
    fig = Figure(figsize=(1.35 * n + 0.7, 4.9))
    axes = fig.subplots(3, n, squeeze=False)

    def name(k: int) -> str:
        label = class_names[k] if class_names is not None and k < len(class_names) else str(k)
        return _text(label)

    def conf(p: float | None) -> str:
        return "" if p is None else f" ({p:.2f})"

    for j, ex in enumerate(examples):
        clean = (_image(ex.x) - lo) / width
        adv = (_image(ex.x_adv) - lo) / width
        delta = _image(ex.x_adv) - _image(ex.x)
        factor = amplification(delta, width)
        shown = 0.5 + factor * delta / width
        cmap = "gray" if clean.ndim == 2 else None
        for i, img in enumerate((clean, shown, adv)):
            ax = axes[i][j]
            ax.imshow(np.clip(img, 0, 1), cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[0][j].set_title(
            f"pred {name(ex.clean_pred)}{conf(ex.clean_conf)}\ntrue {name(ex.y)}",
            fontsize=8,
            color="black" if ex.clean_pred == ex.y else "tab:red",
        )
        peak = float(np.abs(delta).max()) if delta.size else 0.0
        axes[1][j].set_title(
            f"×{factor:.3g}\nmax|δ| {peak:.3g}" if factor else "no change", fontsize=7
        )
        axes[2][j].set_title(
            f"pred {name(ex.pred)}{conf(ex.conf)}",
            fontsize=8,
            color="black" if ex.pred == ex.y else "tab:red",
        )
    axes[0][0].set_ylabel("clean")
    axes[1][0].set_ylabel("perturbation\n(amplified)")
    axes[2][0].set_ylabel("adversarial")
    return _png(fig)
