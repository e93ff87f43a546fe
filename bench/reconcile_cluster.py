"""Reconcile throughput on the local control plane (real kube-apiserver, etcd, controllers, scheduler).

N endpoints are created at once (then a few one at a time, each once the one before has its status,
and a second apart), in ten namespaces, on a pool with no
free GPU: their pods stay Pending (the node agent runs nothing), which is what the figures are about
(the operator's work, not vLLM's). Run inside the cluster's network namespace, with the cluster up:

    e2e/cluster/exec .venv/bin/python bench/reconcile_cluster.py [--endpoints 1000] [--idle-seconds 60]

Prints create -> status p50/p95 (status written with observedGeneration, seen through a watch),
time until every status is written and until the operator's writes stop, the operator's peak RSS,
API requests per endpoint (the operator's own request counter, and by verb and resource from the API
server's audit log), the server's side of the burst (CPU seconds of etcd, the API server, the
controllers and the operator; the API server's time per operator request from the audit log), and
the operator's writes during the idle period. Then a restart at scale: the operator stopped, one
endpoint's spec changed meanwhile, the operator started again: how long until that endpoint's status
shows the new generation, and every write the restarted operator makes (none but that endpoint's).
Then a takeover at scale: two replicas with peering, a burst of changed endpoints, the active replica
killed (SIGKILL) at its first write: when the other writes, when every change is in a status, and
whether the audit log shows an endpoint written by both at once (each replica's User-Agent names it).
With `--releases N`, the burst split over N releases of the chart that each watch their own
share of the namespaces: when every status is written, each operator's peak RSS after the burst
and after all of them restart, the namespaces each one wrote in, their writes while idle, and the
paced endpoints one at a time (no floor, no takeover).
Every node is cordoned for the run (and uncordoned after it), so no pod runs: the gateway pods
would otherwise run on the CPU node as processes on the control plane's own cores. The server's own
floor (`--floor`) comes first: the same endpoints' writes from a bare client, with the operator
stopped. The operator runs with the chart's own intervals (a tick every 2 s, a resync every 120 s),
not the shorter ones the local cluster sets for the e2e tests. Not modelled: pods that run, network
latency between the operator and a remote API server, API priority and fairness under other tenants'
load.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.request
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from voxtral_operator import render
from voxtral_operator.api.resolve import resolve
from voxtral_operator.config import load_config
from voxtral_operator.k8s import resources
from voxtral_operator.k8s.client import FIELD_MANAGER
from voxtral_operator.reconcile import APPLY_STAGES
from voxtral_testbed.kube import ApiError, Kube

ROOT = Path(__file__).resolve().parents[1]
RELEASE, RELEASE_NAMESPACE = "voxtral-operator", "voxtral-system"
OPERATOR_USER = f"system:serviceaccount:{RELEASE_NAMESPACE}:{RELEASE}"
NAMESPACES = [f"bench-{i}" for i in range(10)]
FLOOR_NAMESPACES = [f"floor-{i}" for i in range(10)]
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
    if not ordered:
        return float("nan")
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


WRITE_VERBS = ("create", "update", "patch", "delete")
# The control plane's processes whose CPU the burst costs (pid files of e2e/cluster).
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "node-agent", "operator")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _audit_events(audit: Path, since: int, user: str | None = None) -> tuple[list[dict[str, Any]], int]:
    """Completed requests (of `user`, or everyone's) in the audit log from byte `since`, and where they end."""
    with audit.open("rb") as log:
        log.seek(since)
        data = log.read()
    complete = data[: data.rfind(b"\n") + 1]
    found = []
    for line in complete.splitlines():
        event = json.loads(line)
        if event.get("stage") == "ResponseComplete" and user in (None, event["user"]["username"]):
            found.append(event)
    return found, since + len(complete)


def _audit_end(audit: Path) -> int:
    """Where the audit log's last complete line ends: an offset to read on from without parsing what
    came before (hundreds of MB after a run with thousands of endpoints)."""
    with audit.open("rb") as log:
        size = log.seek(0, os.SEEK_END)
        start = max(0, size - (1 << 20))
        log.seek(start)
        tail = log.read()
    last = tail.rfind(b"\n")
    return start + last + 1 if last >= 0 else start


def _operator_events(audit: Path, since: int) -> tuple[list[dict[str, Any]], int]:
    return _audit_events(audit, since, OPERATOR_USER)


def _allocations(events: list[dict[str, Any]]) -> str:
    """The API server's own ClusterIP allocations (an IPAddress created through its loopback client per
    Service with a cluster IP, under one lock per IP family in 1.34's MetaAllocator): how many, their
    rate, and how many overlapped another (none, if they are taken one at a time)."""
    spans = sorted(
        (datetime.fromisoformat(e["requestReceivedTimestamp"].replace("Z", "+00:00")).timestamp(), _stamp(e))
        for e in events
        if e["verb"] == "create" and (e.get("objectRef") or {}).get("resource") == "ipaddresses"
    )
    if len(spans) < 2:
        return f"ClusterIP allocations: {len(spans)}"
    overlapping = sum(1 for before, after in itertools.pairwise(spans) if after[0] < before[1])
    elapsed = spans[-1][1] - spans[0][0]
    busy = sum(done - began for began, done in spans)
    return (
        f"ClusterIP allocations: {len(spans)} in {elapsed:.1f} s ({len(spans) / elapsed:.1f}/s), "
        f"{overlapping} overlapping another, each {busy / len(spans) * 1000:.0f} ms on average "
        f"({busy / elapsed:.0%} of the time one was in progress)"
    )


def _operator_writes(audit: Path, since: int) -> tuple[int, int]:
    events, offset = _operator_events(audit, since)
    return sum(1 for e in events if e["verb"] in WRITE_VERBS), offset


def _what(event: dict[str, Any]) -> str:
    ref = event.get("objectRef") or {}
    resource = ref.get("resource", "?") + (f"/{ref['subresource']}" if ref.get("subresource") else "")
    return f"{event['verb']} {resource}"


def _server_seconds(event: dict[str, Any]) -> float:
    received = datetime.fromisoformat(event["requestReceivedTimestamp"].replace("Z", "+00:00"))
    done = datetime.fromisoformat(event["stageTimestamp"].replace("Z", "+00:00"))
    return (done - received).total_seconds()


def _cpu_seconds(state: Path) -> dict[str, float]:
    seconds = {}
    for name in COMPONENTS:
        try:
            pid = int((state / "pids" / name).read_text())
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, ValueError):
            continue
        seconds[name] = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return seconds


