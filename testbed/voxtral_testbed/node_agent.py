"""The node agent: a kubelet stand-in for the local control plane's fake GPU nodes.

It registers the nodes of a YAML file (GPU capacity, pool labels, taints) and, for every pod the real
scheduler binds to one of them, does what a kubelet would:
- assigns the pod an IP from its node's podCIDR (every address of the range is local to the network
  namespace the cluster runs in) and reports Pending -> Running -> Ready through the pod's status;
- "pulls" the image: each known image has its entrypoint (`vllm serve`: the simulator behind the
  `vllm` shim of the simulator image; `voxtral-operator`: this checkout's operator, gateway included);
  any other image ends in ErrImagePull / ImagePullBackOff;
- runs the container's own command line and environment (API keys from Secrets, as the kubelet
  resolves them), with the server's `--host` set to the pod's IP: all pods share one network
  namespace here, where each would have its own; ConfigMap volumes are written under the pod's
  folder and their mount paths in the command line point there (processes share the host's files);
- mounts the container's Secret volumes as the kubelet projects them (`..data` swapped atomically;
  an optional volume of a missing Secret empty; a missing non-optional one keeps the container from
  starting) under the pod's state directory, rewriting the arguments that name those paths, and
  refreshes them every `--secret-sync-seconds` (the kubelet: at its pod sync, about a minute). It
  reads the Secrets with its own credentials, as a kubelet does;
- runs the startup, readiness and liveness probes the pod declares; restarts a container that exits
  or fails liveness, with CrashLoopBackOff's doubling back-off; reports OOMKilled when told to;
- on deletion runs the preStop sleep, sends SIGTERM, waits up to the grace period, then removes the
  pod object (as the kubelet does once the containers are gone).
It also binds each pending PersistentVolumeClaim to a volume it creates (a provisioner stand-in), runs
the kube-proxy stand-in, serves the kubelet's containerLogs endpoint (`kubectl logs`,
kubelet_server.py) and keeps Service names resolvable (cluster_dns.py).

Faults a test asks for: the ConfigMap `voxtral-testbed-faults` in `kube-system`, key
`<namespace>.<app.kubernetes.io/instance>` (an endpoint's pods), value JSON:
`{"fault": "oom" | "crash"}`, `{"loadSeconds": N}`, `{"simulatorArgs": [...]}`. Read at each start.

Nodes lost on request: the ConfigMap `voxtral-testbed-nodes` in `kube-system`, key `down`, names the
nodes (comma-separated) that are down. A node going down is a machine lost: its containers die at
once (no status, no graceful stop), it turns NotReady (Ready=Unknown) with the node lifecycle
controller's unreachable taints, and its pods are force-deleted as the taint eviction controller and
the pod garbage collector do after their timeouts (at once here). Named no longer, it comes back
Ready without the taints.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import datetime
import functools
import ipaddress
import json
import logging
import os
import re
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from voxtral_testbed import kubelet_server
from voxtral_testbed.cluster_dns import ServiceHosts
from voxtral_testbed.kube import ApiError, Kube
from voxtral_testbed.kube_proxy import ServiceProxy
from voxtral_testbed.secret_volumes import PodSecretVolumes, pod_secret_volumes, secret_payload

logger = logging.getLogger("node-agent")
JSON = dict[str, Any]
FAULTS = "/api/v1/namespaces/kube-system/configmaps/voxtral-testbed-faults"
NODE_SWITCH = "voxtral-testbed-nodes"
UNREACHABLE_TAINTS = [
    {"key": "node.kubernetes.io/unreachable", "effect": effect} for effect in ("NoSchedule", "NoExecute")
]
INSTANCE_LABEL = "app.kubernetes.io/instance"
MAX_BACKOFF_SECONDS = 300.0


def now() -> str:
    return datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class NodeSpec:
    name: str
    pod_cidr: str
    labels: dict[str, str]
    taints: list[JSON]
    capacity: dict[str, str]
    _next_host: int = 2
    _free: list[str] = field(default_factory=list)

    def allocate_ip(self) -> str:
        if self._free:
            return self._free.pop(0)
        network = ipaddress.ip_network(self.pod_cidr)
        address = str(network[self._next_host])
        self._next_host += 1
        return address

    def release_ip(self, address: str) -> None:
        self._free.append(address)


def _probe_port(container: JSON, port: Any) -> int:
    if isinstance(port, int) or str(port).isdigit():
        return int(port)
    for declared in container.get("ports") or []:
        if declared.get("name") == port:
            return int(declared["containerPort"])
    raise ValueError(f"probe port {port!r} is not a port of the container")


def _with_host(argv: list[str], ip: str) -> list[str]:
    """vLLM's (and the gateway's) --host as the pod's own address: pods share one network namespace
    here. The operator (`voxtral-operator run`) has no --host: it listens where its --liveness URL
    says (the chart: 0.0.0.0, every address here, the pod's included)."""
    if argv[:2] == ["voxtral-operator", "run"] or argv[:1] not in (["vllm"], ["voxtral-operator"]):
        return argv  # servers only: a warmer's `hf download`, a pause container take no --host
    result = list(argv)
    for index, arg in enumerate(result):
        if arg == "--host" and index + 1 < len(result):
            result[index + 1] = ip
            return result
        if arg.startswith("--host="):
            result[index] = f"--host={ip}"
            return result
    return [*result, "--host", ip]


def _at_mounted_paths(argv: list[str], mounts: dict[str, str]) -> list[str]:
    """The command line with each volume's mount path replaced by where its files are here."""
    result = []
    for arg in argv:
        for mount_path, local in sorted(mounts.items(), key=lambda m: -len(m[0])):
            arg = re.sub(rf"(?<![\w./-]){re.escape(mount_path.rstrip('/'))}(?=/|$)", local, arg)
        result.append(arg)
    return result


@dataclass
class ContainerState:
    state: JSON = field(default_factory=lambda: {"waiting": {"reason": "ContainerCreating"}})
    last_state: JSON = field(default_factory=dict)
    restarts: int = 0
    started: bool = False
    ready: bool = False
    phase: str = ""  # Succeeded or Failed once a pod that is not restarted has run to its end


class PodRunner:
    """One pod's life on a node: its container process, probes and status."""

    def __init__(self, agent: NodeAgent, pod: JSON, node: NodeSpec) -> None:
        self.agent = agent
        self.pod = pod
        self.node = node
        meta = pod["metadata"]
        self.namespace, self.name, self.uid = meta["namespace"], meta["name"], meta["uid"]
        self.container: JSON = pod["spec"]["containers"][0]
        self.ip = node.allocate_ip()
        self.state = ContainerState()
        self.process: subprocess.Popen[bytes] | None = None
        self.mounts: dict[str, str] = {}  # a volume's mount path -> where its files are on this machine
        self.terminating = asyncio.Event()
        self.started_at = now()
        self._published: JSON | None = None
        home = agent.state_dir / "pods" / f"{self.namespace}_{self.name}"
        self._volumes_lock = asyncio.Lock()
        self.volumes = PodSecretVolumes(home / "volumes", pod_secret_volumes(pod["spec"], self.container))
        self.task = asyncio.get_running_loop().create_task(self._life(), name=f"pod {self.namespace}/{self.name}")

    # --- status ----------------------------------------------------------------------------

    def _status(self) -> JSON:
        running = "running" in self.state.state
        ready = running and self.state.ready
        container_status: JSON = {
            "name": self.container["name"],
            "image": self.container["image"],
            "imageID": "",
            "ready": ready,
            "started": running and self.state.started,
            "restartCount": self.state.restarts,
            "state": self.state.state,
        }
        if self.state.last_state:
            container_status["lastState"] = self.state.last_state
        if running:
            container_status["containerID"] = f"testbed://{self.uid}-{self.state.restarts}"
        flag = "True" if ready else "False"
        conditions = [
            {"type": "PodReadyToStartContainers", "status": "True", "lastTransitionTime": self.started_at},
            {"type": "Initialized", "status": "True", "lastTransitionTime": self.started_at},
            {"type": "Ready", "status": flag, "lastTransitionTime": self.started_at},
            {"type": "ContainersReady", "status": flag, "lastTransitionTime": self.started_at},
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": self.started_at},
        ]
        if self.state.phase:
            for condition in conditions:
                if condition["type"] in ("Ready", "ContainersReady"):
                    condition["reason"] = "PodCompleted"
        return {
            "phase": self.state.phase or ("Running" if running or self.state.restarts else "Pending"),
            "hostIP": self.agent.node_ip,
            "hostIPs": [{"ip": self.agent.node_ip}],
            "podIP": self.ip,
            "podIPs": [{"ip": self.ip}],
            "startTime": self.started_at,
            "qosClass": "Burstable",
            "conditions": conditions,
            "containerStatuses": [container_status],
        }

    async def publish(self) -> None:
        status = self._status()
        # Transition times are kept unless the condition's status flips, as the kubelet does.
        if self._published is not None:
            previous = {c["type"]: c for c in self._published["conditions"]}
            for condition in status["conditions"]:
                old = previous.get(condition["type"])
                if old is not None and old["status"] != condition["status"]:
                    condition["lastTransitionTime"] = now()
                elif old is not None:
                    condition["lastTransitionTime"] = old["lastTransitionTime"]
        if status == self._published:
            return
        path = f"/api/v1/namespaces/{self.namespace}/pods/{self.name}/status"
        try:
            await self.agent.kube.request(
                "PATCH", path, {"status": status}, content_type="application/merge-patch+json"
            )
            self._published = status
        except ApiError as exc:
            if exc.status != 404:
                logger.warning("status of %s/%s: %s", self.namespace, self.name, exc)

    # --- the container ---------------------------------------------------------------------

    async def _environment(self) -> dict[str, str] | str:
        """The container's environment as the kubelet resolves it, or the reason it cannot start."""
        env: dict[str, str] = {}
        fields = {
            "metadata.name": self.name,
            "metadata.namespace": self.namespace,
            "status.podIP": self.ip,
            "spec.nodeName": self.node.name,
        }
        for item in self.container.get("env") or []:
            if "value" in item:
                env[item["name"]] = str(item["value"])
                continue
            source = item.get("valueFrom") or {}
            if "fieldRef" in source:
                env[item["name"]] = fields.get(source["fieldRef"]["fieldPath"], "")
            for ref_kind, plural in (("secretKeyRef", "secrets"), ("configMapKeyRef", "configmaps")):
                ref = source.get(ref_kind)
                if not ref:
                    continue
                obj = await self.agent.kube.get(f"/api/v1/namespaces/{self.namespace}/{plural}/{ref['name']}")
                data = dict((obj or {}).get("data") or {})
                if ref_kind == "secretKeyRef" and ref["key"] in data:
                    data[ref["key"]] = base64.b64decode(data[ref["key"]]).decode()
                if ref["key"] not in data:
                    if ref.get("optional"):
                        continue
                    kind = "secret" if ref_kind == "secretKeyRef" else "configmap"
                    return f'{kind} "{ref["name"]}" not found' if obj is None else f"couldn't find key {ref['key']}"
                env[item["name"]] = data[ref["key"]]
        kubeconfig = await self._service_account_kubeconfig()
        if kubeconfig is not None:
            env["KUBECONFIG"] = kubeconfig
        return env

    async def _sync_volumes(self) -> str | None:
        """Project the Secret volumes from the Secrets as they are now; the kubelet's message when a
        non-optional one is missing."""
        async with self._volumes_lock:  # the refresher and a container start never write at once
            payloads = {}
            for name in {volume.secret_name for volume in self.volumes.volumes}:
                path = f"/api/v1/namespaces/{self.namespace}/secrets/{name}"
                payloads[name] = secret_payload(await self.agent.kube.get(path))
            return await asyncio.to_thread(self.volumes.sync, payloads.__getitem__)

    async def _refresh_volumes(self) -> None:
        while not await self._wait_or_terminate(self.agent.secret_sync_seconds):
            try:
                await self._sync_volumes()
            except (ApiError, aiohttp.ClientError, OSError) as exc:
                logger.warning("%s/%s: refreshing Secret volumes: %s", self.namespace, self.name, exc)

    async def _service_account_kubeconfig(self) -> str | None:
        """The pod's service-account credentials, as the kubelet mounts them: a bound token from
        TokenRequest. Processes here share the host's filesystem, so they get it as a kubeconfig
        (KUBECONFIG) rather than at the in-cluster path."""
        spec = self.pod["spec"]
        account = spec.get("serviceAccountName") or "default"
        if spec.get("automountServiceAccountToken") is False or account == "default":
            return None
        request = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "expirationSeconds": 86400,
                "boundObjectRef": {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "name": self.name,
                    "uid": self.pod["metadata"]["uid"],
                },
            },
        }
        path = f"/api/v1/namespaces/{self.namespace}/serviceaccounts/{account}/token"
        token = (await self.agent.kube.request("POST", path, request))["status"]["token"]
        home = self.agent.state_dir / "pods" / f"{self.namespace}_{self.name}"
        home.mkdir(parents=True, exist_ok=True)
        cluster: JSON = {"server": self.agent.kube.server}
        if self.agent.kube.ca_file:
            cluster["certificate-authority"] = self.agent.kube.ca_file
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "local", "cluster": cluster}],
            "users": [{"name": account, "user": {"token": token}}],
            "contexts": [
                {"name": "pod", "context": {"cluster": "local", "user": account, "namespace": self.namespace}}
            ],
            "current-context": "pod",
        }
        target = home / "kubeconfig"
        target.write_text(json.dumps(config))
        return str(target)

    async def _mount_config_maps(self) -> str:
        """Writes each ConfigMap volume's keys under the pod's folder, as the kubelet projects them, and
        notes where; returns why a volume cannot be mounted yet ("" when all are). Read at each start."""
        volumes = {v["name"]: v for v in self.pod["spec"].get("volumes") or []}
        home = self.agent.state_dir / "pods" / f"{self.namespace}_{self.name}" / "volumes"
        for mount in self.container.get("volumeMounts") or []:
            source = volumes.get(mount["name"], {}).get("configMap")
            if source is None:
                continue
            config_map = await self.agent.kube.get(f"/api/v1/namespaces/{self.namespace}/configmaps/{source['name']}")
            if config_map is None and not source.get("optional"):
                return f'MountVolume.SetUp failed for volume "{mount["name"]}": configmap "{source["name"]}" not found'
            data = dict((config_map or {}).get("data") or {})
            items = source.get("items") or [{"key": key, "path": key} for key in data]
            target = home / mount["name"]
            target.mkdir(parents=True, exist_ok=True)
            for item in items:
                if item["key"] in data:
                    (target / item["path"]).parent.mkdir(parents=True, exist_ok=True)
                    (target / item["path"]).write_text(data[item["key"]])
            self.mounts[mount["mountPath"]] = str(target)
        return ""

    async def _fault(self) -> JSON:
        config = await self.agent.kube.get(FAULTS)
        key = f"{self.namespace}.{(self.pod['metadata'].get('labels') or {}).get(INSTANCE_LABEL, '')}"
        raw = ((config or {}).get("data") or {}).get(key)
        return dict(json.loads(raw)) if raw else {}

    def _start_process(self, env: dict[str, str], fault: JSON) -> subprocess.Popen[bytes]:
        entrypoint = self.agent.images[self.container["image"]]
        argv = list(self.container.get("command") or entrypoint) + list(self.container.get("args") or [])
        argv = _with_host(_at_mounted_paths(self.volumes.rewrite(argv), self.mounts), self.ip)
        warmer_env = {}
        if argv[:1] == ["hf"]:
            # The cache warmer's `hf download` (the shim): how long it takes and how it ends.
            warmer_env = {
                "TESTBED_DOWNLOAD_SECONDS": str(fault.get("downloadSeconds", 3)),
                "TESTBED_DOWNLOAD_EXIT": str(fault.get("downloadExit", 0)),
            }
        if argv[:1] != ["vllm"]:
            fault = {}  # faults are the simulator's options: a gateway pod of the same endpoint runs as is
        if fault.get("loadSeconds"):
            argv += ["--load-seconds", str(fault["loadSeconds"])]
        argv += [str(a) for a in fault.get("simulatorArgs") or []]
        if fault.get("fault") == "crash":
            argv += ["--die-after", "1"]
        home = self.agent.state_dir / "pods" / f"{self.namespace}_{self.name}"
        home.mkdir(parents=True, exist_ok=True)
        full_env = {
            "PATH": f"{self.agent.shim_dir}:{Path(sys.executable).parent}:/usr/bin:/bin",
            # The images' code is this checkout's (the node agent's own PYTHONPATH, when it has one).
            **({"PYTHONPATH": os.environ["PYTHONPATH"]} if os.environ.get("PYTHONPATH") else {}),
            **env,
            **warmer_env,
            "HOME": str(home),
            "PYTHONUNBUFFERED": "1",
        }
        log = (home / "container.log").open("ab")
        logger.info("%s/%s: starting %s on %s", self.namespace, self.name, " ".join(argv[:3]), self.ip)
        return subprocess.Popen(argv, env=full_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    async def _probe(self, probe: JSON | None) -> bool:
        if not probe:
            return True
        http = probe.get("httpGet")
        if not http:
            return True
        port = _probe_port(self.container, http["port"])
        timeout = aiohttp.ClientTimeout(total=float(probe.get("timeoutSeconds", 1)))
        try:
            async with self.agent.http.get(f"http://{self.ip}:{port}{http.get('path', '/')}", timeout=timeout) as r:
                return 200 <= r.status < 400
        except (aiohttp.ClientError, TimeoutError, OSError):
            return False

    async def _run_container(self, env: dict[str, str], fault: JSON) -> tuple[int, str]:
        """One run of the container: (exit code, reason) when it ends, or (-1, "") when the pod is deleted."""
        self.process = self._start_process(env, fault)
        self.state.state = {"running": {"startedAt": now()}}
        self.state.started = self.state.ready = False
        await self.publish()
        startup = self.container.get("startupProbe")
        readiness = self.container.get("readinessProbe")
        liveness = self.container.get("livenessProbe")
        failures = {"startup": 0, "liveness": 0, "readiness": 0}
        oom_at = asyncio.get_running_loop().time() + 2 if fault.get("fault") == "oom" else None
        scale = self.agent.probe_period_scale
        while not self.terminating.is_set():
            code = self.process.poll()
            if code is not None:
                return code, "Completed" if code == 0 else "Error"
            if oom_at is not None and asyncio.get_running_loop().time() >= oom_at:
                self._kill(signal.SIGKILL)
                return 137, "OOMKilled"
            if not self.state.started:
                probe = startup
                if await self._probe(probe):
                    self.state.started = True
                    failures["startup"] = 0
                else:
                    failures["startup"] += 1
                    if failures["startup"] >= int((probe or {}).get("failureThreshold", 3)):
                        self._kill(signal.SIGKILL)
                        return 137, "Error"
                period = float((probe or {}).get("periodSeconds", 10))
            else:
                alive = await self._probe(liveness)
                failures["liveness"] = 0 if alive else failures["liveness"] + 1
                if failures["liveness"] >= int((liveness or {}).get("failureThreshold", 3)):
                    self._kill(signal.SIGKILL)
                    return 137, "Error"
                ok = await self._probe(readiness)
                failures["readiness"] = 0 if ok else failures["readiness"] + 1
                if ok:
                    self.state.ready = True
                elif failures["readiness"] >= int((readiness or {}).get("failureThreshold", 3)):
                    self.state.ready = False
                period = float((readiness or {}).get("periodSeconds", 10))
            await self.publish()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.terminating.wait(), timeout=period * scale)
        return -1, ""

    def _kill(self, sig: signal.Signals) -> None:
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, sig)

    async def _wait_process(self, grace: float) -> None:
        deadline = asyncio.get_running_loop().time() + grace
        while self.process is not None and self.process.poll() is None:
            if asyncio.get_running_loop().time() >= deadline:
                self._kill(signal.SIGKILL)
            await asyncio.sleep(0.1)

    async def _wait_or_terminate(self, seconds: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.terminating.wait(), timeout=seconds)
        return self.terminating.is_set()

    async def _life(self) -> None:
        refreshing = asyncio.get_running_loop().create_task(self._refresh_volumes())
        try:
            await self._live()
        except Exception:
            logger.exception("pod %s/%s", self.namespace, self.name)
        finally:
            refreshing.cancel()
            self._kill(signal.SIGKILL)
            self.node.release_ip(self.ip)

    async def _run_init_containers(self, env: dict[str, str]) -> bool:
        """Each init container's command to its end, in order, as the kubelet runs them before the
        containers; False when one fails (the pod's containers then do not start) or the pod is deleted."""
        for init in self.pod["spec"].get("initContainers") or []:
            argv = list(init.get("command") or self.agent.images[init["image"]]) + list(init.get("args") or [])
            path = f"{self.agent.shim_dir}:{Path(sys.executable).parent}:/usr/bin:/bin"
            process = await asyncio.create_subprocess_exec(*argv, env={"PATH": path, **env}, start_new_session=True)
            while process.returncode is None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(process.wait(), timeout=0.2)
                if self.terminating.is_set():
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(process.pid, signal.SIGKILL)
                    return False
            if process.returncode != 0:
                message = f"init container {init['name']} exited with {process.returncode}"
                self.state.state = {"waiting": {"reason": "Init:Error", "message": message}}
                await self.publish()
                return False
        return True

    async def _live(self) -> None:
        await self.publish()
        images = [c["image"] for c in (*(self.pod["spec"].get("initContainers") or []), self.container)]
        unknown = next((image for image in images if image not in self.agent.images), None)
        if unknown is not None:
            for reason in ("ErrImagePull", "ImagePullBackOff"):
                message = f'Back-off pulling image "{unknown}": not found'
                self.state.state = {"waiting": {"reason": reason, "message": message}}
                await self.publish()
                if await self._wait_or_terminate(2):
                    break
            await self.terminating.wait()
            await self._finish()
            return
        while not self.terminating.is_set():
            missing = await self._mount_config_maps() or await self._sync_volumes()
            if missing:
                self.state.state = {"waiting": {"reason": "ContainerCreating", "message": missing}}
                await self.publish()
                await self._wait_or_terminate(2)
                continue
            env = await self._environment()
            if isinstance(env, str):
                self.state.state = {"waiting": {"reason": "CreateContainerConfigError", "message": env}}
                await self.publish()
                await self._wait_or_terminate(2)
                continue
            if not await self._run_init_containers(env):
                await self._wait_or_terminate(10 * self.agent.probe_period_scale)
                continue
            code, reason = await self._run_container(env, await self._fault())
            if code < 0:
                break
            finished = {"exitCode": code, "reason": reason, "finishedAt": now()}
            policy = self.pod["spec"].get("restartPolicy") or "Always"
            if policy == "Never" or (policy == "OnFailure" and code == 0):
                # A Job's pod: it ends here, and stays (Succeeded or Failed) until it is deleted.
                self.state.state = {"terminated": {**finished, "startedAt": self.state.state["running"]["startedAt"]}}
                self.state.ready = self.state.started = False
                self.state.phase = "Succeeded" if code == 0 else "Failed"
                await self.publish()
                await self.terminating.wait()
                break
            self.state.last_state = {"terminated": {**finished, "startedAt": self.state.state["running"]["startedAt"]}}
            self.state.restarts += 1
            self.state.ready = self.state.started = False
            backoff = min(MAX_BACKOFF_SECONDS, 10.0 * 2 ** (self.state.restarts - 1))
            message = f"back-off {int(backoff)}s restarting failed container={self.container['name']} pod={self.name}"
            self.state.state = {"waiting": {"reason": "CrashLoopBackOff", "message": message}}
            await self.publish()
            await self._wait_or_terminate(backoff * self.agent.probe_period_scale)
        await self._finish()

    async def _finish(self) -> None:
        """Graceful termination: preStop, SIGTERM, the grace period, then the pod object goes."""
        grace = float(self.pod["metadata"].get("deletionGracePeriodSeconds") or 30)
        started = asyncio.get_running_loop().time()
        pre_stop = ((self.container.get("lifecycle") or {}).get("preStop") or {}).get("sleep")
        if pre_stop and self.process is not None and self.process.poll() is None:
            await asyncio.sleep(min(float(pre_stop.get("seconds", 0)), grace))
        self._kill(signal.SIGTERM)
        await self._wait_process(max(0.0, grace - (asyncio.get_running_loop().time() - started)))
        body = {
            "kind": "DeleteOptions",
            "apiVersion": "v1",
            "gracePeriodSeconds": 0,
            "preconditions": {"uid": self.uid},
        }
        with contextlib.suppress(ApiError):
            await self.agent.kube.request("DELETE", f"/api/v1/namespaces/{self.namespace}/pods/{self.name}", body)
        logger.info("%s/%s: terminated and removed", self.namespace, self.name)


