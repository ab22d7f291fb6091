"""Reference profiles on the real MLflow server: stored on a run, read back, made by training."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from helpers import experiment_id
from test_train import CANDIDATES, DIABETES, _expected

from promotion.cli import run
from promotion.errors import InvalidInput, RegistryError
from promotion.monitoring.profile import Profile, build_profile
from promotion.registry.client import connect
from promotion.registry.profiles import PROFILE_ARTIFACT, load_profile, save_profile
from promotion.training.profiling import PROFILE_TAG, log_reference_profile


def _run(client) -> str:
    created = client.create_run(experiment_id(client))
    client.update_run(created.info.run_id, status="FINISHED")
    return str(created.info.run_id)


def _profile_bytes() -> bytes:
    frame = pd.DataFrame({"x": np.linspace(0, 1, 200), "c": ["a", "b"] * 100})
    return build_profile(frame, np.linspace(5, 6, 200), source="test: a frame").to_json()


@pytest.mark.mlflow
def test_a_saved_profile_loads_back_byte_for_byte(client):
    run_id = _run(client)
    data = _profile_bytes()
    save_profile(client, run_id, data)
    assert load_profile(client, run_id) == data
    listed = [a.path for a in client.list_artifacts(run_id, "promotion")]
    assert listed == [PROFILE_ARTIFACT]
    assert Profile.from_json(load_profile(client, run_id) or b"").source == "test: a frame"

    newer = _profile_bytes().replace(b"test: a frame", b"test: again")
    save_profile(client, run_id, newer)  # a second save replaces the first
    assert load_profile(client, run_id) == newer


@pytest.mark.mlflow
def test_a_run_without_the_artifact_has_no_profile(client, tmp_path):
    bare = _run(client)
    assert load_profile(client, bare) is None
    other = _run(client)  # other files, even in the same folder, are not a profile
    (tmp_path / "notes.txt").write_text("not a profile")
    client.log_artifact(other, str(tmp_path / "notes.txt"), artifact_path="promotion")
    assert load_profile(client, other) is None


@pytest.mark.mlflow
def test_an_unknown_run_is_invalid_input(client):
    with pytest.raises(InvalidInput, match="reading the reference profile of run 0000"):
        load_profile(client, "0000" * 8)
    with pytest.raises(InvalidInput, match="storing the reference profile"):
        save_profile(client, "0000" * 8, b"{}")


def test_an_unreachable_server_is_a_registry_error():
    client = connect("http://127.0.0.1:9")
    with pytest.raises(RegistryError) as caught:
        load_profile(client, "abc")
    assert caught.value.exit_code == 3 and "127.0.0.1:9" in str(caught.value)
    with pytest.raises(RegistryError):
        save_profile(client, "abc", b"{}")


@pytest.mark.mlflow
def test_a_trained_version_carries_the_profile_of_its_holdout(tracking_uri, client, model_name,
                                                              capsys):
    config = CANDIDATES / "linear.yaml"
    assert run(["train", str(config), "--model-name", model_name, "--json"]) == 0
    (trained,) = json.loads(capsys.readouterr().out)["trained"]
    assert trained["profile"] == "ok"
    version = client.get_model_version(model_name, trained["version"])
    assert client.get_run(version.run_id).data.tags[PROFILE_TAG] == "ok"

    data = load_profile(client, version.run_id)
    assert data is not None
    profile = Profile.from_json(data, where="the trained version's profile")
    assert [f.name for f in profile.features] == list(DIABETES.columns)
    assert all(f.kind == "numeric" and f.count == 111 for f in profile.features)
    assert profile.rows == 111 and profile.source == "training: sklearn:load_diabetes holdout"
    _, x_test, predictions = _expected(config)  # computed here, not by the trainer
    assert profile.prediction.kind == "numeric"
    np.testing.assert_allclose(sorted(profile.prediction.sample), sorted(predictions),
                               rtol=1e-9)
    assert profile.feature("bmi").mean == pytest.approx(float(x_test["bmi"].mean()))


@pytest.mark.mlflow
def test_a_profile_that_cannot_be_built_is_recorded_and_the_run_goes_on(tracking_uri, client):
    import mlflow

    mlflow.set_experiment("promote-test-candidates")
    frame = pd.DataFrame({"x": [1.0, 2.0, 3.0]})
    with mlflow.start_run() as active:
        status = log_reference_profile(frame, [1.0], data="sklearn:load_diabetes")
        mlflow.log_metric("after", 1.0)  # the run is still usable
    assert status.startswith("not built: InvalidInput: predictions: 1 values for 3 input rows")
    logged = client.get_run(active.info.run_id)
    assert logged.data.tags[PROFILE_TAG] == status and logged.data.metrics["after"] == 1.0
    assert load_profile(client, active.info.run_id) is None
