"""Four `promote gate` processes racing on one model: the registry ends consistent.

MLflow has no compare-and-set on aliases, so the gate re-reads the alias after its write-ahead
marker and stops with a conflict (exit 3) if it moved. Whatever the interleaving: the alias ends on
a version whose record says `promoted`, every candidate has a final record (none left `pending`),
and every process exits 0, 1 or 3.
"""

from __future__ import annotations

import pytest
from helpers import add_version, aliases, promote, write_policy

from promotion.engine import records as record

pytestmark = pytest.mark.mlflow


def test_four_gates_racing_on_one_model(tracking_uri, client, model_name, tmp_path):
    v1 = add_version(client, model_name, {"rmse": 1.0})
    client.set_registered_model_alias(model_name, "Production", v1)
    # Each candidate beats Production; some also beat each other, so a gate that loses the race
    # may see a better Production and reject, or see the alias move and stop on a conflict.
    candidates = [add_version(client, model_name, {"rmse": rmse})
                  for rmse in (0.9, 0.8, 0.85, 0.7)]
    policy = write_policy(tmp_path / "policy.yaml", model_name, {
        "metrics": {"rmse": {"goal": "minimize", "max_regression": 0.0}}})

    procs = [promote(["gate", str(policy), "--candidate", v]) for v in candidates]
    results = [(p.wait(timeout=180), *p.communicate()) for p in procs]
    codes = [code for code, _, _ in results]
    assert set(codes) <= {0, 1, 3}, results
    assert 0 in codes, results  # the first to re-read its alias unchanged cannot lose

    final = aliases(client, model_name)["Production"]
    assert final in candidates
    assert client.get_model_version(model_name, final).tags[record.DECISION] == "promoted"
    for version, (code, out, err) in zip(candidates, results, strict=True):
        tags = client.get_model_version(model_name, version).tags
        expected = {0: "promoted", 1: "rejected", 3: "conflict"}[code]
        assert tags[record.DECISION] == expected, (version, out, err)
        assert client.get_run(tags[record.RECORD_RUN]).data.tags[record.OUTCOME] == expected
    # Each gate that passed its re-read writes `Production-previous` = the version it displaced
    # (its `compared_to` tag), then the alias. With no compare-and-set, two gates can both pass
    # the re-read and interleave those writes, so `Production-previous` is guaranteed to be the
    # `compared_to` of SOME promoted version, and of the final one when only one gate promoted.
    promoted = [v for v, code in zip(candidates, codes, strict=True) if code == 0]
    assert final in promoted
    compared = {v: client.get_model_version(model_name, v).tags[record.COMPARED_TO]
                for v in promoted}
    previous = aliases(client, model_name).get("Production-previous")
    assert previous in compared.values(), (previous, compared)
    if len(promoted) == 1:
        assert previous == compared[final], (previous, compared)


def test_eight_gates_and_two_rollbacks_racing_under_the_lease(tracking_uri, client, model_name,
                                                              tmp_path):
    """Promote's writers of one model never interleave: each holds the model's lease, so every
    decision is recorded in full and nothing is left half-written."""
    from promotion.engine.intent import INTENT_TAG
    from promotion.registry.lease import read_lease

    v1 = add_version(client, model_name, {"rmse": 1.0})
    v2 = add_version(client, model_name, {"rmse": 0.95})
    client.set_registered_model_alias(model_name, "Production", v2)
    client.set_registered_model_alias(model_name, "Production-previous", v1)
    candidates = [add_version(client, model_name, {"rmse": 0.9 - 0.05 * i}) for i in range(8)]
    policy = write_policy(tmp_path / "policy.yaml", model_name, {
        "metrics": {"rmse": {"goal": "minimize", "max_regression": 0.0}}})
    env = {"PROMOTE_LEASE_WAIT_S": "300"}  # ten processes start at once on two cores
    procs = [promote(["gate", str(policy), "--candidate", v], env=env) for v in candidates]
    procs += [promote(["rollback", model_name], env=env) for _ in range(2)]
    results = [(p.wait(timeout=600), *p.communicate()) for p in procs]
    gate_codes = [code for code, _, _ in results[:8]]
    assert set(gate_codes) <= {0, 1, 3}, results
    assert all(code in (0, 2) for code, _, _ in results[8:]), results[8:]

    for version, (code, out, err) in zip(candidates, results, strict=False):
        tags = client.get_model_version(model_name, version).tags
        assert tags.get(record.DECISION) in {"promoted", "rejected", "conflict", "restored",
                                             "rolled_back"}, (version, code, out, err)
    final = aliases(client, model_name)["Production"]
    assert client.get_model_version(model_name, final).tags[record.DECISION] in {
        "promoted", "restored"}
    rm = client.get_registered_model(model_name)
    assert INTENT_TAG not in (rm.tags or {})
    assert read_lease(client, model_name) is None
    exp = client.get_experiment_by_name(record.EXPERIMENT)
    runs = client.search_runs([exp.experiment_id], filter_string=(
        f"tags.`{record.MODEL_KEY}` = '{record.model_key(model_name)}'"))
    assert all(r.info.status != "RUNNING" for r in runs)
    assert all(r.data.tags.get(record.OUTCOME) != "pending" for r in runs)
    # One record per process that wrote one: every gate records its decision (or conflict),
    # every rollback that moved something records it.
    rollbacks = sum(1 for code, _, _ in results[8:] if code == 0)
    assert len(runs) == 8 + rollbacks, [r.data.tags.get(record.OUTCOME) for r in runs]
