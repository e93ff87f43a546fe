"""Every read from a pod is bounded in size and time: a hostile image cannot cost the operator memory."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from voxtral_operator.autoscale.scrape import ReadLimitExceeded, get_bounded

LIMIT = 64 * 1024


async def _endless(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse()
    await response.prepare(request)
    chunk = b"vllm:num_requests_waiting 1\n" * 1024
    for _ in range(100_000):  # ~2.8 GB if anyone read it all; the test reads 64 KiB
        await response.write(chunk)
    return response


async def _slow(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse()
    await response.prepare(request)
    for _ in range(600):
        await response.write(b"# still here\n")
        await asyncio.sleep(0.05)
    return response


async def _huge_declared(request: web.Request) -> web.Response:
    return web.Response(body=b"x", headers={"Content-Length": str(10 * 2**30)})


async def _gzip_bomb(request: web.Request) -> web.Response:
    body = gzip.compress(b"\0" * (16 * 2**20))  # 16 MiB of zeros in ~16 KiB: below the limit until inflated
    return web.Response(body=body, headers={"Content-Encoding": "gzip"})


async def _redirect(request: web.Request) -> web.Response:
    raise web.HTTPFound("http://169.254.169.254/latest/meta-data/")


async def _small(request: web.Request) -> web.Response:
    return web.Response(text="vllm:num_requests_waiting 3\n")


@pytest.fixture
async def pod() -> AsyncIterator[str]:
    app = web.Application()
    for path, handler in [
        ("/endless", _endless),
        ("/slow", _slow),
        ("/huge", _huge_declared),
        ("/gzip", _gzip_bomb),
        ("/redirect", _redirect),
        ("/small", _small),
    ]:
        app.router.add_get(path, handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("path", ["/endless", "/huge", "/gzip"])
async def test_a_body_past_the_limit_is_refused(pod: str, path: str) -> None:
    async with aiohttp.ClientSession() as session:
        with pytest.raises(ReadLimitExceeded):
            await get_bounded(session, pod + path, max_bytes=LIMIT, timeout_seconds=30)


async def test_a_body_that_never_ends_in_time_is_cut_at_the_time_limit(pod: str) -> None:
    async with aiohttp.ClientSession() as session:
        with pytest.raises(TimeoutError):
            await get_bounded(session, pod + "/slow", max_bytes=LIMIT, timeout_seconds=0.3)


async def test_redirects_are_not_followed(pod: str) -> None:
    async with aiohttp.ClientSession() as session:
        response = await get_bounded(session, pod + "/redirect", max_bytes=LIMIT, timeout_seconds=30)
    assert response.status == 302  # answered by the pod itself: the metadata service was never asked


async def test_a_normal_page_reads_whole(pod: str) -> None:
    async with aiohttp.ClientSession() as session:
        response = await get_bounded(session, pod + "/small", max_bytes=LIMIT, timeout_seconds=30)
    assert (response.status, response.body) == (200, b"vllm:num_requests_waiting 3\n")
