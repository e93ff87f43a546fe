"""Benchmark of `voxtral-operator gateway`: what it adds, what one process sustains, what it holds in memory.

Runs the real gateway process against the API emulator (EndpointSlices through a watch)
and the vLLM simulator on loopback, and prints:

1. added latency per request, p50/p99: short clips (1 s WAV transcriptions) sent one at a time,
   straight to the simulator and through the gateway, interleaved;
2. requests/s one gateway process sustains for short clips with 64 concurrent clients, beside the
   simulator's own rate straight (everything shares this machine's cores);
3. peak RSS of the gateway while 20 concurrent 200 MB uploads stream through it (to a sink
   backend that reads and discards: the simulator reads whole uploads into memory and caps them
   at --max-audio-mb, so it is not the backend here);
   and while 20 concurrent 20 MB JSON chat bodies (inline audio, `service_tier` last, as the OpenAI
   SDK writes it) go through: those are read whole before dispatch within the pod's budget
   (--json-buffer-mb, 256 by default) and stream beyond it;
4. scale from zero: from the first held request to its answer after a replica appears, minus the
   simulated model load time.

    .venv/bin/python bench/gateway.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
from aiohttp import web

from voxtral_testbed.harness import Kube, free_port, start_simulator
from voxtral_testbed.sandbox import Sandbox

NS = "bench"
MB = 1_000_000


def wav(seconds: float) -> bytes:
    data = int(seconds * 32000)
    fmt = b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, 16000, 32000, 2, 16)
    return b"RIFF" + struct.pack("<I", 36 + data) + b"WAVE" + fmt + b"data" + struct.pack("<I", data) + bytes(data)


CLIP = wav(1.0)


def form() -> aiohttp.FormData:
    data = aiohttp.FormData()
    data.add_field("file", CLIP, filename="short.wav", content_type="audio/wav")
    data.add_field("model", "mistralai/Voxtral-Mini-3B-2507")
    return data


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


async def put_slice(kube: Kube, service: str, port: int, ready: bool = True) -> None:
    name = f"{service}-slice"
    body = {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": NS, "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": port}],
        "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": ready}}],
    }
    path = f"/apis/discovery.k8s.io/v1/namespaces/{NS}/endpointslices"
    if await kube.get(f"{path}/{name}") is None:
        await kube.create(path, body)
    else:
        await kube.request("PUT", f"{path}/{name}", body)


class GatewayProcess:
    def __init__(self, kubeconfig: Path, service: str, *args: str) -> None:
        self.port, self.metrics_port = free_port(), free_port()
        command = [sys.executable, "-m", "voxtral_operator.cli", "gateway", "--namespace", NS, "--endpoint", service]
        command += ["--backend-service", service, "--host", "127.0.0.1", "--port", str(self.port)]
        command += ["--metrics-port", str(self.metrics_port), *args]
        env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
        self.process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.url = f"http://127.0.0.1:{self.port}"

    async def ready(self, session: aiohttp.ClientSession) -> None:
        for _ in range(400):
            try:
                async with session.get(f"http://127.0.0.1:{self.metrics_port}/readyz") as response:
                    if response.status == 200:
                        _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                        writer.close()
                        return
            except OSError:
                pass
            await asyncio.sleep(0.05)
        raise RuntimeError("the gateway did not become ready")

    def memory(self, field: str) -> float:
        """VmRSS (now) or VmHWM (peak) of the gateway process, in MB."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024 / MB
        return float("nan")

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


async def healthy(session: aiohttp.ClientSession, port: int, within: float = 30) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            async with session.get(f"http://127.0.0.1:{port}/health") as response:
                if response.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.02)
    raise RuntimeError(f"simulator on {port} not healthy")


async def transcribe(session: aiohttp.ClientSession, base: str) -> None:
    async with session.post(f"{base}/v1/audio/transcriptions", data=form()) as response:
        await response.read()
        if response.status != 200:
            raise RuntimeError(f"{base}: {response.status}")


async def latency(session: aiohttp.ClientSession, direct: str, gateway: str, repetitions: int) -> None:
    for _ in range(20):  # warm up both paths' connection pools
        await transcribe(session, direct)
        await transcribe(session, gateway)
    times: dict[str, list[float]] = {direct: [], gateway: []}
    for _ in range(repetitions):
        for base in (direct, gateway):
            started = time.perf_counter()
            await transcribe(session, base)
            times[base].append(time.perf_counter() - started)
    d, g = times[direct], times[gateway]
    added = [b - a for a, b in zip(d, g, strict=True)]
    print(f"1. latency, {repetitions} short clips (1 s WAV, 32 kB) one at a time, simulator compute 0 s:")
    for label, values in (("straight to the simulator", d), ("through the gateway", g)):
        p50, p99 = percentile(values, 0.5) * 1000, percentile(values, 0.99) * 1000
        print(f"   {label:<27} p50 {p50:6.2f} ms   p99 {p99:6.2f} ms")
    p50, p99 = percentile(added, 0.5) * 1000, percentile(added, 0.99) * 1000
    print(f"   {'added (gateway - straight)':<27} p50 {p50:6.2f} ms   p99 {p99:6.2f} ms   (per interleaved pair)")


