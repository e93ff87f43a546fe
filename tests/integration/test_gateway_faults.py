"""A request that fails anywhere gives back everything it took: its replica slot and its queue place;
and no connection holds the gateway longer than its bounds allow.

The gateway runs in this process (its HTTP server on loopback, a real backend behind it) so a
failure can be injected at each named step of a request's life (`app.STEPS`), as an exception and as
a cancellation, and the dispatcher's counts read directly afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import pytest
from aiohttp import web

from voxtral_operator.gateway.app import STEPS, Gateway, Settings, serve_api
from voxtral_operator.gateway.connections import READ_BUFSIZE, GuardedServer, Limits
from voxtral_operator.gateway.dispatch import Dispatcher
from voxtral_operator.gateway.sources import CallerKeys, Sources
from voxtral_testbed.harness import eventually, free_port

pytestmark = pytest.mark.integration


class InjectedFault(Exception):
    pass


@dataclass
class Running:
    gateway: Gateway
    dispatcher: Dispatcher
    url: str
    release: asyncio.Event


@pytest.fixture
async def running() -> AsyncIterator[Running]:
    release = asyncio.Event()
    release.set()

    async def answer(request: web.Request) -> web.StreamResponse:
        await request.read()
        await asyncio.wait_for(release.wait(), 20)
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        await response.write(b'{"usage": {"prompt_tokens": 3, ')
        await response.write(b'"completion_tokens": 5}}')
        return response

    backend = web.Application()
    backend.router.add_route("*", "/{tail:.*}", answer)
    backend_runner = web.AppRunner(backend, access_log=None)
    await backend_runner.setup()
    port = free_port()
    await web.TCPSite(backend_runner, "127.0.0.1", port).start()
    sources = Sources()
    sources.set_backends([f"127.0.0.1:{port}"])
    dispatcher = Dispatcher(max_inflight=1, max_queue=32, queue_timeout=30)
    gateway = Gateway(sources, dispatcher, Settings(body_timeout=1.0, max_upload_bytes=1_000_000))
    runner, api_port = await serve_api(gateway, "127.0.0.1", 0, shutdown_timeout=1)
    yield Running(gateway, dispatcher, f"http://127.0.0.1:{api_port}", release)
    release.set()
    await runner.cleanup()
    await gateway.close()
    await backend_runner.cleanup()


async def settled(dispatcher: Dispatcher) -> bool:
    snapshot = dispatcher.snapshot()
    return snapshot.inflight == 0 and snapshot.queued == 0 and dispatcher.waiting == 0


async def settled_queue(dispatcher: Dispatcher) -> bool:
    return dispatcher.waiting == 0


async def inflight(dispatcher: Dispatcher) -> int:
    return dispatcher.snapshot().inflight


async def waiting(dispatcher: Dispatcher) -> int:
    return dispatcher.waiting


async def post(url: str, body: bytes) -> int | str:
    """The status of one request on its own connection, or how it failed."""
    async with aiohttp.ClientSession() as session:
        try:
            async with session.post(f"{url}/v1/completions", data=body) as response:
                await response.read()
                return response.status
        except aiohttp.ClientError as exc:
            return type(exc).__name__


@pytest.mark.parametrize("fault", [InjectedFault, asyncio.CancelledError])
async def test_a_failure_at_any_step_releases_the_slot(running: Running, fault: type[BaseException]) -> None:
    outcomes: dict[str, int | str] = {}
    for step in STEPS:

        def fail(at: str, step: str = step) -> None:
            if at == step:
                raise fault(f"injected at {step}")

        running.gateway.fault_at = fail
        outcomes[step] = await post(running.url, b'{"prompt": "x", "max_tokens": 4}')
        running.gateway.fault_at = None
        await eventually(lambda: settled(running.dispatcher), timeout=10)
        # The slot is back: the next request goes through at once.
        assert await post(running.url, b'{"prompt": "y"}') == 200, step
    # Before the answer starts: a 500 (an exception) or a dropped connection (a cancellation); after
    # it started: the answer is cut off. Once the answer is complete, a failure changes nothing for it.
    before = STEPS[: STEPS.index("response_started")]
    expected_before = 500 if fault is InjectedFault else "ServerDisconnectedError"
    assert [outcomes[step] for step in before] == [expected_before] * len(before), outcomes
    assert outcomes["response_started"] == outcomes["response_streamed"] == "ClientPayloadError", outcomes
    assert outcomes["accounted"] == 200, outcomes


async def test_a_caller_leaving_the_queue_gives_its_place_back(running: Running) -> None:
    running.release.clear()
    holder = asyncio.create_task(post(running.url, b'{"prompt": "holds the only slot"}'))
    await eventually(lambda: inflight(running.dispatcher), timeout=10)
    queued = asyncio.create_task(post(running.url, b'{"prompt": "queued"}'))
    await eventually(lambda: waiting(running.dispatcher), timeout=10)
    queued.cancel()  # the caller hangs up while queued
    with contextlib.suppress(asyncio.CancelledError):
        await queued
    await eventually(lambda: settled_queue(running.dispatcher), timeout=10)
    running.release.set()
    assert await holder == 200
    await eventually(lambda: settled(running.dispatcher), timeout=10)


async def stalled(head: bytes) -> AsyncIterator[bytes]:
    """A JSON body that sends `head` and 70 kB past the prefix, then nothing for 30 s."""
    yield head + b"x" * 70_000
    await asyncio.sleep(30)
    yield b'"}'


async def test_a_stalled_upload_gives_its_slot_back(running: Running) -> None:
    """An authenticated upload that stops sending: abandoned after the body timeout, slot released."""
    # Its tier named in the prefix and the rest past it: dispatched, then streamed.
    body = stalled(b'{"service_tier": "auto", "prompt": "')
    async with aiohttp.ClientSession() as session:
        request = asyncio.create_task(session.post(f"{running.url}/v1/completions", data=body))
        await eventually(lambda: inflight(running.dispatcher), timeout=10)
        await eventually(lambda: settled(running.dispatcher), timeout=15)
        request.cancel()
        with contextlib.suppress(asyncio.CancelledError, aiohttp.ClientError):
            await request
    assert await post(running.url, b'{"prompt": "next"}') == 200


async def test_a_stalled_json_body_read_whole_takes_no_slot_and_gives_its_buffer_back(running: Running) -> None:
    """A long JSON body naming no tier in its prefix is read whole before dispatch: stalled, it is answered
    408 without ever holding a replica slot, and its share of the pod's JSON buffers comes back."""
    seen_inflight = 0

    async def watch() -> None:
        nonlocal seen_inflight
        while True:
            seen_inflight = max(seen_inflight, running.dispatcher.snapshot().inflight)
            await asyncio.sleep(0.01)

    watcher = asyncio.create_task(watch())
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{running.url}/v1/completions", data=stalled(b'{"prompt": "')) as response,
    ):
        assert response.status == 408, await response.text()
    watcher.cancel()
    assert seen_inflight == 0
    assert running.gateway.json_buffers.held == 0
    assert await post(running.url, b'{"prompt": "next"}') == 200


