"""Reconcile throughput: N endpoints created against the API emulator, the real operator process reconciling.

Prints: p50/p95 time from create to status written, time until all are reconciled, operator
peak RSS, operator CPU while idle after convergence, and writes during the idle period.
Targets (2 cores): p50 <= 200 ms, 1,000 endpoints in <= 60 s, RSS <= 250 MB, 0 idle writes.

    python bench/reconcile.py [--endpoints 1000] [--idle-seconds 60]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from voxtral_testbed.apiserver import writes
from voxtral_testbed.harness import Kube, OperatorProcess, endpoint_path, eventually
from voxtral_testbed.sandbox import ENDPOINTS, Sandbox

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def _serving(operator: OperatorProcess) -> bool:
    return operator.metric("voxtral_operator_reconciles_total") is not None


def _pct(values: list[float], pct: int) -> float:
    return values[max(0, round(len(values) * pct / 100) - 1)]


def _endpoint(index: int) -> dict[str, Any]:
    return {
        "apiVersion": "voxtral.dev/v1alpha1",
        "kind": "VoxtralEndpoint",
        "metadata": {"name": f"ep-{index:04d}", "namespace": f"team-{index % 10}"},
        "spec": {"model": "mistralai/Voxtral-Mini-3B-2507", "gpu": {"type": "L4-24GB"}, "maxReplicas": 2},
    }


async def _bench(count: int, paced: int, idle_seconds: float) -> None:
    async with Sandbox(controllers=False) as sandbox, aiohttp.ClientSession() as session:
        kube = Kube(sandbox.url, session)
        log = Path(tempfile.mkdtemp(prefix="voxtral-bench-")) / "operator.log"
        operator = OperatorProcess(sandbox.kubeconfig, log).start()
        assert operator.process is not None
        pid = operator.process.pid
        try:
            await eventually(lambda: _serving(operator), timeout=60)
            await asyncio.sleep(1.0)  # watches established

            created: dict[tuple[str, str], float] = {}
            written: dict[tuple[str, str], float] = {}

            async def watch_status(count: int) -> None:
                while len(written) < count:
                    now = time.perf_counter()
                    for (_, namespace, name), obj in list(sandbox.api.store.objects.items()):
                        key = (namespace or "", name)
                        if (
                            key in created
                            and key not in written
                            and (obj.get("status") or {}).get("observedGeneration")
                        ):
                            written[key] = now
                    await asyncio.sleep(0.005)

            watcher = asyncio.create_task(watch_status(count))
            semaphore = asyncio.Semaphore(16)

            async def create(index: int) -> None:
                body = _endpoint(index)
                async with semaphore:
                    key = (body["metadata"]["namespace"], body["metadata"]["name"])
                    created[key] = time.perf_counter()
                    await kube.create(endpoint_path(key[0]), body)

            # Phase 1: a burst, every endpoint created at once (an operator restart looks alike).
            started = time.perf_counter()
            await asyncio.gather(*(create(i) for i in range(count)))
            creating = time.perf_counter() - started
            await asyncio.wait_for(watcher, timeout=600)
            total = max(written.values()) - started
            burst = sorted((written[k] - created[k]) * 1000 for k in created)

            # Settled: no write (children, status, events) for 3 s.
            last_count, last_change = len(writes(sandbox.api)), time.perf_counter()
            while time.perf_counter() - last_change < 3:
                await asyncio.sleep(0.25)
                if len(writes(sandbox.api)) != last_count:
                    last_count, last_change = len(writes(sandbox.api)), time.perf_counter()
            settled = last_change - started
            rss_after_burst = _peak_rss_mb(pid)

            before_writes = len(writes(sandbox.api))
            cpu_before = _cpu_seconds(pid)
            await asyncio.sleep(idle_seconds)
            idle_cpu = (_cpu_seconds(pid) - cpu_before) / idle_seconds * 100
            idle_requests = writes(sandbox.api)[before_writes:]
            idle_writes = len(idle_requests)
            idle_kinds = collections.Counter(
                f"{r.method} {getattr(r.resource, 'plural', r.resource)}{'/' + r.subresource if r.subresource else ''}"
                + (f" {r.data.get('reason')}" if isinstance(r.data, dict) and r.data.get("reason") else "")
                for r in idle_requests
            )

            # Phase 2: endpoints arriving one at a time (10 a second) onto the loaded operator.
            paced_keys = []
            watcher = asyncio.create_task(watch_status(count + paced))
            for index in range(count, count + paced):
                await create(index)
                paced_keys.append(list(created)[-1])
                await asyncio.sleep(0.1)
            await asyncio.wait_for(watcher, timeout=600)
            steady = sorted((written[k] - created[k]) * 1000 for k in paced_keys)
            endpoints = len(sandbox.api.objects_of(ENDPOINTS))

            print(
                f"endpoints created:               {endpoints} "
                f"({count} in a burst taking {creating:.1f} s, {paced} paced)"
            )
            print(f"burst: create -> status p50:     {_pct(burst, 50):.0f} ms")
            print(f"burst: create -> status p95:     {_pct(burst, 95):.0f} ms")
            print(f"burst: all statuses written:     {total:.1f} s")
            print(f"burst: settled (no writes) at:   {settled:.1f} s")
            print(f"paced: create -> status p50:     {_pct(steady, 50):.0f} ms")
            print(f"paced: create -> status p95:     {_pct(steady, 95):.0f} ms")
            print(f"operator peak RSS:               {max(rss_after_burst, _peak_rss_mb(pid)):.0f} MB")
            print(f"operator CPU while idle:         {idle_cpu:.1f} % of one core over {idle_seconds:.0f} s")
            print(f"writes while idle:               {idle_writes}")
            for kind, number in idle_kinds.most_common():
                print(f"  {number:6d}  {kind}")
        finally:
            operator.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--endpoints", type=int, default=1000)
    parser.add_argument("--paced", type=int, default=50, help="endpoints created one at a time afterwards")
    parser.add_argument("--idle-seconds", type=float, default=60.0)
    args = parser.parse_args()
    asyncio.run(_bench(args.endpoints, args.paced, args.idle_seconds))


if __name__ == "__main__":
    main()
