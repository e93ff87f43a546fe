"""The sandbox runs an endpoint's gateway as a cluster would: gateway pods are real `voxtral-operator
gateway` processes reading Secrets and EndpointSlices (kept by the sandbox's EndpointSlice stand-in),
and the real operator scales the endpoint from zero for a request the gateway holds."""

from __future__ import annotations

import asyncio
import base64
import io
import time
import wave
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from voxtral_operator import rbac
from voxtral_testbed.harness import Kube, OperatorProcess, endpoint_path, eventually, free_port, request_permissions
from voxtral_testbed.sandbox import Behaviour, PodBehaviour, Sandbox

pytestmark = pytest.mark.integration
NS = "speech"
CALLER_KEY = "sk-caller-one"
MODEL = "mistralai/Voxtral-Mini-3B-2507"


@pytest.fixture
def vllm_port() -> int:
    return free_port()


@pytest.fixture
def gateway_metrics_port() -> int:
    return free_port()


@pytest.fixture
async def sandbox(vllm_port: int) -> AsyncIterator[Sandbox]:
    async with Sandbox(vllm_port=vllm_port) as running:
        running.controllers.default = Behaviour(PodBehaviour.SIMULATED, simulator_args=("--load-seconds", "1"))
        yield running


@pytest.fixture
def operator(sandbox: Sandbox, tmp_path: Path, vllm_port: int, gateway_metrics_port: int) -> Iterator[OperatorProcess]:
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "vllmPort": vllm_port,
                "gatewayMetricsPort": gateway_metrics_port,
                "scrapeIntervalSeconds": 0.5,
                "scrapeTimeoutSeconds": 0.5,
                "servingCheckSeconds": 1.0,
            }
        )
    )
    process = OperatorProcess(sandbox.kubeconfig, tmp_path / "operator.log", "--config", str(config)).start()
    try:
        yield process
    finally:
        process.stop()


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _wav(seconds: float = 1.0) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16000)
        out.writeframes(b"\0\0" * int(16000 * seconds))
    return buffer.getvalue()


async def _transcribe(session: aiohttp.ClientSession, url: str, key: str) -> tuple[int, dict[str, Any]]:
    form = aiohttp.FormData()
    form.add_field("model", MODEL)
    form.add_field("file", _wav(), filename="call.wav", content_type="audio/wav")
    async with session.post(
        f"{url}/v1/audio/transcriptions", data=form, headers={"Authorization": f"Bearer {key}"}
    ) as response:
        return response.status, await response.json(content_type=None)


async def _status_of(session: aiohttp.ClientSession, url: str, key: str | None = None) -> int:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with session.get(url, headers=headers) as response:
        return response.status


async def _pods(kube: Kube, selector: str) -> list[dict[str, Any]]:
    listing = await kube.get(f"/api/v1/namespaces/{NS}/pods?labelSelector={selector}")
    return list((listing or {}).get("items", []))


