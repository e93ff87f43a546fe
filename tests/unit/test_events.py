"""Events as the operator posts them: the body the API server validates, and when a repeat is written."""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import Callable
from typing import Any

import pytest

from voxtral_operator import events
from voxtral_operator.events import JSON, EventRecorder, Series, write_due
from voxtral_operator.k8s.client import ApiClient, ApiError, Connection, NotFound

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


class FakeApi(ApiClient):
    """The API server as far as Events and endpoints go: namespaces that can be deleted and recreated,
    endpoints by name with a uid. Every request the recorder makes goes through `request`."""

    def __init__(self) -> None:
        super().__init__(Connection(server="http://api.invalid"), attempts=1)
        self.namespaces: set[str] = {"speech"}
        self.endpoints: dict[tuple[str, str], str] = {("speech", "mini"): "u-1"}  # (namespace, name) -> uid
        self.events: dict[tuple[str, str], JSON] = {}
        self.writes: list[str] = []
        self.requests = 0
        self.unavailable = False

    async def request(self, method: str, path: str, **kwargs: Any) -> JSON:
        self.requests += 1
        parts = path.strip("/").split("/")
        namespace, plural = parts[parts.index("namespaces") + 1], parts[parts.index("namespaces") + 2]
        if method != "GET":
            self.writes.append(f"{method} {namespace}")
        if self.unavailable:
            raise ApiError(503, "ServiceUnavailable", "the server is restarting")
        if namespace not in self.namespaces:
            raise NotFound(404, "NotFound", f'namespaces "{namespace}" not found')
        if plural == "voxtralendpoints":
            uid = self.endpoints.get((namespace, parts[-1]))
            if uid is None:
                raise NotFound(404, "NotFound", "not found")
            return {"metadata": {"name": parts[-1], "namespace": namespace, "uid": uid}}
        body = kwargs["body"]
        if method == "POST":
            self.events[namespace, body["metadata"]["name"]] = body
            return body
        event = self.events.get((namespace, parts[-1]))
        if event is None:
            raise NotFound(404, "NotFound", "not found")
        event.update(body)
        return event

    def delete_namespace(self, name: str) -> None:
        self.namespaces.discard(name)
        self.endpoints = {key: uid for key, uid in self.endpoints.items() if key[0] != name}
        self.events = {key: event for key, event in self.events.items() if key[0] != name}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def refreshes(recorder: EventRecorder, clock: Clock, count: int = 1) -> None:
    """REFRESH_SECONDS pass `count` times, each time with the writes then due made."""
    for _ in range(count):
        clock.now += 60.0
        recorder.flush_due()
        await recorder.drain()


async def until(check: Callable[[], bool], recorder: EventRecorder) -> None:
    """Let the recorder's retries (after RETRY_DELAYS, here a few ms) run until check() holds."""
    for _ in range(200):
        await asyncio.sleep(0.01)
        await recorder.drain()
        if check():
            return
    raise AssertionError("not within 2 s")


QUICK_RETRIES = (0.01, 0.01, 0.01, 0.01)


async def recorded_in_an_outage(api: FakeApi, clock: Clock) -> EventRecorder:
    """An event about endpoint mini-1 happens while the API server answers 503."""
    api.endpoints[("speech", "mini-1")] = "u-1-1"
    recorder = EventRecorder(api, instance="op-0", clock=clock, refresh_seconds=60.0, retry_delays=QUICK_RETRIES)
    api.unavailable = True
    recorder.record(endpoint(1), "Normal", "Created", "created Deployment")
    await recorder.drain()
    api.unavailable = False
    return recorder


def endpoint(number: int, namespace: str = "speech", uid: str = "u-1") -> JSON:
    return {**ENDPOINT, "metadata": {"name": f"mini-{number}", "namespace": namespace, "uid": f"{uid}-{number}"}}


async def test_events_of_a_deleted_namespace_are_dropped_not_retried() -> None:
    api, clock = FakeApi(), Clock()
    recorder = EventRecorder(api, instance="op-0", clock=clock, refresh_seconds=60.0)
    api.delete_namespace("speech")
    for number in range(50):
        recorder.record(endpoint(number), "Normal", "Created", "created Deployment")
    await recorder.drain()
    # The first create answers 404 (the namespace is gone): every series of that namespace goes with it.
    assert api.writes == ["POST speech"]
    await refreshes(recorder, clock, 20)  # twenty refreshes later nothing is retried and nothing is held
    assert api.writes == ["POST speech"]
    assert not recorder._series


