"""The children's watch cache, filled as their events leave kopf's watch streams (trimming.py).

kopf gives every object it is told about a worker task, a queue, a body wrapper, loggers and a
memory, and at start-up each of those waits until every kind is listed. With about a dozen
children per endpoint, that was most of a restarted operator's peak memory. Children need none of
it: the reconciler reads them from a cache and answers a change by reconciling the owning
endpoint. So a child kind's events stop here: each object, already trimmed, is stored under its
endpoint's key, and kopf sees only the end-of-listing bookmark, which still holds its readiness
gate until every kind is listed. A listing replaces what was stored for its kind and namespace:
an object deleted while the watch was broken is dropped at the relist.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, MutableMapping
from typing import Any

from kopf._cogs.clients import watching

from voxtral_operator import render

Key = tuple[str, str]
Trim = Callable[[MutableMapping[str, Any]], None]
# A stored child's endpoint, kind and name, for the reconciler once its view is up (handlers.py).
ChangeSink = Callable[[Key, str, str], None]


class ChildCache:
    """Children by endpoint key, each kind's objects by uid; fed only by `taken` streams."""

    def __init__(self) -> None:
        self._by_key: dict[Key, dict[str, dict[str, Any]]] = {}
        self._key_of: dict[str, Key] = {}
        self.on_change: ChangeSink | None = None

    def get(self, key: Key) -> list[dict[str, Any]]:
        return list(self._by_key.get(key, {}).values())

    def uids(self) -> dict[str, Key]:
        return dict(self._key_of)

    def put(self, key: Key, uid: str, body: dict[str, Any]) -> bool:
        """Stores the object; whether it is new or another version than the one stored."""
        old = self._key_of.get(uid)
        if old is not None and old != key:  # relabelled to another endpoint
            self._drop(uid)
            old = None
        bodies = self._by_key.setdefault(key, {})
        before = bodies.get(uid) if old is not None else None
        bodies[uid] = body
        self._key_of[uid] = key
        version = body["metadata"].get("resourceVersion")
        return before is None or version is None or before["metadata"].get("resourceVersion") != version

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
            body = self._by_key[key][uid]
            if body.get("kind") == kind:
                dropped.append((key, str(body["metadata"].get("name", ""))))
                self._drop(uid)
        return dropped

    def _drop(self, uid: str) -> None:
        key = self._key_of.pop(uid)
        bodies = self._by_key[key]
        bodies.pop(uid, None)
        if not bodies:
            del self._by_key[key]


def taken(
    events: AsyncIterator[Any], cache: ChildCache, kind: str, namespace: str | None, trim: Trim
) -> AsyncIterator[Any]:
    """kopf's watch stream of one child kind, its objects stored in `cache` and withheld from kopf;
    bookmarks (the end of a listing among them) pass on."""

    async def stream() -> AsyncIterator[Any]:
        listed: set[str] = set()
        async for event in events:
            if event is watching.Bookmark.LISTED:
                for key, name in cache.relisted(kind, namespace, listed):
                    _changed(cache, key, kind, name)
                listed = set()
            if not isinstance(event, dict) or event.get("type") == "BOOKMARK":
                yield event
            else:
                _take(event, cache, kind, listed, trim)

    return stream()


def _take(event: dict[str, Any], cache: ChildCache, kind: str, listed: set[str], trim: Trim) -> None:
    body = event.get("object")
    metadata = body.get("metadata") if isinstance(body, dict) else None
    if not isinstance(body, dict) or not isinstance(metadata, dict) or not metadata.get("uid"):
        return
    uid, name = str(metadata["uid"]), str(metadata.get("name", ""))
    instance = (metadata.get("labels") or {}).get(render.LABEL_INSTANCE)
    if event.get("type") == "DELETED" or instance is None:
        removed = cache.remove(uid)
        if removed is not None:
            _changed(cache, removed, kind, name)
        return
    key = (str(metadata.get("namespace", "")), str(instance))
    trim(body)
    body["kind"] = kind
    changed = cache.put(key, uid, body)
    if event.get("type") is None:
        listed.add(uid)
        if not changed:  # a relist of what is already known (after a broken watch)
            return
    _changed(cache, key, kind, name)


def _changed(cache: ChildCache, key: Key, kind: str, name: str) -> None:
    if cache.on_change is not None:
        cache.on_change(key, kind, name)