@pytest.mark.parametrize("number", ["9" * 400, "9" * 5000, "1e999", "-" + "9" * 400, "NaN", "1" + "0" * 30, "[" * 5000])
async def test_overflowing_numbers_leave_nothing_behind(running: Running, number: str) -> None:
    small = f'{{"prompt": "x", "max_tokens": {number}}}'.encode()
    beyond_prefix = f'{{"max_tokens": {number}, "pad": "{"x" * 70_000}"}}'.encode()
    statuses = await asyncio.gather(*(post(running.url, body) for body in [small, beyond_prefix] * 8))
    assert statuses == [200] * 16
    await eventually(lambda: settled(running.dispatcher), timeout=10)
    assert json.loads(json.dumps(running.dispatcher.snapshot().inflight_audio_seconds)) == 0


@pytest.mark.parametrize(
    ("head", "status"),
    [
        ("POST /invocations HTTP/1.1", 404),
        ("PUT /v1/completions HTTP/1.1", 405),
        ("POST /v1/completions HTTP/1.1\r\nAuthorization: Bearer wrong", 401),
        ("POST /v1/completions HTTP/1.1\r\nAuthorization: Bearer right", 413),
        ("POST /v1/audio/transcriptions HTTP/1.1\r\nAuthorization: Bearer right\r\nContent-Type: text/plain", 415),
        ("POST /v1/completions HTTP/1.1\r\nAuthorization: Bearer right\r\nContent-Encoding: gzip", 415),
        ("GET /v1/models HTTP/1.1\r\nAuthorization: Bearer right", 400),
    ],
)
async def test_an_early_answer_reads_no_body_and_closes(running: Running, head: str, status: int) -> None:
    """The answer comes from the head alone (the body is never sent), and the connection closes after it."""
    running.gateway.sources.caller_keys = CallerKeys([b"right"])
    port = int(running.url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        length = 900_000_000 if status != 415 else 90_000  # under the upload cap: refused for its type
        writer.write(f"{head}\r\nHost: gw\r\nContent-Length: {length}\r\n\r\n".encode())
        await writer.drain()
        async with asyncio.timeout(10):
            answer = await reader.read()  # to EOF: the gateway closes
    finally:
        writer.close()
    assert answer.startswith(f"HTTP/1.1 {status} ".encode()), answer[:200]
    assert b"Connection: close" in answer
    assert await settled(running.dispatcher)


@contextlib.asynccontextmanager
async def gateway_with(limits: Limits) -> AsyncIterator[int]:
    """A gateway with these connection limits and no replica (the port is all these tests need)."""
    gateway = Gateway(Sources(), Dispatcher(hold_timeout=0.1), Settings(limits=limits))
    runner, port = await serve_api(gateway, "127.0.0.1", 0, shutdown_timeout=1)
    try:
        yield port
    finally:
        await runner.cleanup()
        await gateway.close()


async def closed_within(reader: asyncio.StreamReader, seconds: float) -> bool:
    """Whether the gateway closes the connection within `seconds` (whatever it answers before)."""
    try:
        async with asyncio.timeout(seconds):
            while await reader.read(65536):
                pass
        return True
    except TimeoutError:
        return False
    except ConnectionError:
        return True


async def test_idle_connections_are_closed() -> None:
    async with gateway_with(Limits(idle_timeout=0.5, header_timeout=60)) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await closed_within(reader, 15)  # never sent a byte
        writer.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /v1/models HTTP/1.1\r\nHost: gw\r\n\r\n")  # answered (503: no replica), kept alive
        assert await closed_within(reader, 15)  # then idle
        writer.close()


async def test_a_dripped_request_head_is_cut_off() -> None:
    async with gateway_with(Limits(idle_timeout=60, header_timeout=0.5)) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)

        async def drip() -> None:
            for byte in b"GET /v1/models HTTP/1.1\r\nHost: gw\r\nX-Pad: " + b"a" * 200:
                writer.write(bytes([byte]))
                await asyncio.sleep(0.1)

        dripping = asyncio.create_task(drip())
        try:
            assert await closed_within(reader, 15)
            assert not dripping.done()  # cut off while it was still sending its head
        finally:
            dripping.cancel()
            writer.close()