async def test_a_request_at_zero_replicas_is_held_by_the_gateway_and_answered_after_zero_to_one(
    sandbox: Sandbox, kube: Kube, operator: OperatorProcess, vllm_port: int, gateway_metrics_port: int
) -> None:
    name = "edge"
    await kube.create(
        f"/api/v1/namespaces/{NS}/secrets",
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "edge-callers", "namespace": NS},
            "data": {"alice": _b64(CALLER_KEY)},
        },
    )
    await kube.create(
        endpoint_path(NS),
        {
            "apiVersion": "voxtral.dev/v1alpha1",
            "kind": "VoxtralEndpoint",
            "metadata": {"name": name, "namespace": NS},
            "spec": {
                "model": MODEL,
                "gpu": {"type": "L4-24GB"},
                "minReplicas": 0,
                "maxReplicas": 1,
                "gateway": {"enabled": True},
                "auth": {"apiKeysSecretName": "edge-callers"},
            },
        },
    )

    async def endpoint() -> dict[str, Any]:
        return dict(await kube.get(endpoint_path(NS, name)) or {})

    async def scaled_to_zero() -> bool:
        return ((await endpoint()).get("status") or {}).get("phase") == "ScaledToZero"

    async def gateways_ready() -> bool:
        deployment = await kube.get(f"/apis/apps/v1/namespaces/{NS}/deployments/{name}-gateway")
        return ((deployment or {}).get("status") or {}).get("readyReplicas") == 2

    await eventually(scaled_to_zero, timeout=30)
    await eventually(gateways_ready, timeout=30)
    assert not await _pods(kube, f"app.kubernetes.io/name=voxtral-endpoint,app.kubernetes.io/instance={name}")

    # The EndpointSlice stand-in: the gateways behind the endpoint's Service, no vLLM pod behind the
    # headless one (what the gateways read), its port resolved from the name "http".
    gateway_pods = await _pods(kube, f"app.kubernetes.io/name=voxtral-gateway,app.kubernetes.io/instance={name}")
    slices = f"/apis/discovery.k8s.io/v1/namespaces/{NS}/endpointslices"
    front = await kube.get(f"{slices}/{name}-slice")
    assert front is not None
    assert front["metadata"]["labels"]["kubernetes.io/service-name"] == name
    assert sorted(e["addresses"][0] for e in front["endpoints"]) == sorted(p["status"]["podIP"] for p in gateway_pods)
    assert all(e["conditions"]["ready"] for e in front["endpoints"])
    backend = await kube.get(f"{slices}?labelSelector=kubernetes.io/service-name={name}-vllm")
    # No vLLM pod yet: a placeholder slice, as the real controller writes (no endpoints, no ports).
    assert [(s["metadata"]["name"], s["endpoints"]) for s in (backend or {})["items"]] == [(f"{name}-vllm-slice", [])]
    # The gateways serve their metrics on their own pod addresses, where the autoscaler scrapes them.
    async with aiohttp.ClientSession() as session:
        for pod in gateway_pods:
            assert await _status_of(session, f"http://{pod['status']['podIP']}:{gateway_metrics_port}/readyz") == 200

    service = await kube.get(f"/api/v1/namespaces/{NS}/services/{name}")
    url = f"http://{(service or {})['spec']['clusterIP']}:{vllm_port}"
    replicas_seen: list[int] = []

    async def watch_replicas(stop: asyncio.Event) -> None:
        while not stop.is_set():
            spec = (await endpoint()).get("spec") or {}
            replicas = int(spec.get("replicas", spec.get("minReplicas", 0)))
            if not replicas_seen or replicas_seen[-1] != replicas:
                replicas_seen.append(replicas)
            await asyncio.sleep(0.1)

    stop = asyncio.Event()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=90)) as session:
        watcher = asyncio.create_task(watch_replicas(stop))
        started = time.monotonic()
        try:
            code, answer = await _transcribe(session, url, CALLER_KEY)
        except TimeoutError:
            raise AssertionError(
                f"the held request was never answered; {await _diagnosis(sandbox, kube, name)}"
            ) from None
        waited = time.monotonic() - started
        stop.set()
        await watcher
        assert code == 200, answer
        assert answer.get("text"), answer
        assert replicas_seen[0] == 0, replicas_seen
        assert replicas_seen[-1] == 1, replicas_seen
        current = await endpoint()
        assert current["spec"].get("replicas") == 1, current["spec"]
        decision = (current.get("status") or {}).get("lastScaleDecision") or {}
        assert "held" in decision.get("reason", ""), decision
        assert waited > 1.0  # a replica had to start (and load) first

        # Through the gateway: the key is required, only the API routes are served.
        assert await _status_of(session, f"{url}/v1/models", CALLER_KEY) == 200
        assert await _status_of(session, f"{url}/v1/models", "sk-wrong") == 401
        assert await _status_of(session, f"{url}/v1/models") == 401
        assert await _status_of(session, f"{url}/invocations", CALLER_KEY) == 404

        # vLLM took its key from the generated backend-key Secret: a caller's key is refused there.
        secret = await kube.get(f"/api/v1/namespaces/{NS}/secrets/{name}-backend-key")
        backend_key = base64.b64decode((secret or {})["data"]["api-key"]).decode()
        vllm = await _pods(kube, f"app.kubernetes.io/name=voxtral-endpoint,app.kubernetes.io/instance={name}")
        pod_url = f"http://{vllm[0]['status']['podIP']}:{vllm_port}/v1/models"
        piece = await kube.get(f"{slices}/{name}-vllm-slice")
        assert (piece or {})["ports"] == [{"name": "http", "port": vllm_port, "protocol": "TCP"}]
        assert [e["addresses"] for e in (piece or {})["endpoints"]] == [[vllm[0]["status"]["podIP"]]]
        assert await _status_of(session, pod_url, CALLER_KEY) == 401
        assert await _status_of(session, pod_url, backend_key) == 200


