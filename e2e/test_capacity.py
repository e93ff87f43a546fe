"""Capacity beyond one pool on a real control plane (real scheduler, real preemption): replicas go to
the reserved L4 pool while it has room and to the overflow pool only when it is full; a scale-down
empties the overflow pool first; reserved GPUs freed by other work bring the replicas back
make-before-break with callers hammering the gateway and none failing; and work borrowing idle
reserved GPUs at the chart's lendable PriorityClass is preempted by the scheduler when the endpoint
scales up, and runs again after it scales down.

The pools (e2e/cluster/nodes.yaml): reserved l4-speech, 2 nodes x 2 L4; overflow l4-overflow, 1 node x
2 L4, tainted capacity=on-demand so that only endpoints naming it land there.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from .conftest import (
    MINI,
    Kubectl,
    LocalCluster,
    condition,
    delete_endpoint,
    endpoint_body,
    eventually,
    service_base_url,
    wait_ready,
)
from .metrics import samples
from .test_reconcile import _quiet
from .test_suspend import Callers

pytestmark = pytest.mark.e2e
KEY = "sk-e2e-capacity"
RESERVED_NODES = {"l4-node-1", "l4-node-2"}
OVERFLOW_NODES = {"l4-overflow-1"}
RESERVED_POOL = {
    "nodeSelector": {"pool": "l4-speech"},
    "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "speech", "effect": "NoSchedule"}],
}
OVERFLOW_POOL = {
    "nodeSelector": {"pool": "l4-overflow"},
    "tolerations": [{"key": "capacity", "operator": "Equal", "value": "on-demand", "effect": "NoSchedule"}],
}
# A replica takes this long to load: long enough that a move done break-before-make would be seen.
LOAD_SECONDS = 6
# e2e/cluster/values.yaml's operatorConfig.resyncSeconds: every endpoint is reconciled again this often.
RESYNC_SECONDS = 15


@pytest.fixture
def capacity_namespace(kubectl: Kubectl) -> Iterator[str]:
    """A namespace the e2e operator config's capacity policy selects (the voxtral-serving PriorityClass)."""
    name = f"e2e-capacity-{uuid.uuid4().hex[:6]}"
    kubectl.run("create", "namespace", name)
    kubectl.run("label", "namespace", name, "voxtral.dev/e2e=capacity")
    kubectl.run("create", "secret", "generic", "callers", "-n", name, f"--from-literal=current={KEY}")
    yield name
    kubectl.run("delete", "namespace", name, "--wait=false", check=False)


def scaled_by_hand(name: str, namespace: str, most: int, node_pool: dict[str, Any]) -> dict[str, Any]:
    """An endpoint at 1 replica behind the gateway, scaled only by `kubectl scale` (no autoscaler)."""
    return endpoint_body(
        name,
        namespace,
        minReplicas=1,
        maxReplicas=most,
        replicas=1,
        autoscaling={"enabled": False},
        nodePool=node_pool,
        auth={"apiKeysSecretName": "callers"},
    )


def gpu_work(name: str, namespace: str, replicas: int, priority_class: str | None = None) -> dict[str, Any]:
    """Other work on the reserved L4 nodes: 2 GPUs a pod, a 15 s preStop so its preemption is visible
    (the operator's status write, and a poll, must land inside it on a busy machine)."""
    pod_spec: dict[str, Any] = {
        "nodeSelector": {"pool": "l4-speech"},
        "tolerations": [
            {"key": "dedicated", "operator": "Equal", "value": "speech", "effect": "NoSchedule"},
            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
        ],
        "terminationGracePeriodSeconds": 30,
        "containers": [
            {
                "name": "work",
                "image": "ghcr.io/voxtral-dev/vllm-sim:0.1.0",
                "args": [MINI, "--port", "8000"],
                "resources": {
                    "requests": {"cpu": "100m", "memory": "128Mi", "nvidia.com/gpu": "2"},
                    "limits": {"memory": "256Mi", "nvidia.com/gpu": "2"},
                },
                "lifecycle": {"preStop": {"sleep": {"seconds": 15}}},
            }
        ],
    }
    if priority_class:
        pod_spec["priorityClassName"] = priority_class
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": pod_spec},
        },
    }


def endpoint_pods(kubectl: Kubectl, name: str, namespace: str) -> list[dict[str, Any]]:
    items = kubectl.json("get", "pods", "-n", namespace, "-l", f"app.kubernetes.io/instance={name}")["items"]
    return [p for p in items if p["metadata"]["labels"].get("app.kubernetes.io/name") == "voxtral-endpoint"]


