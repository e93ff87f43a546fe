"""Benchmark of the gateway (and the operator's scrape) under hostile callers and pods, before and after.

With `--before DIR` (a checkout of an earlier commit, e.g. `git worktree add --detach /tmp/before
faadf68`), every figure is measured in the same run for that code too: its gateway runs with
PYTHONPATH=DIR/operator, its scrape functions are loaded from DIR. Printed:

1. a 2 MB gzip bomb (about 2 GB inflated) sent unauthenticated to an audio route, 4 at once:
   gateway CPU seconds spent, and the worst latency of a legitimate GET /v1/models sent every
   100 ms meanwhile (all on this machine's shared cores);
2. 5,000 idle connections: how many are still open after the idle timeout (+3 s);
3. 200 connections dripping a request head one byte a second: how many are still open after the
   header timeout (+3 s);
4. an authenticated upload that sends 70 kB (past the prefix the gateway reads before dispatch) and
   then nothing: how long its replica slot is held (watched for at most 20 s);
5. 16 concurrent scrapes of 4 MiB /metrics pages (every line a sample), with the operator's 1 s
   scrape timeout: how many time out, and how many of 16 pages from well-behaved pods scraped
   alongside them time out.

The new gateway runs with short timeouts so the run stays short (idle 5 s, header 3 s, body 5 s; the
defaults are 75/10/30 s); the old one has none to set. Not modelled: TLS, many gateway pods, a real
network between caller and gateway.

    .venv/bin/python bench/gateway_hostile.py [--before /tmp/before]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time
import types
import zlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from voxtral_operator.autoscale import scrape as new_scrape
from voxtral_testbed.harness import Kube, free_port
from voxtral_testbed.sandbox import Sandbox
from voxtral_testbed.secret_volumes import project

NS = "bench"
KEY = "bench-caller-key"
NEW_TIMEOUTS = ("--idle-timeout-seconds", "5", "--header-timeout-seconds", "3", "--body-timeout-seconds", "5")
IDLE_WAIT, HEADER_WAIT, SLOT_WATCH = 8.0, 6.0, 20.0


def gzip_bomb(compressed_bytes: int) -> bytes:
    """Zeros gzipped until the compressed stream is `compressed_bytes` long (about 1000:1)."""
    squeeze = zlib.compressobj(9, zlib.DEFLATED, 31)
    zeros, parts, size = bytes(1 << 20), [], 0
    while size < compressed_bytes:
        part = squeeze.compress(zeros)
        parts.append(part)
        size += len(part)
    parts.append(squeeze.flush())
    return b"".join(parts)


class Backend:
    """A stand-in replica: answers everything at once with a small JSON body."""

    def __init__(self) -> None:
        self.port = free_port()
        self.runner: web.AppRunner | None = None

    async def start(self) -> Backend:
        async def answer(request: web.Request) -> web.Response:
            async for _ in request.content.iter_any():
                pass
            return web.json_response({"data": [], "usage": {"prompt_tokens": 1, "completion_tokens": 1}})

        app = web.Application(client_max_size=1 << 30)
        app.router.add_route("*", "/{tail:.*}", answer)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


class GatewayProcess:
    def __init__(self, kubeconfig: Path, code: str | None, *args: str) -> None:
        self.port, self.metrics_port = free_port(), free_port()
        command = [sys.executable, "-m", "voxtral_operator.cli", "gateway", "--namespace", NS, "--endpoint", "b"]
        command += ["--backend-service", "b", "--host", "127.0.0.1", "--port", str(self.port)]
        command += ["--metrics-port", str(self.metrics_port), "--caller-keys-secret", "callers", *args]
        env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
        if code is not None:
            env["PYTHONPATH"] = f"{code}/operator"
        self.process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.url = f"http://127.0.0.1:{self.port}"

    async def ready(self, session: aiohttp.ClientSession) -> None:
        for _ in range(600):
            with contextlib.suppress(OSError):
                async with session.get(f"http://127.0.0.1:{self.metrics_port}/readyz") as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.05)
        raise RuntimeError("the gateway did not become ready")

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    async def inflight(self, session: aiohttp.ClientSession) -> float:
        async with session.get(f"http://127.0.0.1:{self.metrics_port}/metrics") as response:
            for line in (await response.text()).splitlines():
                if line.startswith("voxtral_gateway_inflight_requests "):
                    return float(line.split()[1])
        return 0.0

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


# --- 1. the gzip bomb -------------------------------------------------------------------------


async def bomb(gateway: GatewayProcess, session: aiohttp.ClientSession, payload: bytes) -> str:
    head = (
        "POST /v1/audio/transcriptions HTTP/1.1\r\nHost: gw\r\nContent-Encoding: gzip\r\n"
        f"Content-Type: multipart/form-data; boundary=x\r\nContent-Length: {len(payload)}\r\n\r\n"
    ).encode()

    async def send_bomb() -> None:
        with contextlib.suppress(OSError):
            reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
            writer.write(head + payload)
            with contextlib.suppress(OSError):
                await writer.drain()
                async with asyncio.timeout(30):
                    await reader.read()
            writer.close()

    latencies: list[float] = []
    failures = 0
    done = asyncio.Event()

    async def legitimate() -> None:
        nonlocal failures
        while not done.is_set():
            started = time.perf_counter()
            try:
                async with session.get(f"{gateway.url}/v1/models", headers={"Authorization": f"Bearer {KEY}"}) as r:
                    await r.read()
                    failures += r.status != 200
            except aiohttp.ClientError:
                failures += 1
            latencies.append(time.perf_counter() - started)
            await asyncio.sleep(0.1)

    cpu = gateway.cpu_seconds()
    caller = asyncio.create_task(legitimate())
    await asyncio.gather(*(send_bomb() for _ in range(4)))
    await asyncio.sleep(1.0)  # what the gateway still does after the senders are done
    done.set()
    await caller
    spent = gateway.cpu_seconds() - cpu
    worst = max(latencies) * 1000
    return f"{spent:6.2f} CPU s, legitimate request worst {worst:7.0f} ms ({len(latencies)} sent, {failures} failed)"


# --- 2, 3. idle and dripping connections ---------------------------------------------------


async def still_open(writers: list[asyncio.StreamWriter], readers: list[asyncio.StreamReader]) -> int:
    count = 0
    for reader, writer in zip(readers, writers, strict=True):
        if writer.is_closing():
            continue
        try:
            async with asyncio.timeout(0.002):
                data = await reader.read(1)
            if data:
                count += 1  # answered but open
        except TimeoutError:
            count += 1  # nothing to read: still open
        except OSError:
            pass
    return count


async def idle(gateway: GatewayProcess, connections: int) -> str:
    readers, writers = [], []
    refused = 0
    for _ in range(connections):
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
        except OSError:
            refused += 1
            continue
        readers.append(reader)
        writers.append(writer)
    await asyncio.sleep(IDLE_WAIT)
    open_now = await still_open(writers, readers)
    for writer in writers:
        writer.close()
    return f"{open_now:5d} of {connections} still open after {IDLE_WAIT:g} s ({refused} refused at connect)"


async def drip(gateway: GatewayProcess, connections: int) -> str:
    pairs = [await asyncio.open_connection("127.0.0.1", gateway.port) for _ in range(connections)]
    head = b"GET /v1/models HTTP/1.1\r\nHost: gw\r\nX-Pad: " + b"a" * 1000

    async def dripping(writer: asyncio.StreamWriter) -> None:
        for byte in head:
            if writer.is_closing():
                return
            with contextlib.suppress(OSError):
                writer.write(bytes([byte]))
            await asyncio.sleep(1.0)

    tasks = [asyncio.create_task(dripping(writer)) for _, writer in pairs]
    await asyncio.sleep(HEADER_WAIT)
    open_now = await still_open([w for _, w in pairs], [r for r, _ in pairs])
    for task in tasks:
        task.cancel()
    for _, writer in pairs:
        writer.close()
    return f"{open_now:5d} of {connections} still open after {HEADER_WAIT:g} s"


# --- 4. a trickled upload ----------------------------------------------------------------------


async def trickle(gateway: GatewayProcess, session: aiohttp.ClientSession) -> str:
    _, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    first = b'{"prompt": "' + b"x" * 70_000
    writer.write(
        b"POST /v1/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {KEY}\r\nTransfer-Encoding: chunked\r\n\r\n{len(first):x}\r\n".encode()
        + first
        + b"\r\n"
    )
    await writer.drain()
    started = time.monotonic()
    seen = False
    while time.monotonic() - started < SLOT_WATCH:
        held = await gateway.inflight(session) > 0
        seen = seen or held
        if seen and not held:
            break
        await asyncio.sleep(0.1)
    held_for = time.monotonic() - started
    writer.close()
    if not seen:
        return "slot never taken"
    if held_for >= SLOT_WATCH:
        return f"slot still held when the bench stopped watching ({SLOT_WATCH:g} s)"
    return f"slot held {held_for:5.1f} s"


# --- 5. scrapes of large /metrics pages -------------------------------------------------------


def old_scrape(code: str) -> types.ModuleType:
    path = Path(code) / "operator/voxtral_operator/autoscale/scrape.py"
    spec = importlib.util.spec_from_file_location("before_scrape", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["before_scrape"] = module
    spec.loader.exec_module(module)
    return module


async def scrapes(scrape: Any, new: bool, port: int) -> str:
    """16 big pages and 16 normal ones scraped at once, as the operator's loop does each round."""
    timed_out = {"big": 0, "small": 0}
    semaphore = asyncio.Semaphore(64)

    async def one(url: str, kind: str) -> None:
        async with aiohttp.ClientSession() as session:
            async with semaphore:
                try:
                    response = await scrape.get_bounded(
                        session, url, max_bytes=scrape.MAX_METRICS_BYTES, timeout_seconds=1.0
                    )
                except (TimeoutError, aiohttp.ClientError, scrape.ReadLimitExceeded):
                    timed_out[kind] += 1
                    return
            if new:
                await scrape.parse_page(response.body, scrape.parse_queue_metrics)
            else:
                scrape.parse_queue_metrics(response.body.decode("utf-8", errors="replace"))

    urls = [(f"http://127.0.0.1:{port}/big", "big")] * 16 + [(f"http://127.0.0.1:{port}/small", "small")] * 16
    await asyncio.gather(*(one(url, kind) for url, kind in urls))
    return f"{timed_out['big']:2d} of 16 big scrapes timed out, {timed_out['small']:2d} of 16 normal ones"


