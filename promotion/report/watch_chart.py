"""The watch chart: each watched signal of one version over time, with the bound it must keep.

One small panel per signal (they have different units), drawn from the metric history of the
version's run in `promotion-monitoring`; a point above its bound is drawn red. matplotlib's
object API on an Agg canvas, imported only when a chart is drawn; the same series give the same
PNG bytes.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

WIDTH_IN = 7.0
PANEL_IN = 1.1
DPI = 100
INSIDE = "#37474f"
BREACH = "#c62828"

Series = Sequence[tuple[float, float]]  # (Unix seconds, value), oldest first


def watch_chart_png(series: Mapping[str, Series],
                    bounds: Mapping[str, tuple[float | None, bool]], title: str) -> bytes:
    """Draw each signal of `series` over time, its bound (if any) as a dashed line; `bounds`
    holds (bound, whether it is a ceiling) by signal."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = [name for name, points in series.items() if points] or ["(no data)"]
    height = 0.5 + PANEL_IN * len(names)
    figure = Figure(figsize=(WIDTH_IN, height), dpi=DPI)
    FigureCanvasAgg(figure)
    figure.suptitle(title, fontsize=10, x=0.02, y=1 - 0.1 / height, ha="left", va="top")
    axes = figure.subplots(len(names), 1, squeeze=False)[:, 0]
    for ax, name in zip(axes, names, strict=True):
        bound, upper = bounds.get(name, (None, True))
        _panel(ax, name, series.get(name, ()), bound, upper)
    figure.subplots_adjust(left=0.1, right=0.97, bottom=0.35 / height, top=1 - 0.5 / height,
                           hspace=0.9)
    out = io.BytesIO()
    figure.savefig(out, format="png", dpi=DPI, metadata={"Software": None})
    return out.getvalue()


def _panel(ax: Any, name: str, points: Series, bound: float | None, upper: bool) -> None:
    for side in ("right", "top"):
        ax.spines[side].set_visible(False)
    ax.tick_params(labelsize=7, length=2, pad=1)
    if not points:
        ax.set_axis_off()
        ax.text(0.5, 0.5, "no watch has run yet", ha="center", va="center", fontsize=9)
        return
    times = [datetime.fromtimestamp(t, UTC) for t, _ in points]
    values = [v for _, v in points]
    ax.plot(times, values, color=INSIDE, linewidth=1.0, zorder=2)
    colours = [BREACH if bound is not None and (v > bound if upper else v < bound) else INSIDE
               for v in values]
    ax.scatter(times, values, c=colours, s=12, zorder=3)
    if bound is not None:
        ax.axhline(bound, color="#212121", linestyle="--", linewidth=1.0, zorder=1)
    last = values[-1]
    limit = "" if bound is None else f"   bound {bound:.4g}"
    ax.set_title(f"{name}   last {last:.4g}{limit}", fontsize=8, loc="left", pad=3)
    if len(times) == 1:
        ax.set_xticks(times)
    ax.xaxis.set_major_formatter(_time_format())


def _time_format() -> Any:
    from matplotlib.dates import DateFormatter

    return DateFormatter("%m-%d %H:%M", tz=UTC)
