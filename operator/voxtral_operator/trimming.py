"""Watch events trimmed as they arrive, before kopf queues them (kopf 1.45's `infinite_watch`, wrapped).

The index functions keep only what the operator reads (cache.py), but kopf holds each raw event
whole until that object's worker has run, and at start-up every worker waits until every listed
object is indexed: a restarted operator held its whole initial listing, every manager's
managedFields and every pod template included, at once (about 600 MB at 16,000 watched objects).
Here each object is cut down, in place, to what the operator and kopf read the moment it leaves the
watch stream, so a listing's originals are freed as it is read. kopf also starts every kind's
initial listing at once, each response parsed whole (the operator sets no page size: see
handlers.configure), so all of them were in memory together; the listings are now parsed one at a
time, each trimmed before the next is parsed (the requests and their retries are not in turn: a
kind waiting for a restarting API server must not hold up the others). Even then the peak was the
largest kind's list response parsed whole (2,000 Deployments or Pods at about 50 kB of Python
objects each, before the trim brings each to 5-8 kB), so a trimmed kind's response is parsed as it
streams in instead: each object of `items` alone, trimmed before the next one is read
(`parse_listing`).

What is kept is what cache.py keeps (and the index functions compute from it the same values as
from the whole object; tests/unit/test_trimming.py checks that), plus what kopf itself reads: the
identity (uid, name, namespace, resourceVersion), labels (the handlers' label filters and their
`labels` argument) and deletionTimestamp. Namespaces and CRDs are left whole: kopf's own CRD
observer reads their spec, and there are few of them. A handler that reads more of an object must
have it added here first.
"""

from __future__ import annotations

import asyncio
import codecs
import json
import re
import weakref
from collections.abc import AsyncIterable, AsyncIterator, Callable, MutableMapping
from typing import Any

from kopf._cogs.clients import api, fetching, watching
from kopf._cogs.configs import configuration
from kopf._cogs.helpers import typedefs
from kopf._cogs.structs import references

from voxtral_operator import cache, children
from voxtral_operator.api import models
from voxtral_operator.k8s import resources
from voxtral_operator.k8s.client import FIELD_MANAGER
from voxtral_operator.runtime import STATE

STOCK_INFINITE_WATCH = watching.infinite_watch
STOCK_FETCH_OBJS = fetching.fetch_objs
POD_METADATA = ("name", "namespace", "uid", "resourceVersion", "labels", "ownerReferences", "deletionTimestamp")
LISTING_READ_SIZE = 64 * 1024

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


