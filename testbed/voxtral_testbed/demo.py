"""`voxtral-testbed demo`: the real operator reconciling the bundled examples against a local API server.

No cluster needed: the sandbox serves the Kubernetes API on loopback and plays the kubelet
(pods become ready after a short "model load"). The operator runs as its own process, exactly
as `voxtral-operator run` runs in a cluster. The demo ends by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import functools
import io
import os
import re
import shutil
import tempfile
import time
import wave
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from voxtral_operator.api.models import DEFAULT_SCALE_DOWN_DELAY_SECONDS, AutoscalingPolicy
from voxtral_testbed.harness import Kube, OperatorProcess, condition, endpoint_path, eventually, free_port
from voxtral_testbed.sandbox import Behaviour, PodBehaviour, Sandbox

DEMO_API_KEY = "sk-demo-not-a-secret"

BURST_ENDPOINT = {
    "apiVersion": "voxtral.dev/v1alpha1",
    "kind": "VoxtralEndpoint",
    "metadata": {"name": "voxtral-burst", "namespace": "speech"},
    "spec": {
        "model": "mistralai/Voxtral-Mini-3B-2507",
        "gpu": {"type": "L4-24GB"},
        "minReplicas": 1,
        "maxReplicas": 3,
        "engine": {"maxNumSeqs": 2},
        "autoscaling": {"scaleDownDelaySeconds": 5},
        # Callers straight to vLLM: scaling on vLLM's own queue (the edge endpoint below shows the gateway).
        "gateway": {"enabled": False},
    },
}

EDGE_KEY = "sk-edge-demo-not-a-secret"
EDGE_CALLERS = "voxtral-edge-callers"
GATEWAY_ENDPOINT = {
    "apiVersion": "voxtral.dev/v1alpha1",
    "kind": "VoxtralEndpoint",
    "metadata": {"name": "voxtral-edge", "namespace": "speech"},
    "spec": {
        "model": "mistralai/Voxtral-Mini-3B-2507",
        "gpu": {"type": "L4-24GB"},
        "minReplicas": 0,
        "maxReplicas": 1,
        "gateway": {"enabled": True},
        "auth": {"apiKeysSecretName": EDGE_CALLERS},
    },
}

CHILDREN = [
    ("persistentvolumeclaims", "/api/v1/namespaces/{ns}/persistentvolumeclaims"),
    ("deployments", "/apis/apps/v1/namespaces/{ns}/deployments"),
    ("services", "/api/v1/namespaces/{ns}/services"),
    ("poddisruptionbudgets", "/apis/policy/v1/namespaces/{ns}/poddisruptionbudgets"),
    ("networkpolicies", "/apis/networking.k8s.io/v1/namespaces/{ns}/networkpolicies"),
    ("pods", "/api/v1/namespaces/{ns}/pods"),
]


def _say(text: str) -> None:
    print(text, flush=True)


def _kubectl_binary() -> str | None:
    """$KUBECTL, else the repository's .tools/kubectl, else kubectl on PATH; None when none is runnable."""
    candidates = [os.environ.get("KUBECTL"), str(Path(__file__).resolve().parents[2] / ".tools" / "kubectl")]
    candidates.append(shutil.which("kubectl"))
    return next((c for c in candidates if c and os.path.isfile(c) and os.access(c, os.X_OK)), None)


async def _kubectl(sandbox: Sandbox, command: str, comment: str = "") -> bool:
    """Print `$ kubectl <command>` and the real kubectl's output; False (nothing run) without a kubectl.

    A subprocess awaited on the event loop: the API server stand-in runs on this same loop, so a
    blocking call would deadlock.
    """
    _say(f"\n$ kubectl {command}" + (f"   # {comment}" if comment else ""))
    binary = _kubectl_binary()
    if binary is None:
        _say("(kubectl not found: a summary)")
        return False
    cache = Path(sandbox.kubeconfig).parent / "kubectl-cache"
    process = await asyncio.create_subprocess_exec(
        binary,
        "--kubeconfig",
        str(sandbox.kubeconfig),
        "--cache-dir",
        str(cache),
        *command.split(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), timeout=30)
    except TimeoutError:
        process.kill()
        await process.wait()
        output = b"(kubectl timed out)"
    _say(output.decode(errors="replace").rstrip())
    return True


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows)


def _endpoint_row(obj: dict[str, Any]) -> list[str]:
    status = obj.get("status") or {}
    return [
        obj["metadata"]["name"],
        obj["spec"]["model"],
        obj["spec"]["gpu"]["type"],
        str(status.get("replicaSummary", "")),
        str(status.get("phase", "")),
        condition(obj, "Ready").get("status", ""),
        condition(obj, "Ready").get("reason", ""),
        str(status.get("url", "")),
    ]


