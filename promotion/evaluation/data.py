"""The evaluation set: the rows both versions are scored on, read, fingerprinted and checked.

The set is fingerprinted (sha256 of the file's bytes, parsed from those very bytes; for
`sklearn:<loader>` sources of a canonical CSV of the holdout) and the fingerprint travels with
every decision. Any problem with it is an InvalidInput at the policy's `evaluation` key.

pandas and scikit-learn are imported inside functions.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from promotion.evaluation.errors import first_line, policy_error
from promotion.policy.model import Evaluation, Policy

if TYPE_CHECKING:
    import pandas as pd

MIN_ROWS = 2
SKLEARN_PREFIX = "sklearn:"
_SHOWN_ROWS = 5  # rows with missing values listed in an error


@dataclass(frozen=True)
class EvaluationSet:
    """The pinned rows: model inputs, the true values, and the fingerprint of what was read."""

    features: pd.DataFrame
    target: np.ndarray
    sha256: str
    source: str  # the file path or sklearn:<loader>, as the policy names it

    @property
    def rows(self) -> int:
        return len(self.target)


def load_evaluation_set(policy: Policy) -> EvaluationSet:
    """Read, fingerprint and check the policy's evaluation set."""
    evaluation = section(policy)
    if evaluation.data.startswith(SKLEARN_PREFIX):
        frame, sha256 = _load_sklearn(policy, evaluation)
        lines = False
    else:
        frame, sha256 = _load_file(policy, evaluation)
        lines = evaluation.data.lower().endswith(".csv")
    return _split(policy, evaluation, frame, sha256, lines)


def section(policy: Policy) -> Evaluation:
    if policy.evaluation is None:
        raise policy_error(policy, ("evaluation",),
                           "missing: source: evaluation metrics and budgets need an evaluation "
                           "section naming the data both versions are scored on")
    return policy.evaluation


def data_path(policy: Policy, evaluation: Evaluation) -> Path:
    """The data file: absolute as the policy loader resolves it; else relative to the policy."""
    path = Path(evaluation.data)
    return path if path.is_absolute() else Path(policy.path).resolve().parent / path


def _load_file(policy: Policy, evaluation: Evaluation) -> tuple[pd.DataFrame, str]:
    import pandas as pd

    key = ("evaluation", "data")
    path = data_path(policy, evaluation)
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".parquet"):
        raise policy_error(policy, key, f"expected a .csv or .parquet file, got {path.name!r}")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise policy_error(policy, key, f"file not found: {path}") from None
    except OSError as exc:
        raise policy_error(policy, key, f"cannot read {path}: {exc.strerror or exc}") from None
    # Parse the bytes that were hashed: the fingerprint is of exactly what is scored.
    try:
        if suffix == ".csv":
            frame = pd.read_csv(io.BytesIO(data), float_precision="round_trip")
        else:
            frame = pd.read_parquet(io.BytesIO(data))
    except ImportError as exc:
        raise policy_error(policy, key, f"reading {path.name} needs a Parquet engine: "
                                        f"{first_line(str(exc))}") from None
    except Exception as exc:  # pandas and pyarrow raise many types for a malformed file
        kind = "CSV" if suffix == ".csv" else "Parquet"
        raise policy_error(policy, key, f"cannot read {path} as {kind}: "
                                        f"{first_line(str(exc)) or type(exc).__name__}") from None
    return frame, hashlib.sha256(data).hexdigest()


def _load_sklearn(policy: Policy, evaluation: Evaluation) -> tuple[pd.DataFrame, str]:
    """The same holdout the trainer scores on: train_test_split(test_size, random_state=seed)."""
    from sklearn import datasets
    from sklearn.model_selection import train_test_split

    name = evaluation.data.removeprefix(SKLEARN_PREFIX)
    loader = getattr(datasets, name, None) if name.startswith("load_") else None
    if loader is None:
        raise policy_error(policy, ("evaluation", "data"),
                           f"unknown scikit-learn dataset {name!r}")
    test_size = evaluation.test_size if evaluation.test_size is not None else 0.25
    frame = loader(as_frame=True).frame
    _, holdout = train_test_split(frame, test_size=test_size, random_state=evaluation.seed)
    return holdout, frame_sha256(holdout)


def frame_sha256(frame: pd.DataFrame) -> str:
    """The fingerprint of a frame: sha256 of its canonical CSV.

    The canonical CSV (no index, `\\n` line ends, floats in round-trip precision) is also how a
    pinned file is written from such a frame, so a file and the source it was cut from share
    one fingerprint.
    """
    return hashlib.sha256(canonical_csv(frame)).hexdigest()


def canonical_csv(frame: pd.DataFrame) -> bytes:
    return frame.to_csv(index=False, lineterminator="\n").encode("utf-8")


def _split(policy: Policy, evaluation: Evaluation, frame: pd.DataFrame, sha256: str,
           lines: bool) -> EvaluationSet:
    source = evaluation.data
    if evaluation.target not in frame.columns:
        columns = ", ".join(map(str, list(frame.columns)[:20]))
        more = f", ... ({frame.shape[1]} in all)" if frame.shape[1] > 20 else ""
        raise policy_error(policy, ("evaluation", "target"),
                           f"no column {evaluation.target!r} in {source} "
                           f"(columns: {columns}{more})")
    if frame.shape[1] < 2:
        raise policy_error(policy, ("evaluation", "data"),
                           f"{source} has no input columns besides the target")
    if len(frame) < MIN_ROWS:
        raise policy_error(policy, ("evaluation", "data"),
                           f"{source} has {len(frame)} rows; a bootstrap needs at least {MIN_ROWS}")
    missing = frame.isna().any(axis=1).to_numpy()
    if missing.any():
        where = np.flatnonzero(missing)
        # CSV: the header is line 1, so data row i (0-based) is on line i + 2.
        unit, numbers = ("line", where + 2) if lines else ("row", where + 1)
        unit += "s" if len(where) > 1 else ""
        shown = ", ".join(str(int(i)) for i in numbers[:_SHOWN_ROWS])
        more = ", ..." if len(where) > _SHOWN_ROWS else ""
        raise policy_error(policy, ("evaluation", "data"),
                           f"{len(where)} of {len(frame)} rows of {source} have missing values "
                           f"({unit} {shown}{more}); a pinned evaluation set must be complete")
    features = frame.drop(columns=[evaluation.target]).reset_index(drop=True)
    target = frame[evaluation.target].to_numpy()
    return EvaluationSet(features, target, sha256, source)
