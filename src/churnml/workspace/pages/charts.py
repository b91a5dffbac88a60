"""Charts for the CSM pages, drawn server-side by matplotlib as inline SVG.

Why server-side SVG: the pages must work with no external network (no CDN, no JavaScript chart
library). Why these rules: a chart a CSM repeats on a call must not mislead, so every chart has a
labelled value axis with its unit, a rate's axis starts at zero (3.6% → 1.9% must not look like
48% → 57%), reference lines mark what the number is judged against (NRR 100%, NPS 0, the risk tiers),
and only the latest value is written on a line (the page's table has them all), so labels never
overlap. Text stays text in the SVG (``svg.fonttype = none``) and each chart names itself and points
to its table for screen readers.

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
from dataclasses import dataclass
from html import escape
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "LINE_COLOUR", "RISK_COLOUR", "SAFE_COLOUR", "Band", "Reference", "bar_chart", "cohort_curves",
    "contributions_chart", "estimate_chart", "format_money", "format_percent", "line_chart", "small_multiples",
]  # fmt: skip

RISK_COLOUR = "#c0392b"  # raises risk
SAFE_COLOUR = "#2e7d32"  # lowers risk
LINE_COLOUR = "#1f4e79"
MAX_TICKS = 8  # category ticks on an x-axis before every n-th is shown (they would overlap)
TICK_FONT_PT = 9
MAX_COHORTS = 8  # curves on one chart stay distinguishable up to about this many

# rcParams are process-global and read both when axes are made and when they are saved; drawing each
# chart under one lock keeps a concurrent request's rc_context from changing another chart mid-draw.
_RENDER_LOCK = threading.Lock()
_RC = {"svg.fonttype": "none", "font.size": 10, "axes.spines.top": False,
       "axes.spines.right": False}  # fmt: skip


@dataclass(frozen=True)
class Band:
    """A shaded range of the value axis (a risk tier), named at its right edge."""

    low: float
    high: float
    label: str
    colour: str


@dataclass(frozen=True)
class Reference:
    """A horizontal line the values are judged against (NRR 100%, NPS 0)."""

    value: float
    label: str


def format_money(value: float | None) -> str:
    """Compact amount for labels: 950, 12.3k, 1.25M (the currency is named beside the chart)."""
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


def _to_svg(fig: Figure, title: str, described_by: str | None = None) -> str:
    """The figure as an inline ``<svg>`` that scales with the page, names itself and points to its table."""
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", metadata={"Date": None, "Creator": None})
    text = buffer.getvalue()
    text = text[text.index("<svg") :]  # drop the XML declaration and DOCTYPE: not valid inside HTML
    head_end = text.index(">")
    head = re.sub(r'\s(width|height)="[^"]*"', "", text[:head_end])
    head += f' class="chart" role="img" aria-label="{escape(title, quote=True)}"'
    if described_by:
        head += f' aria-describedby="{escape(described_by, quote=True)}"'
    return head + text[head_end:]


def _category_ticks(ax: Axes, labels: Sequence[str]) -> None:
    """Category labels on the x-axis, never overlapping: every n-th, and always the last, when more
    than fit side by side (at most MAX_TICKS; ten-character dates fit five to a 6-inch chart)."""
    n = len(labels)
    every = max(1, math.ceil(n / tick_budget(ax.figure.get_figwidth(), labels)))
    shown = [i for i in range(n) if i % every == 0 and (n - 1 - i) >= every / 2 or i == n - 1]
    ax.set_xticks(shown, [_plain(labels[i]) for i in shown], fontsize=TICK_FONT_PT)


def tick_budget(figure_inches: float, labels: Sequence[str]) -> int:
    """How many of these labels fit side by side under a chart this wide: the axes take the figure
    less about an inch (value axis and its label); a character is about 0.62 em, with 1 em between."""
    longest = max((len(_plain(str(s))) for s in labels), default=1)
    room = (figure_inches - 1.0) * 72.0  # points
    return max(2, min(MAX_TICKS, int(room // (TICK_FONT_PT * (0.62 * longest + 1.0)))))


def _value_axis(ax: Axes, label: str, value_format: Callable[[float], str]) -> None:
    ax.set_ylabel(_plain(label), fontsize=9)
    ax.yaxis.set_major_formatter(lambda v, _: value_format(v))
    ax.grid(axis="y", color="#e3e8ee", linewidth=0.6)


def _limits(values: list[float], zero_based: bool, marks: Sequence[float]) -> tuple[float, float]:
    """The value axis: from zero for rates, else around the data; always showing the reference marks."""
    finite = [v for v in values if math.isfinite(v)] + list(marks)
    low, high = (min(finite), max(finite)) if finite else (0.0, 1.0)
    if zero_based:
        low = min(0.0, low)
    pad = (high - low) * 0.12 or abs(high) * 0.1 or 0.1
    return (low if zero_based and low == 0 else low - pad), high + pad


def line_chart(
    x: Sequence[str], y: Sequence[float | None], title: str, *, axis_label: str,
    value_format: Callable[[float], str] = format_percent, zero_based: bool = True,
    bands: Sequence[Band] = (), references: Sequence[Reference] = (), colour: str = LINE_COLOUR,
    ceiling: float | None = None, described_by: str | None = None,
) -> str:  # fmt: skip
    """One series over time on a labelled value axis, with optional tier bands and reference lines;
    the latest value is written at its point."""
    values = _finite(y)
    positions = list(range(len(values)))
    with _figure(6.0, 2.9) as fig:
        ax = fig.add_subplot()
        low, high = _limits(values, zero_based, [r.value for r in references] + [b.low for b in bands[:1]])
        high = min(high, ceiling) if ceiling is not None else high
        for band in bands:
            ax.axhspan(band.low, min(band.high, high), color=band.colour, alpha=0.13, linewidth=0)
            if band.low < high:
                ax.text(1.0, (band.low + min(band.high, high)) / 2, f" {band.label}", transform=ax.get_yaxis_transform(),
                        va="center", ha="left", fontsize=8, color="#3a4654")  # fmt: skip
        for ref in references:
            ax.axhline(ref.value, color="#5c6b7a", linewidth=1, linestyle="--")
            ax.text(0.0, ref.value, f" {_plain(ref.label)}", transform=ax.get_yaxis_transform(), va="bottom",
                    fontsize=8, color="#3a4654")  # fmt: skip
        ax.plot(positions, values, marker="o", color=colour, linewidth=2)
        last = next((i for i in reversed(positions) if math.isfinite(values[i])), None)
        if last is not None:
            ax.annotate(_plain(value_format(values[last])), (last, values[last]), textcoords="offset points",
                        xytext=(0, 7), ha="center", va="bottom", fontsize=9, fontweight="bold", color="#222222")  # fmt: skip
        ax.set_ylim(low, high)
        ax.set_xlim(-0.5, max(len(values) - 0.5, 0.5))
        _category_ticks(ax, list(x))
        _value_axis(ax, axis_label, value_format)
        ax.set_title(_plain(title), loc="left", fontsize=11)
        return _to_svg(fig, title, described_by)


def small_multiples(
    x: Sequence[str], series: Sequence[tuple[str, Sequence[float]]], title: str, *, axis_label: str,
    described_by: str | None = None,
) -> str:  # fmt: skip
    """One small zero-based bar chart per series (events per month of each event type), side by side,
    each on its own axis: a type with 300 events a month must not flatten one with 3."""
    from matplotlib.ticker import MaxNLocator

    columns = min(2, max(1, len(series)))
    rows = max(1, math.ceil(len(series) / columns))
    with _figure(6.4, 0.6 + 1.9 * rows) as fig:
        axes = fig.subplots(rows, columns, squeeze=False)
        for k, ax in enumerate(axes.flat):
            if k >= len(series):
                ax.set_visible(False)
                continue
            name, values = series[k]
            numbers = [0.0 if not math.isfinite(v) else v for v in _finite(values)]
            ax.bar(range(len(numbers)), numbers, color=LINE_COLOUR)
            ax.set_ylim(0, max(numbers + [1.0]) * 1.25)
            ax.set_title(_plain(name), loc="left", fontsize=9)
            ax.set_xticks([0, len(numbers) - 1] if numbers else [], [_plain(x[0]), _plain(x[-1])] if numbers else [],
                          fontsize=8)  # fmt: skip
            ax.yaxis.set_major_locator(
                MaxNLocator(nbins=4, integer=True)
            )  # counts: whole ticks, never "1 1 1"
            ax.yaxis.set_major_formatter(lambda v, _: f"{v:,.0f}")
            ax.tick_params(axis="y", labelsize=8)
            ax.grid(axis="y", color="#e3e8ee", linewidth=0.6)
        fig.supylabel(_plain(axis_label), fontsize=9)
        fig.suptitle(_plain(title), x=0.01, ha="left", fontsize=11)
        return _to_svg(fig, title, described_by)


def bar_chart(
    labels: Sequence[str], values: Sequence[float | None], title: str, *, axis_label: str,
    value_format: Callable[[float], str] = format_money, colour: str = LINE_COLOUR, described_by: str | None = None,
) -> str:  # fmt: skip
    """Horizontal bars per category (segment) from zero, on a labelled axis, each value at the bar's end."""
    numbers = [0.0 if not math.isfinite(v) else v for v in _finite(values)]
    rows = list(range(len(numbers)))[::-1]  # first label on top
    with _figure(6.0, 1.1 + 0.45 * max(1, len(numbers))) as fig:
        ax = fig.add_subplot()
        bars = ax.barh(rows, numbers, color=colour)
        ax.bar_label(bars, labels=[_plain(value_format(v)) for v in numbers], padding=4, fontsize=9)
        ax.set_yticks(rows, [_plain(s) for s in labels])
        ax.set_xlim(0, max(numbers + [1.0]) * 1.3)
        ax.xaxis.set_major_formatter(lambda v, _: value_format(v))
        ax.set_xlabel(_plain(axis_label), fontsize=9)
        ax.grid(axis="x", color="#e3e8ee", linewidth=0.6)
        ax.set_title(_plain(title), loc="left", fontsize=11)
        return _to_svg(fig, title, described_by)


