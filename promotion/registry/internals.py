"""Every use of an MLflow internal, each behind one named function that says why.

The public API is preferred everywhere else; these are the places where it is not enough. A test
(tests/test_mlflow_internals.py) imports each of them against the installed MLflow, so an upgrade
that moves or removes one fails loudly there rather than at a user's gate.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlflow import MlflowClient


def registry_writer(client: MlflowClient) -> Any:
    """The registry client underneath MlflowClient, for alias and version-tag writes.

    Why not the public setters: MlflowClient's alias and version-tag setters first fetch the whole
    registered model to refuse prompts, one extra request per write whose server-side cost grows
    with the number of versions (the server loads them all). Promote has already read the model
    through MlflowClient, whose readers refuse prompts too. Falls back on the client itself.
    """
    get = getattr(client, "_get_registry_client", None)
    return get() if get is not None else client


def artifact_repository(artifact_uri: str, tracking_uri: str) -> Any:
    """An artifact repository for a run's artifact URI, known from `create_run`.

    Why not `MlflowClient.log_artifacts`: it reads the run again to find the same URI, one more
    round trip for every decision record.
    """
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    return get_artifact_repository(artifact_uri, tracking_uri=tracking_uri)


def read_within(client: MlflowClient, api: Any, request: Any, *, timeout: float,
                retries: int) -> Any | None:
    """One registry read (a GET endpoint of MLflow's REST API, as its request message) with its
    own timeout and retries: the response message, or None when the registry is not served over
    HTTP (a local store; the caller then reads through the client).

    Why not MlflowClient: every request it makes takes its timeout and retries from process-wide
    environment variables (MLFLOW_HTTP_REQUEST_TIMEOUT, MLFLOW_HTTP_REQUEST_MAX_RETRIES), read as
    it is sent. A serving endpoint checks the registry on every poll and must learn quickly that
    it cannot, while its downloads, in the same process and at the same time, keep patient
    settings. MLflow's own request function takes both per call.
    """
    import json

    from mlflow.store.model_registry.rest_store import RestStore
    from mlflow.utils.proto_json_utils import message_to_json, parse_dict
    from mlflow.utils.rest_utils import http_request, verify_rest_response

    store = registry_writer(client).store
    if not isinstance(store, RestStore):
        return None
    endpoint, method = store._get_endpoint_from_method(api)
    if method != "GET":
        raise ValueError(f"{api.__name__} is not a read")
    response = http_request(store.get_host_creds(), endpoint, method,
                            params=json.loads(message_to_json(request)), timeout=timeout,
                            max_retries=retries)
    response = verify_rest_response(response, endpoint)
    answer = api.Response()
    parse_dict(js_dict=response.json(), message=answer)
    return answer
