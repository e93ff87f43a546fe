"""Faults on the local control plane, each judged the same way: every endpoint converged to its spec,
no request through the gateway failed that the fault did not have to fail, and the operator made no
write in the 60 s after it settled, "settled" being read from the API server's audit log (no
operator write for QUIET_SECONDS), not taken from a pause.

Each scenario appends its figures (time to converge, writes during and after, requests failed) to
chaos-results.jsonl in the cluster's state folder; the README's faults table is made from them.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from voxtral_operator.events import REPORTING_CONTROLLER

from ..conftest import ROOT, Kubectl, LocalCluster, condition, endpoint_body, eventually, service_base_url, wait_ready
from ..test_gateway import _set_keys, _transcribe
from .audit import AuditLog, Write

pytestmark = pytest.mark.e2e
QUIET_SECONDS = 15.0  # no operator write for this long: settled
AFTER_SECONDS = 60.0  # the window after settling that must hold no operator write
CONVERGE_SECONDS = 300.0
KEY = "sk-chaos"
CLUSTER = ROOT / "e2e" / "cluster"
BURST = 4  # endpoints created at once to make the operator busy (suspended: no GPU needed)


@dataclass
class Call:
    started: float
    ended: float
    code: int
    answer: str


@dataclass
class Callers:
    """Transcriptions through the gateway, one after another, for as long as the scenario runs."""

    base_url: str
    calls: list[Call] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def _run(self) -> None:
        while not self.stop.is_set():
            started = time.time()
            try:
                code, answer = _transcribe(self.base_url, KEY, timeout=120)
            except Exception as exc:  # a connection refused or reset is a failed request too
                code, answer = 0, {"error": repr(exc)}
            self.calls.append(Call(started, time.time(), code, json.dumps(answer)[:200]))
            self.stop.wait(0.5)

    @contextlib.contextmanager
    def running(self) -> Iterator[Callers]:
        thread = threading.Thread(target=self._run, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self.stop.set()
            thread.join(timeout=150)

    def failed(self, excused: Callable[[Call], bool] = lambda _: False) -> tuple[list[Call], list[Call]]:
        """Failed calls the fault did not have to fail, and those it did."""
        failures = [c for c in self.calls if c.code != 200]
        return [c for c in failures if not excused(c)], [c for c in failures if excused(c)]


@dataclass
class Fleet:
    namespace: str
    steady: str
    kubectl: Kubectl
    local: LocalCluster
    audit: AuditLog

    def base_url(self) -> contextlib.AbstractContextManager[str]:
        return service_base_url(self.kubectl, self.steady, self.namespace)

    def burst(self, count: int = BURST, prefix: str = "burst") -> list[str]:
        """Endpoints created at once (kept suspended: children and status, no GPU)."""
        names = [f"{prefix}-{uuid.uuid4().hex[:4]}-{i}" for i in range(count)]
        self.kubectl.apply(*(endpoint_body(n, self.namespace, suspended=True) for n in names))
        return names

    def remove(self, names: list[str]) -> None:
        if names:
            self.kubectl.run("delete", "vxe", *names, "-n", self.namespace, "--wait=true", "--timeout=120s")

    @property
    def operator_log(self) -> Path:
        return self.local.state / "logs" / "operator.log"  # where e2e/cluster/operator writes it

    def operator_log_size(self) -> int:
        return self.operator_log.stat().st_size if self.operator_log.exists() else 0

    def operator_log_naming(self, since: int, names: set[str], last: int = 60) -> list[str]:
        """The operator log's last lines from byte `since` that mention one of `names`."""
        log = self.operator_log
        if not names or not log.exists():
            return []
        with log.open("rb") as lines:
            lines.seek(since)
            text = lines.read().decode(errors="replace")
        return [line[:400] for line in text.splitlines() if any(n in line for n in names)][-last:]

    def operator_pid(self) -> int:
        return int((self.local.state / "pids" / "operator").read_text())