async def _print_endpoints(kube: Kube, namespace: str) -> None:
    listing = await kube.get(endpoint_path(namespace))
    rows = [["NAME", "MODEL", "GPU", "REPLICAS", "PHASE", "READY", "REASON", "URL"]]
    rows += [_endpoint_row(obj) for obj in (listing or {}).get("items", [])]
    _say(_table(rows))


async def _demo(examples: list[Path]) -> int:
    endpoints = [yaml.safe_load(path.read_text()) for path in examples]
    namespaces = sorted({e["metadata"].get("namespace", "default") for e in endpoints})
    vllm_port = free_port()
    async with Sandbox(vllm_port=vllm_port) as sandbox, aiohttp.ClientSession() as session:
        # Every pod is a simulated vLLM process that "loads the model" for 3 s (its port refuses
        # connections meanwhile), so the Loading phase is visible and Services really answer.
        sandbox.controllers.default = Behaviour(PodBehaviour.SIMULATED, simulator_args=("--load-seconds", "3"))
        kube = Kube(sandbox.url, session)
        workdir = Path(tempfile.mkdtemp(prefix="voxtral-demo-"))
        log = workdir / "operator.log"
        config = workdir / "config.yaml"
        # As a platform team would set it: the Small example's PriorityClass allowed in its namespace.
        policy = {"namespaces": namespaces, "priorityClassNames": ["gpu-inference"]}
        config.write_text(
            yaml.safe_dump({"vllmPort": vllm_port, "scrapeIntervalSeconds": 1.0, "namespacePolicies": [policy]})
        )
        _say(f"API server stand-in at {sandbox.url}; operator log: {log} (removed when the demo ends well)")
        operator = OperatorProcess(sandbox.kubeconfig, log, "--config", str(config)).start()
        try:
            started = time.monotonic()
            for namespace in namespaces:
                # The API key the Small example names; vLLM reads it from this Secret.
                await kube.create(
                    f"/api/v1/namespaces/{namespace}/secrets",
                    {
                        "apiVersion": "v1",
                        "kind": "Secret",
                        "metadata": {"name": "voxtral-small-key", "namespace": namespace},
                        "stringData": {"api-key": DEMO_API_KEY},
                    },
                )
            for body in endpoints:
                namespace = body["metadata"].get("namespace", "default")
                await kube.create(endpoint_path(namespace), body)
                _say(f"applied VoxtralEndpoint {namespace}/{body['metadata']['name']} ({body['spec']['model']})")

            async def phase(wanted: str) -> bool:
                for body in endpoints:
                    namespace = body["metadata"].get("namespace", "default")
                    current = await kube.get(endpoint_path(namespace, body["metadata"]["name"]))
                    # An endpoint that may idle at zero stays there until its first request.
                    expected = "ScaledToZero" if _idles_at_zero(body) else wanted
                    if ((current or {}).get("status") or {}).get("phase") != expected:
                        return False
                return True

            await eventually(lambda: phase("Loading"), timeout=60)
            for namespace in namespaces:
                if not await _kubectl(sandbox, f"get vxe -n {namespace}", "models loading"):
                    await _print_endpoints(kube, namespace)
            await eventually(lambda: phase("Ready"), timeout=60)
            for body in endpoints:  # callers meet the gateway: its pods, too, must be ready
                where = (body["metadata"].get("namespace", "default"), body["metadata"]["name"])
                await eventually(functools.partial(_gateways_ready, kube, *where), timeout=60)
            ready_after = f"ready after {time.monotonic() - started:.1f}s"
            for namespace in namespaces:
                if not await _kubectl(sandbox, f"get vxe -n {namespace}", ready_after):
                    await _print_endpoints(kube, namespace)

            for namespace in namespaces:
                selector = "app.kubernetes.io/managed-by=voxtral-operator"
                if await _kubectl(sandbox, f"get all,pvc,pdb,netpol -n {namespace} -l {selector}"):
                    await _kubectl(sandbox, f"get events -n {namespace}")
                    continue
                rows = [["KIND", "NAME", "OWNER"]]
                for kind, path in CHILDREN:
                    listing = await kube.get(path.format(ns=namespace))
                    for obj in (listing or {}).get("items", []):
                        owners = obj["metadata"].get("ownerReferences") or [{}]
                        rows.append([kind, obj["metadata"]["name"], f"{owners[0].get('kind')}/{owners[0].get('name')}"])
                _say(_table(rows))
                _say(f"\n$ kubectl get events -n {namespace}")
                # The operator posts events.k8s.io/v1 Events (regarding, note), as kubectl shows them.
                listing = await kube.get(f"/apis/events.k8s.io/v1/namespaces/{namespace}/events")
                rows = [["TYPE", "REASON", "OBJECT", "MESSAGE"]]
                for event in (listing or {}).get("items", []):
                    regarding = event.get("regarding", {})
                    rows.append(
                        [
                            event.get("type", ""),
                            event.get("reason", ""),
                            regarding.get("name", ""),
                            event.get("note", "")[:90],
                        ]
                    )
                _say(_table(rows))

            await _call_through_services(sandbox, kube, session, endpoints, vllm_port)

            first = endpoints[0]
            namespace, name = first["metadata"].get("namespace", "default"), first["metadata"]["name"]
            target = int(first["spec"].get("maxReplicas", 1))
            if not await _kubectl(sandbox, f"scale vxe/{name} -n {namespace} --replicas={target}"):
                await kube.request(
                    "PATCH",
                    endpoint_path(namespace, name) + "/scale",
                    {"spec": {"replicas": target}},
                    "application/merge-patch+json",
                )

            async def scaled() -> bool:
                current = await kube.get(endpoint_path(namespace, name))
                return ((current or {}).get("status") or {}).get("readyReplicas") == target

            await eventually(scaled, timeout=60)
            for ns in namespaces:
                if not await _kubectl(sandbox, f"get vxe -n {ns}"):
                    await _print_endpoints(kube, ns)
            await _burst(sandbox, kube, vllm_port)
            await _gateway(sandbox, kube, session, vllm_port)
            _say(
                "\ndemo complete: the operator reconciled every example, scaled on queue depth and from zero "
                "through the gateway; stopping"
            )
        except BaseException:
            _say(f"the operator's log is kept for a look: {log}")
            raise
        finally:
            operator.stop()
    shutil.rmtree(workdir, ignore_errors=True)  # a demo that worked leaves nothing behind
    return 0


