"""Model versions as files: download a version's artifacts by number, and measure them.

Loading them (`mlflow.pyfunc.load_model`) is left to the callers that need a model in memory
(evaluation, serving): this module only moves bytes.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from promotion.registry.client import registry_errors

if TYPE_CHECKING:
    from mlflow import MlflowClient

PROGRESS_BAR = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"


@contextmanager
def quiet_downloads() -> Iterator[None]:
    """No artifact progress bars in Promote's output (unless the user asked for them)."""
    before = os.environ.get(PROGRESS_BAR)
    os.environ.setdefault(PROGRESS_BAR, "false")
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(PROGRESS_BAR, None)


def download_version(client: MlflowClient, model: str, version: str,
                     directory: str | os.PathLike[str]) -> Path:
    """Download the artifacts of `model` version `version` into `directory`; the local path.

    The client asks its own registry where the version's artifacts are, and downloads them from
    its own tracking server: nothing depends on MLflow's process-wide URIs (a `models:/` URI
    would be resolved against the process-wide registry URI, whatever the client).
    Registry failures are RegistryError (exit 3) / InvalidInput (exit 2) as everywhere else.
    """
    import mlflow.artifacts

    Path(directory).mkdir(parents=True, exist_ok=True)
    with quiet_downloads(), registry_errors(f"downloading version {version} of model {model!r}"):
        location = client.get_model_version_download_uri(model, version)
        local = mlflow.artifacts.download_artifacts(artifact_uri=location,
                                                    dst_path=os.fspath(directory),
                                                    tracking_uri=client.tracking_uri)
    return Path(local)


def artifact_bytes(root: Path) -> int:
    """The bytes of a downloaded model's artifacts."""
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
