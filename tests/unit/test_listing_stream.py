"""A list response parsed as it streams in: wherever the body is cut into pieces, the same objects as
the whole body parsed at once, given kopf's defaults and trimmed; a broken body raises; kopf's
listing through it against a real HTTP server asks what kopf's own listing asks and gets the same
pages; listings take turns; and the parse holds a small fraction of what the whole body parsed does."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import logging
import random
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

import aiohttp
import kopf
import pytest
from aiohttp import web
from kopf._cogs.clients import api, auth, errors
from kopf._cogs.structs import credentials, references

from voxtral_operator import trimming

from .test_cache import DEPLOYMENT
from .test_trimming import POD

PODS = references.Resource("", "v1", "pods", kind="Pod", singular="pod", namespaced=True)
DEPLOYMENTS = references.Resource("apps", "v1", "deployments", kind="Deployment", namespaced=True)
NAMESPACES = references.Resource("", "v1", "namespaces", kind="Namespace", namespaced=False)
NOTE = 'Sprache: «Grüße» — 日本語 🎙 "quoted" and \\ back\\slash\\", \u2028 tab\t end'
LOGGER = logging.getLogger(__name__)
BROKEN = "list response|can't decode"  # the parser's errors, and UTF-8's

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _pod(index: int, *, big: bool = False) -> dict[str, Any]:
    pod = copy.deepcopy(POD)
    pod["metadata"].update(name=f"vx-{index}", uid=f"p{index}", resourceVersion=str(100 + index))
    pod["metadata"]["annotations"]["note"] = NOTE  # trimmed away
    pod["status"]["message"] = NOTE  # kept
    if not big:
        pod["spec"]["containers"][0]["args"] = ["--model", "m"]
        pod["spec"]["volumes"] = pod["spec"]["volumes"][:1]
    return pod


def _body(items: Iterable[Any], *, kind: str = "PodList", ascii_only: bool = False, **head: Any) -> bytes:
    listing = {"kind": kind, "apiVersion": "v1", "metadata": {"resourceVersion": "100"}, **head, "items": list(items)}
    return json.dumps(listing, ensure_ascii=ascii_only).encode()


def _small_body(*, ascii_only: bool) -> bytes:
    bare = _pod(1)
    del bare["kind"], bare["apiVersion"]  # gets the list's, as from a real API server
    return _body([_pod(0), bare], ascii_only=ascii_only)


def _parsed_whole(body: bytes, trim: trimming.Trim) -> tuple[list[Any], dict[str, Any]]:
    """json.loads of the whole body, then kopf's fetch_objs defaults, then the trim."""
    listing = json.loads(body)
    items = listing.pop("items", None) or []
    for item in items:
        if "kind" in listing:
            item.setdefault("kind", listing["kind"].removesuffix("List"))
        if "apiVersion" in listing:
            item.setdefault("apiVersion", listing["apiVersion"])
        trim(item)
    return items, listing


async def _pieces(body: bytes, cuts: Iterable[int]) -> AsyncIterator[bytes]:
    start = 0
    for cut in (*sorted(cuts), len(body)):
        yield body[start:cut]
        start = cut


async def _parsed(body: bytes, cuts: Iterable[int], trim: trimming.Trim = trimming.trim_pod) -> Any:
    return await trimming.parse_listing(_pieces(body, cuts), trim)


def _keep(body: Any) -> None:
    """No trim: what the parser returns is then exactly json.loads' values."""


@pytest.mark.parametrize("ascii_only", [False, True], ids=["utf-8", "escaped"])
async def test_a_small_listing_cut_at_every_byte_parses_as_the_whole_body(ascii_only: bool) -> None:
    body = _small_body(ascii_only=ascii_only)
    expected = _parsed_whole(body, trimming.trim_pod)
    assert body.isascii() == ascii_only
    assert expected[0][0]["status"]["message"] == NOTE
    assert expected[0][1]["kind"] == "Pod"

    for cut in range(len(body) + 1):
        assert await _parsed(body, [cut]) == expected, cut
    assert await _parsed(body, range(len(body))) == expected  # one byte at a time