def _print_requests(events: list[dict[str, Any]], count: int, title: str) -> None:
    """The operator's requests per endpoint by verb and resource (watches are long-lived: counted apart)."""
    counted = Counter(_what(e) for e in events if e["verb"] != "watch")
    total = sum(counted.values())
    print(f"{title} {total / count:.2f} per endpoint ({total} requests, audit log)")
    for what, n in counted.most_common():
        print(f"    {what:<40} {n / count:6.2f}  ({n})")


def _creator(kube: Kube, created: dict[str, float], concurrency: int = 16) -> Callable[[int], Awaitable[None]]:
    """Creates endpoint `index`, at most `concurrency` at once, stamping in `created` when it is sent."""
    semaphore = asyncio.Semaphore(concurrency)

    async def create(index: int) -> None:
        body = _endpoint(index)
        async with semaphore:
            created[body["metadata"]["name"]] = time.perf_counter()
            await kube.request("POST", f"{PATH}/namespaces/{body['metadata']['namespace']}/voxtralendpoints", body)

    return create


async def _stamp_statuses(kube: Kube, created: dict[str, float], written: dict[str, float]) -> None:
    """Stamps in `written` when each endpoint in `created` first shows a status, seen through a watch."""
    async for kind, obj in kube.watch(f"{PATH}/voxtralendpoints"):
        name = obj.get("metadata", {}).get("name")
        status = obj.get("status") or {}
        if kind != "SYNCED" and name in created and name not in written and status.get("observedGeneration"):
            written[name] = time.perf_counter()


async def _all_stamped(written: dict[str, float], count: int, give_up_after: float) -> None:
    deadline = time.perf_counter() + give_up_after
    while len(written) < count:
        if time.perf_counter() > deadline:
            raise TimeoutError(f"{len(written)} of {count} statuses written within {give_up_after:.0f} s")
        await asyncio.sleep(0.1)


async def _fresh_namespaces(kube: Kube) -> None:
    for namespace in NAMESPACES:
        # A previous run's namespaces are deleted at its end: their garbage collection must not share this run.
        for _ in range(360):
            found = await kube.get(f"/api/v1/namespaces/{namespace}")
            if (found or {}).get("status", {}).get("phase") != "Terminating":
                break
            await asyncio.sleep(5)
        try:
            await kube.request("POST", "/api/v1/namespaces", {"metadata": {"name": namespace}})
        except ApiError as exc:
            if exc.status != 409:
                raise


