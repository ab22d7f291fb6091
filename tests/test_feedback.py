"""`promote feedback MODEL FILE`: labels from CSV or Parquet joined to a real SQLite log.

Every bad file is one clear error (exit 2) naming the file, the line and the column, and writes
nothing; the log is read back through the same store `promote watch` uses.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from promotion.cli import run
from promotion.monitoring.logstore import LogStore, RequestRecord

MODEL = "fraud"
EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture
def log(tmp_path: Path) -> LogStore:
    store = LogStore(f"sqlite:///{tmp_path / 'log.db'}")
    store.migrate()
    yield store
    store.close()


def serve(store: LogStore, version: str, n: int, *, at: datetime) -> list[str]:
    """`n` logged one-row requests of `version`; their request ids."""
    ids, records = [], []
    for i in range(n):
        ids.append(uuid.uuid4().hex)
        frame = pd.DataFrame({"amount": [float(i)]})
        records.append(RequestRecord(
            request_id=ids[-1], at=at + timedelta(seconds=i), model=MODEL, alias="Production",
            version=version, rows=1, latency_ms=1.0, outcome="ok", status=200, inputs=frame,
            predictions=np.array([i * 2.0])))
    store.write(records)
    return ids


def labelled(store: LogStore, version: str) -> tuple[np.ndarray, np.ndarray]:
    return store.labelled(MODEL, version, EPOCH - timedelta(days=1), EPOCH + timedelta(days=9))


def feedback(store: LogStore, path: Path, *extra: str) -> int:
    return run(["feedback", MODEL, str(path), "--log-uri", store.where, *extra])


def test_labels_join_the_version_that_served_each_request(log, tmp_path, capsys):
    old = serve(log, "1", 3, at=EPOCH)
    new = serve(log, "2", 2, at=EPOCH + timedelta(hours=1))
    path = tmp_path / "labels.csv"
    pd.DataFrame({"request_id": [new[1], old[0], old[2]], "label": [5.0, 1.5, 2.5]}).to_csv(
        path, index=False)
    assert feedback(log, path) == 0
    assert "wrote 3 label(s) for fraud (version 1: 2, version 2: 1)" in capsys.readouterr().out
    predictions, labels = labelled(log, "1")
    assert predictions.tolist() == [0.0, 4.0] and labels.tolist() == [1.5, 2.5]
    assert labelled(log, "2")[1].tolist() == [5.0]


def test_parquet_with_rows_and_class_labels(log, tmp_path):
    ids = serve(log, "1", 2, at=EPOCH)
    path = tmp_path / "labels.parquet"
    pd.DataFrame({"request_id": ids, "row": [0, 0], "label": ["fraud", "ok"]}).to_parquet(path)
    assert feedback(log, path) == 0
    assert labelled(log, "1")[1].tolist() == ["fraud", "ok"]


@pytest.mark.parametrize(("rows", "columns", "words"), [
    ([["nope", 1.0]], ["request_id", "label"],
     "line 2 (request 'nope', row 0): request 'nope' is not in"),
    ([["ID0", 1.0], ["ID0", 2.0]], ["request_id", "label"], "line 3 (request"),
    ([["ID0", ""]], ["request_id", "label"], "line 2: column 'label' is empty"),
    ([["ID0", "nan"]], ["request_id", "label"], "line 2: column 'label' is not a finite number"),
    ([["ID0", 1.0, "x"]], ["request_id", "label", "row"], "line 2: column 'row' must be a row"),
    ([["ID0"]], ["request_id"], "missing column 'label'"),
    ([[1.0]], ["label"], "needs a 'request_id' column"),
    ([], ["request_id", "label"], "no labels in the file"),
])
def test_a_bad_file_is_one_clear_error_and_writes_nothing(log, tmp_path, capsys, rows, columns,
                                                          words):
    ids = serve(log, "1", 2, at=EPOCH)
    rows = [[ids[0] if cell == "ID0" else cell for cell in row] for row in rows]
    path = tmp_path / "labels.csv"
    pd.DataFrame(rows, columns=columns).to_csv(path, index=False)
    assert feedback(log, path) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(path) in err and words in err, err
    assert len(labelled(log, "1")[1]) == 0


def test_a_row_labelled_before_is_refused_and_the_batch_is_not_written(log, tmp_path, capsys):
    ids = serve(log, "1", 3, at=EPOCH)
    first = tmp_path / "first.csv"
    pd.DataFrame({"request_id": [ids[0]], "label": [1.0]}).to_csv(first, index=False)
    assert feedback(log, first) == 0
    again = tmp_path / "again.csv"
    pd.DataFrame({"request_id": [ids[1], ids[0]], "label": [2.0, 3.0]}).to_csv(again,
                                                                              index=False)
    assert feedback(log, again) == 2
    assert "already labelled" in capsys.readouterr().err
    assert labelled(log, "1")[1].tolist() == [1.0]  # ids[1] was not written either


def test_not_a_table_file_and_an_unreachable_log(log, tmp_path, capsys):
    text = tmp_path / "labels.txt"
    text.write_text("request_id,label\n")
    assert feedback(log, text) == 2
    assert "expected a .csv or .parquet file" in capsys.readouterr().err
    path = tmp_path / "labels.csv"
    pd.DataFrame({"request_id": ["x"], "label": [1.0]}).to_csv(path, index=False)
    dead = "postgresql://postgres@127.0.0.1:1/nowhere"
    assert run(["feedback", MODEL, str(path), "--log-uri", dead]) == 3


def test_a_reused_request_id_or_another_models_request_is_refused(log, tmp_path, capsys):
    """A label names one request: an id a client sent twice, or one another model served, is
    refused instead of joining the wrong prediction."""
    (reused,) = serve(log, "1", 1, at=EPOCH)
    log.write([RequestRecord(request_id=reused, at=EPOCH + timedelta(minutes=1), model=MODEL,
                             alias="Production", version="1", rows=1, latency_ms=1.0,
                             outcome="ok", status=200)])
    other = uuid.uuid4().hex
    log.write([RequestRecord(request_id=other, at=EPOCH, model="churn", alias="Production",
                             version="1", rows=1, latency_ms=1.0, outcome="ok", status=200)])
    for request_id, words in ((reused, "was logged 2 times"), (other, "served by model 'churn'")):
        path = tmp_path / "labels.csv"
        pd.DataFrame({"request_id": [request_id], "label": [1.0]}).to_csv(path, index=False)
        assert feedback(log, path) == 2
        assert words in capsys.readouterr().err
    assert len(labelled(log, "1")[1]) == 0