def unconverged(kubectl: Kubectl, namespace: str, *, gateways: bool = True) -> list[str]:
    """What differs from the specs of the namespace's endpoints (empty: converged): "settled" is judged
    once the world is, or pods still starting (the gateway's) would give the operator reasons to write."""
    problems = []
    deployments = {d["metadata"]["name"]: d for d in kubectl.json("get", "deployments", "-n", namespace)["items"]}
    services = {s["metadata"]["name"] for s in kubectl.json("get", "services", "-n", namespace)["items"]}
    for endpoint in kubectl.json("get", "vxe", "-n", namespace)["items"]:
        name, spec, status = endpoint["metadata"]["name"], endpoint["spec"], endpoint.get("status") or {}
        if status.get("observedGeneration") != endpoint["metadata"]["generation"]:
            problems.append(f"{name}: observedGeneration {status.get('observedGeneration')}")
        deployment = deployments.get(name)
        if deployment is None or name not in services:
            problems.append(f"{name}: Deployment or Service missing")
            continue
        owners = {o.get("uid") for o in deployment["metadata"].get("ownerReferences") or []}
        if endpoint["metadata"]["uid"] not in owners:
            problems.append(f"{name}: Deployment owned by {owners}")
        want = 0 if spec.get("suspended") else int(spec.get("replicas", spec.get("minReplicas", 1)))
        have = deployment["spec"].get("replicas")
        ready = (deployment.get("status") or {}).get("readyReplicas") or 0
        if have != want or (want and ready != want):
            problems.append(f"{name}: Deployment replicas {have}, ready {ready}, spec {want}")
        if want and condition(endpoint, "Ready").get("status") != "True":
            problems.append(f"{name}: Ready {condition(endpoint, 'Ready')}")
        # The gateway runs also while suspended; the operator writes status when it first reads it.
        if gateways and (spec.get("gateway") or {}).get("enabled", True):
            gateway = deployments.get(f"{name}-gateway")
            gateway_ready = ((gateway or {}).get("status") or {}).get("readyReplicas") or 0
            if gateway is None or gateway_ready != gateway["spec"].get("replicas"):
                problems.append(
                    f"{name}: gateway Deployment {'missing' if gateway is None else f'ready {gateway_ready}'}"
                )
    return problems


def wait_converged(kubectl: Kubectl, namespace: str, *, gateways: bool = True) -> float:
    """When every endpoint of the namespace matched its spec; a failure lists what did not."""
    left: list[str] = []

    def converged() -> bool:
        left[:] = unconverged(kubectl, namespace, gateways=gateways)
        return not left

    try:
        eventually(converged, CONVERGE_SECONDS, f"{namespace} converged", interval=1.0)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; not converged: {left[:10]}") from None
    return time.time()


def wait_for_write(audit: AuditLog, since: int, match: Callable[[Write], bool], what: str) -> Write:
    return eventually(lambda: next((w for w in audit.writes(since) if match(w)), None), 120, what, interval=0.05)


@dataclass
class Outcome:
    scenario: str
    converge_seconds: float
    writes_during: int
    writes_after: list[Write]
    calls: int
    failed: list[Call]
    excused: list[Call]
    refused_429: int
    extra: dict[str, Any] = field(default_factory=dict)
    # The operator's log lines, from the fault on, that name what it wrote after settling: its reasons.
    late_log: list[str] = field(default_factory=list)

    def record(self, local: LocalCluster) -> None:
        row = {
            "scenario": self.scenario,
            "converge_seconds": round(self.converge_seconds, 1),
            "writes_during": self.writes_during,
            "writes_after": len(self.writes_after),
            "requests": self.calls,
            "requests_failed": len(self.failed),
            "requests_failed_by_the_fault": len(self.excused),
            "refused_429": self.refused_429,
            "at": time.strftime("%Y-%m-%dT%H:%M:%S"),
            **self.extra,
        }
        with (local.state / "chaos-results.jsonl").open("a") as out:
            out.write(json.dumps(row) + "\n")
        print(f"\n[chaos] {json.dumps(row)}")

    def check(self) -> None:
        assert not self.writes_after, (
            f"{self.scenario}: operator writes after settling: {self.writes_after[:20]}\n"
            + "the operator's log on them:\n"
            + "\n".join(self.late_log)
        )
        assert not self.failed, f"{self.scenario}: requests failed: {self.failed[:5]}"


