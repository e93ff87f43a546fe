"""Log lines: what each format prints, what names the endpoint, what is dropped (tables)."""

from __future__ import annotations

import contextvars
import json
import logging
import sys
from typing import Any

import pytest

from voxtral_operator import logs

CREATED = 1_764_063_243.512  # 2025-11-25T09:34:03.512Z


def record(
    message: str = "hello", *, name: str = "voxtral_operator.children", level: int = logging.INFO, **extra: Any
) -> logging.LogRecord:
    made = logging.LogRecord(name, level, __file__, 1, message, None, None)
    made.created = CREATED
    for key, value in extra.items():
        setattr(made, key, value)
    return made


ENDPOINT_REF = {"apiVersion": "voxtral.dev/v1alpha1", "kind": "VoxtralEndpoint", "namespace": "speech", "name": "mini"}
POD_REF = {"apiVersion": "v1", "kind": "Pod", "namespace": "speech", "name": "mini-7d9f-x2"}

TEXT_LINES = [
    (record(), "2025-11-25T09:34:03.512Z INFO    hello"),
    (record(endpoint=("speech", "mini")), "2025-11-25T09:34:03.512Z INFO    speech/mini: hello"),
    (
        record(level=logging.WARNING, name="kopf.objects", k8s_ref=ENDPOINT_REF),
        "2025-11-25T09:34:03.512Z WARNING speech/mini: hello",
    ),
    (record(name="kopf.objects", k8s_ref=POD_REF), "2025-11-25T09:34:03.512Z INFO    Pod speech/mini-7d9f-x2: hello"),
]


@pytest.mark.parametrize(("made", "line"), TEXT_LINES)
def test_text_lines(made: logging.LogRecord, line: str) -> None:
    assert logs.TextFormatter().format(made) == line


def test_a_bound_endpoint_names_every_line_of_its_task_only() -> None:
    def in_task() -> str:
        logs.bind_endpoint(("speech", "mini"))
        return logs.TextFormatter().format(record("retrying PATCH", name="voxtral_operator.k8s.client"))

    assert contextvars.copy_context().run(in_task).endswith(" speech/mini: retrying PATCH")
    assert logs.TextFormatter().format(record("outside")).endswith("INFO    outside")


def test_json_lines_carry_the_endpoint_and_the_call_fields() -> None:
    made = record("created Deployment mini: missing", endpoint=("speech", "mini"), verb="created", kind="Deployment")
    assert json.loads(logs.JsonFormatter().format(made)) == {
        "time": "2025-11-25T09:34:03.512Z",
        "level": "info",
        "logger": "voxtral_operator.children",
        "message": "created Deployment mini: missing",
        "namespace": "speech",
        "name": "mini",
        "endpoint": "speech/mini",
        "verb": "created",
        "kind": "Deployment",
    }


def test_json_lines_of_kopf_objects_name_the_object_not_kopf_internals() -> None:
    made = record("Handler failed", name="kopf.objects", k8s_ref=POD_REF, k8s_skip=True, settings=object())
    entry = json.loads(logs.JsonFormatter().format(made))
    assert (entry["kind"], entry["namespace"], entry["name"]) == ("Pod", "speech", "mini-7d9f-x2")
    assert "endpoint" not in entry
    assert not {"k8s_ref", "k8s_skip", "settings"} & entry.keys()


def test_an_exception_is_one_json_line() -> None:
    made = record("tick failed")
    try:
        raise ValueError("boom")
    except ValueError:
        made.exc_info = sys.exc_info()
    line = logs.JsonFormatter().format(made)
    assert "\n" not in line
    assert "ValueError: boom" in json.loads(line)["exception"]


CHATTER = [
    ("kopf.objects", logging.INFO, "Handler 'pod_changed' succeeded.", False),
    ("kopf.objects", logging.INFO, "Handler 'deployments_changed/spec' succeeded.", False),
    ("kopf.activities", logging.INFO, "Activity 'login' succeeded.", False),
    ("kopf.objects", logging.ERROR, "Handler 'pod_changed' failed with an exception. Will retry.", True),
    ("kopf.reactor", logging.INFO, "Signal SIGTERM is received. Operator is stopping.", True),
    ("voxtral_operator.children", logging.INFO, "Handler 'x' succeeded.", True),
]


@pytest.mark.parametrize(("name", "level", "message", "kept"), CHATTER)
def test_kopf_per_handler_lines_are_dropped(name: str, level: int, message: str, kept: bool) -> None:
    assert logs.KopfChatterFilter().filter(record(message, name=name, level=level)) is kept


