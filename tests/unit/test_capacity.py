"""Reserved first, overflow when full (pure): the overflow count, its Deployment, status and GPU-seconds."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest

from voxtral_operator import capacity, render
from voxtral_operator.api.resolve import InvalidSpec, resolve
from voxtral_operator.config import OperatorConfig
from voxtral_operator.status import compute_status, condition_of, pod_summary

CONFIG = OperatorConfig.model_validate({"defaultPolicy": {"priorityClassNames": ["voxtral-serving", "on-demand"]}})
OVERFLOW = {
    "nodeSelector": {"pool": "l4-overflow"},
    "tolerations": [{"key": "capacity", "operator": "Equal", "value": "on-demand", "effect": "NoSchedule"}],
    "priorityClassName": "on-demand",
}
NO_ROOM = "0/4 nodes are available: 2 Insufficient nvidia.com/gpu, 2 node(s) didn't match Pod's node affinity/selector."
NOW = "2026-12-02T10:00:00Z"


def endpoint(**spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "model": "mistralai/Voxtral-Mini-3B-2507",
        "gpu": {"type": "L4-24GB"},
        "minReplicas": 1,
        "maxReplicas": 8,
        "nodePool": {"nodeSelector": {"pool": "l4-speech"}, "overflow": OVERFLOW},
    }
    return {
        "apiVersion": "voxtral.dev/v1alpha1",
        "kind": "VoxtralEndpoint",
        "metadata": {"name": "ep", "namespace": "team-a", "uid": "0f7c1a52-0000-4000-8000-000000000001"},
        "spec": {**base, **spec},
    }


def pod(name: str, state: str, pool: str | None = None) -> dict[str, Any]:
    """A pod as the watch cache keeps it: no-room, nominated (preemption under way), loading, ready."""
    labels = {capacity.POOL_LABEL: pool} if pool else {}
    status: dict[str, Any] = {"phase": "Pending", "conditions": []}
    spec: dict[str, Any] = {}
    if state in ("no-room", "nominated"):
        status["conditions"] = [
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": NO_ROOM}
        ]
        if state == "nominated":
            status["nominatedNodeName"] = "l4-node-1"
    else:
        spec["nodeName"] = "l4-node-1"
        status["phase"] = "Running"
        ready = "True" if state == "ready" else "False"
        status["conditions"] = [{"type": "PodScheduled", "status": "True"}, {"type": "Ready", "status": ready}]
    return pod_summary({"metadata": {"name": name, "labels": labels}, "spec": spec, "status": status})


def pods(*states: str, pool: str | None = None) -> list[dict[str, Any]]:
    prefix = "ep-overflow-x" if pool else "ep-x"
    return [pod(f"{prefix}-{i}", state, pool) for i, state in enumerate(states)]


@pytest.mark.parametrize(
    ("desired", "reserved", "overflow_now", "cap", "expected"),
    [
        pytest.param(4, ["ready"] * 4, 0, None, 0, id="reserved-pool-has-room"),
        pytest.param(2, ["loading", "loading"], 0, None, 0, id="cold-start-loads-on-reserved"),
        pytest.param(6, ["ready"] * 4 + ["no-room"] * 2, 0, None, 2, id="full-reserved-pool-overflows"),
        pytest.param(6, ["ready"] * 4 + ["no-room"] * 2, 0, 1, 1, id="overflow-capped"),
        pytest.param(6, ["ready"] * 4 + ["nominated"] * 2, 0, None, 0, id="preemption-brings-reserved-gpus"),
        pytest.param(6, ["ready"] * 4 + ["loading", "no-room"], 2, None, 2, id="back-on-reserved-but-loading"),
        pytest.param(6, ["ready"] * 5 + ["no-room"], 2, None, 1, id="reserved-replacement-ready-then-drop"),
        pytest.param(6, ["ready"] * 6, 2, None, 0, id="all-back-on-reserved"),
        pytest.param(4, ["ready"] * 4, 2, None, 0, id="scale-down-empties-overflow-first"),
        pytest.param(5, ["ready"] * 4 + ["no-room"], 2, None, 1, id="scale-down-by-one"),
        pytest.param(0, [], 2, None, 0, id="suspended-or-scaled-to-zero"),
    ],
)
def test_overflow_replicas_follow_the_reserved_pods(
    desired: int, reserved: list[str], overflow_now: int, cap: int | None, expected: int
) -> None:
    observed = pods(*reserved) + pods(*["ready"] * overflow_now, pool="overflow")
    got = capacity.overflow_replicas(desired=desired, pods=observed, current=overflow_now, cap=cap)
    assert got == expected, f"reserved pods {reserved}, {overflow_now} overflow now: {got} overflow replicas"


def test_overflow_deployment_is_a_replica_on_the_other_pool_and_validates() -> None:
    plan = resolve(endpoint(), CONFIG)
    objects = render.render_plan(plan, CONFIG)
    deployments = {obj["metadata"]["name"]: obj for obj in objects if obj["kind"] == "Deployment"}
    reserved, overflow = deployments["ep"], deployments["ep-overflow"]
    for obj in objects:
        kubernetes_validate.validate(obj, "1.34", strict=True)
    assert overflow["spec"]["replicas"] == 0  # until the reserved pods call for some
    template = overflow["spec"]["template"]
    assert template["spec"]["nodeSelector"] == {"pool": "l4-overflow", "nvidia.com/gpu.product": "NVIDIA-L4"}
    assert {"key": "capacity", "operator": "Equal", "value": "on-demand", "effect": "NoSchedule"} in template["spec"][
        "tolerations"
    ]
    assert template["spec"]["priorityClassName"] == "on-demand"
    # Its pods are the endpoint's pods to the Service, gateway and policy, and its own to its Deployment.
    selector = overflow["spec"]["selector"]["matchLabels"]
    assert render.selector_labels("ep").items() < selector.items() <= template["metadata"]["labels"].items()
    assert reserved["spec"]["selector"]["matchLabels"] == render.selector_labels("ep")
    assert capacity.POOL_LABEL not in reserved["spec"]["template"]["metadata"]["labels"]
    # The same replica: command line, env, resources.
    same = ("args", "env", "resources", "image")
    container = {k: template["spec"]["containers"][0][k] for k in same}
    assert container == {k: reserved["spec"]["template"]["spec"]["containers"][0][k] for k in same}


def test_the_image_prepull_covers_the_overflow_pools_nodes_too() -> None:
    objects = render.render(endpoint(coldStart={"prepullImage": True}), CONFIG)
    (daemon_set,) = [obj for obj in objects if obj["kind"] == "DaemonSet"]
    kubernetes_validate.validate(daemon_set, "1.34", strict=True)
    pod = daemon_set["spec"]["template"]["spec"]
    assert "nodeSelector" not in pod  # a node of either pool, as the affinity's two terms say
    terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    pools = [{e["key"]: e["values"] for e in term["matchExpressions"]} for term in terms]
    assert pools == [
        {"pool": ["l4-speech"], "nvidia.com/gpu.product": ["NVIDIA-L4"]},
        {"pool": ["l4-overflow"], "nvidia.com/gpu.product": ["NVIDIA-L4"]},
    ]
    assert OVERFLOW["tolerations"][0] in pod["tolerations"]


def test_no_overflow_pool_renders_no_overflow_deployment() -> None:
    body = endpoint(nodePool={"nodeSelector": {"pool": "l4-speech"}})
    names = [o["metadata"]["name"] for o in render.render(body, CONFIG) if o["kind"] == "Deployment"]
    assert names == ["ep", "ep-gateway"]


@pytest.mark.parametrize(
    ("overflow", "refusal"),
    [
        pytest.param({**OVERFLOW, "gpu": {"type": "A10-24GB"}}, None, id="another-gpu-that-fits"),
        pytest.param(
            {**OVERFLOW, "gpu": {"type": "L4-24GB"}},
            "spec.nodePool.overflow.gpu.type: mistralai/Voxtral-Small-24B-2507 does not fit on 1 x L4-24GB",
            id="another-gpu-too-small-at-the-same-tensor-parallel-size",
        ),
        pytest.param(
            {**OVERFLOW, "nodeSelector": {"pool": "l4-speech"}},
            "overflow.nodeSelector must name other nodes",
            id="same-nodes-as-reserved",
        ),
        pytest.param({**OVERFLOW, "nodeSelector": {}}, "spec.nodePool.overflow.nodeSelector", id="no-nodes-named"),
        pytest.param(
            {**OVERFLOW, "priorityClassName": "batch"},
            "spec.nodePool.overflow.priorityClassName: 'batch' is not allowed",
            id="priority-class-outside-policy",
        ),
        pytest.param(
            {**OVERFLOW, "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}},
            "spec.nodePool.overflow.nodeSelector: 'nvidia.com/gpu.product' is the operator's GPU product selector",
            id="gpu-product-selector-is-the-operators",
        ),
    ],
)
def test_overflow_pool_goes_through_the_fit_check_and_the_platforms_limits(
    overflow: dict[str, Any], refusal: str | None
) -> None:
    body = endpoint(nodePool={"nodeSelector": {"pool": "l4-speech"}, "overflow": overflow})
    if overflow.get("gpu") == {"type": "L4-24GB"}:  # Small fits one H100, not one L4
        body["spec"] |= {"model": "mistralai/Voxtral-Small-24B-2507", "gpu": {"type": "H100-80GB"}}
    if refusal is None:
        plan = resolve(body, CONFIG)
        assert plan.overflow_gpu is not None
        assert plan.overflow_gpu.product_label == "NVIDIA-A10"
        return
    with pytest.raises(InvalidSpec) as refused:
        resolve(body, CONFIG)
    assert refusal in str(refused.value), str(refused.value)


def _status(observed: list[dict[str, Any]], desired: int, overflow: bool = True) -> dict[str, Any]:
    deployment = {
        "metadata": {"generation": 1},
        "status": {"observedGeneration": 1, "replicas": desired, "updatedReplicas": desired, "readyReplicas": 0},
    }
    return compute_status(
        generation=1,
        desired_replicas=desired,
        deployment=deployment,
        pods=observed,
        previous={},
        url="http://ep.team-a.svc:8000/v1",
        selector="x",
        tensor_parallel_size=1,
        now=NOW,
        overflow=overflow,
    )


def test_status_counts_gpus_per_pool_and_an_overflowing_endpoint_is_ready() -> None:
    observed = pods("ready", "ready", "no-room", "no-room") + pods("ready", "loading", pool="overflow")
    status = _status(observed, desired=4)
    assert status["gpusByPool"] == {"reserved": 2, "overflow": 2}
    assert status["gpus"] == 4
    scheduled = condition_of(status, "PodsScheduled") or {}
    # Both reserved pods without room have an overflow pod in their stead: nothing waits.
    assert scheduled["status"] == "True", scheduled
    assert status["phase"] == "Ready"


def test_status_names_a_wait_for_room_the_overflow_pool_does_not_cover() -> None:
    observed = pods("ready", "no-room", "no-room") + pods("ready", pool="overflow")
    scheduled = condition_of(_status(observed, desired=3), "PodsScheduled") or {}
    assert (scheduled["status"], scheduled["reason"]) == ("False", "WaitingForGPU"), scheduled


def test_status_says_when_a_replica_waits_for_a_preemption() -> None:
    status = _status(pods("ready", "nominated"), desired=2, overflow=False)
    scheduled = condition_of(status, "PodsScheduled") or {}
    assert scheduled["reason"] == "WaitingForPreemption", scheduled
    assert "l4-node-1" in scheduled["message"]
    assert "gpusByPool" not in status  # no overflow pool: the GPUs column says it all


def test_gpu_seconds_per_pool_accrue_between_reconciles() -> None:
    meter = capacity.GpuMeter()
    meter.held("team-a", "ep", {"reserved": 4, "overflow": 0}, now=100.0)
    meter.held("team-a", "ep", {"reserved": 4, "overflow": 2}, now=160.0)
    totals = meter.totals(now=190.0)  # a scrape 30 s after the last reconcile
    assert totals[("team-a", "ep", "reserved")] == pytest.approx(4 * 90)
    assert totals[("team-a", "ep", "overflow")] == pytest.approx(2 * 30)
    meter.forget("team-a", "ep")
    assert meter.totals(now=200.0) == {}
