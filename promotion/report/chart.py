"""The decision chart: each re-scored metric's candidate - Production difference, its interval
and the line it must clear, one small panel per metric (metrics have different units).

Drawn with matplotlib's object API on an Agg canvas (no pyplot, no global backend switch), imported
only when a chart is drawn. Output is deterministic: the same rows give the same PNG bytes.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

WIDTH_IN = 7.0
PANEL_IN = 0.9
HEADER_IN = 0.4  # the title
FOOTER_IN = 0.35  # the legend
DPI = 100

CLEARS = "#2e7d32"  # the whole interval is on the passing side of the line
CROSSES = "#e67700"  # the estimate passes, the interval reaches past the line
MISSES = "#c62828"  # the estimate itself is on the failing side
NEUTRAL = "#37474f"  # no line to clear (the metric has only absolute bounds)


@dataclass(frozen=True)
class ChartRow:
    """One metric: the difference candidate - Production, its interval, and the line to clear.

    `margin` is a position on the difference axis, in metric units, signed: the interval must lie
    at or below it for `goal: minimize` (e.g. -0.5 for `min_improvement: 0.5`, +0.5 for
    `max_regression: 0.5`) and at or above it for `goal: maximize`. None: no relative rule.
    """

    metric: str
    difference: float
    low: float
    high: float
    margin: float | None
    goal: Literal["minimize", "maximize"]

    @property
    def verdict(self) -> str:
        """clears | crosses | misses | none: where the estimate and interval sit vs the line."""
        if self.margin is None:
            return "none"
        sign = 1.0 if self.goal == "maximize" else -1.0
        if sign * (self.difference - self.margin) < 0:
            return "misses"
        bound = self.low if self.goal == "maximize" else self.high
        return "clears" if math.isfinite(bound) and sign * (bound - self.margin) >= 0 else "crosses"


_COLOURS = {"clears": CLEARS, "crosses": CROSSES, "misses": MISSES, "none": NEUTRAL}
_LEGEND = (("interval clears the line", CLEARS), ("interval crosses the line", CROSSES),
           ("estimate misses the line", MISSES))


def render_chart(rows: Sequence[ChartRow], title: str, path: Path) -> Path:
    """Draw `rows` to a PNG at `path` (parents created) and return `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(chart_png(rows, title))
    return path


def chart_png(rows: Sequence[ChartRow], title: str) -> bytes:
    """Draw `rows` and return the PNG's bytes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = max(1, len(rows))
    height = HEADER_IN + PANEL_IN * panels + FOOTER_IN
    figure = Figure(figsize=(WIDTH_IN, height), dpi=DPI)
    FigureCanvasAgg(figure)
    figure.suptitle(title, fontsize=10, x=0.02, y=1 - 0.12 / height, ha="left", va="top")
    axes = figure.subplots(panels, 1, squeeze=False)[:, 0]
    if not rows:
        axes[0].set_axis_off()
        axes[0].text(0.5, 0.5, "no re-scored metrics", ha="center", va="center", fontsize=9)
    for ax, row in zip(axes, rows, strict=False):
        _panel(ax, row)
    figure.legend(handles=_legend_handles(), loc="lower center", ncol=4, fontsize=7,
                  frameon=False, bbox_to_anchor=(0.5, 0.0))
    figure.subplots_adjust(left=0.03, right=0.97, bottom=(FOOTER_IN + 0.2) / height,
                           top=1 - (HEADER_IN + 0.2) / height, hspace=1.0)
    # No "Software" entry: the bytes then depend on the rows only, not on the matplotlib build.
    out = io.BytesIO()
    figure.savefig(out, format="png", dpi=DPI, metadata={"Software": None})
    return out.getvalue()


def _panel(ax: Any, row: ChartRow) -> None:
    colour = _COLOURS[row.verdict]
    finite = math.isfinite(row.low) and math.isfinite(row.high)
    ax.axvline(0.0, color="#9e9e9e", linewidth=0.8, zorder=1)
    if row.margin is not None:
        ax.axvline(row.margin, color="#212121", linestyle="--", linewidth=1.0, zorder=2)
    if finite:
        ax.errorbar([row.difference], [0.0],
                    xerr=[[max(row.difference - row.low, 0.0)], [max(row.high - row.difference,
                                                                      0.0)]],
                    fmt="o", color=colour, ecolor=colour, elinewidth=2.2, capsize=4,
                    markersize=5, zorder=3)
    else:
        ax.plot([row.difference], [0.0], "o", color=colour, markersize=5, zorder=3)
    low, high = _limits(row)
    ax.set_xlim(low, high)
    if row.margin is not None:
        # Shade the passing side of the line, lightly.
        if row.goal == "minimize":
            ax.axvspan(low, row.margin, color=CLEARS, alpha=0.07, zorder=0, linewidth=0)
        else:
            ax.axvspan(row.margin, high, color=CLEARS, alpha=0.07, zorder=0, linewidth=0)
    ax.set_ylim(-1.0, 1.0)
    ax.set_yticks([])
    ax.tick_params(axis="x", labelsize=7, length=2, pad=1)
    for side in ("left", "right", "top"):
        ax.spines[side].set_visible(False)
    better = "lower is better" if row.goal == "minimize" else "higher is better"
    interval = f"[{_num(row.low)}, {_num(row.high)}]" if finite else "(interval undefined)"
    line = "" if row.margin is None else f"   line {_num(row.margin)}"
    ax.set_title(f"{row.metric}  ({better})   difference {_num(row.difference)} {interval}{line}",
                 fontsize=8, loc="left", pad=3, color="#212121")


def _limits(row: ChartRow) -> tuple[float, float]:
    values = [v for v in (row.difference, row.low, row.high, 0.0, row.margin)
              if v is not None and math.isfinite(v)]
    low, high = min(values), max(values)
    span = high - low or max(abs(high), 1.0) * 0.1 or 1.0
    return low - 0.12 * span, high + 0.12 * span


def _num(value: float) -> str:
    if not math.isfinite(value):
        return "n/a"
    return "0" if value == 0 else f"{value:+.4g}"  # no "-0" for a negated zero margin


def _legend_handles() -> list[Any]:
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=c, marker="o", linewidth=2, markersize=4, label=label)
               for label, c in _LEGEND]
    handles.append(Line2D([], [], color="#212121", linestyle="--", linewidth=1,
                          label="line to clear"))
    return handles