class NodeAgent:
    def __init__(
        self,
        kube: Kube,
        nodes: list[NodeSpec],
        images: dict[str, list[str]],
        shim_dir: Path,
        state_dir: Path,
        probe_period_scale: float = 1.0,
        serving: ServingOptions | None = None,
        secret_sync_seconds: float = 10.0,
    ) -> None:
        self.kube = kube
        self.secret_sync_seconds = secret_sync_seconds
        self.nodes = {node.name: node for node in nodes}
        self.images = images  # image -> its entrypoint
        self.serving = serving or ServingOptions()
        self.shim_dir = shim_dir
        self.state_dir = state_dir
        self.probe_period_scale = probe_period_scale
        self.node_ip = "10.244.0.1"
        self.runners: dict[str, PodRunner] = {}
        self.down: set[str] = set()  # nodes lost (see _node_switch)
        self.http: aiohttp.ClientSession

    async def run(self) -> None:
        self.http = aiohttp.ClientSession()
        await self._register_nodes()
        proxy = ServiceProxy(self.kube)
        await asyncio.gather(
            _forever("pods", self._pods),
            _forever("volumes", self._volumes),
            _forever("services", proxy.run),
            _forever("node switch", self._node_switch),
            *self._serving_loops(),
        )

    def _serving_loops(self) -> list[Awaitable[None]]:
        """The kubelet's log endpoint and the Service names, when the options ask for them."""
        options = self.serving
        loops: list[Awaitable[None]] = []
        if options.tls is not None:
            server = kubelet_server.KubeletServer(self.state_dir / "pods", self._runs)
            context = kubelet_server.tls_context(*options.tls)
            loops.append(_forever("kubelet", lambda: server.serve(self.node_ip, kubelet_server.KUBELET_PORT, context)))
        if options.hosts_file is not None:
            hosts = ServiceHosts(self.kube, options.hosts_file, options.cluster_domain)
            loops.append(_forever("cluster dns", hosts.run))
        return loops

    def _runs(self, namespace: str, name: str) -> bool:
        return any(r.namespace == namespace and r.name == name for r in self.runners.values())

    async def _register_nodes(self) -> None:
        for node in self.nodes.values():
            body = {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {"name": node.name, "labels": {"kubernetes.io/hostname": node.name, **node.labels}},
                "spec": {"podCIDR": node.pod_cidr, "podCIDRs": [node.pod_cidr], "taints": node.taints},
            }
            try:
                await self.kube.request("POST", "/api/v1/nodes", body)
            except ApiError as exc:
                if exc.status != 409:
                    raise
            stamp = now()
            status = {
                "capacity": node.capacity,
                "allocatable": node.capacity,
                "addresses": [
                    {"type": "InternalIP", "address": self.node_ip},
                    {"type": "Hostname", "address": node.name},
                ],
                "daemonEndpoints": {"kubeletEndpoint": {"Port": kubelet_server.KUBELET_PORT}},
                "conditions": [
                    {
                        "type": "Ready",
                        "status": "True",
                        "reason": "KubeletReady",
                        "message": "testbed node agent",
                        "lastHeartbeatTime": stamp,
                        "lastTransitionTime": stamp,
                    },
                    *(
                        {
                            "type": t,
                            "status": "False",
                            "reason": f"KubeletHas{r}",
                            "lastHeartbeatTime": stamp,
                            "lastTransitionTime": stamp,
                        }
                        for t, r in (
                            ("MemoryPressure", "SufficientMemory"),
                            ("DiskPressure", "NoDiskPressure"),
                            ("PIDPressure", "SufficientPID"),
                        )
                    ),
                ],
                "nodeInfo": {
                    "kubeletVersion": "v1.34.12-testbed",
                    "kubeProxyVersion": "",
                    "containerRuntimeVersion": "testbed://1",
                    "operatingSystem": "linux",
                    "architecture": "amd64",
                    "osImage": "testbed",
                    "kernelVersion": "",
                    "machineID": node.name,
                    "systemUUID": node.name,
                    "bootID": node.name,
                },
            }
            await self.kube.request(
                "PATCH",
                f"/api/v1/nodes/{node.name}/status",
                {"status": status},
                content_type="application/merge-patch+json",
            )
            # The TaintNodesByCondition admission plugin gives a new node the not-ready taint; the node
            # lifecycle controller (off here: nothing renews leases) lifts it once the node is Ready.
            await self.kube.request(
                "PATCH",
                f"/api/v1/nodes/{node.name}",
                {"spec": {"taints": node.taints or None}},
                content_type="application/merge-patch+json",
            )
            logger.info("node %s registered (%s)", node.name, node.capacity)

    async def _pods(self) -> None:
        async for kind, pod in self.kube.watch("/api/v1/pods"):
            if kind == "SYNCED":
                continue
            node = self.nodes.get((pod.get("spec") or {}).get("nodeName") or "")
            if node is None or node.name in self.down:  # a lost node runs nothing
                continue
            uid = pod["metadata"]["uid"]
            runner = self.runners.get(uid)
            if kind == "DELETED":
                if runner is not None:
                    runner.terminating.set()
                    runner.pod["metadata"]["deletionGracePeriodSeconds"] = 0
                    self.runners.pop(uid, None)
                continue
            if runner is None:
                if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
                    if pod["metadata"].get("deletionTimestamp"):
                        await self._remove(pod)
                    continue  # ran to its end (a Job's pod): never run again
                if pod["metadata"].get("deletionTimestamp") and not (pod.get("status") or {}).get("podIP"):
                    # Deleted before it ever ran: nothing to stop.
                    await self._remove(pod)
                    continue
                runner = self.runners[uid] = PodRunner(self, pod, node)
                runner.task.add_done_callback(functools.partial(self._forget, uid))
            if pod["metadata"].get("deletionTimestamp"):
                runner.pod = pod
                runner.terminating.set()

    def _forget(self, uid: str, _task: asyncio.Task[None]) -> None:
        self.runners.pop(uid, None)

    async def _remove(self, pod: JSON) -> None:
        meta = pod["metadata"]
        body = {
            "kind": "DeleteOptions",
            "apiVersion": "v1",
            "gracePeriodSeconds": 0,
            "preconditions": {"uid": meta["uid"]},
        }
        with contextlib.suppress(ApiError):
            await self.kube.request("DELETE", f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}", body)

    async def _volumes(self) -> None:
        """A provisioner stand-in: a volume for each pending claim, bound by the real PV controller."""
        async for kind, claim in self.kube.watch("/api/v1/persistentvolumeclaims"):
            if kind in ("SYNCED", "DELETED") or (claim.get("spec") or {}).get("volumeName"):
                continue
            meta, spec = claim["metadata"], claim["spec"]
            volume = {
                "apiVersion": "v1",
                "kind": "PersistentVolume",
                "metadata": {"name": f"pvc-{meta['uid']}", "labels": {"testbed.voxtral.dev/provisioned": "true"}},
                "spec": {
                    "capacity": {"storage": spec["resources"]["requests"]["storage"]},
                    "accessModes": spec.get("accessModes") or ["ReadWriteOnce"],
                    "storageClassName": spec.get("storageClassName") or "",
                    "persistentVolumeReclaimPolicy": "Retain",
                    "hostPath": {"path": str(self.state_dir / "volumes" / meta["uid"])},
                    "claimRef": {"namespace": meta["namespace"], "name": meta["name"], "uid": meta["uid"]},
                },
            }
            try:
                await self.kube.request("POST", "/api/v1/persistentvolumes", volume)
            except ApiError as exc:
                if exc.status != 409:
                    logger.warning("volume for %s/%s: %s", meta["namespace"], meta["name"], exc)

    # --- nodes lost and back ----------------------------------------------------------------

    async def _node_switch(self) -> None:
        params = {"fieldSelector": f"metadata.name={NODE_SWITCH}"}
        async for kind, config in self.kube.watch("/api/v1/namespaces/kube-system/configmaps", params):
            if kind == "SYNCED":
                continue
            listed = "" if kind == "DELETED" else str((config.get("data") or {}).get("down") or "")
            down = {name.strip() for name in listed.split(",") if name.strip() in self.nodes}
            for name in sorted(down - self.down):
                await self._node_lost(name)
            for name in sorted(self.down - down):
                await self._node_back(name)

    async def _node_lost(self, name: str) -> None:
        self.down.add(name)
        for uid, runner in list(self.runners.items()):
            if runner.node.name == name:
                runner.task.cancel()  # its process is killed, and nothing more is said about the pod
                self.runners.pop(uid, None)
        await self._set_node(name, ready=False)
        pods = await self.kube.request("GET", "/api/v1/pods", params={"fieldSelector": f"spec.nodeName={name}"})
        for pod in pods.get("items") or []:
            await self._remove(pod)
        logger.info("node %s lost: NotReady, %d pods removed", name, len(pods.get("items") or []))

    async def _node_back(self, name: str) -> None:
        self.down.discard(name)
        await self._set_node(name, ready=True)
        logger.info("node %s back: Ready", name)

    async def _set_node(self, name: str, *, ready: bool) -> None:
        stamp = now()
        condition = {
            "type": "Ready",
            "status": "True" if ready else "Unknown",
            "reason": "KubeletReady" if ready else "NodeStatusUnknown",
            "message": "testbed node agent" if ready else "Kubelet stopped posting node status.",
            "lastHeartbeatTime": stamp,
            "lastTransitionTime": stamp,
        }
        await self.kube.request(
            "PATCH",
            f"/api/v1/nodes/{name}/status",
            {"status": {"conditions": [condition]}},
            content_type="application/strategic-merge-patch+json",
        )
        taints = self.nodes[name].taints + ([] if ready else UNREACHABLE_TAINTS)
        await self.kube.request(
            "PATCH",
            f"/api/v1/nodes/{name}",
            {"spec": {"taints": taints or None}},
            content_type="application/merge-patch+json",
        )