def _idles_at_zero(body: dict[str, Any]) -> bool:
    return int(body["spec"].get("minReplicas", 1)) == 0


async def _gateways_ready(kube: Kube, namespace: str, name: str) -> bool:
    """Every gateway pod of the endpoint ready (True without a gateway: callers then meet vLLM)."""
    deployment = await kube.get(f"/apis/apps/v1/namespaces/{namespace}/deployments/{name}-gateway")
    if deployment is None:
        return True
    return bool(((deployment.get("status") or {}).get("readyReplicas") or 0) >= deployment["spec"]["replicas"])


async def _call_through_services(
    sandbox: Sandbox, kube: Kube, session: aiohttp.ClientSession, endpoints: list[dict[str, Any]], port: int
) -> None:
    """What a caller sees: GET /v1/models through each endpoint's Service, with and without the key."""
    _say("\n$ curl http://<service>/v1/models   # from a pod the NetworkPolicy admits")
    for body in endpoints:
        namespace, name = body["metadata"].get("namespace", "default"), body["metadata"]["name"]
        if _idles_at_zero(body):
            _say(f"  {name}: scaled to zero (its first request starts a replica, shown below)")
            continue
        service = await kube.get(f"/api/v1/namespaces/{namespace}/services/{name}")
        url = f"http://{(service or {})['spec']['clusterIP']}:{port}/v1/models"
        async with session.get(url) as response:
            without = response.status
        async with session.get(url, headers={"Authorization": f"Bearer {DEMO_API_KEY}"}) as response:
            served = [m["id"] for m in (await response.json()).get("data", [])] if response.status == 200 else []
            with_key = response.status
        _say(f"  {name}: without key {without}, with key {with_key}, serves {served}")


