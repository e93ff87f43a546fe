"""e2e: against the cluster KUBECONFIG points at, through kubectl, as a platform engineer works.

`make e2e` starts the local control plane (`make cluster`: real kube-apiserver, controller manager,
scheduler and etcd, fake GPU nodes kept by the node agent, the chart installed by Helm, the operator
under the chart's ServiceAccount) and runs this suite inside its network namespace. There
VOXTRAL_LOCAL_CLUSTER names the cluster's state folder, which unlocks what only a local cluster
offers: the API server's audit log, restarting the operator, and faults injected into pods.
On another cluster (kind, a GPU cluster) those tests skip, and Services are reached through
`kubectl port-forward`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import openai
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
T = TypeVar("T")
OPERATOR_USER = "system:serviceaccount:voxtral-system:voxtral-operator"
MINI = "mistralai/Voxtral-Mini-3B-2507"


def eventually(check: Callable[[], T | None], timeout: float, what: str, interval: float = 0.5) -> T:
    """Poll until check() returns something truthy; fail saying what was awaited and what was last seen."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"{what}: not within {timeout:.0f}s; last seen: {last!r}")


class Kubectl:
    def __init__(self) -> None:
        self.binary = shutil.which("kubectl") or str(ROOT / ".tools" / "kubectl")

    def run(self, *args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [self.binary, *args], input=stdin, capture_output=True, text=True, timeout=600, check=False
        )
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
        return result

    def json(self, *args: str) -> Any:
        return json.loads(self.run(*args, "-o", "json").stdout)

    def get(self, kind: str, name: str, namespace: str) -> dict[str, Any] | None:
        result = self.run("get", kind, name, "-n", namespace, "-o", "json", "--ignore-not-found", check=False)
        if result.returncode != 0:
            raise AssertionError(f"kubectl get {kind} {name}: {result.stderr.strip()}")
        return json.loads(result.stdout) if result.stdout.strip() else None

    def apply(self, *objects: dict[str, Any], check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run("apply", "-f", "-", stdin=yaml.safe_dump_all(objects), check=check)


def condition(endpoint: dict[str, Any] | None, type_: str) -> dict[str, Any]:
    for item in ((endpoint or {}).get("status") or {}).get("conditions") or []:
        if item.get("type") == type_:
            return dict(item)
    return {}


def whole_events_end(audit_log: Path) -> int:
    """Where the next whole event of the audit log starts: just past its last newline. The API server may
    be half-way through writing a long event when the size is read, and a read from the middle of a line
    is not JSON."""
    with audit_log.open("rb") as log:
        position = log.seek(0, 2)
        while position > 0:
            step = min(65536, position)
            log.seek(position - step)
            newline = log.read(step).rfind(b"\n")
            if newline >= 0:
                return position - step + newline + 1
            position -= step
        return 0


@dataclass(frozen=True)
class AuditEntry:
    user: str
    verb: str
    resource: str
    namespace: str
    name: str
    code: int
    uri: str

    def __str__(self) -> str:
        return f"{self.verb} {self.resource} {self.namespace}/{self.name} -> {self.code}"


class LocalCluster:
    """What the local control plane offers beyond any cluster: its audit log, operator and faults."""

    def __init__(self, state: Path, kubectl: Kubectl) -> None:
        self.state = state
        self.kubectl = kubectl
        self.audit_log = state / "audit.log"

    def audit(self, since: int = 0) -> tuple[list[AuditEntry], int]:
        """Completed requests in the audit log from byte offset `since`, and the offset to read on from."""
        entries = []
        with self.audit_log.open("rb") as log:
            log.seek(since)
            data = log.read()
        complete = data[: data.rfind(b"\n") + 1]
        for line in complete.splitlines():
            event = json.loads(line)
            if event.get("stage") != "ResponseComplete":
                continue
            ref = event.get("objectRef") or {}
            resource = ref.get("resource", "") + (f"/{ref['subresource']}" if ref.get("subresource") else "")
            entries.append(
                AuditEntry(
                    user=event["user"]["username"],
                    verb=event["verb"],
                    resource=resource,
                    namespace=ref.get("namespace", ""),
                    name=ref.get("name", ""),
                    code=int((event.get("responseStatus") or {}).get("code", 0)),
                    uri=event.get("requestURI", ""),
                )
            )
        return entries, since + len(complete)

    def operator_writes(self, since: int) -> tuple[list[AuditEntry], int]:
        entries, offset = self.audit(since)
        writes = {"create", "update", "patch", "delete", "deletecollection"}
        return [e for e in entries if e.user == OPERATOR_USER and e.verb in writes], offset

    def audit_offset(self) -> int:
        return whole_events_end(self.audit_log)

    def operator(self, action: str, instance: int = 1, release: tuple[str, str] | None = None) -> None:
        """e2e/cluster/operator: the local cluster's release, or `release` (name, namespace) another one's."""
        env = dict(os.environ)
        if release is not None:
            env["VOXTRAL_RELEASE"], env["VOXTRAL_RELEASE_NAMESPACE"] = release
        subprocess.run(
            [str(ROOT / "e2e" / "cluster" / "operator"), action, str(instance)], check=True, timeout=120, env=env
        )

    def set_fault(self, namespace: str, endpoint: str, fault: dict[str, Any] | None) -> None:
        """Pods of the endpoint started from now on behave so (see voxtral_testbed.node_agent)."""
        current = self.kubectl.get("configmap", "voxtral-testbed-faults", "kube-system") or {}
        data = dict(current.get("data") or {})
        key = f"{namespace}.{endpoint}"
        if fault is None:
            data.pop(key, None)
        else:
            data[key] = json.dumps(fault)
        body = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "voxtral-testbed-faults", "namespace": "kube-system"},
            "data": data,
        }
        self.kubectl.run("apply", "--server-side", "--force-conflicts", "-f", "-", stdin=json.dumps(body))


