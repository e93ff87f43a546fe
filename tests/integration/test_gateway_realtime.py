"""Realtime sessions through `voxtral-operator gateway` as a process: WebSocket /v1/realtime relayed to
the vLLM simulator (which speaks vLLM's realtime protocol), keys checked at the handshake, admission
per replica by open sessions, holding at zero replicas, the bounds, drain and suspend, per-key limits,
and handshakes that end early (the caller leaving, a suspend, a replica refusing, a malformed upgrade)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.integration import test_gateway
from tests.integration.test_gateway import (
    BACKEND_KEY,
    CALLER_KEY,
    Gateway,
    auth,
    put_endpoint,
    put_secret,
    put_slice,
    raw_status,
    start_gateway,
    start_sim,
)
from voxtral_operator.gateway import metrics as names
from voxtral_operator.gateway import realtime
from voxtral_operator.gateway.metrics import key_id
from voxtral_testbed.harness import Kube, eventually, free_port
from voxtral_testbed.realtime_client import MODEL, frame, stream
from voxtral_testbed.sandbox import Sandbox

pytestmark = pytest.mark.integration

# The gateway tests' world: the API emulator, its Secrets projected as the kubelet does, processes.
sandbox = test_gateway.sandbox
kube = test_gateway.kube
session = test_gateway.session
gateways = test_gateway.gateways
simulators = test_gateway.simulators

KEYS = ("--caller-keys-secret", "callers", "--backend-key-secret", "vllm-key:api-key")


async def _world(
    kube: Kube, session: aiohttp.ClientSession, simulators: Any, replicas: int = 1, *sim_args: str
) -> list[int]:
    await put_secret(kube, "callers", {"alice": CALLER_KEY, "bob": "caller-key-two"})
    await put_secret(kube, "vllm-key", {"api-key": BACKEND_KEY})
    ports = []
    for index in range(replicas):
        port = await start_sim(simulators, session, "--model", MODEL, "--api-key", BACKEND_KEY, *sim_args)
        await put_slice(kube, f"mini-{index}", port)
        ports.append(port)
    return ports


async def _gateway(
    gateways: list[Gateway], sandbox: Sandbox, tmp_path: Path, session: aiohttp.ClientSession, *args: str
) -> Gateway:
    return await start_gateway(
        gateways, sandbox, tmp_path, session, *KEYS, "--realtime-sessions-per-replica", "2", *args
    )


def _ws(gateway: Gateway) -> str:
    return gateway.url.replace("http://", "ws://") + realtime.ROUTE


async def _refusal(session: aiohttp.ClientSession, url: str, **kwargs: Any) -> aiohttp.WSServerHandshakeError:
    with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
        async with session.ws_connect(url, **kwargs):
            pass
    return caught.value


async def _until_closed(ws: aiohttp.ClientWebSocketResponse) -> aiohttp.WSMessage:
    async with asyncio.timeout(15):
        while True:
            message = await ws.receive()
            if message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
                return message


async def _created(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    event: dict[str, Any] = json.loads((await ws.receive(timeout=10)).data)
    assert event["type"] == "session.created", event
    return event


async def test_a_session_is_relayed_with_the_backend_key_and_metered_per_key(
    sandbox: Sandbox, kube: Kube, session: aiohttp.ClientSession, gateways: list[Gateway], simulators: Any,
    tmp_path: Path,
) -> None:  # fmt: skip
    await _world(kube, session, simulators)
    gateway = await _gateway(gateways, sandbox, tmp_path, session)
    result = await stream(session, _ws(gateway), key=CALLER_KEY, seconds=2.0)
    assert result.created is not None
    assert result.created["id"].startswith("sess-")
    assert result.errors == []
    assert result.deltas == ["w5", " w10", " w15", " w20", " w25"]
    assert result.done is not None
    assert result.done["text"] == "w5 w10 w15 w20 w25"
    assert result.done["usage"] == {"prompt_tokens": 25, "completion_tokens": 5, "total_tokens": 30}
    # Text trails the audio by the model's delay (480 ms), and the gateway adds little to it.
    assert 0.4 < sorted(result.delta_latencies)[len(result.delta_latencies) // 2] < 1.5, result.delta_latencies
    alice = key_id(CALLER_KEY.encode())
    assert await gateway.metric(session, names.USAGE_AUDIO_SECONDS_TOTAL, f'key_id="{alice}"') == pytest.approx(2.0)
    assert await gateway.metric(session, names.USAGE_TOKENS_TOTAL, f'key_id="{alice}",kind="prompt"') == 25
    assert await gateway.metric(session, realtime.SESSIONS_TOTAL, 'outcome="admitted"') == 1
    assert await gateway.metric(session, realtime.DELTA_SECONDS + "_count") >= 5
    # The browser form: the key as a subprotocol token beside "realtime", which the gateway selects.
    protocols = ("realtime", f"{realtime.KEY_SUBPROTOCOL_PREFIX}caller-key-two")
    async with session.ws_connect(_ws(gateway), protocols=protocols) as ws:
        assert ws.protocol == "realtime"
        await _created(ws)
    async with session.get(f"http://127.0.0.1:{gateway.metrics_port}/metrics") as response:
        page = await response.text()
    assert CALLER_KEY not in page
    assert BACKEND_KEY not in page


async def test_keys_are_checked_at_the_handshake_and_other_websocket_paths_are_refused(
    sandbox: Sandbox, kube: Kube, session: aiohttp.ClientSession, gateways: list[Gateway], simulators: Any,
    tmp_path: Path,
) -> None:  # fmt: skip
    await _world(kube, session, simulators)
    gateway = await _gateway(gateways, sandbox, tmp_path, session)
    assert (await _refusal(session, _ws(gateway), headers=auth("wrong-key"))).status == 401
    assert (await _refusal(session, _ws(gateway))).status == 401
    assert (await _refusal(session, _ws(gateway), protocols=("realtime",))).status == 401
    for path in ("/v1/realtime/", "/v1/realtimex", "/v1/chat/completions", "/ws", "/V1/realtime"):
        url = gateway.url.replace("http://", "ws://") + path
        status = (await _refusal(session, url, headers=auth())).status
        assert status in (404, 405), (path, status)
    # The route without an upgrade, and the REST routes as before.
    async with session.get(gateway.url + realtime.ROUTE, headers=auth()) as response:
        assert response.status == 426
    assert await raw_status(gateway.port, "GET /v1/models HTTP/1.1") == 200
    # Nothing was accepted by a replica for the refused handshakes.
    assert await gateway.metric(session, realtime.SESSIONS_TOTAL, 'outcome="admitted"') == 0
    # A key offered as the only subprotocol (no "realtime") is taken, and neither it nor a wrong one is logged.
    async with session.ws_connect(_ws(gateway), protocols=(f"{realtime.KEY_SUBPROTOCOL_PREFIX}caller-key-two",)) as ws:
        await _created(ws)
    wrong = (f"{realtime.KEY_SUBPROTOCOL_PREFIX}logged-wrong-key",)
    assert (await _refusal(session, _ws(gateway), protocols=wrong)).status == 401
    lines = gateway.log_path.read_text().splitlines()
    assert [line for line in lines if "caller-key-two" in line or "logged-wrong-key" in line] == []


async def test_sessions_are_admitted_per_replica_and_refused_beyond_with_retry_after(
    sandbox: Sandbox, kube: Kube, session: aiohttp.ClientSession, gateways: list[Gateway], simulators: Any,
    tmp_path: Path,
) -> None:  # fmt: skip
    ports = await _world(kube, session, simulators, 2)
    gateway = await _gateway(gateways, sandbox, tmp_path, session, "--realtime-full-wait-seconds", "0.5")
    opened = []
    for _ in range(4):
        ws = await session.ws_connect(_ws(gateway), headers=auth())
        await _created(ws)
        opened.append(ws)
    for port in ports:
        assert await gateway.metric(session, realtime.REPLICA_SESSIONS, f'replica="127.0.0.1:{port}"') == 2
    refused = await _refusal(session, _ws(gateway), headers=auth())
    assert refused.status == 503
    assert refused.headers is not None
    assert refused.headers["Retry-After"] == "10"
    assert await gateway.metric(session, realtime.SESSIONS_TOTAL, 'outcome="refused_full"') == 1
    # A handshake held while full is admitted the moment a session ends.
    waiting = asyncio.ensure_future(session.ws_connect(_ws(gateway), headers=auth()))
    await eventually(lambda: gateway.metric(session, realtime.SESSIONS_HELD), timeout=5, interval=0.05)
    await opened.pop().close()
    ws = await asyncio.wait_for(waiting, 10)
    await _created(ws)
    opened.append(ws)
    for ws in opened:
        await ws.close()
    await eventually(lambda: _zero(gateway, session, realtime.SESSIONS_OPEN), timeout=5, interval=0.05)


async def _zero(gateway: Gateway, session: aiohttp.ClientSession, name: str) -> bool:
    return await gateway.metric(session, name) == 0


async def test_a_session_at_zero_replicas_is_held_then_answered(
    sandbox: Sandbox, kube: Kube, session: aiohttp.ClientSession, gateways: list[Gateway], simulators: Any,
    tmp_path: Path,
) -> None:  # fmt: skip
    await put_secret(kube, "callers", {"alice": CALLER_KEY})
    await put_secret(kube, "vllm-key", {"api-key": BACKEND_KEY})
    gateway = await _gateway(gateways, sandbox, tmp_path, session)
    waiting = asyncio.ensure_future(stream(session, _ws(gateway), key=CALLER_KEY, seconds=1.0))
    # Held: the autoscaler reads it as a request held at zero replicas.
    await eventually(lambda: gateway.metric(session, names.QUEUED_REQUESTS), timeout=5, interval=0.05)
    assert await gateway.metric(session, names.HELD_REQUESTS) == 1
    port = await start_sim(simulators, session, "--model", MODEL, "--api-key", BACKEND_KEY)
    await put_slice(kube, "mini-0", port)
    result = await asyncio.wait_for(waiting, 20)
    assert result.done is not None, result
    assert result.done["text"] == "w5 w10 w12"


async def test_a_leaving_replica_drains_then_closes_1012_and_suspend_closes_with_its_reason(
    sandbox: Sandbox, kube: Kube, session: aiohttp.ClientSession, gateways: list[Gateway], simulators: Any,
    tmp_path: Path,
) -> None:  # fmt: skip
    ports = await _world(kube, session, simulators)
    gateway = await _gateway(gateways, sandbox, tmp_path, session, "--realtime-drain-seconds", "1")
    ws = await session.ws_connect(_ws(gateway), headers=auth())
    await _created(ws)
    await put_slice(kube, "mini-0", ports[0], ready=False)
    await eventually(lambda: _zero(gateway, session, names.READY_REPLICAS), timeout=5, interval=0.05)
    # Within the drain time the session still works.
    await ws.send_str(json.dumps({"type": "session.update", "model": "nope"}))
    assert json.loads((await ws.receive(timeout=5)).data)["code"] == "model_not_found"
    closed = await _until_closed(ws)
    assert ws.close_code == realtime.SERVICE_RESTART, closed
    assert "replica leaving" in (closed.extra or ""), closed
    await put_slice(kube, "mini-0", ports[0], ready=True)
    await eventually(lambda: gateway.metric(session, names.READY_REPLICAS), timeout=5, interval=0.05)
    ws = await session.ws_connect(_ws(gateway), headers=auth())
    await _created(ws)
    await put_endpoint(kube, suspended=True)
    closed = await _until_closed(ws)
    assert ws.close_code == realtime.GOING_AWAY
    assert "endpoint suspended" in (closed.extra or ""), closed
    refused = await _refusal(session, _ws(gateway), headers=auth())
    assert refused.status == 503
    assert await gateway.metric(session, realtime.SESSIONS_CLOSED_TOTAL, 'reason="suspended"') == 1
    assert await gateway.metric(session, realtime.SESSIONS_CLOSED_TOTAL, 'reason="drained"') == 1


async def test_bounds_frame_size_rate_idle_and_length_close_with_reasons(
    sandbox: Sandbox, kube: Kube, session: aiohttp.ClientSession, gateways: list[Gateway], simulators: Any,
    tmp_path: Path,
) -> None:  # fmt: skip
    await _world(kube, session, simulators)
    bounds = ("--realtime-max-frame-bytes", "65536", "--realtime-messages-per-second", "4")
    bounds += ("--realtime-idle-seconds", "1", "--realtime-max-session-seconds", "3")
    bounds += ("--realtime-sessions-per-replica", "4")  # the four cases at once
    gateway = await _gateway(gateways, sandbox, tmp_path, session, *bounds)
    pcm = json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(b"\0\0" * 160).decode()})

    async def case(label: str) -> tuple[str, aiohttp.WSMessage, int | None]:
        async with session.ws_connect(_ws(gateway), headers=auth()) as ws:
            await _created(ws)
            if label == "too_big":
                await ws.send_str(frame(3.0))  # 96 kB of PCM as base64
            elif label == "rate":
                for _ in range(40):
                    await ws.send_str(json.dumps({"type": "session.update", "model": MODEL}))
            elif label == "too_long":  # never idle, yet too long

                async def keep_sending() -> None:
                    while True:
                        await ws.send_str(pcm)
                        await asyncio.sleep(0.5)

                sender = asyncio.ensure_future(keep_sending())
                closed = await _until_closed(ws)
                sender.cancel()
                return label, closed, ws.close_code
            return label, await _until_closed(ws), ws.close_code  # idle: sends nothing

    cases = await asyncio.gather(*(case(label) for label in ("too_big", "rate", "idle", "too_long")))
    seen = {label: (code, message.extra) for label, message, code in cases}
    assert seen["too_big"][0] == realtime.TOO_BIG, seen
    assert seen["rate"] == (realtime.POLICY, "more than 4 messages per second"), seen
    assert seen["idle"] == (realtime.GOING_AWAY, "idle for 1s"), seen
    assert seen["too_long"] == (realtime.POLICY, "session longer than 3s"), seen
    async with session.get(f"http://127.0.0.1:{gateway.metrics_port}/metrics") as response:
        page = [line for line in (await response.text()).splitlines() if "closed_total{" in line]
    for label in ("too_big", "rate", "idle", "too_long"):
        assert f'{realtime.SESSIONS_CLOSED_TOTAL}{{reason="{label}"}} 1.0' in page, (label, page)


async def test_a_gateway_pod_shutting_down_closes_its_sessions_1012_to_reconnect(
    sandbox: Sandbox, kube: Kube, session: aiohttp.ClientSession, gateways: list[Gateway], simulators: Any,
    tmp_path: Path,
) -> None:  # fmt: skip
    await _world(kube, session, simulators)
    gateway = await _gateway(gateways, sandbox, tmp_path, session)
    ws = await session.ws_connect(_ws(gateway), headers=auth())
    await _created(ws)
    gateway.process.terminate()  # SIGTERM, as the kubelet stops a pod
    closed = await _until_closed(ws)
    assert ws.close_code == realtime.SERVICE_RESTART, closed
    assert "gateway pod shutting down" in (closed.extra or ""), closed
    assert await asyncio.to_thread(gateway.process.wait, 30) == 0


async def test_a_caller_that_does_not_read_is_closed_not_buffered_for(
    sandbox: Sandbox, kube: Kube, session: aiohttp.ClientSession, gateways: list[Gateway], tmp_path: Path
) -> None:
    """A replica that writes faster than the caller reads: the gateway holds no more than its socket's
    buffers for the session, and closes it (1008) once the caller has taken nothing for the bound."""

    async def flood(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_str(json.dumps({"type": "session.created", "id": "sess-flood", "created": 0}))
        chunk = json.dumps({"type": "transcription.delta", "delta": "x" * 100_000})
        with contextlib.suppress(ConnectionError, RuntimeError):
            while not ws.closed:
                await ws.send_str(chunk)
        return ws

    app = web.Application()
    app.router.add_get("/v1/realtime", flood)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        await put_secret(kube, "callers", {"alice": CALLER_KEY})
        await put_secret(kube, "vllm-key", {"api-key": BACKEND_KEY})
        await put_slice(kube, "mini-0", port)
        gateway = await _gateway(gateways, sandbox, tmp_path, session, "--realtime-slow-reader-seconds", "1")
        ws = await session.ws_connect(_ws(gateway), headers=auth(), max_msg_size=0)
        await asyncio.sleep(3.0)  # reads nothing: aiohttp stops taking bytes once its queue is full
        rss = gateway_rss(gateway)
        closed = await _until_closed(ws)  # now reads what was buffered, then the close
        assert ws.close_code == realtime.POLICY, closed
        assert closed.extra == "the caller did not read for 1s", closed
        assert rss < 200, f"gateway RSS {rss:.0f} MB while the caller did not read"
        await eventually(
            lambda: gateway.metric(session, realtime.SESSIONS_CLOSED_TOTAL, 'reason="slow_reader"'), timeout=10
        )
    finally:
        await runner.cleanup()


def gateway_rss(gateway: Gateway) -> float:
    for line in Path(f"/proc/{gateway.process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# --- handshakes that end early, and per-key limits ---------------------------------------------------


@contextlib.asynccontextmanager
async def _gated_replica() -> AsyncIterator[tuple[int, asyncio.Event, list[str]]]:
    """A replica whose upgrade waits until the test sets the gate (a busy vLLM, a slow network). `seen`
    gets "reached" as a handshake arrives and "closed" when a session accepted by it ends."""
    gate = asyncio.Event()
    seen: list[str] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        seen.append("reached")
        await gate.wait()
        ws = web.WebSocketResponse()
        with contextlib.suppress(ConnectionError, RuntimeError):  # the gateway may have gone meanwhile
            await ws.prepare(request)
            await ws.send_str(json.dumps({"type": "session.created", "id": "sess-gated", "created": 0}))
            async for _ in ws:
                pass
            seen.append("closed")
        return ws

    app = web.Application()
    app.router.add_get(realtime.ROUTE, handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield port, gate, seen
    finally:
        await runner.cleanup()


async def _saw(seen: list[str], what: str) -> bool:
    return what in seen


async def _keys(kube: Kube) -> None:
    await put_secret(kube, "callers", {"alice": CALLER_KEY, "bob": "caller-key-two"})
    await put_secret(kube, "vllm-key", {"api-key": BACKEND_KEY})


async def _metric_becomes(gateway: Gateway, session: aiohttp.ClientSession, name: str, labels: str = "") -> float:
    """The metric's value once it is not 0 (or 0 after 20 s)."""
    seen = [0.0]

    async def check() -> bool:
        seen.append(await gateway.metric(session, name, labels))
        return seen[-1] != 0

    with contextlib.suppress(AssertionError):
        await eventually(check, timeout=20, interval=0.1)
    return seen[-1]


