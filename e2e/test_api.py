"""The API as the real API server serves it: the CRD installs, kubectl explains and lists it, the
server's defaulting fills only what the spec left to defaults, and bad endpoints are refused by
the schema and CEL rules with messages that name the field."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
from typing import Any

import pytest
import yaml

from .conftest import ROOT, Kubectl, endpoint_body, eventually

pytestmark = pytest.mark.e2e


def test_crd_is_established_and_explained(kubectl: Kubectl) -> None:
    # A CRD whose defaults fail its own schema is refused at install: dry-run the repo's copy.
    kubectl.run("apply", "--server-side", "--dry-run=server", "-f", str(ROOT / "crds"))
    crd = kubectl.json("get", "crd", "voxtralendpoints.voxtral.dev")
    established = [c for c in crd["status"]["conditions"] if c["type"] == "Established"]
    assert established, crd["status"]
    assert established[0]["status"] == "True"
    explained = kubectl.run("explain", "vxe.spec").stdout
    for field in ("model", "gpu", "minReplicas", "maxReplicas", "autoscaling", "engine", "auth", "modelCache"):
        assert field in explained, f"`kubectl explain vxe.spec` lacks {field}:\n{explained}"
    assert "tensorParallelSize" in kubectl.run("explain", "vxe.spec.tensorParallelSize").stdout


def test_server_defaults_fill_blocks_without_inventing_optional_ones(
    kubectl: Kubectl, namespace: str, unique_name: str
) -> None:
    body = endpoint_body(unique_name, namespace)
    stored = json.loads(
        kubectl.run("create", "--dry-run=server", "-o", "json", "-f", "-", stdin=yaml.safe_dump(body)).stdout
    )
    spec = stored["spec"]
    # Defaults inside blocks the user left out are filled by the server...
    assert spec["autoscaling"]["enabled"] is True
    assert spec["engine"]["shutdownTimeoutSeconds"] > 0
    # ...but optional blocks stay absent: a modelCache would give every endpoint a PVC it never asked for.
    assert "modelCache" not in spec, spec
    assert "apiKeySecretRef" not in spec.get("auth", {}), spec


REFUSALS = [
    ("unknown GPU type", {"gpu": {"type": "T4-16GB"}}, "spec.gpu.type"),
    (
        "fewer max than min replicas",
        {"minReplicas": 3, "maxReplicas": 2},
        "minReplicas 3 must not exceed maxReplicas 2",
    ),
    (
        "replicas outside the bounds",
        {"replicas": 5, "minReplicas": 1, "maxReplicas": 3},
        "replicas 5 must lie within [minReplicas 1, maxReplicas 3]",
    ),
    ("an operator-owned vLLM flag", {"engine": {"extraArgs": ["--tensor-parallel-size", "2"]}}, "extraArgs"),
    ("an unknown model without a profile", {"model": "someone/other-model"}, "modelProfile"),
    ("a negative replica count", {"minReplicas": -1}, "spec.minReplicas"),
    ("an unknown field", {"gpuCount": 2}, "gpuCount"),
    (
        "two settings for one caller key",
        {"gateway": {"enabled": True, "keys": [{"name": "alice"}, {"name": "alice", "weight": 2}]}},
        "spec.gateway.keys",
    ),
    ("a caller key weighing nothing", {"gateway": {"enabled": True, "keys": [{"name": "a", "weight": 0}]}}, "weight"),
]


@pytest.mark.parametrize(("case", "change", "field"), REFUSALS, ids=[r[0] for r in REFUSALS])
def test_bad_endpoint_is_refused_naming_the_field(
    kubectl: Kubectl, namespace: str, unique_name: str, case: str, change: dict[str, Any], field: str
) -> None:
    body = copy.deepcopy(endpoint_body(unique_name, namespace))
    body["spec"].update(change)
    result = kubectl.apply(body, check=False)
    assert result.returncode != 0, f"{case}: accepted by the API server"
    assert field in result.stderr, f"{case}: the refusal does not name {field}: {result.stderr}"
    assert kubectl.get("vxe", unique_name, namespace) is None


def test_namespaced_mode_refuses_endpoints_outside_the_watched_namespaces(
    kubectl: Kubectl, namespace: str, unique_name: str
) -> None:
    """The chart's ValidatingAdmissionPolicy, as `helm template` renders it with watchNamespaces, judged by
    the real API server: refused elsewhere with the watched namespaces named, admitted where watched."""
    helm = shutil.which("helm") or str(ROOT / ".tools" / "helm")
    chart = str(ROOT / "charts" / "voxtral-operator")
    only = ("--show-only", "templates/admissionpolicy.yaml")
    rendered = subprocess.run(
        [
            helm,
            "template",
            "vap",
            chart,
            "--namespace",
            "voxtral-system",
            "--set",
            f"watchNamespaces={{{namespace}}}",
            *only,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    elsewhere = yaml.safe_dump(endpoint_body(unique_name, "default"))

    def create_elsewhere() -> subprocess.CompletedProcess[str]:
        return kubectl.run("create", "--dry-run=server", "-f", "-", stdin=elsewhere, check=False)

    kubectl.run("apply", "-f", "-", stdin=rendered)
    try:

        def refused() -> str | None:
            result = create_elsewhere()
            return result.stderr if result.returncode != 0 else None

        # A new policy takes effect once the API server's admission plugin has synced it.
        message = eventually(refused, timeout=60, what="an endpoint in an unwatched namespace refused")
        assert f"only in the namespaces {namespace} (chart value watchNamespaces)" in message, message
        watched = endpoint_body(unique_name, namespace)
        kubectl.run("create", "--dry-run=server", "-f", "-", stdin=yaml.safe_dump(watched))
    finally:
        kubectl.run("delete", "-f", "-", "--wait=true", stdin=rendered, check=False)
        # The admission plugin drops a deleted policy as lazily as it picks a new one up; the tests after
        # this one create endpoints in their own namespaces and must not meet it.
        refusals: list[str] = []

        def admitted_again() -> bool:
            result = create_elsewhere()
            refusals.append(result.stderr.strip())
            return result.returncode == 0

        try:
            eventually(admitted_again, timeout=120, what="the deleted admission policy no longer refusing endpoints")
        except AssertionError as stuck:
            raise AssertionError(f"{stuck}; last refusal: {refusals[-1]}") from None
