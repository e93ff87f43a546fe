"""Reconcile throughput on the local control plane (real kube-apiserver, etcd, controllers, scheduler).

N endpoints are created at once (plus a few paced ones after), in ten namespaces, on a pool with no
free GPU: their pods stay Pending (the node agent runs nothing), which is what the figures are about
(the operator's work, not vLLM's). Run inside the cluster's network namespace, with the cluster up:

    e2e/cluster/exec .venv/bin/python bench/reconcile_cluster.py [--endpoints 1000] [--idle-seconds 60]

Prints create -> status p50/p95 (status written with observedGeneration, seen through a watch),
time until every status is written and until the operator's writes stop, the operator's peak RSS,
API requests per endpoint (the operator's own request counter), and the operator's writes during the
idle period from the API server's audit log. Not modelled: pods that run (every pod waits for a GPU),
network latency between the operator and a remote API server, API priority and fairness under
other tenants' load.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

from voxtral_testbed.kube import ApiError, Kube

ROOT = Path(__file__).resolve().parents[1]
OPERATOR_USER = "system:serviceaccount:voxtral-system:voxtral-operator"
NAMESPACES = [f"bench-{i}" for i in range(10)]
PATH = "/apis/voxtral.dev/v1alpha1"


def _endpoint(index: int) -> dict[str, Any]:
    return {
        "apiVersion": "voxtral.dev/v1alpha1",
        "kind": "VoxtralEndpoint",
        "metadata": {"name": f"ep-{index:04d}", "namespace": NAMESPACES[index % len(NAMESPACES)]},
        # A pool no node has: every pod is Pending (Unschedulable), no process is started.
        "spec": {
            "model": "mistralai/Voxtral-Mini-3B-2507",
            "gpu": {"type": "L4-24GB"},
            "maxReplicas": 2,
            "nodePool": {"nodeSelector": {"pool": "bench-absent"}},
        },
    }


def _pct(values: list[float], pct: int) -> float:
    ordered = sorted(values)
    return ordered[max(0, round(len(ordered) * pct / 100) - 1)]


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _api_requests() -> float:
    with urllib.request.urlopen("http://127.0.0.1:9090/metrics", timeout=5) as response:
        text = response.read().decode()
    return sum(float(m) for m in re.findall(r"^voxtral_operator_api_requests_total\{[^}]*\} ([0-9.e+]+)", text, re.M))


def _operator_writes(audit: Path, since: int) -> tuple[int, int]:
    with audit.open("rb") as log:
        log.seek(since)
        data = log.read()
    complete = data[: data.rfind(b"\n") + 1]
    count = 0
    for line in complete.splitlines():
        event = json.loads(line)
        if (
            event.get("stage") == "ResponseComplete"
            and event["user"]["username"] == OPERATOR_USER
            and event["verb"] in ("create", "update", "patch", "delete")
        ):
            count += 1
    return count, since + len(complete)


async def _bench(kube: Kube, state: Path, count: int, paced: int, idle_seconds: float) -> None:
    for namespace in NAMESPACES:
        try:
            await kube.request("POST", "/api/v1/namespaces", {"metadata": {"name": namespace}})
        except ApiError as exc:
            if exc.status != 409:
                raise
    # A fresh operator, so its peak RSS is this run's.
    await asyncio.to_thread(subprocess.run, [str(ROOT / "e2e" / "cluster" / "operator"), "restart"], check=True)
    pid = int((state / "pids" / "operator").read_text())
    audit = state / "audit.log"
    requests_before = _api_requests()

    created: dict[str, float] = {}
    written: dict[str, float] = {}
    all_written = asyncio.Event()
    target = count

    async def watch() -> None:
        async for kind, obj in kube.watch(f"{PATH}/voxtralendpoints"):
            if kind == "SYNCED":
                continue
            name = obj["metadata"]["name"]
            if name in created and name not in written and (obj.get("status") or {}).get("observedGeneration"):
                written[name] = time.perf_counter()
                if len(written) >= target:
                    all_written.set()

    watcher = asyncio.create_task(watch())
    semaphore = asyncio.Semaphore(16)

    async def create(index: int) -> None:
        body = _endpoint(index)
        async with semaphore:
            created[body["metadata"]["name"]] = time.perf_counter()
            await kube.request("POST", f"{PATH}/namespaces/{body['metadata']['namespace']}/voxtralendpoints", body)

    started = time.perf_counter()
    await asyncio.gather(*(create(i) for i in range(count)))
    creating = time.perf_counter() - started
    await asyncio.wait_for(all_written.wait(), timeout=1800)
    total = max(written.values()) - started
    burst = [(written[k] - created[k]) * 1000 for k in list(created)[:count]]

    # Settled: no operator write for 5 s.
    offset = 0
    _, offset = _operator_writes(audit, 0)
    quiet_since = time.perf_counter()
    while time.perf_counter() - quiet_since < 5:
        await asyncio.sleep(1)
        new, offset = _operator_writes(audit, offset)
        if new:
            quiet_since = time.perf_counter()
    settled = quiet_since - started
    requests = _api_requests() - requests_before

    await asyncio.sleep(idle_seconds)
    idle_writes, offset = _operator_writes(audit, offset)

    target = count + paced
    all_written.clear()
    paced_names = []
    for index in range(count, count + paced):
        await create(index)
        paced_names.append(_endpoint(index)["metadata"]["name"])
        await asyncio.sleep(0.1)
    await asyncio.wait_for(all_written.wait(), timeout=600)
    steady = [(written[k] - created[k]) * 1000 for k in paced_names]
    watcher.cancel()

    print(f"real API server: endpoints      {count} in a burst ({creating:.1f} s to create), {paced} paced")
    print(f"burst: create -> status p50:     {_pct(burst, 50):.0f} ms")
    print(f"burst: create -> status p95:     {_pct(burst, 95):.0f} ms")
    print(f"burst: all statuses written:     {total:.1f} s")
    print(f"burst: settled (no writes) at:   {settled:.1f} s")
    print(f"paced: create -> status p50:     {_pct(steady, 50):.0f} ms")
    print(f"paced: create -> status p95:     {_pct(steady, 95):.0f} ms")
    print(f"operator peak RSS:               {_peak_rss_mb(pid):.0f} MB")
    print(f"API requests per endpoint:       {requests / count:.1f} (burst, until settled)")
    print(f"operator writes while idle:      {idle_writes} over {idle_seconds:.0f} s (audit log)")


async def _cleanup(kube: Kube) -> None:
    for namespace in NAMESPACES:
        with contextlib.suppress(ApiError):
            await kube.request("DELETE", f"/api/v1/namespaces/{namespace}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--endpoints", type=int, default=1000)
    parser.add_argument("--paced", type=int, default=50)
    parser.add_argument("--idle-seconds", type=float, default=60.0)
    args = parser.parse_args()
    state = Path(os.environ.get("VOXTRAL_LOCAL_CLUSTER", ROOT / ".tools" / "cluster"))
    kube = Kube.from_kubeconfig(os.environ["KUBECONFIG"])

    async def run() -> None:
        try:
            await _bench(kube, state, args.endpoints, args.paced, args.idle_seconds)
        finally:
            await _cleanup(kube)
            await kube.close()

    asyncio.run(run())


if __name__ == "__main__":
    main()
