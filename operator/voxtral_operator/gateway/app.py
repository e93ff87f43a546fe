"""The gateway's HTTP side: the API port (forwarding to vLLM) and the metrics port (metrics, health).

A low-level aiohttp server (connections.py bounds its connections): the raw path must be one of
the five API routes exactly (no normalisation, so `/v1/../invocations`, `//invocations` and
percent-encoded tricks are 404 before any backend is touched), and the request's framing must have
one reading (framing.py), else the gateway answers and closes. Each backend request is built by the
gateway: allowlisted headers, its own key, its own framing, no query string. Bodies stream both
ways: only a bounded prefix (64 KiB) is read before dispatch, to estimate the work; the rest is read
as the backend takes it, and an upload that stops making progress is abandoned. The exception is a
longer JSON body whose prefix does not name its `service_tier`: the OpenAI SDK writes that member
after `messages`, so after any inline audio. Such a body is read whole before dispatch, to find its
lane, if it fits what is left of the pod's `json_buffer_bytes` (`JsonBuffers`); else it streams, and
a tier later in it fails the request (503, lanes.LATE_FIELD_BUFFERS_FULL). vLLM cannot start on a
JSON body before its last byte anyway, so reading it first costs the caller almost nothing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import ssl
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from voxtral_operator.autoscale import scrape
from voxtral_operator.gateway import lanes
from voxtral_operator.gateway.connections import GuardedServer, Limits
from voxtral_operator.gateway.dispatch import Dispatcher, Lease, Rejected, Stopping, Suspended
from voxtral_operator.gateway.framing import Framing, Refusal, backend_headers, request_framing, response_headers
from voxtral_operator.gateway.metrics import GatewayMetrics, Snapshot
from voxtral_operator.gateway.realtime import (
    GOING_AWAY,
    SERVICE_RESTART,
    RealtimeSessions,
    RealtimeSettings,
    Refused,
    offered_key,
)
from voxtral_operator.gateway.realtime import ROUTE as REALTIME_ROUTE
from voxtral_operator.gateway.sources import ANONYMOUS, LiveSettings, Sources
from voxtral_operator.gateway.work import (
    MAX_TOKENS,
    PREFIX_BYTES,
    Work,
    estimate,
    form_boundary,
)

logger = logging.getLogger("voxtral_operator.gateway")

ROUTES = {
    "/v1/models": "GET",
    "/v1/chat/completions": "POST",
    "/v1/completions": "POST",
    "/v1/audio/transcriptions": "POST",
    "/v1/audio/translations": "POST",
}
AUDIO_ROUTES = frozenset({"/v1/audio/transcriptions", "/v1/audio/translations"})
CONNECT_ATTEMPTS = 3
USAGE_JSON_LIMIT = 256 * 1024  # a JSON answer up to this size is parsed for its usage object
SSE_TAIL = 16 * 1024  # the tail of an event stream kept to find the last chunk's usage
SUSPENDED_MESSAGE = "endpoint suspended: it serves no requests until it is resumed"
# The backend's answer as it is relayed: once prepared, a failure can only drop the connection.
RELAYED = web.RequestKey("relayed", web.StreamResponse)
# The named points of a request's life, in order (where a test may inject a failure).
STEPS = (
    "framed",
    "authenticated",
    "body_prefix_read",
    "estimated",
    "leased",
    "backend_answered",
    "response_started",
    "response_streamed",
    "accounted",
)


@dataclass(frozen=True)
class Settings:
    max_upload_bytes: int = 25 * 1_000_000
    json_buffer_bytes: int = 128 * 1_000_000  # JSON bodies this pod may hold whole before dispatch, in all
    # Bodies of deferrable requests in flight this pod keeps, to send them again if an interactive request
    # takes them back (lanes.to_take_back); a body beyond it streams unkept and is not taken back.
    resend_buffer_bytes: int = 256 * 1_000_000
    connect_timeout: float = 5.0
    body_timeout: float = 30.0  # an upload that sends nothing for this long is abandoned
    limits: Limits = field(default_factory=Limits)
    realtime: RealtimeSettings | None = None  # the WebSocket /v1/realtime, for a realtime model
    # The `priority` deferrable chat/completions requests carry (vLLM runs --scheduling-policy priority);
    # None: vLLM runs first come first served and no request carries one.
    deferrable_priority: int | None = None


class UploadTooLarge(Exception):
    pass


class UploadFailed(Exception):
    """The caller's upload stopped making progress, or broke its own framing: the answer to give."""

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.code)
        self.refusal = refusal