async def test_a_pod_waits_for_its_secret_and_slices_follow_pods_and_services(
    sandbox: Sandbox, kube: Kube, vllm_port: int
) -> None:
    """Without the operator: a Deployment whose vLLM key Secret comes later, and its Services' slices."""
    labels = {"app": "late"}
    env = [{"name": "VLLM_API_KEY", "valueFrom": {"secretKeyRef": {"name": "late-key", "key": "api-key"}}}]
    container = {"name": "vllm", "image": "vllm", "env": env, "ports": [{"name": "http", "containerPort": vllm_port}]}
    await kube.create(
        f"/apis/apps/v1/namespaces/{NS}/deployments",
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "late", "namespace": NS},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": labels},
                "template": {"metadata": {"labels": labels}, "spec": {"containers": [container]}},
            },
        },
    )
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "late-vllm", "namespace": NS},
        "spec": {
            "clusterIP": "None",
            "selector": labels,
            "ports": [{"name": "http", "port": 80, "targetPort": "http"}],
        },
    }
    await kube.create(f"/api/v1/namespaces/{NS}/services", service)

    async def pod() -> dict[str, Any] | None:
        return await kube.get(f"/api/v1/namespaces/{NS}/pods/late-0")

    async def waiting_for_secret() -> dict[str, Any] | None:
        statuses = ((await pod() or {}).get("status") or {}).get("containerStatuses") or [{}]
        waiting = (statuses[0].get("state") or {}).get("waiting") or {}
        return waiting if waiting.get("reason") == "CreateContainerConfigError" else None

    waiting = await eventually(waiting_for_secret, timeout=10)
    assert "late-key" in waiting["message"]
    assert not sandbox.controllers.simulators  # nothing started without its key
    await asyncio.sleep(0.5)
    assert await waiting_for_secret()

    await kube.create(
        f"/api/v1/namespaces/{NS}/secrets",
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "late-key", "namespace": NS},
            "data": {"api-key": _b64("sk-late")},
        },
    )
    path = f"/apis/discovery.k8s.io/v1/namespaces/{NS}/endpointslices/late-vllm-slice"

    async def ready_slice() -> dict[str, Any] | None:
        piece = await kube.get(path)
        endpoints = (piece or {}).get("endpoints") or []
        return piece if endpoints and endpoints[0]["conditions"]["ready"] else None

    piece = await eventually(ready_slice, timeout=20)
    ip = ((await pod()) or {})["status"]["podIP"]
    assert piece["endpoints"][0]["addresses"] == [ip]
    assert piece["endpoints"][0]["targetRef"]["name"] == "late-0"
    assert piece["ports"] == [{"name": "http", "port": vllm_port, "protocol": "TCP"}]
    assert not sandbox.controllers.proxies  # headless: no proxy
    async with aiohttp.ClientSession() as session:
        models = f"http://{ip}:{vllm_port}/v1/models"
        assert await _status_of(session, models) == 401
        assert await _status_of(session, models, "sk-late") == 200

    # Unchanged pods, unchanged slice: no writes.
    version = piece["metadata"]["resourceVersion"]
    await asyncio.sleep(0.5)
    assert ((await kube.get(path)) or {})["metadata"]["resourceVersion"] == version

    # Scaled to zero: the slice empties; the Service deleted: the slice goes.
    await kube.merge(f"/apis/apps/v1/namespaces/{NS}/deployments/late", {"spec": {"replicas": 0}})

    async def emptied() -> bool:
        return ((await kube.get(path)) or {}).get("endpoints") == []

    await eventually(emptied, timeout=10)
    await kube.delete(f"/api/v1/namespaces/{NS}/services/late-vllm")

    async def gone() -> bool:
        return await kube.get(path) is None

    await eventually(gone, timeout=10)


