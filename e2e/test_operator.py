"""The operator process on the local control plane: what it asks the API server for, what a restart,
a watch gap and a second replica do, judged by the API server's own audit log."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest

from .conftest import (
    OPERATOR_USER,
    ROOT,
    Kubectl,
    LocalCluster,
    condition,
    delete_endpoint,
    endpoint_body,
    eventually,
    wait_ready,
)
from .metrics import samples

pytestmark = pytest.mark.e2e


def test_restart_and_idle_make_no_writes(
    kubectl: Kubectl, local: LocalCluster, namespace: str, unique_name: str
) -> None:
    name = unique_name
    kubectl.apply(endpoint_body(name, namespace, replicas=2, minReplicas=1, maxReplicas=3))
    try:
        wait_ready(kubectl, name, namespace)
        eventually(
            lambda: condition(kubectl.get("vxe", name, namespace), "Serving").get("status") == "True",
            timeout=60,
            what="Serving",
        )
        # Converged, not just Ready: both replicas ready and the operator quiet (Ready comes with one
        # replica; the second one's readiness, written after the restart, is a change, not a restart's write).
        eventually(
            lambda: (kubectl.get("vxe", name, namespace).get("status") or {}).get("readyReplicas") == 2,
            timeout=120,
            what="both replicas ready",
        )
        offset = local.audit_offset()
        quiet_since = time.monotonic()
        while time.monotonic() - quiet_since < 10:
            time.sleep(1)
            seen, offset = local.operator_writes(offset)
            if seen:
                quiet_since = time.monotonic()
        local.operator("restart")
        # A restarted operator compares the whole cluster before it could write: no write at all, from
        # its first request through a minute of idling.
        time.sleep(60)
        writes, _ = local.operator_writes(offset)
        assert not [str(w) for w in writes], f"writes after a restart of a converged operator: {writes}"
    finally:
        delete_endpoint(kubectl, name, namespace)


def test_watches_select_on_the_server(local: LocalCluster, kubectl: Kubectl) -> None:
    """Pods and children are listed and watched with a label selector: never every Pod of the cluster."""
    offset = local.audit_offset()
    local.operator("restart")
    time.sleep(3)
    entries, _ = local.audit(offset)
    reads = [e for e in entries if e.user == OPERATOR_USER and e.verb in ("list", "watch")]
    by_resource = {e.resource: e.uri for e in reads}
    for resource in ("pods", "deployments", "services", "persistentvolumeclaims"):
        assert resource in by_resource, f"no list/watch of {resource} seen: {sorted(by_resource)}"
        assert "labelSelector=" in by_resource[resource], (
            f"{resource} listed without a selector: {by_resource[resource]}"
        )


def test_objects_deleted_in_a_watch_gap_are_noticed(
    kubectl: Kubectl, local: LocalCluster, namespace: str, unique_name: str
) -> None:
    name = unique_name
    kubectl.apply(endpoint_body(name, namespace))
    try:
        wait_ready(kubectl, name, namespace)
        first = (kubectl.get("service", name, namespace) or {})["metadata"]["uid"]
        operator_pid = int((local.state / "pids" / "operator").read_text())
        # The operator sleeps through an API server restart and a deletion: when it wakes, its watches
        # are broken and it lists again, with the Service gone and no DELETED event to tell it.
        os.kill(operator_pid, signal.SIGSTOP)
        try:
            subprocess.run([str(ROOT / "e2e" / "cluster" / "apiserver-restart")], check=True, timeout=120)
            kubectl.run("delete", "service", name, "-n", namespace)
        finally:
            os.kill(operator_pid, signal.SIGCONT)
        eventually(
            lambda: (kubectl.get("service", name, namespace) or {}).get("metadata", {}).get("uid") not in (None, first),
            timeout=90,
            what="the Service deleted in the watch gap recreated",
        )
    finally:
        delete_endpoint(kubectl, name, namespace)


def _reconciles(port: int) -> float:
    found = samples(f"http://127.0.0.1:{port}/metrics", "voxtral_operator_reconciles_total", timeout=5)
    return sum(value for _, value in found)


def _helm(*args: str) -> None:
    helm = str(ROOT / ".tools" / "helm")
    chart = str(ROOT / "charts" / "voxtral-operator")
    values = str(ROOT / "e2e" / "cluster" / "values.yaml")
    result = subprocess.run(
        [helm, "upgrade", "voxtral-operator", chart, "-n", "voxtral-system", "-f", values, *args, "--wait"],
        timeout=180,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, f"helm upgrade {' '.join(args)}: {result.stderr}"


PEERING = "voxtral-operator"  # the chart's peering.name
PAUSE_LINES = ("Pausing operations", "Resuming operations")  # kopf's peering, as it logs them
LOG_NAMES = {1: "operator", 2: "operator-2"}  # as e2e/cluster/operator names its instances


def pid_of(local: LocalCluster, instance: int) -> int:
    return int((local.state / "pids" / LOG_NAMES[instance]).read_text())


def identity_of(local: LocalCluster, instance: int) -> str:
    """The peering identity an operator process announces (and sends in its User-Agent)."""
    return f"{socket.gethostname()}/{pid_of(local, instance)}"


def peers(kubectl: Kubectl) -> dict[str, int]:
    """Live peers of the peering object: identity -> priority."""
    peering = kubectl.json("get", "clusterkopfpeering", PEERING)
    return {identity: int(info.get("priority", 0)) for identity, info in (peering.get("status") or {}).items()}


def _log_sizes(local: LocalCluster) -> dict[int, int]:
    paths = {instance: local.state / "logs" / f"{name}.log" for instance, name in LOG_NAMES.items()}
    return {instance: path.stat().st_size if path.exists() else 0 for instance, path in paths.items()}


def _paused(local: LocalCluster, instance: int, since: int) -> bool:
    """kopf starts a peered operator paused and logs each change: paused unless its last word is resuming."""
    with (local.state / "logs" / f"{LOG_NAMES[instance]}.log").open(errors="replace") as log:
        log.seek(since)
        last = [line for line in log if any(word in line for word in PAUSE_LINES)][-1:]
    return not last or PAUSE_LINES[0] in last[0]


def _one_acting(local: LocalCluster, since: dict[int, int]) -> tuple[int, int] | None:
    """(acting, paused) instances once both are in the peering object, the lower priority paused and the
    higher one resumed; else None."""
    identities = {instance: identity_of(local, instance) for instance in LOG_NAMES}
    seen = peers(local.kubectl)
    if not set(identities.values()) <= seen.keys():
        return None
    acting = max(identities, key=lambda instance: seen[identities[instance]])
    paused = 3 - acting
    if _paused(local, paused, since[paused]) and not _paused(local, acting, since[acting]):
        return acting, paused
    return None


@contextlib.contextmanager
def two_peers(local: LocalCluster) -> Iterator[None]:
    """Peering on, the operator restarted so and a second one started, and one of them paused (it has
    read the peering object: not a guess by time); one standalone operator after."""
    _helm("--set", "peering.enabled=true")
    try:
        since = _log_sizes(local)
        local.operator("restart", 1)
        local.operator("start", 2)
        eventually(lambda: _one_acting(local, since), 90, "both peers in the peering object, the lower one paused")
        yield
    finally:
        local.operator("stop", 2)
        try:
            _helm()
        finally:
            local.operator("restart", 1)


def test_two_peered_operators_one_acts(kubectl: Kubectl, local: LocalCluster, namespace: str, unique_name: str) -> None:
    name = unique_name
    with two_peers(local):
        before = (_reconciles(9090), _reconciles(9190))
        kubectl.apply(endpoint_body(name, namespace))
        wait_ready(kubectl, name, namespace)
        after = (_reconciles(9090), _reconciles(9190))
        acted = [after[i] > before[i] for i in range(2)]
        assert acted.count(True) == 1, f"reconciles before {before}, after {after}: exactly one peer must act"
        delete_endpoint(kubectl, name, namespace)


def test_peering_in_every_watched_namespace(kubectl: Kubectl, local: LocalCluster, unique_name: str) -> None:
    """Namespaced mode with peering: the operator acts in each watched namespace, not only the first."""
    first, second = f"{unique_name}-a", f"{unique_name}-b"
    for ns in (first, second):
        kubectl.run("create", "namespace", ns)
    _helm("--set", "peering.enabled=true", "--set", f"watchNamespaces={{{first},{second}}}")
    try:
        local.operator("restart", 1)
        kubectl.apply(endpoint_body("vx", second))
        wait_ready(kubectl, "vx", second, timeout=90)
        delete_endpoint(kubectl, "vx", second)
    finally:
        try:
            _helm()  # back to e2e/cluster/values.yaml alone: cluster-wide, no peering
        finally:
            local.operator("restart", 1)
        for ns in (first, second):
            kubectl.run("delete", "namespace", ns, "--wait=false", check=False)


SECOND_RELEASE = ("voxtral-operator-b", "voxtral-operator-b")
SECOND_USER = "system:serviceaccount:voxtral-operator-b:voxtral-operator-b"
WRITE_VERBS = {"create", "update", "patch", "delete", "deletecollection"}


def test_two_releases_each_reconcile_their_own_namespaces(
    kubectl: Kubectl, local: LocalCluster, unique_name: str
) -> None:
    """Several releases of the chart, each watching its own namespaces (README "Where one process
    stops"): each one's endpoint is reconciled by it, and the audit log shows neither writing in the
    other's namespace."""
    first, second = f"{unique_name}-a", f"{unique_name}-b"
    name, namespace = SECOND_RELEASE
    for ns in (first, second):
        kubectl.run("create", "namespace", ns)
    helm = str(ROOT / ".tools" / "helm")
    split = ["--set", "refuseUnwatchedNamespaces=false"]
    try:
        _helm(*split, "--set", f"watchNamespaces={{{first}}}")
        installed = subprocess.run(
            [
                helm,
                "upgrade",
                "--install",  # a run cut short may have left it
                name,
                str(ROOT / "charts" / "voxtral-operator"),
                "-n",
                namespace,
                "--create-namespace",
                "-f",
                str(ROOT / "e2e" / "cluster" / "values.yaml"),
                *split,
                "--set",
                f"watchNamespaces={{{second}}}",
                # Cluster-wide objects one release owns: the PriorityClasses.
                "--set",
                "priorityClasses.create=false",
                "--wait",
            ],
            timeout=180,
            capture_output=True,
            text=True,
            check=False,
        )
        assert installed.returncode == 0, f"helm upgrade --install {name}: {installed.stderr}"
        local.operator("restart", 1)
        local.operator("start", 3, release=SECOND_RELEASE)
        offset = local.audit_offset()
        for ns in (first, second):
            kubectl.apply(endpoint_body("vx", ns))
        for ns in (first, second):
            wait_ready(kubectl, "vx", ns, timeout=120)
        entries, _ = local.audit(offset)
        written = {
            user: sorted({e.namespace for e in entries if e.user == user and e.verb in WRITE_VERBS})
            for user in (OPERATOR_USER, SECOND_USER)
        }
        assert written == {OPERATOR_USER: [first], SECOND_USER: [second]}, (
            f"namespaces each release's operator wrote in: {written}"
        )
        for ns in (first, second):
            delete_endpoint(kubectl, "vx", ns)
    finally:
        local.operator("stop", 3, release=SECOND_RELEASE)
        subprocess.run([helm, "uninstall", name, "-n", namespace, "--wait"], timeout=180, check=False)
        try:
            _helm()
        finally:
            local.operator("restart", 1)
        for ns in (first, second, namespace):
            kubectl.run("delete", "namespace", ns, "--wait=false", check=False)


def test_helm_upgrade_and_uninstall_are_clean(kubectl: Kubectl, local: LocalCluster) -> None:
    _helm("--set", "operatorConfig.servingCheckSeconds=3")
    config = kubectl.get("configmap", "voxtral-operator-config", "voxtral-system")
    assert config is not None
    assert "servingCheckSeconds: 3" in config["data"]["config.yaml"]
    helm = str(ROOT / ".tools" / "helm")
    try:
        subprocess.run(
            [helm, "uninstall", "voxtral-operator", "-n", "voxtral-system", "--wait"], check=True, timeout=180
        )
        left = kubectl.json(
            "get",
            "all,configmaps,serviceaccounts,roles,rolebindings",
            "-n",
            "voxtral-system",
            "-l",
            "app.kubernetes.io/instance=voxtral-operator",
        )["items"]
        assert not left, f"left behind by helm uninstall: {[o['kind'] + '/' + o['metadata']['name'] for o in left]}"
        assert not kubectl.run("get", "clusterrole", "voxtral-operator", "--ignore-not-found").stdout.strip()
        # The CRD stays (Helm never deletes CRDs): endpoints survive an operator reinstall.
        assert kubectl.get("crd", "voxtralendpoints.voxtral.dev", "default") is not None
    finally:
        subprocess.run([str(ROOT / "e2e" / "cluster" / "up")], check=True, timeout=600)
    assert json.loads(kubectl.run("get", "deployment", "voxtral-operator", "-n", "voxtral-system", "-o", "json").stdout)
