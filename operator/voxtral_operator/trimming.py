"""Watch events trimmed as they arrive, before kopf queues them (kopf 1.45's `infinite_watch`, wrapped).

The index functions keep only what the operator reads (cache.py), but kopf holds each raw event
whole until that object's worker has run, and at start-up every worker waits until every listed
object is indexed: a restarted operator held its whole initial listing, every manager's
managedFields and every pod template included, at once (about 600 MB at 16,000 watched objects).
Here each object is cut down, in place, to what the operator and kopf read the moment it leaves the
watch stream, so a listing's originals are freed as it is read. kopf also starts every kind's
initial listing at once, each response parsed whole (the operator sets no page size: see
handlers.configure), so all of them were in memory together; the listings are now parsed one at a
time, each trimmed before the next request is sent.

What is kept is what cache.py keeps (and the index functions compute from it the same values as
from the whole object; tests/unit/test_trimming.py checks that), plus what kopf itself reads: the
identity (uid, name, namespace, resourceVersion), labels (the handlers' label filters and their
`labels` argument) and deletionTimestamp. Namespaces and CRDs are left whole: kopf's own CRD
observer reads their spec, and there are few of them. A handler that reads more of an object must
have it added here first.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator, Callable, MutableMapping
from typing import Any

from kopf._cogs.clients import fetching, watching

from voxtral_operator import cache
from voxtral_operator.api import models
from voxtral_operator.k8s import resources
from voxtral_operator.k8s.client import FIELD_MANAGER

STOCK_INFINITE_WATCH = watching.infinite_watch
STOCK_FETCH_OBJS = fetching.fetch_objs
POD_METADATA = ("name", "namespace", "uid", "resourceVersion", "labels", "ownerReferences", "deletionTimestamp")

Trim = Callable[[MutableMapping[str, Any]], None]


def trim_child(body: MutableMapping[str, Any]) -> None:
    """A child the operator applies: cache.child's form, with its labels. Untouched where the server
    keeps no managedFields (the drift check then compares values, so it needs the whole object)."""
    metadata = body.get("metadata")
    if not isinstance(metadata, dict) or not metadata.get("managedFields"):
        return
    kept = cache.child(body, FIELD_MANAGER)
    if "labels" in metadata:
        kept["metadata"]["labels"] = metadata["labels"]
    body.clear()
    body.update(kept)


def trim_pod(body: MutableMapping[str, Any]) -> None:
    """A replica's or gateway's pod: its identity, labels, node and status (what status.pod_summary reads)."""
    metadata = body.get("metadata")
    if not isinstance(metadata, dict):
        return
    spec = body.get("spec") or {}
    body["metadata"] = {key: metadata[key] for key in POD_METADATA if key in metadata}
    body["spec"] = {"nodeName": spec["nodeName"]} if isinstance(spec, dict) and "nodeName" in spec else {}


def trim_endpoint(body: MutableMapping[str, Any]) -> None:
    """A VoxtralEndpoint: cache.endpoint's form (all but other managers' field sets and kubectl's copy)."""
    if isinstance(body.get("metadata"), dict):
        body["metadata"] = cache.endpoint(body)["metadata"]


TRIMS: dict[tuple[str, str, str], Trim] = {
    **{(r.group, r.version, r.plural): trim_child for r in resources.CHILDREN},
    (resources.PODS.group, resources.PODS.version, resources.PODS.plural): trim_pod,
    (models.GROUP, models.VERSION, models.PLURAL): trim_endpoint,
}


def _trim_for(resource: Any) -> Trim | None:
    """The trim of a kopf resource's kind, or None for a kind passed whole."""
    return TRIMS.get((resource.group, resource.version, resource.plural))


def trimmed(events: AsyncIterator[Any], trim: Trim) -> AsyncIterator[Any]:
    """The same events, each object trimmed in place before it is passed on."""

    async def stream() -> AsyncIterator[Any]:
        async for event in events:
            body = event.get("object") if isinstance(event, dict) else None
            if isinstance(body, dict):
                trim(body)
            yield event

    return stream()


_LISTING: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = weakref.WeakKeyDictionary()


def _listing_turn() -> asyncio.Semaphore:
    """One listing request and parse at a time in this event loop."""
    return _LISTING.setdefault(asyncio.get_running_loop(), asyncio.Semaphore(1))


async def _fetch_objs(*, resource: Any, **kwargs: Any) -> AsyncIterator[Any]:
    """kopf's listing, page by page, each page requested and parsed alone and trimmed before it is
    passed on. The turn is given back before the page is yielded, so no consumer can hold it."""
    trim = _trim_for(resource)
    pages: Any = STOCK_FETCH_OBJS(resource=resource, **kwargs)  # an async generator (closed below)
    try:
        while True:
            async with _listing_turn():
                try:
                    chunk, resource_version = await anext(pages)
                except StopAsyncIteration:
                    return
                if trim is not None:
                    for body in chunk:
                        if isinstance(body, dict):
                            trim(body)
            yield chunk, resource_version
    finally:
        await pages.aclose()


def _infinite_watch(*, resource: Any, **kwargs: Any) -> AsyncIterator[Any]:
    events = STOCK_INFINITE_WATCH(resource=resource, **kwargs)
    trim = _trim_for(resource)
    return events if trim is None else trimmed(events, trim)


def install() -> None:
    """kopf's watchers started from now on get trimmed events and take turns to list (idempotent).
    kopf looks `watching.infinite_watch` and `fetching.fetch_objs` up at call time, so this must run
    before `kopf.operator()` starts its watchers."""
    watching.infinite_watch = _infinite_watch
    fetching.fetch_objs = _fetch_objs
