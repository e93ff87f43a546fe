"""The real kubectl against the API server stand-in: discovery, server-side printing (Tables) and
plain JSON, as `make demo` shows them. Skipped when no kubectl binary is at hand."""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import json
import os
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from voxtral_testbed.apiserver import human_duration, jsonpath
from voxtral_testbed.harness import Kube
from voxtral_testbed.sandbox import Sandbox

pytestmark = pytest.mark.integration
NS = "speech"
REPO = Path(__file__).resolve().parents[2]
KUBECTL = next(
    (
        c
        for c in (os.environ.get("KUBECTL"), str(REPO / ".tools" / "kubectl"), shutil.which("kubectl"))
        if c and os.path.isfile(c) and os.access(c, os.X_OK)
    ),
    None,
)
needs_kubectl = pytest.mark.skipif(KUBECTL is None, reason="no kubectl binary ($KUBECTL, .tools/kubectl, PATH)")

ENDPOINT = {
    "apiVersion": "voxtral.dev/v1alpha1",
    "kind": "VoxtralEndpoint",
    "metadata": {"name": "voxtral-mini", "namespace": NS},
    "spec": {"model": "mistralai/Voxtral-Mini-3B-2507", "gpu": {"type": "L4-24GB"}},
}
LABELS = {"app.kubernetes.io/instance": "voxtral-mini", "app.kubernetes.io/managed-by": "voxtral-operator"}


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    """No controllers: the objects are exactly what the test writes."""
    async with Sandbox(controllers=False) as running:
        api = running.api
        await api.create_object("voxtral.dev/v1alpha1/voxtralendpoints", ENDPOINT)
        await api.write_status(
            "voxtral.dev/v1alpha1/voxtralendpoints",
            NS,
            "voxtral-mini",
            {
                "phase": "Ready",
                "replicaSummary": "1/1",
                "queueDepth": 4,
                "gpus": 1,
                "url": "http://voxtral-mini.speech.svc.cluster.local:8000/v1",
                "conditions": [
                    {"type": "Progressing", "status": "False", "reason": "Idle"},
                    {"type": "Ready", "status": "True", "reason": "Available"},
                ],
            },
        )
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "voxtral-mini-0", "namespace": NS, "labels": LABELS},
            "spec": {"containers": [{"name": "vllm", "image": "vllm/vllm-openai"}], "nodeName": "gpu-node-1"},
        }
        await api.create_object("v1/pods", pod)
        await api.write_status(
            "v1/pods",
            NS,
            "voxtral-mini-0",
            {
                "phase": "Running",
                "podIP": "10.1.2.3",
                "containerStatuses": [{"name": "vllm", "ready": True, "restartCount": 2, "state": {"running": {}}}],
            },
        )
        deployment = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "voxtral-mini", "namespace": NS, "labels": LABELS},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app.kubernetes.io/instance": "voxtral-mini"}}},
        }
        await api.create_object("apps/v1/deployments", deployment)
        await api.write_status(
            "apps/v1/deployments",
            NS,
            "voxtral-mini",
            {"readyReplicas": 1, "updatedReplicas": 1, "availableReplicas": 1},
        )
        service = {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "voxtral-mini", "namespace": NS, "labels": LABELS},
            "spec": {"ports": [{"port": 8000, "protocol": "TCP"}], "selector": {"app.kubernetes.io/instance": "x"}},
        }
        await api.create_object("v1/services", service)
        event = {
            "apiVersion": "events.k8s.io/v1",
            "kind": "Event",
            "metadata": {"name": "voxtral-mini.1", "namespace": NS},
            "eventTime": "2026-01-01T00:00:00.000000Z",
            "regarding": {"kind": "VoxtralEndpoint", "name": "voxtral-mini", "namespace": NS},
            "reason": "Ready",
            "note": "1/1 replicas ready",
            "type": "Normal",
            "action": "Reconcile",
            "reportingController": "voxtral.dev/operator",
            "reportingInstance": "voxtral-operator",
        }
        await api.create_object("events.k8s.io/v1/events", event)
        yield running


