"""Realtime sessions: the WebSocket `/v1/realtime`, relayed to one replica for the session's life.

The HTTP side (app.py) has checked the caller's key on the upgrade request (the `Authorization`
header, or for browsers, which cannot set headers on a WebSocket, the subprotocol token
`openai-insecure-api-key.KEY` beside `realtime`, as OpenAI's realtime API takes it) and the endpoint's
state (suspended, stopping). Here the key's limits are checked (a session is one request holding one of
the key's concurrent slots for its life; its appends are charged as audio-seconds), then the session is
admitted (sessions.py): placed on the replica with the fewest open sessions, held while no replica has
room (at zero replicas up to the hold timeout, when all are full up to `full_wait`), else refused with
503 and Retry-After; 502 once every ready replica has refused the socket. Only then is the caller's
upgrade accepted, so a caller refused or held never holds a replica's slot.

Messages are relayed as they are (text or binary), each bounded: the caller's frame size (1009
beyond), its message rate (1008), its silence (1001 after the idle time), the session's length (1008);
a caller that does not read its transcription within `slow_reader_seconds` is closed (1008) rather
than buffered for: the gateway holds at most the socket's write buffer per session; a session whose
key runs out of audio-seconds per minute is closed (1008). Closes the gateway decides carry a reason;
a replica leaving gives its sessions the drain time, then 1012. Audio-seconds sent are metered per
caller key, tokens from `transcription.done`'s usage.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
from aiohttp import WSMsgType, web
from prometheus_client import Counter, Gauge, Histogram

from voxtral_operator.gateway.dispatch import Dispatcher, RateLimited
from voxtral_operator.gateway.metrics import GatewayMetrics
from voxtral_operator.gateway.sessions import Admission, Wait

logger = logging.getLogger("voxtral_operator.gateway")


class _NoOfferedProtocols(logging.Filter):
    """aiohttp warns of a handshake whose subprotocols the server does not speak, listing them: they may
    hold the caller's key (`openai-insecure-api-key.KEY`), so that warning is not logged."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("%s: Client protocols")


logging.getLogger("aiohttp.websocket").addFilter(_NoOfferedProtocols())

ROUTE = "/v1/realtime"
SUBPROTOCOL = "realtime"
KEY_SUBPROTOCOL_PREFIX = "openai-insecure-api-key."
PCM16_BYTES_PER_SECOND = 16_000 * 2
RATE_WINDOW_SECONDS = 5.0
BACKEND_CLOSE_SECONDS = 5.0
CONNECT_ATTEMPTS = 3
# Close codes (RFC 6455 and IANA's registry) and the reasons the gateway gives.
GOING_AWAY = 1001
POLICY = 1008
TOO_BIG = 1009
SERVICE_RESTART = 1012

SESSIONS_OPEN = "voxtral_gateway_realtime_sessions_open"
SESSIONS_HELD = "voxtral_gateway_realtime_sessions_held"
SESSIONS_TOTAL = "voxtral_gateway_realtime_sessions_total"
SESSIONS_CLOSED_TOTAL = "voxtral_gateway_realtime_sessions_closed_total"
REPLICA_SESSIONS = "voxtral_gateway_replica_realtime_sessions"
DELTA_SECONDS = "voxtral_gateway_realtime_delta_relay_seconds"


@dataclass(frozen=True)
class RealtimeSettings:
    sessions_per_replica: int
    max_session_seconds: float = 9961.0
    idle_seconds: float = 60.0
    drain_seconds: float = 120.0
    max_frame_bytes: int = 1024 * 1024
    messages_per_second: float = 50.0
    full_wait_seconds: float = 10.0  # how long a newcomer waits for room when every replica is full
    slow_reader_seconds: float = 10.0  # a caller whose socket takes no more data this long is closed
    connect_timeout: float = 5.0