async def _metric_falls_to_zero(gateway: Gateway, session: aiohttp.ClientSession, name: str) -> None:
    seen = [0.0]

    async def check() -> bool:
        seen.append(await gateway.metric(session, name))
        return seen[-1] == 0

    with contextlib.suppress(AssertionError):
        await eventually(check, timeout=20, interval=0.1)
    assert seen[-1] == 0, f"{name} stayed {seen[-1]:g} for 20s"


async def _handshake(
    session: aiohttp.ClientSession, gateway: Gateway, headers: Mapping[str, str], *, valid: bool = True
) -> tuple[int, dict[str, Any] | None, Mapping[str, str]]:
    """An upgrade request as plain HTTP, to read a refusal's body: (status, JSON body, headers); no body
    is read from a 101. `valid`: with RFC 6455's Sec-WebSocket-Key and -Version, else only the Upgrade."""
    upgrade = {"Upgrade": "websocket", "Connection": "Upgrade"}
    if valid:
        upgrade |= {"Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode()}
    async with session.get(gateway.url + realtime.ROUTE, headers={**upgrade, **headers}) as response:
        body = await response.json() if response.status != 101 else None
        return response.status, body, response.headers


@contextlib.asynccontextmanager
async def _a_caller_connecting(
    sandbox: Sandbox,
    kube: Kube,
    session: aiohttp.ClientSession,
    gateways: list[Gateway],
    tmp_path: Path,
    full_wait_seconds: int,
) -> AsyncIterator[tuple[Gateway, asyncio.Event, list[str], asyncio.Future[aiohttp.ClientWebSocketResponse]]]:
    """A gateway admitting one session a replica, in front of a gated replica, and a caller's handshake
    placed on it: the gateway is connecting to the replica, which waits for the gate."""
    async with _gated_replica() as (port, gate, seen):
        await _keys(kube)
        await put_slice(kube, "mini-0", port)
        gateway = await _gateway(
            gateways, sandbox, tmp_path, session,
            "--realtime-sessions-per-replica", "1", "--realtime-full-wait-seconds", str(full_wait_seconds),
        )  # fmt: skip
        handshake = asyncio.ensure_future(session.ws_connect(_ws(gateway), headers=auth()))
        await eventually(lambda: _saw(seen, "reached"), timeout=15, interval=0.05)
        yield gateway, gate, seen, handshake


async def test_a_caller_leaving_while_the_gateway_connects_gives_the_replica_slot_back(
    sandbox: Sandbox, kube: Kube, session: aiohttp.ClientSession, gateways: list[Gateway], tmp_path: Path
) -> None:
    async with _a_caller_connecting(sandbox, kube, session, gateways, tmp_path, 1) as (gateway, gate, _, leaving):
        # The session holds the replica's slot from its placement, and the gauge shows it.
        assert await gateway.metric(session, realtime.SESSIONS_OPEN) == 1
        leaving.cancel()  # the caller gives up while the gateway waits for the replica: its connection closes
        with contextlib.suppress(asyncio.CancelledError):
            await leaving
        await _metric_falls_to_zero(gateway, session, realtime.SESSIONS_OPEN)
        gate.set()
        try:
            ws = await session.ws_connect(_ws(gateway), headers=auth())
        except aiohttp.WSServerHandshakeError as exc:
            pytest.fail(f"the next caller got {exc.status}: the slot of the caller who left was kept")
        await _created(ws)
        await ws.close()


async def test_a_suspend_while_the_gateway_connects_refuses_the_handshake_and_closes_the_replica(
    sandbox: Sandbox, kube: Kube, session: aiohttp.ClientSession, gateways: list[Gateway], tmp_path: Path
) -> None:
    async with _a_caller_connecting(sandbox, kube, session, gateways, tmp_path, 60) as (gateway, gate, seen, attempt):
        # A second caller waits for room behind the first.
        waiting = asyncio.ensure_future(session.ws_connect(_ws(gateway), headers=auth()))
        await eventually(lambda: gateway.metric(session, realtime.SESSIONS_HELD), timeout=15, interval=0.05)
        await put_endpoint(kube, suspended=True)

        async def suspended() -> bool:
            return await raw_status(gateway.port, "GET /v1/models HTTP/1.1") == 503

        await eventually(suspended, timeout=15, interval=0.1)  # the gateway follows the suspend
        gate.set()  # only now does the replica accept the gateway's socket
        statuses = []
        for handshake in (attempt, waiting):
            try:
                ws = await asyncio.wait_for(handshake, 30)
            except aiohttp.WSServerHandshakeError as exc:
                statuses.append(exc.status)
            else:
                statuses.append(101)
                await ws.close()
        assert statuses == [503, 503], f"the handshakes (connecting, held) got {statuses} on a suspended endpoint"
        await _metric_falls_to_zero(gateway, session, realtime.SESSIONS_OPEN)
        await eventually(lambda: _saw(seen, "closed"), timeout=15, interval=0.05)
        assert await gateway.metric(session, realtime.SESSIONS_TOTAL, 'outcome="admitted"') == 0


async def test_a_replica_refusing_the_socket_answers_502_at_once_rather_than_holding(
    sandbox: Sandbox, kube: Kube, session: aiohttp.ClientSession, gateways: list[Gateway], tmp_path: Path
) -> None:
    await _keys(kube)
    await put_slice(kube, "mini-0", free_port())  # ready, but nothing listens: every socket is refused
    gateway = await _gateway(gateways, sandbox, tmp_path, session)
    try:
        async with asyncio.timeout(30):  # the hold timeout is far longer
            status, body, _ = await _handshake(session, gateway, auth())
    except TimeoutError:
        pytest.fail("no answer within 30s: the handshake is held for a replica not tried yet")
    assert (status, body and body["error"]["code"]) == (502, "backend_unreachable"), (status, body)
    assert await gateway.metric(session, realtime.SESSIONS_TOTAL, 'outcome="refused_unreachable"') == 1
    assert await gateway.metric(session, realtime.SESSIONS_OPEN) == 0


async def test_a_malformed_upgrade_is_answered_400_without_touching_a_replica(
    sandbox: Sandbox, kube: Kube, session: aiohttp.ClientSession, gateways: list[Gateway], simulators: Any,
    tmp_path: Path,
) -> None:  # fmt: skip
    ports = await _world(kube, session, simulators)
    gateway = await _gateway(gateways, sandbox, tmp_path, session)
    # Upgrade: websocket without Sec-WebSocket-Key and -Version is not a handshake (RFC 6455 4.2.1).
    status, body, _ = await _handshake(session, gateway, auth(), valid=False)
    assert (status, body and body["error"]) == (
        400,
        {"message": "Bad request: not a valid WebSocket handshake", "type": "invalid_request_error", "param": None,
         "code": "bad_request"},
    ), (status, body)  # fmt: skip
    async with session.get(f"http://127.0.0.1:{ports[0]}/metrics") as response:
        page = await response.text()
    reached = [line for line in page.splitlines() if line.startswith("vllm:websocket_connections_total")]
    assert reached == ["vllm:websocket_connections_total 0.0"], reached
    assert await gateway.metric(session, realtime.SESSIONS_TOTAL, 'outcome="admitted"') == 0


async def test_an_append_is_metered_by_its_parsed_type_however_its_json_spells_it(
    sandbox: Sandbox, kube: Kube, session: aiohttp.ClientSession, gateways: list[Gateway], simulators: Any,
    tmp_path: Path,
) -> None:  # fmt: skip
    await _world(kube, session, simulators)
    gateway = await _gateway(gateways, sandbox, tmp_path, session)
    audio = base64.b64encode(b"\0\0" * 16000 * 2).decode()  # 2 s of PCM16
    async with session.ws_connect(_ws(gateway), headers=auth()) as ws:
        await _created(ws)
        await ws.send_str(json.dumps({"type": "session.update", "model": MODEL}))
        # JSON-equal to {"type": "input_audio_buffer.append", ...} ("\u005f" is "_"): the replica transcribes it.
        await ws.send_str('{"type": "input\\u005faudio_buffer.append", "audio": "' + audio + '"}')
        await ws.send_str(json.dumps({"type": "input_audio_buffer.commit", "final": True}))
        async with asyncio.timeout(20):
            while (event := json.loads((await ws.receive()).data))["type"] != "transcription.done":
                assert event["type"] != "error", event
    assert event["usage"]["prompt_tokens"] > 0, event
    alice = key_id(CALLER_KEY.encode())
    seconds = await _metric_becomes(gateway, session, names.USAGE_AUDIO_SECONDS_TOTAL, f'key_id="{alice}"')
    assert seconds == pytest.approx(2.0), f"2 s transcribed ({event['usage']}), {seconds} s metered"


async def test_per_key_limits_apply_to_sessions_at_the_handshake_and_to_their_audio(
    sandbox: Sandbox, kube: Kube, session: aiohttp.ClientSession, gateways: list[Gateway], simulators: Any,
    tmp_path: Path,
) -> None:  # fmt: skip
    """A session is one request holding one of its key's concurrent slots for its life; its appends are
    charged to the key's audio-seconds. Alice: 1 concurrent, 1 a minute; Bob 10 a minute and 0.5 audio-seconds
    (its refill to the 0.1 s a new session needs takes 12 s, far longer than the test's steps)."""
    await _world(kube, session, simulators)
    gateway = await _gateway(
        gateways, sandbox, tmp_path, session, "--realtime-sessions-per-replica", "4",
        "--key-concurrent-requests", "1", "--key-requests-per-minute", "1",
        "--key-override", "bob:audio-seconds-per-minute=0.5,requests-per-minute=10",
    )  # fmt: skip
    first = await session.ws_connect(_ws(gateway), headers=auth())
    await _created(first)
    status, body, headers = await _handshake(session, gateway, auth())
    assert (status, headers.get("Retry-After")) == (429, "1"), (status, body)
    assert body is not None
    assert body["error"]["type"] == "rate_limit_error", body
    assert body["error"]["code"] == "rate_limit_exceeded", body
    assert "concurrent requests" in body["error"]["message"], body
    # Another key is not limited by Alice's session.
    bob = await session.ws_connect(_ws(gateway), headers=auth("caller-key-two"))
    await _created(bob)
    await first.close()

    async def refused_per_minute() -> bool:
        status, body, _ = await _handshake(session, gateway, auth())
        assert status == 429, f"Alice's second session in a minute got {status}"
        assert body is not None
        return "requests per minute" in body["error"]["message"]

    # Once her first session has ended its slot is free, and her requests per minute refuse the next.
    await eventually(refused_per_minute, timeout=20, interval=0.1)
    # Bob's appends are charged to his audio-seconds: 2 x 0.25 s pass, the third is over and closes the session.
    quarter = base64.b64encode(b"\0\0" * 4000).decode()
    quarter_second = json.dumps({"type": "input_audio_buffer.append", "audio": quarter})
    await bob.send_str(json.dumps({"type": "session.update", "model": MODEL}))
    for _ in range(3):
        await bob.send_str(quarter_second)
    try:
        closed = await _until_closed(bob)
    except TimeoutError:
        await bob.close()
        pytest.fail("Bob's session stayed open 15s after 0.75 s of audio against his 0.5 a minute")
    assert bob.close_code == realtime.POLICY, closed
    assert (closed.extra or "").startswith("this key's audio seconds per minute reached; retry in "), closed
    bob_id = key_id(b"caller-key-two")
    assert await gateway.metric(session, names.USAGE_AUDIO_SECONDS_TOTAL, f'key_id="{bob_id}"') == pytest.approx(0.5)
    assert await gateway.metric(session, realtime.SESSIONS_CLOSED_TOTAL, 'reason="key_limit"') == 1
    # With his audio spent, Bob's next session is refused at the handshake, not opened to be closed.
    status, body, headers = await _handshake(session, gateway, auth("caller-key-two"))
    assert status == 429, f"Bob's session with no audio left got {status}: {body}"
    assert body is not None
    assert "audio seconds per minute" in body["error"]["message"], body
    assert int(headers["Retry-After"]) >= 1, headers
    # The refused handshakes never reached a replica.
    assert await gateway.metric(session, realtime.SESSIONS_TOTAL, 'outcome="admitted"') == 2