async def test_numbers_cut_between_digits_are_read_whole() -> None:
    body = b'{"items": [123456, -1.5e10, -0.25E+7, 0, {"n": 789}, "s", true, null], "n": 98765, "m": {"c": ""}}'
    expected = json.loads(body)
    expected_items = expected.pop("items")

    for cut in range(len(body) + 1):
        assert await _parsed(body, [cut], _keep) == (expected_items, expected), cut
    assert await _parsed(body, range(len(body)), _keep) == (expected_items, expected)
    assert await _parsed(b"  " + body + b" \r\n\t", [], _keep) == (expected_items, expected)


async def test_a_big_listing_cut_at_random_parses_as_the_whole_body() -> None:
    body = _body(_pod(index, big=index % 3 == 0) for index in range(300))
    expected = _parsed_whole(body, trimming.trim_pod)
    chance = random.Random(20260101)

    for pieces in (10, 300, 3000):
        cuts = chance.sample(range(len(body)), pieces)
        assert await _parsed(body, cuts) == expected, pieces


async def test_deployments_are_trimmed_their_own_way() -> None:
    deployments = [copy.deepcopy(DEPLOYMENT) for _ in range(3)]
    body = _body(deployments, kind="DeploymentList")
    items, _ = await _parsed(body, range(0, len(body), 97), trimming.trim_child)

    assert items == _parsed_whole(body, trimming.trim_child)[0]
    assert "template" not in items[0]["spec"]
    assert items[0]["metadata"]["labels"] == DEPLOYMENT["metadata"]["labels"]


async def test_keys_in_any_order_items_text_inside_other_values_and_whitespace() -> None:
    listing = {
        "items": [_pod(0)],
        "metadata": {"items": [1, 2], "note": '"items": [{"kind": "Fake"}]', "resourceVersion": "7"},
        "apiVersion": "v1",
        "kind": "PodList",
    }
    del listing["items"][0]["kind"]  # defaulted after the list's kind is read, and kept by the trim
    body = json.dumps(listing, indent=2, ensure_ascii=False).encode()

    expected = _parsed_whole(body, trimming.trim_pod)
    assert expected[0][0]["kind"] == "Pod"
    for cut in range(0, len(body), 7):
        assert await _parsed(body, [cut]) == expected, cut


