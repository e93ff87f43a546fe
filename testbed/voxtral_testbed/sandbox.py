"""A local cluster stand-in: the API server emulator on loopback, a kubeconfig for it, and fake
controllers that play the parts of kube-controller-manager and the kubelet for Deployments.

The fake controllers give each Deployment pods and status the way a cluster would, with a
per-endpoint behaviour (`ready after N seconds`, `no GPU free`, `image pull fails`, `crash loop`,
`OOM`) so the operator's status logic meets every case it must name.

They also play:
- the kubelet for gateway pods (container command `voxtral-operator gateway`): the real gateway
  process on the pod's own loopback address, with the sandbox's kubeconfig, ready when its
  /readyz answers 200 (whatever the Behaviour);
- the kubelet for simulated vLLM pods (`PodBehaviour.SIMULATED`): `simulate-vllm` on the pod's
  address, ready when /health answers 200. Both kinds of process are restarted when they exit, and
  their output is kept per pod (`Sandbox.pod_logs()`), so a pod that never got ready can say why;
- the EndpointSlice controller: one slice `<service>-slice` per Service with a selector, headless
  ones included (the gateway reads its replicas from them);
- kube-proxy: each Service's clusterIP forwards to its ready pods that really serve (simulated
  vLLM, gateways). Headless Services get no proxy.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import dataclasses
import enum
import itertools
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

import aiohttp
import kmock
import yaml
from aiohttp import web

from voxtral_operator.api.crd import custom_resource_definition
from voxtral_testbed import loopback
from voxtral_testbed.apiserver import ApiServer
from voxtral_testbed.harness import start_simulator
from voxtral_testbed.secret_volumes import PodSecretVolumes, pod_secret_volumes, secret_payload

DEPLOYMENTS = "apps/v1/deployments"
SERVICES = "v1/services"
PODS = "v1/pods"
SECRETS = "v1/secrets"
ENDPOINT_SLICES = "discovery.k8s.io/v1/endpointslices"
ENDPOINTS = "voxtral.dev/v1alpha1/voxtralendpoints"
GATEWAY_COMMAND = ["voxtral-operator", "gateway"]
GATEWAY_METRICS_PORT = 9091  # the operator config's default, when neither args nor ports say
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
SLICE_MANAGED_BY_LABEL = "endpointslice.kubernetes.io/managed-by"
SLICE_MANAGER = "endpointslice-controller.k8s.io"
# A simulated pod whose env names a missing Secret waits this long (CreateContainerConfigError), then
# starts without it: a real kubelet waits for ever, but tests start replicas without their key on purpose.
SECRET_WAIT_SECONDS = 5.0
# How often a gateway pod's Secret volumes are refreshed (the kubelet: its pod sync, about a minute).
SECRET_REFRESH_SECONDS = 1.0


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


def _pod_status(behaviour: Behaviour, age: float, container_name: str = "vllm") -> dict[str, Any]:
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
        "name": container_name,
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


def _config_error_status(message: str, container_name: str = "vllm") -> dict[str, Any]:
    """The kubelet's answer when a container's env names a Secret (or key) that is not there yet."""
    return {
        "phase": "Pending",
        "conditions": [{"type": "PodScheduled", "status": "True"}, {"type": "Ready", "status": "False"}],
        "containerStatuses": [
            {
                "name": container_name,
                "ready": False,
                "started": False,
                "restartCount": 0,
                "state": {"waiting": {"reason": "CreateContainerConfigError", "message": message}},
            }
        ],
    }


def _is_gateway(container: dict[str, Any]) -> bool:
    return list(container.get("command") or []) == GATEWAY_COMMAND


def _flag(args: list[str], name: str) -> str | None:
    return args[args.index(name) + 1] if name in args[:-1] else None


@dataclasses.dataclass
class _GatewayPod:
    """A gateway pod's process, as the kubelet runs it (restarted when it exits)."""

    ip: str
    metrics_port: int
    command: list[str]
    log: Path | None
    process: subprocess.Popen[bytes]
    started_at: float
    volumes: PodSecretVolumes
    restarts: int = 0
    volumes_synced_at: float = float("-inf")


class _PodProcess(Protocol):
    """What the kubelet's restart reads and sets of a pod's process (_GatewayPod, _SimulatorPod)."""

    process: subprocess.Popen[bytes]
    started_at: float
    restarts: int


@dataclasses.dataclass
class _SimulatorPod:
    """A simulated vLLM pod's process, as the kubelet runs it (restarted when it exits)."""

    ip: str
    args: list[str]
    log: Path | None
    process: subprocess.Popen[bytes]
    started_at: float
    restarts: int = 0


