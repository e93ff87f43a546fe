"""Events from the operator: events.k8s.io/v1, from `voxtral-operator`, with real actions, repeats in a series.

The recorder talks to the API server stand-in over HTTP through the operator's own ApiClient;
the last test runs the real `voxtral-operator run` process.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from voxtral_operator.events import REPORTING_CONTROLLER, EventRecorder
from voxtral_operator.k8s.client import ApiClient, Connection
from voxtral_testbed.apiserver import writes
from voxtral_testbed.harness import Kube, OperatorProcess, condition, endpoint_path, eventually
from voxtral_testbed.sandbox import Sandbox

pytestmark = pytest.mark.integration

NS = "team"
EVENTS = "events.k8s.io/v1/events"
ENDPOINT = {
    "apiVersion": "voxtral.dev/v1alpha1",
    "kind": "VoxtralEndpoint",
    "metadata": {"name": "asr", "namespace": NS, "uid": "0f7c1a52-0000-4000-8000-000000000001"},
}


@pytest.fixture
async def client(sandbox: Sandbox) -> AsyncIterator[ApiClient]:
    api = ApiClient(Connection(server=sandbox.url))
    yield api
    await api.close()


def event_writes(sandbox: Sandbox) -> list[str]:
    return [f"{r.method.name} {r.url.path}" for r in writes(sandbox.api) if "/events" in r.url.path]


async def test_an_event_is_created_once_and_repeats_fold_into_its_series(sandbox: Sandbox, client: ApiClient) -> None:
    recorder = EventRecorder(client, instance="voxtral-operator-0", refresh_seconds=0.5)
    recorder.record(ENDPOINT, "Warning", "CrashLoop", "pod asr-1 is crash-looping")
    await recorder.drain()
    (event,) = sandbox.api.objects_of(EVENTS, NS)
    assert event["reportingController"] == REPORTING_CONTROLLER
    assert event["reportingInstance"] == "voxtral-operator-0"
    assert (event["type"], event["reason"], event["action"]) == ("Warning", "CrashLoop", "Reconcile")
    assert event["regarding"]["name"] == "asr"
    assert "series" not in event

    for _ in range(5):
        recorder.record(ENDPOINT, "Warning", "CrashLoop", "pod asr-1 is crash-looping")
    await recorder.drain()
    (event,) = sandbox.api.objects_of(EVENTS, NS)
    assert event["series"]["count"] == 6  # the first repeat is written at once, with the count by then
    assert len(event_writes(sandbox)) == 2  # a create and a patch

    for _ in range(3):  # within the refresh period: counted, not written yet
        recorder.record(ENDPOINT, "Warning", "CrashLoop", "pod asr-1 is crash-looping")
    await recorder.drain()
    assert len(event_writes(sandbox)) == 2

    async def counted() -> dict[str, Any] | None:  # the refresh writes the rest of the count
        (current,) = sandbox.api.objects_of(EVENTS, NS)
        return current if current["series"]["count"] == 9 else None

    await eventually(counted, timeout=10)
    assert len(event_writes(sandbox)) == 3
    await asyncio.sleep(1.5)  # three refresh periods with nothing new: no writes
    assert len(event_writes(sandbox)) == 3


async def test_different_notes_are_different_events(sandbox: Sandbox, client: ApiClient) -> None:
    recorder = EventRecorder(client)
    recorder.record(ENDPOINT, "Normal", "ScaledReplicasUp", "replicas 1 -> 2: queue 12 > 8")
    recorder.record(ENDPOINT, "Normal", "ScaledReplicasUp", "replicas 2 -> 4: queue 30 > 16")
    await recorder.drain()
    notes = sorted(e["note"] for e in sandbox.api.objects_of(EVENTS, NS))
    assert notes == ["replicas 1 -> 2: queue 12 > 8", "replicas 2 -> 4: queue 30 > 16"]
    assert {e["action"] for e in sandbox.api.objects_of(EVENTS, NS)} == {"Scale"}


async def test_the_operator_posts_its_events_as_voxtral_operator(
    sandbox: Sandbox, kube: Kube, operator: OperatorProcess
) -> None:
    await kube.create(
        endpoint_path(NS),
        {
            **ENDPOINT,
            "metadata": {"name": "asr", "namespace": NS},
            "spec": {"model": "mistralai/Voxtral-Mini-3B-2507", "gpu": {"type": "L4-24GB"}},
        },
    )

    async def ready_event() -> list[dict[str, Any]] | None:
        found = sandbox.api.objects_of(EVENTS, NS)
        return found if any(e["reason"] == "Ready" for e in found) else None

    found = await eventually(ready_event, timeout=30)
    current = await kube.get(endpoint_path(NS, "asr"))
    assert condition(current, "Ready")["status"] == "True"
    by_reason = {e["reason"]: e for e in found}
    assert by_reason["Created"]["action"] == "Create"
    assert by_reason["Ready"]["action"] == "Reconcile"
    for event in found:
        assert event["reportingController"] == "voxtral.dev/voxtral-operator"
        assert event["reportingInstance"]
        assert event["regarding"]["uid"] == current["metadata"]["uid"]
    assert sandbox.api.objects_of("v1/events", NS) == []  # nothing from kopf, "Action?"


async def test_closing_makes_the_queued_writes_and_stops_the_writers(sandbox: Sandbox, client: ApiClient) -> None:
    recorder = EventRecorder(client)
    for number in range(3):
        recorder.record(ENDPOINT, "Normal", "ScaledReplicasUp", f"replicas {number} -> {number + 1}")
    await recorder.close()  # no drain first: close makes what is queued
    assert len(sandbox.api.objects_of(EVENTS, NS)) == 3
    writers = [t for t in asyncio.all_tasks() if t.get_name().startswith("event writer")]
    assert writers == []


async def test_a_stopped_operator_leaves_kopf_no_task_of_its_own_to_wait_for(
    sandbox: Sandbox, kube: Kube, operator: OperatorProcess
) -> None:
    """kopf waits 5 s for tasks it did not start before it cancels them; the operator's event writers
    are stopped at cleanup, so SIGTERM ends it at once (a rollout or a handover is not held up)."""
    await kube.create(
        endpoint_path(NS),
        {
            **ENDPOINT,
            "metadata": {"name": "asr", "namespace": NS},
            "spec": {"model": "mistralai/Voxtral-Mini-3B-2507", "gpu": {"type": "L4-24GB"}},
        },
    )

    async def posted() -> list[dict[str, Any]] | None:
        return sandbox.api.objects_of(EVENTS, NS) or None

    await eventually(posted, timeout=30)  # its event writers are running
    operator.stop()
    log = operator.log()
    assert "Activity 'close_client' succeeded." in log, log[-3000:]
    assert "Hung tasks stopping is skipped: no tasks given." in log, log[-3000:]