async def test_connections_beyond_the_cap_are_closed() -> None:
    async with gateway_with(Limits(max_connections=3, idle_timeout=60)) as port:
        kept = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await closed_within(reader, 15)
        writer.close()
        for reader, writer in kept:
            writer.write(b"GET /v1/models HTTP/1.1\r\nHost: gw\r\n\r\n")
            async with asyncio.timeout(15):
                assert (await reader.readline()).startswith(b"HTTP/1.1 503")  # served: no replica yet
            writer.close()


async def test_a_connection_whose_body_is_not_read_buffers_little_of_it() -> None:
    # A request waiting in the queue has its body read no further than its prefix: what the connection takes
    # off the socket meanwhile is bounded by the server's small read buffer (twice it, and one socket read).
    seen: list[web.BaseRequest] = []
    release = asyncio.Event()

    async def unread(request: web.BaseRequest) -> web.StreamResponse:
        seen.append(request)
        await asyncio.wait_for(release.wait(), 30)
        return web.Response(text="ok")

    server = GuardedServer(unread, Limits(idle_timeout=60), access_log=None)
    runner = web.ServerRunner(server, shutdown_timeout=1, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    size = 16 * 1024 * 1024
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"POST /v1/completions HTTP/1.1\r\nHost: gw\r\nContent-Length: %d\r\n\r\n" % size)
        writer.write(b"a" * size)  # more than the loopback socket buffers hold: the sender blocks
        await eventually(lambda: asyncio.sleep(0, bool(seen)), timeout=15)
        stream = seen[0].content
        assert stream.get_read_buffer_limits() == (READ_BUFSIZE, 2 * READ_BUFSIZE)
        # aiohttp stops reading the socket in the read that takes it past twice the buffer: nothing more comes.
        await eventually(lambda: asyncio.sleep(0, stream.total_bytes > 2 * READ_BUFSIZE), timeout=15)
        assert stream.total_bytes <= 2 * READ_BUFSIZE + 256 * 1024, f"buffered {stream.total_bytes} bytes unread"
    finally:
        release.set()
        writer.close()
        await runner.cleanup()