def _pod_ready(status: dict[str, Any]) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])


def _target_port(service_port: dict[str, Any], pods: list[dict[str, Any]]) -> int | None:
    """A Service port's targetPort as a number: a name is looked up among the pods' container ports."""
    target = service_port.get("targetPort", service_port.get("port"))
    if isinstance(target, int):
        return target
    for pod in pods:
        for container in (pod.get("spec") or {}).get("containers") or []:
            for port in container.get("ports") or []:
                if port.get("name") == target and isinstance(port.get("containerPort"), int):
                    return int(port["containerPort"])
    return None


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

    def __init__(
        self,
        server: ApiServer,
        interval: float = 0.1,
        vllm_port: int = 8000,
        *,
        kubeconfig: Path | None = None,
        log_dir: Path | None = None,
        volumes_dir: Path | None = None,
        secret_refresh_seconds: float = SECRET_REFRESH_SECONDS,
    ) -> None:
        self.server = server
        # Where pods' Secret volumes are projected (`<ns>.<pod>/<mount path>`).
        self._own_volumes_dir = volumes_dir is None
        self.volumes_dir = volumes_dir or Path(tempfile.mkdtemp(prefix="voxtral-volumes-"))
        self.secret_refresh_seconds = secret_refresh_seconds
        self.interval = interval
        self.vllm_port = vllm_port
        # What gateway pods log in with (KUBECONFIG), and where their output goes (`<ns>.<pod>.log`).
        self.kubeconfig = kubeconfig
        self.log_dir = log_dir
        self.simulators: dict[tuple[str, str], _SimulatorPod] = {}
        self.gateways: dict[tuple[str, str], _GatewayPod] = {}
        self._next_ip = loopback.pod_addresses()
        self._probe: aiohttp.ClientSession | None = None
        self.proxies: dict[tuple[str, str], _ServiceProxy] = {}
        self.behaviours: dict[tuple[str, str], Behaviour] = {}
        self.default = Behaviour()
        self.secret_wait_seconds = SECRET_WAIT_SECONDS  # math.inf: wait for the Secret as a real kubelet does
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
        # The sandbox is going: its pods are killed, not drained (a test that wants a drain deletes the pod).
        stopping = [s.process for s in self.simulators.values()] + [g.process for g in self.gateways.values()]
        self.simulators.clear()
        self.gateways.clear()
        for process in stopping:
            if process.poll() is None:
                process.kill()
        for process in stopping:
            await asyncio.to_thread(process.wait)
        for proxy in self.proxies.values():
            await proxy.stop()
        if self._probe is not None:
            await self._probe.close()
        if self._own_volumes_dir:
            shutil.rmtree(self.volumes_dir, ignore_errors=True)

    async def _proxy_services(self, ready_by_labels: list[tuple[dict[str, str], str]]) -> None:
        """kube-proxy, simplified: each Service's clusterIP:port forwards to its ready pods, round robin."""
        for service in self.server.objects_of(SERVICES):
            spec = service.get("spec") or {}
            ip, selector = spec.get("clusterIP"), spec.get("selector") or {}
            if not ip or ip == "None" or not selector:  # headless: DNS names pods, no proxy
                continue
            key = (service["metadata"]["namespace"], service["metadata"]["name"])
            backends = [pod_ip for labels, pod_ip in ready_by_labels if selector.items() <= labels.items()]
            if key not in self.proxies:
                self.proxies[key] = await _ServiceProxy.start(ip, self.vllm_port)
            self.proxies[key].backends = backends
        live = {(s["metadata"]["namespace"], s["metadata"]["name"]) for s in self.server.objects_of(SERVICES)}
        for key in set(self.proxies) - live:
            await self.proxies.pop(key).stop()

    def _secret_env(self, namespace: str, container: dict[str, Any]) -> tuple[dict[str, str], str | None]:
        """The container's env values from secretKeyRefs, or the kubelet's CreateContainerConfigError message
        when a Secret (or its key) it needs is not there yet: the container is not started then."""
        values: dict[str, str] = {}
        for env in container.get("env") or []:
            ref = (env.get("valueFrom") or {}).get("secretKeyRef")
            if not ref:
                continue
            secret = self.server.find(SECRETS, namespace, ref["name"])
            encoded = ((secret or {}).get("data") or {}).get(ref["key"])
            if encoded is not None:
                values[env["name"]] = base64.b64decode(encoded).decode()
            elif not ref.get("optional"):
                if secret is None:
                    return values, f'secret "{ref["name"]}" not found'
                return values, f"couldn't find key {ref['key']} in Secret {namespace}/{ref['name']}"
        return values, None

    def _start_simulator(
        self, key: tuple[str, str], behaviour: Behaviour, container: dict[str, Any], env: dict[str, str]
    ) -> _SimulatorPod:
        """Start the pod's process with what its spec says: served model name, API key from the Secret."""
        ip = next(self._next_ip)
        args = list(behaviour.simulator_args)
        vllm_args = container.get("args") or []
        if "--served-model-name" in vllm_args:
            args.append(f"--served-model-name={vllm_args[vllm_args.index('--served-model-name') + 1]}")
        if env.get("VLLM_API_KEY"):  # one argument: a generated key may begin with "-"
            args.append(f"--api-key={env['VLLM_API_KEY']}")
        log = self.log_dir / f"{key[0]}.{key[1]}.log" if self.log_dir is not None else None
        process = start_simulator(ip, self.vllm_port, *args, log=log)
        simulator = _SimulatorPod(ip, args, log, process, self._now())
        self.simulators[key] = simulator
        return simulator

    def _restart_if_exited(self, pod: _PodProcess, spawn: Callable[[], subprocess.Popen[bytes]]) -> int | None:
        """The kubelet's restart of a pod's process that exited, after a short back-off: the exit code
        while it is down, None once it runs again."""
        exit_code = pod.process.poll()
        if exit_code is not None and self._now() - pod.started_at >= 1.0:
            pod.restarts += 1
            pod.process = spawn()
            pod.started_at = self._now()
            return None
        return exit_code

    async def _simulator_pod_status(self, simulator: _SimulatorPod, age: float) -> dict[str, Any]:
        """The kubelet's view of a simulated vLLM pod: ready when /health answers 200; its process
        restarted, after a short back-off, when it exits (the pod keeps its address)."""
        exit_code = self._restart_if_exited(
            simulator, lambda: start_simulator(simulator.ip, self.vllm_port, *simulator.args, log=simulator.log)
        )
        healthy = exit_code is None and await self._healthy(simulator.ip)
        status = _pod_status(
            Behaviour(PodBehaviour.READY if healthy else PodBehaviour.LOADING_FOREVER, pod_ip=simulator.ip), age
        )
        container = status["containerStatuses"][0]
        container["restartCount"] = simulator.restarts
        if exit_code is not None:
            container["started"] = False
            container["state"] = {"terminated": {"reason": "Error", "exitCode": exit_code}}
        return status

    def _secret_volumes(self, key: tuple[str, str], pod: dict[str, Any], container: dict[str, Any]) -> PodSecretVolumes:
        volumes = pod_secret_volumes(pod.get("spec") or {}, container)
        return PodSecretVolumes(self.volumes_dir / f"{key[0]}.{key[1]}", volumes)

    def _sync_volumes(self, key: tuple[str, str], gateway: _GatewayPod) -> str | None:
        """Refresh a pod's Secret volumes from the API's Secrets, on the refresh period."""
        if self._now() - gateway.volumes_synced_at < self.secret_refresh_seconds:
            return None
        gateway.volumes_synced_at = self._now()
        return gateway.volumes.sync(lambda name: secret_payload(self.server.find(SECRETS, key[0], name)))

    def _start_gateway(self, key: tuple[str, str], pod: dict[str, Any], container: dict[str, Any]) -> _GatewayPod:
        """`voxtral-operator gateway` with the pod's args, on the pod's own address, logged in with the
        sandbox's kubeconfig (as a pod with a service account would be in a cluster), its Secret
        volumes projected as the kubelet does."""
        ip = next(self._next_ip)
        volumes = self._secret_volumes(key, pod, container)
        args = volumes.rewrite([str(arg) for arg in container.get("args") or []])
        if "--host" in args[:-1]:
            args[args.index("--host") + 1] = ip
        else:
            args += ["--host", ip]
        metrics = _flag(args, "--metrics-port") or next(
            (p.get("containerPort") for p in container.get("ports") or [] if p.get("name") == "metrics"),
            GATEWAY_METRICS_PORT,
        )
        command = [sys.executable, "-m", "voxtral_operator.cli", "gateway", *args]
        log = self.log_dir / f"{key[0]}.{key[1]}.log" if self.log_dir is not None else None
        volumes.sync(lambda name: secret_payload(self.server.find(SECRETS, key[0], name)))
        gateway = _GatewayPod(ip, int(metrics), command, log, self._spawn_gateway(command, log), self._now(), volumes)
        gateway.volumes_synced_at = self._now()
        self.gateways[key] = gateway
        return gateway

    def _spawn_gateway(self, command: list[str], log: Path | None) -> subprocess.Popen[bytes]:
        env = {**os.environ}
        if self.kubeconfig is not None:
            env["KUBECONFIG"] = str(self.kubeconfig)
        if log is None:
            return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        with log.open("ab") as out:
            return subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)

    @staticmethod
    def _now() -> float:
        return asyncio.get_running_loop().time()

    async def _gateway_pod_status(
        self, key: tuple[str, str], pod: dict[str, Any], container: dict[str, Any]
    ) -> dict[str, Any]:
        """The kubelet's view of a gateway pod: running its process, ready when /readyz answers 200."""
        gateway = self.gateways.get(key) or self._start_gateway(key, pod, container)
        self._sync_volumes(key, gateway)
        exit_code = self._restart_if_exited(gateway, lambda: self._spawn_gateway(gateway.command, gateway.log))
        ready = exit_code is None and await self._probe_ok(f"http://{gateway.ip}:{gateway.metrics_port}/readyz")
        state: dict[str, Any] = (
            {"running": {"startedAt": "2026-01-01T00:00:00Z"}}
            if exit_code is None
            else {"terminated": {"reason": "Error", "exitCode": exit_code}}
        )
        return {
            "phase": "Running",
            "podIP": gateway.ip,
            "conditions": [
                {"type": "PodScheduled", "status": "True"},
                {"type": "Ready", "status": "True" if ready else "False"},
            ],
            "containerStatuses": [
                {
                    "name": container.get("name", "gateway"),
                    "ready": ready,
                    "started": exit_code is None,
                    "restartCount": gateway.restarts,
                    "state": state,
                }
            ],
        }

    def _stop_gateway(self, key: tuple[str, str]) -> None:
        gateway = self.gateways.pop(key, None)
        if gateway is not None and gateway.process.poll() is None:
            gateway.process.terminate()  # SIGTERM: the gateway stops taking requests and drains
        # Its volumes stay until the sandbox goes: the draining process may still read them.

    def _stop_simulator(self, key: tuple[str, str]) -> None:
        simulator = self.simulators.pop(key, None)
        if simulator is not None and simulator.process.poll() is None:
            simulator.process.terminate()  # SIGTERM: the simulator drains, as a pod being deleted

    async def _healthy(self, ip: str) -> bool:
        """The kubelet's readiness probe: GET /health."""
        return await self._probe_ok(f"http://{ip}:{self.vllm_port}/health")

    async def _probe_ok(self, url: str) -> bool:
        if self._probe is None:
            self._probe = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1))
        try:
            async with self._probe.get(url) as response:
                return response.status == 200
        except (TimeoutError, aiohttp.ClientError):
            return False

    async def _sync_endpoint_slices(self) -> None:
        """The EndpointSlice controller: one slice per Service with a selector, written when it changes."""
        pods = [p for p in self.server.objects_of(PODS) if not p["metadata"].get("deletionTimestamp")]
        wanted: set[tuple[str, str]] = set()
        for service in self.server.objects_of(SERVICES):
            meta, spec = service["metadata"], service.get("spec") or {}
            selector = spec.get("selector") or {}
            if not selector:
                continue  # a Service without a selector has its slices written by someone else
            namespace, name = meta["namespace"], f"{meta['name']}-slice"
            wanted.add((namespace, name))
            members = sorted(
                (
                    pod
                    for pod in pods
                    if pod["metadata"]["namespace"] == namespace
                    and selector.items() <= (pod["metadata"].get("labels") or {}).items()
                    and (pod.get("status") or {}).get("podIP")
                ),
                key=lambda pod: str(pod["metadata"]["name"]),
            )
            ports = []
            for port in spec.get("ports") or []:
                number = _target_port(port, members)
                if number is not None:
                    ports.append(
                        {"name": port.get("name", ""), "port": number, "protocol": port.get("protocol", "TCP")}
                    )
            publish_not_ready = bool(spec.get("publishNotReadyAddresses"))
            content = {
                "addressType": "IPv4",
                "endpoints": [
                    {
                        "addresses": [pod["status"]["podIP"]],
                        "conditions": {"ready": publish_not_ready or _pod_ready(pod["status"])},
                        "targetRef": {
                            "kind": "Pod",
                            "namespace": namespace,
                            "name": pod["metadata"]["name"],
                            "uid": pod["metadata"]["uid"],
                        },
                    }
                    for pod in members
                ],
                "ports": ports,
            }
            live = self.server.find(ENDPOINT_SLICES, namespace, name)
            if live is None:
                labels = {SERVICE_NAME_LABEL: meta["name"], SLICE_MANAGED_BY_LABEL: SLICE_MANAGER}
                owner = {"apiVersion": "v1", "kind": "Service", "name": meta["name"], "uid": meta["uid"]}
                await self.server.create_object(
                    ENDPOINT_SLICES,
                    {
                        "apiVersion": "discovery.k8s.io/v1",
                        "kind": "EndpointSlice",
                        "metadata": {
                            "name": name,
                            "namespace": namespace,
                            "labels": labels,
                            "ownerReferences": [{**owner, "controller": True, "blockOwnerDeletion": True}],
                        },
                        **content,
                    },
                )
            elif any(live.get(field) != value for field, value in content.items()):
                await self.server.replace_object(ENDPOINT_SLICES, {**live, **content})
        for piece in self.server.objects_of(ENDPOINT_SLICES):
            key = (piece["metadata"]["namespace"], piece["metadata"]["name"])
            ours = (piece["metadata"].get("labels") or {}).get(SLICE_MANAGED_BY_LABEL) == SLICE_MANAGER
            if ours and key not in wanted:
                await self.server.delete_object(ENDPOINT_SLICES, *key)

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
                            # Bound to a node as the scheduler would, unless no GPU is free for it.
                            "spec": {
                                **copy.deepcopy(template["spec"]),
                                **({} if behaviour.kind == PodBehaviour.NO_GPU else {"nodeName": "sandbox-node"}),
                            },
                        },
                    )
                age = now - self._born.setdefault((namespace, pod_name), now)
                key = (namespace, pod_name)
                container = pod["spec"]["containers"][0]
                serves = True  # a real process answers on the pod's address
                if _is_gateway(container):
                    pod_status = await self._gateway_pod_status(key, pod, container)
                elif behaviour.kind == PodBehaviour.SIMULATED:
                    env, missing = ({}, None) if key in self.simulators else self._secret_env(namespace, container)
                    if missing is not None and age < self.secret_wait_seconds:
                        pod_status = _config_error_status(missing)
                    else:
                        simulator = self.simulators.get(key) or self._start_simulator(key, behaviour, container, env)
                        pod_status = await self._simulator_pod_status(simulator, age)
                else:
                    serves = False
                    pod_status = _pod_status(behaviour, age)
                if pod.get("status") != pod_status:
                    await self.server.write_status(PODS, namespace, pod_name, pod_status)
                pod_ready = _pod_ready(pod_status)
                ready += pod_ready
                if pod_ready and serves:
                    ready_by_labels.append((pod["metadata"].get("labels", {}), pod_status["podIP"]))
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
        for pod in self.server.objects_of(PODS):
            key = (pod["metadata"]["namespace"], pod["metadata"]["name"])
            owned_by_deployment = any(r.get("kind") == "Deployment" for r in pod["metadata"].get("ownerReferences", []))
            if owned_by_deployment and key not in wanted_pods:
                await self.server.delete_object(PODS, *key)
                self._born.pop(key, None)
                self._stop_simulator(key)
                self._stop_gateway(key)
        await self._sync_endpoint_slices()
        await self._proxy_services(ready_by_labels)