async def throughput(session: aiohttp.ClientSession, base: str, seconds: float, concurrency: int) -> tuple[float, int]:
    done = 0
    deadline = time.monotonic() + seconds

    async def client() -> None:
        nonlocal done
        while time.monotonic() < deadline:
            await transcribe(session, base)
            done += 1

    started = time.monotonic()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return done / (time.monotonic() - started), done


class Sink:
    """A backend that reads uploads and throws them away, answering with the byte count."""

    def __init__(self) -> None:
        self.port = free_port()
        self.runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        size = 0
        try:
            async for chunk in request.content.iter_any():
                size += len(chunk)
        except ConnectionResetError:  # the gateway gave up on the upload (a 503 to retry): nothing to answer
            return web.Response(status=499)
        return web.json_response({"text": "", "bytes": size})

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/audio/transcriptions", self.handle)
        app.router.add_post("/v1/chat/completions", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        assert self.runner is not None
        await self.runner.cleanup()


async def padded(head: bytes, tail: bytes, size: int, fill: bytes) -> AsyncIterator[bytes]:
    """A body of `size` bytes: `head`, `fill` repeated 256 KiB at a time, `tail`."""
    chunk = fill * (256 * 1024 // len(fill))
    yield head
    left = size - len(head) - len(tail)
    while left > 0:
        piece = chunk[: min(left, len(chunk))]
        left -= len(piece)
        yield piece
    yield tail


async def big_upload(session: aiohttp.ClientSession, base: str, size: int) -> int:
    boundary = "bench-boundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="long.wav"\r\n'
        "Content-Type: audio/wav\r\n\r\n"
    ).encode() + wav(0)[:44]
    body = padded(head, f"\r\n--{boundary}--\r\n".encode(), size, b"\0")
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}", "Content-Length": str(size)}
    async with session.post(f"{base}/v1/audio/transcriptions", data=body, headers=headers) as response:
        payload = await response.json()
        if response.status != 200:
            raise RuntimeError(f"upload: {response.status} {payload}")
        return int(payload["bytes"])


async def big_json(session: aiohttp.ClientSession, base: str, size: int) -> int:
    """A chat request of `size` bytes: inline audio, then service_tier (the OpenAI SDK's member order)."""
    head = b'{"model":"m","messages":[{"role":"user","content":[{"type":"input_audio","input_audio":{"data":"'
    body = padded(head, b'","format":"wav"}}]}],"service_tier":"flex"}', size, b"A")
    headers = {"Content-Type": "application/json", "Content-Length": str(size)}
    async with session.post(f"{base}/v1/chat/completions", data=body, headers=headers) as response:
        payload = await response.json()
        if response.status == 503 and payload["error"]["code"] == "gateway_busy":
            return 0  # beyond the pod's budget: the caller is told to retry
        if response.status != 200:
            raise RuntimeError(f"chat: {response.status} {payload}")
        return int(payload["bytes"])


async def uploads(kube: Kube, sandbox: Sandbox, session: aiohttp.ClientSession, count: int, size: int) -> None:
    sink = Sink()
    await sink.start()
    await put_slice(kube, "sink", sink.port)
    try:
        await peak_memory(sandbox, session, count, size, big_upload, "multipart uploads")
        await peak_memory(sandbox, session, count, 20 * MB, big_json, "JSON chat bodies, service_tier last,")
    finally:
        await sink.stop()


