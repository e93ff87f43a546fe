"""A local cluster stand-in: the API server emulator on loopback, a kubeconfig for it, and fake
controllers that play the parts of kube-controller-manager and the kubelet for Deployments.

The fake controllers give each Deployment pods and status the way a cluster would, with a
per-endpoint behaviour (`ready after N seconds`, `no GPU free`, `image pull fails`, `crash loop`,
`OOM`) so the operator's status logic meets every case it must name.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import dataclasses
import enum
import itertools
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp
import kmock
import yaml
from aiohttp import web

from voxtral_operator.api.crd import custom_resource_definition
from voxtral_testbed.apiserver import ApiServer
from voxtral_testbed.harness import start_simulator

DEPLOYMENTS = "apps/v1/deployments"
SERVICES = "v1/services"
PODS = "v1/pods"
ENDPOINTS = "voxtral.dev/v1alpha1/voxtralendpoints"


class PodBehaviour(enum.StrEnum):
    READY = "ready"
    # A real process per pod: `simulate-vllm` on its own loopback address, readiness from /health.
    SIMULATED = "simulated"
    LOADING_FOREVER = "loading"
    NO_GPU = "no-gpu"
    IMAGE_PULL = "image-pull"
    CRASH_LOOP = "crash-loop"
    OOM = "oom"


@dataclasses.dataclass
class Behaviour:
    kind: PodBehaviour = PodBehaviour.READY
    load_seconds: float = 0.0
    # Where a pod's HTTP server is, when something (a simulator) really serves it.
    pod_ip: str = "127.0.0.1"
    simulator_args: tuple[str, ...] = ()


def _pod_status(behaviour: Behaviour, age: float) -> dict[str, Any]:
    kind = behaviour.kind
    if kind == PodBehaviour.NO_GPU:
        return {
            "phase": "Pending",
            "conditions": [
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu.",
                }
            ],
        }
    waiting: dict[str, Any] | None = None
    last: dict[str, Any] | None = None
    ready = False
    if kind == PodBehaviour.IMAGE_PULL:
        waiting = {"reason": "ImagePullBackOff", "message": 'Back-off pulling image "vllm:missing"'}
    elif kind == PodBehaviour.CRASH_LOOP:
        waiting = {"reason": "CrashLoopBackOff", "message": "back-off 40s restarting failed container"}
        last = {"reason": "Error", "exitCode": 1}
    elif kind == PodBehaviour.OOM:
        waiting = {"reason": "CrashLoopBackOff", "message": "back-off restarting failed container"}
        last = {"reason": "OOMKilled", "exitCode": 137}
    else:
        ready = kind == PodBehaviour.READY and age >= behaviour.load_seconds
    phase = "Pending" if kind == PodBehaviour.IMAGE_PULL else "Running"
    container: dict[str, Any] = {
        "name": "vllm",
        "ready": ready,
        "started": waiting is None,
        "restartCount": 3 if last else 0,
        "state": {"waiting": waiting} if waiting else {"running": {"startedAt": "2026-01-01T00:00:00Z"}},
    }
    if last:
        container["lastState"] = {"terminated": last}
    return {
        "phase": phase,
        "podIP": behaviour.pod_ip,
        "conditions": [
            {"type": "PodScheduled", "status": "True"},
            {"type": "Ready", "status": "True" if ready else "False"},
        ],
        "containerStatuses": [container],
    }


class _ServiceProxy:
    """An HTTP forwarder on a Service's clusterIP (only ready simulated pods are backends)."""

    def __init__(self, runner: web.AppRunner) -> None:
        self.runner = runner
        self.backends: list[str] = []
        self._turn = itertools.count()
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    async def start(cls, ip: str, port: int) -> _ServiceProxy:
        app = web.Application(client_max_size=1 << 30)
        runner = web.AppRunner(app, access_log=None)
        proxy = cls(runner)
        app.router.add_route("*", "/{path:.*}", proxy._forward)
        await runner.setup()
        await web.TCPSite(runner, ip, port).start()
        proxy.port = port
        return proxy

    port: int = 0

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        if not self.backends:
            raise web.HTTPServiceUnavailable(text="no ready endpoints")  # connection refused, in kube-proxy
        backend = self.backends[next(self._turn) % len(self.backends)]
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120))
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
        async with self._session.request(
            request.method, f"http://{backend}:{self.port}{request.rel_url}", headers=headers, data=await request.read()
        ) as response:
            body = await response.read()
            return web.Response(
                status=response.status,
                body=body,
                headers={"Content-Type": response.headers.get("Content-Type", "application/json")},
            )

    async def stop(self) -> None:
        if self._session is not None:
            await self._session.close()
        await self.runner.cleanup()


