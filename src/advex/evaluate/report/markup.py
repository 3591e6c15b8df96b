"""HTML pieces of the report. Every string that reaches the page goes through ``esc`` unless it
is a ``Markup`` built here from escaped parts."""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Sequence
from typing import Any

__all__ = [
    "Markup",
    "esc",
    "figure",
    "fmt",
    "img",
    "interval",
    "note",
    "pct",
    "section",
    "table",
]


class Markup(str):
    """HTML that is already safe (assembled from escaped parts); ``esc`` leaves it alone."""


def esc(value: Any) -> str:
    """``value`` as text safe in HTML content and in quoted attribute values."""
    if isinstance(value, Markup):
        return value
    return html.escape(str(value), quote=True)


def fmt(value: Any, digits: int = 3) -> str:
    """Numbers to ``digits`` significant digits; None, NaN → '—'; ∞ → '∞'."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, float):
        if math.isinf(value):
            return "∞" if value > 0 else "−∞"
        return f"{value:.{digits}g}"
    return str(value)


def pct(value: float | None) -> str:
    """A fraction as a percentage with one decimal ('—' for None/NaN)."""
    if value is None or math.isnan(value):
        return "—"
    return f"{100 * value:.1f}%"


def interval(bounds: tuple[float, float]) -> str:
    """A (lo, hi) fraction interval as '[a, b]' in percent ('—' if undefined)."""
    lo, hi = bounds
    if math.isnan(lo) or math.isnan(hi):
        return "—"
    return f"[{100 * lo:.1f}, {100 * hi:.1f}]"


def img(png: bytes, alt: str) -> Markup:
    """An <img> holding ``png`` as a base64 data: URI."""
    data = base64.b64encode(png).decode("ascii")
    return Markup(f'<img src="data:image/png;base64,{data}" alt="{esc(alt)}">')


def figure(png: bytes, alt: str, caption: str | None = None) -> Markup:
    cap = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    return Markup(f"<figure>{img(png, alt)}{cap}</figure>")


def note(text: str) -> Markup:
    return Markup(f'<p class="note">{esc(text)}</p>')


def table(
    header: Sequence[str],
    rows: Sequence[Sequence[Any]],
    text_cols: Sequence[int] = (0,),
    css: str | None = None,
) -> Markup:
    """An HTML table; cells are escaped here (``Markup`` cells are kept); columns in
    ``text_cols`` align left."""

    def cls(i: int) -> str:
        return ' class="text"' if i in text_cols else ""

    head = "".join(f"<th{cls(i)}>{esc(h)}</th>" for i, h in enumerate(header))
    body = "\n".join(
        "<tr>" + "".join(f"<td{cls(i)}>{esc(c)}</td>" for i, c in enumerate(row)) + "</tr>"
        for row in rows
    )
    attr = f' class="{esc(css)}"' if css else ""
    return Markup(
        f'<div class="scroll"><table{attr}>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n'
        "</tbody>\n</table></div>"
    )


def section(ident: str, title: str, *parts: str) -> Markup:
    """``<section id=ident>`` with an <h2> title and ``parts`` (already HTML)."""
    body = "\n".join(p for p in parts if p)
    return Markup(f'<section id="{esc(ident)}">\n<h2>{esc(title)}</h2>\n{body}\n</section>')
