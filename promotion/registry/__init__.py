"""The only code that talks to MLflow's tracking server and model registry.

    client     connect (bounded retries, privacy defaults), the error mapping to exit codes
    versions   reads: aliases, versions, their runs' metrics, searches (few calls, no scans)
    writes     writes: registering versions, alias moves, version tags
    records    decision records: runs in the `promotion-decisions` experiment
    journal    the write-ahead intent on a registered model; the runs of one operation
    lease      the per-model lease every alias-moving command holds
    models     a version's artifacts as files (download by number, measure)
    bounded    reads with a timeout of their own: what a serving endpoint checks on each poll
    internals  every use of an MLflow internal, each behind one named function
    webhooks   the MLflow webhooks that point the central node at serving endpoints

Callers use this facade (`registry.alias_target(client, ...)`); the modules below never import it.
"""

from __future__ import annotations

from promotion.registry.client import connect, describe_uri, registry_errors
from promotion.registry.versions import (
    PARALLEL_REQUESTS,
    alias_target,
    alias_version,
    get_version,
    last_versions,
    latest_version,
    name_clause,
    parallel,
    quote,
    registered_model,
    resolve,
    run_metrics,
    version_facts,
    versions_tagged,
)
from promotion.registry.webhooks import (
    DEFAULT_EVENTS,
    EnsureResult,
    WebhookSpec,
    WebhookState,
    WebhookTest,
    delete_webhook,
    ensure_webhook,
    find_webhooks,
    list_webhooks,
    send_test_event,
    webhook_spec,
)
from promotion.registry.writes import (
    create_version,
    delete_alias,
    ensure_registered_model,
    point_alias,
    set_alias,
    set_tags,
)

__all__ = [
    "DEFAULT_EVENTS",
    "PARALLEL_REQUESTS",
    "EnsureResult",
    "WebhookSpec",
    "WebhookState",
    "WebhookTest",
    "alias_target",
    "alias_version",
    "connect",
    "create_version",
    "delete_alias",
    "delete_webhook",
    "describe_uri",
    "ensure_registered_model",
    "ensure_webhook",
    "find_webhooks",
    "get_version",
    "last_versions",
    "latest_version",
    "list_webhooks",
    "name_clause",
    "parallel",
    "point_alias",
    "quote",
    "registered_model",
    "registry_errors",
    "resolve",
    "run_metrics",
    "send_test_event",
    "set_alias",
    "set_tags",
    "version_facts",
    "versions_tagged",
    "webhook_spec",
]