class FakeControllers:
    """Deployment controller + kubelet, simplified: pods `<deployment>-<n>`, status from behaviour."""

    def __init__(self, server: ApiServer, interval: float = 0.1, vllm_port: int = 8000) -> None:
        self.server = server
        self.interval = interval
        self.vllm_port = vllm_port
        self.simulators: dict[tuple[str, str], tuple[str, subprocess.Popen[bytes]]] = {}
        self._next_ip = itertools.count(2)
        self._probe: aiohttp.ClientSession | None = None
        self.proxies: dict[tuple[str, str], _ServiceProxy] = {}
        self.behaviours: dict[tuple[str, str], Behaviour] = {}
        self.default = Behaviour()
        self._born: dict[tuple[str, str], float] = {}
        self._task: asyncio.Task[None] | None = None

    def behave(self, namespace: str, deployment: str, behaviour: Behaviour) -> None:
        self.behaviours[(namespace, deployment)] = behaviour

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for key in list(self.simulators):
            self._stop_simulator(key)
        for proxy in self.proxies.values():
            await proxy.stop()
        if self._probe is not None:
            await self._probe.close()

    async def _proxy_services(self, ready_by_labels: list[tuple[dict[str, str], str]]) -> None:
        """kube-proxy, simplified: each Service's clusterIP:port forwards to its ready pods, round robin."""
        for service in self.server.objects_of(SERVICES):
            spec = service.get("spec") or {}
            ip, selector = spec.get("clusterIP"), spec.get("selector") or {}
            if not ip or not selector:
                continue
            key = (service["metadata"]["namespace"], service["metadata"]["name"])
            backends = [pod_ip for labels, pod_ip in ready_by_labels if selector.items() <= labels.items()]
            if key not in self.proxies:
                self.proxies[key] = await _ServiceProxy.start(ip, self.vllm_port)
            self.proxies[key].backends = backends
        live = {(s["metadata"]["namespace"], s["metadata"]["name"]) for s in self.server.objects_of(SERVICES)}
        for key in set(self.proxies) - live:
            await self.proxies.pop(key).stop()

    def _start_simulator(self, key: tuple[str, str], behaviour: Behaviour, container: dict[str, Any]) -> str:
        """Start the pod's process with what its spec says: served model name, API key from the Secret."""
        ip = f"127.0.0.{next(self._next_ip)}"
        args = list(behaviour.simulator_args)
        vllm_args = container.get("args") or []
        if "--served-model-name" in vllm_args:
            args += ["--served-model-name", vllm_args[vllm_args.index("--served-model-name") + 1]]
        for env in container.get("env") or []:
            ref = (env.get("valueFrom") or {}).get("secretKeyRef")
            if env["name"] == "VLLM_API_KEY" and ref:
                secret = self.server.find("v1/secrets", key[0], ref["name"]) or {}
                value = (secret.get("stringData") or {}).get(ref["key"])
                if value is None and (secret.get("data") or {}).get(ref["key"]):
                    value = base64.b64decode(secret["data"][ref["key"]]).decode()
                if value:
                    args += ["--api-key", value]
        process = start_simulator(ip, self.vllm_port, *args)
        self.simulators[key] = (ip, process)
        return ip

    def _stop_simulator(self, key: tuple[str, str]) -> None:
        entry = self.simulators.pop(key, None)
        if entry is not None and entry[1].poll() is None:
            entry[1].terminate()  # SIGTERM: the simulator drains, as a pod being deleted

    async def _healthy(self, ip: str) -> bool:
        """The kubelet's readiness probe: GET /health."""
        if self._probe is None:
            self._probe = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1))
        try:
            async with self._probe.get(f"http://{ip}:{self.vllm_port}/health") as response:
                return response.status == 200
        except (TimeoutError, aiohttp.ClientError):
            return False

    async def _loop(self) -> None:
        while True:
            await self.step()
            await asyncio.sleep(self.interval)

    async def step(self) -> None:
        now = asyncio.get_running_loop().time()
        deployments = self.server.objects_of(DEPLOYMENTS)
        wanted_pods: set[tuple[str, str]] = set()
        ready_by_labels: list[tuple[dict[str, str], str]] = []
        for deployment in deployments:
            meta = deployment["metadata"]
            namespace, name = meta["namespace"], meta["name"]
            behaviour = self.behaviours.get((namespace, name), self.default)
            replicas = int(deployment["spec"].get("replicas", 1))
            template = deployment["spec"]["template"]
            ready = 0
            for index in range(replicas):
                pod_name = f"{name}-{index}"
                wanted_pods.add((namespace, pod_name))
                pod = self.server.find(PODS, namespace, pod_name)
                if pod is None:
                    self._born[(namespace, pod_name)] = now
                    pod = await self.server.create_object(
                        PODS,
                        {
                            "apiVersion": "v1",
                            "kind": "Pod",
                            "metadata": {
                                "name": pod_name,
                                "namespace": namespace,
                                "labels": copy.deepcopy(template["metadata"].get("labels", {})),
                                "ownerReferences": [
                                    {
                                        "apiVersion": "apps/v1",
                                        "kind": "Deployment",
                                        "name": name,
                                        "uid": meta["uid"],
                                        "controller": True,
                                    }
                                ],
                            },
                            "spec": copy.deepcopy(template["spec"]),
                        },
                    )
                age = now - self._born.setdefault((namespace, pod_name), now)
                if behaviour.kind == PodBehaviour.SIMULATED:
                    key = (namespace, pod_name)
                    container = template["spec"]["containers"][0]
                    ip = (
                        self.simulators[key][0]
                        if key in self.simulators
                        else self._start_simulator(key, behaviour, container)
                    )
                    healthy = await self._healthy(ip)
                    pod_status = _pod_status(
                        Behaviour(PodBehaviour.READY if healthy else PodBehaviour.LOADING_FOREVER, pod_ip=ip), age
                    )
                else:
                    pod_status = _pod_status(behaviour, age)
                if pod.get("status") != pod_status:
                    await self.server.write_status(PODS, namespace, pod_name, pod_status)
                pod_ready = pod_status["conditions"][-1].get("status") == "True"
                ready += pod_ready
                if pod_ready and behaviour.kind == PodBehaviour.SIMULATED:
                    ready_by_labels.append((template["metadata"].get("labels", {}), pod_status["podIP"]))
            status = {
                "observedGeneration": meta.get("generation"),
                "replicas": replicas,
                "updatedReplicas": replicas,
                "readyReplicas": ready,
                "availableReplicas": ready,
                "conditions": [{"type": "Available", "status": "True" if ready >= replicas else "False"}],
            }
            if deployment.get("status") != status:
                await self.server.write_status(DEPLOYMENTS, namespace, name, status)
        await self._proxy_services(ready_by_labels)
        for pod in self.server.objects_of(PODS):
            key = (pod["metadata"]["namespace"], pod["metadata"]["name"])
            owned_by_deployment = any(r.get("kind") == "Deployment" for r in pod["metadata"].get("ownerReferences", []))
            if owned_by_deployment and key not in wanted_pods:
                await self.server.delete_object(PODS, *key)
                self._born.pop(key, None)
                self._stop_simulator(key)


