"""The operator's log, from the real `voxtral-operator run` process at its default level.

Every line has a time and a level; every line about the endpoint names it; each child created,
updated, deleted or refused is one INFO line with its reason; phase changes are logged; kopf's
per-handler lines are not.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from voxtral_testbed.harness import Kube, condition, endpoint_path, eventually
from voxtral_testbed.sandbox import Sandbox

pytestmark = pytest.mark.integration

NS = "team"
NAME = "asr"
SERVICE = f"/api/v1/namespaces/{NS}/services/{NAME}"
DEPLOYMENT = f"/apis/apps/v1/namespaces/{NS}/deployments/{NAME}"
PVC = f"/api/v1/namespaces/{NS}/persistentvolumeclaims/{NAME}-cache"


class Operator:
    """`voxtral-operator run` as an administrator starts it: default level, no --verbose."""

    def __init__(self, sandbox: Sandbox, tmp_path: Path, *args: str) -> None:
        config = tmp_path / "config.yaml"
        config.write_text("servingCheckSeconds: 0\n")
        self.path = tmp_path / "operator.log"
        command = [sys.executable, "-m", "voxtral_operator.cli", "run", "--liveness", "", "--metrics-port", "0"]
        self.process = subprocess.Popen(
            [*command, "--config", str(config), *args],
            env={**os.environ, "KUBECONFIG": str(sandbox.kubeconfig)},
            stdout=self.path.open("wb"),
            stderr=subprocess.STDOUT,
        )

    def lines(self) -> list[str]:
        return self.path.read_text().splitlines()

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=15)


@pytest.fixture
def start(sandbox: Sandbox, tmp_path: Path) -> Iterator[Any]:
    started: list[Operator] = []

    def run(*args: str) -> Operator:
        started.append(Operator(sandbox, tmp_path, *args))
        return started[-1]

    yield run
    for operator in started:
        if operator.process.poll() is None:
            operator.stop()


def endpoint(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "voxtral.dev/v1alpha1",
        "kind": "VoxtralEndpoint",
        "metadata": {"name": NAME, "namespace": NS},
        "spec": {"model": "mistralai/Voxtral-Mini-3B-2507", "gpu": {"type": "L4-24GB"}, **spec},
    }


async def ready(kube: Kube) -> dict[str, Any] | None:
    current = await kube.get(endpoint_path(NS, NAME))
    return current if condition(current, "Ready").get("status") == "True" else None


def about_endpoint(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in entries if e.get("endpoint") == f"{NS}/{NAME}"]


def child_lines(entries: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    return [(e["verb"], e["kind"], e["reason"]) for e in entries if e.get("event", "").startswith("child_")]


async def test_json_log_of_an_endpoints_life(sandbox: Sandbox, kube: Kube, start: Any) -> None:
    operator = start("--log-format", "json")
    # Someone else's Service holds the endpoint's name: refused (once, however often it is retried).
    foreign = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": NAME, "namespace": NS}}
    foreign["spec"] = {"ports": [{"port": 80}]}
    await kube.create(f"/api/v1/namespaces/{NS}/services", foreign)
    await kube.create(endpoint_path(NS), endpoint(modelCache={"size": "40Gi"}))

    async def conflicted() -> bool:
        current = await kube.get(endpoint_path(NS, NAME))
        return condition(current, "Degraded").get("reason") == "NameConflict"

    await eventually(conflicted, timeout=30)
    await asyncio.sleep(2.5)  # a few retries of the refused apply
    await kube.delete(SERVICE)
    await eventually(lambda: ready(kube), timeout=60)

    # A hand edit is put back, a deleted child recreated, a child the spec drops deleted.
    await kube.merge(DEPLOYMENT, {"spec": {"template": {"spec": {"terminationGracePeriodSeconds": 1}}}})
    await eventually(lambda: _grace_restored(kube), timeout=30)
    await kube.delete(SERVICE)
    await eventually(lambda: kube.get(SERVICE), timeout=30)
    await kube.merge(endpoint_path(NS, NAME), {"spec": {"modelCache": None}})
    await eventually(lambda: _gone(kube, PVC), timeout=30)
    await kube.delete(endpoint_path(NS, NAME))
    await eventually(lambda: _logged(operator, '"event": "endpoint_deleted"'), timeout=30)
    operator.stop()

    entries = [json.loads(line) for line in operator.lines()]  # every line is one JSON object
    for entry in entries:
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", entry["time"]), entry
        assert entry["level"] in {"debug", "info", "warning", "error", "critical"}, entry
    assert not [e for e in entries if re.match(r"(Handler|Activity) '.*' succeeded", e["message"])]

    children = child_lines(about_endpoint(entries))
    assert children.count(("refused", "Service", "exists and is not owned by this endpoint")) == 1
    # Each child (the vLLM side's and the gateway's) created once; none recreated by a later pass.
    lines = [e for e in about_endpoint(entries) if e.get("event") == "child_created"]
    created = Counter((e["kind"], e["child"]) for e in lines if (e["kind"], e["child"]) != ("Service", NAME))
    for kind in ("PersistentVolumeClaim", "Deployment", "PodDisruptionBudget", "NetworkPolicy"):
        assert any(k == kind for k, _ in created), (kind, created)
    assert set(created.values()) == {1}, created
    # The endpoint's own Service: after the foreign one went, and after the delete.
    own_service = [e["reason"] for e in lines if (e["kind"], e["child"]) == ("Service", NAME)]
    assert own_service == ["missing", "missing"], lines
    assert ("updated", "Deployment", "the live object drifted from the spec (edited by hand?)") in children
    assert ("updated", "Deployment", "the spec changed it") in children  # the cache volume went away
    assert children.count(("deleted", "PersistentVolumeClaim", "the spec no longer asks for it")) == 1, children

    phases = [(e["from"], e["to"]) for e in about_endpoint(entries) if e.get("event") == "phase_changed"]
    assert phases[0][0] is None, phases
    assert phases[-1][1] == "Ready", phases  # nothing after the delete brings the endpoint back
    assert all(old != new for old, new in phases)
    assert all(phases[i][1] == phases[i + 1][0] for i in range(len(phases) - 1)), phases  # each change once
    # The operator's own lines about the endpoint all say which one; none about it lacks it.
    ours = [e for e in entries if e["logger"].startswith("voxtral_operator")]
    assert not [e for e in ours if NAME in e["message"] and "endpoint" not in e and "kind" not in e]


async def test_text_log_lines_name_time_level_and_endpoint(sandbox: Sandbox, kube: Kube, start: Any) -> None:
    operator = start()
    await kube.create(endpoint_path(NS), endpoint())
    await eventually(lambda: ready(kube), timeout=60)
    operator.stop()
    lines = operator.lines()
    pattern = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (DEBUG|INFO|WARNING|ERROR|CRITICAL) +\S.*"
    assert all(re.fullmatch(pattern, line) for line in lines if not line.startswith((" ", "Traceback"))), lines
    assert any(line.endswith(f" INFO    {NS}/{NAME}: created Deployment {NAME}: missing") for line in lines), lines
    assert any(
        f" INFO    {NS}/{NAME}: phase " in line and line.endswith("-> Ready (Available: 1/1 replicas ready)")
        for line in lines
    ), lines
    assert not [line for line in lines if "' succeeded." in line]


async def _grace_restored(kube: Kube) -> bool:
    deployment = await kube.get(DEPLOYMENT)
    return bool(deployment) and deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] != 1


async def _logged(operator: Operator, text: str) -> bool:
    return any(text in line for line in operator.lines())


async def _gone(kube: Kube, path: str) -> bool:
    return await kube.get(path) is None
