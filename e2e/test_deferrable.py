"""The deferrable lane on a real control plane: a backlog of `service_tier: "flex"` requests is worked
through on the endpoint's replica while interactive callers keep their latency, measured against the
same callers without the backlog in the same test.

So that the machine's load cannot decide it: the simulated engine takes REQUEST_SECONDS per request
(the gateway's and the proxies' own time is a small part of each latency), the two conditions
alternate in blocks (a slow stretch of the machine lands on both), and each condition gets
SAMPLES_PER_CONDITION interactive requests or more. Local control plane only: the simulator's engine
time is set through the node agent.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

import pytest

from .conftest import MINI, Kubectl, LocalCluster, delete_endpoint, endpoint_body, eventually, wait_ready
from .conftest import service_base_url as service_url
from .metrics import samples
from .test_lifecycle import _wav

pytestmark = pytest.mark.e2e

REQUEST_SECONDS = 4.0  # the simulated engine's time per request
MAX_NUM_SEQS = 32  # slots of the one replica (one gateway pod: all of them its own); headroom 4
INTERACTIVE_CALLERS = 3  # within the headroom: each finds a free slot
DEFERRABLE_CALLERS = 40  # more than the 28 slots deferrable work may take: some always wait
BLOCKS = 8  # alternating: without the backlog, with it, ...
BLOCK_SECONDS = 40.0
SETTLE_SECONDS = 2 * REQUEST_SECONDS  # a new block's first requests are not counted (the backlog fills or drains)
SAMPLES_PER_CONDITION = 60
TOLERANCE = 0.10


@dataclass
class Sample:
    sent: float
    seconds: float
    status: int
    backlog: bool


class Caller(threading.Thread):
    """Calls the endpoint in a loop while `running` is set (chat and transcription in turn), on fresh
    connections, keeping every answer; `idle` is set while it waits between loops."""

    def __init__(self, base_url: str, index: int, *, flex: bool, running: threading.Event, stop: threading.Event):
        super().__init__(daemon=True)
        url = urllib.parse.urlsplit(base_url)
        self.host, self.port, self.prefix = url.hostname or "", url.port or 80, url.path
        self.index, self.flex, self.running, self.stop = index, flex, running, stop
        self.idle = threading.Event()
        self.samples: list[tuple[float, float, int]] = []
        self.failures: list[str] = []

    def _request(self, turn: int) -> tuple[str, bytes, str]:
        if (self.index + turn) % 2:
            body: dict[str, Any] = {"model": MINI, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
            if self.flex:
                body["service_tier"] = "flex"
            return "/chat/completions", json.dumps(body).encode(), "application/json"
        boundary = "e2e-flex"
        fields = [("model", MINI.encode())] + ([("service_tier", b"flex")] if self.flex else [])
        data = b"".join(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode() + value + b"\r\n"
            for name, value in fields
        )
        data += f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'.encode()
        data += b"Content-Type: audio/wav\r\n\r\n" + _wav(2.0) + f"\r\n--{boundary}--\r\n".encode()
        return "/audio/transcriptions", data, f"multipart/form-data; boundary={boundary}"

    def run(self) -> None:
        turn = 0
        while not self.stop.is_set():
            if not self.running.is_set():
                self.idle.set()
                self.running.wait(0.2)
                continue
            self.idle.clear()
            path, body, content_type = self._request(turn)
            turn += 1
            sent = time.monotonic()
            connection = http.client.HTTPConnection(self.host, self.port, timeout=600)
            try:
                headers = {"Authorization": "Bearer sk-e2e-key", "Content-Type": content_type}
                connection.request("POST", self.prefix + path, body=body, headers=headers)
                response = connection.getresponse()
                response.read()
                self.samples.append((sent, time.monotonic() - sent, response.status))
            except (OSError, http.client.HTTPException) as exc:
                self.failures.append(f"{type(exc).__name__}: {exc}")
            finally:
                connection.close()
        self.idle.set()


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, -(-95 * len(ordered) // 100) - 1)]  # nearest rank


def _waiting_reads(kubectl: Kubectl, name: str, namespace: str) -> dict[str, float]:
    """The gateway pods' reads of the replicas' vllm:num_requests_waiting (what taking back decides on), by
    result, summed over the pods, from their metrics ports."""
    selector = f"app.kubernetes.io/name=voxtral-gateway,app.kubernetes.io/instance={name}"
    totals: dict[str, float] = {}
    for pod in kubectl.json("get", "pods", "-n", namespace, "-l", selector)["items"]:
        url = f"http://{pod['status']['podIP']}:9091/metrics"
        for labels, value in samples(url, "voxtral_gateway_waiting_reads_total"):
            totals[labels["result"]] = totals.get(labels["result"], 0.0) + value
    return totals


def _status(kubectl: Kubectl, name: str, namespace: str) -> dict[str, Any]:
    return dict((kubectl.get("vxe", name, namespace) or {}).get("status") or {})


def test_a_deferrable_backlog_leaves_interactive_latency_alone(
    kubectl: Kubectl, local: LocalCluster, namespace: str, unique_name: str
) -> None:
    name = unique_name
    keys = f"{name}-callers"
    kubectl.run("delete", "secret", keys, "-n", namespace, "--ignore-not-found")
    kubectl.run("create", "secret", "generic", keys, "-n", namespace, "--from-literal=caller=sk-e2e-key")
    local.set_fault(namespace, name, {"simulatorArgs": ["--request-seconds", str(REQUEST_SECONDS)]})
    body = endpoint_body(
        name,
        namespace,
        auth={"apiKeysSecretName": keys},
        minReplicas=1,
        maxReplicas=2,
        autoscaling={"reservedReplicas": 1},
        engine={"maxNumSeqs": MAX_NUM_SEQS, "extraArgs": ["--scheduling-policy", "priority"]},
        gateway={"replicas": 1},
    )
    kubectl.apply(body)
    stop, interactive_on, backlog_on = threading.Event(), threading.Event(), threading.Event()
    callers: list[Caller] = []
    try:
        wait_ready(kubectl, name, namespace, timeout=240)
        with service_url(kubectl, name, namespace) as base_url:
            interactive = [
                Caller(base_url, i, flex=False, running=interactive_on, stop=stop) for i in range(INTERACTIVE_CALLERS)
            ]
            deferrable = [
                Caller(base_url, i, flex=True, running=backlog_on, stop=stop) for i in range(DEFERRABLE_CALLERS)
            ]
            callers = interactive + deferrable
            for caller in callers:
                caller.start()
            interactive_on.set()
            blocks: list[tuple[bool, float, float]] = []  # (backlog, counted from, until)
            most_replicas = 1
            lanes_seen: dict[str, Any] = {}
            for block in range(BLOCKS):
                with_backlog = block % 2 == 1
                if with_backlog:
                    backlog_on.set()
                else:
                    backlog_on.clear()
                    # The backlog's requests already sent finish first: a block without it starts once they have.
                    for caller in deferrable:
                        assert caller.idle.wait(10 * REQUEST_SECONDS + 60), "a deferrable caller never finished"
                start = time.monotonic()
                while time.monotonic() < start + BLOCK_SECONDS:
                    time.sleep(2)
                    status = _status(kubectl, name, namespace)
                    most_replicas = max(most_replicas, int(status.get("desiredReplicas") or 0))
                    deferrable_lane = (status.get("lanes") or {}).get("deferrable") or {}
                    if with_backlog and deferrable_lane.get("inFlightRequests"):
                        lanes_seen = status["lanes"]
                blocks.append((with_backlog, start + SETTLE_SECONDS, time.monotonic()))
            backlog_on.clear()
            for caller in deferrable:
                assert caller.idle.wait(10 * REQUEST_SECONDS + 60), "a deferrable caller never finished"
            interactive_on.clear()
            stop.set()
            for caller in callers:
                caller.join(timeout=REQUEST_SECONDS + 60)
        # The rendered gateway reads the replica's waiting count while its interactive requests run beside
        # deferrable ones: through the pod network, on the port the chart's policies leave open to it.
        reads = _waiting_reads(kubectl, name, namespace)

        def counted(caller: Caller, backlog: bool) -> list[float]:
            return [
                seconds
                for sent, seconds, status in caller.samples
                if status == 200
                and any(b == backlog and start <= sent and sent + seconds <= end for b, start, end in blocks)
            ]

        failures = [f for c in callers for f in c.failures]
        refused = [(c.flex, s) for c in callers for _, _, s in c.samples if s != 200]
        without = [x for c in interactive for x in counted(c, False)]
        with_ = [x for c in interactive for x in counted(c, True)]
        deferrable_done = sum(1 for c in deferrable for _, _, s in c.samples if s == 200)
        p95_without, p95_with = _p95(without), _p95(with_)
        seen = (
            f"interactive p95 {p95_without:.3f}s without the backlog ({len(without)} requests), "
            f"{p95_with:.3f}s with it ({len(with_)}); medians {sorted(without)[len(without) // 2]:.3f}s / "
            f"{sorted(with_)[len(with_) // 2]:.3f}s; max {max(without):.3f}s / {max(with_):.3f}s; "
            f"deferrable requests done {deferrable_done}; non-200 answers (flex?, status) {refused[:10]}; "
            f"failures {failures[:5]}; most replicas wanted {most_replicas}; lanes in status {lanes_seen}; "
            f"the gateway's waiting-count reads {reads}"
        )
        print(seen)
        assert not failures, seen
        assert not refused, seen
        assert len(without) >= SAMPLES_PER_CONDITION, seen
        assert len(with_) >= SAMPLES_PER_CONDITION, seen
        assert deferrable_done >= 100, seen  # the backlog was worked through, not starved
        assert p95_with <= p95_without * (1 + TOLERANCE), seen
        # The reserved pool is one replica: deferrable work alone never asked for the second.
        assert most_replicas == 1, seen
        assert lanes_seen, f"status never showed deferrable requests in flight: {seen}"
        assert reads.get("read", 0) > 0, seen

        def drained() -> dict[str, Any] | None:
            lanes = _status(kubectl, name, namespace).get("lanes")
            return lanes if lanes and not lanes["deferrable"]["inFlightRequests"] else None

        lanes_after = eventually(drained, timeout=60, what="status.lanes back to no deferrable request")
        assert lanes_after["deferrable"]["queuedRequests"] == 0, lanes_after
    finally:
        stop.set()
        backlog_on.set()  # idle callers wake to see the stop
        local.set_fault(namespace, name, None)
        delete_endpoint(kubectl, name, namespace)
        kubectl.run("delete", "secret", keys, "-n", namespace, "--ignore-not-found")
