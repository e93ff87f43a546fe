"""Benchmark of realtime sessions through `voxtral-operator gateway`: what one gateway process adds per
transcription delta, and what it costs in CPU and memory per session.

Runs the real gateway process against the API emulator (EndpointSlices through a watch) and the vLLM
simulator serving the realtime model on loopback. Many sessions stream audio at real-time pace
(100 ms frames of PCM16 16 kHz, base64 in `input_audio_buffer.append`), first straight to the
simulator and through the gateway at once (interleaved, so both see the same load on this machine);
each delta's latency is measured from sending
the frame holding the audio it answers to receiving it (the simulated model delay, 480 ms, included
in both). Prints p50/p99 of both and their difference, failures (sessions without
`transcription.done`, or with an error), the gateway's CPU per session-second and its RSS.

    .venv/bin/python bench/realtime.py [--sessions N] [--seconds S]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import time
from dataclasses import dataclass, field

import aiohttp

from gateway import GatewayProcess, healthy, percentile, put_slice  # bench/gateway.py, beside this file
from voxtral_operator.gateway.realtime import DELTA_SECONDS
from voxtral_testbed.harness import Kube, free_port, start_simulator
from voxtral_testbed.realtime_client import MODEL, StreamResult, stream
from voxtral_testbed.sandbox import Sandbox

# Sessions start spread over this long, as callers arrive, not all in one instant.
RAMP_SECONDS = 5.0


@dataclass
class Outcome:
    latencies: list[float] = field(default_factory=list)
    failed: int = 0


async def run_sessions(urls: list[str], count: int, seconds: float) -> tuple[list[Outcome], float]:
    """`count` concurrent paced sessions on each URL, interleaved so each path sees the same load on this
    machine: an outcome per URL, and the wall seconds."""
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(index: int) -> StreamResult:
            await asyncio.sleep(RAMP_SECONDS * index / (count * len(urls)))
            url = urls[index % len(urls)]
            return await stream(session, url, key=None, seconds=seconds, read_timeout=seconds + 120)

        started = time.monotonic()
        results = await asyncio.gather(*(one(i) for i in range(count * len(urls))), return_exceptions=True)
        wall = time.monotonic() - started
    outcomes = [Outcome() for _ in urls]
    for index, result in enumerate(results):
        outcome = outcomes[index % len(urls)]
        if not isinstance(result, StreamResult) or result.done is None or result.errors:
            outcome.failed += 1
            continue
        # The last deltas come with the final commit, sooner than the delay: only the paced ones count.
        outcome.latencies += result.delta_latencies[:-2]
    return outcomes, wall


async def relay_quantiles(metrics_url: str, shares: tuple[float, ...]) -> list[float]:
    """Upper bucket bounds holding each share of the gateway's own relay times (replica read to caller
    written, per event), from its histogram: the gateway's part alone, whatever the client's delays."""
    async with aiohttp.ClientSession() as session, session.get(metrics_url) as response:
        text = await response.text()
    buckets: list[tuple[float, float]] = []
    for line in text.splitlines():
        if line.startswith(DELTA_SECONDS + "_bucket{"):
            bound = line.split('le="', 1)[1].split('"', 1)[0]
            buckets.append((float(bound), float(line.rsplit(" ", 1)[1])))
    total = buckets[-1][1] if buckets else 0.0
    return [next((b for b, count in buckets if count >= share * total), float("inf")) for share in shares]


def describe(latencies: list[float]) -> str:
    if not latencies:
        return "no deltas"
    return f"p50 {percentile(latencies, 0.5) * 1000:6.1f} ms   p99 {percentile(latencies, 0.99) * 1000:6.1f} ms"


async def main(sessions: int, seconds: float) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4 * sessions + 256)), hard))
    print(
        f"realtime benchmark on {os.cpu_count()} cores: {sessions} sessions through the gateway and {sessions} "
        f"straight, at once, {seconds:g} s of audio each at real-time pace\n"
    )
    async with Sandbox(controllers=False) as sandbox, aiohttp.ClientSession() as api_session:
        kube = Kube(sandbox.url, api_session)
        sim_port = free_port()
        simulator = start_simulator("127.0.0.1", sim_port, "--model", MODEL, "--max-num-seqs", str(2 * sessions))
        gateway = GatewayProcess(
            sandbox.kubeconfig,
            "sim",
            "--realtime-sessions-per-replica",
            str(sessions),
            "--max-connections",
            str(sessions + 100),
            "--realtime-full-wait-seconds",
            "60",
        )
        try:
            async with aiohttp.ClientSession() as session:
                await healthy(session, sim_port)
                await put_slice(kube, "sim", sim_port)
                await gateway.ready(session)
            direct_url = f"ws://127.0.0.1:{sim_port}/v1/realtime"
            through_url = gateway.url.replace("http://", "ws://") + "/v1/realtime"
            cpu = gateway.cpu_seconds()
            rss_before = gateway.memory("VmRSS")
            sampled: list[float] = []

            async def sample() -> None:
                while True:
                    await asyncio.sleep(1.0)
                    sampled.append(gateway.memory("VmRSS"))

            sampler = asyncio.ensure_future(sample())
            (straight, through), wall = await run_sessions([direct_url, through_url], sessions, seconds)
            sampler.cancel()
            cpu_used = gateway.cpu_seconds() - cpu
            session_seconds = sessions * seconds
            print("1. latency per transcription delta (from its audio frame sent to the delta received):")
            direct, gated = straight.latencies, through.latencies
            print(f"   straight to the simulator  {describe(direct)}   ({len(direct)} deltas)")
            print(f"   through the gateway        {describe(gated)}   ({len(gated)} deltas)")
            if direct and gated:
                added50 = percentile(gated, 0.5) - percentile(direct, 0.5)
                added99 = percentile(gated, 0.99) - percentile(direct, 0.99)
                print(f"   added by the gateway       p50 {added50 * 1000:6.1f} ms   p99 {added99 * 1000:6.1f} ms")
            p50, p99 = await relay_quantiles(f"http://127.0.0.1:{gateway.metrics_port}/metrics", (0.5, 0.99))
            print(
                f"   the gateway's own relay time per event (its histogram): p50 <= {p50 * 1000:g} ms, "
                f"p99 <= {p99 * 1000:g} ms"
            )
            print(
                f"   failed sessions: straight {straight.failed}, through the gateway {through.failed} "
                f"(of {sessions} each)"
            )
            print("\n2. the gateway process:")
            print(
                f"   CPU {cpu_used:.1f} s over {session_seconds:.0f} session-seconds ({wall:.0f} s wall): "
                f"{cpu_used / session_seconds * 1000:.2f} ms CPU per session-second, i.e. one core carries about "
                f"{session_seconds / cpu_used:.0f} sessions at real-time pace"
            )
            peak = max(sampled, default=float("nan"))
            per_session = (peak - rss_before) * 1000 / sessions
            print(
                f"   RSS {rss_before:.0f} MB before, {peak:.0f} MB at most while streaming "
                f"({per_session:.0f} kB per session), peak ever {gateway.memory('VmHWM'):.0f} MB"
            )
        finally:
            gateway.stop()
            simulator.terminate()
            simulator.wait()
    print(
        "\nNot modelled: real vLLM (the simulator writes a word per 400 ms of audio), a real network (loopback,\n"
        "no TLS), and separate machines: the client, the simulator, the emulator and the gateway share these\n"
        "cores, so both latencies include the client's and the simulator's own event-loop delays."
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=1000, help="concurrent sessions (default 1000)")
    parser.add_argument("--seconds", type=float, default=30.0, help="audio per session (default 30)")
    arguments = parser.parse_args()
    asyncio.run(main(arguments.sessions, arguments.seconds))