def placement(kubectl: Kubectl, name: str, namespace: str) -> dict[str, int]:
    """Ready replicas (not terminating) per pool, from where the scheduler put them."""
    counts = {"reserved": 0, "overflow": 0, "pending": 0}
    for pod in endpoint_pods(kubectl, name, namespace):
        if pod["metadata"].get("deletionTimestamp"):
            continue
        node = pod["spec"].get("nodeName")
        ready = any(
            c["type"] == "Ready" and c["status"] == "True" for c in pod.get("status", {}).get("conditions") or []
        )
        if node is None:
            counts["pending"] += 1
        elif ready:
            counts["reserved" if node in RESERVED_NODES else "overflow"] += 1
            assert node in RESERVED_NODES | OVERFLOW_NODES, f"{pod['metadata']['name']} on {node}"
    return counts


def column(listing: str, name: str) -> str:
    """A column of `kubectl get`'s first row, by the header's position (empty cells leave no word)."""
    header, row = listing.splitlines()[:2]
    start = header.index(name)
    return row[start:].split(" ", 1)[0]


def gpu_seconds(namespace: str, name: str) -> dict[str, float]:
    """The operator's voxtral_operator_gpu_seconds_total per pool for one endpoint (its metrics port)."""
    url, metric = "http://127.0.0.1:9090/metrics", "voxtral_operator_gpu_seconds_total"
    found = samples(url, metric, timeout=5, endpoint=name, namespace=namespace)
    return {labels["pool"]: value for labels, value in found}


def status(kubectl: Kubectl, name: str, namespace: str) -> dict[str, Any]:
    return dict((kubectl.get("vxe", name, namespace) or {}).get("status") or {})


def test_overflow_when_reserved_is_full_and_back_make_before_break(
    kubectl: Kubectl, local: LocalCluster, capacity_namespace: str
) -> None:
    namespace, name = capacity_namespace, "asr"
    local.set_fault(namespace, name, {"loadSeconds": LOAD_SECONDS})
    # Another team's work holds 2 of the reserved pool's 4 GPUs, at the same priority as the endpoint.
    kubectl.apply(gpu_work("other-team", namespace, replicas=1))
    eventually(
        lambda: kubectl.json(
            "get", "pods", "-n", namespace, "-l", "app=other-team", "--field-selector=status.phase=Running"
        )["items"],
        timeout=60,
        what="the other team's pod running on the reserved pool",
    )
    kubectl.apply(scaled_by_hand(name, namespace, 4, {**RESERVED_POOL, "overflow": OVERFLOW_POOL}))
    try:
        wait_ready(kubectl, name, namespace, timeout=240)
        assert placement(kubectl, name, namespace) == {"reserved": 1, "overflow": 0, "pending": 0}
        overflow = kubectl.get("deployment", f"{name}-overflow", namespace)
        assert overflow is not None
        assert overflow["spec"]["replicas"] == 0, overflow["spec"]

        # Beyond the reserved pool's room: two replicas there, two on overflow.
        kubectl.run("scale", f"vxe/{name}", "-n", namespace, "--replicas=4")
        eventually(
            lambda: placement(kubectl, name, namespace) == {"reserved": 2, "overflow": 2, "pending": 2} or None,
            timeout=120,
            what="2 replicas ready on reserved, 2 on overflow (2 reserved pods waiting for room)",
        )
        eventually(
            lambda: status(kubectl, name, namespace).get("gpusByPool") == {"reserved": 2, "overflow": 2},
            timeout=30,
            what="status.gpusByPool",
        )
        found = status(kubectl, name, namespace)
        assert found["phase"] == "Ready", found
        assert condition({"status": found}, "PodsScheduled").get("status") == "True", found["conditions"]
        listing = kubectl.run("get", "vxe", name, "-n", namespace).stdout
        assert (column(listing, "GPUS"), column(listing, "OVERFLOW")) == ("4", "2"), listing
        # Overflowing is a steady state: its reconciles (the resync's included) write nothing.
        writes = [w for w in _quiet(local, settle=5, window=RESYNC_SECONDS + 5) if f" {namespace}/" in w]
        assert not writes, writes

        # A scale-down ends overflow replicas first: the reserved replicas stay as they are.
        reserved_before = {
            p["metadata"]["name"]
            for p in endpoint_pods(kubectl, name, namespace)
            if p["spec"].get("nodeName") in RESERVED_NODES
        }
        kubectl.run("scale", f"vxe/{name}", "-n", namespace, "--replicas=3")
        eventually(
            lambda: placement(kubectl, name, namespace) == {"reserved": 2, "overflow": 1, "pending": 1} or None,
            timeout=90,
            what="3 replicas: 2 reserved, 1 overflow",
        )
        reserved_after = {
            p["metadata"]["name"]
            for p in endpoint_pods(kubectl, name, namespace)
            if p["spec"].get("nodeName") in RESERVED_NODES
        }
        assert reserved_after == reserved_before, (reserved_before, reserved_after)
        kubectl.run("scale", f"vxe/{name}", "-n", namespace, "--replicas=4")
        eventually(
            lambda: placement(kubectl, name, namespace) == {"reserved": 2, "overflow": 2, "pending": 2} or None,
            timeout=90,
            what="back to 2 reserved, 2 overflow",
        )

        # The other team's work ends: the waiting reserved pods are scheduled, load, and only once they
        # are Ready do the overflow replicas go, while callers keep the gateway busy.
        with service_base_url(kubectl, name, namespace) as base_url, Callers(base_url, KEY) as callers:
            eventually(lambda: len(callers.answers) >= 20, timeout=60, what="callers served before the move")
            kubectl.run("delete", "deployment", "other-team", "-n", namespace)
            fewest_ready = 4
            seen: list[dict[str, int]] = []

            def moved_back() -> bool:
                nonlocal fewest_ready
                now = placement(kubectl, name, namespace)
                seen.append(now)
                fewest_ready = min(fewest_ready, now["reserved"] + now["overflow"])
                return now == {"reserved": 4, "overflow": 0, "pending": 0}

            eventually(moved_back, timeout=180, what="all 4 replicas back on the reserved pool", interval=0.3)
            served = len(callers.answers)
            eventually(lambda: len(callers.answers) >= served + 40, timeout=60, what="callers served after the move")
        assert fewest_ready >= 4, f"fewer than 4 ready replicas during the move: {seen}"
        failed = callers.failures + [f"HTTP {a.status} {a.code}" for a in callers.answers if a.status != 200]
        assert not failed, f"{len(failed)} of {len(callers.answers)} calls failed: {failed[:5]}"
        eventually(
            lambda: status(kubectl, name, namespace).get("gpusByPool") == {"reserved": 4, "overflow": 0},
            timeout=60,
            what="status.gpusByPool all reserved",
        )
        # Chargeback: the overflow pool's GPU-seconds stop growing once it holds no GPU.
        held = gpu_seconds(namespace, name)
        assert held.get("reserved", 0) > 0, held
        assert held.get("overflow", 0) > 0, held
        print(f"\ncallers: {len(callers.answers)} answers, {len(failed)} failed; GPU-seconds {held}")
    finally:
        local.set_fault(namespace, name, None)
        delete_endpoint(kubectl, name, namespace)
        kubectl.run("delete", "deployment", "other-team", "-n", namespace, "--ignore-not-found")