async def _burst(sandbox: Sandbox, kube: Kube, vllm_port: int) -> None:
    """A burst of callers against simulated vLLM replicas: the endpoint scales up (and down only slowly)."""
    namespace, name = "speech", "voxtral-burst"
    sandbox.controllers.behave(
        namespace,
        name,
        Behaviour(PodBehaviour.SIMULATED, simulator_args=("--max-num-seqs", "2", "--request-seconds", "0.5")),
    )
    _say(
        f"\n$ kubectl apply -f {name}.yaml   # pods are simulated vLLM processes; maxNumSeqs 2 (the target: 2 requests "
        "in flight a replica), scaleDownDelaySeconds 5, no gateway"
    )
    await kube.create(endpoint_path(namespace), BURST_ENDPOINT)

    async def status() -> dict[str, Any]:
        current = await kube.get(endpoint_path(namespace, name))
        spec = (current or {}).get("spec") or {}
        # An unset spec.replicas means minReplicas.
        return {**((current or {}).get("status") or {}), "spec.replicas": spec.get("replicas", spec.get("minReplicas"))}

    async def ready() -> bool:
        return bool((await status()).get("readyReplicas", 0) >= 1)

    await eventually(ready, timeout=60)
    await eventually(lambda: _gateways_ready(kube, namespace, name), timeout=60)
    service = await kube.get(f"/api/v1/namespaces/{namespace}/services/{name}")
    cluster_ip = (service or {})["spec"]["clusterIP"]
    _say(f"ready; 12 callers send chat requests through Service {name} ({cluster_ip}) for 12 s")
    stop = asyncio.Event()

    async def caller(session: aiohttp.ClientSession) -> None:
        body = {"model": "mistralai/Voxtral-Mini-3B-2507", "messages": [{"role": "user", "content": "hi"}]}
        while not stop.is_set():
            try:
                async with session.post(f"http://{cluster_ip}:{vllm_port}/v1/chat/completions", json=body) as r:
                    await r.read()
            except aiohttp.ClientError:
                await asyncio.sleep(0.1)

    def line(current: dict[str, Any], elapsed: float) -> str:
        decision = (current.get("lastScaleDecision") or {}).get("reason", "")
        return (
            f"  t={elapsed:5.1f}s  queueDepth={current.get('queueDepth', 0):>3}  "
            f"spec.replicas={current.get('spec.replicas')}  ready={current.get('readyReplicas')}  {decision}"
        )

    started = time.monotonic()
    # A new connection for each request: the Service balances connections, not requests, so callers
    # that kept theirs would never reach the replicas added for them.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
        callers = [asyncio.create_task(caller(session)) for _ in range(12)]
        while time.monotonic() - started < 12:
            _say(line(await status(), time.monotonic() - started))
            await asyncio.sleep(2)
        stop.set()
        await asyncio.gather(*callers, return_exceptions=True)
    _say(
        "load stopped. Scale-down waits: the endpoint goes down to the most replicas it asked for over the last\n"
        f"scaleDownDelaySeconds (5 s here, {DEFAULT_SCALE_DOWN_DELAY_SECONDS[AutoscalingPolicy.REQUESTS]} s by "
        "default); its Events below show each decision."
    )
    stopped = time.monotonic()
    while time.monotonic() - stopped < 8:
        await asyncio.sleep(2)
        _say(line(await status(), time.monotonic() - started))
    if await _kubectl(sandbox, f"get events -n {namespace} --field-selector involvedObject.name={name}"):
        return
    listing = await kube.get(f"/apis/events.k8s.io/v1/namespaces/{namespace}/events")
    scaled = [e for e in (listing or {}).get("items", []) if e.get("reason", "").startswith("ScaledReplicas")]
    for event in scaled:
        _say(f"  {event['reason']}: {event.get('note', '')}")


def run_demo(args: argparse.Namespace) -> int:
    examples = sorted(Path(args.examples).glob("*.yaml"))
    if not examples:
        print(f"no examples in {args.examples}")
        return 2
    return asyncio.run(_demo(examples))


def _wav(seconds: float = 1.0) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16000)
        out.writeframes(b"\0\0" * int(16000 * seconds))
    return buffer.getvalue()


async def _held(session: aiohttp.ClientSession, pods: list[dict[str, Any]]) -> float:
    """voxtral_gateway_held_requests summed over the gateway pods, read where the autoscaler reads it."""
    total = 0.0
    for pod in pods:
        container = pod["spec"]["containers"][0]
        port = next(p["containerPort"] for p in container.get("ports") or [] if p.get("name") == "metrics")
        try:
            async with session.get(f"http://{pod['status']['podIP']}:{port}/metrics") as response:
                text = await response.text()
        except aiohttp.ClientError:
            continue
        total += sum(float(v) for v in re.findall(r"^voxtral_gateway_held_requests(?:\{[^}]*\})? (\S+)$", text, re.M))
    return total


