"""Drift as the operator judges it: the applied hash and field ownership, never values the server rewrote."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from voxtral_operator import cache
from voxtral_operator.diffing import drift, with_applied_hash

MANAGER = "voxtral-operator"

DESIRED = with_applied_hash(
    {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "vx", "namespace": "team", "labels": {"app": "vx"}},
        "spec": {
            "publishNotReadyAddresses": False,
            "selector": {"app": "vx"},
            "ports": [{"name": "http", "port": 8000, "protocol": "TCP", "targetPort": "http"}],
        },
    }
)

# What a real API server stored for it: publishNotReadyAddresses dropped, defaults added, and the
# operator's ownership as server-side apply recorded it (selector is an atomic map).
OWNED = {
    "f:metadata": {"f:annotations": {"f:voxtral.dev/applied-hash": {}}, "f:labels": {"f:app": {}}},
    "f:spec": {
        "f:ports": {
            'k:{"port":8000,"protocol":"TCP"}': {
                ".": {},
                "f:name": {},
                "f:port": {},
                "f:protocol": {},
                "f:targetPort": {},
            }
        },
        "f:publishNotReadyAddresses": {},
        "f:selector": {},
    },
}


def _live(owned: dict[str, Any] | None, **spec_changes: Any) -> dict[str, Any]:
    live = copy.deepcopy(DESIRED)
    live["metadata"]["uid"] = "u1"
    spec = live["spec"]
    del spec["publishNotReadyAddresses"]  # false: omitted by the server
    spec.update({"clusterIP": "10.96.0.10", "sessionAffinity": "None", "type": "ClusterIP", **spec_changes})
    if owned is not None:
        entries = [{"manager": MANAGER, "operation": "Apply", "fieldsV1": owned}]
        entries.append({"manager": "kube-controller-manager", "operation": "Update", "fieldsV1": {"f:spec": {}}})
        live["metadata"]["managedFields"] = entries
    return live


def _without(owned: dict[str, Any], *path: str) -> dict[str, Any]:
    trimmed = copy.deepcopy(owned)
    node = trimmed
    for key in path[:-1]:
        node = node[key]
    del node[path[-1]]
    return trimmed


CASES = [
    pytest.param(_live(OWNED), [], id="normalised-by-the-server-but-unchanged"),
    pytest.param(None, ["absent"], id="absent"),
    pytest.param(
        _live(_without(OWNED, "f:spec", "f:selector"), selector={"x": "y"}),
        [".spec.selector edited or removed"],
        id="hand-edited-field-moved-to-another-manager",
    ),
    pytest.param(
        # The server prunes a set emptied of its owned entries, so a list that lost its one port goes whole.
        _live(_without(OWNED, "f:spec", "f:ports"), ports=[{"name": "http", "port": 9000, "protocol": "TCP"}]),
        [".spec.ports edited or removed"],
        id="list-no-longer-owned",
    ),
    pytest.param(
        _live(
            {
                **OWNED,
                "f:spec": {**OWNED["f:spec"], "f:ports": {'k:{"port":9000,"protocol":"TCP"}': {".": {}}}},
            }
        ),
        [".spec.ports[0] edited or removed"],
        id="owned-list-entry-is-another-one",
    ),
    pytest.param(_live({}), ["no fields owned by voxtral-operator"], id="taken-over-by-a-forced-apply"),
    pytest.param(_live(None), ["values differ"], id="no-managed-fields-values-compared"),
]


@pytest.mark.parametrize(("live", "why"), CASES)
def test_drift(live: dict[str, Any] | None, why: list[str]) -> None:
    assert drift(DESIRED, live, MANAGER) == why


def test_spec_change_is_drift_whatever_the_ownership() -> None:
    changed = with_applied_hash({**copy.deepcopy(DESIRED), "spec": {**DESIRED["spec"], "selector": {"app": "other"}}})
    assert drift(changed, _live(OWNED), MANAGER) == ["spec changed"]


def test_no_managed_fields_and_equal_values_is_no_drift() -> None:
    live = copy.deepcopy(DESIRED)
    assert drift(DESIRED, live, MANAGER) == []


@pytest.mark.parametrize(("live", "why"), [case for case in CASES if case.values[0] is not None])
def test_drift_reads_the_same_from_the_watch_caches_trimmed_copy(live: dict[str, Any], why: list[str]) -> None:
    cached = cache.child(live, MANAGER)
    assert drift(DESIRED, cached, MANAGER) == why, f"cached as {cached}"