async def _bench(kube: Kube, state: Path, count: int, paced: int, idle_seconds: float) -> None:
    await _fresh_namespaces(kube)
    # A fresh operator, so its peak RSS is this run's.
    await asyncio.to_thread(_operator, "restart")
    pid = int((state / "pids" / "operator").read_text())
    audit = state / "audit.log"
    requests_before = _api_requests()
    burst_offset = _audit_end(audit)
    cpu_before = _cpu_seconds(state)
    idle_rss = _peak_rss_mb(pid)

    created: dict[str, float] = {}
    written: dict[str, float] = {}
    watcher = asyncio.create_task(_stamp_statuses(kube, created, written))
    create = _creator(kube, created)

    started = time.perf_counter()
    await asyncio.gather(*(create(i) for i in range(count)))
    creating = time.perf_counter() - started
    await _all_stamped(written, count, 1800)
    total = max(written.values()) - started
    burst = [(written[k] - created[k]) * 1000 for k in list(created)[:count]]
    allocations, _ = _audit_events(audit, burst_offset)

    # Settled: no operator write for 5 s.
    burst_events, offset = _operator_events(audit, burst_offset)
    quiet_since = time.perf_counter()
    while time.perf_counter() - quiet_since < 5:
        await asyncio.sleep(1)
        new, offset = _operator_events(audit, offset)
        burst_events += new
        if any(e["verb"] in WRITE_VERBS for e in new):
            quiet_since = time.perf_counter()
    settled = quiet_since - started
    requests = _api_requests() - requests_before
    cpu_burst = {name: value - cpu_before.get(name, 0.0) for name, value in _cpu_seconds(state).items()}
    burst_rss = _peak_rss_mb(pid)

    await asyncio.sleep(idle_seconds)
    idle_writes, offset = _operator_writes(audit, offset)

    # One at a time means on a cluster that has worked off the burst: else it measures the backlog.
    calm_after = await _cluster_calm(state)
    steady = await _paced_latencies(create, range(count, count + paced), created, written)
    paced_rss = _peak_rss_mb(pid)

    server_times = sorted(_server_seconds(e) * 1000 for e in burst_events if e["verb"] != "watch")

    print(f"real API server: endpoints      {count} in a burst ({creating:.1f} s to create), {paced} paced")
    print(f"burst: create -> status p50:     {_pct(burst, 50):.0f} ms")
    print(f"burst: create -> status p95:     {_pct(burst, 95):.0f} ms")
    print(f"burst: all statuses written:     {total:.1f} s")
    print(f"burst: settled (no writes) at:   {settled:.1f} s")
    print("burst: " + _allocations(allocations))
    print(f"paced: begun after waiting       {calm_after:.0f} s for the control plane to calm")
    print(f"paced: create -> status p50:     {_pct(steady, 50):.0f} ms")
    print(f"paced: create -> status p95:     {_pct(steady, 95):.0f} ms")
    print(
        f"operator peak RSS:               {paced_rss:.0f} MB ({burst_rss:.0f} MB after the burst, "
        f"{idle_rss:.0f} MB before it: {(burst_rss - idle_rss) * 1024 / count:.0f} kB per endpoint)"
    )
    print(f"API requests per endpoint:       {requests / count:.1f} (burst, until settled; operator's counter)")
    _print_requests(burst_events, count, "burst: operator requests:       ")
    print(
        f"burst: API server time per operator request: p50 {_pct(server_times, 50):.0f} ms, "
        f"p95 {_pct(server_times, 95):.0f} ms, p99 {_pct(server_times, 99):.0f} ms (audit log)"
    )
    print("burst: CPU seconds until settled: " + ", ".join(f"{k} {v:.0f}" for k, v in cpu_burst.items()))
    print(f"operator writes while idle:      {idle_writes} over {idle_seconds:.0f} s (audit log)", flush=True)
    watcher.cancel()
    await _restart(kube, state, count + paced, idle_seconds, offset)


