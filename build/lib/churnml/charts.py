"""Charts for the CSM pages, drawn server-side by matplotlib as inline SVG.

Why server-side SVG: the pages must work with no external network (no CDN, no JavaScript chart
library), and a CSM reading a chart on a call should not have to hover to get a number, so every
chart writes its values on the data. Text stays text in the SVG (``svg.fonttype = none``): it is
searchable, accessible and escaped by matplotlib's XML writer.

Only the object-oriented API is used (``Figure``, never ``pyplot``): no global figure registry to
leak or to share between the service's request threads.
"""

from __future__ import annotations

import io
import math
import re
import textwrap
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from html import escape
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "LINE_COLOUR",
    "RISK_COLOUR",
    "SAFE_COLOUR",
    "bar_chart",
    "cohort_curves",
    "contributions_chart",
    "format_money",
    "format_percent",
    "line_chart",
]

RISK_COLOUR = "#c0392b"  # raises risk
SAFE_COLOUR = "#2e7d32"  # lowers risk
LINE_COLOUR = "#1f4e79"
MAX_LABELLED_POINTS = 18  # beyond this a line chart labels every n-th point and the last one
MAX_COHORTS = 8  # curves on one chart stay distinguishable up to about this many

# rcParams are process-global and read both when axes are made and when they are saved; drawing each
# chart under one lock keeps a concurrent request's rc_context from changing another chart mid-draw.
# A chart takes tens of milliseconds.
_RENDER_LOCK = threading.Lock()
_RC = {"svg.fonttype": "none", "font.size": 10, "axes.spines.top": False,
       "axes.spines.right": False}  # fmt: skip


def format_money(value: float | None) -> str:
    """Compact amount for labels: 950, 12.3k, 1.25M (no currency: the data does not say which)."""
    if value is None or not math.isfinite(value):
        return "–"
    size = abs(value)
    if size >= 1e6:
        return f"{value / 1e6:.2f}M"
    if size >= 1e4:
        return f"{value / 1e3:.1f}k"
    return f"{value:,.0f}"


def format_percent(value: float | None, digits: int = 1) -> str:
    """A share (0.123) as a percentage ('12.3%')."""
    if value is None or not math.isfinite(value):
        return "–"
    return f"{value * 100:.{digits}f}%"


def _plain(text: str) -> str:
    """Data text shown literally: a '$' in a sentence or segment name must not start mathtext."""
    return str(text).replace("$", r"\$")


def _finite(values: Sequence[float | None]) -> list[float]:
    return [float("nan") if v is None else float(v) for v in values]


@contextmanager
def _figure(width: float, height: float) -> Iterator[Figure]:
    """A new figure, drawn under the house style; matplotlib types stay inside this module."""
    import matplotlib
    from matplotlib.figure import Figure

    with _RENDER_LOCK, matplotlib.rc_context(_RC):
        yield Figure(figsize=(width, height), layout="constrained")


def _to_svg(fig: Figure, title: str) -> str:
    """The figure as an inline ``<svg>`` element that scales with the page and names itself."""
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", metadata={"Date": None, "Creator": None})
    text = buffer.getvalue()
    text = text[text.index("<svg") :]  # drop the XML declaration and DOCTYPE: not valid inside HTML
    # responsive: keep the viewBox, let CSS size it; say what it shows for screen readers
    head_end = text.index(">")
    head = re.sub(r'\s(width|height)="[^"]*"', "", text[:head_end])
    head += f' class="chart" role="img" aria-label="{escape(title, quote=True)}"'
    return head + text[head_end:]


def _label_every(n: int) -> int:
    return 1 if n <= MAX_LABELLED_POINTS else math.ceil(n / MAX_LABELLED_POINTS)


def line_chart(
    x: Sequence[str],
    y: Sequence[float | None],
    title: str,
    value_format: Callable[[float], str] = format_percent,
    y_limits: tuple[float, float] | None = None,
    colour: str = LINE_COLOUR,
) -> str:
    """One series over time (months, observation dates) with its values written at the points."""
    values = _finite(y)
    positions = list(range(len(values)))
    every = _label_every(len(values))
    slanted = len(x) > 8
    with _figure(6.0, 2.8) as fig:
        ax = fig.add_subplot()
        ax.plot(positions, values, marker="o", color=colour, linewidth=2)
        for i, v in enumerate(values):
            if math.isfinite(v) and (i % every == 0 or i == len(values) - 1):
                # above a rise, below a fall: neighbouring labels on a zigzag do not overlap
                above = i == 0 or not math.isfinite(values[i - 1]) or v >= values[i - 1]
                ax.annotate(_plain(value_format(v)), (i, v), textcoords="offset points", xytext=(0, 7 if above else -8),
                            ha="center", va="bottom" if above else "top", fontsize=9, color="#222222")  # fmt: skip
        ax.set_xticks(positions, [_plain(s) for s in x], rotation=45 if slanted else 0,
                      ha="right" if slanted else "center", fontsize=9)  # fmt: skip
        if y_limits is not None:
            ax.set_ylim(*y_limits)
        else:
            ax.margins(x=0.05, y=0.25)
        ax.set_yticks([])  # the values are on the points; an axis would only repeat them less precisely
        ax.spines["left"].set_visible(False)
        ax.set_title(_plain(title), loc="left", fontsize=11)
        return _to_svg(fig, title)