PAGES = """
import sys
from aiohttp import web
line = b'vllm:num_requests_waiting{engine="0",model_name="m"} 1.0\\n'
pages = {"/big": line * ((4 * 2**20 - 1) // len(line)), "/small": b"vllm:num_requests_waiting 1\\n" * 100}
app = web.Application()
app.router.add_get("/{page}", lambda request: web.Response(body=pages["/" + request.match_info["page"]]))
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
"""


async def pages() -> tuple[subprocess.Popen[bytes], int]:
    """The pods' /metrics pages, served by another process (as pods are)."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-c", PAGES, str(port)])  # noqa: ASYNC220 - started once, not awaited
    for _ in range(200):
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return process, port
        await asyncio.sleep(0.05)
    raise RuntimeError("the page server did not start")


# --- the run ------------------------------------------------------------------------------------


async def main(before: str | None) -> None:
    variants: list[tuple[str, str | None, tuple[str, ...]]] = []
    if before is not None:
        variants.append(("before", before, ()))
    # The gateway reads its Secrets from files the kubelet projects (older ones watched the API).
    secrets = Path(tempfile.mkdtemp(prefix="voxtral-bench-secrets-"))
    project(secrets / "callers", {"a": KEY.encode()})
    variants.append(("after", None, (*NEW_TIMEOUTS, "--secrets-dir", str(secrets))))
    payload = gzip_bomb(2 * 10**6)
    results: dict[str, dict[str, str]] = {name: {} for name, _, _ in variants}
    backend = await Backend().start()
    async with Sandbox(controllers=False) as sandbox, aiohttp.ClientSession() as session:
        kube = Kube(sandbox.url, session)
        secret: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "callers", "namespace": NS},
        }
        await kube.create(
            f"/api/v1/namespaces/{NS}/secrets", {**secret, "data": {"a": base64.b64encode(KEY.encode()).decode()}}
        )
        endpoints = {"addresses": ["127.0.0.1"], "conditions": {"ready": True}}
        await kube.create(
            f"/apis/discovery.k8s.io/v1/namespaces/{NS}/endpointslices",
            {
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {"name": "b-1", "namespace": NS, "labels": {"kubernetes.io/service-name": "b"}},
                "addressType": "IPv4",
                "ports": [{"name": "http", "port": backend.port}],
                "endpoints": [endpoints],
            },
        )
        steps: list[tuple[str, Callable[[GatewayProcess], Awaitable[str]]]] = [
            ("1. 2 MB gzip bomb x4, no key", lambda g: bomb(g, session, payload)),
            ("2. 5,000 idle connections", lambda g: idle(g, 5000)),
            ("3. 200 header-dripping connections", lambda g: drip(g, 200)),
            ("4. trickled authenticated upload", lambda g: trickle(g, session)),
        ]
        for label, run in steps:
            for name, code, args in variants:
                gateway = GatewayProcess(sandbox.kubeconfig, code, *args)
                try:
                    await gateway.ready(session)
                    results[name][label] = await run(gateway)
                finally:
                    gateway.stop()
    await backend.stop()
    server, port = await pages()
    label = "5. 16 scrapes of 4 MiB pages"
    try:
        for name, code, _ in variants:
            module = old_scrape(code) if code is not None else new_scrape
            results[name][label] = await scrapes(module, code is None, port)
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(secrets, ignore_errors=True)
    print("gateway under hostile callers (bench/gateway_hostile.py)")
    for label in results["after"]:
        print(label)
        for name, _, _ in variants:
            print(f"   {name:<7} {results[name][label]}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", help="a checkout of the code to compare with (its root directory)")
    asyncio.run(main(parser.parse_args().before))
