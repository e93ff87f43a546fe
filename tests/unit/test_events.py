"""Events as the operator posts them: the body the API server validates, and when a repeat is written."""

from __future__ import annotations

import datetime

import pytest

from voxtral_operator import events
from voxtral_operator.events import Series, write_due

ENDPOINT = {
    "apiVersion": "voxtral.dev/v1alpha1",
    "kind": "VoxtralEndpoint",
    "metadata": {"name": "mini", "namespace": "speech", "uid": "u-1", "resourceVersion": "42", "labels": {"a": "b"}},
    "spec": {},
}


def test_the_body_is_an_events_k8s_io_v1_event_about_the_endpoint() -> None:
    moment = datetime.datetime(2026, 11, 25, 9, 34, 3, 512000, tzinfo=datetime.UTC)
    body = events.event_body(
        name="mini.1a2b",
        regarding=events.regarding_of(ENDPOINT),
        type_="Normal",
        reason="Created",
        action=events.action_for("Created"),
        note="created Deployment/mini",
        instance="voxtral-operator-6d8f9-x2x",
        now=moment,
    )
    assert body == {
        "apiVersion": "events.k8s.io/v1",
        "kind": "Event",
        "metadata": {"name": "mini.1a2b", "namespace": "speech"},
        "eventTime": "2026-11-25T09:34:03.512000Z",
        "reportingController": "voxtral.dev/voxtral-operator",
        "reportingInstance": "voxtral-operator-6d8f9-x2x",
        "action": "Create",
        "reason": "Created",
        "type": "Normal",
        "note": "created Deployment/mini",
        # No resourceVersion: repeats of an event about a changing endpoint are the same event.
        "regarding": {
            "apiVersion": "voxtral.dev/v1alpha1",
            "kind": "VoxtralEndpoint",
            "namespace": "speech",
            "name": "mini",
            "uid": "u-1",
        },
    }


@pytest.mark.parametrize(
    ("reason", "action"),
    [
        ("Created", "Create"),
        ("Updated", "Update"),
        ("Scaled", "Scale"),
        ("ScaledReplicasUp", "Scale"),
        ("ScaledReplicasDown", "Scale"),
        ("InvalidSpec", "Validate"),
        ("NameConflict", "Apply"),
        ("ApplyRejected", "Apply"),
        ("Ready", "Reconcile"),
        ("CrashLoop", "Reconcile"),
        ("ReconcileFailed", "Reconcile"),
    ],
)
def test_every_reason_has_a_real_action(reason: str, action: str) -> None:
    assert events.action_for(reason) == action


@pytest.mark.parametrize(
    ("text", "limit", "expected"),
    [("short", 1024, "short"), ("a" * 1030, 1024, "a" * 1024), ("é" * 600, 1024, "é" * 512), ("aé", 2, "a")],
    ids=["short", "ascii", "two-byte-characters", "no-half-character"],
)
def test_notes_fit_the_api_servers_byte_limit(text: str, limit: int, expected: str) -> None:
    assert events.truncate_bytes(text, limit) == expected


WRITES = [
    # count, written count, seconds since the last write, due?
    pytest.param(1, 0, float("inf"), True, id="first-sight-creates"),
    pytest.param(2, 1, 0.0, True, id="first-repeat-starts-the-series-at-once"),
    pytest.param(3, 2, 1.0, False, id="later-repeats-wait"),
    pytest.param(9, 2, 59.9, False, id="still-within-the-refresh"),
    pytest.param(9, 2, 60.0, True, id="count-written-after-the-refresh"),
    pytest.param(9, 9, 3600.0, False, id="nothing-new-nothing-written"),
    pytest.param(1, 1, 3600.0, False, id="steady-state"),
]


@pytest.mark.parametrize(("count", "written", "since", "due"), WRITES)
def test_when_a_series_is_written(count: int, written: int, since: float, due: bool) -> None:
    series = Series(body={}, count=count, written_count=written, last_write=1000.0 - since)
    assert write_due(series, 1000.0, refresh_seconds=60.0) is due
