"""The write-ahead journal in MLflow: the intent tag on a registered model, and the record runs
that carry an operation's id (promotion.engine.intent says what they mean)."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING

from promotion.engine.intent import INTENT_TAG, Intent, standing
from promotion.engine.records import OPERATION
from promotion.registry.client import registry_errors, unless_missing
from promotion.registry.records import search_records
from promotion.registry.versions import registered_model

if TYPE_CHECKING:
    from mlflow import MlflowClient


@dataclass(frozen=True)
class ModelState:
    """A registered model's aliases, its tags (the rollout states) and the intent left on it,
    read in one request."""

    aliases: dict[str, str]
    intent: Intent | None
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def standing(self) -> str | None:
        """Where the intent's operation stands now (promotion.engine.intent.standing)."""
        return None if self.intent is None else standing(self.intent, self.aliases, self.tags)


def read_state(client: MlflowClient, model: str) -> ModelState:
    rm = registered_model(client, model)
    tags = dict(rm.tags or {})
    intent = Intent.from_json(tags[INTENT_TAG]) if INTENT_TAG in tags else None
    return ModelState({str(k): str(v) for k, v in (rm.aliases or {}).items()}, intent,
                      {str(k): str(v) for k, v in tags.items()})


def write_intent(client: MlflowClient, intent: Intent) -> None:
    with registry_errors(f"recording the intent of a {intent.kind} of model {intent.model!r}"):
        client.set_registered_model_tag(intent.model, INTENT_TAG, intent.to_json())


def clear_intent(client: MlflowClient, model: str) -> None:
    with registry_errors(f"clearing the intent on model {model!r}"):
        unless_missing(partial(client.delete_registered_model_tag, model, INTENT_TAG))


def operation_runs(client: MlflowClient, model: str, operation: str) -> list[str]:
    """The ids of the record runs of one operation, oldest first (a retried create can leave
    two)."""
    runs = search_records(client, model, f"tags.`{OPERATION}` = '{operation}'",
                          what="reading the decision records of an operation",
                          order_by="attributes.start_time ASC", limit=20)
    return [str(r.info.run_id) for r in runs]


def delete_run(client: MlflowClient, run_id: str) -> None:
    """Remove a duplicate record run (MLflow keeps it, marked deleted; history skips it)."""
    with registry_errors("removing a duplicate decision record"):
        client.delete_run(run_id)
