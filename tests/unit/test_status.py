"""Status from what the children report (pure): blockers named, waits kept Pending, since-times kept."""

from __future__ import annotations

from typing import Any

import pytest

from voxtral_operator import status
from voxtral_operator.status import compute_status, condition_of, pod_summary

T0, T1, T2 = "2026-11-25T09:00:00Z", "2026-11-25T09:05:00Z", "2026-11-25T09:30:00Z"
NO_GPU = "0/3 nodes are available: 3 Insufficient nvidia.com/gpu. preemption: 0/3 nodes are available."
NO_POOL = "0/3 nodes are available: 3 node(s) didn't match Pod's node affinity/selector."
NO_PRIORITY_CLASS = 'pods "asr-5d8f7c9b4-" is forbidden: no PriorityClass with name gpu-inference was found'
QUOTA = (
    'pods "asr-5d8f7c9b4-x" is forbidden: exceeded quota: gpus, requested: requests.nvidia.com/gpu=1, '
    "used: requests.nvidia.com/gpu=4, limited: requests.nvidia.com/gpu=4"
)
POD_SECURITY = 'pods "asr-5d8f7c9b4-x" is forbidden: violates PodSecurity "restricted:latest": ' + "x" * 5000

# The kubelet's messages (pkg/kubelet/kubelet_pods.go) for a container whose env names a missing Secret or key.
KUBELET_CONFIG_ERRORS = {
    "no-secret": 'secret "asr-key" not found',
    "no-key": "couldn't find key api-key in Secret team/asr-key",
    "no-config-map": 'configmap "asr-config" not found',
}


def pod(name: str, state: str) -> dict[str, Any]:
    """A pod as the watch cache keeps it, in one of the states the tables use."""
    conditions: list[dict[str, Any]] = []
    containers: list[dict[str, Any]] = []
    phase = "Pending"
    if state in ("no-gpu", "no-pool"):
        message = NO_GPU if state == "no-gpu" else NO_POOL
        conditions = [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message}]
    elif state in KUBELET_CONFIG_ERRORS:
        conditions = [{"type": "PodScheduled", "status": "True"}, {"type": "Ready", "status": "False"}]
        waiting = {"reason": "CreateContainerConfigError", "message": KUBELET_CONFIG_ERRORS[state]}
        containers = [{"ready": False, "state": {"waiting": waiting}}]
    elif state == "image-pull":
        conditions = [{"type": "PodScheduled", "status": "True"}]
        containers = [{"state": {"waiting": {"reason": "ImagePullBackOff", "message": "pull access denied"}}}]
    elif state == "crash-loop":
        phase = "Running"
        conditions = [{"type": "PodScheduled", "status": "True"}]
        containers = [
            {
                "restartCount": 4,
                "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                "lastState": {"terminated": {"exitCode": 1}},
            }
        ]
    elif state in ("loading", "ready"):
        phase = "Running"
        ready = "True" if state == "ready" else "False"
        conditions = [{"type": "PodScheduled", "status": "True"}, {"type": "Ready", "status": ready}]
        containers = [{"ready": state == "ready", "state": {"running": {}}}]
    return pod_summary(
        {
            "metadata": {"name": name},
            "status": {"phase": phase, "conditions": conditions, "containerStatuses": containers},
        }
    )


def deployment(ready: int = 0, *, replica_failure: str | None = None, deadline: bool = False) -> dict[str, Any]:
    conditions: list[dict[str, Any]] = []
    if replica_failure is not None:
        conditions.append(
            {"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate", "message": replica_failure}
        )
    if deadline:
        conditions.append({"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"})
    return {
        "metadata": {"generation": 1},
        "status": {
            "observedGeneration": 1,
            "replicas": 2,
            "readyReplicas": ready,
            "updatedReplicas": 2,
            "conditions": conditions,
        },
    }