def error_response(
    status: int, message: str, code: str, *, kind: str = "invalid_request_error", retry_after: int | None = None
) -> web.Response:
    """An OpenAI-style error body."""
    body = json.dumps({"error": {"message": message, "type": kind, "param": None, "code": code}})
    response = web.Response(status=status, text=body, content_type="application/json")
    if retry_after is not None:
        response.headers["Retry-After"] = str(retry_after)
    return response


def refusal_response(request: web.BaseRequest, refusal: Refusal) -> web.Response:
    """An answer the gateway gives without reading further: the connection closes after it."""
    response = error_response(refusal.status, refusal.message, refusal.code)
    response.force_close()
    request.protocol.close()  # nothing more is parsed from this connection
    return response


async def _read(stream: aiohttp.StreamReader, size: int, stall_seconds: float) -> bytes:
    try:
        async with asyncio.timeout(stall_seconds):
            return await stream.read(size) if size > 0 else await stream.readany()
    except TimeoutError:
        message = f"Request timeout: the upload sent nothing for {stall_seconds:g}s"
        raise UploadFailed(Refusal(408, message, "request_timeout")) from None
    except RequestPayloadError:
        raise UploadFailed(Refusal(400, "Bad request: the body does not match its framing", "bad_request")) from None


async def read_prefix(stream: aiohttp.StreamReader, limit: int, stall_seconds: float) -> bytes:
    """Up to `limit` bytes of a body (fewer at its end), reading no more than that."""
    parts: list[bytes] = []
    size = 0
    while size < limit:
        chunk = await _read(stream, limit - size, stall_seconds)
        if not chunk:
            break
        parts.append(chunk)
        size += len(chunk)
    return b"".join(parts)


class JsonBuffers:
    """The bytes of JSON bodies a gateway pod holds whole before dispatch, against its budget: the pod's
    memory stays bounded whatever the callers send. A body reserves its whole size (its Content-Length,
    else the upload cap) before its first byte past the prefix is read, so the bodies that fit are read
    whole and the others stream at once, rather than all stalling half-read once the budget is spent."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.held = 0

    def lease(self) -> JsonLease:
        return JsonLease(self)


class JsonLease:
    """One request's share of its pod's JSON buffers, given back when the request is answered."""

    def __init__(self, buffers: JsonBuffers) -> None:
        self.buffers = buffers
        self.size = 0

    def reserve(self, size: int) -> bool:
        """Whether `size` bytes more fit the pod's budget (then they are this request's until it ends)."""
        if self.buffers.held + size > self.buffers.capacity:
            return False
        self.size += size
        self.buffers.held += size
        return True

    def __enter__(self) -> JsonLease:
        return self

    def __exit__(self, *_: object) -> None:
        self.buffers.held -= self.size
        self.size = 0


class ResendBuffers(JsonBuffers):
    """The bytes of deferrable requests' bodies a gateway pod keeps while they are in flight, to send them again
    if an interactive request takes them back; each reserves its whole size (its Content-Length, else the
    upload cap) when it is first dispatched, and one that does not fit streams without being kept."""


async def read_whole(stream: aiohttp.StreamReader, prefix: bytes, limit: int, stall_seconds: float) -> bytes:
    """The body that begins with `prefix`, to its end or until more than `limit` bytes have been read."""
    parts = [prefix]
    size = len(prefix)
    while size <= limit:
        chunk = await _read(stream, 0, stall_seconds)
        if not chunk:
            break
        parts.append(chunk)
        size += len(chunk)
    return b"".join(parts)


class Body:
    """The request body as the backend reads it: the prefix already read, then the rest of the stream."""

    def __init__(
        self,
        prefix: bytes,
        stream: aiohttp.StreamReader,
        limit: int,
        timeout: float,
        watch: tuple[bytes, ...] = (),
        late: Refusal = lanes.LATE_FIELD,
        closing: bytes = b"",
    ) -> None:
        self.prefix = prefix
        self.watch = lanes.LateFieldWatch(watch)  # fields that, after the prefix, fail the request
        self.late = late  # the answer when one of them shows up
        self.closing = closing  # a member to put before a streamed JSON object's final `}`
        self.stream = stream
        self.limit = limit
        self.timeout = timeout
        self.started = False
        self.too_large = False
        self.failure: Refusal | None = None
        self.sent = 0
        # The whole body is in the prefix (sent with a Content-Length), else it streams (chunked); as it was
        # before any attempt read the rest, for an attempt after one that did.
        self.complete = stream.at_eof()
        self.keep = False  # keep what is read past the prefix, to send the body again
        self.kept: list[bytes] = []
        self._reading = asyncio.Lock()

    async def chunks(self) -> AsyncIterator[bytes]:
        self.started = True
        self.sent = len(self.prefix)
        closer = lanes.BeforeClosingBrace(self.closing) if self.closing else None
        if self.prefix:
            yield closer.feed(self.prefix) if closer else self.prefix
        for chunk in self.kept:  # sent again: what an earlier attempt read, checked then
            self.sent += len(chunk)
            if closer is None:
                yield chunk
            elif passed := closer.feed(chunk):
                yield passed
        while True:
            # One reader at a time: an aborted attempt's reader may still be waiting on the stream when the
            # next attempt starts (the aborted one's read is cancelled, and what it read is kept first).
            async with self._reading:
                try:
                    chunk = await _read(self.stream, 0, self.timeout)
                except UploadFailed as exc:
                    self.failure = exc.refusal
                    raise
                if not chunk:
                    break
                if self.watch.found(chunk):
                    self.failure = self.late
                    raise UploadFailed(self.late)
                self.sent += len(chunk)
                if self.sent > self.limit:
                    self.too_large = True
                    raise UploadTooLarge()
                if self.keep:
                    self.kept.append(chunk)  # before it is yielded: a chunk read is never lost to an abort
            if closer is None:
                yield chunk
            elif passed := closer.feed(chunk):  # an empty chunk would end a chunked upload
                yield passed
        if closer is not None:
            yield closer.close()


def _count(value: Any) -> int | None:
    """A token count from a backend's JSON: an int within bounds, else nothing."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_TOKENS:
        return value
    return None