def run_scenario(
    fleet: Fleet,
    scenario: str,
    fault: Callable[[], None],
    *,
    namespaces: tuple[str, ...] = (),
    excused: Callable[[Call], bool] = lambda _: False,
    figures: Callable[[list[Write]], dict[str, Any]] = lambda _: {},
) -> Outcome:
    """Inject the fault with callers running; wait until converged and settled; watch 60 s more."""
    kubectl, audit = fleet.kubectl, fleet.audit
    since, started = audit.offset(), time.time()
    log_since = fleet.operator_log_size()
    with fleet.base_url() as base_url, Callers(base_url).running() as callers:
        fault()
        converged = max(wait_converged(kubectl, ns) for ns in (fleet.namespace, *namespaces))
        settled = audit.wait_settled(since, started, QUIET_SECONDS, CONVERGE_SECONDS)
        time.sleep(max(0.0, settled + AFTER_SECONDS - time.time()) + 2.0)  # the window to watch must pass
        for ns in (fleet.namespace, *namespaces):
            assert not unconverged(kubectl, ns), f"diverged again after settling: {unconverged(kubectl, ns)}"
    writes = audit.writes(since)
    failed, excused_calls = callers.failed(excused)
    outcome = Outcome(
        scenario=scenario,
        converge_seconds=converged - started,
        writes_during=sum(1 for w in writes if w.at <= settled),
        writes_after=[w for w in writes if settled < w.at <= settled + AFTER_SECONDS],
        calls=len(callers.calls),
        failed=failed,
        excused=excused_calls,
        refused_429=sum(1 for w in writes if w.code == 429),
        extra=figures(writes),
    )
    outcome.late_log = fleet.operator_log_naming(log_since, {w.name.split(".")[0] for w in outcome.writes_after})
    outcome.record(fleet.local)
    return outcome


@pytest.fixture(scope="module")
def fleet(kubectl: Kubectl, local: LocalCluster) -> Iterator[Fleet]:
    """A namespace with an endpoint behind the gateway (one L4 replica) that callers use throughout."""
    # A namespace still terminating (an earlier suite's) keeps the operator writing there: not this fault's.
    eventually(
        lambda: (
            not [
                n["metadata"]["name"]
                for n in kubectl.json("get", "namespaces")["items"]
                if n.get("status", {}).get("phase") == "Terminating"
            ]
        ),
        300,
        "no namespace terminating before the fault suite",
    )
    namespace = f"chaos-{uuid.uuid4().hex[:6]}"
    kubectl.run("create", "namespace", namespace)
    _set_keys(kubectl, "callers", namespace, current=KEY)
    steady = "steady"
    kubectl.apply(endpoint_body(steady, namespace, gateway={"enabled": True}, auth={"apiKeysSecretName": "callers"}))
    wait_ready(kubectl, steady, namespace, timeout=300)
    eventually(
        lambda: condition(kubectl.get("vxe", steady, namespace), "Serving").get("status") == "True",
        180,
        "Serving through the gateway",
    )
    wait_converged(kubectl, namespace)
    yield Fleet(namespace, steady, kubectl, local, AuditLog(local.audit_log))
    # Gone before anything else runs: a namespace still terminating keeps the operator busy.
    kubectl.run("delete", "namespace", namespace, "--wait=true", "--timeout=300s", check=False)


@contextlib.contextmanager
def burst_kept(fleet: Fleet) -> Iterator[list[str]]:
    names: list[str] = []
    try:
        yield names
    finally:
        fleet.remove(names)


def test_namespace_deleted_while_the_operator_reconciles_it(fleet: Fleet) -> None:
    kubectl = fleet.kubectl
    doomed = f"chaos-gone-{uuid.uuid4().hex[:4]}"
    kubectl.run("create", "namespace", doomed)
    since = fleet.audit.offset()
    names = [f"doomed-{i}" for i in range(6)]
    deleted_at: list[float] = []

    def fault() -> None:
        kubectl.apply(*(endpoint_body(n, doomed, suspended=True) for n in names))
        wait_for_write(fleet.audit, since, lambda w: w.namespace == doomed, "the operator writing in the namespace")
        deleted_at.append(time.time())
        kubectl.run("delete", "namespace", doomed, "--wait=false")
        eventually(lambda: not _cluster_object(kubectl, "namespace", doomed), 180, f"namespace {doomed} gone")
        # Made again at once: nothing of its predecessor may reach it (stale Events above all).
        kubectl.run("create", "namespace", doomed)

    try:
        outcome = run_scenario(
            fleet,
            "namespace deleted while reconciled",
            fault,
            figures=lambda writes: {
                "writes_in_it_after_delete": sum(1 for w in writes if w.namespace == doomed and w.at > deleted_at[0]),
                "event_writes_in_it_after_delete": sum(
                    1 for w in writes if w.namespace == doomed and w.at > deleted_at[0] and w.resource == "events"
                ),
            },
        )
        # The operator's own Events only: Kubernetes' controllers retry theirs and may land them in the successor.
        stale = [
            e
            for e in kubectl.json("get", "events.events.k8s.io", "-n", doomed)["items"]
            if e.get("reportingController") == REPORTING_CONTROLLER
        ]
        assert not stale, f"the operator's Events of the deleted namespace in the new one: {[e['note'] for e in stale]}"
        outcome.check()
    finally:
        kubectl.run("delete", "namespace", doomed, "--wait=false", check=False)