class Refused(Exception):
    """A handshake the gateway answers without a socket: status, code and Retry-After."""

    def __init__(self, status: int, message: str, code: str, retry_after: int | None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.retry_after = retry_after

    def __reduce__(self) -> tuple[type[Refused], tuple[int, str, str, int | None]]:
        # copy.copy rebuilds an exception from its args, which hold only the message here.
        return Refused, (self.status, str(self), self.code, self.retry_after)


def offered_key(protocols: str) -> str | None:
    """The key a browser sends as a subprotocol (`realtime, openai-insecure-api-key.KEY`), if any."""
    for token in protocols.split(","):
        token = token.strip()
        if token.startswith(KEY_SUBPROTOCOL_PREFIX):
            return token[len(KEY_SUBPROTOCOL_PREFIX) :]
    return None


class _Metrics:
    def __init__(self, gateway: GatewayMetrics) -> None:
        registry = gateway.registry
        self.usage_audio = gateway.usage_audio
        self.usage_tokens = gateway.usage_tokens
        self.open = Gauge(SESSIONS_OPEN, "Realtime sessions open (relayed to a replica).", registry=registry)
        self.held = Gauge(SESSIONS_HELD, "Realtime handshakes held while no replica has room.", registry=registry)
        self.sessions = Counter(
            SESSIONS_TOTAL.removesuffix("_total"),
            "Realtime handshakes by outcome (admitted, refused_full, refused_starting, refused_unreachable).",
            ["outcome"],
            registry=registry,
        )
        self.closed = Counter(
            SESSIONS_CLOSED_TOTAL.removesuffix("_total"),
            "Realtime sessions ended, by why (caller, replica, idle, too_long, rate, too_big, slow_reader, "
            "drained, suspended, stopping, replica_failed, key_limit).",
            ["reason"],
            registry=registry,
        )
        self.per_replica = Gauge(
            REPLICA_SESSIONS, "Realtime sessions open per replica.", ["replica"], registry=registry
        )
        self.delta = Histogram(
            DELTA_SECONDS,
            "Time a transcription event spends in the gateway: read from the replica to written to the caller.",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            registry=registry,
        )


class _Session:
    """One relayed session: the caller's socket, the replica's, and the task relaying them."""

    def __init__(self, address: str, caller: web.WebSocketResponse, task: asyncio.Task[None]) -> None:
        self.address = address
        self.caller = caller
        self.task = task
        self.closing: tuple[int, str, str] | None = None  # (code, reason, metric label) decided from outside
        self.ended = "caller"  # why it ended, as the relay found (a metric label)

    def end(self, code: int, reason: str, label: str) -> None:
        if self.closing is None:
            self.closing = (code, reason, label)
            self.task.cancel()


class RealtimeSessions:
    def __init__(
        self,
        settings: RealtimeSettings,
        metrics: GatewayMetrics,
        session: Callable[[], aiohttp.ClientSession],
        backend_key: Callable[[str], str | None],
        hold_timeout: Callable[[], float],
        key_limits: Dispatcher,
    ) -> None:
        self.settings = settings
        self.key_limits = key_limits  # the HTTP routes' per-key limits, which sessions are charged against too
        self.admission = Admission(settings.sessions_per_replica)
        self.metrics = _Metrics(metrics)
        self._client = session
        self._backend_key = backend_key
        self._hold_timeout = hold_timeout
        self._changed = asyncio.Event()
        self._sessions: set[_Session] = set()
        self._refusing: Refused | None = None
        self._closing: tuple[int, str, str] | None = None  # how sessions close while refusing
        self._drains: set[asyncio.Task[None]] = set()

    # --- the replica set and the endpoint's state ---------------------------------------------

    def set_replicas(self, addresses: tuple[str, ...]) -> None:
        for address in self.admission.set_replicas(addresses):
            logger.info("replica %s left: its realtime sessions close in %gs", address, self.settings.drain_seconds)
            drain = asyncio.ensure_future(self._drain(address))
            self._drains.add(drain)
            drain.add_done_callback(self._drains.discard)
        self._publish()
        self._wake()

    async def _drain(self, address: str) -> None:
        await asyncio.sleep(self.settings.drain_seconds)
        if address in self.admission.replicas and not self.admission.replicas[address].leaving:
            return  # it came back
        reason = "replica leaving (scale-down, rollout or node drain): reconnect"
        for session in [s for s in self._sessions if s.address == address]:
            session.end(SERVICE_RESTART, reason, "drained")

    def refuse(self, refusal: Refused | None, close: tuple[int, str, str] | None = None) -> None:
        """New handshakes get `refusal` (None: admit again); open sessions are closed with `close`."""
        self._refusing = refusal
        self._closing = close if refusal is not None else None
        if close is not None:
            for session in list(self._sessions):
                session.end(*close)
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def _publish(self) -> None:
        self.metrics.open.set(self.admission.open)
        self.metrics.held.set(len(self.admission.held))
        self.metrics.per_replica.clear()
        for address, count in self.admission.open_by_replica().items():
            self.metrics.per_replica.labels(address).set(count)

    @property
    def held(self) -> int:
        return len(self.admission.held)

    # --- a handshake --------------------------------------------------------------------------

    async def _place(self, exclude: frozenset[str]) -> str:
        """A replica for a new session, waiting while there is no room; raises Refused."""
        found = self.admission.admit(None, exclude)
        if isinstance(found, str):
            self._publish()
            return found
        arrived = time.monotonic()
        ticket = self.admission.hold()
        self._publish()
        try:
            while True:
                if self._refusing is not None:
                    raise copy.copy(self._refusing)
                found = self.admission.admit(ticket, exclude)
                if isinstance(found, str):
                    return found
                if found is Wait.NO_REPLICA:
                    bound, refusal = (
                        self._hold_timeout(),
                        Refused(
                            503,
                            "the endpoint is starting (scaled to zero or no replica ready): none became ready in "
                            "time; retry later",
                            "endpoint_starting",
                            30,
                        ),
                    )
                else:
                    bound, refusal = (
                        self.settings.full_wait_seconds,
                        Refused(
                            503,
                            "every replica has its realtime sessions "
                            f"({self.settings.sessions_per_replica} per replica from this gateway pod); retry later",
                            "realtime_capacity",
                            10,
                        ),
                    )
                remaining = arrived + bound - time.monotonic()
                if remaining <= 0:
                    self.metrics.sessions.labels(
                        "refused_starting" if found is Wait.NO_REPLICA else "refused_full"
                    ).inc()
                    raise refusal
                changed = self._changed
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(remaining, 1.0)):
                        await changed.wait()
        finally:
            self.admission.unhold(ticket)
            self._publish()
            self._wake()  # the next ticket may be first now

    async def _connect(self, address: str) -> aiohttp.ClientWebSocketResponse:
        key = self._backend_key(address)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return await self._client().ws_connect(
            f"ws://{address}{ROUTE}",
            headers=headers,
            max_msg_size=0,  # the replica's answers are bounded by the replica
            autoping=True,
            timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=5.0),
        )

    async def serve(self, request: web.BaseRequest, key: str, tenant: str | None) -> web.StreamResponse:
        """Check the key's limits, admit, connect to the replica, accept the caller's upgrade, relay until
        either side ends."""
        if self._refusing is not None:
            raise copy.copy(self._refusing)
        try:
            self.key_limits.open_session(key, tenant)
        except RateLimited as exc:
            raise Refused(exc.status, str(exc), exc.code, exc.retry_after) from None
        try:
            return await self._serve(request, key, tenant)
        finally:
            self.key_limits.close_session(key)

    async def _serve(self, request: web.BaseRequest, key: str, tenant: str | None) -> web.StreamResponse:
        exclude: frozenset[str] = frozenset()
        backend: aiohttp.ClientWebSocketResponse | None = None
        address = ""
        for _ in range(CONNECT_ATTEMPTS):
            address = await self._place(exclude)
            try:
                async with asyncio.timeout(self.settings.connect_timeout):
                    backend = await self._connect(address)
                break
            except BaseException as exc:
                # Whatever ends the attempt (the caller leaving cancels this handler) gives the slot back.
                self._ended(address)
                if not isinstance(exc, aiohttp.ClientError | TimeoutError):
                    raise
                logger.warning("replica %s refused a realtime session (%s)", address, type(exc).__name__)
                exclude |= {address}
                if self.admission.choose(exclude) is Wait.NO_REPLICA:
                    break  # every ready replica failed: answer now rather than hold for one to appear
        if backend is None:
            self.metrics.sessions.labels("refused_unreachable").inc()
            raise Refused(502, "No replica of the endpoint accepted the session", "backend_unreachable", None)
        try:
            if self._refusing is not None:  # suspended or stopping while connecting: not upgraded
                raise copy.copy(self._refusing)
            offered = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",")]
            caller = web.WebSocketResponse(
                protocols=(SUBPROTOCOL,) if SUBPROTOCOL in offered else (),
                max_msg_size=self.settings.max_frame_bytes,
                autoping=True,
                autoclose=False,
            )
            await caller.prepare(request)
        except BaseException:
            self._ended(address)
            await _close_backend(backend)
            raise
        self.metrics.sessions.labels("admitted").inc()
        task = asyncio.current_task()
        assert task is not None
        session = _Session(address, caller, task)
        self._sessions.add(session)
        label = "caller"
        try:
            if self._closing is not None:  # suspended or stopping during the upgrade: closed as the others were
                code, reason, label = self._closing
                await self._close(caller, code, reason)
            else:
                label = await self._relay(session, backend, key, tenant)
        except asyncio.CancelledError:
            if session.closing is None:
                label = session.ended  # the caller left, perhaps as the relay was closing it for a reason
                raise  # the caller's connection is gone (aiohttp cancels the handler)
            code, reason, label = session.closing
            await self._close(caller, code, reason)
            uncancel = task.uncancel  # the gateway's own cancel: the handler ends normally
            uncancel()
        finally:
            self._sessions.discard(session)
            self.metrics.closed.labels(label).inc()
            self._ended(address)
            await _close_backend(backend)
        return caller

    def _ended(self, address: str) -> None:
        self.admission.close(address)
        self._publish()
        self._wake()

    @staticmethod
    async def _close(caller: web.WebSocketResponse, code: int, reason: str) -> None:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5.0):
                await caller.close(code=code, message=reason.encode()[:120])

    async def _relay(
        self, session: _Session, backend: aiohttp.ClientWebSocketResponse, key: str, tenant: str | None
    ) -> str:
        """Both directions until one ends; returns why (a metric label)."""
        caller = session.caller
        settings = self.settings
        upstream = asyncio.ensure_future(self._from_caller(caller, backend, key, tenant))
        downstream = asyncio.ensure_future(self._from_replica(caller, backend, key))
        try:
            async with asyncio.timeout(settings.max_session_seconds):
                done, _ = await asyncio.wait([upstream, downstream], return_when=asyncio.FIRST_COMPLETED)
            finished = done.pop()
            code, reason, label = finished.result()
        except TimeoutError:
            code, reason, label = POLICY, f"session longer than {settings.max_session_seconds:g}s", "too_long"
        except asyncio.CancelledError:
            # The caller's connection is gone. Its direction may be one step from saying why (aiohttp
            # closes a too-big frame's socket itself, which cancels this handler): give it that step.
            await asyncio.wait([upstream], timeout=1.0)
            if upstream.done() and not upstream.cancelled() and upstream.exception() is None:
                session.ended = upstream.result()[2]
            raise
        finally:
            for task in (upstream, downstream):
                task.cancel()
            await asyncio.gather(upstream, downstream, return_exceptions=True)
        session.ended = label
        if label != "caller":
            await self._close(caller, code, reason)
        return label

    async def _from_caller(
        self, caller: web.WebSocketResponse, backend: aiohttp.ClientWebSocketResponse, key: str, tenant: str | None
    ) -> tuple[int, str, str]:
        settings = self.settings
        budget = settings.messages_per_second * RATE_WINDOW_SECONDS  # a token bucket over the window
        tokens, refilled = budget, time.monotonic()
        audio_seconds = 0.0
        try:
            while True:
                try:
                    message = await caller.receive(timeout=settings.idle_seconds)
                except TimeoutError:
                    return GOING_AWAY, f"idle for {settings.idle_seconds:g}s", "idle"
                now = time.monotonic()
                tokens = min(budget, tokens + (now - refilled) * settings.messages_per_second)
                refilled = now
                if message.type == WSMsgType.TEXT:
                    data: str = message.data
                    appended = _appended_seconds(data)
                    if appended:
                        over = self.key_limits.charge_session_audio(key, tenant, appended)
                        if over is not None:
                            # Closed rather than the append dropped with an `error` event: a gap in the audio
                            # would silently change the transcription, and vLLM's protocol has no error code
                            # a client would know to resend on. The reason names the limit and the wait.
                            reason = f"this key's audio seconds per minute reached; retry in {over.retry_after}s"
                            return POLICY, reason, "key_limit"
                        audio_seconds += appended
                    await backend.send_str(data)
                elif message.type == WSMsgType.BINARY:
                    await backend.send_bytes(message.data)
                elif message.type == WSMsgType.ERROR:
                    # aiohttp has closed the socket already: with 1009 for a frame above max_msg_size.
                    if getattr(message.data, "code", None) == TOO_BIG:
                        return TOO_BIG, f"message larger than {settings.max_frame_bytes} bytes", "too_big"
                    return POLICY, "malformed WebSocket frame", "caller"
                else:  # close, closing, closed
                    if message.type == WSMsgType.CLOSE:
                        with contextlib.suppress(Exception):
                            await caller.close()
                    return 1000, "", "caller"
                tokens -= 1
                if tokens < 0:
                    return POLICY, f"more than {settings.messages_per_second:g} messages per second", "rate"
        finally:
            if audio_seconds:
                self.metrics.usage_audio.labels(key).inc(audio_seconds)

    async def _from_replica(
        self, caller: web.WebSocketResponse, backend: aiohttp.ClientWebSocketResponse, key: str
    ) -> tuple[int, str, str]:
        async for message in backend:
            read = time.monotonic()
            try:
                async with asyncio.timeout(self.settings.slow_reader_seconds):
                    if message.type == WSMsgType.TEXT:
                        await caller.send_str(message.data)
                    elif message.type == WSMsgType.BINARY:
                        await caller.send_bytes(message.data)
                    else:
                        break
            except TimeoutError:
                return POLICY, f"the caller did not read for {self.settings.slow_reader_seconds:g}s", "slow_reader"
            except ConnectionError:
                return 1000, "", "caller"
            self.metrics.delta.observe(time.monotonic() - read)
            if message.type == WSMsgType.TEXT and '"transcription.done"' in message.data:
                self._count_tokens(key, message.data)
        code = backend.close_code
        if code in (None, 1006):
            return 1011, "the replica ended the session unexpectedly", "replica_failed"
        return code, "the replica closed the session", "replica"

    def _count_tokens(self, key: str, data: str) -> None:
        try:
            usage = json.loads(data).get("usage") or {}
            prompt, completion = int(usage["prompt_tokens"]), int(usage["completion_tokens"])
        except (ValueError, TypeError, KeyError, AttributeError):
            return
        if prompt >= 0 and completion >= 0:
            self.metrics.usage_tokens.labels(key, "prompt").inc(prompt)
            self.metrics.usage_tokens.labels(key, "completion").inc(completion)

    def close_all(self, code: int, reason: str, label: str) -> None:
        for session in list(self._sessions):
            session.end(code, reason, label)


async def _close_backend(backend: aiohttp.ClientWebSocketResponse) -> None:
    """Close the replica's socket; a replica that keeps writing instead of answering the close has
    BACKEND_CLOSE_SECONDS, then its connection is dropped (aiohttp's close reads on while data comes)."""
    with contextlib.suppress(Exception):
        async with asyncio.timeout(BACKEND_CLOSE_SECONDS):
            await backend.close()


def _appended_seconds(data: str) -> float:
    """Seconds of PCM16 16 kHz audio in a caller's text message if it is an append (by its parsed type, as
    the replica reads it), from its base64 length (not decoded); 0 for any other message."""
    try:
        event = json.loads(data)
    except (ValueError, RecursionError):
        return 0.0  # the replica answers it `invalid_json`
    if not isinstance(event, dict) or event.get("type") != "input_audio_buffer.append":
        return 0.0
    audio = event.get("audio")
    if not isinstance(audio, str):
        return 0.0
    padding = len(audio) - len(audio.rstrip("="))
    return (len(audio) * 3 // 4 - min(padding, 2)) / PCM16_BYTES_PER_SECOND
