"""The watch caches of children and pods, filled as their events leave kopf's watch streams (trimming.py).

kopf gives every object it is told about a worker task, a queue, a body wrapper, loggers and a
memory, and at start-up each of those waits until every kind is listed. With about a dozen
children and three pods per endpoint, that was most of a restarted operator's peak memory. These
objects need none of it: the reconciler and the autoscaler read them from a cache, and a change is
answered by reconciling the owning endpoint. So their events stop here: each object is stored, in
the form the operator reads (a trimmed child, a pod's summary), under its endpoint's key, and kopf
sees only the end-of-listing bookmark, which still holds its readiness gate until every kind is
listed. A listing replaces what was stored for its kind and namespace: an object deleted while the
watch was broken is dropped at the relist.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, MutableMapping, Sequence
from typing import Any, NamedTuple

from kopf._cogs.clients import watching

from voxtral_operator import render
from voxtral_operator.status import pod_summary

Key = tuple[str, str]
Trim = Callable[[MutableMapping[str, Any]], None]
# A stored object's endpoint, kind and name, for the reconciler once its view is up (handlers.py).
ChangeSink = Callable[[Key, str, str], None]


class _Entry(NamedTuple):
    kind: str
    name: str
    version: str | None
    value: Any


class ChildCache:
    """Objects by endpoint key and uid, each kept in the form the operator reads; fed only by `taken` streams."""

    def __init__(self) -> None:
        self._by_key: dict[Key, dict[str, _Entry]] = {}
        self._key_of: dict[str, Key] = {}
        self.on_change: ChangeSink | None = None

    def get(self, key: Key) -> list[Any]:
        return [entry.value for entry in self._by_key.get(key, {}).values()]

    def uids(self) -> dict[str, Key]:
        return dict(self._key_of)

    def put(self, key: Key, uid: str, kind: str, name: str, version: str | None, value: Any) -> bool:
        """Stores the object; whether it is new or another version than the one stored."""
        old = self._key_of.get(uid)
        if old is not None and old != key:  # relabelled to another endpoint
            self._drop(uid)
            old = None
        entries = self._by_key.setdefault(key, {})
        before = entries.get(uid) if old is not None else None
        entries[uid] = _Entry(kind, name, version, value)
        self._key_of[uid] = key
        return before is None or version is None or before.version != version

    def remove(self, uid: str) -> Key | None:
        key = self._key_of.get(uid)
        if key is not None:
            self._drop(uid)
        return key

    def relisted(self, kind: str, namespace: str | None, listed: set[str]) -> list[tuple[Key, str]]:
        """A listing of `kind` (in `namespace`, or everywhere) is over: what it did not list is gone.
        Returns the dropped objects' keys and names."""
        dropped = []
        for uid, key in list(self._key_of.items()):
            if uid in listed or (namespace is not None and key[0] != namespace):
                continue
            entry = self._by_key[key][uid]
            if entry.kind == kind:
                dropped.append((key, entry.name))
                self._drop(uid)
        return dropped

    def _drop(self, uid: str) -> None:
        key = self._key_of.pop(uid)
        entries = self._by_key[key]
        entries.pop(uid, None)
        if not entries:
            del self._by_key[key]


# Which cache keeps an object of a watched kind, and in what form; None: none of them.
Keep = Callable[[dict[str, Any]], "tuple[ChildCache, Any] | None"]


def as_child(cache: ChildCache, kind: str, trim: Trim) -> Keep:
    """A child kind: every object in `cache`, trimmed, its kind set (the reconciler keys children by it)."""

    def keep(body: dict[str, Any]) -> tuple[ChildCache, Any]:
        trim(body)
        body["kind"] = kind
        return cache, body

    return keep


def as_pod(replicas: ChildCache, gateways: ChildCache) -> Keep:
    """Pods: a replica's summary (status.pod_summary) in `replicas`, a gateway pod's address and
    readiness in `gateways` (the autoscaler reads each one's queue); another app's pod in neither."""

    def keep(body: dict[str, Any]) -> tuple[ChildCache, Any] | None:
        metadata = body["metadata"]
        app = (metadata.get("labels") or {}).get(render.LABEL_NAME)
        if app == render.APP_NAME:
            return replicas, {**pod_summary(body), "uid": metadata["uid"]}
        if app == render.gateway.GATEWAY_APP_NAME:
            summary = pod_summary(body)
            return gateways, {k: summary[k] for k in ("name", "ip", "ready", "deleting")} | {"uid": metadata["uid"]}
        return None

    return keep


def taken(
    events: AsyncIterator[Any], caches: Sequence[ChildCache], kind: str, namespace: str | None, keep: Keep
) -> AsyncIterator[Any]:
    """kopf's watch stream of one kind, its objects stored in `caches` (as `keep` says) and withheld
    from kopf; bookmarks (the end of a listing among them) pass on."""

    async def stream() -> AsyncIterator[Any]:
        listed: set[str] = set()
        async for event in events:
            if event is watching.Bookmark.LISTED:
                for cache in caches:
                    for key, name in cache.relisted(kind, namespace, listed):
                        _changed(cache, key, kind, name)
                listed = set()
            if not isinstance(event, dict) or event.get("type") == "BOOKMARK":
                yield event
            else:
                _take(event, caches, kind, listed, keep)

    return stream()


def _take(event: dict[str, Any], caches: Sequence[ChildCache], kind: str, listed: set[str], keep: Keep) -> None:
    body = event.get("object")
    metadata = body.get("metadata") if isinstance(body, dict) else None
    if not isinstance(body, dict) or not isinstance(metadata, dict) or not metadata.get("uid"):
        return
    uid, name = str(metadata["uid"]), str(metadata.get("name", ""))
    version = metadata.get("resourceVersion")
    instance = (metadata.get("labels") or {}).get(render.LABEL_INSTANCE)
    kept = keep(body) if event.get("type") != "DELETED" and instance is not None else None
    for cache in caches:
        if kept is not None and cache is kept[0]:
            continue
        removed = cache.remove(uid)
        if removed is not None:
            _changed(cache, removed, kind, name)
    if kept is None:
        return
    cache, value = kept
    key = (str(metadata.get("namespace", "")), str(instance))
    changed = cache.put(key, uid, kind, name, None if version is None else str(version), value)
    if event.get("type") is None:
        listed.add(uid)
        if not changed:  # a relist of what is already known (after a broken watch)
            return
    _changed(cache, key, kind, name)


def _changed(cache: ChildCache, key: Key, kind: str, name: str) -> None:
    if cache.on_change is not None:
        cache.on_change(key, kind, name)
