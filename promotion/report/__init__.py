"""Every renderer: terminal tables, Markdown, JSON documents, GitHub outputs, the chart.

    text      the shared primitives: cells, `grid`, the Markdown escaper, the JSON envelope
    decision  gate and rollback reports (table, --json, Markdown, the record's files)
    status    `promote status` and `promote history`
    preview   `promote policy preview`
    github    step outputs and the job summary
    chart     the decision chart (matplotlib, imported only when one is drawn)

Renderers take frozen results (promotion.engine) and return text or bytes; they never read the
registry, and nothing outside this package formats output for people.
"""

from __future__ import annotations

from promotion.report.decision import (
    chart_rows,
    markdown,
    record_files,
    rollback_text,
    table,
    to_json,
    to_json_text,
)
from promotion.report.github import github_outputs, output_lines, write_github
from promotion.report.preview import RENDERERS, render_json, render_markdown, render_text
from promotion.report.status import history_json, history_table, status_json, status_table
from promotion.report.text import SCHEMA_VERSION, dumps, number, shown

__all__ = [
    "RENDERERS",
    "SCHEMA_VERSION",
    "chart_rows",
    "dumps",
    "github_outputs",
    "history_json",
    "history_table",
    "markdown",
    "number",
    "output_lines",
    "record_files",
    "render_json",
    "render_markdown",
    "render_text",
    "rollback_text",
    "shown",
    "status_json",
    "status_table",
    "table",
    "to_json",
    "to_json_text",
    "write_github",
]