def _restart_mid_burst(fleet: Fleet, scenario: str, restart: list[str]) -> None:
    with burst_kept(fleet) as names:
        since = fleet.audit.offset()

        def fault() -> None:
            names.extend(fleet.burst())
            wait_for_write(fleet.audit, since, lambda w: w.name.startswith("burst-"), "the burst's first write")
            subprocess.run(restart, check=True, timeout=180)

        run_scenario(fleet, scenario, fault).check()


def test_apiserver_restarted_mid_burst(fleet: Fleet) -> None:
    _restart_mid_burst(fleet, "API server restarted mid-burst", [str(CLUSTER / "apiserver-restart")])


def test_etcd_restarted_mid_burst(fleet: Fleet) -> None:
    _restart_mid_burst(fleet, "etcd restarted mid-burst", [str(CLUSTER / "etcd-restart"), "5"])


def _kill_operator_at(fleet: Fleet, scenario: str, moment: Callable[[Write], bool]) -> None:
    with burst_kept(fleet) as names:
        since = fleet.audit.offset()

        def fault() -> None:
            pid = fleet.operator_pid()
            names.extend(fleet.burst())
            wait_for_write(fleet.audit, since, moment, f"the moment to kill ({scenario})")
            os.killpg(pid, signal.SIGKILL)
            fleet.local.operator("restart")

        run_scenario(fleet, scenario, fault).check()


def test_operator_killed_mid_reconcile(fleet: Fleet) -> None:
    _kill_operator_at(
        fleet, "operator killed mid-reconcile", lambda w: w.name.startswith("burst-") and w.resource == "deployments"
    )


def test_operator_killed_mid_status_write(fleet: Fleet) -> None:
    _kill_operator_at(
        fleet,
        "operator killed mid-status-write",
        lambda w: w.name.startswith("burst-") and w.resource == "voxtralendpoints/status",
    )


def _set_down(kubectl: Kubectl, nodes: str) -> None:
    body = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "voxtral-testbed-nodes", "namespace": "kube-system"},
        "data": {"down": nodes},
    }
    kubectl.run("apply", "--server-side", "--force-conflicts", "-f", "-", stdin=json.dumps(body))


def _cluster_object(kubectl: Kubectl, kind: str, name: str) -> dict[str, Any] | None:
    found = kubectl.run("get", kind, name, "-o", "json", "--ignore-not-found").stdout
    return json.loads(found) if found.strip() else None


def _ready_status(kubectl: Kubectl, node: str) -> str:
    return str(condition(_cluster_object(kubectl, "node", node), "Ready").get("status"))


def test_gpu_node_lost_with_replicas_on_it_and_back(fleet: Fleet) -> None:
    kubectl = fleet.kubectl
    pods = kubectl.json("get", "pods", "-n", fleet.namespace, "-l", f"app.kubernetes.io/instance={fleet.steady}")
    node = next(p["spec"]["nodeName"] for p in pods["items"] if p["spec"].get("nodeName", "").startswith("l4-"))
    lost_at: list[float] = []  # when it was asked for, and when its containers were dead by

    def fault() -> None:
        lost_at.append(time.time())
        _set_down(kubectl, node)
        eventually(lambda: _ready_status(kubectl, node) == "Unknown", 60, f"{node} NotReady")
        # The agent kills the containers, then marks the node (a timestamp in whole seconds).
        ready = condition(_cluster_object(kubectl, "node", node), "Ready")
        lost_at.append(
            datetime.datetime.fromisoformat(ready["lastTransitionTime"].replace("Z", "+00:00")).timestamp() + 1
        )
        wait_converged(kubectl, fleet.namespace)  # the replica is back, on the other L4 node
        _set_down(kubectl, "")
        eventually(lambda: _ready_status(kubectl, node) == "True", 60, f"{node} Ready again")

    try:
        # A call in flight on the lost replica when the machine died had to fail; none sent after.
        outcome = run_scenario(
            fleet,
            "GPU node lost with a replica on it, and back",
            fault,
            excused=lambda c: len(lost_at) == 2 and c.started <= lost_at[1] and c.ended >= lost_at[0],
        )
        outcome.check()
    finally:
        _set_down(kubectl, "")