async def _forever(name: str, loop: Callable[[], Awaitable[None]]) -> None:
    """A kubelet does not die with one of its loops: log the failure and start that loop again."""
    while True:
        try:
            await loop()
        except Exception:
            logger.exception("the %s loop failed; starting it again", name)
        await asyncio.sleep(1)


@dataclass
class ServingOptions:
    # The kubelet endpoint's certificate, key and the CA its clients' certificates must come from.
    tls: tuple[Path, Path, Path] | None = None
    hosts_file: Path | None = None
    cluster_domain: str = "cluster.local"


def load_nodes(path: Path) -> tuple[list[NodeSpec], dict[str, list[str]]]:
    data = yaml.safe_load(path.read_text())
    nodes = [
        NodeSpec(
            name=n["name"],
            pod_cidr=n["podCIDR"],
            labels={k: str(v) for k, v in (n.get("labels") or {}).items()},
            taints=list(n.get("taints") or []),
            capacity={k: str(v) for k, v in n["capacity"].items()},
        )
        for n in data["nodes"]
    ]
    return nodes, {image: list(entrypoint) for image, entrypoint in (data.get("images") or {}).items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="node-agent", description=__doc__.splitlines()[0])
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--nodes", required=True, type=Path, help="YAML: nodes and the images that run")
    parser.add_argument("--state-dir", required=True, type=Path, help="pod logs and volumes go here")
    parser.add_argument("--shim-dir", required=True, type=Path, help="folder holding the `vllm` shim")
    parser.add_argument("--probe-period-scale", type=float, default=1.0, help="probe periods times this")
    parser.add_argument(
        "--secret-sync-seconds",
        type=float,
        default=10.0,
        help="how often Secret volumes are refreshed (the kubelet: about a minute)",
    )
    parser.add_argument(
        "--kubelet-tls",
        nargs=3,
        type=Path,
        metavar=("CERT", "KEY", "CLIENT_CA"),
        help="serve the kubelet's containerLogs endpoint (kubectl logs) over TLS on the nodes' address",
    )
    parser.add_argument("--hosts-file", type=Path, help="keep Service names -> cluster IPs in this hosts file")
    parser.add_argument("--cluster-domain", default="cluster.local", help="the Services' DNS domain")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    nodes, images = load_nodes(args.nodes)
    serving = ServingOptions(args.kubelet_tls and tuple(args.kubelet_tls), args.hosts_file, args.cluster_domain)
    agent = NodeAgent(
        Kube.from_kubeconfig(args.kubeconfig),
        nodes,
        images,
        args.shim_dir,
        args.state_dir,
        args.probe_period_scale,
        serving,
        args.secret_sync_seconds,
    )
    asyncio.run(agent.run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