@pytest.fixture(scope="session")
def kubectl() -> Kubectl:
    if not os.environ.get("KUBECONFIG"):
        pytest.skip("no KUBECONFIG: `make e2e` runs this suite on the local control plane")
    return Kubectl()


@pytest.fixture(scope="session")
def local(kubectl: Kubectl) -> LocalCluster:
    state = os.environ.get("VOXTRAL_LOCAL_CLUSTER")
    if not state:
        pytest.skip("needs the local control plane (audit log, operator process, fault injection)")
    return LocalCluster(Path(state), kubectl)


@pytest.fixture(scope="session")
def namespace(kubectl: Kubectl) -> Iterator[str]:
    """One namespace for the session's endpoints; deleting it at the end takes whatever a failure left."""
    name = os.environ.get("VOXTRAL_E2E_NAMESPACE") or f"e2e-{uuid.uuid4().hex[:6]}"
    kubectl.run("create", "namespace", name, check=False)
    yield name
    if not os.environ.get("VOXTRAL_E2E_NAMESPACE"):
        kubectl.run("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
def unique_name() -> str:
    return f"vx-{uuid.uuid4().hex[:6]}"


def endpoint_body(name: str, namespace: str, **spec: Any) -> dict[str, Any]:
    """Voxtral Mini on the L4 pool, running VOXTRAL_E2E_IMAGE when set (the simulator image on CPU clusters)."""
    body: dict[str, Any] = {
        "model": MINI,
        "gpu": {"type": "L4-24GB"},
        "nodePool": {
            "nodeSelector": {"pool": "l4-speech"},
            "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "speech", "effect": "NoSchedule"}],
        },
        **spec,
    }
    if os.environ.get("VOXTRAL_E2E_IMAGE"):
        body["image"] = os.environ["VOXTRAL_E2E_IMAGE"]
    return {
        "apiVersion": "voxtral.dev/v1alpha1",
        "kind": "VoxtralEndpoint",
        "metadata": {"name": name, "namespace": namespace},
        "spec": body,
    }


def wait_ready(kubectl: Kubectl, name: str, namespace: str, timeout: float = 180) -> dict[str, Any]:
    kubectl.run(
        "wait", f"vxe/{name}", "-n", namespace, "--for=condition=Ready", f"--timeout={int(timeout)}s", check=False
    )
    endpoint = kubectl.get("vxe", name, namespace)
    assert condition(endpoint, "Ready").get("status") == "True", (
        f"{name} not Ready: {endpoint and endpoint.get('status')}"
    )
    assert endpoint is not None
    return endpoint


def delete_endpoint(kubectl: Kubectl, name: str, namespace: str) -> None:
    """Delete and wait until the garbage collector has taken the pods too (GPUs free for the next test)."""
    kubectl.run("delete", "vxe", name, "-n", namespace, "--ignore-not-found", "--wait=true", "--timeout=120s")
    selector = f"app.kubernetes.io/instance={name}"
    eventually(
        lambda: not kubectl.json("get", "pods,deployments", "-n", namespace, "-l", selector)["items"],
        timeout=120,
        what=f"children and pods of {name} gone",
    )


@contextlib.contextmanager
def chat_callers(base_url: str, count: int, api_key: str = "unused") -> Iterator[None]:
    """`count` callers each sending a chat request after the last, until the block ends (a refused or
    failed request is retried after 0.1 s)."""
    stop = threading.Event()

    def caller() -> None:
        client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=30)
        while not stop.is_set():
            try:
                client.chat.completions.create(model=MINI, messages=[{"role": "user", "content": "hi"}])
            except openai.APIError:
                stop.wait(0.1)

    callers = [threading.Thread(target=caller, daemon=True) for _ in range(count)]
    for thread in callers:
        thread.start()
    try:
        yield
    finally:
        stop.set()
        for thread in callers:
            thread.join(timeout=40)


@contextlib.contextmanager
def service_base_url(kubectl: Kubectl, name: str, namespace: str, port: int = 8000) -> Iterator[str]:
    """The endpoint's OpenAI base URL as a caller in the cluster reaches it."""
    if os.environ.get("VOXTRAL_LOCAL_CLUSTER"):
        service = kubectl.get("service", name, namespace)
        assert service is not None
        yield f"http://{service['spec']['clusterIP']}:{port}/v1"
        return
    local_port = 18000 + uuid.uuid4().int % 1000
    forward = subprocess.Popen(
        [kubectl.binary, "-n", namespace, "port-forward", f"svc/{name}", f"{local_port}:{port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(2)
        yield f"http://127.0.0.1:{local_port}/v1"
    finally:
        forward.terminate()
