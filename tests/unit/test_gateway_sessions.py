"""Admission of realtime sessions by open sessions per replica (gateway/sessions.py): a policy table."""

from __future__ import annotations

from voxtral_operator.gateway.sessions import Admission, Wait


def test_sessions_go_to_the_replica_with_fewest_open_then_wait_when_all_are_full() -> None:
    admission = Admission(per_replica=2)
    assert admission.admit() is Wait.NO_REPLICA
    admission.set_replicas(["b:8000", "a:8000"])
    placed = [admission.admit() for _ in range(4)]
    assert placed == ["a:8000", "b:8000", "a:8000", "b:8000"]
    assert admission.admit() is Wait.FULL
    admission.close("b:8000")
    assert admission.admit() == "b:8000"
    assert admission.open_by_replica() == {"a:8000": 2, "b:8000": 2}


def test_held_sessions_are_placed_first_come_first_served() -> None:
    admission = Admission(per_replica=1)
    first, second = admission.hold(), admission.hold()
    assert admission.admit(second) is Wait.NO_REPLICA
    admission.set_replicas(["a:8000"])
    assert admission.admit(second) is Wait.FULL  # the older one goes first
    assert admission.admit() is Wait.FULL  # and a newcomer does not jump the line
    assert admission.admit(first) == "a:8000"
    admission.close("a:8000")
    assert admission.admit(second) == "a:8000"
    assert admission.held == []


def test_a_leaving_replica_takes_no_new_session_and_is_reported_once_with_its_open_ones() -> None:
    admission = Admission(per_replica=4)
    admission.set_replicas(["a:8000", "b:8000"])
    assert admission.admit() == "a:8000"
    assert admission.set_replicas(["b:8000"]) == ["a:8000"]  # to drain
    assert admission.set_replicas(["b:8000"]) == []  # reported once
    assert [admission.admit() for _ in range(2)] == ["b:8000", "b:8000"]
    admission.close("a:8000")
    assert "a:8000" not in admission.replicas  # forgotten with its last session
    assert admission.set_replicas([]) == ["b:8000"]
    assert admission.admit() is Wait.NO_REPLICA


def test_a_replica_without_sessions_that_leaves_is_forgotten_at_once() -> None:
    admission = Admission(per_replica=4)
    admission.set_replicas(["a:8000"])
    assert admission.set_replicas([]) == []
    assert admission.replicas == {}


def test_a_replica_ready_again_before_its_drain_ends_takes_sessions_again() -> None:
    admission = Admission(per_replica=1)
    admission.set_replicas(["a:8000"])
    admission.admit()
    admission.set_replicas([])
    admission.set_replicas(["a:8000"])
    assert admission.replicas["a:8000"].leaving is False
    assert admission.admit() is Wait.FULL


def test_an_excluded_replica_is_skipped() -> None:
    admission = Admission(per_replica=1)
    admission.set_replicas(["a:8000", "b:8000"])
    assert admission.admit(None, frozenset({"a:8000"})) == "b:8000"
    assert admission.admit(None, frozenset({"a:8000"})) is Wait.FULL


def test_the_autoscaler_counts_open_realtime_sessions_as_running() -> None:
    from voxtral_operator.autoscale.scrape import parse_queue_metrics

    page = (
        'vllm:num_requests_waiting{engine="0",model_name="m"} 0.0\n'
        'vllm:num_requests_running{engine="0",model_name="m"} 3.0\n'
        "vllm:websocket_connections_active 7.0\n"
    )
    sample = parse_queue_metrics(page)
    assert sample is not None
    assert sample.running == 7  # seven sessions open, three transcribing now
    without = parse_queue_metrics(page.replace("vllm:websocket_connections_active 7.0\n", ""))
    assert without is not None
    assert without.running == 3