def compute(
    dep: dict[str, Any] | None,
    pods: list[dict[str, Any]],
    previous: dict[str, Any] | None = None,
    now: str = T0,
    gateway_ready: int | None = None,
) -> dict[str, Any]:
    return compute_status(
        generation=1,
        desired_replicas=2,
        deployment=dep,
        pods=pods,
        previous=previous or {},
        url="http://asr.team.svc.cluster.local:8000/v1",
        selector="app.kubernetes.io/name=voxtral-endpoint,app.kubernetes.io/instance=asr",
        tensor_parallel_size=1,
        now=now,
        gateway_ready=gateway_ready,
    )


def summary(computed: dict[str, Any]) -> tuple[Any, ...]:
    def cond(type_: str) -> tuple[str, str]:
        found = condition_of(computed, type_) or {}
        return found.get("status", ""), found.get("reason", "")

    return computed["phase"], cond("Ready"), cond("Degraded"), cond("PodsScheduled")


TABLE = [
    pytest.param(
        None, [], ("Pending", ("False", "Pending"), ("False", "AsExpected"), ("True", "Scheduled")), id="nothing-yet"
    ),
    pytest.param(
        deployment(),
        [pod("asr-a", "no-gpu"), pod("asr-b", "no-gpu")],
        ("Pending", ("False", "WaitingForGPU"), ("False", "AsExpected"), ("False", "WaitingForGPU")),
        id="gpu-starved-is-pending",
    ),
    pytest.param(
        deployment(),
        [pod("asr-a", "no-pool")],
        ("Pending", ("False", "Unschedulable"), ("False", "AsExpected"), ("False", "Unschedulable")),
        id="no-matching-node-is-pending",
    ),
    pytest.param(
        deployment(deadline=True),
        [pod("asr-a", "no-gpu")],
        ("Pending", ("False", "WaitingForGPU"), ("False", "AsExpected"), ("False", "WaitingForGPU")),
        id="a-long-gpu-wait-is-still-pending",
    ),
    pytest.param(
        deployment(deadline=True),
        [pod("asr-a", "loading")],
        ("Failed", ("False", "Loading"), ("True", "ProgressDeadlineExceeded"), ("True", "Scheduled")),
        id="a-load-past-the-deadline-fails",
    ),
    pytest.param(
        deployment(replica_failure=NO_PRIORITY_CLASS),
        [],
        ("Failed", ("False", "PodCreationFailed"), ("True", "PodCreationFailed"), ("False", "PodCreationFailed")),
        id="missing-priority-class",
    ),
    pytest.param(
        deployment(ready=1, replica_failure=QUOTA),
        [pod("asr-a", "ready")],
        ("Degraded", ("True", "Available"), ("True", "PodCreationFailed"), ("False", "PodCreationFailed")),
        id="quota-stops-a-scale-up",
    ),
    pytest.param(
        deployment(replica_failure=POD_SECURITY),
        [],
        ("Failed", ("False", "PodCreationFailed"), ("True", "PodCreationFailed"), ("False", "PodCreationFailed")),
        id="pod-security-refusal",
    ),
    pytest.param(
        deployment(ready=1),
        [pod("asr-a", "ready"), pod("asr-b", "no-gpu")],
        ("Ready", ("True", "Available"), ("False", "AsExpected"), ("False", "WaitingForGPU")),
        id="serving-while-a-replica-waits-for-a-gpu",
    ),
    pytest.param(
        deployment(),
        [pod("asr-a", "no-gpu"), pod("asr-b", "crash-loop")],
        ("Failed", ("False", "CrashLoop"), ("True", "CrashLoop"), ("False", "WaitingForGPU")),
        id="crash-loop-outranks-a-wait",
    ),
    pytest.param(
        deployment(),
        [pod("asr-a", "image-pull")],
        ("Failed", ("False", "ImagePullFailed"), ("True", "ImagePullFailed"), ("True", "Scheduled")),
        id="image-pull",
    ),
    pytest.param(
        deployment(),
        [pod("asr-a", "loading")],
        ("Loading", ("False", "Loading"), ("False", "AsExpected"), ("True", "Scheduled")),
        id="loading",
    ),
]