async def _diagnosis(sandbox: Sandbox, kube: Kube, name: str) -> str:
    """What the pods, the slices and the gateways said, for a failure message."""
    pods = await _pods(kube, f"app.kubernetes.io/instance={name}")
    states = {p["metadata"]["name"]: (p.get("status") or {}).get("conditions") for p in pods}
    slices = await kube.get(f"/apis/discovery.k8s.io/v1/namespaces/{NS}/endpointslices")
    endpoints = {s["metadata"]["name"]: (s.get("endpoints"), s.get("ports")) for s in (slices or {}).get("items", [])}
    logs = ""
    log_dir = sandbox.controllers.log_dir
    if log_dir is not None:
        for log in sorted(log_dir.glob(f"{NS}.{name}-gateway-*.log")):
            logs += f"\n--- {log.name}:\n" + (await asyncio.to_thread(log.read_text))[-3000:]
    return f"pods: {states}; slices: {endpoints}{logs}"


async def _condition(kube: Kube, name: str, type_: str) -> dict[str, Any]:
    current = await kube.get(endpoint_path(NS, name)) or {}
    return next((c for c in (current.get("status") or {}).get("conditions") or [] if c["type"] == type_), {})


async def test_a_missing_caller_secret_is_named_in_status_and_a_deleted_backend_key_comes_back(
    sandbox: Sandbox, kube: Kube, operator: OperatorProcess, vllm_port: int
) -> None:
    """The operator never reads a Secret: it learns from the gateway pods' metrics which Secret is
    missing, names it in status and a Warning Event, and creates the backend key again when it is
    deleted; the gateways keep the key they read, so no request fails meanwhile."""
    name = "typo"
    await kube.create(
        endpoint_path(NS),
        {
            "apiVersion": "voxtral.dev/v1alpha1",
            "kind": "VoxtralEndpoint",
            "metadata": {"name": name, "namespace": NS},
            "spec": {
                "model": MODEL,
                "gpu": {"type": "L4-24GB"},
                "minReplicas": 1,
                "maxReplicas": 1,
                "gateway": {"enabled": True},
                "auth": {"apiKeySecretRef": {"name": "typo-callerz", "key": "key"}},
            },
        },
    )

    async def secret_missing() -> dict[str, Any] | None:
        serving = await _condition(kube, name, "Serving")
        return serving if serving.get("reason") == "SecretMissing" else None

    serving = await eventually(secret_missing, timeout=60)
    assert serving["status"] == "False"
    assert "Secret speech/typo-callerz key 'key'" in serving["message"], serving

    async def warnings() -> list[dict[str, Any]]:  # Events are posted just after the status that caused them
        return [e for e in sandbox.api.objects_of("events.k8s.io/v1/events", NS) if e.get("reason") == "SecretMissing"]

    (warning, *_) = await eventually(warnings, timeout=10)
    assert warning["type"] == "Warning"
    assert "typo-callerz" in warning["note"]
    service = await kube.get(f"/api/v1/namespaces/{NS}/services/{name}")
    url = f"http://{(service or {})['spec']['clusterIP']}:{vllm_port}"
    headers = {"Authorization": f"Bearer {CALLER_KEY}"}
    async with aiohttp.ClientSession() as session, session.get(f"{url}/v1/models", headers=headers) as response:
        assert response.status == 503
        assert (await response.json())["error"]["code"] == "endpoint_misconfigured"

    # The Secret is created: the gateways read it within their refresh, the condition clears.
    await kube.create(
        f"/api/v1/namespaces/{NS}/secrets",
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "typo-callerz", "namespace": NS},
            "data": {"key": _b64(CALLER_KEY)},
        },
    )

    async def answering() -> bool:
        return (await _condition(kube, name, "Serving")).get("reason") == "Answering"

    await eventually(answering, timeout=60)

    # The backend key is deleted while callers keep calling.
    key_path = f"/api/v1/namespaces/{NS}/secrets/{name}-backend-key"
    first = await kube.get(key_path)
    assert first is not None
    failures: list[tuple[int, str]] = []
    sent = 0
    done = asyncio.Event()

    async def hammer(session: aiohttp.ClientSession) -> None:
        nonlocal sent
        headers = {"Authorization": f"Bearer {CALLER_KEY}"}
        while not done.is_set():
            async with session.get(f"{url}/v1/models", headers=headers) as response:
                sent += 1
                if response.status != 200:
                    failures.append((response.status, (await response.text())[:200]))
            await asyncio.sleep(0.02)

    async def recreated() -> dict[str, Any] | None:
        secret = await kube.get(key_path)
        return secret if secret and secret["metadata"]["uid"] != first["metadata"]["uid"] else None

    async with aiohttp.ClientSession() as session:
        caller = asyncio.create_task(hammer(session))
        try:
            await kube.delete(key_path)
            second = await eventually(recreated, timeout=60)
            assert second["data"]["api-key"] != first["data"]["api-key"]  # a new random key
            assert second["metadata"]["ownerReferences"][0]["name"] == name
            await asyncio.sleep(3)  # the gateways have read the new key by now (refresh: 1 s)
        finally:
            done.set()
            await caller
    assert failures == [], f"{len(failures)} of {sent} requests failed, first: {failures[:3]}"
    assert sent > 20
    # Every request of the operator and the gateways is one the generated RBAC allows; on Secrets that
    # is `create` alone (the sandbox's kubelet reads them in process, the test with its own agent).
    needed = request_permissions(r for r in sandbox.api if "kubectl-test" not in r.headers.get("User-Agent", ""))
    assert sorted(p for p in needed if not rbac.allowed(*p)) == []
    assert {p for p in needed if p[1] == "secrets"} == {("", "secrets", "create")}