def contributions_chart(
    labels: Sequence[str], contributions: Sequence[float], title: str, described_by: str | None = None
) -> str:
    """SHAP contributions (log-odds) per reason: red raises risk, green lowers it, value on each bar."""
    numbers = _finite(contributions)
    names = [textwrap.shorten(_plain(s), 48, placeholder="…") for s in labels]
    rows = list(range(len(numbers)))[::-1]
    colours = [RISK_COLOUR if v > 0 else SAFE_COLOUR for v in numbers]
    with _figure(7.5, 1.1 + 0.4 * max(1, len(numbers))) as fig:
        ax = fig.add_subplot()
        bars = ax.barh(rows, numbers, color=colours)
        ax.bar_label(bars, labels=[f"{v:+.3f}" for v in numbers], padding=4, fontsize=9)
        ax.axvline(0, color="#555555", linewidth=0.8)
        ax.set_yticks(rows, names)
        ax.margins(x=0.3)
        ax.set_xlabel("contribution to churn risk (log-odds; > 0 raises risk)", fontsize=9)
        ax.set_title(_plain(title), loc="left", fontsize=11)
        return _to_svg(fig, title, described_by)


def cohort_curves(
    cohorts: Sequence[tuple[str, Sequence[int], Sequence[float]]], title: str, described_by: str | None = None
) -> str:
    """Retention curves (share still active by months since start), one line per cohort, named in a
    legend below (labels at the line ends overlapped where curves run close).

    Beyond :data:`MAX_COHORTS` an evenly spaced selection is drawn (the page's table shows all), and
    the title says so.
    """
    from matplotlib import colormaps

    shown = list(cohorts)
    if len(shown) > MAX_COHORTS:
        step = (len(shown) - 1) / (MAX_COHORTS - 1)
        shown = [shown[round(i * step)] for i in range(MAX_COHORTS)]
        title = f"{title} ({MAX_COHORTS} of {len(cohorts)} cohorts)"
    palette = colormaps["viridis"]
    with _figure(7.0, 3.9) as fig:
        ax = fig.add_subplot()
        for i, (name, months, retention) in enumerate(shown):
            colour = palette(i / max(1, len(shown) - 1) * 0.85)
            last = format_percent(float(retention[-1]), 0) if len(retention) else "–"
            ax.plot(
                list(months), _finite(retention), color=colour, linewidth=1.8, label=f"{_plain(name)}: {last}"
            )
        ax.set_xlabel("months since the cohort started", fontsize=9)
        _value_axis(ax, "share still active (%)", lambda v: format_percent(v, 0))
        ax.set_ylim(0, 1.05)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=4, fontsize=8, frameon=False)
        ax.set_title(_plain(title), loc="left", fontsize=11)
        return _to_svg(fig, title, described_by)