def test_lent_reserved_gpus_are_taken_back_by_preemption_and_lent_again(
    kubectl: Kubectl, local: LocalCluster, capacity_namespace: str
) -> None:
    namespace, name = capacity_namespace, "asr-lending"
    local.set_fault(namespace, name, {"loadSeconds": 2})
    kubectl.apply(scaled_by_hand(name, namespace, 3, {**RESERVED_POOL, "priorityClassName": "voxtral-serving"}))
    try:
        wait_ready(kubectl, name, namespace, timeout=240)

        # Batch work borrows the idle reserved GPUs at the lendable PriorityClass: of its three 2-GPU pods
        # one fits (the node without the endpoint's replica); the others wait, never preempting.
        kubectl.apply(gpu_work("batch", namespace, replicas=3, priority_class="voxtral-lendable"))

        def batch_running() -> int:
            items = kubectl.json("get", "pods", "-n", namespace, "-l", "app=batch")["items"]
            # Running with its process alive (a dead one would skip its preStop and vanish at once).
            return sum(
                1
                for p in items
                if not p["metadata"].get("deletionTimestamp")
                and any("running" in (c.get("state") or {}) for c in p["status"].get("containerStatuses") or [])
            )

        eventually(lambda: batch_running() == 1, timeout=60, what="the lent work on the idle reserved GPUs")
        # The endpoint scales up: the real scheduler preempts the lent pod, and status says so meanwhile.
        kubectl.run("scale", f"vxe/{name}", "-n", namespace, "--replicas=3")
        scheduled = eventually(
            lambda: (
                (c := condition(kubectl.get("vxe", name, namespace), "PodsScheduled")).get("reason")
                == "WaitingForPreemption"
                and c
            ),
            timeout=60,
            what="PodsScheduled WaitingForPreemption",
            interval=0.2,
        )
        assert scheduled["status"] == "False", scheduled
        eventually(
            lambda: status(kubectl, name, namespace).get("readyReplicas") == 3 and batch_running() == 0,
            timeout=120,
            what="3 endpoint replicas ready, the lent work preempted",
        )
        events = kubectl.json("get", "events", "-n", namespace, "--field-selector=reason=Preempted")["items"]
        assert events, "no Preempted event from the scheduler"
        # The endpoint scales down: the lent work is scheduled on the freed GPUs again.
        kubectl.run("scale", f"vxe/{name}", "-n", namespace, "--replicas=1")
        eventually(lambda: batch_running() == 1, timeout=120, what="the lent work running again")
    finally:
        local.set_fault(namespace, name, None)
        kubectl.run("delete", "deployment", "batch", "-n", namespace, "--ignore-not-found")
        delete_endpoint(kubectl, name, namespace)
