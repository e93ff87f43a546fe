"""The children's watch cache (children.py): what kopf's watch stream of a child kind leaves in it,
what reaches kopf, and which changes reach the reconciler."""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import AsyncIterator
from typing import Any

from kopf._cogs.clients import watching
from kopf._cogs.structs import references

from voxtral_operator import children, render, status
from voxtral_operator.trimming import trim_child

LISTED = watching.Bookmark.LISTED


def _child(uid: str, name: str, instance: str | None, version: str = "1", namespace: str = "team-a") -> dict[str, Any]:
    labels = {render.LABEL_MANAGED_BY: render.MANAGED_BY}
    if instance is not None:
        labels[render.LABEL_INSTANCE] = instance
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": uid,
            "resourceVersion": version,
            "labels": labels,
            "managedFields": [
                {"manager": "voxtral-operator", "operation": "Apply", "fieldsV1": {"f:spec": {"f:ports": {}}}},
                {"manager": "kube-controller-manager", "operation": "Update", "fieldsV1": {"f:status": {}}},
            ],
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "x" * 1000},
        },
        "spec": {"clusterIP": "10.96.0.7", "ports": [{"port": 8000}], "selector": {"a": "b"}},
    }


async def _events(*events: Any) -> AsyncIterator[Any]:
    for event in events:
        yield event


def _run(cache: children.ChildCache, *events: Any, namespace: str | None = None) -> list[Any]:
    async def consume() -> list[Any]:
        keep = children.as_child(cache, "Service", trim_child)
        stream = children.taken(_events(*events), [cache], "Service", namespace, keep)
        return [event async for event in stream]

    return asyncio.run(consume())


def _recording(cache: children.ChildCache) -> list[tuple[tuple[str, str], str, str]]:
    seen: list[tuple[tuple[str, str], str, str]] = []
    cache.on_change = lambda key, kind, name: seen.append((key, kind, name))
    return seen


def test_a_listing_is_stored_trimmed_by_endpoint_and_kopf_sees_only_its_end() -> None:
    cache = children.ChildCache()
    passed = _run(
        cache,
        {"type": None, "object": _child("u1", "vx", "vx")},
        {"type": None, "object": _child("u2", "vx-gateway", "vx")},
        {"type": None, "object": _child("u3", "other", "other")},
        LISTED,
        {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "9"}}},
    )
    assert passed == [LISTED, {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "9"}}}]
    stored = {body["metadata"]["name"]: body for body in cache.get(("team-a", "vx"))}
    assert sorted(stored) == ["vx", "vx-gateway"]
    body = stored["vx"]
    assert body["kind"] == "Service"
    assert body["spec"] == {"clusterIP": "10.96.0.7"}, "not trimmed to what the operator reads"
    assert "annotations" not in body["metadata"]
    fields = [e.get("fieldsV1") for e in body["metadata"]["managedFields"]]
    assert [zlib.decompress(f) if f else f for f in fields] == [b'{"f:spec":{"f:ports":{}}}', None]
    assert cache.uids() == {"u1": ("team-a", "vx"), "u2": ("team-a", "vx"), "u3": ("team-a", "other")}


def test_watch_events_reach_the_reconciler_and_deletions_leave_the_cache() -> None:
    cache = children.ChildCache()
    _run(cache, {"type": None, "object": _child("u1", "vx", "vx")}, LISTED)
    seen = _recording(cache)
    _run(
        cache,
        {"type": "MODIFIED", "object": _child("u1", "vx", "vx", version="2")},
        {"type": "ADDED", "object": _child("u2", "vx-gateway", "vx")},
        {"type": "DELETED", "object": _child("u1", "vx", "vx", version="3")},
    )
    assert seen == [
        (("team-a", "vx"), "Service", "vx"),
        (("team-a", "vx"), "Service", "vx-gateway"),
        (("team-a", "vx"), "Service", "vx"),
    ]
    assert [b["metadata"]["name"] for b in cache.get(("team-a", "vx"))] == ["vx-gateway"]
    assert list(cache.uids()) == ["u2"]


def test_a_child_that_loses_its_endpoint_label_leaves_the_cache_and_a_relabelled_one_moves() -> None:
    cache = children.ChildCache()
    _run(
        cache,
        {"type": None, "object": _child("u1", "vx", "vx")},
        {"type": None, "object": _child("u2", "vx-gateway", "vx")},
        LISTED,
    )
    seen = _recording(cache)
    _run(
        cache,
        {"type": "MODIFIED", "object": _child("u1", "vx", None, version="2")},
        {"type": "MODIFIED", "object": _child("u2", "vx-gateway", "other", version="2")},
    )
    assert cache.get(("team-a", "vx")) == []
    assert [b["metadata"]["name"] for b in cache.get(("team-a", "other"))] == ["vx-gateway"]
    assert seen == [(("team-a", "vx"), "Service", "vx"), (("team-a", "other"), "Service", "vx-gateway")]


def test_a_relist_drops_what_was_deleted_unseen_and_reports_only_what_changed() -> None:
    cache = children.ChildCache()
    _run(
        cache,
        {"type": None, "object": _child("u1", "vx", "vx")},
        {"type": None, "object": _child("u2", "vx-gateway", "vx")},
        {"type": None, "object": _child("u3", "other", "other")},
        LISTED,
    )
    seen = _recording(cache)
    # The watch broke; meanwhile u2 was deleted and u3 changed. The relist says so.
    _run(
        cache,
        {"type": None, "object": _child("u1", "vx", "vx")},
        {"type": None, "object": _child("u3", "other", "other", version="2")},
        LISTED,
    )
    assert sorted(cache.uids()) == ["u1", "u3"]
    assert sorted(seen) == [(("team-a", "other"), "Service", "other"), (("team-a", "vx"), "Service", "vx-gateway")]


