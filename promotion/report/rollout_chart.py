"""The rollout timeline: the candidate's share of the traffic over time, with every decision.

Drawn from the rollout's decision records (the gate's `canary`, then each step's `advanced`,
`aborted`, `promoted`): the share in force is a step line (0 once aborted, 100 % once the alias
moved), each decision a labelled point. Kept as `timeline.png` with every step's record, so the
MLflow UI shows how a rollout went. matplotlib's object API on an Agg canvas, imported only when
a chart is drawn; the same events give the same PNG bytes.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from promotion.engine.records import Entry

WIDTH_IN, HEIGHT_IN, DPI = 7.0, 2.6, 100
COLOURS = {"canary": "#1565c0", "advanced": "#1565c0", "promoted": "#2e7d32",
           "aborted": "#c62828"}


@dataclass(frozen=True)
class Point:
    at: float  # Unix seconds
    share: float  # the share in force from then on (0..1)
    outcome: str  # canary | advanced | aborted | promoted
    label: str


def timeline(entries: Sequence[Entry], steps: Sequence[float]) -> list[Point]:
    """The points of one rollout from its records, oldest first: the gate's `canary` (step 1),
    each `advanced` (the next step), and how it ended (`aborted`: 0; `promoted`: all)."""
    points: list[Point] = []
    step = 0
    for entry in sorted(entries, key=lambda e: e.decided_at):
        at = datetime.fromisoformat(entry.decided_at.replace("Z", "+00:00")).timestamp()
        if entry.outcome == "canary":
            step = 0
            share, label = steps[0], f"canary {steps[0] * 100:g}%"
        elif entry.outcome == "advanced" and step + 1 < len(steps):
            step += 1
            share, label = steps[step], f"advanced to {steps[step] * 100:g}%"
        elif entry.outcome == "aborted":
            share, label = 0.0, "aborted"
        elif entry.outcome == "promoted":
            share, label = 1.0, f"promoted: @{entry.alias}"
        else:
            continue
        points.append(Point(at, share, entry.outcome, label))
    return points


def timeline_png(points: Sequence[Point], title: str) -> bytes:
    """The share over time (since the rollout began) and each decision."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(WIDTH_IN, HEIGHT_IN), dpi=DPI)
    FigureCanvasAgg(figure)
    ax = figure.add_subplot(1, 1, 1)
    for side in ("right", "top"):
        ax.spines[side].set_visible(False)
    ax.set_title(title, fontsize=9, loc="left")
    ax.tick_params(labelsize=7, length=2, pad=1)
    ax.set_ylabel("share of requests", fontsize=8)
    ax.set_ylim(-0.05, 1.18)
    ax.set_yticks([0, 0.25, 0.5, 0.75, 1.0], ["0", "25%", "50%", "75%", "100%"])
    if not points:
        ax.text(0.5, 0.5, "no decision recorded", ha="center", va="center",
                transform=ax.transAxes, fontsize=9)
    else:
        start = points[0].at
        span = points[-1].at - start
        unit, size = ("seconds", 1.0) if span < 120 else ("minutes", 60.0) if span < 3 * 3600 \
            else ("hours", 3600.0)
        ax.set_xlabel(f"{unit} since the rollout began", fontsize=8)
        xs = [(p.at - start) / size for p in points]
        ax.step(xs, [p.share for p in points], where="post", color="#37474f", linewidth=1.2)
        for x, p in zip(xs, points, strict=True):
            ax.scatter([x], [p.share], color=COLOURS.get(p.outcome, "#37474f"), s=22, zorder=3)
            ax.annotate(p.label, (x, p.share), textcoords="offset points", xytext=(4, 6),
                        fontsize=7, color=COLOURS.get(p.outcome, "#37474f"))
        right = max(xs[-1], 1.0) * 1.3
        ax.set_xlim(-0.02 * right, right)
    figure.subplots_adjust(left=0.1, right=0.97, bottom=0.18, top=0.86)
    out = io.BytesIO()
    figure.savefig(out, format="png", dpi=DPI, metadata={"Software": None})
    return out.getvalue()