class Sandbox:
    """`async with Sandbox() as sandbox:` an API server on loopback, a kubeconfig, fake controllers."""

    def __init__(self, *, port: int | None = None, controllers: bool = True, vllm_port: int = 8000) -> None:
        self.api = ApiServer()
        self._port = port
        self._server: kmock.Server | None = None
        self._with_controllers = controllers
        self._tmp = tempfile.TemporaryDirectory(prefix="voxtral-sandbox-")
        self.kubeconfig = Path(self._tmp.name) / "kubeconfig"
        # Gateway pods log in with the kubeconfig and log to `<ns>.<pod>.log` beside it.
        self.controllers = FakeControllers(
            self.api,
            vllm_port=vllm_port,
            kubeconfig=self.kubeconfig,
            log_dir=Path(self._tmp.name),
            volumes_dir=Path(self._tmp.name) / "volumes",
        )

    def pod_logs(self) -> dict[str, str]:
        """Each simulated or gateway pod's output so far, by `<namespace>.<pod>`."""
        directory = Path(self._tmp.name)
        return {path.stem: path.read_text(errors="replace") for path in sorted(directory.glob("*.log"))}

    @property
    def url(self) -> str:
        assert self._server is not None
        return str(self._server.url).rstrip("/")

    async def __aenter__(self) -> Sandbox:
        await self.api.__aenter__()
        server = kmock.Server(self.api, port=self._port) if self._port else kmock.Server(self.api)
        self._server = await server.__aenter__()
        crd = custom_resource_definition()
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