@pytest.mark.parametrize(
    ("body", "items", "head"),
    [
        (b'{"kind": "PodList", "items": []}', [], {"kind": "PodList"}),
        (b'{"kind": "PodList", "items": [ ]}', [], {"kind": "PodList"}),
        (b'{"kind": "PodList", "items": null}', [], {"kind": "PodList"}),
        (b'{"kind": "PodList"}', [], {"kind": "PodList"}),
        (b"{}", [], {}),
        (b' { "items" : [ { } ] , "kind" : "X" } ', [{"kind": "X"}], {"kind": "X"}),
        (b'{"items": [{"a": 1}], "items": [{"b": 2}]}', [{"b": 2}], {}),  # the last, as json.loads
    ],
)
async def test_empty_null_missing_and_repeated_items(body: bytes, items: list[Any], head: dict[str, Any]) -> None:
    for cut in range(len(body) + 1):
        assert await _parsed(body, [cut], _keep) == (items, head), cut


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"   ",
        b"[]",
        b'"items"',
        b"{",
        b'{"items": [',
        b'{"items": [{"a": 1}',
        b'{"items": [{"a": 1},',
        b'{"items": [1,]}',
        b'{"items": [{"a": 1}}',
        b'{"items": {}}',
        b'{"items": "none"}',
        b'{"kind" "PodList"}',
        b'{"kind": "PodList",}',
        b"{,}",
        b"{kind: 1}",
        b'{"a": 1} x',
        b"{}{}",
        b'{"a": "\x01"}',
        b'{"a": "\\x"}',
        b'{"a": "\xff"}',
        '{"a": "é"}'.encode()[:-3] + b'"}',  # half of a multi-byte character
        b'{"a": 12',
        b'{"a": tru}',
    ],
)
async def test_a_malformed_or_truncated_body_raises(body: bytes) -> None:
    for cut in {0, len(body) // 2, len(body)}:
        with pytest.raises(ValueError, match=BROKEN):
            await _parsed(body, [cut], _keep)


async def test_every_truncation_of_a_listing_raises() -> None:
    body = _small_body(ascii_only=False)
    for end in range(len(body)):
        with pytest.raises(ValueError, match=BROKEN):
            await _parsed(body[:end], [end // 2])


async def test_an_object_read_in_many_pieces_is_decoded_a_few_times_not_once_a_piece(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    decoded: list[int] = []
    decoder = json.JSONDecoder()

    def counting(text: str, pos: int) -> tuple[Any, int]:
        decoded.append(pos)
        return decoder.raw_decode(text, pos)

    monkeypatch.setattr(trimming._ListingParser._DECODER, "raw_decode", counting)
    pod = _pod(0, big=True)
    pod["metadata"]["annotations"]["big"] = "x" * 500_000
    body = _body([pod])

    items, _ = await _parsed(body, range(0, len(body), 1000))

    assert items == _parsed_whole(body, trimming.trim_pod)[0]
    assert len(body) // 1000 > 500
    # The head's keys and values, then the one item at about 1, 2, 4 ... 512 kB read.
    assert len(decoded) < 25, len(decoded)


async def test_parsing_a_listing_holds_a_small_fraction_of_what_the_whole_body_parsed_holds() -> None:
    pod = _pod(0, big=True)
    pod["metadata"].update(name="vx-{index}", uid="p-{index}")
    pod["metadata"]["annotations"]["checksum/config"] = "0123456789abcdef" * 1800
    env = [{"name": f"E{index}", "value": f"v{index}"} for index in range(20)]
    pod["spec"]["containers"] = [
        {**pod["spec"]["containers"][0], "name": f"c{index}", "env": env} for index in range(2)
    ]
    template = json.dumps(pod, ensure_ascii=False)
    assert 30_000 < len(template.encode()) < 50_000
    items = ",".join(template.replace("{index}", str(index)) for index in range(1000))
    body = f'{{"kind": "PodList", "apiVersion": "v1", "metadata": {{}}, "items": [{items}]}}'.encode()
    del items

    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        streamed, _ = await _parsed(body, range(64 * 1024, len(body), 64 * 1024))
        streamed_peak = tracemalloc.get_traced_memory()[1]
        assert len(streamed) == 1000
        del streamed
        tracemalloc.reset_peak()
        whole = json.loads(body)
        whole_peak = tracemalloc.get_traced_memory()[1]
        assert len(whole["items"]) == 1000
        del whole
    finally:
        tracemalloc.stop()

    assert streamed_peak < whole_peak / 3, (streamed_peak, whole_peak)


@contextlib.asynccontextmanager
async def _api_server(handler: Handler) -> AsyncIterator[None]:
    """An HTTP server on 127.0.0.1 that kopf's API client talks to, as the operator's does (kopf's
    credentials vault in this task's context)."""
    app = web.Application()
    app.router.add_get("/{path:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    vault = credentials.Vault({"test": credentials.ConnectionInfo(server=f"http://{host}:{port}")})
    token = auth.vault_var.set(vault)
    try:
        yield
    finally:
        auth.vault_var.reset(token)
        await vault.close()
        await runner.cleanup()


async def _send(request: web.Request, body: bytes, *, piece: int = 4096, pause: float = 0.0) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    await response.prepare(request)
    for start in range(0, len(body), piece):
        await response.write(body[start : start + piece])
        await asyncio.sleep(pause)
    await response.write_eof()
    return response


@pytest.fixture
def responses(monkeypatch: pytest.MonkeyPatch) -> list[aiohttp.ClientResponse]:
    """Every response kopf's API client returns from now on (a small body is closed as soon as it has
    arrived, so kopf's own record of open responses does not show whether the listing closed one)."""
    returned: list[aiohttp.ClientResponse] = []
    request = api.request

    async def recording(*args: Any, **kwargs: Any) -> aiohttp.ClientResponse:
        response = await request(*args, **kwargs)
        returned.append(response)
        return response

    monkeypatch.setattr(api, "request", recording)
    return returned


def _paged(pages: dict[str, bytes], requested: list[tuple[str, dict[str, str]]]) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        requested.append((request.path, dict(request.query)))
        return await _send(request, pages[request.query.get("continue", "")])

    return handler


async def _listing(resource: references.Resource, settings: kopf.OperatorSettings, *, stock: bool = False) -> Any:
    fetch = trimming.STOCK_FETCH_OBJS if stock else trimming._fetch_objs
    pages = fetch(settings=settings, resource=resource, namespace="team", logger=LOGGER)
    return [(list(items), resource_version) async for items, resource_version in pages]


async def test_the_listing_asks_what_kopfs_asks_and_gets_its_pages_trimmed(
    responses: list[aiohttp.ClientResponse],
) -> None:
    pages = {
        "": _body((_pod(index) for index in range(5)), metadata={"resourceVersion": "100", "continue": "next"}),
        "next": _body((_pod(index) for index in range(5, 8)), metadata={"resourceVersion": "100", "continue": ""}),
    }
    settings = kopf.OperatorSettings()
    settings.watching.chunk_size = 5
    settings.watching.label_selectors["pods"] = "b=2"
    settings.watching.label_selectors["pod"] = "a=1"
    settings.watching.label_selectors["Pod"] = "b=2"
    settings.watching.field_selectors["pods"] = "spec.nodeName=gpu-node-3"
    settings.watching.shard_selectors["pods"] = "shardRange(object.metadata.uid, '0x0', '0x8')"
    requested: list[tuple[str, dict[str, str]]] = []
    stock_requested: list[tuple[str, dict[str, str]]] = []

    async with _api_server(_paged(pages, requested)):
        streamed = await _listing(PODS, settings)
    assert len(responses) == 2
    assert all(response.closed for response in responses)
    async with _api_server(_paged(pages, stock_requested)):
        stock = await _listing(PODS, settings, stock=True)

    assert requested == stock_requested
    assert len(requested) == 2
    path, query = requested[0]
    assert path == "/api/v1/namespaces/team/pods"
    assert query == {
        "limit": "5",
        "labelSelector": "a=1,b=2",
        "fieldSelector": "spec.nodeName=gpu-node-3",
        "shardSelector": "shardRange(object.metadata.uid, '0x0', '0x8')",
    }
    assert requested[1] == (path, {**query, "continue": "next"})
    for items, _ in stock:
        for body in items:
            trimming.trim_pod(body)
    assert streamed == stock
    assert [len(items) for items, _ in streamed] == [5, 3]
    assert all(body["spec"] == {"nodeName": "gpu-node-3"} for items, _ in streamed for body in items)


async def test_a_malformed_or_cut_response_raises_and_is_closed(responses: list[aiohttp.ClientResponse]) -> None:
    async def malformed(request: web.Request) -> web.StreamResponse:
        body = b'{"kind": "PodList" "items": ' + _body([_pod(index) for index in range(200)])[1:]
        return await _send(request, body)

    async def cut(request: web.Request) -> web.StreamResponse:
        body = _body([_pod(0)] * 20)
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.content_length = len(body) + 100
        await response.prepare(request)
        await response.write(body)
        assert request.transport is not None
        request.transport.close()  # before the body's end
        return response

    for handler, error in ((malformed, ValueError), (cut, aiohttp.ClientPayloadError)):
        responses.clear()
        async with _api_server(handler):
            with pytest.raises(error):
                await _listing(PODS, kopf.OperatorSettings())
        assert len(responses) == 1
        assert responses[0].closed
        assert not trimming._listing_turn().locked()


async def test_an_error_status_raises_as_from_kopfs_listing() -> None:
    async def missing(request: web.Request) -> web.StreamResponse:
        return web.json_response({"kind": "Status", "code": 404, "message": "gone"}, status=404)

    async with _api_server(missing):
        with pytest.raises(errors.APINotFoundError):
            await _listing(PODS, kopf.OperatorSettings())


async def test_a_cancelled_listing_closes_its_response_and_gives_its_turn_back(
    responses: list[aiohttp.ClientResponse],
) -> None:
    half_sent = asyncio.Event()
    released = asyncio.Event()

    async def stalling(request: web.Request) -> web.StreamResponse:
        body = _body([_pod(index) for index in range(20)])
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        await response.write(body[: len(body) // 2])
        half_sent.set()
        await released.wait()
        return response

    async with _api_server(stalling):
        try:
            listing = asyncio.create_task(_listing(PODS, kopf.OperatorSettings()))
            await half_sent.wait()
            await asyncio.sleep(0.05)  # the client reads the half
            assert trimming._listing_turn().locked()
            listing.cancel()
            with pytest.raises(asyncio.CancelledError):
                await listing
        finally:
            released.set()  # else the server waits for its handler on the way out
    assert len(responses) == 1
    assert responses[0].closed
    assert not trimming._listing_turn().locked()


async def test_listings_are_parsed_one_at_a_time_and_trimmed_before_they_are_passed_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    namespace = {"metadata": {"name": "team", "managedFields": [{"manager": "kubectl"}]}}
    listings = {
        "/api/v1/pods": ("PodList", [_pod(0), _pod(1)]),
        "/apis/apps/v1/deployments": ("DeploymentList", [DEPLOYMENT, DEPLOYMENT]),
        "/api/v1/namespaces": ("NamespaceList", [namespace]),
    }
    parsing = 0
    most_at_once = 0
    stock_parse = trimming.parse_listing

    async def counted(chunks: Any, trim: Any) -> Any:
        nonlocal parsing, most_at_once
        parsing += 1
        most_at_once = max(most_at_once, parsing)
        try:
            return await stock_parse(chunks, trim)
        finally:
            parsing -= 1

    monkeypatch.setattr(trimming, "parse_listing", counted)

    async def slow(request: web.Request) -> web.StreamResponse:
        page = request.query.get("continue", "")
        metadata = {"resourceVersion": "100", "continue": "" if page else "next"}
        kind, items = listings[request.path]
        body = _body(items, kind=kind, metadata=metadata)
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        for start in range(0, len(body), 512):
            await response.write(body[start : start + 512])
            await asyncio.sleep(0.001)
        await response.write_eof()
        return response

    async def consume(resource: references.Resource) -> list[Any]:
        settings = kopf.OperatorSettings()
        pages = []
        async for items, _ in trimming._fetch_objs(settings=settings, resource=resource, namespace=None, logger=LOGGER):
            pages.append(items)
            await asyncio.sleep(0.02)  # a slow consumer holds no turn
        return pages

    async with _api_server(slow):
        pods, deployments, namespaces, more_pods = await asyncio.gather(
            consume(PODS), consume(DEPLOYMENTS), consume(NAMESPACES), consume(PODS)
        )

    assert most_at_once == 1
    assert [len(pages) for pages in (pods, deployments, namespaces, more_pods)] == [2, 2, 2, 2]
    assert all(body["spec"] == {"nodeName": "gpu-node-3"} for page in pods + more_pods for body in page)
    trimmed_deployment = copy.deepcopy(DEPLOYMENT)
    trimming.trim_child(trimmed_deployment)
    assert all(body == trimmed_deployment for page in deployments for body in page)
    # Namespaces are passed whole (through kopf's own listing).
    assert all(page == [{**namespace, "kind": "Namespace", "apiVersion": "v1"}] for page in namespaces)


async def test_a_listing_waiting_to_retry_does_not_hold_up_another_kinds() -> None:
    # An API server that restarts answers 429 "storage is (re)initializing" for a while: kopf waits and
    # asks again. Another kind's listing, answered at once, must not wait behind that.
    refused_once = False
    done: list[str] = []

    async def initializing(request: web.Request) -> web.StreamResponse:
        nonlocal refused_once
        if request.path == "/api/v1/pods" and not refused_once:
            refused_once = True
            status = {"kind": "Status", "code": 429, "message": "storage is (re)initializing"}
            return web.json_response({**status, "details": {"retryAfterSeconds": 1}}, status=429)
        kind = "PodList" if request.path == "/api/v1/pods" else "DeploymentList"
        return web.Response(body=_body([_pod(0)], kind=kind), content_type="application/json")

    async def consume(resource: references.Resource) -> None:
        settings = kopf.OperatorSettings()
        settings.networking.error_backoffs = [1.0]
        async for _ in trimming._fetch_objs(settings=settings, resource=resource, namespace=None, logger=LOGGER):
            pass
        done.append(resource.plural)

    async with _api_server(initializing):
        pods = asyncio.create_task(consume(PODS))
        await asyncio.sleep(0.2)  # the pods' request refused, its retry pending
        await asyncio.wait_for(consume(DEPLOYMENTS), timeout=0.7)
        await pods

    assert refused_once
    assert done == ["deployments", "pods"]
