"""The reference profile of a trained candidate: its holdout inputs and its predictions on them.

`promote watch` compares a version's live traffic with this profile, so it is made where the
version is: inside the training run, from the same holdout rows the metrics come from. Making
it must never cost the candidate: a profile that cannot be built leaves the training as it
was, and the run says why in the tag PROFILE_TAG ("ok" when the artifact is there), which
`promote train` also reports. Uploading it is one more write to the run, failing (exit 3) like
every other write of the training.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from promotion.errors import redact
from promotion.monitoring.profile import build_profile
from promotion.registry.profiles import PROFILE_ARTIFACT

if TYPE_CHECKING:
    import pandas as pd

PROFILE_TAG = "promotion.profile"  # run tag: "ok", or why the run has no reference profile
MAX_REASON = 500  # characters of the reason kept in the tag


def profile_source(data: str) -> str:
    """How a training profile is described: what it was made of."""
    return f"training: {data} holdout"


def log_reference_profile(inputs: pd.DataFrame, predictions: Any, *, data: str) -> str:
    """Build the profile of `inputs` and `predictions` and log it to the active run as
    PROFILE_ARTIFACT; tag the run with the outcome and return it ("ok" or the reason)."""
    import mlflow

    try:
        document = build_profile(inputs, predictions, source=profile_source(data)).to_json()
    except Exception as exc:  # any failure to profile is recorded, and the training goes on
        status = redact(f"not built: {type(exc).__name__}: {exc}")[:MAX_REASON]
    else:
        mlflow.log_text(document.decode("utf-8"), PROFILE_ARTIFACT)
        status = "ok"
    mlflow.set_tag(PROFILE_TAG, status)
    return status
