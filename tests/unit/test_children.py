"""The children's watch cache (children.py): what kopf's watch stream of a child kind leaves in it,
what reaches kopf, and which changes reach the reconciler."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from kopf._cogs.clients import watching
from kopf._cogs.structs import references

from voxtral_operator import children, render
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
        stream = children.taken(_events(*events), cache, "Service", namespace, trim_child)
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
    assert [e.get("fieldsV1") for e in body["metadata"]["managedFields"]] == ['{"f:spec":{"f:ports":{}}}', None]
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
    cache.put(("team-b", "vx"), "b1", {**_child("b1", "vx", "vx", namespace="team-b"), "kind": "Service"})
    cache.put(("team-a", "vx"), "d1", {**_child("d1", "vx", "vx"), "kind": "Deployment"})
    _run(cache, {"type": None, "object": _child("a1", "vx", "vx")}, LISTED, namespace="team-a")
    _run(cache, LISTED, namespace="team-a")  # team-a's Services are all gone
    assert sorted(cache.uids()) == ["b1", "d1"]


def test_kopf_holds_its_handlers_until_every_child_kind_is_listed() -> None:
    """A restarted operator must compare against full caches before it could write. kopf's start-up
    gate waits only for the listings of kinds with an index handler (orchestration.spawn_missing_watchers),
    and a child kind's objects never reach kopf: each kind is registered as an index all the same."""
    import kopf

    from voxtral_operator import handlers  # noqa: F401 - registers the handlers
    from voxtral_operator.k8s import resources

    registry = kopf.get_default_registry()
    not_gated = [
        r.plural
        for r in resources.CHILDREN
        if not registry._indexing.has_handlers(
            resource=references.Resource(r.group, r.version, r.plural, namespaced=True)
        )
    ]
    assert not not_gated, f"child kinds kopf would not wait for at start-up: {not_gated}"
