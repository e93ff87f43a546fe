"""The operator loop against the real API server, controllers and scheduler: drift is undone, a spec
change rolls out with the real Deployment controller and no surge, a refused child does not hold up
the others, the scheduler's verdict reaches status, and a converged endpoint costs no writes."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from .conftest import (
    Kubectl,
    LocalCluster,
    condition,
    delete_endpoint,
    endpoint_body,
    eventually,
    wait_ready,
)

pytestmark = pytest.mark.e2e


def _args(deployment: dict[str, Any] | None) -> list[str]:
    return list(((deployment or {}).get("spec") or {})["template"]["spec"]["containers"][0]["args"])


def test_deleted_child_returns_and_hand_edit_is_reverted(kubectl: Kubectl, namespace: str, unique_name: str) -> None:
    name = unique_name
    kubectl.apply(endpoint_body(name, namespace))
    try:
        wait_ready(kubectl, name, namespace)
        first = (kubectl.get("service", name, namespace) or {})["metadata"]["uid"]
        kubectl.run("delete", "service", name, "-n", namespace)
        eventually(
            lambda: (kubectl.get("service", name, namespace) or {}).get("metadata", {}).get("uid") not in (None, first),
            timeout=60,
            what="the deleted Service recreated",
        )
        # A hand edit of a field the operator sets, as `kubectl edit` would make it.
        patch = [{"op": "add", "path": "/spec/template/spec/containers/0/args/-", "value": "--enforce-eager"}]
        kubectl.run("patch", "deployment", name, "-n", namespace, "--type=json", "-p", json.dumps(patch))
        eventually(
            lambda: "--enforce-eager" not in _args(kubectl.get("deployment", name, namespace)),
            timeout=60,
            what="the hand-edited Deployment put back",
        )
        kubectl.run("patch", "service", name, "-n", namespace, "--type=merge", "-p", '{"spec":{"selector":{"x":"y"}}}')
        eventually(
            lambda: "x" not in (kubectl.get("service", name, namespace) or {})["spec"]["selector"],
            timeout=60,
            what="the hand-edited Service selector put back",
        )
    finally:
        delete_endpoint(kubectl, name, namespace)


def test_spec_change_rolls_out_without_surge(kubectl: Kubectl, namespace: str, unique_name: str) -> None:
    name = unique_name
    # Two replicas of two L4s each: the whole L4 pool, so there is no spare GPU to surge onto.
    body = endpoint_body(name, namespace, replicas=2, minReplicas=2, maxReplicas=2, tensorParallelSize=2)
    kubectl.apply(body)
    try:
        wait_ready(kubectl, name, namespace)
        body["spec"]["engine"] = {"maxNumSeqs": 7}
        kubectl.apply(body)
        # The vLLM pods only: the gateway's pods carry the endpoint's instance label too.
        selector = f"app.kubernetes.io/instance={name},app.kubernetes.io/component=inference-server"
        most_pods = 0
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            pods = kubectl.json("get", "pods", "-n", namespace, "-l", selector)["items"]
            # A surge pod would find no GPU and wait for ever; without surge, each new pod takes the GPUs
            # an old one frees. Terminating pods are not counted: they are on their way out.
            current = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
            most_pods = max(most_pods, len(current))
            deployment = kubectl.get("deployment", name, namespace) or {}
            status = deployment.get("status") or {}
            rolled = (
                status.get("observedGeneration") == deployment["metadata"]["generation"]
                and status.get("updatedReplicas") == 2
                and status.get("readyReplicas") == 2
                and len(current) == 2
            )
            if rolled:
                break
            time.sleep(0.3)
        else:
            pytest.fail(f"rollout not finished in 180s: {kubectl.get('deployment', name, namespace)}")
        args = _args(kubectl.get("deployment", name, namespace))
        assert args[args.index("--max-num-seqs") + 1] == "7"
        assert most_pods <= 2, f"maxSurge 0: saw {most_pods} pods (not terminating) for 2 replicas"
        wait_ready(kubectl, name, namespace)
    finally:
        delete_endpoint(kubectl, name, namespace)


def test_refused_child_does_not_hold_up_the_others(kubectl: Kubectl, namespace: str, unique_name: str) -> None:
    name = unique_name
    body = endpoint_body(
        name, namespace, modelCache={"size": "10Gi", "storageClassName": "filestore-rwx", "accessMode": "ReadWriteMany"}
    )
    kubectl.apply(body)
    try:
        wait_ready(kubectl, name, namespace)
        # A claim's storage class is immutable: the server refuses that change, but the flag change
        # beside it must still roll out.
        body["spec"]["modelCache"]["storageClassName"] = "another-class"
        body["spec"]["engine"] = {"maxNumSeqs": 5}
        kubectl.apply(body)
        eventually(
            lambda: "5" in _args(kubectl.get("deployment", name, namespace)),
            timeout=60,
            what="the Deployment updated although the PVC change was refused",
        )
        endpoint = eventually(
            lambda: (
                (e := kubectl.get("vxe", name, namespace)) and condition(e, "Degraded").get("status") == "True" and e
            ),
            timeout=60,
            what="Degraded naming the refused PVC",
        )
        message = condition(endpoint, "Degraded")["message"]
        assert "PersistentVolumeClaim" in message, message
        assert "immutable" in message.lower(), message
    finally:
        delete_endpoint(kubectl, name, namespace)


def test_too_few_gpus_is_the_schedulers_verdict(kubectl: Kubectl, namespace: str, unique_name: str) -> None:
    name = unique_name
    # Four L4s in one pod: the pool has four, but two per node.
    kubectl.apply(endpoint_body(name, namespace, tensorParallelSize=4))
    try:
        endpoint = eventually(
            lambda: (
                (e := kubectl.get("vxe", name, namespace))
                and condition(e, "Ready").get("reason") == "WaitingForGPU"
                and e
            ),
            timeout=90,
            what="Ready=False reason WaitingForGPU",
        )
        message = condition(endpoint, "Ready")["message"]
        assert "Insufficient nvidia.com/gpu" in message, message
        # What the scheduler's count of nodes does not say: all four on one node, which no node here has.
        assert "each replica needs 4 nvidia.com/gpu on one node (tensorParallelSize 4)" in message, message
    finally:
        delete_endpoint(kubectl, name, namespace)


def _quiet(local: LocalCluster, settle: float, window: float) -> list[str]:
    """Wait until the operator has made no write for `settle` seconds, then list its writes over `window`."""
    offset = local.audit_offset()
    deadline = time.monotonic() + 120
    quiet_since = time.monotonic()
    while time.monotonic() - quiet_since < settle:
        assert time.monotonic() < deadline, "the operator never stopped writing"
        time.sleep(1)
        writes, offset = local.operator_writes(offset)
        if writes:
            quiet_since = time.monotonic()
    time.sleep(window)
    writes, _ = local.operator_writes(offset)
    return [str(w) for w in writes]


def test_converged_endpoint_costs_no_writes_whatever_its_spellings(
    kubectl: Kubectl, local: LocalCluster, namespace: str, unique_name: str
) -> None:
    name = unique_name
    # Spellings the server normalises: quantities, and defaults it fills in children.
    body = endpoint_body(name, namespace, resources={"cpu": "4000m", "memory": "32768Mi"})
    kubectl.apply(body)
    try:
        wait_ready(kubectl, name, namespace)
        eventually(
            lambda: condition(kubectl.get("vxe", name, namespace), "Serving").get("status") == "True",
            timeout=60,
            what="Serving",
        )
        writes = _quiet(local, settle=8, window=30)
        assert not writes, f"a converged endpoint made writes: {writes}"
    finally:
        delete_endpoint(kubectl, name, namespace)


def _status_fields(endpoint: dict[str, Any], manager: str) -> dict[str, Any]:
    for entry in endpoint["metadata"].get("managedFields") or []:
        if entry["manager"] == manager and entry.get("subresource") == "status":
            return dict(entry["fieldsV1"].get("f:status") or {})
    return {}


def test_status_writers_keep_to_their_own_fields(kubectl: Kubectl, namespace: str, unique_name: str) -> None:
    name = unique_name
    kubectl.apply(endpoint_body(name, namespace, minReplicas=1, maxReplicas=2))
    try:
        wait_ready(kubectl, name, namespace)
        # Another controller's condition, applied under its own field manager.
        foreign = {
            "apiVersion": "voxtral.dev/v1alpha1",
            "kind": "VoxtralEndpoint",
            "metadata": {"name": name, "namespace": namespace},
            "status": {
                "conditions": [
                    {
                        "type": "CostApproved",
                        "status": "True",
                        "reason": "BudgetOK",
                        "message": "within the team's budget",
                        "lastTransitionTime": "2026-01-01T00:00:00Z",
                    }
                ]
            },
        }
        kubectl.run(
            "apply",
            "--server-side",
            "--subresource=status",
            "--field-manager=cost-controller",
            "-f",
            "-",
            stdin=json.dumps(foreign),
        )
        # A change the reconciler reports in status (a rollout: Progressing, then Ready again).
        kubectl.run("patch", "vxe", name, "-n", namespace, "--type=merge", "-p", '{"spec":{"engine":{"maxNumSeqs":7}}}')
        eventually(
            lambda: (
                (e := kubectl.get("vxe", name, namespace))
                and e["status"].get("observedGeneration") == e["metadata"]["generation"]
                and condition(e, "Ready").get("status") == "True"
            ),
            timeout=120,
            what="the spec change rolled out and reported",
        )
        endpoint = kubectl.json("get", "vxe", name, "-n", namespace, "--show-managed-fields")
        assert condition(endpoint, "CostApproved").get("reason") == "BudgetOK", endpoint["status"]["conditions"]
        reconciler = _status_fields(endpoint, "voxtral-operator")
        autoscaler = _status_fields(endpoint, "voxtral-operator-autoscaler")
        assert "f:conditions" in reconciler, reconciler
        for field in ("f:queueDepth", "f:desiredReplicas", "f:lastScaleDecision"):
            assert field not in reconciler, f"the reconciler writes the autoscaler's {field}: {sorted(reconciler)}"
        assert "f:queueDepth" in autoscaler, autoscaler
        owned_conditions = reconciler["f:conditions"]
        assert not [k for k in owned_conditions if "CostApproved" in k], owned_conditions
    finally:
        delete_endpoint(kubectl, name, namespace)


def test_a_missing_api_key_secret_is_named_with_a_warning(kubectl: Kubectl, namespace: str, unique_name: str) -> None:
    name = unique_name
    # Without the gateway vLLM itself reads the caller's key Secret (with it, the gateway does).
    body = endpoint_body(name, namespace, auth={"apiKeySecretRef": {"name": f"{name}-key"}}, gateway={"enabled": False})
    kubectl.apply(body)
    try:
        endpoint = eventually(
            lambda: (
                (e := kubectl.get("vxe", name, namespace))
                and condition(e, "Ready").get("reason") == "SecretMissing"
                and e
            ),
            timeout=90,
            what="Ready=False reason SecretMissing (the kubelet's CreateContainerConfigError)",
        )
        assert f"Secret {name}-key is missing" in condition(endpoint, "Ready")["message"]

        def warned() -> bool:  # Events are posted just after the status that caused them
            events = kubectl.json("get", "events.events.k8s.io", "-n", namespace)["items"]
            return any(
                e.get("reason") == "SecretMissing" and e.get("type") == "Warning" and e["regarding"]["name"] == name
                for e in events
            )

        eventually(lambda: warned() or None, timeout=30, what="a Warning Event SecretMissing on the endpoint")
    finally:
        delete_endpoint(kubectl, name, namespace)