@pytest.mark.parametrize(("dep", "pods", "expected"), TABLE)
def test_status_names_the_blocker(
    dep: dict[str, Any] | None, pods: list[dict[str, Any]], expected: tuple[Any, ...]
) -> None:
    assert summary(compute(dep, pods)) == expected


@pytest.mark.parametrize(
    ("server_message", "shown"),
    [(NO_PRIORITY_CLASS, NO_PRIORITY_CLASS), (QUOTA, QUOTA), (POD_SECURITY, POD_SECURITY[:1500])],
    ids=["priority-class", "quota", "pod-security"],
)
def test_pod_creation_failures_carry_the_servers_message(server_message: str, shown: str) -> None:
    computed = compute(deployment(replica_failure=server_message), [])
    for type_ in ("Ready", "Degraded", "PodsScheduled"):
        message = (condition_of(computed, type_) or {})["message"]
        assert shown in message
        assert len(message) <= status.MAX_MESSAGE


@pytest.mark.parametrize(
    ("state", "reason", "named"),
    [
        ("no-secret", "SecretMissing", "Secret asr-key is missing"),
        ("no-key", "SecretMissing", "Secret asr-key has no key api-key"),
        ("no-config-map", "ContainerConfigError", 'configmap "asr-config" not found'),
    ],
)
def test_a_container_the_kubelet_cannot_configure_names_the_missing_secret(state: str, reason: str, named: str) -> None:
    computed = compute(deployment(), [pod("asr-a", "loading"), pod("asr-b", state)])
    assert summary(computed) == ("Failed", ("False", reason), ("True", reason), ("True", "Scheduled"))
    message = (condition_of(computed, "Ready") or {})["message"]
    assert message.startswith("pod asr-b cannot start: ")
    assert named in message


def test_the_scheduler_message_is_the_reason_shown() -> None:
    ready = condition_of(compute(deployment(), [pod("asr-a", "no-gpu")]), "Ready") or {}
    need = "each replica needs 1 nvidia.com/gpu"
    assert ready["message"] == f"pod asr-a waits for a GPU: {need}; the scheduler: {NO_GPU}"


def test_a_gpu_wait_says_how_many_gpus_one_node_must_have() -> None:
    computed = compute_status(
        generation=1,
        desired_replicas=1,
        deployment=deployment(),
        pods=[pod("small-a", "no-gpu")],
        previous={},
        url="",
        selector="",
        tensor_parallel_size=4,
        now=T0,
    )
    for type_ in ("Ready", "PodsScheduled"):
        message = (condition_of(computed, type_) or {})["message"]
        assert message.startswith("pod small-a waits for a GPU: each replica needs 4 nvidia.com/gpu on one node")
        assert message.endswith(f"the scheduler: {NO_GPU}")


def test_since_is_when_the_wait_began_and_an_unchanged_wait_computes_the_same_status() -> None:
    scheduled = compute(deployment(), [pod("asr-a", "loading")], now=T0)
    waiting = compute(deployment(), [pod("asr-a", "no-gpu")], previous=scheduled, now=T1)
    since = condition_of(waiting, "PodsScheduled") or {}
    assert (since["status"], since["lastTransitionTime"]) == ("False", T1)
    # Later reconciles of the same wait: the same status, so nothing is written to count time.
    later = compute(deployment(), [pod("asr-a", "no-gpu")], previous=waiting, now=T2)
    assert later == waiting
    # The scheduler's words change (another node joined, still no GPU): the message, not the since.
    grown = pod("asr-a", "no-gpu")
    grown["conditions"][0]["message"] = NO_GPU.replace("0/3", "0/4").replace("3 Insufficient", "4 Insufficient")
    changed = compute(deployment(), [grown], previous=later, now=T2)
    assert (condition_of(changed, "PodsScheduled") or {})["lastTransitionTime"] == T1
    # Scheduled at last: the condition flips, and says when.
    done = compute(deployment(), [pod("asr-a", "loading")], previous=changed, now=T2)
    assert (condition_of(done, "PodsScheduled") or {})["lastTransitionTime"] == T2