def _usage_from(payload: Any) -> tuple[int, int] | None:
    if not isinstance(payload, dict):
        return None
    usage = payload.get("usage")
    if not isinstance(usage, dict):
        return None
    prompt = _count(usage.get("prompt_tokens", usage.get("input_tokens")))
    completion = _count(usage.get("completion_tokens", usage.get("output_tokens")))
    if prompt is not None and completion is not None:
        return prompt, completion
    return None


def _json(data: bytes) -> Any:
    """A JSON document, or None when it is not one (or nests deeper than Python recurses)."""
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        return None


def usage_of_sse(tail: bytes) -> tuple[int, int] | None:
    """The usage of the last event of a stream's tail that carries one."""
    for line in reversed(tail.split(b"\n")):
        line = line.strip()
        if line.startswith(b"data:") and b'"usage"' in line:
            found = _usage_from(_json(line[5:].strip()))
            if found is not None:
                return found
    return None


class Gateway:
    def __init__(self, sources: Sources, dispatcher: Dispatcher, settings: Settings) -> None:
        self.sources = sources
        self.dispatcher = dispatcher
        self.settings = settings
        self.realtime: RealtimeSessions | None = None
        self.metrics = GatewayMetrics(self._snapshot, lambda: sources.missing)
        self._session: aiohttp.ClientSession | None = None
        self.json_buffers = JsonBuffers(settings.json_buffer_bytes)
        self.resend_buffers = ResendBuffers(settings.resend_buffer_bytes)
        self.ssl_context: ssl.SSLContext | None = None
        # Tests only: called at each of STEPS; what it raises fails the request there.
        self.fault_at: Callable[[str], None] | None = None
        if settings.realtime is not None:
            self.realtime = RealtimeSessions(
                settings.realtime,
                self.metrics,
                self.session,
                sources.backend_key_for,
                lambda: dispatcher.hold_timeout,
                dispatcher,
            )
            sources.on_backends.append(self.realtime.set_replicas)
            self.realtime.set_replicas(sources.backends)
        sources.on_backends.append(dispatcher.set_replicas)
        sources.on_tls.append(self._load_tls)
        self._default_hold_timeout = dispatcher.hold_timeout
        sources.on_settings.append(self._follow_settings)
        dispatcher.set_replicas(sources.backends)
        self._follow_settings(sources.settings)
        if sources.tls is not None:
            self._load_tls(sources.tls)

    # --- lifecycle --------------------------------------------------------------------------

    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=30)
            self._session = aiohttp.ClientSession(
                connector=connector,
                auto_decompress=False,
                skip_auto_headers=("Accept-Encoding", "User-Agent", "Accept", "Content-Type"),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.settings.connect_timeout),
            )
        return self._session

    def _snapshot(self) -> Snapshot:
        """The dispatcher's state, realtime handshakes held counted as held requests (the autoscaler's cue)."""
        now = self.dispatcher.snapshot()
        if self.realtime is not None:
            now.queued += self.realtime.held
            now.held += self.realtime.held
        return now

    def _follow_settings(self, settings: LiveSettings) -> None:
        """Suspend or resume the moment the endpoint says so (held and queued requests get 503 now)."""
        if not isinstance(self.dispatcher.refusing, Stopping):
            self.dispatcher.refuse(Suspended(SUSPENDED_MESSAGE) if settings.suspended else None)
            if self.realtime is not None:
                if settings.suspended:
                    refusal = Refused(503, SUSPENDED_MESSAGE, Suspended.code, Suspended.retry_after)
                    self.realtime.refuse(refusal, close=(GOING_AWAY, SUSPENDED_MESSAGE, "suspended"))
                else:
                    self.realtime.refuse(None)
        self.dispatcher.set_hold_timeout(settings.hold_timeout_seconds or self._default_hold_timeout)

    def stop(self, queued_grace: float) -> None:
        """Shutting down: new and held requests get 503 and retry elsewhere, queued ones after the grace;
        realtime sessions close (1012) so their callers reconnect through another gateway pod."""
        message = "this gateway pod is shutting down; retry"
        self.dispatcher.refuse(Stopping(message), queued_grace=queued_grace)
        if self.realtime is not None:
            refusal = Refused(503, message, Stopping.code, Stopping.retry_after)
            self.realtime.refuse(refusal, close=(SERVICE_RESTART, "gateway pod shutting down: reconnect", "stopping"))

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def take_back_on_reads(self, interval: float) -> None:
        """Every `interval` seconds, read vLLM's waiting count on each replica where this pod has an unanswered
        interactive request beside deferrable work it can take back (Dispatcher.to_read), and take back what
        an interactive request may wait behind (Dispatcher.read_waiting). A replica that does not answer within
        the interval is read again at the next one."""
        while True:
            await asyncio.sleep(interval)
            addresses = self.dispatcher.to_read()
            if not addresses:
                continue
            try:
                await asyncio.gather(*(self._read_waiting(address, within=interval) for address in addresses))
            except Exception:  # a fault in one round must not end the reads for the pod's life
                logger.exception("reading the replicas' waiting counts failed; reading again in %gs", interval)

    async def _read_waiting(self, address: str, *, within: float) -> None:
        url = f"http://{address}/metrics"
        sample = await scrape.read_page(self.session(), url, scrape.parse_queue_metrics, timeout_seconds=within)
        self.metrics.waiting_reads.labels("failed" if sample is None else "read").inc()
        if sample is not None:
            self.dispatcher.read_waiting(address, sample.waiting)

    def _load_tls(self, pair: tuple[bytes, bytes]) -> None:
        """Load (or reload in place: new handshakes get the new pair) the serving certificate."""
        context = self.ssl_context or ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        with tempfile.TemporaryDirectory() as tmp:
            cert, key = os.path.join(tmp, "tls.crt"), os.path.join(tmp, "tls.key")
            with open(cert, "wb") as handle:
                handle.write(pair[0])
            with os.fdopen(os.open(key, os.O_WRONLY | os.O_CREAT, 0o600), "wb") as handle:
                handle.write(pair[1])
            try:
                context.load_cert_chain(cert, key)
            except (ssl.SSLError, OSError) as exc:
                logger.warning("the TLS Secret's certificate or key is unusable (%s); keeping the previous one", exc)
                return
        if self.ssl_context is not None:
            logger.info("TLS certificate reloaded")
        self.ssl_context = context

    def _step(self, name: str) -> None:
        if self.fault_at is not None:
            self.fault_at(name)

    # --- the API port -----------------------------------------------------------------------

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        started = time.monotonic()
        path = request.raw_path.split("?", 1)[0]
        route = path if path in ROUTES or (path == REALTIME_ROUTE and self.realtime is not None) else "other"
        key = ANONYMOUS
        response: web.StreamResponse | None = None
        try:
            response, key = await self._handle(request, route)
            return response
        except ConnectionError:
            raise  # the caller is gone, or the answer was cut off mid-way: aiohttp drops the connection
        except Exception as exc:
            # The exception's text is not logged: it may quote a header, and a header may hold a key.
            logger.warning("a request failed inside the gateway (%s)", type(exc).__name__)
            relayed = request.get(RELAYED)
            if relayed is not None and relayed.prepared:
                raise ConnectionResetError("the request failed mid-response") from None
            response = error_response(
                500, "The gateway failed to handle the request", "internal_error", kind="api_error"
            )
            response.force_close()
            return response
        finally:
            code = str(response.status) if response is not None else "aborted"
            self.metrics.requests.labels(route, code).inc()
            logger.debug(
                "%s %s %s %.3fs key=%s",
                request.method if request.method in ("GET", "POST") else "(other method)",
                route if route != "other" else "(not an API route)",
                code,
                time.monotonic() - started,
                key,
            )

    async def _handle(self, request: web.BaseRequest, route: str) -> tuple[web.StreamResponse, str]:
        with self.json_buffers.lease() as lease:
            return await self._answer(request, route, lease)

    async def _answer(self, request: web.BaseRequest, route: str, lease: JsonLease) -> tuple[web.StreamResponse, str]:
        framing = request_framing(request.version, request.raw_headers, takes_body=ROUTES.get(route) == "POST")
        if isinstance(framing, Refusal) and framing.status != 400:
            return refusal_response(request, framing), ANONYMOUS
        if route == "other":
            return refusal_response(
                request, Refusal(404, "Not found: this endpoint serves only the OpenAI API routes", "not_found")
            ), ANONYMOUS
        if route == REALTIME_ROUTE:
            return await self._realtime(request, framing)
        if request.method != ROUTES[route]:
            refusal = Refusal(405, f"{request.method} is not allowed on {route}", "method_not_allowed")
            return refusal_response(request, refusal), ANONYMOUS
        if isinstance(framing, Refusal):
            return refusal_response(request, framing), ANONYMOUS
        if "Upgrade" in request.headers:
            request.protocol.close()  # aiohttp stops parsing HTTP after an Upgrade request: no keep-alive
        self._step("framed")
        if self.sources.misconfigured:
            # Every request would be refused for a reason the caller cannot fix; the Secret's name
            # is in the gateway's log, its metrics and the endpoint's status, not in this answer.
            response = error_response(
                503,
                "endpoint misconfigured: a Secret it needs is missing; its operator is told",
                "endpoint_misconfigured",
                kind="service_unavailable",
            )
            response.force_close()  # the body is not read
            request.protocol.close()
            return response, ANONYMOUS
        key = self._authenticate(request)
        if key is None:
            refusal = Refusal(401, "Incorrect or missing API key (Authorization: Bearer KEY)", "invalid_api_key")
            return refusal_response(request, refusal), ANONYMOUS
        self._step("authenticated")
        refusing = self.dispatcher.refusing  # suspended or stopping
        if refusing is not None:
            response = error_response(
                refusing.status,
                str(refusing),
                refusing.code,
                kind="service_unavailable",
                retry_after=refusing.retry_after,
            )
            return response, key
        limit = self.settings.max_upload_bytes
        if framing.length is not None and framing.length > limit:
            return refusal_response(request, self._too_large(limit)), key
        content_type = request.headers.get("Content-Type", "")
        if route in AUDIO_ROUTES and content_type.split(";")[0].strip().lower() != "multipart/form-data":
            refusal = Refusal(
                415, "Unsupported media type: audio routes take multipart/form-data", "unsupported_media_type"
            )
            return refusal_response(request, refusal), key
        is_form, boundary = form_boundary(content_type)
        if is_form and boundary is None:
            refusal = Refusal(
                400,
                "Bad request: the multipart boundary is missing, repeated, or not 1-70 of RFC 2046's characters",
                "bad_request",
            )
            return refusal_response(request, refusal), key
        prefix = b""
        if framing.has_body:
            if request.headers.get("Expect", "").lower() == "100-continue" and request.version >= (1, 1):
                await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            try:
                prefix = await read_prefix(request.content, min(PREFIX_BYTES, limit + 1), self.settings.body_timeout)
            except UploadFailed as exc:
                return refusal_response(request, exc.refusal), key
            if len(prefix) > limit:
                return refusal_response(request, self._too_large(limit)), key
        if framing.has_body and boundary is None and (encoding := lanes.utf8_json(prefix)) is not None:
            return refusal_response(request, encoding), key
        late = lanes.LATE_FIELD
        if (
            framing.has_body
            and boundary is None
            and not request.content.at_eof()
            and lanes.QUOTED_TIER not in prefix
            and self.json_buffers.capacity > 0
        ):
            if lease.reserve(framing.length if framing.length is not None else limit):
                try:
                    prefix = await read_whole(request.content, prefix, limit, self.settings.body_timeout)
                except UploadFailed as exc:
                    return refusal_response(request, exc.refusal), key
                if len(prefix) > limit:
                    return refusal_response(request, self._too_large(limit)), key
            else:
                late = lanes.LATE_FIELD_BUFFERS_FULL
        self._step("body_prefix_read")
        work = estimate(content_type, prefix, framing.length)
        self._step("estimated")
        complete = request.content.at_eof()
        tier = (
            lanes.multipart_tier(prefix, boundary, complete)
            if boundary is not None
            else lanes.json_tier(prefix, complete)
            if framing.has_body
            else lanes.Tier(lanes.INTERACTIVE)
        )
        if isinstance(tier, Refusal):
            return refusal_response(request, tier), key
        watch = tier.watch
        priority = self.settings.deferrable_priority
        closing = b""
        if priority is not None and route in lanes.PRIORITY_ROUTES:
            # vLLM schedules by priority here: the gateway sets it on every request, 0 for interactive ones.
            rewritten = lanes.with_priority(prefix, complete, priority if tier.lane == lanes.DEFERRABLE else 0)
            if isinstance(rewritten, Refusal):
                return refusal_response(request, rewritten), key
            limit += len(rewritten.prefix) - len(prefix) + len(rewritten.closing)
            prefix, watch, closing = rewritten.prefix, watch + rewritten.watch, rewritten.closing
        body = Body(prefix, request.content, limit, self.settings.body_timeout, watch, late, closing)
        return await self._forward(request, route, key, work, body, framing, tier.lane), key

    def _authenticate(self, request: web.BaseRequest, *, subprotocol: bool = False) -> str | None:
        keys = self.sources.caller_keys
        if keys is None:
            return ANONYMOUS
        header = request.headers.get("Authorization", "")
        scheme, _, presented = header.partition(" ")
        if subprotocol and not header:
            # Browsers cannot set headers on a WebSocket: the key may come as a subprotocol token.
            presented, scheme = offered_key(request.headers.get("Sec-WebSocket-Protocol", "")) or "", "bearer"
        if scheme.lower() != "bearer" or not presented.strip():
            return None
        # The parser decodes header bytes as UTF-8 with surrogate escapes: encode them back, never fail.
        return keys.match(presented.strip().encode("utf-8", "surrogateescape"))

    async def _realtime(self, request: web.BaseRequest, framing: Framing | Refusal) -> tuple[web.StreamResponse, str]:
        """The WebSocket route: every check on the upgrade request, before any socket is accepted."""
        assert self.realtime is not None
        if request.method != "GET":
            return refusal_response(request, Refusal(405, f"{request.method} is not allowed on {REALTIME_ROUTE}",
                                                     "method_not_allowed")), ANONYMOUS  # fmt: skip
        if isinstance(framing, Refusal):
            return refusal_response(request, framing), ANONYMOUS
        if request.headers.get("Upgrade", "").lower() != "websocket":
            refusal = Refusal(426, f"{REALTIME_ROUTE} takes a WebSocket upgrade", "upgrade_required")
            return refusal_response(request, refusal), ANONYMOUS
        if not web.WebSocketResponse().can_prepare(request).ok:  # RFC 6455's headers: no replica is touched
            refusal = Refusal(400, "Bad request: not a valid WebSocket handshake", "bad_request")
            return refusal_response(request, refusal), ANONYMOUS
        if self.sources.misconfigured:
            refusal = Refusal(503, "endpoint misconfigured: a Secret it needs is missing; its operator is told",
                              "endpoint_misconfigured")  # fmt: skip
            return refusal_response(request, refusal), ANONYMOUS
        key = self._authenticate(request, subprotocol=True)
        if key is None:
            refusal = Refusal(401, "Incorrect or missing API key (Authorization: Bearer KEY)", "invalid_api_key")
            return refusal_response(request, refusal), ANONYMOUS
        refusing = self.dispatcher.refusing
        try:
            if refusing is not None:
                raise Refused(refusing.status, str(refusing), refusing.code, refusing.retry_after)
            return await self.realtime.serve(request, key, self._tenant(key)), key
        except Refused as exc:
            kind = "rate_limit_error" if exc.status == 429 else "service_unavailable"
            response = error_response(exc.status, str(exc), exc.code, kind=kind, retry_after=exc.retry_after)
            response.force_close()
            request.protocol.close()
            return response, key

    def _tenant(self, key: str) -> str | None:
        keys = self.sources.caller_keys
        return keys.tenant(key) if keys is not None else None

    @staticmethod
    def _too_large(limit: int) -> Refusal:
        return Refusal(
            413, f"Request body too large: uploads are limited to {limit / 1_000_000:g} MB", "request_too_large"
        )

    async def _forward(
        self,
        request: web.BaseRequest,
        route: str,
        key: str,
        work: Work,
        body: Body,
        framing: Framing,
        lane: str = lanes.INTERACTIVE,
    ) -> web.StreamResponse:
        with self.resend_buffers.lease() as kept:
            # A deferrable request can be taken back (aborted, sent again later) if its body can be sent again:
            # one that streams is kept when its size fits the budget as it is dispatched (not while it waits).
            resendable = lane == lanes.DEFERRABLE and (not framing.has_body or body.complete)
            reserve = framing.length if framing.length is not None else body.limit
            arrived = time.monotonic()
            exclude: frozenset[str] = frozenset()
            attempt = 0
            taken_back = False
            while attempt < CONNECT_ATTEMPTS:
                attempt += 1
                try:
                    lease = await self.dispatcher.acquire(
                        work, exclude, key, self._tenant(key), lane, arrived if taken_back else None
                    )
                except Rejected as exc:
                    kind = "rate_limit_error" if exc.status == 429 else "service_unavailable"
                    return error_response(exc.status, str(exc), exc.code, kind=kind, retry_after=exc.retry_after)
                if lane == lanes.DEFERRABLE and not resendable and not body.started:
                    resendable = kept.reserve(reserve)
                    body.keep = resendable
                try:
                    if attempt == 1 and not taken_back:
                        self.metrics.queue_wait.observe(time.monotonic() - arrived)
                        self.metrics.lane_queue_wait.labels(lane).observe(time.monotonic() - arrived)
                    self._step("leased")
                    if not resendable:
                        return await self._exchange(request, route, key, work, body, lease, framing)
                    exchange = asyncio.ensure_future(self._exchange(request, route, key, work, body, lease, framing))
                    lease.retractable(exchange.cancel)
                    try:
                        return await exchange
                    except asyncio.CancelledError:
                        task = asyncio.current_task()
                        if not lease.taken_back or (task is not None and task.cancelling()):
                            raise
                    # Taken back for an interactive request before the replica answered: vLLM aborted it
                    # when its connection closed; it waits in its lane again (not a failed attempt).
                    taken_back = True
                    attempt -= 1
                except aiohttp.ClientConnectorError as exc:
                    if body.started and body.sent > len(body.prefix) and not body.keep:
                        raise  # bytes of the stream are gone: cannot retry
                    logger.warning("replica %s unreachable (%s); attempt %d", lease.address, exc, attempt)
                    # Nothing was sent: the next attempt waits (held, as at zero replicas) for a replica not
                    # tried yet, so a lost replica's callers are served once its replacement is ready.
                    exclude |= {lease.address}
                finally:
                    lease.release()
            return error_response(
                502, "No replica of the endpoint could be reached", "backend_unreachable", kind="api_error"
            )

    async def _exchange(
        self, request: web.BaseRequest, route: str, key: str, work: Work, body: Body, lease: Lease, framing: Framing
    ) -> web.StreamResponse:
        url = f"http://{lease.address}{route}"  # never the caller's query string: no route takes one
        headers = backend_headers(
            request.raw_headers,
            backend_key=self.sources.backend_key_for(lease.address),
            peer=request.remote,
            scheme="https" if request.secure else "http",
        )
        if isinstance(headers, Refusal):
            return refusal_response(request, headers)
        data: bytes | AsyncIterator[bytes] | None = None
        if framing.has_body:
            data = body.prefix if body.complete else body.chunks()
        response: web.StreamResponse | None = None
        try:
            async with self.session().request(
                request.method, url, data=data, headers=headers, allow_redirects=False
            ) as upstream:
                media = upstream.content_type
                streaming = media == "text/event-stream"
                first = b""
                if streaming and upstream.status == 200:
                    # vLLM sends a stream's headers before it schedules the request: until the first event
                    # the request may still wait in its queue, so it stays unanswered (an interactive one a
                    # suspect for read_waiting, a deferrable one still taken back), its caller shown nothing.
                    first = await upstream.content.readany()
                lease.settled()  # the replica answered: its caller will see this answer, it is not taken back
                self._step("backend_answered")
                response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
                request[RELAYED] = response
                for name, value in response_headers(upstream.headers.items()):
                    response.headers.add(name, value)
                if upstream.content_length is not None:
                    response.content_length = upstream.content_length
                await response.prepare(request)
                self._step("response_started")
                keep = media == "application/json" and (upstream.content_length or 0) <= USAGE_JSON_LIMIT
                collected = bytearray(first)
                if first:
                    await response.write(first)
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
                    if streaming:
                        collected += chunk
                        if len(collected) > 2 * SSE_TAIL:
                            del collected[:-SSE_TAIL]
                    elif keep:
                        collected += chunk
                        keep = len(collected) <= USAGE_JSON_LIMIT
                self._step("response_streamed")
                await response.write_eof()
                self._account(key, work, upstream.status, streaming, keep, bytes(collected))
                self._step("accounted")
                return response
        except aiohttp.ClientConnectorError:
            raise
        except (aiohttp.ClientError, UploadTooLarge, UploadFailed, TimeoutError) as exc:
            failure = self._too_large(body.limit) if body.too_large else body.failure
            if failure is not None:
                if response is None or not response.prepared:
                    return refusal_response(request, failure)
                raise ConnectionResetError("the upload failed mid-response") from None
            if response is not None and response.prepared:
                logger.warning("replica %s failed mid-response (%s)", lease.address, type(exc).__name__)
                raise ConnectionResetError("the replica failed mid-response") from None
            logger.warning("replica %s failed (%s)", lease.address, type(exc).__name__)
            return error_response(502, "The endpoint's replica failed to answer", "backend_error", kind="api_error")

    def _account(self, key: str, work: Work, status: int, streaming: bool, parsed: bool, data: bytes) -> None:
        if status >= 400:
            return
        if work.audio_seconds:
            self.metrics.usage_audio.labels(key).inc(work.audio_seconds)
        usage = None
        if streaming:
            usage = usage_of_sse(data)
        elif parsed and data:
            usage = _usage_from(_json(data))
        if usage is not None:
            self.metrics.usage_tokens.labels(key, "prompt").inc(usage[0])
            self.metrics.usage_tokens.labels(key, "completion").inc(usage[1])

    # --- the metrics port -------------------------------------------------------------------

    def metrics_app(self) -> web.Application:
        async def metrics(_: web.Request) -> web.Response:
            return web.Response(
                body=generate_latest(self.metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
            )

        async def healthz(_: web.Request) -> web.Response:
            return web.Response(text="ok")

        async def readyz(_: web.Request) -> web.Response:
            if self.sources.synced.is_set():
                return web.Response(text="ok")
            return web.Response(status=503, text="waiting for the Secrets and EndpointSlices to be read")

        app = web.Application()
        app.router.add_get("/metrics", metrics)
        app.router.add_get("/healthz", healthz)
        app.router.add_get("/readyz", readyz)
        return app


async def serve_metrics(gateway: Gateway, host: str, port: int) -> tuple[web.AppRunner, int]:
    """The metrics port: /metrics, /healthz, /readyz (0: an ephemeral port)."""
    runner = web.AppRunner(gateway.metrics_app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    return runner, _port(site)


async def serve_api(
    gateway: Gateway, host: str, port: int, shutdown_timeout: float = 60.0
) -> tuple[web.ServerRunner, int]:
    """The API port (0: an ephemeral one); TLS when the gateway has a certificate.

    A caller hanging up cancels its handler: it leaves the queue, or its backend request is aborted.
    """
    server = GuardedServer(gateway.handle, gateway.settings.limits, handler_cancellation=True, access_log=None)
    runner = web.ServerRunner(server, shutdown_timeout=shutdown_timeout, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=gateway.ssl_context)
    await site.start()
    return runner, _port(site)


def _port(site: web.TCPSite) -> int:
    server = site._server
    assert isinstance(server, asyncio.Server)
    port: int = server.sockets[0].getsockname()[1]
    return port