async def _floor(admin: Kube, state: Path, count: int, paced: int, concurrency: int) -> None:
    """The server's own floor for the burst and for one endpoint at a time: the same endpoints, and the
    writes each needs at the least (its backend-key Secret, its 11 applied children in the operator's
    three stages, its status), sent by a client that does nothing else (no watch, no look before a
    write, nothing queued), `concurrency` endpoints at a time, under the operator's own token (the
    same RBAC, admission and escalation checks), with the operator stopped. The controllers and the
    scheduler then do for these children what they do for the operator's. The namespaces are deleted
    afterwards, and gone before the operator's burst begins."""
    config = load_config(state / "operator-config.yaml")
    operator_kube = Kube.from_kubeconfig(state / "operator.kubeconfig")
    await asyncio.to_thread(_operator, "stop")
    await _delete_namespaces(admin, FLOOR_NAMESPACES)  # an earlier run's, cut short
    for namespace in FLOOR_NAMESPACES:
        try:
            await admin.request("POST", "/api/v1/namespaces", {"metadata": {"name": namespace}})
        except ApiError as exc:
            if exc.status != 409:
                raise
    cpu_before = _cpu_seconds(state)
    _, audit_offset = _audit_events(state / "audit.log", 0)
    failures: Counter[str] = Counter()

    async def write(kube: Kube, method: str, path: str, body: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        for attempt in range(5):
            try:
                return await kube.request(method, path, body, **kwargs)
            except (ApiError, aiohttp.ClientError, TimeoutError) as exc:
                status = getattr(exc, "status", None)
                if status == 409 and method == "POST" and attempt:
                    # The attempt before timed out on our side but was done on the server's.
                    return await kube.get(f"{path}/{body['metadata']['name']}") or {}
                failures[f"{method} {status or type(exc).__name__}"] += 1
                if attempt == 4:
                    raise
                await asyncio.sleep(0.5 * 2**attempt)
        raise AssertionError("unreachable")

    async def one(index: int) -> float:
        body = _endpoint(index)
        body["metadata"]["namespace"] = FLOOR_NAMESPACES[index % len(FLOOR_NAMESPACES)]
        namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
        began = time.perf_counter()
        created = await write(admin, "POST", f"{PATH}/namespaces/{namespace}/voxtralendpoints", body)
        children = render.render_plan(resolve(created, config, {}), config)
        for stage in APPLY_STAGES:
            batch = [child for child in children if child["kind"] in stage]
            await asyncio.gather(*(_floor_write(write, operator_kube, child) for child in batch))
        status = {
            "apiVersion": "voxtral.dev/v1alpha1",
            "kind": "VoxtralEndpoint",
            "metadata": {"name": name, "namespace": namespace},
            "status": {
                "observedGeneration": created["metadata"]["generation"],
                "phase": "Pending",
                "conditions": [
                    {
                        "type": "Ready",
                        "status": "False",
                        "reason": "Bench",
                        "message": "floor",
                        "lastTransitionTime": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                    }
                ],
            },
        }
        await write(
            operator_kube,
            "PATCH",
            f"{PATH}/namespaces/{namespace}/voxtralendpoints/{name}/status",
            status,
            params={"fieldManager": FIELD_MANAGER, "force": "true"},
            content_type="application/apply-patch+yaml",
        )
        return (time.perf_counter() - began) * 1000

    semaphore = asyncio.Semaphore(concurrency)

    async def limited(index: int) -> float:
        async with semaphore:
            return await one(index)

    try:
        started = time.perf_counter()
        burst = await asyncio.gather(*(limited(i) for i in range(count)))
        total = time.perf_counter() - started
        cpu = {name: value - cpu_before.get(name, 0.0) for name, value in _cpu_seconds(state).items()}
        allocations, _ = _audit_events(state / "audit.log", audit_offset)
        waited = await _cluster_calm(state)
        steady: list[float] = []

        async def paced_one(index: int) -> None:
            steady.append(await one(index))

        await _one_at_a_time(paced_one, range(count, count + paced), lambda i: len(steady) > i - count)
    finally:
        await operator_kube.close()
    print(
        f"server floor: {count} endpoints' writes (14 each, {concurrency} endpoints at a time, operator stopped): "
        f"all statuses written {total:.1f} s; create -> status p50 {_pct(burst, 50):.0f} ms, "
        f"p95 {_pct(burst, 95):.0f} ms"
        if burst
        else "server floor: no burst"
    )
    print("server floor: " + _allocations(allocations))
    print("server floor: CPU seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in cpu.items() if k != "operator"))
    print(
        f"server floor: one at a time (after {waited:.0f} s for the control plane to calm): create -> status "
        f"p50 {_pct(steady, 50):.0f} ms, p95 {_pct(steady, 95):.0f} ms; retried writes: "
        + (", ".join(f"{k} {n}" for k, n in failures.items()) or "none"),
        flush=True,
    )
    deleting = time.perf_counter()
    await _delete_namespaces(admin, FLOOR_NAMESPACES)
    print(f"server floor: namespaces deleted in {time.perf_counter() - deleting:.0f} s", flush=True)
    await asyncio.to_thread(_operator, "start")


async def _delete_namespaces(admin: Kube, names: list[str], give_up_after: float = 1800.0) -> None:
    """Delete the namespaces and wait until they are gone."""
    for namespace in names:
        with contextlib.suppress(ApiError):
            await admin.request("DELETE", f"/api/v1/namespaces/{namespace}")
    began = time.perf_counter()
    for namespace in names:
        while await admin.get(f"/api/v1/namespaces/{namespace}") is not None:
            if time.perf_counter() - began > give_up_after:
                raise TimeoutError(f"namespace {namespace} not deleted within {give_up_after:.0f} s")
            await asyncio.sleep(2)


async def _floor_write(write: Any, kube: Kube, child: dict[str, Any]) -> None:
    """One child as the operator writes it: the Secret created with a key, the rest applied."""
    meta = child["metadata"]
    resource = resources.BY_KIND[child["kind"]]
    if child["kind"] == "Secret":
        secret = {**child, "data": {render.gateway.BACKEND_KEY: "Zmxvb3Itb25seQ=="}}
        await write(kube, "POST", resource.path(meta["namespace"]), secret)
        return
    await write(
        kube,
        "PATCH",
        resource.path(meta["namespace"], meta["name"]),
        child,
        params={"fieldManager": FIELD_MANAGER, "force": "true"},
        content_type="application/apply-patch+yaml",
    )


CALM_CORES = 0.25  # the control plane's CPU over 10 s below a quarter of a core: its backlog worked off


async def _cluster_calm(state: Path, give_up_after: float = 900.0) -> float:
    """Seconds until the operator has made no write for 10 s and the control plane's other processes
    use less than CALM_CORES (the operator's own CPU is not a backlog: its autoscaler looks at every
    endpoint every tick, writing or not)."""
    began = time.perf_counter()
    await _quiet(state / "audit.log", 10, give_up_after)
    while time.perf_counter() - began < give_up_after:
        before = _cpu_seconds(state)
        await asyncio.sleep(10)
        after = _cpu_seconds(state)
        if sum(after[k] - before.get(k, 0.0) for k in after if k != "operator") / 10 < CALM_CORES:
            break
    return time.perf_counter() - began


ONE_AT_A_TIME_GAP_SECONDS = 1.0


async def _one_at_a_time(create: Callable[[int], Awaitable[Any]], indexes: range, done: Callable[[int], bool]) -> None:
    """Endpoints one at a time: each created once the one before has its status, and a pause after.
    (Created every 0.1 s instead, twenty endpoints are a burst here: the server's own floor then
    takes 1.5 s per endpoint, as 10 a second is more than its 8.5 a second at most.)"""
    for index in indexes:
        await create(index)
        while not done(index):  # noqa: ASYNC110 - the time is the watch's, taken when the status arrives
            await asyncio.sleep(0.01)
        await asyncio.sleep(ONE_AT_A_TIME_GAP_SECONDS)


async def _paced_latencies(
    create: Callable[[int], Awaitable[Any]], indexes: range, created: dict[str, float], written: dict[str, float]
) -> list[float]:
    """Endpoints `indexes` created one at a time (_one_at_a_time), within 600 s in all: each one's create ->
    status in ms, from the stamps `_creator` and `_stamp_statuses` keep."""
    names = [_endpoint(i)["metadata"]["name"] for i in indexes]
    await asyncio.wait_for(
        _one_at_a_time(create, indexes, lambda i: _endpoint(i)["metadata"]["name"] in written), timeout=600
    )
    return [(written[name] - created[name]) * 1000 for name in names]


async def _paced_only(kube: Kube, state: Path, paced: int) -> None:
    """Endpoints created one at a time (_one_at_a_time) beside those a previous run left (--keep), once
    the control plane is calm: create -> status, seen through a watch."""
    existing = len((await kube.get(f"{PATH}/voxtralendpoints") or {}).get("items") or [])
    calm_after = await _cluster_calm(state)
    created: dict[str, float] = {}
    written: dict[str, float] = {}

    watcher = asyncio.create_task(_stamp_statuses(kube, created, written))
    await asyncio.sleep(2)  # the watch's listing first

    create = _creator(kube, created)

    first = existing + 10_000
    steady = await _paced_latencies(create, range(first, first + paced), created, written)
    watcher.cancel()
    print(
        f"paced beside {existing} endpoints (after {calm_after:.0f} s for the control plane to calm): "
        f"create -> status p50 {_pct(steady, 50):.0f} ms, p95 {_pct(steady, 95):.0f} ms, "
        f"max {max(steady):.0f} ms over {paced}",
        flush=True,
    )


async def _quiet(audit: Path, seconds: float, give_up_after: float) -> int:
    """Wait until the operator has made no write for `seconds`; the audit log's offset then."""
    offset = _audit_end(audit)
    quiet_since = time.perf_counter()
    deadline = quiet_since + give_up_after
    while time.perf_counter() - quiet_since < seconds:
        if time.perf_counter() > deadline:
            print(f"the operator never went {seconds:.0f} s without a write in {give_up_after:.0f} s")
            break
        await asyncio.sleep(1)
        writes, offset = _operator_writes(audit, offset)
        if writes:
            quiet_since = time.perf_counter()
    return offset


async def _restart(kube: Kube, state: Path, count: int, idle_seconds: float, offset: int) -> None:
    """Restart at scale: the operator stopped, one endpoint changed meanwhile, the operator started."""
    audit = state / "audit.log"
    changed = _endpoint(1)["metadata"]
    changed_path = f"{PATH}/namespaces/{changed['namespace']}/voxtralendpoints/{changed['name']}"
    await asyncio.to_thread(subprocess.run, [str(ROOT / "e2e" / "cluster" / "operator"), "stop"], check=True)
    _, restart_offset = _operator_events(audit, offset)
    generation = await _change(kube, changed_path)
    acted = asyncio.get_running_loop().create_future()

    async def watch_changed() -> None:
        async for kind, obj in kube.watch(
            f"{PATH}/namespaces/{changed['namespace']}/voxtralendpoints",
            {"fieldSelector": f"metadata.name={changed['name']}"},
        ):
            observed = (obj.get("status") or {}).get("observedGeneration")
            if kind != "SYNCED" and observed == generation and not acted.done():
                acted.set_result(time.perf_counter())

    changed_watcher = asyncio.create_task(watch_changed())
    restarted = time.perf_counter()
    await asyncio.to_thread(subprocess.run, [str(ROOT / "e2e" / "cluster" / "operator"), "start"], check=True)
    live = time.perf_counter() - restarted
    try:
        acted_after = await asyncio.wait_for(acted, timeout=1200) - restarted
    except TimeoutError:
        print(f"restart with {count} endpoints: the changed endpoint's status not written within 1200 s")
        return
    await asyncio.sleep(idle_seconds)
    restart_events, _ = _operator_events(audit, restart_offset)
    restart_writes = [e for e in restart_events if e["verb"] in WRITE_VERBS]
    # The changed endpoint's own writes: itself, its children (NAME-...) and its Events (NAME.<suffix>).
    others = [
        e
        for e in restart_writes
        if re.split(r"[-.]", (e.get("objectRef") or {}).get("name", ""))[:2] != changed["name"].split("-")
    ]
    restart_rss = _peak_rss_mb(int((state / "pids" / "operator").read_text()))
    changed_watcher.cancel()
    print(
        f"restart with {count} endpoints: live after {live:.1f} s, changed endpoint's status after {acted_after:.1f} s"
    )
    print(
        f"restart: operator writes in the {idle_seconds:.0f} s after: {len(restart_writes)} "
        f"({len(others)} not of the changed endpoint: "
        + (", ".join(f"{k} {n}" for k, n in Counter(_what(e) for e in others).items()) or "none")
        + f"); peak RSS {restart_rss:.0f} MB"
    )


async def _change(kube: Kube, path: str) -> int:
    """A spec change (maxReplicas between 3 and 4, a change in any run) and the generation it makes."""
    current = await kube.get(path) or {}
    replicas = 4 if (current.get("spec") or {}).get("maxReplicas") == 3 else 3
    patched = await kube.request(
        "PATCH", path, {"spec": {"maxReplicas": replicas}}, content_type="application/merge-patch+json"
    )
    return int(patched["metadata"]["generation"])


# The local cluster's values shorten the operator's intervals for the e2e tests (1 s ticks, a resync every
# 15 s); the benchmark measures what a platform team gets: the chart's own.
BENCH_INTERVALS = ("scrapeIntervalSeconds", "servingCheckSeconds", "resyncSeconds")


def _chart_intervals() -> list[str]:
    values = yaml.safe_load((ROOT / "charts" / "voxtral-operator" / "values.yaml").read_text())["operatorConfig"]
    return [arg for key in BENCH_INTERVALS for arg in ("--set", f"operatorConfig.{key}={values[key]}")]


def _helm(*args: str, bench: bool = True, release: tuple[str, str] = (RELEASE, RELEASE_NAMESPACE)) -> None:
    """The release upgraded (installed, if it is another than the local cluster's) with the local
    cluster's values, and for the benchmark the chart's intervals."""
    subprocess.run(
        [
            str(ROOT / ".tools" / "helm"),
            "upgrade",
            "--install",
            "--create-namespace",
            release[0],
            str(ROOT / "charts" / "voxtral-operator"),
            "-n",
            release[1],
            "-f",
            str(ROOT / "e2e" / "cluster" / "values.yaml"),
            *(_chart_intervals() if bench else []),
            *args,
            "--wait",
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )


def _operator(action: str, instance: int = 1, release: tuple[str, str] | None = None) -> None:
    env = dict(os.environ)
    if release is not None:
        env["VOXTRAL_RELEASE"], env["VOXTRAL_RELEASE_NAMESPACE"] = release
    subprocess.run(
        [str(ROOT / "e2e" / "cluster" / "operator"), action, str(instance)], check=True, timeout=1800, env=env
    )


async def _releases(kube: Kube, state: Path, count: int, paced: int, releases: int, idle_seconds: float) -> None:
    """The burst split over several releases of the chart, each watching its own share of the ten
    namespaces (README "Where one process stops"): when every status is written, each operator's peak
    RSS after the burst and after all of them restart at once, their writes while idle and after
    the restart (none is due), and `paced` endpoints one at a time once the control plane is calm
    (spread over the namespaces, so over the releases)."""
    audit = state / "audit.log"
    shares = [NAMESPACES[i::releases] for i in range(releases)]
    # Release k beside the local cluster's own, in a namespace of its name; instance 2 is the takeover's peer.
    names = [(RELEASE, RELEASE_NAMESPACE)] + [
        (f"voxtral-operator-r{k}", f"voxtral-operator-r{k}") for k in range(1, releases)
    ]
    instances = [1] + [k + 2 for k in range(1, releases)]
    users = {f"system:serviceaccount:{namespace}:{name}" for name, namespace in names}
    split = ("--set", "refuseUnwatchedNamespaces=false", "--set", "priorityClasses.create=false")

    def start_all(action: str) -> Awaitable[Any]:
        return asyncio.gather(
            *(
                asyncio.to_thread(_operator, action, instance, release if k else None)
                for k, (instance, release) in enumerate(zip(instances, names, strict=True))
            )
        )

    def writes_since(offset: int) -> tuple[list[dict[str, Any]], int]:
        events, offset = _audit_events(audit, offset)
        return [e for e in events if e["user"]["username"] in users and e["verb"] in WRITE_VERBS], offset

    await _fresh_namespaces(kube)
    for k, release in enumerate(names):
        # The local cluster's own release keeps its PriorityClasses (the e2e tests' namespaces use them).
        extra = split if k else split[:2]
        await asyncio.to_thread(_helm, *extra, "--set", f"watchNamespaces={{{','.join(shares[k])}}}", release=release)
    try:
        await start_all("restart")
        pids = [_pid(state, instance) for instance in instances]
        offset = _audit_end(audit)
        created: dict[str, float] = {}
        written: dict[str, float] = {}

        watcher = asyncio.create_task(_stamp_statuses(kube, created, written))
        await asyncio.sleep(2)  # the watch's listing first
        create = _creator(kube, created)

        started = time.perf_counter()
        await asyncio.gather(*(create(i) for i in range(count)))
        await _all_stamped(written, count, 1800)
        watcher.cancel()
        total = max(written.values(), default=started) - started
        burst_writes, offset = writes_since(offset)
        quiet_since = time.perf_counter()
        while time.perf_counter() - quiet_since < 5:
            await asyncio.sleep(1)
            new, offset = writes_since(offset)
            burst_writes += new
            if new:
                quiet_since = time.perf_counter()
        settled = quiet_since - started
        burst_rss = [_peak_rss_mb(pid) for pid in pids]
        wrote_in = {
            user: sorted(
                {(e.get("objectRef") or {}).get("namespace", "") for e in burst_writes if e["user"]["username"] == user}
            )
            for user in sorted(users)
        }
        await asyncio.sleep(idle_seconds)
        idle_writes, offset = writes_since(offset)

        steady: list[float] = []
        calm_after = 0.0
        if paced:
            # At this scale the control plane may never fall below CALM_CORES (the scheduler's retries
            # of every Pending pod): the wait is bounded, and reported.
            calm_after = await _cluster_calm(state, give_up_after=300)
            watcher = asyncio.create_task(_stamp_statuses(kube, created, written))
            await asyncio.sleep(2)  # the watch's listing first
            steady = await _paced_latencies(create, range(count, count + paced), created, written)
            watcher.cancel()
            _, offset = writes_since(offset)

        for instance in instances:
            await asyncio.to_thread(_operator, "stop", instance)
        restarted = time.perf_counter()
        await start_all("start")
        live = time.perf_counter() - restarted
        await asyncio.sleep(idle_seconds)
        restart_writes, _ = writes_since(offset)
        restart_rss = [_peak_rss_mb(_pid(state, instance)) for instance in instances]
        print(
            f"{releases} releases, {count} endpoints at once over {len(NAMESPACES)} namespaces: "
            f"{len(written)} statuses written, the last after {total:.1f} s; settled (no writes) at {settled:.1f} s"
        )
        for k, (name, _) in enumerate(names):
            print(
                f"  {name:<22} namespaces {','.join(shares[k])}: peak RSS {burst_rss[k]:.0f} MB after the burst, "
                f"{restart_rss[k]:.0f} MB after the restart"
            )
        print(f"  namespaces each release's operator wrote in: {wrote_in}")
        if steady:
            print(
                f"  {paced} one at a time (after {calm_after:.0f} s for the control plane to calm): create -> status "
                f"p50 {_pct(steady, 50):.0f} ms, p95 {_pct(steady, 95):.0f} ms, max {max(steady):.0f} ms"
            )
        print(
            f"  writes while idle ({idle_seconds:.0f} s): {len(idle_writes)}; all restarted at once, live after "
            f"{live:.1f} s, writes in the {idle_seconds:.0f} s after: {len(restart_writes)}",
            flush=True,
        )
    finally:
        for k in range(1, releases):
            await asyncio.to_thread(_operator, "stop", instances[k], names[k])
            name, namespace = names[k]
            await asyncio.to_thread(
                subprocess.run,
                [str(ROOT / ".tools" / "helm"), "uninstall", name, "-n", namespace, "--wait"],
                capture_output=True,
                timeout=300,
            )
            with contextlib.suppress(ApiError):
                await kube.request("DELETE", f"/api/v1/namespaces/{namespace}")
        await asyncio.to_thread(_helm)
        await asyncio.to_thread(_operator, "restart")


async def _takeover(kube: Kube, state: Path, count: int, changes: int) -> None:
    """Two peered replicas over every endpoint; `changes` endpoints changed at once, the active
    replica killed (SIGKILL) at its first write for them: how long until the other writes, until
    every change is in a status, and whether any endpoint was written by both at once."""
    audit = state / "audit.log"
    await asyncio.to_thread(_helm, "--set", "peering.enabled=true")
    try:
        # A started peer is live once its liveness answers, which kopf gives only after its first listing.
        await asyncio.to_thread(_operator, "restart", 1)
        await asyncio.to_thread(_operator, "start", 2)
        identities = {i: f"{socket.gethostname()}/{_pid(state, i)}" for i in (1, 2)}
        peering: dict[str, Any] = {}
        for _ in range(120):
            peering = await kube.get("/apis/kopf.dev/v1/clusterkopfpeerings/voxtral-operator") or {}
            if set(identities.values()) <= set(peering.get("status") or {}):
                break
            await asyncio.sleep(1)
        priorities = {i: int(peering["status"][identities[i]]["priority"]) for i in identities}
        active = max(priorities, key=lambda i: priorities[i])
        passive = 3 - active
        await asyncio.sleep(10)  # the active one's start-up writes, if any, are not the burst's
        offset = _audit_end(audit)
        # Neither the restart's changed endpoint nor any in the first namespace (a --keep run killed in
        # its clean-up may have begun deleting it).
        targets = [_endpoint(i)["metadata"] for i in range(2, 2 + 2 * changes) if i % len(NAMESPACES)][:changes]
        generations: dict[str, int] = {}

        async def change(meta: dict[str, Any]) -> None:
            path = f"{PATH}/namespaces/{meta['namespace']}/voxtralendpoints/{meta['name']}"
            generations[meta["name"]] = await _change(kube, path)

        await asyncio.gather(*(change(meta) for meta in targets))
        names = {meta["name"] for meta in targets}
        agent = {i: f"({identities[i]})" for i in identities}
        # Each look reads only what the log gained since the last: re-reading it from `offset` grows with
        # the log, and in one run at 1,000 endpoints the kill came after the active had written every change.
        first_write = None
        scanned = offset
        while first_write is None:
            events, scanned = _operator_events(audit, scanned)
            first_write = next(
                (e for e in events if e["verb"] in WRITE_VERBS and agent[active] in e.get("userAgent", "")), None
            )
            await asyncio.sleep(0.05)
        os.killpg(_pid(state, active), signal.SIGKILL)
        killed = time.time()
        # Converged: every changed endpoint's status at its new generation.
        pending = set(names)
        while pending:
            await asyncio.sleep(1)
            if time.time() - killed > 1200:
                print(f"takeover: {len(pending)} of {changes} changes not in a status within 1200 s")
                return
            for meta in targets:
                if meta["name"] in pending:
                    path = f"{PATH}/namespaces/{meta['namespace']}/voxtralendpoints/{meta['name']}"
                    found = await kube.get(path) or {}
                    if (found.get("status") or {}).get("observedGeneration") == generations[meta["name"]]:
                        pending.discard(meta["name"])
        converged = time.time() - killed
        await asyncio.sleep(5)
        events, _ = _operator_events(audit, offset)
        writes = [e for e in events if e["verb"] in WRITE_VERBS]
        at = {id(e): _stamp(e) for e in writes}
        by = {i: [e for e in writes if agent[i] in e.get("userAgent", "")] for i in (active, passive)}
        successor_first = min((at[id(e)] for e in by[passive]), default=float("nan")) - killed
        per_endpoint: dict[str, dict[int, list[float]]] = {}
        for i, seen in by.items():
            for e in seen:
                name = (e.get("objectRef") or {}).get("name", "")
                endpoint = next((n for n in names if name == n or name.startswith((f"{n}-", f"{n}."))), name)
                per_endpoint.setdefault(endpoint, {active: [], passive: []})[i].append(at[id(e)])
        interleaved = [
            n for n, t in per_endpoint.items() if t[active] and t[passive] and max(t[active]) >= min(t[passive])
        ]
        others = [n for n in per_endpoint if n not in names]
        print(
            f"takeover with {count} endpoints, {changes} changed at once, the active replica killed at its first "
            f"write: the other's first write {successor_first:.1f} s after the kill, every change in a status "
            f"after {converged:.1f} s; writes by the killed {len(by[active])}, by the successor {len(by[passive])}; "
            f"endpoints written by both at once: {len(interleaved)}; objects written not of a changed endpoint: "
            f"{len(others)}; successor peak RSS {_peak_rss_mb(_pid(state, passive)):.0f} MB",
            flush=True,
        )
    finally:
        await asyncio.to_thread(_operator, "stop", 2)
        await asyncio.to_thread(_operator, "stop", 1)
        await asyncio.to_thread(_helm)
        await asyncio.to_thread(_operator, "start", 1)


def _pid(state: Path, instance: int) -> int:
    return int((state / "pids" / ("operator" if instance == 1 else f"operator-{instance}")).read_text())


def _stamp(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(event["stageTimestamp"].replace("Z", "+00:00")).timestamp()


async def _cordoned(kube: Kube) -> list[str]:
    """Every node made unschedulable; the names of those that were schedulable. The endpoints' gateway
    pods would otherwise run on the CPU node, as processes on the control plane's own two cores (64 of
    them fit), and the figures would be theirs as much as the operator's and the server's."""
    nodes = (await kube.get("/api/v1/nodes") or {}).get("items") or []
    names = [n["metadata"]["name"] for n in nodes if not (n.get("spec") or {}).get("unschedulable")]
    await _set_unschedulable(kube, names, True)
    return names


async def _set_unschedulable(kube: Kube, names: list[str], unschedulable: bool) -> None:
    for name in names:
        await kube.request(
            "PATCH",
            f"/api/v1/nodes/{name}",
            {"spec": {"unschedulable": unschedulable or None}},
            content_type="application/merge-patch+json",
        )


async def _cleanup(kube: Kube) -> None:
    for namespace in NAMESPACES:
        with contextlib.suppress(ApiError):
            await kube.request("DELETE", f"/api/v1/namespaces/{namespace}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--endpoints", type=int, default=1000)
    parser.add_argument("--paced", type=int, default=50)
    parser.add_argument("--idle-seconds", type=float, default=60.0)
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="no burst: the endpoints a previous run left (--keep), once the operator is quiet for 30 s",
    )
    parser.add_argument("--keep", action="store_true", help="leave the endpoints for a later --reuse run")
    parser.add_argument(
        "--floor", action="store_true", help="first the server's own floor: the same writes by a bare client"
    )
    parser.add_argument(
        "--paced-only", action="store_true", help="only --paced endpoints one at a time, beside a --keep run's"
    )
    parser.add_argument("--floor-only", action="store_true", help="the server's floor alone")
    parser.add_argument("--floor-concurrency", type=int, default=64, help="endpoints the bare client writes at once")
    parser.add_argument("--takeover-changes", type=int, default=50, help="endpoints changed in the takeover's burst")
    parser.add_argument(
        "--releases",
        type=int,
        default=1,
        help="more than 1: the burst split over this many releases, then --paced one at a time, and nothing else",
    )
    args = parser.parse_args()
    state = Path(os.environ.get("VOXTRAL_LOCAL_CLUSTER", ROOT / ".tools" / "cluster"))
    kube = Kube.from_kubeconfig(os.environ["KUBECONFIG"])

    async def run() -> None:
        cordoned = await _cordoned(kube)
        await asyncio.to_thread(_helm)
        await asyncio.to_thread(_operator, "restart")
        try:
            count = args.endpoints + args.paced
            if args.floor or args.floor_only:
                await _floor(kube, state, args.endpoints, args.paced, args.floor_concurrency)
                if args.floor_only:
                    return
            if args.releases > 1:
                await _releases(kube, state, args.endpoints, args.paced, args.releases, args.idle_seconds)
                return
            if args.paced_only:
                await _paced_only(kube, state, args.paced)
                return
            if args.reuse:
                offset = await _quiet(state / "audit.log", 30, 900)
                count = len((await kube.get(f"{PATH}/voxtralendpoints") or {}).get("items") or [])
                await _restart(kube, state, count, args.idle_seconds, offset)
            else:
                await _bench(kube, state, args.endpoints, args.paced, args.idle_seconds)
            if args.takeover_changes:
                await _takeover(kube, state, count, args.takeover_changes)
        finally:
            if not args.keep:
                await _cleanup(kube)
            await _set_unschedulable(kube, cordoned, False)
            if not args.keep:  # a later --reuse or --paced-only run goes on with the chart's intervals
                await asyncio.to_thread(_helm, bench=False)
                await asyncio.to_thread(_operator, "restart")
            await kube.close()

    asyncio.run(run())


if __name__ == "__main__":
    main()