STARTING = (
    "GET https://127.0.0.1:6443/apis/voxtral.dev/v1alpha1/voxtralendpoints -> "
    "APITooManyRequestsError('storage is (re)initializing')"
)
RETRIES = [
    (f"Request attempt #1/9 failed; will retry: {STARTING}", "WARNING"),
    (f"Request attempt #2/9 failed; will retry: {STARTING}", "INFO"),
    (f"Request attempt #9/9 failed; escalating: {STARTING}", "ERROR"),
    ("Handler 'pod_changed' failed with an exception. Will retry.", "ERROR"),
]


@pytest.mark.parametrize(("message", "level"), RETRIES)
def test_kopf_retries_while_the_api_server_starts_are_not_errors(message: str, level: str) -> None:
    made = record(message, name="kopf._cogs.clients.api", level=logging.ERROR)
    assert logs.KopfRetryFilter().filter(made)
    assert made.levelname == level
    assert logs.TextFormatter().format(made).startswith(f"2025-11-25T09:34:03.512Z {level:<7} ")


DESIRED = {"metadata": {"annotations": {"voxtral.dev/applied-hash": "new"}}}
REASONS = [
    (None, "missing"),
    ({"metadata": {"annotations": {"voxtral.dev/applied-hash": "old"}}}, "the spec changed it"),
    ({"metadata": {}}, "the spec changed it"),
    (
        {"metadata": {"annotations": {"voxtral.dev/applied-hash": "new"}}},
        "the live object drifted from the spec (edited by hand?)",
    ),
]


def test_a_new_desired_object_under_an_unchanged_spec_is_put_down_to_the_operators_config() -> None:
    live = {"metadata": {"annotations": {"voxtral.dev/applied-hash": "old"}}}
    assert logs.change_reason(DESIRED, live, spec_changed=False) == "the operator's config (or version) changed it"


@pytest.mark.parametrize(("live", "reason"), REASONS)
def test_change_reasons(live: dict[str, Any] | None, reason: str) -> None:
    assert logs.change_reason(DESIRED, live) == reason


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, made: logging.LogRecord) -> None:
        self.records.append(made)


@pytest.fixture
def lines() -> Any:
    handler = Lines()
    root = logging.getLogger("voxtral_operator")
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield handler.records
    root.removeHandler(handler)
    root.setLevel(old_level)


def test_a_repeated_refusal_is_one_info_line_until_the_child_changes(lines: list[logging.LogRecord]) -> None:
    key = ("speech", "dedupe")
    for _ in range(3):
        logs.log_child_change(key, "refused", "Service", "dedupe", "exists and is not owned by this endpoint")
    logs.log_child_change(key, "created", "Service", "dedupe", "missing")
    logs.log_child_change(key, "refused", "Service", "dedupe", "exists and is not owned by this endpoint")
    assert [(r.levelno, r.getMessage().split()[0]) for r in lines] == [
        (logging.INFO, "refused"),
        (logging.DEBUG, "refused"),
        (logging.DEBUG, "refused"),
        (logging.INFO, "created"),
        (logging.INFO, "refused"),
    ]
    assert all(r.endpoint == key for r in lines)  # type: ignore[attr-defined]


def test_each_phase_change_is_one_line_and_deletion_ends_it(lines: list[logging.LogRecord]) -> None:
    key = ("speech", "phases")
    logs.log_phase_change(key, None, "Pending", "Pending", "waiting for the first replica")
    logs.log_phase_change(key, None, "Pending", "Pending", "waiting")  # written again while the cache is behind
    logs.log_phase_change(key, "Pending", "Loading", "Loading", "pod phases-1 is loading the model")
    logs.log_phase_change(key, "Pending", "Loading", "Loading", "pod phases-1 is loading the model")
    logs.log_phase_change(key, "Pending", None)  # a status write without a phase
    logs.log_endpoint_gone(key)
    logs.log_endpoint_gone(key)  # every later reconcile of the deleted endpoint
    logs.log_phase_change(key, None, "Pending")  # created again under the same name
    assert [r.getMessage() for r in lines] == [
        "phase (none) -> Pending (Pending: waiting for the first replica)",
        "phase Pending -> Loading (Loading: pod phases-1 is loading the model)",
        "deleted; its children go with it (owner references)",
        "phase (none) -> Pending",
    ]


def test_scale_decisions(lines: list[logging.LogRecord]) -> None:
    logs.log_scale_decision(("speech", "mini"), 1, 3, "queue 20 > 8 per ready replica")
    (line,) = lines
    assert line.getMessage() == "scale 1 -> 3 replicas: queue 20 > 8 per ready replica"
    assert (line.name, line.event, line.endpoint) == (  # type: ignore[attr-defined]
        "voxtral_operator.autoscale",
        "scaled",
        ("speech", "mini"),
    )
