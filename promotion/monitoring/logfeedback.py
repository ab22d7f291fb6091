"""Ground truth for logged requests: check a batch of labels completely, then write all or none.

A label names its row by request id and row number (the X-Request-Id the endpoint answered and
the row's position in the request), or by the value of the row-key column (`promote serve
--row-key`), which stands for the most recent logged row with that value. A batch is refused as
a whole, nothing written, when any label is malformed, names a request the log does not hold
(or one that was not scored), a row past the end of its request, a row another label of the
batch also names, or a row labelled before; the one error names up to five offenders and says
how many there were. A label joins the version that served its request, however late it comes.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from promotion.errors import InvalidInput
from promotion.monitoring.logrecords import FeedbackResult, Label
from promotion.monitoring.logschema import tables

if TYPE_CHECKING:
    from sqlalchemy import Connection, Engine

MAX_NAMED = 5  # offenders quoted in the error; the rest are counted
MAX_TEXT = 1000  # characters of a text label, a request id, a row key
_CHUNK = 500  # values per IN (...) list


@dataclass(frozen=True)
class _Target:
    index: int
    label: Label
    request_id: str
    row: int

    def describe(self) -> str:
        return _describe(self.index, self.label)


@dataclass(frozen=True)
class _Request:
    rows: int
    outcome: str
    version: str | None
    logged: int = 1  # requests logged under this id (a client may reuse an X-Request-Id)
    model: str = ""


def add_feedback(engine: Engine, labels: Sequence[Label], *, source: str,
                 model: str | None = None) -> FeedbackResult:
    """Write every label or none (InvalidInput naming the offenders). With `model`, row keys
    are looked up among that model's rows only."""
    from sqlalchemy.exc import IntegrityError

    labels = list(labels)
    if not labels:
        raise InvalidInput("no labels given: the batch is empty")
    malformed = {i: p for i, label in enumerate(labels)
                 if (p := _shape_problem(i, label)) is not None}
    for attempt in range(2):
        try:
            with engine.begin() as conn:
                return _write(conn, labels, malformed, source, model)
        except IntegrityError:
            # A batch written at the same time labelled one of these rows: check again, which
            # now names it as labelled before.
            if attempt == 1:
                raise
    raise AssertionError("unreachable")


def _write(conn: Connection, labels: list[Label], malformed: dict[int, str], source: str,
           model: str | None) -> FeedbackResult:
    problems = dict(malformed)
    valid = [(i, label) for i, label in enumerate(labels) if i not in malformed]
    keyed = _rows_by_key(conn, {lab.row_key for _, lab in valid if lab.row_key is not None},
                         model)
    targets: list[_Target] = []
    for i, label in valid:
        if label.row_key is None:
            targets.append(_Target(i, label, str(label.request_id), label.row))
        elif label.row_key in keyed:
            targets.append(_Target(i, label, *keyed[label.row_key]))
        else:
            problems[i] = f"{_describe(i, label)}: no logged row has this row key"
    requests = _requests(conn, {t.request_id for t in targets})
    labelled = _already_labelled(conn, {t.request_id for t in targets})
    for index, problem in _target_problems(targets, requests, labelled, model):
        problems.setdefault(index, problem)
    _refuse(len(labels), [problems[i] for i in sorted(problems)])
    now = datetime.now(UTC)
    conn.execute(tables().feedback.insert(), [{
        "request_id": t.request_id, "row": t.row, "received_at": now, "source": source,
        "label": float(t.label.label) if not isinstance(t.label.label, str) else None,
        "label_text": t.label.label if isinstance(t.label.label, str) else None,
        "model": requests[t.request_id].model,
    } for t in targets])
    by_version: dict[str, int] = {}
    for t in targets:
        version = str(requests[t.request_id].version)
        by_version[version] = by_version.get(version, 0) + 1
    return FeedbackResult(written=len(targets), by_version=by_version)


def _target_problems(targets: list[_Target], requests: dict[str, _Request],
                     labelled: set[tuple[str, int]],
                     model: str | None) -> Iterator[tuple[int, str]]:
    """(label index, problem) of every label whose row cannot take it."""
    seen: dict[tuple[str, int], int] = {}
    for t in targets:
        found = requests.get(t.request_id)
        first = seen.setdefault((t.request_id, t.row), t.index)
        if found is None:
            yield t.index, f"{t.describe()}: request {t.request_id!r} is not in the inference log"
        elif found.logged > 1:
            yield t.index, (f"{t.describe()}: request id {t.request_id!r} was logged "
                            f"{found.logged} times (a client reused it): a label cannot tell "
                            "which request it is about; label by row key instead")
        elif model is not None and found.model != model:
            yield t.index, (f"{t.describe()}: request {t.request_id!r} was served by model "
                            f"{found.model!r}, not {model!r}")
        elif found.outcome != "ok":
            yield t.index, (f"{t.describe()}: request {t.request_id!r} was not scored "
                            f"({found.outcome})")
        elif t.row >= found.rows:
            yield t.index, (f"{t.describe()}: row {t.row} is out of range (request "
                            f"{t.request_id!r} had {found.rows} rows)")
        elif (t.request_id, t.row) in labelled:
            yield t.index, f"{t.describe()}: already labelled"
        elif first != t.index:
            yield t.index, f"{t.describe()}: the same row as labels[{first}]"