async def test_a_recreated_namespace_never_receives_the_events_of_its_predecessor() -> None:
    api, clock = FakeApi(), Clock()
    recorder = await recorded_in_an_outage(api, clock)
    # Meanwhile the namespace is deleted and made again, with an endpoint of the same name (another uid).
    api.delete_namespace("speech")
    api.namespaces.add("speech")
    api.endpoints[("speech", "mini-1")] = "u-2-1"
    await refreshes(recorder, clock)
    assert api.events == {}
    assert not recorder._series


async def test_other_failures_are_retried_a_bounded_number_of_times() -> None:
    api, clock = FakeApi(), Clock()
    recorder = await recorded_in_an_outage(api, clock)
    api.unavailable = True  # and stays down
    await until(lambda: not recorder._series, recorder)
    await refreshes(recorder, clock, 10)
    # A create, then before each retry a look at the endpoint's uid: each failed, and then no more.
    assert api.requests == events.MAX_WRITE_ATTEMPTS


async def test_a_create_that_failed_in_an_outage_is_made_within_seconds_when_the_endpoint_is_still_there() -> None:
    api, clock = FakeApi(), Clock()
    recorder = await recorded_in_an_outage(api, clock)
    await until(lambda: bool(api.events), recorder)  # no refresh passes: retried after RETRY_DELAYS
    (event,) = api.events.values()
    assert event["regarding"]["uid"] == "u-1-1"


async def test_a_deleted_endpoints_unwritten_events_are_forgotten() -> None:
    api, clock = FakeApi(), Clock()
    recorder = EventRecorder(api, instance="op-0", clock=clock, refresh_seconds=60.0)
    api.unavailable = True
    recorder.record(endpoint(1), "Normal", "Created", "created Deployment")
    recorder.record(endpoint(2), "Normal", "Created", "created Deployment")
    await recorder.drain()
    recorder.forget("speech", "u-1-1")
    assert [key[1] for key in recorder._series] == ["u-1-2"]
    recorder.forget("speech")
    assert not recorder._series


async def test_an_event_that_expired_is_not_patched_again() -> None:
    api, clock = FakeApi(), Clock()
    recorder = EventRecorder(api, instance="op-0", clock=clock, refresh_seconds=60.0)
    recorder.record(ENDPOINT, "Warning", "CrashLoop", "crash-looping")
    await recorder.drain()
    api.events.clear()  # the API server's event TTL took it
    recorder.record(ENDPOINT, "Warning", "CrashLoop", "crash-looping")  # the first repeat patches at once: 404
    await recorder.drain()
    await refreshes(recorder, clock, 5)
    assert api.writes == ["POST speech", "PATCH speech"]
    recorder.record(ENDPOINT, "Warning", "CrashLoop", "crash-looping")  # the next occurrence is a new Event
    await recorder.drain()
    assert api.writes == ["POST speech", "PATCH speech", "POST speech"]
    assert len(api.events) == 1


class SlowApi(FakeApi):
    """Each request takes a while (a busy API server); counts how many are in flight at once."""

    def __init__(self) -> None:
        super().__init__()
        self.in_flight = 0
        self.most_in_flight = 0

    async def request(self, method: str, path: str, **kwargs: Any) -> JSON:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(0.01)
            return await super().request(method, path, **kwargs)
        finally:
            self.in_flight -= 1


async def test_a_burst_of_events_is_written_several_at_a_time_each_series_in_order() -> None:
    api, clock = SlowApi(), Clock()
    recorder = EventRecorder(api, instance="op-0", clock=clock, refresh_seconds=60.0)
    for number in range(40):
        api.endpoints[("speech", f"mini-{number}")] = f"u-1-{number}"
        recorder.record(endpoint(number), "Normal", "Created", "created Deployment")
        recorder.record(endpoint(number), "Normal", "Created", "created Deployment")  # a repeat: its series patched
    await recorder.drain()
    assert api.most_in_flight == events.WRITERS, f"at most {api.most_in_flight} writes in flight"
    # Every series was created, then its repeat counted: a patch never overtook its create.
    assert len(api.events) == 40
    assert all((event.get("series") or {}).get("count") == 2 for event in api.events.values()), api.events


class HangingApi(FakeApi):
    """An API server that accepts a write and never answers it."""

    async def request(self, method: str, path: str, **kwargs: Any) -> JSON:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


async def test_closing_gives_up_on_writes_that_never_end_and_stops_every_writer() -> None:
    recorder = EventRecorder(HangingApi(), instance="op-0")
    recorder.record(endpoint(1), "Normal", "Created", "created Deployment")
    await asyncio.sleep(0)  # a writer has taken the write and waits for the server
    await asyncio.wait_for(recorder.close(grace_seconds=0.05), timeout=30)
    assert [t for t in asyncio.all_tasks() if t.get_name().startswith("event writer")] == []