def test_the_same_pods_in_any_order_give_the_same_status() -> None:
    pods = [pod("asr-b", "no-pool"), pod("asr-a", "no-gpu"), pod("asr-c", "image-pull")]
    assert compute(deployment(), pods) == compute(deployment(), list(reversed(pods)))


def test_kubectl_get_shows_ready_and_the_reason_status_writes() -> None:
    from voxtral_operator.api.crd import PRINTER_COLUMNS

    paths = {column["name"]: column["jsonPath"] for column in PRINTER_COLUMNS}
    assert paths["Ready"] == f'.status.conditions[?(@.type=="{status.READY}")].status'
    assert paths["Reason"] == f'.status.conditions[?(@.type=="{status.READY}")].reason'
    default_columns = [column["name"] for column in PRINTER_COLUMNS if not column.get("priority")]
    assert default_columns.index("Ready") + 1 == default_columns.index("Reason")


def test_status_counts_the_gpus_held_by_bound_pods_only() -> None:
    def summary(node: str | None, phase: str) -> dict[str, Any]:
        return pod_summary({"metadata": {"name": "p"}, "spec": {"nodeName": node}, "status": {"phase": phase}})

    pods = [
        summary("gpu-1", "Running"),
        summary("gpu-2", "Pending"),
        summary(None, "Pending"),
        summary("gpu-1", "Failed"),
    ]
    result = compute_status(
        generation=1,
        desired_replicas=3,
        deployment=deployment(1),
        pods=iter(pods),  # read more than once inside: any iterable will do
        previous={},
        url="http://x/v1",
        selector="a=b",
        tensor_parallel_size=4,
        now=T0,
    )
    assert result["gpus"] == 8  # two pods on nodes (one still loading) x TP 4; unscheduled and finished hold none


def test_a_pod_ready_before_the_deployment_counts_it_is_ready_not_pending() -> None:
    loading = compute(deployment(ready=0), [pod("asr-a", "loading"), pod("asr-b", "loading")])
    assert loading["phase"] == "Loading"
    ready = compute(deployment(ready=0), [pod("asr-a", "ready"), pod("asr-b", "loading")], previous=loading)
    assert summary(ready)[:2] == ("Ready", ("True", "Available"))
    assert (condition_of(ready, "Ready") or {})["message"] == "1/2 replicas ready"


def test_replicas_beyond_what_is_wanted_are_not_counted_as_more_than_wanted() -> None:
    computed = compute_status(
        generation=1,
        desired_replicas=1,
        deployment=deployment(ready=2),
        pods=[pod("asr-a", "ready"), pod("asr-b", "ready")],
        previous={},
        url="",
        selector="",
        tensor_parallel_size=1,
        now=T0,
    )
    assert (condition_of(computed, "Ready") or {})["message"] == "1/1 replicas ready, 1 more still stopping"
    assert computed["replicaSummary"] == "1/1"


def test_replicas_behind_a_gateway_without_a_ready_pod_are_not_ready() -> None:
    def behind(gateway_ready: int | None) -> dict[str, Any]:
        return compute(deployment(ready=2), [pod("asr-a", "ready"), pod("asr-b", "ready")], gateway_ready=gateway_ready)

    unreachable = behind(0)
    assert summary(unreachable)[:2] == ("Pending", ("False", "GatewayUnavailable")), summary(unreachable)
    assert "no gateway pod is ready" in (condition_of(unreachable, "Ready") or {})["message"]
    assert summary(behind(1))[:2] == ("Ready", ("True", "Available"))
    assert summary(behind(None))[:2] == ("Ready", ("True", "Available"))  # no gateway: the replicas are the door
