"""The scaling policy, as a table: observation and history in, replicas and reason out."""

from __future__ import annotations

import pytest

from voxtral_operator.autoscale.policy import Decision, History, Limits, Observation, decide

LIMITS = Limits(
    min_replicas=1,
    max_replicas=6,
    target_queue_depth=4,
    scale_down_delay_seconds=300,
    max_scale_up_step=2,
    max_num_seqs=8,
)


def seen(
    replicas: int, ready: int | None = None, waiting: float = 0, running: float = 0, scraped: int | None = None
) -> Observation:
    ready = replicas if ready is None else ready
    return Observation(
        replicas=replicas, ready=ready, scraped=ready if scraped is None else scraped, waiting=waiting, running=running
    )


CASES = [
    # (observation, history, now, expected replicas, reason fragment, expected low_since)
    pytest.param(seen(1, waiting=4), History(), 0, 1, "within target", None, id="queue-at-target-holds"),
    pytest.param(seen(1, waiting=5), History(), 0, 2, "queue 5 > 4", None, id="just-over-target-adds-one"),
    pytest.param(seen(1, waiting=40), History(), 0, 3, "queue 40", None, id="spike-bounded-by-step"),
    pytest.param(seen(5, waiting=100), History(), 0, 6, "queue 100", None, id="spike-bounded-by-max"),
    pytest.param(seen(6, waiting=100), History(), 0, 6, "at maxReplicas", None, id="at-max-holds"),
    pytest.param(
        seen(3, ready=1, waiting=20, running=8),
        History(),
        0,
        3,
        "2 replica(s) loading",
        None,
        id="holds-while-loading-capacity-suffices",
    ),
    pytest.param(
        seen(3, ready=1, waiting=60, running=8),
        History(),
        0,
        5,
        "queue 60",
        None,
        id="loading-capacity-overflowed-scales-on",
    ),
    pytest.param(seen(2, waiting=0, running=3), History(), 100, 2, "low load for 0s", 100, id="low-starts-timer"),
    pytest.param(
        seen(2, waiting=0, running=3), History(100), 399, 2, "low load for 299s", 100, id="low-not-long-enough"
    ),
    pytest.param(
        seen(3, waiting=0, running=3), History(100), 400, 2, "low load for 300s", 100, id="low-long-enough-removes-one"
    ),
    pytest.param(
        seen(2, waiting=0, running=9), History(100), 1000, 2, "within target", None, id="running-would-not-fit-on-fewer"
    ),
    pytest.param(
        seen(2, waiting=1, running=1), History(100), 1000, 2, "within target", None, id="anything-waiting-is-not-low"
    ),
    pytest.param(seen(1, waiting=0), History(0), 1000, 1, "within target", None, id="never-below-min"),
    pytest.param(
        seen(3, waiting=0, scraped=2),
        History(0),
        1000,
        3,
        "metrics missing from 1",
        None,
        id="missing-metrics-never-shrink",
    ),
    pytest.param(
        seen(2, waiting=20, scraped=1), History(), 0, 4, "queue 20", None, id="missing-metrics-still-scale-up"
    ),
    pytest.param(seen(8, waiting=0), History(), 0, 6, "outside [1, 6]", None, id="clamped-to-max"),
    pytest.param(seen(0, ready=0), History(), 0, 1, "outside [1, 6]", None, id="clamped-to-min"),
]


@pytest.mark.parametrize(("observation", "history", "now", "replicas", "reason", "low_since"), CASES)
def test_decide(
    observation: Observation, history: History, now: float, replicas: int, reason: str, low_since: float | None
) -> None:
    decision = decide(LIMITS, observation, history, now)
    assert decision.replicas == replicas
    assert reason in decision.reason
    assert decision.history.low_since == low_since


def test_scale_down_is_one_at_a_time_each_after_the_delay() -> None:
    history, replicas, now, removed_at = History(), 4, 0.0, []
    while now <= 2000:
        decision: Decision = decide(LIMITS, seen(replicas, waiting=0, running=1), history, now)
        if decision.replicas < replicas:
            assert decision.replicas == replicas - 1
            removed_at.append(now)
        replicas, history, now = decision.replicas, decision.history, now + 10
    assert removed_at == [300.0, 330.0, 360.0]
    assert replicas == 1