async def _gateway(sandbox: Sandbox, kube: Kube, session: aiohttp.ClientSession, vllm_port: int) -> None:
    """An endpoint behind its gateway, at zero replicas: a request is held while one replica starts."""
    namespace, name = "speech", "voxtral-edge"
    await kube.create(
        f"/api/v1/namespaces/{namespace}/secrets",
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": EDGE_CALLERS, "namespace": namespace},
            "data": {"alice": base64.b64encode(EDGE_KEY.encode()).decode()},
        },
    )
    _say(
        f"\n$ kubectl apply -f {name}.yaml   # gateway: {{enabled: true}}, minReplicas 0, maxReplicas 1, "
        f"caller keys in Secret {EDGE_CALLERS}"
    )
    await kube.create(endpoint_path(namespace), GATEWAY_ENDPOINT)

    async def endpoint() -> dict[str, Any]:
        return dict(await kube.get(endpoint_path(namespace, name)) or {})

    async def pods(app: str) -> list[dict[str, Any]]:
        selector = f"app.kubernetes.io/name={app},app.kubernetes.io/instance={name}"
        listing = await kube.get(f"/api/v1/namespaces/{namespace}/pods?labelSelector={selector}")
        return list((listing or {}).get("items", []))

    async def waiting_at_zero() -> bool:
        phase = ((await endpoint()).get("status") or {}).get("phase")
        gateways = await pods("voxtral-gateway")
        ready = [p for p in gateways if condition(p, "Ready").get("status") == "True"]
        return phase == "ScaledToZero" and len(ready) == 2

    await eventually(waiting_at_zero, timeout=60)
    gateways = await pods("voxtral-gateway")
    if await _kubectl(sandbox, f"get vxe {name} -n {namespace}"):
        await _kubectl(sandbox, f"get pods -n {namespace} -l app.kubernetes.io/instance={name} -o wide")
    else:
        rows = [["NAME", "MODEL", "GPU", "REPLICAS", "PHASE", "READY", "REASON", "URL"]]
        _say(_table([*rows, _endpoint_row(await endpoint())]))
        rows = [["POD", "IP", "READY"]]
        rows += [
            [p["metadata"]["name"], p["status"]["podIP"], condition(p, "Ready").get("status", "")] for p in gateways
        ]
        _say(_table(rows))
    _say(f"vLLM pods: {len(await pods('voxtral-endpoint'))}; the gateways hold requests until one is ready")

    service = await kube.get(f"/api/v1/namespaces/{namespace}/services/{name}")
    base = f"http://{(service or {})['spec']['clusterIP']}:{vllm_port}"
    _say(f"\n$ curl -H 'Authorization: Bearer $KEY' -F file=@call.wav http://{name}/v1/audio/transcriptions")

    async def transcribe() -> tuple[int, Any]:
        form = aiohttp.FormData()
        form.add_field("model", "mistralai/Voxtral-Mini-3B-2507")
        form.add_field("file", _wav(), filename="call.wav", content_type="audio/wav")
        headers = {"Authorization": f"Bearer {EDGE_KEY}"}
        async with session.post(f"{base}/v1/audio/transcriptions", data=form, headers=headers) as response:
            return response.status, await response.json(content_type=None)

    def replicas_of(current: dict[str, Any]) -> int:
        spec = current.get("spec") or {}
        return int(spec.get("replicas", spec.get("minReplicas", 0)))

    started = time.monotonic()
    request = asyncio.create_task(transcribe())
    held = await eventually(lambda: _held(session, gateways), timeout=10)
    current = await endpoint()
    _say(
        f"  t={time.monotonic() - started:4.1f}s  held by the gateway (voxtral_gateway_held_requests {held:g}); "
        f"spec.replicas={replicas_of(current)}"
    )
    last = (replicas_of(current), (current.get("status") or {}).get("phase"))
    while not request.done() and time.monotonic() - started < 60:
        current = await endpoint()
        now = (replicas_of(current), (current.get("status") or {}).get("phase"))
        if now != last:
            _say(f"  t={time.monotonic() - started:4.1f}s  spec.replicas={now[0]}  phase={now[1]}")
            last = now
        await asyncio.wait([request], timeout=0.25)
    code, answer = await request
    waited = time.monotonic() - started
    current = await endpoint()
    decision = ((current.get("status") or {}).get("lastScaleDecision") or {}).get("reason", "")
    text = answer.get("text") if isinstance(answer, dict) else answer
    _say(f"  t={waited:4.1f}s  answered {code} after {waited:.1f}s: {text!r}")
    _say(f"  spec.replicas 0 -> {replicas_of(current)}: {decision[:100]}")

    async with session.post(f"{base}/invocations", headers={"Authorization": f"Bearer {EDGE_KEY}"}) as response:
        invocations = response.status
    async with session.get(f"{base}/v1/models", headers={"Authorization": "Bearer sk-wrong"}) as response:
        wrong = response.status
    _say(f"  through the gateway: POST /invocations with the key -> {invocations}; a wrong key -> {wrong}")
