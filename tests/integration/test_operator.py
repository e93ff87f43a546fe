"""The operator loop, end to end: the real `voxtral-operator run` process, the API over HTTP."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any

import kmock
import pytest

from voxtral_operator import rbac
from voxtral_operator.k8s.client import ApiClient
from voxtral_testbed.apiserver import writes
from voxtral_testbed.harness import (
    Kube,
    OperatorProcess,
    condition,
    endpoint_path,
    eventually,
    request_permissions,
)
from voxtral_testbed.sandbox import Behaviour, PodBehaviour, Sandbox

pytestmark = pytest.mark.integration

NS = "team"
NAME = "asr"
DEPLOYMENT = f"/apis/apps/v1/namespaces/{NS}/deployments/{NAME}"
SERVICE = f"/api/v1/namespaces/{NS}/services/{NAME}"
PVC = f"/api/v1/namespaces/{NS}/persistentvolumeclaims/{NAME}-cache"
CHILD_PATHS = [
    DEPLOYMENT,
    SERVICE,
    PVC,
    f"/apis/policy/v1/namespaces/{NS}/poddisruptionbudgets/{NAME}",
    f"/apis/networking.k8s.io/v1/namespaces/{NS}/networkpolicies/{NAME}",
]


def endpoint(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "voxtral.dev/v1alpha1",
        "kind": "VoxtralEndpoint",
        "metadata": {"name": NAME, "namespace": NS},
        "spec": {
            "model": "mistralai/Voxtral-Mini-3B-2507",
            "gpu": {"type": "L4-24GB"},
            "minReplicas": 1,
            "maxReplicas": 3,
            "modelCache": {"size": "40Gi"},
            **spec,
        },
    }


async def ready(kube: Kube, generation: int | None = None) -> dict[str, Any] | None:
    current = await kube.get(endpoint_path(NS, NAME))
    if condition(current, "Ready").get("status") != "True":
        return None
    if generation is not None and (current or {}).get("status", {}).get("observedGeneration") != generation:
        return None
    return current


def vllm_args(deployment: dict[str, Any]) -> list[str]:
    args: list[str] = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    return args


def events(sandbox: Sandbox) -> list[tuple[str, str]]:
    return [(e.get("type", ""), e.get("reason", "")) for e in sandbox.api.objects_of("events.k8s.io/v1/events", NS)]


async def quiet_writes(sandbox: Sandbox, seconds: float) -> int:
    """Writes over `seconds` once the writes in flight have landed (Events are posted in the background,
    just after the status that caused them)."""
    settled = len(writes(sandbox.api))
    for _ in range(40):
        await asyncio.sleep(0.25)
        if len(writes(sandbox.api)) == settled:
            break
        settled = len(writes(sandbox.api))
    before = len(writes(sandbox.api))
    await asyncio.sleep(seconds)
    return len(writes(sandbox.api)) - before


async def test_create_makes_owned_children_and_ready_status(
    sandbox: Sandbox, kube: Kube, operator: OperatorProcess
) -> None:
    created = await kube.create(endpoint_path(NS), endpoint())
    current = await eventually(lambda: ready(kube), timeout=30)

    status = current["status"]
    assert status["observedGeneration"] == 1
    assert status["url"] == f"http://{NAME}.{NS}.svc.cluster.local:8000/v1"
    assert status["replicas"] == status["readyReplicas"] == 1
    assert status["selector"] == f"app.kubernetes.io/name=voxtral-endpoint,app.kubernetes.io/instance={NAME}"
    assert status["phase"] == "Ready"
    assert condition(current, "Degraded")["status"] == "False"
    for path in CHILD_PATHS:
        child = await kube.get(path)
        assert child is not None, path
        (owner,) = child["metadata"]["ownerReferences"]
        assert owner["uid"] == created["metadata"]["uid"]
        assert owner["controller"] is True
        assert child["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "voxtral-operator"
    assert ("Normal", "Created") in events(sandbox)
    assert await quiet_writes(sandbox, 3) == 0


async def test_spec_change_updates_children_in_place_and_removes_dropped_ones(
    sandbox: Sandbox, kube: Kube, operator: OperatorProcess
) -> None:
    await kube.create(endpoint_path(NS), endpoint())
    await eventually(lambda: ready(kube, generation=1), timeout=30)
    uid_before = (await kube.get(DEPLOYMENT))["metadata"]["uid"]

    await kube.merge(endpoint_path(NS, NAME), {"spec": {"engine": {"maxNumSeqs": 16}, "modelCache": None}})

    async def updated() -> dict[str, Any] | None:
        deployment = await kube.get(DEPLOYMENT)
        return deployment if deployment and "--max-num-seqs" in vllm_args(deployment) else None

    deployment = await eventually(updated)
    assert deployment["metadata"]["uid"] == uid_before  # updated in place, not recreated
    assert vllm_args(deployment)[vllm_args(deployment).index("--max-num-seqs") + 1] == "16"
    volumes = deployment["spec"]["template"]["spec"]["volumes"]
    assert {"name": "model-cache", "emptyDir": {}} in volumes  # the PVC volume was removed by apply
    await eventually(lambda: _absent(kube, PVC))
    await eventually(lambda: ready(kube, generation=2))
    assert ("Normal", "Updated") in events(sandbox)
    assert_operator_requests_allowed(sandbox)


def assert_operator_requests_allowed(sandbox: Sandbox) -> None:
    """Every request the operator made is one the chart's ClusterRole allows (the test's own are POSTs
    and merge patches of endpoints, which the role does not need; they are left out by user agent)."""
    operator_requests = [r for r in sandbox.api if "kubectl-test" not in r.headers.get("User-Agent", "")]
    needed = request_permissions(operator_requests)
    assert needed, "no requests seen"
    denied = sorted(p for p in needed if not rbac.allowed(*p))
    assert not denied, denied


async def _absent(kube: Kube, path: str) -> bool:
    return await kube.get(path) is None


async def test_deleted_child_is_recreated_and_hand_edit_reverted(
    sandbox: Sandbox, kube: Kube, operator: OperatorProcess
) -> None:
    await kube.create(endpoint_path(NS), endpoint())
    await eventually(lambda: ready(kube), timeout=30)
    service_uid = (await kube.get(SERVICE))["metadata"]["uid"]

    await kube.delete(SERVICE)

    async def recreated() -> bool:
        service = await kube.get(SERVICE)
        return service is not None and service["metadata"]["uid"] != service_uid

    await eventually(recreated, timeout=10)

    container = (await kube.get(DEPLOYMENT))["spec"]["template"]["spec"]["containers"][0]
    original_args = container["args"]
    hand_edit = {
        "spec": {"template": {"spec": {"containers": [{**container, "args": [*original_args, "--enforce-eager"]}]}}}
    }
    await kube.merge(DEPLOYMENT, hand_edit)

    async def reverted() -> bool:
        return vllm_args(await kube.get(DEPLOYMENT)) == original_args

    await eventually(reverted, timeout=10)


async def test_invalid_spec_reports_why_and_creates_nothing(
    sandbox: Sandbox, kube: Kube, operator: OperatorProcess
) -> None:
    # Voxtral Small on one L4: only arithmetic can refuse it, so it reaches the operator.
    await kube.create(endpoint_path(NS), endpoint(model="mistralai/Voxtral-Small-24B-2507", tensorParallelSize=1))

    async def refused() -> dict[str, Any] | None:
        current = await kube.get(endpoint_path(NS, NAME))
        return current if condition(current, "Ready").get("reason") == "InvalidSpec" else None

    current = await eventually(refused)
    message = condition(current, "Ready")["message"]
    assert "spec.tensorParallelSize" in message
    assert "tensorParallelSize 4 on L4-24GB" in message
    assert current["status"]["phase"] == "Failed"
    await eventually(lambda: _has_event(sandbox, ("Warning", "InvalidSpec")))
    for path in CHILD_PATHS:
        assert await kube.get(path) is None, path
    assert await quiet_writes(sandbox, 2) == 0


async def _has_event(sandbox: Sandbox, wanted: tuple[str, str]) -> bool:
    return wanted in events(sandbox)


async def test_invalid_update_leaves_running_children_untouched(
    sandbox: Sandbox, kube: Kube, operator: OperatorProcess
) -> None:
    await kube.create(endpoint_path(NS), endpoint())
    await eventually(lambda: ready(kube), timeout=30)
    before = await kube.get(DEPLOYMENT)

    await kube.merge(endpoint_path(NS, NAME), {"spec": {"engine": {"extraArgs": ["--tensor-parallel-size=8"]}}})

    async def refused() -> bool:
        return condition(await kube.get(endpoint_path(NS, NAME)), "Ready").get("reason") == "InvalidSpec"

    await eventually(refused)
    after = await kube.get(DEPLOYMENT)
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]


@pytest.mark.parametrize(
    ("behaviour", "reason", "phase"),
    [
        (PodBehaviour.LOADING_FOREVER, "Loading", "Loading"),
        (PodBehaviour.NO_GPU, "WaitingForGPU", "Pending"),  # a GPU may free up, or a node be added
        (PodBehaviour.IMAGE_PULL, "ImagePullFailed", "Failed"),
        (PodBehaviour.CRASH_LOOP, "CrashLoop", "Failed"),
        (PodBehaviour.OOM, "OOMKilled", "Failed"),
    ],
)
async def test_ready_condition_names_the_real_blocker(
    sandbox: Sandbox, kube: Kube, operator: OperatorProcess, behaviour: PodBehaviour, reason: str, phase: str
) -> None:
    sandbox.controllers.behave(NS, NAME, Behaviour(kind=behaviour))
    await kube.create(endpoint_path(NS), endpoint())

    async def blocked() -> dict[str, Any] | None:
        current = await kube.get(endpoint_path(NS, NAME))
        return current if condition(current, "Ready").get("reason") == reason else None

    current = await eventually(blocked)
    assert condition(current, "Ready")["status"] == "False"
    assert current["status"]["phase"] == phase
    if phase == "Failed":
        assert condition(current, "Degraded")["status"] == "True"
        await eventually(lambda: _has_event(sandbox, ("Warning", reason)))

    # The blocker clears (a GPU frees up, the image is fixed...): Ready within seconds.
    sandbox.controllers.behave(NS, NAME, Behaviour(kind=PodBehaviour.READY))
    current = await eventually(lambda: ready(kube))
    assert condition(current, "Degraded")["status"] == "False"


async def test_a_missing_api_key_secret_is_named_until_it_appears(
    sandbox: Sandbox, kube: Kube, operator: OperatorProcess
) -> None:
    sandbox.controllers.behave(NS, NAME, Behaviour(PodBehaviour.SIMULATED))
    sandbox.controllers.secret_wait_seconds = math.inf  # the kubelet waits for the Secret, as a real one does
    # Without the gateway vLLM itself reads the caller's key Secret (with it, the gateway does).
    gateway_off = {"enabled": False}
    await kube.create(
        endpoint_path(NS),
        endpoint(auth={"apiKeySecretRef": {"name": "asr-key", "key": "api-key"}}, gateway=gateway_off),
    )

    async def blocked() -> dict[str, Any] | None:
        current = await kube.get(endpoint_path(NS, NAME))
        return current if condition(current, "Ready").get("reason") == "SecretMissing" else None

    current = await eventually(blocked, timeout=30)
    assert "Secret asr-key is missing" in condition(current, "Ready")["message"]
    assert condition(current, "Degraded")["reason"] == "SecretMissing"
    await eventually(lambda: _has_event(sandbox, ("Warning", "SecretMissing")))

    await kube.create(f"/api/v1/namespaces/{NS}/secrets", {"metadata": {"name": "asr-key"}, "data": {}})
    current = await eventually(blocked, timeout=30)  # the Secret, but not its key
    await eventually(lambda: _message_has(kube, "Secret asr-key has no key api-key"), timeout=30)

    await kube.merge(f"/api/v1/namespaces/{NS}/secrets/asr-key", {"stringData": {"api-key": "sk-1"}})

    async def started() -> dict[str, Any] | None:  # the kubelet starts vLLM: loading, then ready
        current = await kube.get(endpoint_path(NS, NAME))
        return current if condition(current, "Ready").get("reason") in ("Loading", "Available") else None

    current = await eventually(started, timeout=60)
    assert condition(current, "Degraded")["status"] == "False"


async def _message_has(kube: Kube, text: str) -> bool:
    return text in condition(await kube.get(endpoint_path(NS, NAME)), "Ready").get("message", "")


CERT_MANAGER_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "certificates.cert-manager.io"},
    "spec": {
        "group": "cert-manager.io",
        "names": {"kind": "Certificate", "plural": "certificates", "singular": "certificate"},
        "scope": "Namespaced",
        "versions": [{"name": "v1", "served": True, "storage": True}],
    },
}


async def test_a_kind_the_cluster_does_not_serve_is_listed_once_until_its_crd_appears(
    sandbox: Sandbox, kube: Kube, tmp_path: Path
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("servingCheckSeconds: 0\nresyncSeconds: 0.5\n")
    operator = OperatorProcess(sandbox.kubeconfig, tmp_path / "operator.log", "--config", str(config)).start()
    try:
        await kube.create(endpoint_path(NS), endpoint())

        def certificate_lists() -> int:
            return sum(1 for r in sandbox.api if r.resource is not None and r.resource.group == "cert-manager.io")

        unserved = "the cluster does not serve certificates.cert-manager.io (no CRD): not listed until its CRD appears"
        await eventually(lambda: _logged(operator, unserved), timeout=60)
        await asyncio.sleep(3)  # six resyncs more
        assert certificate_lists() == 1
        assert operator.log().count(unserved) == 1
        assert operator.metric("voxtral_operator_api_errors_total", 'code="404"') == 0  # expected, not an error

        await kube.create("/apis/apiextensions.k8s.io/v1/customresourcedefinitions", CERT_MANAGER_CRD)
        await eventually(lambda: _logged(operator, "the cluster now serves certificates.cert-manager.io"), timeout=60)
        await eventually(lambda: _true(certificate_lists() > 1), timeout=30)
    finally:
        operator.stop()


async def _logged(operator: OperatorProcess, text: str) -> bool:
    return text in operator.log()


async def _true(value: bool) -> bool:
    return value


async def test_operator_restart_makes_no_writes(
    sandbox: Sandbox, kube: Kube, operator: OperatorProcess, tmp_path: Path
) -> None:
    for index in range(3):
        body = endpoint()
        body["metadata"]["name"] = f"{NAME}-{index}"
        await kube.create(endpoint_path(NS), body)
    for index in range(3):
        await eventually(lambda i=index: _ready_named(kube, f"{NAME}-{i}"), timeout=90)
        # Settled includes the autoscaler having read the endpoint's gateways once.
        await eventually(lambda i=index: _gateways_read(kube, f"{NAME}-{i}"), timeout=90)
    settled = len(writes(sandbox.api))
    assert await quiet_writes(sandbox, 1) == 0, [(str(r.url), r.text[:300]) for r in writes(sandbox.api)[settled:]]
    operator.stop()

    before = len(writes(sandbox.api))
    restarted = OperatorProcess(sandbox.kubeconfig, tmp_path / "restarted.log", *operator.extra_args).start()
    try:
        # The new process has looked at all three endpoints...
        await eventually(lambda: _metric_at_least(restarted, 3), timeout=30)
        await asyncio.sleep(1)
        # ...and found nothing to change.
        assert len(writes(sandbox.api)) == before, [(str(r.url), r.text[:300]) for r in writes(sandbox.api)[before:]]
    finally:
        restarted.stop()


async def _ready_named(kube: Kube, name: str) -> bool:
    return condition(await kube.get(endpoint_path(NS, name)), "Ready").get("status") == "True"


async def _gateways_read(kube: Kube, name: str) -> bool:
    return "queuedAudioSeconds" in ((await kube.get(endpoint_path(NS, name))) or {}).get("status", {})


async def _metric_at_least(process: OperatorProcess, count: int) -> bool:
    value = process.metric("voxtral_operator_reconciles_total", 'result="ok"')
    return value is not None and value >= count


async def test_api_errors_are_retried_until_converged(sandbox: Sandbox, kube: Kube, operator: OperatorProcess) -> None:
    sandbox.api["patch", kmock.resource("apps", "v1", "deployments")][:2] << 500
    sandbox.api["patch", kmock.resource("", "v1", "services")][:2] << 429
    (
        sandbox.api[
            "patch", kmock.resource("voxtral.dev", "v1alpha1", "voxtralendpoints"), kmock.subresource("status")
        ][:2]
        << 409
    )

    await kube.create(endpoint_path(NS), endpoint())
    await eventually(lambda: ready(kube), timeout=30)
    for path in CHILD_PATHS:
        assert await kube.get(path) is not None, path


async def test_a_backend_key_whose_create_failed_is_created_on_the_retry(
    sandbox: Sandbox, kube: Kube, operator: OperatorProcess
) -> None:
    # The API server fails the create longer than the client retries it (as while it restarts): the
    # reconcile's retry must send it again, not take it as made. No gateway pod runs here to report
    # the Secret missing later.
    failed = ApiClient.__init__.__kwdefaults__["attempts"]
    sandbox.api["post", kmock.resource("", "v1", "secrets")][:failed] << 500
    secret = f"/api/v1/namespaces/{NS}/secrets/{NAME}-backend-key"

    await kube.create(endpoint_path(NS), endpoint())
    await eventually(lambda: ready(kube), timeout=30)
    await eventually(lambda: kube.get(secret), timeout=30)
    posts = [r for r in writes(sandbox.api) if r.method == "POST" and "/secrets" in str(r.url)]
    assert len(posts) == failed + 1, [str(r.url) for r in posts]


async def test_two_replicas_with_peering_only_one_acts(sandbox: Sandbox, kube: Kube, tmp_path: Path) -> None:
    await kube.create(
        "/apis/kopf.dev/v1/clusterkopfpeerings",
        {"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": "voxtral"}},
    )
    high = OperatorProcess(sandbox.kubeconfig, tmp_path / "high.log", "--peering", "voxtral", "--priority", "200")
    low = OperatorProcess(sandbox.kubeconfig, tmp_path / "low.log", "--peering", "voxtral", "--priority", "100")
    low.start()
    high.start()
    try:
        await eventually(lambda: _metric_at_least(high, 0), timeout=20)
        await eventually(lambda: _metric_at_least(low, 0), timeout=20)
        await asyncio.sleep(3)  # let the peers see each other
        await kube.create(endpoint_path(NS), endpoint())
        await eventually(lambda: ready(kube), timeout=30)
        assert (high.metric("voxtral_operator_reconciles_total", 'result="ok"') or 0) > 0
        assert low.metric("voxtral_operator_reconciles_total", 'result="ok"') == 0
        assert "Pausing" in low.log()
    finally:
        high.stop()
        low.stop()


async def test_deleting_the_endpoint_takes_its_children(
    sandbox: Sandbox, kube: Kube, operator: OperatorProcess
) -> None:
    await kube.create(endpoint_path(NS), endpoint())
    await eventually(lambda: ready(kube), timeout=30)
    assert not (await kube.get(endpoint_path(NS, NAME)))["metadata"].get("finalizers")

    await kube.delete(endpoint_path(NS, NAME))

    for path in CHILD_PATHS:
        await eventually(lambda p=path: _absent(kube, p), timeout=10)
    await eventually(lambda: _no_pods(sandbox))


async def _no_pods(sandbox: Sandbox) -> bool:
    return not sandbox.api.objects_of("v1/pods", NS)


async def test_namespaced_mode_reconciles_only_its_namespaces(sandbox: Sandbox, kube: Kube, tmp_path: Path) -> None:
    for namespace in (NS, "elsewhere"):
        await kube.create(
            "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}
        )
    process = OperatorProcess(sandbox.kubeconfig, tmp_path / "namespaced.log", "--namespace", NS).start()
    try:
        await kube.create(endpoint_path(NS), endpoint())
        outside = endpoint()
        outside["metadata"]["namespace"] = "elsewhere"
        await kube.create(endpoint_path("elsewhere"), outside)
        await eventually(lambda: ready(kube), timeout=30)
        await asyncio.sleep(2)
        ignored = await kube.get(endpoint_path("elsewhere", NAME))
        assert not ignored.get("status")
        assert sandbox.api.objects_of("apps/v1/deployments", "elsewhere") == []
    finally:
        process.stop()


async def test_object_of_the_same_name_is_never_taken_over(
    sandbox: Sandbox, kube: Kube, operator: OperatorProcess
) -> None:
    foreign = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": NAME, "namespace": NS, "labels": {"team": "billing"}},
        "spec": {"selector": {"app": "billing"}, "ports": [{"port": 80}]},
    }
    created = await kube.create(f"/api/v1/namespaces/{NS}/services", foreign)
    await kube.create(endpoint_path(NS), endpoint())

    async def conflicted() -> dict[str, Any] | None:
        current = await kube.get(endpoint_path(NS, NAME))
        return current if condition(current, "Degraded").get("reason") == "NameConflict" else None

    current = await eventually(conflicted, timeout=30)
    assert "Service asr exists and is not owned" in condition(current, "Degraded")["message"]
    await eventually(lambda: _has_event(sandbox, ("Warning", "NameConflict")))
    untouched = await kube.get(SERVICE)
    assert untouched["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]
    assert "ownerReferences" not in untouched["metadata"]

    # The owner of the other Service removes it: the endpoint converges without anyone touching it.
    await kube.delete(SERVICE)
    current = await eventually(lambda: ready(kube), timeout=60)
    assert condition(current, "Degraded")["status"] == "False"
    assert (await kube.get(SERVICE))["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "voxtral-operator"