def test_a_namespaced_relist_drops_nothing_of_other_namespaces_or_kinds() -> None:
    cache = children.ChildCache()
    cache.put(("team-b", "vx"), "b1", "Service", "vx", "1", _child("b1", "vx", "vx", namespace="team-b"))
    cache.put(("team-a", "vx"), "d1", "Deployment", "vx", "1", {**_child("d1", "vx", "vx"), "kind": "Deployment"})
    _run(cache, {"type": None, "object": _child("a1", "vx", "vx")}, LISTED, namespace="team-a")
    _run(cache, LISTED, namespace="team-a")  # team-a's Services are all gone
    assert sorted(cache.uids()) == ["b1", "d1"]


def test_kopf_holds_its_handlers_until_every_child_kind_and_the_pods_are_listed() -> None:
    """A restarted operator must compare against full caches before it could write. kopf's start-up
    gate waits only for the listings of kinds with an index handler (orchestration.spawn_missing_watchers),
    and a child kind's objects never reach kopf: each kind is registered as an index all the same."""
    import kopf

    from voxtral_operator import handlers  # noqa: F401 - registers the handlers
    from voxtral_operator.k8s import resources

    registry = kopf.get_default_registry()
    not_gated = [
        r.plural
        for r in (*resources.CHILDREN, resources.PODS)
        if not registry._indexing.has_handlers(
            resource=references.Resource(r.group, r.version, r.plural, namespaced=True)
        )
    ]
    assert not not_gated, f"child kinds kopf would not wait for at start-up: {not_gated}"


def _pod(
    uid: str, name: str, app: str, instance: str | None, version: str = "1", ready: bool = False
) -> dict[str, Any]:
    labels = {render.LABEL_MANAGED_BY: render.MANAGED_BY, render.LABEL_NAME: app}
    if instance is not None:
        labels[render.LABEL_INSTANCE] = instance
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "team-a", "uid": uid, "resourceVersion": version, "labels": labels},
        "spec": {"nodeName": "gpu-1", "containers": [{"name": "vllm", "image": "x", "args": ["--a"] * 50}]},
        "status": {
            "phase": "Running",
            "podIP": f"10.0.0.{uid[-1]}",
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def _run_pods(replicas: children.ChildCache, gateways: children.ChildCache, *events: Any) -> list[Any]:
    async def consume() -> list[Any]:
        caches = [replicas, gateways]
        stream = children.taken(_events(*events), caches, "Pod", None, children.as_pod(*caches))
        return [event async for event in stream]

    return asyncio.run(consume())


GATEWAY_APP = render.gateway.GATEWAY_APP_NAME


def test_pods_are_kept_as_summaries_replicas_and_gateways_apart_and_kopf_sees_only_the_listings_end() -> None:
    replicas, gateways = children.ChildCache(), children.ChildCache()
    passed = _run_pods(
        replicas,
        gateways,
        {"type": None, "object": _pod("p1", "vx-0", render.APP_NAME, "vx", ready=True)},
        {"type": None, "object": _pod("p2", "vx-gateway-0", GATEWAY_APP, "vx")},
        {"type": None, "object": _pod("p3", "vx-warmer", "voxtral-warmer", "vx")},
        LISTED,
    )
    assert passed == [LISTED]
    [replica] = replicas.get(("team-a", "vx"))
    assert replica == {**status.pod_summary(_pod("p1", "vx-0", render.APP_NAME, "vx", ready=True)), "uid": "p1"}
    assert (replica["ready"], replica["holdsNode"]) == (True, True)
    assert gateways.get(("team-a", "vx")) == [
        {"name": "vx-gateway-0", "ip": "10.0.0.2", "ready": False, "deleting": False, "uid": "p2"}
    ]
    assert (sorted(replicas.uids()), sorted(gateways.uids())) == (["p1"], ["p2"]), "another app's pod was kept"


def test_a_replicas_pod_change_reaches_the_reconciler_and_a_relist_drops_pods_of_both_kinds() -> None:
    replicas, gateways = children.ChildCache(), children.ChildCache()
    _run_pods(
        replicas,
        gateways,
        {"type": None, "object": _pod("p1", "vx-0", render.APP_NAME, "vx")},
        {"type": None, "object": _pod("p2", "vx-gateway-0", GATEWAY_APP, "vx")},
        {"type": None, "object": _pod("p3", "vx-1", render.APP_NAME, "vx")},
        LISTED,
    )
    seen = _recording(replicas)
    _run_pods(replicas, gateways, {"type": "MODIFIED", "object": _pod("p1", "vx-0", render.APP_NAME, "vx", "2", True)})
    assert seen == [(("team-a", "vx"), "Pod", "vx-0")]
    assert [pod["ready"] for pod in replicas.get(("team-a", "vx")) if pod["uid"] == "p1"] == [True]
    # The watch broke; meanwhile p2 and p3 were deleted. The relist says so, to both caches.
    _run_pods(
        replicas, gateways, {"type": None, "object": _pod("p1", "vx-0", render.APP_NAME, "vx", "2", True)}, LISTED
    )
    assert (sorted(replicas.uids()), gateways.uids()) == (["p1"], {})
    assert seen[1:] == [(("team-a", "vx"), "Pod", "vx-1")], "an unchanged pod's relist or a dropped pod misreported"
    _run_pods(replicas, gateways, {"type": "DELETED", "object": _pod("p1", "vx-0", render.APP_NAME, "vx", "3")})
    assert replicas.uids() == {}
    assert seen[2:] == [(("team-a", "vx"), "Pod", "vx-0")]
