"""Watch events trimmed before kopf queues them: every cache built from a trimmed event is the one
built from the whole event, kopf's filters still see what they match on, and most bytes are gone."""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import AsyncIterator
from typing import Any

from kopf._cogs.clients import fetching, watching

from voxtral_operator import cache, status, trimming
from voxtral_operator.api import models
from voxtral_operator.diffing import APPLIED_HASH_ANNOTATION
from voxtral_operator.k8s import resources
from voxtral_operator.k8s.client import FIELD_MANAGER

from .test_cache import DEPLOYMENT

LABELS = {"app.kubernetes.io/managed-by": "voxtral-operator", "app.kubernetes.io/instance": "vx"}
POD: dict[str, Any] = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {
        "name": "vx-7c9f5d8b6-q2xkz",
        "namespace": "team",
        "uid": "p1",
        "resourceVersion": "77",
        "labels": {**LABELS, "voxtral.dev/pool": "reserved"},
        "annotations": {"kubectl.kubernetes.io/restartedAt": "2026-01-01T00:00:00Z"},
        "ownerReferences": [{"kind": "ReplicaSet", "name": "vx-7c9f5d8b6", "uid": "r1", "controller": True}],
        "managedFields": [
            {"manager": "kube-controller-manager", "operation": "Update", "fieldsV1": {"f:spec": {"f:containers": {}}}},
            {"manager": "kubelet", "operation": "Update", "subresource": "status", "fieldsV1": {"f:status": {}}},
        ],
    },
    "spec": {
        "nodeName": "gpu-node-3",
        "containers": [{"name": "vllm", "image": "vllm/vllm-openai", "args": ["--model", "m"] * 40}],
        "volumes": [{"name": "cache", "persistentVolumeClaim": {"claimName": "models"}}] * 5,
    },
    "status": {
        "phase": "Running",
        "podIP": "10.0.0.7",
        "nominatedNodeName": None,
        "conditions": [
            {"type": "Ready", "status": "True", "lastTransitionTime": "2026-01-01T00:05:00Z"},
            {"type": "PodScheduled", "status": "True"},
        ],
        "containerStatuses": [
            {
                "name": "vllm",
                "ready": True,
                "started": True,
                "restartCount": 1,
                "state": {"running": {"startedAt": "2026-01-01T00:01:00Z"}},
                "lastState": {"terminated": {"reason": "OOMKilled", "exitCode": 137}},
            }
        ],
    },
}
ENDPOINT: dict[str, Any] = {
    "apiVersion": f"{models.GROUP}/{models.VERSION}",
    "kind": "VoxtralEndpoint",
    "metadata": {
        "name": "vx",
        "namespace": "team",
        "uid": "e1",
        "resourceVersion": "9",
        "generation": 2,
        "labels": {"team": "speech"},
        "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{" + '"x": 1,' * 500 + "}"},
        "managedFields": [
            {"manager": "kubectl", "operation": "Apply", "time": "t1", "fieldsV1": {"f:spec": {"f:model": {}}}},
            {"manager": "kubectl", "operation": "Update", "time": "t2", "fieldsV1": {"f:spec": {"f:replicas": {}}}},
        ],
    },
    "spec": {"model": "mistralai/Voxtral-Mini-3B-2507", "replicas": 2},
    "status": {"phase": "Ready"},
}


def _trimmed(trim: trimming.Trim, body: dict[str, Any]) -> dict[str, Any]:
    copied = copy.deepcopy(body)
    trim(copied)
    return copied


def test_a_trimmed_child_caches_as_the_whole_one_with_its_labels_and_most_bytes_gone() -> None:
    deployment = copy.deepcopy(DEPLOYMENT)
    deployment["metadata"]["labels"] = {**deployment["metadata"]["labels"], **LABELS}
    trimmed = _trimmed(trimming.trim_child, deployment)

    assert cache.child(trimmed, FIELD_MANAGER) == cache.child(deployment, FIELD_MANAGER)
    assert trimmed["metadata"]["labels"] == deployment["metadata"]["labels"]  # kopf's label filters
    for key in ("name", "namespace", "uid", "resourceVersion", "ownerReferences"):
        assert trimmed["metadata"][key] == deployment["metadata"][key], key
    assert trimmed["metadata"]["annotations"] == {APPLIED_HASH_ANNOTATION: "abc"}
    # (the operator's own field set is kept compressed: counted at its compressed size)
    assert len(json.dumps(trimmed, default=lambda packed: "x" * len(packed))) < len(json.dumps(deployment)) / 2


