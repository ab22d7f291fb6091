"""The primitives every renderer shares: cells, tables, Markdown escaping, JSON documents.

One table builder (`grid`), one Markdown escaper (`md`), one way to say "version N or none"
(`version_or_none`, from promotion.engine.naming), and one JSON envelope (`document`, which always
carries `schema_version`).
Nothing here knows what a gate or a policy is.
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from promotion.engine.naming import NO_VERSION as NO_VERSION
from promotion.engine.naming import version_or_none as version_or_none
from promotion.errors import redact

SCHEMA_VERSION = 1
DASH = "-"


def number(value: Any) -> Any:
    """A value as JSON can hold it: non-finite floats become "nan", "inf" and "-inf"."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


def shown(value: Any) -> str:
    """A cell: None as a dash, floats to six significant digits."""
    if value is None:
        return DASH
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def grid(header: Sequence[str], rows: Sequence[Sequence[Any]], *, right: Collection[int] = (),
         rule: bool = False) -> list[str]:
    """Columns separated by two spaces; `right` holds the indexes of right-aligned columns.

    The last column is never padded (it holds free text); `rule` draws dashes under the header.
    """
    table = [[str(c) for c in header], *[[str(c) for c in row] for row in rows]]
    count = len(header)
    widths = [max(len(row[i]) for row in table) for i in range(count)]

    def line(cells: Sequence[str]) -> str:
        out = []
        for i, cell in enumerate(cells):
            if i == count - 1 and i not in right:
                out.append(cell)
            else:
                out.append(cell.rjust(widths[i]) if i in right else cell.ljust(widths[i]))
        return "  ".join(out).rstrip()

    lines = [line(table[0])]
    if rule:
        lines.append(line(["-" * w for w in widths]))
    return [*lines, *(line(row) for row in table[1:])]


def md(text: Any) -> str:
    """Text safe inside a Markdown table cell (and inline text): `\\`, `|` escaped, one line."""
    return shown(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def code(text: str) -> str:
    """Inline Markdown code; backticks, which cannot be escaped inside it, are dropped."""
    return f"`{text.replace('`', '')}`"


def document(kind: str, model: str | None, fields: Mapping[str, Any],
             tracking_uri: str | None = None) -> dict[str, Any]:
    """A `--json` document: schema_version and kind first, then its own fields (and the server)."""
    head: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "kind": kind}
    if model is not None:
        head["model"] = model
    head.update(fields)
    if tracking_uri is not None:
        head["tracking_uri"] = redact(tracking_uri)
    return head


def dumps(value: Any, *, sort_keys: bool = False, ascii_only: bool = False) -> str:
    """JSON text as every command prints it (no NaN: callers pass values through `number`)."""
    return json.dumps(value, indent=2, ensure_ascii=ascii_only, allow_nan=False,
                      sort_keys=sort_keys)