async def test_a_simulated_pod_whose_process_exits_is_restarted_on_its_address(
    sandbox: Sandbox, kube: Kube, vllm_port: int
) -> None:
    # The kubelet's part: a vLLM container that exits is started again in the same pod. Its key
    # begins with "-", as one in 64 generated backend keys does.
    key = "-starts-with-a-dash"
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "solo-key"}, "data": {"key": _b64(key)}}
    await kube.create(f"/api/v1/namespaces/{NS}/secrets", secret)
    env = [{"name": "VLLM_API_KEY", "valueFrom": {"secretKeyRef": {"name": "solo-key", "key": "key"}}}]
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "solo", "namespace": NS},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "solo"}},
            "template": {
                "metadata": {"labels": {"app": "solo"}},
                "spec": {"containers": [{"name": "vllm", "image": "vllm/vllm-openai", "env": env}]},
            },
        },
    }
    await kube.create(f"/apis/apps/v1/namespaces/{NS}/deployments", deployment)

    async def ready_pod() -> dict[str, Any] | None:
        pods = await _pods(kube, "app=solo")
        ready = [p for p in pods if p.get("status", {}).get("containerStatuses", [{}])[0].get("ready")]
        return ready[0] if ready else None

    first = await eventually(ready_pod, timeout=30)
    models = f"http://{first['status']['podIP']}:{vllm_port}/v1/models"
    async with aiohttp.ClientSession() as session:
        assert await _status_of(session, models, key) == 200
        assert await _status_of(session, models) == 401
    sandbox.controllers.simulators[(NS, first["metadata"]["name"])].process.kill()

    async def restarted() -> dict[str, Any] | None:
        pod = await ready_pod()
        return pod if pod and pod["status"]["containerStatuses"][0]["restartCount"] == 1 else None

    again = await eventually(restarted, timeout=30)
    assert again["status"]["podIP"] == first["status"]["podIP"]
    log = sandbox.pod_logs()[f"{NS}.{first['metadata']['name']}"]
    assert log.count("simulated vLLM") == 2, log  # both starts wrote to the pod's log
