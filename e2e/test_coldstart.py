"""Cold start by path on a real control plane: the cache warmer Job runs to completion before the
replicas' Deployment exists (the real Job controller, scheduler and node agent run it), the Loading
condition names the path each replica took, a failed warmer is named while no replica is created, and the
autoscaler's default target follows the path.

On the local control plane the warmer's `hf download` is the simulator image's shim: it takes the
seconds the test asks for (the faults ConfigMap) instead of reaching the hub.
"""

from __future__ import annotations

import datetime
from typing import Any

import pytest

from .conftest import (
    Kubectl,
    LocalCluster,
    chat_callers,
    condition,
    delete_endpoint,
    endpoint_body,
    eventually,
    service_base_url,
    wait_ready,
)
from .test_reconcile import _quiet

pytestmark = pytest.mark.e2e

DOWNLOAD_SECONDS = 20  # long enough that a status write and a poll land inside it on a busy machine


def _epoch(text: str) -> float:
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _items(kubectl: Kubectl, kind: str, namespace: str, selector: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = kubectl.json("get", kind, "-n", namespace, "-l", selector)["items"]
    return items


def _vllm_pods(kubectl: Kubectl, name: str, namespace: str) -> list[dict[str, Any]]:
    selector = f"app.kubernetes.io/name=voxtral-endpoint,app.kubernetes.io/instance={name}"
    return _items(kubectl, "pods", namespace, selector)


def _warmer_jobs(kubectl: Kubectl, name: str, namespace: str) -> list[dict[str, Any]]:
    selector = f"app.kubernetes.io/name=voxtral-cache-warmer,app.kubernetes.io/instance={name}"
    return _items(kubectl, "jobs", namespace, selector)


def _prestaged(name: str, namespace: str, *, prepull: bool = False) -> dict[str, Any]:
    return endpoint_body(
        name,
        namespace,
        gateway={"enabled": False},
        modelCache={"size": "20Gi", "storageClassName": "filestore-rwx"},
        coldStart={"prestageWeights": True, "prepullImage": prepull},
    )


def test_the_cache_warmer_completes_before_the_first_replica(
    kubectl: Kubectl, local: LocalCluster, namespace: str, unique_name: str
) -> None:
    local.set_fault(namespace, unique_name, {"downloadSeconds": DOWNLOAD_SECONDS})
    kubectl.apply(_prestaged(unique_name, namespace, prepull=True))
    try:
        # While the warmer downloads: the condition says so and no replica (nor its Deployment) exists.
        def staging() -> dict[str, Any] | None:
            endpoint = kubectl.get("vxe", unique_name, namespace)
            staged = condition(endpoint, "WeightsStaged")
            return endpoint if staged.get("reason") == "StagingWeights" else None

        endpoint = eventually(staging, timeout=60, what="WeightsStaged False, StagingWeights")
        assert condition(endpoint, "Ready")["reason"] == "StagingWeights", endpoint["status"]
        assert kubectl.get("deployment", unique_name, namespace) is None, "the Deployment exists before the weights"
        assert not _vllm_pods(kubectl, unique_name, namespace)

        endpoint = wait_ready(kubectl, unique_name, namespace, timeout=240)
        (job,) = _warmer_jobs(kubectl, unique_name, namespace)
        completed = job["status"].get("completionTime")
        assert completed, f"the warmer Job did not complete: {job['status']}"
        deployment = kubectl.get("deployment", unique_name, namespace)
        assert deployment is not None
        pods = _vllm_pods(kubectl, unique_name, namespace)
        assert pods, "no vLLM pod"
        first_pod = min(_epoch(p["metadata"]["creationTimestamp"]) for p in pods)
        # Timestamps have one-second resolution: created in the second the Job completed, or after.
        assert _epoch(deployment["metadata"]["creationTimestamp"]) >= _epoch(completed), (
            f"Deployment created {deployment['metadata']['creationTimestamp']}, warmer completed {completed}"
        )
        assert first_pod >= _epoch(completed), f"first replica created before the warmer completed ({completed})"
        warmer_pod_started = job["status"]["startTime"]
        assert _epoch(completed) - _epoch(warmer_pod_started) >= DOWNLOAD_SECONDS - 1, job["status"]

        staged = condition(endpoint, "WeightsStaged")
        assert (staged["status"], staged["reason"]) == ("True", "Staged"), staged
        loading = condition(endpoint, "Loading")
        assert (loading["status"], loading["reason"]) == ("False", "SharedCache"), loading
        assert "loaded in" in loading["message"], loading
        assert "shared model cache" in loading["message"], loading

        # The compile caches are on the cache volume, and the weights are read whole (network volume).
        container = pods[0]["spec"]["containers"][0]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["VLLM_CACHE_ROOT"] == "/models/vllm", env
        assert container["args"][container["args"].index("--safetensors-load-strategy") + 1] == "eager"

        # The image pre-pull DaemonSet runs on both nodes of the L4 pool, holding no GPU.
        def prepulled() -> dict[str, Any] | None:
            daemon_set = kubectl.get("daemonset", f"{unique_name}-prepull", namespace)
            status = (daemon_set or {}).get("status") or {}
            return daemon_set if status.get("desiredNumberScheduled") == 2 == status.get("numberReady") else None

        eventually(prepulled, timeout=120, what="the pre-pull DaemonSet ready on both L4 nodes")

        # The autoscaler learned this path's cold start (from the catalog's 600 s prior towards the
        # seconds this start took, staging included) and planned with nothing else.
        def learned() -> dict[str, int] | None:
            status = (kubectl.get("vxe", unique_name, namespace) or {}).get("status") or {}
            seconds: dict[str, int] | None = status.get("coldStartSeconds")
            return seconds if seconds and "SharedCache" in seconds else None

        seconds = eventually(learned, timeout=60, what="status.coldStartSeconds with SharedCache")
        assert set(seconds) == {"SharedCache"}, seconds
        assert seconds["SharedCache"] < 600, seconds

        # Converged, warmer and DaemonSet included: the operator writes nothing more.
        writes = _quiet(local, settle=8, window=20)
        assert not writes, f"a converged prestaged endpoint made writes: {writes}"
    finally:
        local.set_fault(namespace, unique_name, None)
        delete_endpoint(kubectl, unique_name, namespace)


def test_a_failed_warmer_is_named_and_no_replica_is_created(
    kubectl: Kubectl, local: LocalCluster, namespace: str, unique_name: str
) -> None:
    local.set_fault(namespace, unique_name, {"downloadSeconds": 1, "downloadExit": 1})
    kubectl.apply(_prestaged(unique_name, namespace))
    try:

        def failed() -> dict[str, Any] | None:
            endpoint = kubectl.get("vxe", unique_name, namespace)
            return endpoint if condition(endpoint, "WeightsStaged").get("reason") == "StagingFailed" else None

        # The Job controller retries three times with its back-off (10 s, 20 s, 40 s) before Failed.
        endpoint = eventually(failed, timeout=240, what="WeightsStaged StagingFailed")
        staged = condition(endpoint, "WeightsStaged")
        assert "BackoffLimitExceeded" in staged["message"], staged
        assert endpoint["status"]["phase"] == "Failed", endpoint["status"]
        assert condition(endpoint, "Ready")["reason"] == "StagingFailed"
        assert kubectl.get("deployment", unique_name, namespace) is None
        assert not _vllm_pods(kubectl, unique_name, namespace)

        # Fixed (here: the fault removed) and the Job deleted, as the message says: staged and Ready.
        local.set_fault(namespace, unique_name, None)
        (job,) = _warmer_jobs(kubectl, unique_name, namespace)
        kubectl.run("delete", "job", job["metadata"]["name"], "-n", namespace, "--wait=true")
        endpoint = wait_ready(kubectl, unique_name, namespace, timeout=240)
        assert condition(endpoint, "WeightsStaged")["status"] == "True"
    finally:
        local.set_fault(namespace, unique_name, None)
        delete_endpoint(kubectl, unique_name, namespace)


def test_the_loading_condition_names_a_cold_download(kubectl: Kubectl, namespace: str, unique_name: str) -> None:
    """No model cache: the replica downloads the weights itself, and the condition says so."""
    kubectl.apply(endpoint_body(unique_name, namespace, gateway={"enabled": False}))
    try:
        endpoint = wait_ready(kubectl, unique_name, namespace, timeout=240)

        def loaded() -> dict[str, Any] | None:
            loading = condition(kubectl.get("vxe", unique_name, namespace), "Loading")
            return loading if loading.get("status") == "False" else None

        loading = eventually(loaded, timeout=30, what="Loading False once the replica is ready")
        assert loading["reason"] == "ColdDownload", loading
        assert "downloading the weights from the hub" in loading["message"], loading
        assert condition(endpoint, "WeightsStaged") == {}, "no warmer was asked for"
        assert not _warmer_jobs(kubectl, unique_name, namespace)
    finally:
        delete_endpoint(kubectl, unique_name, namespace)


def test_replicas_reading_their_weights_from_the_cache_are_scaled_fuller(
    kubectl: Kubectl, namespace: str, unique_name: str
) -> None:
    """Weights preloaded on the model cache and no targetActiveRequests: the next replica reads them from
    the cache, a shorter cold start, so the autoscaler holds 5 requests in flight a replica, not the hub's 4."""
    body = endpoint_body(
        unique_name,
        namespace,
        gateway={"enabled": False},
        weightsSource="preloaded",
        modelCache={"size": "20Gi", "storageClassName": "filestore-rwx"},
        minReplicas=1,
        maxReplicas=2,
        engine={"maxNumSeqs": 6},  # 12 callers: some wait, which a scale-up of a small fleet needs
        autoscaling={"scaleDownDelaySeconds": 5},
    )
    kubectl.apply(body)
    try:
        wait_ready(kubectl, unique_name, namespace, timeout=240)
        with service_base_url(kubectl, unique_name, namespace) as base_url, chat_callers(base_url, 12):

            def scaled_up() -> dict[str, Any] | None:
                status = (kubectl.get("vxe", unique_name, namespace) or {}).get("status") or {}
                decision: dict[str, Any] = status.get("lastScaleDecision") or {}
                return decision if "scale up" in decision.get("reason", "") else None

            decision = eventually(scaled_up, timeout=120, what="a scale-up under 12 callers")
        assert "target 5 a replica" in decision["reason"], decision
        assert "(SharedCache)" in decision["reason"], decision
    finally:
        delete_endpoint(kubectl, unique_name, namespace)
