"""A version's reference profile as an artifact of its run: stored and read as bytes.

What the bytes mean (promotion.monitoring.profile.Profile.to_json / from_json) is the monitoring
layer's business; the registry only moves them. The file is `PROFILE_ARTIFACT` on the run that
produced the version (`promote train` writes it there). Uploads and downloads go through the
run's own artifact repository, found from the run's artifact URI and the client's tracking URI,
so nothing depends on MLflow's process-wide URIs. Failures map as everywhere in the registry:
an unknown run is InvalidInput (exit 2), an unreachable server RegistryError (exit 3).
"""

from __future__ import annotations

import posixpath
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from promotion.registry.client import registry_errors
from promotion.registry.internals import artifact_repository
from promotion.registry.models import quiet_downloads

if TYPE_CHECKING:
    from mlflow import MlflowClient

PROFILE_ARTIFACT = "promotion/reference_profile.json"  # artifact path on the version's run


def _repository(client: MlflowClient, run_id: str) -> Any:
    """The artifact repository of run `run_id` (reading the run is how its location is known)."""
    run = client.get_run(run_id)
    return artifact_repository(str(run.info.artifact_uri), str(client.tracking_uri))


def save_profile(client: MlflowClient, run_id: str, profile_json: bytes) -> None:
    """Store `profile_json` as the artifact PROFILE_ARTIFACT of run `run_id` (replacing one
    already there)."""
    folder, name = posixpath.split(PROFILE_ARTIFACT)
    with registry_errors(f"storing the reference profile of run {run_id}"), \
            tempfile.TemporaryDirectory(prefix="promote-profile-") as tmp:
        local = Path(tmp) / name
        local.write_bytes(profile_json)
        repo = _repository(client, run_id)
        repo.log_artifact(str(local), artifact_path=folder)


def load_profile(client: MlflowClient, run_id: str) -> bytes | None:
    """The bytes of run `run_id`'s PROFILE_ARTIFACT, or None if the run has no such artifact
    (a version trained before profiles existed, or whose profile could not be built)."""
    folder = posixpath.dirname(PROFILE_ARTIFACT)
    with quiet_downloads(), registry_errors(f"reading the reference profile of run {run_id}"), \
            tempfile.TemporaryDirectory(prefix="promote-profile-") as tmp:
        repo = _repository(client, run_id)
        listed = repo.list_artifacts(folder)
        if not any(item.path == PROFILE_ARTIFACT and not item.is_dir for item in listed):
            return None
        local = repo.download_artifacts(PROFILE_ARTIFACT, dst_path=tmp)
        return Path(local).read_bytes()
