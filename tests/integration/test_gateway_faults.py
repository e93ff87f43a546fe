"""A request that fails anywhere gives back everything it took: its replica slot and its queue place.

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
from voxtral_operator.gateway.dispatch import Dispatcher
from voxtral_operator.gateway.sources import Sources
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
    gateway = Gateway(sources, dispatcher, Settings(body_timeout=1.0))
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
    # A failure before the answer started is a 500 (an exception) or a dropped connection (cancelled).
    assert outcomes["leased"] in (500, "ServerDisconnectedError", "ClientOSError"), outcomes
    assert all(outcome != 200 for step, outcome in outcomes.items() if step != "accounted"), outcomes


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


async def test_a_stalled_upload_gives_its_slot_back(running: Running) -> None:
    """An authenticated upload that stops sending: abandoned after the body timeout, slot released."""

    async def trickle() -> AsyncIterator[bytes]:
        yield b'{"prompt": "' + b"x" * 70_000  # past the prefix: dispatched, then streamed
        await asyncio.sleep(30)
        yield b'"}'

    async with aiohttp.ClientSession() as session:
        request = asyncio.create_task(session.post(f"{running.url}/v1/completions", data=trickle()))
        await eventually(lambda: inflight(running.dispatcher), timeout=10)
        await eventually(lambda: settled(running.dispatcher), timeout=15)
        request.cancel()
        with contextlib.suppress(asyncio.CancelledError, aiohttp.ClientError):
            await request
    assert await post(running.url, b'{"prompt": "next"}') == 200


@pytest.mark.parametrize("number", ["9" * 400, "9" * 5000, "1e999", "-" + "9" * 400, "NaN", "1" + "0" * 30, "[" * 5000])
async def test_overflowing_numbers_leave_nothing_behind(running: Running, number: str) -> None:
    small = f'{{"prompt": "x", "max_tokens": {number}}}'.encode()
    beyond_prefix = f'{{"max_tokens": {number}, "pad": "{"x" * 70_000}"}}'.encode()
    statuses = await asyncio.gather(*(post(running.url, body) for body in [small, beyond_prefix] * 8))
    assert statuses == [200] * 16
    await eventually(lambda: settled(running.dispatcher), timeout=10)
    assert json.loads(json.dumps(running.dispatcher.snapshot().inflight_audio_seconds)) == 0
