"""What the watch caches keep: only what the operator reads, and every answer read from it unchanged."""

from __future__ import annotations

import copy
import json
import zlib
from typing import Any

from voxtral_operator import cache, diffing, status
from voxtral_operator.autoscale.loop import replicas_writer
from voxtral_operator.diffing import APPLIED_HASH_ANNOTATION
from voxtral_operator.reconcile import _owned_by

MANAGER = "voxtral-operator"
TEMPLATE = {
    "metadata": {"labels": {"app": "vx"}},
    "spec": {"containers": [{"name": "vllm", "image": "vllm", "args": ["--model", "m"] * 50}]},
}
DEPLOYMENT: dict[str, Any] = {
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "metadata": {
        "name": "vx",
        "namespace": "team",
        "uid": "d1",
        "resourceVersion": "42",
        "generation": 3,
        "labels": {"app": "vx", "app.kubernetes.io/managed-by": "voxtral-operator"},
        "annotations": {APPLIED_HASH_ANNOTATION: "abc", "deployment.kubernetes.io/revision": "1"},
        "ownerReferences": [{"kind": "VoxtralEndpoint", "name": "vx", "uid": "e1", "controller": True}],
        "managedFields": [
            {"manager": MANAGER, "operation": "Apply", "fieldsV1": {"f:spec": {"f:replicas": {}, "f:template": {}}}},
            {
                "manager": "kube-controller-manager",
                "operation": "Update",
                "subresource": "status",
                "fieldsV1": {"f:status": {"f:conditions": {}, "f:replicas": {}}},
            },
        ],
    },
    "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "vx"}}, "template": TEMPLATE},
    "status": {
        "observedGeneration": 3,
        "replicas": 2,
        "conditions": [{"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"}],
    },
}


def test_a_child_keeps_what_status_ownership_and_drift_read_and_drops_the_rest() -> None:
    cached = cache.child(DEPLOYMENT, MANAGER)

    assert "template" not in cached["spec"], cached
    assert "labels" not in cached["metadata"], cached
    assert cached["metadata"]["annotations"] == {APPLIED_HASH_ANNOTATION: "abc"}
    own, controller = cached["metadata"]["managedFields"]
    assert json.loads(zlib.decompress(own.pop("fieldsV1"))) == DEPLOYMENT["metadata"]["managedFields"][0]["fieldsV1"]
    assert own == {"manager": MANAGER, "operation": "Apply"}
    assert controller == {"manager": "kube-controller-manager", "operation": "Update", "subresource": "status"}
    assert _owned_by(cached, "e1")
    assert not _owned_by(cached, "e2")
    kwargs: dict[str, Any] = {
        "generation": 1,
        "desired_replicas": 2,
        "pods": [],
        "previous": {},
        "url": "http://vx",
        "selector": "app=vx",
        "tensor_parallel_size": 1,
        "now": "2026-01-01T00:00:00Z",
    }
    assert status.compute_status(deployment=cached, **kwargs) == status.compute_status(deployment=DEPLOYMENT, **kwargs)
    assert len(json.dumps(cached)) < len(json.dumps(DEPLOYMENT)) / 2


def test_the_drift_check_reads_the_cached_field_set_as_it_reads_the_servers() -> None:
    live = copy.deepcopy(DEPLOYMENT)
    live["metadata"]["managedFields"][0]["fieldsV1"] = {
        "f:metadata": {"f:annotations": {f"f:{APPLIED_HASH_ANNOTATION}": {}}},
        "f:spec": {"f:replicas": {}, "f:template": {}},
    }
    cached = cache.child(live, MANAGER)
    assert isinstance(cached["metadata"]["managedFields"][0]["fieldsV1"], bytes)  # kept compressed
    metadata = {"name": "vx", "namespace": "team", "annotations": {APPLIED_HASH_ANNOTATION: "abc"}}
    covered = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": metadata, "spec": {"replicas": 2}}
    beyond = {**covered, "spec": {"replicas": 2, "strategy": {"type": "Recreate"}}}
    for desired, reasons in ((covered, []), (beyond, [".spec.strategy edited or removed"])):
        assert diffing.drift(desired, cached, MANAGER) == diffing.drift(desired, live, MANAGER) == reasons
    assert cache.child(cached, MANAGER) == cached  # trimming twice (watch stream, then index) changes nothing


def test_a_child_from_a_server_without_managed_fields_is_kept_whole() -> None:
    """The drift check falls back to comparing values there, so it needs them all."""
    whole = copy.deepcopy(DEPLOYMENT)
    del whole["metadata"]["managedFields"]
    assert cache.child(whole, MANAGER) == whole


def test_an_endpoint_keeps_who_wrote_replicas_and_drops_the_rest_of_managed_fields() -> None:
    endpoint = {
        "apiVersion": "voxtral.dev/v1alpha1",
        "kind": "VoxtralEndpoint",
        "metadata": {
            "name": "vx",
            "annotations": {cache.LAST_APPLIED_ANNOTATION: "{...}" * 100, "team": "speech"},
            "managedFields": [
                {
                    "manager": "kubectl",
                    "operation": "Apply",
                    "time": "2026-01-01T00:00:00Z",
                    "fieldsV1": {"f:spec": {"f:model": {}, "f:replicas": {}}},
                },
                {
                    "manager": "voxtral-autoscaler",
                    "operation": "Update",
                    "subresource": "scale",
                    "time": "2026-01-01T00:01:00Z",
                    "fieldsV1": {"f:spec": {"f:replicas": {}}},
                },
                {"manager": MANAGER, "operation": "Apply", "subresource": "status", "fieldsV1": {"f:status": {}}},
            ],
        },
        "spec": {"model": "m", "replicas": 2},
        "status": {"phase": "Pending"},
    }
    cached = cache.endpoint(endpoint)

    assert replicas_writer(cached) == replicas_writer(endpoint) is not None
    assert cached["metadata"]["annotations"] == {"team": "speech"}
    assert cached["spec"] == endpoint["spec"]
    assert cached["status"] == endpoint["status"]
    assert "fieldsV1" not in cached["metadata"]["managedFields"][2]