def bar_chart(
    labels: Sequence[str],
    values: Sequence[float | None],
    title: str,
    value_format: Callable[[float], str] = format_money,
    colour: str = LINE_COLOUR,
) -> str:
    """Horizontal bars per category (segment) with each value written at the bar's end."""
    numbers = [0.0 if not math.isfinite(v) else v for v in _finite(values)]
    rows = list(range(len(numbers)))[::-1]  # first label on top
    with _figure(6.0, 0.8 + 0.45 * max(1, len(numbers))) as fig:
        ax = fig.add_subplot()
        bars = ax.barh(rows, numbers, color=colour)
        ax.bar_label(bars, labels=[_plain(value_format(v)) for v in numbers], padding=4, fontsize=9)
        ax.set_yticks(rows, [_plain(s) for s in labels])
        ax.set_xticks([])
        ax.spines["bottom"].set_visible(False)
        ax.margins(x=0.25)
        ax.set_title(_plain(title), loc="left", fontsize=11)
        return _to_svg(fig, title)


def contributions_chart(labels: Sequence[str], contributions: Sequence[float], title: str) -> str:
    """SHAP contributions (log-odds) per reason: red raises risk, green lowers it, value on each bar."""
    numbers = _finite(contributions)
    names = [textwrap.shorten(_plain(s), 60, placeholder="…") for s in labels]
    rows = list(range(len(numbers)))[::-1]
    colours = [RISK_COLOUR if v > 0 else SAFE_COLOUR for v in numbers]
    with _figure(7.5, 1.0 + 0.4 * max(1, len(numbers))) as fig:
        ax = fig.add_subplot()
        bars = ax.barh(rows, numbers, color=colours)
        ax.bar_label(bars, labels=[f"{v:+.3f}" for v in numbers], padding=4, fontsize=9)
        ax.axvline(0, color="#555555", linewidth=0.8)
        ax.set_yticks(rows, names)
        ax.margins(x=0.3)
        ax.set_xlabel("contribution to churn risk (log-odds; > 0 raises risk)", fontsize=9)
        ax.set_title(_plain(title), loc="left", fontsize=11)
        return _to_svg(fig, title)


def cohort_curves(cohorts: Sequence[tuple[str, Sequence[int], Sequence[float]]], title: str) -> str:
    """Retention curves (share still active by months since start), one labelled line per cohort.

    ``cohorts`` is (name, months since start, retention) per cohort; beyond :data:`MAX_COHORTS`
    an evenly spaced selection is drawn (the page's table shows all), and the title says so.
    """
    from matplotlib import colormaps

    shown = list(cohorts)
    if len(shown) > MAX_COHORTS:
        step = (len(shown) - 1) / (MAX_COHORTS - 1)
        shown = [shown[round(i * step)] for i in range(MAX_COHORTS)]
        title = f"{title} ({MAX_COHORTS} of {len(cohorts)} cohorts)"
    palette = colormaps["viridis"]
    with _figure(7.0, 3.6) as fig:
        ax = fig.add_subplot()
        for i, (name, months, retention) in enumerate(shown):
            colour = palette(i / max(1, len(shown) - 1) * 0.85)
            ax.plot(list(months), _finite(retention), color=colour, linewidth=1.8)
            if len(months):
                ax.annotate(f"{_plain(name)}: {format_percent(float(retention[-1]), 0)}", (months[-1], retention[-1]),
                            textcoords="offset points", xytext=(4, 0), va="center", fontsize=8, color=colour)  # fmt: skip
        ax.set_xlabel("months since the cohort started")
        ax.set_ylabel("share still active")
        ax.yaxis.set_major_formatter(lambda v, _: format_percent(v, 0))
        last = max((m[-1] for _, m, _ in shown if len(m)), default=1)
        ax.set_xlim(-0.2, last * 1.25 + 0.5)  # room on the right for the labels
        ax.grid(axis="y", color="#dddddd", linewidth=0.6)
        ax.set_title(_plain(title), loc="left", fontsize=11)
        return _to_svg(fig, title)