class Sandbox:
    """`async with Sandbox() as sandbox:` an API server on loopback, a kubeconfig, fake controllers."""

    def __init__(self, *, port: int | None = None, controllers: bool = True, vllm_port: int = 8000) -> None:
        self.api = ApiServer()
        self._port = port
        self._server: kmock.Server | None = None
        self._with_controllers = controllers
        self.controllers = FakeControllers(self.api, vllm_port=vllm_port)
        self._tmp = tempfile.TemporaryDirectory(prefix="voxtral-sandbox-")
        self.kubeconfig = Path(self._tmp.name) / "kubeconfig"

    @property
    def url(self) -> str:
        assert self._server is not None
        return str(self._server.url).rstrip("/")

    async def __aenter__(self) -> Sandbox:
        await self.api.__aenter__()
        server = kmock.Server(self.api, port=self._port) if self._port else kmock.Server(self.api)
        self._server = await server.__aenter__()
        crd = custom_resource_definition()
        self.api.declare_crd(crd)
        await self.api.create_object("apiextensions.k8s.io/v1/customresourcedefinitions", crd)
        self.kubeconfig.write_text(yaml.safe_dump(kubeconfig_for(self.url)))
        if self._with_controllers:
            self.controllers.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.controllers.stop()
        if self._server is not None:
            await self._server.__aexit__(exc_type, exc, tb)
        # kmock re-raises errors its handlers met; the sandbox reports them through responses instead.
        with contextlib.suppress(Exception):
            await self.api.__aexit__(None, None, None)
        self._tmp.cleanup()


def kubeconfig_for(url: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "sandbox", "cluster": {"server": url}}],
        "users": [{"name": "sandbox", "user": {"token": "sandbox-token"}}],
        "contexts": [{"name": "sandbox", "context": {"cluster": "sandbox", "user": "sandbox"}}],
        "current-context": "sandbox",
    }