class _ListingParser:
    """A list response's JSON object fed as text in pieces: every key but `items` decoded whole (they
    are small), each element of `items` decoded alone, given kopf's defaults, trimmed and kept, so
    only the trimmed objects and the text of the one object being read are held.

    A value is taken only once what follows it has arrived and can follow a value, or the body has
    ended: a number cut inside ("-1." of "-1.5") would otherwise decode as a shorter one. A value that
    fails to decode is tried again only once the unparsed text has doubled: an object split over many
    pieces is decoded at most about log2(its size / piece size) + 3 times, in time linear in its size,
    and the text held stays under twice the largest object plus one piece. A malformed value is told
    from an incomplete one only when the body ends, so it raises then (its text and the rest are held
    until then)."""

    _DECODER = json.JSONDecoder()
    _NOT_WHITESPACE = re.compile(r"[^ \t\n\r]")
    # The structural characters each state admits, and the state they lead to.
    _STRUCTURE = {
        ("object", "{"): "key_or_end",
        ("key_or_end", "}"): "done",
        ("colon", ":"): "value",
        ("comma_or_end", ","): "key",
        ("comma_or_end", "}"): "done",
        ("items", "["): "item_or_end",
        ("item_or_end", "]"): "comma_or_end",
        ("item_comma_or_end", ","): "item",
        ("item_comma_or_end", "]"): "comma_or_end",
    }
    _AFTER_VALUE = frozenset(" \t\n\r,:]}")
    _KEYS = ("key_or_end", "key")
    _VALUES = ("value", "items", "item_or_end", "item")

    def __init__(self, trim: Trim) -> None:
        self._trim = trim
        self._text = ""  # received, not parsed yet
        self._pieces: list[str] = []  # received since the last attempt, joined on the next one
        self._pieces_length = 0
        self._retry_at = 0  # the length of unparsed text at which the next attempt may get further
        self._offset = 0  # of self._text in the whole body, in characters, for error messages
        self._state = "object"
        self._key = ""
        self._head: dict[str, Any] = {}
        self._items: list[Any] = []

    def feed(self, text: str) -> None:
        self._pieces.append(text)
        self._pieces_length += len(text)
        if len(self._text) + self._pieces_length >= self._retry_at:
            self._parse(ended=False)

    def finish(self) -> tuple[list[Any], dict[str, Any]]:
        """The trimmed items and the list's other keys (kind, apiVersion, metadata), once the body has ended."""
        self._parse(ended=True)
        # Items listed before the list's kind or apiVersion get them now; every trim keeps both.
        for item in self._items:
            self._default(item)
        return self._items, self._head

    def _parse(self, *, ended: bool) -> None:
        text = "".join([self._text, *self._pieces])
        self._pieces.clear()
        self._pieces_length = 0
        pos = 0
        while True:
            found = self._NOT_WHITESPACE.search(text, pos)
            if found is None:
                pos = len(text)
                if ended and self._state != "done":
                    raise ValueError(f"the list response ended early, at character {self._offset + pos}")
                self._retry_at = 1
                break
            pos = found.start()
            char = text[pos]
            following = self._STRUCTURE.get((self._state, char))
            if following is not None:
                if following == "value" and self._key == "items":
                    following = "items"
                elif following == "item_or_end":
                    self._items = []  # a repeated key's last value counts, as in json.loads
                self._state = following
                pos += 1
                continue
            if not (self._state in self._VALUES or (self._state in self._KEYS and char == '"')):
                raise ValueError(f"unexpected {char!r} in the list response, at character {self._offset + pos}")
            try:
                value, end = self._DECODER.raw_decode(text, pos)
            except json.JSONDecodeError as error:
                if ended:
                    where = f"at character {self._offset + error.pos}"
                    raise ValueError(f"malformed list response, {where}: {error.msg}") from error
                self._retry_at = 2 * (len(text) - pos)
                break
            if not ended and end == len(text):
                self._retry_at = end - pos + 1
                break
            if not ended and text[end] not in self._AFTER_VALUE:  # maybe a number read short
                self._retry_at = 2 * (len(text) - pos)
                break
            self._take(value)
            pos = end
        self._text = text[pos:]
        self._offset += pos

    def _take(self, value: Any) -> None:
        match self._state:
            case "key_or_end" | "key":
                self._key = value
                self._state = "colon"
            case "value":
                self._head[self._key] = value
                self._state = "comma_or_end"
            case "items":
                if value is not None:
                    raise ValueError(f"the list response's items are not a list: {type(value).__name__}")
                self._items = []
                self._state = "comma_or_end"
            case _:
                if isinstance(value, dict):
                    self._default(value)
                    self._trim(value)
                self._items.append(value)
                self._state = "item_comma_or_end"

    def _default(self, item: Any) -> None:
        """kopf's fetch_objs: the list's kind (less its "List") and apiVersion, where an item has none."""
        if isinstance(item, dict):
            if "kind" in self._head:
                item.setdefault("kind", self._head["kind"].removesuffix("List"))
            if "apiVersion" in self._head:
                item.setdefault("apiVersion", self._head["apiVersion"])


