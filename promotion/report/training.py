"""What `promote train` prints: a block per trained candidate, and the `--json` document.

The renderer knows a trained candidate only by the fields below (`TrainedVersion`), which
promotion.training.TrainResult has: the report layer sits below training and never imports it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from promotion.report.text import SCHEMA_VERSION, dumps, grid, number, version_or_none


class TrainedVersion(Protocol):
    """A trained, registered candidate, as promotion.training.TrainResult describes it."""

    @property
    def config(self) -> str: ...
    @property
    def model(self) -> str: ...
    @property
    def version(self) -> str: ...
    @property
    def alias(self) -> str: ...
    @property
    def run_id(self) -> str: ...
    @property
    def metrics(self) -> Mapping[str, float]: ...  # holdout metrics, in the order printed
    @property
    def data_validated(self) -> bool: ...
    @property
    def data_validation(self) -> str: ...
    @property
    def data_sha256(self) -> str | None: ...
    @property
    def run_url(self) -> str | None: ...
    @property
    def profile(self) -> str | None: ...  # "ok", or why the reference profile is missing

    def to_dict(self) -> dict[str, Any]: ...


def train_lines(result: TrainedVersion) -> list[str]:
    """One candidate: the version and its alias, then its run, metrics, data and UI link."""
    metrics = "  ".join(f"{name} {value:.4f}" for name, value in result.metrics.items())
    data = "validated" if result.data_validated else f"NOT validated ({result.data_validation})"
    digest = "?" if result.data_sha256 is None else result.data_sha256
    rows = [("metrics", f"{metrics}  (holdout)"), ("data", f"{data}, sha256 {digest[:12]}")]
    if result.profile not in (None, "ok"):
        rows.append(("profile", f"NOT stored ({result.profile}): drift rules of `promote "
                                "watch` cannot judge this version"))
    if result.run_url:
        rows.append(("view", result.run_url))
    head = f"{result.model} {version_or_none(result.version)} (@{result.alias})"
    return [f"{head}  from {result.config}",
            *(f"  {line}" for line in grid(("run", result.run_id), rows))]


def train_json(trained: Sequence[TrainedVersion]) -> str:
    """`promote train --json`: schema_version, then `trained` (one object per candidate)."""
    return dumps({"schema_version": SCHEMA_VERSION,
                  "trained": [_numbers(result.to_dict()) for result in trained]}, sort_keys=True)


def _numbers(fields: dict[str, Any]) -> dict[str, Any]:
    """Non-finite metrics as the strings every `--json` document uses ("nan", "inf")."""
    return {**fields, "metrics": {k: number(v) for k, v in fields["metrics"].items()}}