def test_a_child_from_a_server_without_managed_fields_is_left_whole() -> None:
    """The drift check compares values there, so it needs them all."""
    whole = copy.deepcopy(DEPLOYMENT)
    del whole["metadata"]["managedFields"]
    assert _trimmed(trimming.trim_child, whole) == whole


def test_a_trimmed_pod_summarises_as_the_whole_one() -> None:
    trimmed = _trimmed(trimming.trim_pod, POD)

    assert status.pod_summary(trimmed) == status.pod_summary(POD)
    assert trimmed["metadata"]["labels"] == POD["metadata"]["labels"]
    assert trimmed["metadata"]["uid"] == "p1"
    assert "managedFields" not in trimmed["metadata"]
    assert trimmed["spec"] == {"nodeName": "gpu-node-3"}
    assert len(json.dumps(trimmed)) < len(json.dumps(POD)) / 2
    deleting = copy.deepcopy(POD)
    deleting["metadata"]["deletionTimestamp"] = "2026-01-01T01:00:00Z"
    del deleting["spec"]["nodeName"]
    summary = status.pod_summary(_trimmed(trimming.trim_pod, deleting))
    assert summary == status.pod_summary(deleting)
    assert summary["deleting"]
    assert not summary["holdsNode"]


def test_a_trimmed_endpoint_caches_as_the_whole_one() -> None:
    trimmed = _trimmed(trimming.trim_endpoint, ENDPOINT)

    assert cache.endpoint(trimmed) == cache.endpoint(ENDPOINT)
    assert trimmed["spec"] == ENDPOINT["spec"]
    assert trimmed["metadata"]["labels"] == {"team": "speech"}
    assert len(json.dumps(trimmed)) < len(json.dumps(ENDPOINT)) / 2


def test_every_watched_kind_of_the_operator_is_trimmed_and_nothing_else() -> None:
    watched = {(r.group, r.version, r.plural) for r in (*resources.CHILDREN, resources.PODS)}
    watched.add((models.GROUP, models.VERSION, models.PLURAL))
    assert set(trimming.TRIMS) == watched  # namespaces and CRDs pass whole: kopf's observer reads CRDs' spec


def test_the_stream_trims_objects_in_place_and_passes_bookmarks_on() -> None:
    listing = [copy.deepcopy(POD), copy.deepcopy(POD)]

    async def events() -> AsyncIterator[Any]:
        for body in listing:
            yield {"type": None, "object": body}
        yield watching.Bookmark.LISTED
        yield {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "80"}}}

    async def run() -> list[Any]:
        return [event async for event in trimming.trimmed(events(), trimming.trim_pod)]

    seen = asyncio.run(run())
    assert seen[2] is watching.Bookmark.LISTED
    assert seen[3]["object"]["metadata"] == {"resourceVersion": "80"}
    # The listing's own objects are cut, so its originals are freed while it is read.
    assert all("managedFields" not in body["metadata"] for body in listing)
    assert [event["object"] for event in seen[:2]] == listing


def test_install_makes_kopfs_watchers_trim_and_take_turns() -> None:
    try:
        trimming.install()
        # kopf calls watching.infinite_watch(...) and fetching.fetch_objs(...), looked up at call time.
        from kopf._core.reactor import queueing

        assert queueing.watching.infinite_watch is trimming._infinite_watch
        assert watching.fetching.fetch_objs is trimming._fetch_objs
    finally:
        watching.infinite_watch = trimming.STOCK_INFINITE_WATCH
        fetching.fetch_objs = trimming.STOCK_FETCH_OBJS