async def parse_listing(chunks: AsyncIterable[bytes], trim: Trim) -> tuple[list[Any], dict[str, Any]]:
    """A list response's items, each with kopf's defaults and trimmed as soon as it is read, and the
    list's other keys (kind, apiVersion, metadata). Raises ValueError (JSON or UTF-8) on a malformed
    or truncated body."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    parser = _ListingParser(trim)
    async for chunk in chunks:
        parser.feed(decoder.decode(chunk))
    parser.feed(decoder.decode(b"", final=True))
    return parser.finish()


async def _streamed_pages(
    *,
    settings: configuration.OperatorSettings,
    resource: references.Resource,
    namespace: references.Namespace,
    logger: typedefs.Logger,
    trim: Trim,
) -> AsyncIterator[tuple[list[Any], str]]:
    """kopf 1.45's fetch_objs (the same query and pages), each response parsed by parse_listing."""
    label_selector = ",".join(sorted(set(settings.watching.label_selectors.collect(resource))))
    field_selector = ",".join(sorted(set(settings.watching.field_selectors.collect(resource))))
    shard_selector, *_ = settings.watching.shard_selectors.collect(resource) or [""]
    params: dict[str, str] = {}
    if settings.watching.chunk_size is not None:
        params["limit"] = str(settings.watching.chunk_size)
    if label_selector:
        params["labelSelector"] = label_selector
    if field_selector:
        params["fieldSelector"] = field_selector
    if shard_selector:
        params["shardSelector"] = shard_selector

    first = True
    continue_token = ""  # "" after the last page, as the API server sends it
    while first or continue_token:
        first = False
        if continue_token:
            params["continue"] = continue_token
        url = resource.get_url(namespace=namespace, params=params)
        # The request and its retries (kopf's back-off, a 429's Retry-After) outside the turn: one kind
        # waiting for an API server that restarts must not hold up the others' listings (an endpoint's
        # DELETED event then came 15 s late). Only the body's parse takes turns.
        response = await api.request("get", url, settings=settings, logger=logger)
        async with response, _listing_turn():
            items, listing = await parse_listing(response.content.iter_chunked(LISTING_READ_SIZE), trim)
        metadata = listing.get("metadata", {})
        continue_token = metadata.get("continue")
        yield items, metadata.get("resourceVersion")
        del items, listing  # one page held at a time, not the old one beside the next


def _fetch_objs(
    *,
    settings: configuration.OperatorSettings,
    resource: references.Resource,
    namespace: references.Namespace,
    logger: typedefs.Logger,
) -> AsyncIterator[tuple[list[Any], str]]:
    """kopf's listing, a trimmed kind's pages parsed as they stream in, one parse at a time (the
    turn is given back before a page is yielded, so no consumer can hold it). Other kinds
    (namespaces, CRDs: few and small) go through kopf's own listing, untouched."""
    trim = _trim_for(resource)
    if trim is None:
        pages: AsyncIterator[Any] = STOCK_FETCH_OBJS(
            settings=settings, resource=resource, namespace=namespace, logger=logger
        )
        return pages
    return _streamed_pages(settings=settings, resource=resource, namespace=namespace, logger=logger, trim=trim)


CHILD_KINDS = {(r.group, r.version, r.plural): r.kind for r in resources.CHILDREN}
PODS = resources.PODS


def _infinite_watch(*, resource: Any, **kwargs: Any) -> AsyncIterator[Any]:
    events = STOCK_INFINITE_WATCH(resource=resource, **kwargs)
    trim = _trim_for(resource)
    kind = CHILD_KINDS.get((resource.group, resource.version, resource.plural))
    namespace = kwargs.get("namespace")
    # Children and pods are kept by the operator, never queued by kopf (children.py).
    if trim is not None and kind is not None:
        return children.taken(events, [STATE.children], kind, namespace, children.as_child(STATE.children, kind, trim))
    if (resource.group, resource.version, resource.plural) == (PODS.group, PODS.version, PODS.plural):
        caches = [STATE.pods, STATE.gateway_pods]
        return children.taken(events, caches, PODS.kind, namespace, children.as_pod(*caches))
    return events if trim is None else trimmed(events, trim)


def install() -> None:
    """kopf's watchers started from now on get trimmed events and take turns to list (idempotent).
    kopf looks `watching.infinite_watch` and `fetching.fetch_objs` up at call time, so this must run
    before `kopf.operator()` starts its watchers."""
    watching.infinite_watch = _infinite_watch
    fetching.fetch_objs = _fetch_objs
