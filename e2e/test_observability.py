"""What a platform engineer reads on a real cluster: Events from voxtral-operator with real actions,
operator log lines naming the endpoint, and status that names a blocker the Deployment controller
reports (pods that cannot be created)."""

from __future__ import annotations

import pytest

from .conftest import Kubectl, LocalCluster, condition, delete_endpoint, endpoint_body, eventually, wait_ready

pytestmark = pytest.mark.e2e


def test_events_come_from_the_operator_with_actions(kubectl: Kubectl, namespace: str, unique_name: str) -> None:
    name = unique_name
    kubectl.apply(endpoint_body(name, namespace))
    try:
        wait_ready(kubectl, name, namespace)

        def ours() -> list[dict[str, object]]:
            events = kubectl.json("get", "events.events.k8s.io", "-n", namespace)["items"]
            return [
                e
                for e in events
                if e.get("regarding", {}).get("name") == name and e["regarding"].get("kind") == "VoxtralEndpoint"
            ]

        events = eventually(lambda: [e for e in ours() if e.get("reason") == "Ready"] and ours(), 60, "a Ready event")
        for event in events:
            assert event["reportingController"] == "voxtral.dev/voxtral-operator", event
            assert event["action"], event
            assert event["action"] != "Action?", event
        assert {"Created", "Ready"} <= {str(e["reason"]) for e in events}, events
    finally:
        delete_endpoint(kubectl, name, namespace)


def test_operator_log_names_the_endpoint_and_each_child_change(
    kubectl: Kubectl, local: LocalCluster, namespace: str, unique_name: str
) -> None:
    name = unique_name
    log = local.state / "logs" / "operator.log"
    start = log.stat().st_size
    kubectl.apply(endpoint_body(name, namespace))
    try:
        wait_ready(kubectl, name, namespace)

        def ours() -> list[str]:
            with log.open(errors="replace") as lines:
                lines.seek(start)
                return [line for line in lines if f"{namespace}/{name}" in line]

        # The phase is logged once its status write has returned, which may be after `wait` saw it.
        ours_now = eventually(
            lambda: (lambda found: found if any("-> Ready" in line for line in found) else None)(ours()),
            30,
            "the operator's log line of the endpoint becoming Ready",
        )
        assert any(f"created Deployment {name}" in line for line in ours_now), ours_now
        assert all(line[:4].isdigit() and (" INFO " in line or " WARNING " in line) for line in ours_now), ours_now
    finally:
        delete_endpoint(kubectl, name, namespace)


def test_pods_that_cannot_be_created_are_named_in_status(kubectl: Kubectl, unique_name: str) -> None:
    # The `speech` namespace's policy allows PriorityClass names there; this one does not exist, so the
    # ReplicaSet controller cannot create pods at all: no pod is ever Pending to explain why.
    name, namespace = unique_name, "speech"
    body = endpoint_body(name, namespace)
    body["spec"]["nodePool"]["priorityClassName"] = "gpu-inference-missing"
    allowed = kubectl.json("get", "configmap", "voxtral-operator-config", "-n", "voxtral-system")
    if "gpu-inference-missing" not in allowed["data"]["config.yaml"]:
        pytest.skip("the operator config does not allow the missing PriorityClass in speech (e2e/cluster/values.yaml)")
    kubectl.apply(body)
    try:
        endpoint = eventually(
            lambda: (
                (e := kubectl.get("vxe", name, namespace))
                and condition(e, "Ready").get("reason") == "PodCreationFailed"
                and e
            ),
            timeout=90,
            what="Ready=False reason PodCreationFailed",
        )
        message = condition(endpoint, "Ready")["message"]
        assert "gpu-inference-missing" in message, message
    finally:
        delete_endpoint(kubectl, name, namespace)
