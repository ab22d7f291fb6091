"""The decision chart: a small, deterministic PNG; where each interval sits against its line."""

from __future__ import annotations

import subprocess
import sys

import pytest

from promotion.report.chart import ChartRow, render_chart

ROWS = [
    ChartRow("rmse", -4.2, -6.1, -2.3, 0.0, "minimize"),  # clears: whole interval below 0
    ChartRow("r2", 0.01, -0.004, 0.024, 0.0, "maximize"),  # crosses
    ChartRow("mae", 1.5, 0.2, 2.9, -0.5, "minimize"),  # misses: estimate above the line
    ChartRow("roc_auc", 0.003, -0.01, 0.02, None, "maximize"),  # no relative rule
]


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_chart_is_a_small_png_with_a_panel_per_metric(tmp_path):
    path = render_chart(ROWS, "m: version 7 vs Production version 5", tmp_path / "a" / "c.png")
    assert path == tmp_path / "a" / "c.png"
    data = path.read_bytes()
    width, height = _png_size(data)
    one = _png_size(render_chart(ROWS[:1], "t", tmp_path / "one.png").read_bytes())
    assert width == one[0] == 700
    assert height > one[1] * 2  # grows with the number of metrics
    assert len(data) < 100_000


def test_chart_bytes_depend_only_on_the_rows(tmp_path):
    a = render_chart(ROWS, "title", tmp_path / "a.png").read_bytes()
    b = render_chart(ROWS, "title", tmp_path / "b.png").read_bytes()
    c = render_chart([*ROWS[:3], ChartRow("roc_auc", 0.004, -0.01, 0.02, None, "maximize")],
                     "title", tmp_path / "c.png").read_bytes()
    assert a == b
    assert a != c
    assert b"matplotlib" not in a  # no software/version stamp in the metadata


@pytest.mark.parametrize(("row", "verdict"), [
    (ROWS[0], "clears"), (ROWS[1], "crosses"), (ROWS[2], "misses"), (ROWS[3], "none"),
    (ChartRow("rmse", -0.2, -0.9, 0.5, 0.0, "minimize"), "crosses"),
    (ChartRow("rmse", 0.2, -0.1, 0.28, 0.3, "minimize"), "clears"),  # within max_regression
    (ChartRow("r2", 0.02, 0.011, 0.03, 0.01, "maximize"), "clears"),
    (ChartRow("r2", 0.005, -0.01, 0.02, 0.01, "maximize"), "misses"),
    (ChartRow("auc", 0.01, float("nan"), float("nan"), 0.0, "maximize"), "crosses"),
])
def test_verdict_says_where_the_interval_sits_against_the_line(row, verdict):
    assert row.verdict == verdict


def test_undefined_intervals_and_no_rows_still_draw(tmp_path):
    nan = float("nan")
    path = render_chart([ChartRow("roc_auc", 0.01, nan, nan, 0.0, "maximize")], "t",
                        tmp_path / "nan.png")
    assert _png_size(path.read_bytes())[0] == 700
    assert _png_size(render_chart([], "t", tmp_path / "empty.png").read_bytes())[0] == 700


def test_importing_the_chart_module_draws_in_nothing_heavy():
    code = ("import sys, promotion.report.chart; "
            "print(sorted(m for m in ('matplotlib', 'mlflow', 'pandas') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_negated_zero_margin_is_labelled_zero():
    from promotion.report.chart import _num

    assert (_num(-0.0), _num(0.0), _num(-0.02), _num(float("nan"))) == ("0", "0", "-0.02", "n/a")