def _shape_problem(index: int, label: Label) -> str | None:
    """What is wrong with one label on its own, or None."""
    value = label.label
    where = _describe(index, label)
    if isinstance(value, str):
        if not value.strip() or len(value) > MAX_TEXT:
            return f"{where}: a text label must have 1 to {MAX_TEXT} characters"
        if not _finite_or_text(value):  # "NaN" would be read back as a number, and spoil it
            return f"{where}: the label must be a finite number (got {value!r})"
    elif not isinstance(value, int | float) or isinstance(value, bool):
        return f"{where}: the label must be a number or a string (got {_kind(value)})"
    elif not _finite_or_text(value):
        return f"{where}: the label must be a finite number (got {str(value)[:40]})"
    for name, given in (("request_id", label.request_id), ("row_key", label.row_key)):
        if given is not None and (not isinstance(given, str) or not given
                                  or len(given) > MAX_TEXT):
            return (f"{where}: {name} must be a string of 1 to {MAX_TEXT} characters "
                    f"(got {_kind(given)})")
    if (label.request_id is None) == (label.row_key is None):
        return f"{where}: give request_id (and row) or row_key, exactly one of them"
    if not isinstance(label.row, int) or isinstance(label.row, bool) or label.row < 0:
        return f"{where}: row must be a whole number >= 0 (got {_kind(label.row)})"
    if label.row_key is not None and label.row != 0:
        return f"{where}: row goes with request_id; a row key names its row by itself"
    return None


def _kind(value: Any) -> str:
    """The JSON name of a value's kind, as the sender wrote it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list | tuple):
        return "an array"
    if isinstance(value, str):
        return "a string" if value else "an empty string"
    if isinstance(value, int | float):
        return f"the number {value}"
    return type(value).__name__


def _describe(index: int, label: Label) -> str:
    if isinstance(label.row_key, str) and label.request_id is None:
        return f"labels[{index}] (row key {label.row_key[:60]!r})"
    if isinstance(label.request_id, str):
        return f"labels[{index}] (request {label.request_id[:60]!r}, row {label.row})"
    return f"labels[{index}]"


def _refuse(total: int, problems: list[str]) -> None:
    if not problems:
        return
    named = "; ".join(problems[:MAX_NAMED])
    more = f"; and {len(problems) - MAX_NAMED} more" if len(problems) > MAX_NAMED else ""
    raise InvalidInput(f"{len(problems)} of {total} labels refused, nothing written: "
                       f"{named}{more}")


def _chunks(values: set[str]) -> Iterator[list[str]]:
    ordered = sorted(values)
    for i in range(0, len(ordered), _CHUNK):
        yield ordered[i:i + _CHUNK]


def _rows_by_key(conn: Connection, keys: set[str],
                 model: str | None) -> dict[str, tuple[str, int]]:
    """row key -> (request id, row) of the most recent logged row with it."""
    import sqlalchemy as sa

    rows = tables().rows
    found: dict[str, tuple[str, int]] = {}
    for chunk in _chunks(keys):
        where = [rows.c.row_key.in_(chunk)] + ([rows.c.model == model] if model else [])
        latest = (sa.select(rows.c.row_key, sa.func.max(rows.c.id).label("id"))
                  .where(*where).group_by(rows.c.row_key).subquery())
        query = sa.select(latest.c.row_key, rows.c.request_id, rows.c.row).join_from(
            latest, rows, rows.c.id == latest.c.id)
        for key, request_id, row in conn.execute(query):
            found[key] = (request_id, int(row))
    return found


def _requests(conn: Connection, request_ids: set[str]) -> dict[str, _Request]:
    """request id -> its most recent logged answer, and how many were logged under it."""
    import sqlalchemy as sa

    requests = tables().requests
    found: dict[str, _Request] = {}
    for chunk in _chunks(request_ids):
        # The answers only: a canary's failed attempt and a shadow copy are about the same
        # request, not other requests under a reused id.
        query = (sa.select(requests.c.request_id, requests.c.rows, requests.c.outcome,
                           requests.c.version, requests.c.model)
                 .where(requests.c.request_id.in_(chunk), requests.c.role.is_(None))
                 .order_by(requests.c.id))
        for request_id, rows, outcome, version, model in conn.execute(query):
            before = found.get(request_id)
            found[request_id] = _Request(int(rows), outcome, version,
                                         1 + (before.logged if before else 0), str(model))
    return found


def _already_labelled(conn: Connection, request_ids: set[str]) -> set[tuple[str, int]]:
    import sqlalchemy as sa

    feedback = tables().feedback
    found: set[tuple[str, int]] = set()
    for chunk in _chunks(request_ids):
        query = sa.select(feedback.c.request_id, feedback.c.row).where(
            feedback.c.request_id.in_(chunk))
        found.update((request_id, int(row)) for request_id, row in conn.execute(query))
    return found


def _finite_or_text(value: float | str) -> bool:
    """A finite number, or a text that does not read as a number: not NaN, inf or 10**400."""
    try:
        return math.isfinite(float(value))
    except ValueError:  # a class name
        return isinstance(value, str)
    except OverflowError:  # an integer beyond float range
        return False