def test_watch_broken_beyond_history_while_children_change(fleet: Fleet) -> None:
    kubectl = fleet.kubectl
    with burst_kept(fleet) as names:
        names.extend(fleet.burst(2))
        for name in names:
            wait_ready_or_suspended(kubectl, name, fleet.namespace)
        wait_converged(kubectl, fleet.namespace)

        def fault() -> None:
            pid = fleet.operator_pid()
            os.killpg(pid, signal.SIGSTOP)  # the operator's watches go quiet; history moves on without it
            try:
                ns = fleet.namespace
                kubectl.run("scale", "deployment", fleet.steady, "-n", ns, "--replicas=2")
                kubectl.run("delete", "service", names[0], "-n", ns)
                kubectl.run("delete", "deployment", names[1], "-n", ns)
                kubectl.run("label", "deployment", names[0], "-n", ns, "app.kubernetes.io/managed-by-", "chaos=1")
                subprocess.run([str(CLUSTER / "etcd-compact")], check=True, timeout=60)
                subprocess.run([str(CLUSTER / "apiserver-restart")], check=True, timeout=180)
            finally:
                os.killpg(pid, signal.SIGCONT)

        run_scenario(fleet, "watch broken beyond history (410), children changed", fault).check()


def wait_ready_or_suspended(kubectl: Kubectl, name: str, namespace: str) -> None:
    eventually(
        lambda: (kubectl.get("vxe", name, namespace) or {}).get("status", {}).get("observedGeneration"),
        180,
        f"{name} reconciled",
    )


# The operator's ServiceAccount in a priority level of its own that runs one of its requests at a time
# and answers 429 to any that comes meanwhile: no share of the server's seats (a request then runs only
# when none of the level's runs), none lent or borrowed (borrowing would let it take idle levels'
# seats, and then nothing is refused), no queue.
SQUEEZED = "chaos-operator-squeezed"
FLOW_CONTROL = [
    {
        "apiVersion": "flowcontrol.apiserver.k8s.io/v1",
        "kind": "PriorityLevelConfiguration",
        "metadata": {"name": SQUEEZED},
        "spec": {
            "type": "Limited",
            "limited": {
                "nominalConcurrencyShares": 0,
                "lendablePercent": 0,
                "borrowingLimitPercent": 0,
                "limitResponse": {"type": "Reject"},
            },
        },
    },
    {
        "apiVersion": "flowcontrol.apiserver.k8s.io/v1",
        "kind": "FlowSchema",
        "metadata": {"name": SQUEEZED},
        "spec": {
            "priorityLevelConfiguration": {"name": SQUEEZED},
            "matchingPrecedence": 500,
            "distinguisherMethod": {"type": "ByUser"},
            "rules": [
                {
                    "subjects": [
                        {
                            "kind": "ServiceAccount",
                            "serviceAccount": {"name": "voxtral-operator", "namespace": "voxtral-system"},
                        }
                    ],
                    "resourceRules": [
                        {
                            "verbs": ["*"],
                            "apiGroups": ["*"],
                            "resources": ["*"],
                            "namespaces": ["*"],
                            "clusterScope": True,
                        }
                    ],
                    "nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}],
                }
            ],
        },
    },
]


def _in_force(kubectl: Kubectl, flow_schema: str) -> bool:
    """The API server has taken the FlowSchema in: it reports whether its priority level exists."""
    return condition(_cluster_object(kubectl, "flowschema", flow_schema), "Dangling").get("status") == "False"


def test_429s_from_priority_and_fairness_under_a_burst(fleet: Fleet) -> None:
    kubectl = fleet.kubectl
    with burst_kept(fleet) as names:
        since = fleet.audit.offset()

        def fault() -> None:
            kubectl.apply(*FLOW_CONTROL)
            # The API server took the schema in (it reports whether its level exists) before the burst.
            eventually(lambda: _in_force(kubectl, SQUEEZED), 60, f"FlowSchema {SQUEEZED} in force")
            names.extend(fleet.burst(10))
            # Ten endpoints reconciled at once send more than one request at a time: some are refused.
            wait_for_write(fleet.audit, since, lambda w: w.code == 429, "an operator write answered 429")

        try:
            # Squeezed throughout: the operator converges and settles one request at a time.
            outcome = run_scenario(fleet, "429s from priority and fairness under a burst", fault)
        finally:
            kubectl.run("delete", "flowschema,prioritylevelconfiguration", SQUEEZED, check=False)
        outcome.check()
