"""Scoring shadow copies: as few model calls as possible, each copy getting its own rows back.

Used by the shadow mirror's thread (promotion.serve.shadow) and by the shadow worker process
(promotion.serve.shadowproc). Copies whose parsed input is a table with the same columns are
concatenated and predicted in one call, then split back; a batch the canary refuses is scored
copy by copy, so one bad copy fails only itself; a copy whose input is not a table (or had
params) is scored alone from its body, parsed with the canary's own signature.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from promotion.serve.follower import Served
from promotion.serve.protocol import RequestError, Scoring, predict, row_count, score

logger = logging.getLogger("promotion.serving")


@dataclass(frozen=True)
class Item:
    """What it takes to score a mirrored request again and log it (plain values: it crosses
    to the shadow worker process)."""

    body: bytes
    content_type: str | None
    request_id: str
    arrived: datetime
    sampled: bool  # whether the request's own rows were logged: the copy's are iff they were
    data: Any = None  # the request's parsed input (None: parse `body` again)


Scored = tuple[Item, Scoring, int, float]  # (item, what scoring saw, status, seconds)


def score_items(served: Served, items: Sequence[Item],
                request_timeout: float) -> tuple[list[Scored], int]:
    """Every item scored (tables of the same columns in one call each, the rest alone), and
    how many calls scored several at once."""
    groups: dict[tuple[str, ...], list[Item]] = {}
    alone: list[Item] = []
    for item in items:
        columns = _columns(item.data)
        if columns is None:
            alone.append(item)
        else:
            groups.setdefault(columns, []).append(item)
    out: list[Scored] = []
    batches = 0
    for group in groups.values():
        together = _together(served, group, request_timeout) if len(group) > 1 else None
        if together is None:  # one item, or the canary refused the batch: each on its own
            alone.extend(group)
        else:
            out.extend(together)
            batches += 1
    out.extend(_one(served, item, request_timeout) for item in alone)
    return out, batches


def _together(served: Served, group: list[Item], request_timeout: float) -> list[Scored] | None:
    """One model call for the group, split back per item; None when the call fails."""
    import pandas as pd

    frames = [item.data for item in group]
    started = time.perf_counter()
    try:
        raw = predict(served, pd.concat(frames, ignore_index=True), None)
        parts = split(raw, [len(frame) for frame in frames])
    except Exception:
        return None
    seconds = time.perf_counter() - started
    status = 504 if seconds > request_timeout else 200
    return [(item, Scoring(data=frame, rows=len(frame), raw=part), status, seconds)
            for item, frame, part in zip(group, frames, parts, strict=True)]


def _one(served: Served, item: Item, request_timeout: float) -> Scored:
    """(the item, what scoring saw, the status the canary would have answered, seconds)."""
    seen = Scoring()
    started = time.perf_counter()
    try:
        if _columns(item.data) is not None:
            seen.data, seen.rows = item.data, row_count(item.data)
            seen.raw = predict(served, item.data, None)
        else:
            score(served, item.body, item.content_type, seen)
        status = 200
    except RequestError as exc:
        status = exc.status
    except Exception:
        logger.warning("shadow: canary version %s failed to score a copy of request %s",
                       served.version, item.request_id, exc_info=True)
        status = 500
    seconds = time.perf_counter() - started
    if status == 200 and seconds > request_timeout:
        status = 504  # what a client would have got
    return item, seen, status, seconds


def _columns(data: Any) -> tuple[str, ...] | None:
    """The columns of a parsed table input (its batching key), or None for anything else."""
    if type(data).__name__ != "DataFrame" or not hasattr(data, "columns"):
        return None
    return tuple(str(c) for c in data.columns)


def split(raw: Any, counts: Sequence[int]) -> list[Any]:
    """The predictions of one call over concatenated inputs, cut back into each input's part
    (an array, a list, a Series or DataFrame by position, or a dict of columns); ValueError
    when they do not add up."""
    import numpy as np
    import pandas as pd

    total = sum(counts)
    pieces = list(itertools.pairwise(np.cumsum([0, *counts])))
    if isinstance(raw, pd.DataFrame | pd.Series):
        if len(raw) != total:
            raise ValueError(f"{len(raw)} predictions for {total} rows")
        return [raw.iloc[a:b].reset_index(drop=True) for a, b in pieces]
    if isinstance(raw, dict):
        if any(len(v) != total for v in raw.values()):
            raise ValueError(f"predictions do not cover the {total} rows")
        return [{k: v[a:b] for k, v in raw.items()} for a, b in pieces]
    if isinstance(raw, np.ndarray | list) and len(raw) == total:
        return [raw[a:b] for a, b in pieces]
    raise ValueError(f"cannot split {type(raw).__name__} predictions by request")