def estimate_chart(
    dates: Sequence[str], estimated: Sequence[float | None], low: Sequence[float | None], high: Sequence[float | None],
    realised: Sequence[float | None], title: str, *, axis_label: str, described_by: str | None = None,
) -> str:  # fmt: skip
    """A metric estimated before the labels (line and its 95% band) against what was realised once they
    matured (points): realised below the band means the probabilities no longer mean what they say."""
    positions = list(range(len(dates)))
    with _figure(6.0, 2.9) as fig:
        ax = fig.add_subplot()
        ax.fill_between(positions, _finite(low), _finite(high), color=LINE_COLOUR, alpha=0.15, linewidth=0,
                        label="estimated: 95% band")  # fmt: skip
        ax.plot(positions, _finite(estimated), color=LINE_COLOUR, linewidth=2, marker="o", label="estimated")
        ax.plot(
            positions, _finite(realised), color=RISK_COLOUR, linestyle="none", marker="D", label="realised"
        )
        ax.set_ylim(0, 1)  # ROC-AUC and PR-AUC live in [0, 1]: the whole range, no zoom that exaggerates
        ax.set_xlim(-0.5, max(len(dates) - 0.5, 0.5))
        _category_ticks(ax, list(dates))
        _value_axis(ax, axis_label, lambda v: f"{v:.2f}")
        ax.legend(loc="lower left", fontsize=8, frameon=False, ncol=3)
        ax.set_title(_plain(title), loc="left", fontsize=11)
        return _to_svg(fig, title, described_by)