async def peak_memory(
    sandbox: Sandbox,
    session: aiohttp.ClientSession,
    count: int,
    size: int,
    send: Callable[[aiohttp.ClientSession, str, int], Awaitable[int]],
    what: str,
) -> None:
    gateway = GatewayProcess(sandbox.kubeconfig, "sink", "--max-upload-mb", str(size // MB + 1))
    try:
        await gateway.ready(session)
        await send(session, gateway.url, 1 * MB)
        before = gateway.memory("VmRSS")
        peak_sampled = before
        sampling = True

        async def sample() -> None:
            nonlocal peak_sampled
            while sampling:
                peak_sampled = max(peak_sampled, gateway.memory("VmRSS"))
                await asyncio.sleep(0.05)

        sampler = asyncio.create_task(sample())
        started = time.monotonic()
        received = await asyncio.gather(*(send(session, gateway.url, size) for _ in range(count)))
        elapsed = time.monotonic() - started
        sampling = False
        await sampler
        assert all(r == 0 or r >= size - 1000 for r in received), received
        total = count * size / MB
        print(f"3. {count} concurrent {what} {size / MB:.0f} MB each ({total / 1000:.1f} GB), through the gateway")
        print(f"   to a sink backend, in {elapsed:.1f} s ({total / elapsed:.0f} MB/s):")
        peak = gateway.memory("VmHWM")
        print(f"   gateway RSS before {before:.0f} MB, peak {peak:.0f} MB (sampled: {peak_sampled:.0f} MB)")
        busy = sum(1 for r in received if r == 0)
        if busy:
            print(f"   {count - busy} answered, {busy} told to retry (503 gateway_busy: the JSON budget was spent)")
    finally:
        gateway.stop()


async def scale_from_zero(
    kube: Kube, sandbox: Sandbox, session: aiohttp.ClientSession, repetitions: int, load_seconds: float
) -> None:
    gateway = GatewayProcess(sandbox.kubeconfig, "coldstart", "--hold-timeout-seconds", "120")
    overheads: list[float] = []
    after_slice: list[float] = []
    try:
        await put_slice(kube, "coldstart", free_port(), ready=False)
        await gateway.ready(session)
        for _ in range(repetitions):
            port = free_port()
            await put_slice(kube, "coldstart", port, ready=False)
            await asyncio.sleep(0.3)
            started = time.monotonic()
            held = asyncio.create_task(transcribe(session, gateway.url))
            simulator = start_simulator(
                "127.0.0.1", port, "--load-seconds", str(load_seconds), "--request-seconds", "0"
            )
            try:
                await healthy(session, port)  # the readiness probe, polled every 20 ms
                ready = time.monotonic()
                await put_slice(kube, "coldstart", port, ready=True)
                await held
                answered = time.monotonic()
            finally:
                simulator.terminate()
                simulator.wait()
            overheads.append(answered - started - load_seconds)
            after_slice.append(answered - ready)
    finally:
        gateway.stop()
    print(f"4. scale from zero, {repetitions} times (simulated load {load_seconds:g} s, compute 0 s):")
    print(
        f"   first held request to answer, minus the load time: median {statistics.median(overheads) * 1000:.0f} ms, "
        f"max {max(overheads) * 1000:.0f} ms"
    )
    print(
        f"   of which ready EndpointSlice written -> answered (watch + dispatch + request): median "
        f"{statistics.median(after_slice) * 1000:.0f} ms, max {max(after_slice) * 1000:.0f} ms"
    )
    print("   (the rest is the simulator process starting and the 20 ms readiness polling)")


async def main(quick: bool) -> None:
    print(f"gateway benchmark on {os.cpu_count()} cores{' (--quick)' if quick else ''}\n")
    async with Sandbox(controllers=False) as sandbox, aiohttp.ClientSession() as api_session:
        kube = Kube(sandbox.url, api_session)
        connector = aiohttp.TCPConnector(limit=0)
        timeout = aiohttp.ClientTimeout(total=600)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            sim_port = free_port()
            simulator = start_simulator(
                "127.0.0.1", sim_port, "--request-seconds", "0", "--max-num-seqs", "256", "--max-audio-mb", "50"
            )
            gateway = GatewayProcess(sandbox.kubeconfig, "sim", "--max-inflight-per-replica", "256")
            try:
                await healthy(session, sim_port)
                await put_slice(kube, "sim", sim_port)
                await gateway.ready(session)
                direct = f"http://127.0.0.1:{sim_port}"
                await latency(session, direct, gateway.url, 100 if quick else 1000)
                seconds = 3.0 if quick else 10.0
                straight, _ = await throughput(session, direct, seconds, 64)
                cpu = gateway.cpu_seconds()
                through, count = await throughput(session, gateway.url, seconds, 64)
                per_request = (gateway.cpu_seconds() - cpu) / count
                print(f"\n2. throughput, short clips, 64 concurrent clients, {seconds:g} s each, all on this machine:")
                print(f"   straight to the simulator  {straight:7.0f} requests/s")
                print(
                    f"   through the gateway        {through:7.0f} requests/s (bounded by the simulator and the client)"
                )
                print(
                    f"   gateway CPU per request    {per_request * 1e6:7.0f} us: one gateway process (one event loop, "
                    f"one core) saturates near {1 / per_request:.0f} requests/s"
                )
                print(f"   gateway RSS after: {gateway.memory('VmRSS'):.0f} MB\n")
            finally:
                gateway.stop()
                simulator.terminate()
                simulator.wait()
            await uploads(kube, sandbox, session, 20, (50 if quick else 200) * MB)
            print()
            await scale_from_zero(kube, sandbox, session, 2 if quick else 5, 2.0)
    print(
        "\nNot modelled: real vLLM compute and its queue (the simulator answers at once), a real network (all on\n"
        "loopback, no TLS), the client, the simulator, the emulator and the gateway sharing the same cores (the\n"
        "gateway alone on 2 cores would do better than figure 2), kubelet readiness probe periods and the\n"
        "EndpointSlice controller's delay (figure 4 writes the slice itself the moment /health answers), the\n"
        "real API server's watch latency, and more than one gateway replica."
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions, smaller uploads (under a minute)")
    asyncio.run(main(parser.parse_args().quick))