async def kubectl(sandbox: Sandbox, *args: str) -> tuple[int, str, str]:
    # Not subprocess.run: the API server stand-in serves on this very event loop.
    assert KUBECTL is not None
    cache = Path(sandbox.kubeconfig).parent / "kubectl-cache"
    process = await asyncio.create_subprocess_exec(
        KUBECTL,
        "--kubeconfig",
        str(sandbox.kubeconfig),
        "--cache-dir",
        str(cache),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def table(text: str) -> list[list[str]]:
    """kubectl's table output as rows of cells (columns are separated by at least 2 spaces)."""
    return [re.split(r"\s{2,}", line.strip()) for line in text.splitlines() if line.strip()]


@needs_kubectl
async def test_get_vxe_prints_the_printer_columns(sandbox: Sandbox) -> None:
    code, out, err = await kubectl(sandbox, "get", "vxe", "-n", NS)
    assert code == 0, err
    header, row = table(out)
    assert header == ["NAME", "MODEL", "GPU", "REPLICAS", "READY", "REASON", "QUEUE", "GPUS", "OVERFLOW", "AGE"]
    assert row[:8] == [
        "voxtral-mini",
        "mistralai/Voxtral-Mini-3B-2507",
        "L4-24GB",
        "1/1",
        "True",
        "Available",
        "4",
        "1",
    ]
    assert row[8].endswith("s")  # e.g. 0s: kubectl's human duration

    code, out, err = await kubectl(sandbox, "get", "voxtralendpoint/voxtral-mini", "-n", NS, "-o", "wide")
    assert code == 0, err
    header, row = table(out)
    assert header[-3:] == ["PHASE", "URL", "AGE"]
    assert row[-3:-1] == ["Ready", "http://voxtral-mini.speech.svc.cluster.local:8000/v1"]


@needs_kubectl
async def test_get_vxe_as_json_is_the_object(sandbox: Sandbox) -> None:
    code, out, err = await kubectl(sandbox, "get", "vxe", "voxtral-mini", "-n", NS, "-o", "json")
    assert code == 0, err
    obj = json.loads(out)
    assert obj["kind"] == "VoxtralEndpoint"
    assert obj["spec"] == ENDPOINT["spec"]
    assert obj["status"]["replicaSummary"] == "1/1"

    code, out, err = await kubectl(sandbox, "get", "vxe", "-n", NS, "-o", "jsonpath={.items[*].metadata.name}")
    assert (code, out) == (0, "voxtral-mini"), err


@needs_kubectl
async def test_builtin_kinds_print_tables(sandbox: Sandbox) -> None:
    code, out, err = await kubectl(sandbox, "get", "pods", "-n", NS, "-o", "wide")
    assert code == 0, err
    assert table(out) == [
        ["NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP", "NODE"],
        ["voxtral-mini-0", "1/1", "Running", "2", table(out)[1][4], "10.1.2.3", "gpu-node-1"],
    ]

    code, out, err = await kubectl(sandbox, "get", "deploy", "-n", NS)
    assert code == 0, err
    header, row = table(out)
    assert header == ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]
    assert row[:4] == ["voxtral-mini", "1/1", "1", "1"]

    code, out, err = await kubectl(sandbox, "get", "svc", "-n", NS)
    assert code == 0, err
    header, row = table(out)
    assert header == ["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"]
    assert row[:5] == ["voxtral-mini", "ClusterIP", row[2], "<none>", "8000/TCP"]
    assert ipaddress.ip_address(row[2]).is_loopback, row  # allocated on loopback, so tests can serve it

    code, out, err = await kubectl(
        sandbox, "get", "all", "-n", NS, "-l", "app.kubernetes.io/managed-by=voxtral-operator"
    )
    assert code == 0, err
    for name in ("pod/voxtral-mini-0", "service/voxtral-mini", "deployment.apps/voxtral-mini"):
        assert name in out


@needs_kubectl
async def test_events_and_discovery(sandbox: Sandbox) -> None:
    code, out, err = await kubectl(sandbox, "get", "events", "-n", NS)
    assert code == 0, err
    header, row = table(out)
    assert header == ["LAST SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"]
    assert row[1:] == ["Normal", "Ready", "voxtralendpoint/voxtral-mini", "1/1 replicas ready"]

    code, out, err = await kubectl(sandbox, "api-resources", "--api-group", "voxtral.dev")
    assert code == 0, err
    assert table(out)[1] == ["voxtralendpoints", "vxe", "voxtral.dev/v1alpha1", "true", "VoxtralEndpoint"]

    code, out, err = await kubectl(sandbox, "get", "voxtral", "-n", NS)  # the CRD's category
    assert code == 0, err
    assert "voxtral-mini" in out

    code, out, err = await kubectl(sandbox, "scale", "vxe/voxtral-mini", "-n", NS, "--replicas=2")
    assert code == 0, err
    assert sandbox.api.find("voxtral.dev/v1alpha1/voxtralendpoints", NS, "voxtral-mini")["spec"]["replicas"] == 2  # type: ignore[index]


@needs_kubectl
async def test_an_unknown_resource_type_says_so(sandbox: Sandbox) -> None:
    code, _, err = await kubectl(sandbox, "get", "gizmos", "-n", NS)
    assert code == 1
    assert 'the server doesn\'t have a resource type "gizmos"' in err


def test_human_duration_and_jsonpath() -> None:
    assert [human_duration(s) for s in (0, 12, 119, 120, 185, 600, 3 * 3600 + 60, 50 * 3600)] == [
        "0s",
        "12s",
        "119s",
        "2m",
        "3m5s",
        "10m",
        "3h1m",
        "2d2h",
    ]
    obj = {"status": {"conditions": [{"type": "A", "status": "False"}, {"type": "Ready", "status": "True"}]}}
    assert jsonpath(obj, '.status.conditions[?(@.type=="Ready")].status') == "True"
    assert jsonpath(obj, ".status.conditions[0].type") == "A"
    assert jsonpath(obj, ".status.missing") is None


async def test_secret_string_data_is_stored_as_base64_data_as_a_real_server_does(sandbox: Sandbox) -> None:
    async with aiohttp.ClientSession() as session:
        kube = Kube(sandbox.url, session)
        path = f"/api/v1/namespaces/{NS}/secrets"
        body = {
            "metadata": {"name": "key"},
            "data": {"old": "b2xk", "api-key": "eA=="},
            "stringData": {"api-key": "sk-1"},
        }
        created = await kube.create(path, body)
        stored = await kube.get(f"{path}/key")
        for secret in (created, stored):
            assert "stringData" not in secret
            assert secret["data"] == {"old": "b2xk", "api-key": base64.b64encode(b"sk-1").decode()}  # stringData wins
        await kube.merge(f"{path}/key", {"stringData": {"api-key": "sk-2"}})
        assert (await kube.get(f"{path}/key"))["data"]["api-key"] == base64.b64encode(b"sk-2").decode()
