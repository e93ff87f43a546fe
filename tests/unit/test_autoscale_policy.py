"""The scaling policy, as tables: observation and state in, replicas and an explanation out."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest

from voxtral_operator.autoscale.loop import AUTOSCALER_FIELD_MANAGER, replicas_writer, resumed_hold
from voxtral_operator.autoscale.policy import (
    PROFILE_BIN_SECONDS,
    PROFILE_BINS,
    WORKLOAD_POLICY,
    Decision,
    GatewaySample,
    Limits,
    ManualScale,
    Observation,
    PodSample,
    State,
    decide,
    prior_work_per_second,
    replicas_short,
)
from voxtral_operator.autoscale.scrape import parse_queue_metrics

# The workload policy's tables; the requests policy (the default) has its own in test_autoscale_requests.py.
LIMITS = Limits(
    min_replicas=1,
    max_replicas=6,
    policy=WORKLOAD_POLICY,
    max_num_seqs=8,
    prior_work_per_second=1000.0,
    cold_start_seconds=600.0,
    scale_down_delay_seconds=300.0,
    max_scale_up_step=2,
    target_queue_depth=4,
    target_utilization=0.5,
    node_retention_seconds=600.0,
)
NOW = 10 * 86400.0 + 12 * 3600  # noon, day 10
BIN = PROFILE_BIN_SECONDS


def pods(*kv: float, waiting: float = 0, running: float = 0) -> tuple[PodSample, ...]:
    """Ready pods at these KV-cache usages; the first carries the waiting and running requests."""
    return tuple(
        PodSample(f"pod-{i}", waiting if i == 0 else 0, running if i == 0 else 0, usage) for i, usage in enumerate(kv)
    )


def steady(demand: float, **more: Any) -> State:
    """A state that has seen `demand` replicas' worth for a long time, two seconds ago."""
    fields: dict[str, Any] = {"updated_at": NOW - 2, "demand": demand, "base": demand, "demand_fast": demand}
    return replace(State(), **(fields | more))


def profile_with(value: float, start: float, end: float) -> tuple[tuple[float | None, ...], ...]:
    """One day of history: `value` from `start` to `end` (seconds of the day), 0.5 elsewhere."""
    row = tuple(value if start <= i * BIN < end else 0.5 for i in range(PROFILE_BINS))
    return (row,)


def with_days(state: State, days: tuple[tuple[float | None, ...], ...]) -> State:
    """The state as the operator would read it back, with these days of profile."""
    data = state.to_dict() | {"days": [list(d) for d in days], "day": 9}
    return State.from_dict(data)


CASES = [
    # (limits, observation, state, expected replicas, fragment of the reason)
    pytest.param(LIMITS, Observation(2, 2, pods(0.4, 0.4)), steady(0.8), 2, "load within target", id="at-target-holds"),
    pytest.param(
        LIMITS,
        Observation(1, 1, pods(0.5, waiting=10, running=3)),
        State(),
        3,
        "queue 10 waiting, more than 4 tolerated",
        id="deep-queue-is-a-surge-at-once",
    ),
    pytest.param(
        LIMITS,
        Observation(4, 4, pods(0.5, 0.2, 0.2, 0.2, waiting=2, running=3)),
        steady(1.1, queue=2.0, growth=-0.5, queue_since=NOW - 30),
        4,
        "low load for 0s",
        id="draining-queue-on-a-big-fleet-is-not-worth-a-replica",
    ),
    pytest.param(
        LIMITS,
        Observation(2, 2, pods(0.5, 0.5, waiting=3, running=4)),
        steady(1.0, queue=60.0, growth=0.5, queue_since=NOW - 900, work_per_request=40000.0),
        4,
        "queue outlives a cold start",
        id="backlog-outliving-a-cold-start-adds-replicas",
    ),
    pytest.param(
        LIMITS,
        Observation(4, 2, pods(0.9, 0.9)),
        steady(1.8, loading_since=(NOW - 100, NOW - 100), ready=2),
        4,
        "load within target",
        id="loading-replicas-count-as-capacity-arriving",
    ),
    pytest.param(
        LIMITS,
        Observation(4, 2, pods(0.1, 0.1)),
        steady(0.2, loading_since=(NOW - 1000, NOW - 1000), ready=2, low_since=NOW - 900),
        4,
        "low load for 900s: 2 loading replica(s) kept until ready",
        id="loading-replicas-no-longer-needed-are-kept-until-ready",
    ),
    pytest.param(
        LIMITS,
        Observation(4, 2, pods(0.1, 0.1)),
        steady(0.2, loading_since=(NOW - 1300, NOW - 1300), ready=2, low_since=NOW - 200),
        2,
        "cancel 2 loading replica(s), overdue (1300s)",
        id="loading-overdue-by-two-cold-starts-is-cancelled",
    ),
    pytest.param(
        LIMITS,
        Observation(4, 2, pods(0.1, 0.1)),
        steady(0.2, loading_since=(NOW - 1300, NOW - 1300), ready=2, low_since=NOW - 60),
        4,
        "loading replicas unneeded for 60s of 120s",
        id="an-overdue-load-gets-a-grace-period",
    ),
    pytest.param(
        LIMITS,
        Observation(2, 2, pods(0.3, 0.3)),
        with_days(steady(0.6), profile_with(2.0, 12 * 3600 + 600, 14 * 3600)),
        3,
        "the profile expects more one cold start ahead",
        id="profile-floor-starts-replicas-before-the-ramp",
    ),
    pytest.param(
        LIMITS,
        Observation(4, 4, pods(0.1, 0.1, 0.1, 0.1)),
        with_days(steady(0.4, low_since=NOW - 1000), profile_with(2.0, 12 * 3600 + 900, 13 * 3600)),
        4,
        "the profile expects the load back",
        id="profile-holds-replicas-through-a-dip",
    ),
    pytest.param(
        LIMITS,
        Observation(3, 3, pods(0.1, 0.1, 0.1)),
        steady(0.3, low_since=NOW - 100),
        3,
        "low load for 100s of 300s",
        id="low-load-waits-for-the-delay",
    ),
    pytest.param(
        LIMITS,
        Observation(3, 3, pods(0.1, 0.1, 0.1)),
        steady(0.3, low_since=NOW - 300),
        2,
        "low load for 300s",
        id="low-load-long-enough-removes-one",
    ),
    pytest.param(
        LIMITS,
        Observation(3, 3, pods(0.1, 0.1, 0.1)),
        steady(0.3, low_since=NOW - 400, last_scale_down=NOW - 10),
        3,
        "next step down soon",
        id="one-step-down-at-a-time",
    ),
    pytest.param(
        LIMITS,
        Observation(3, 3, pods(0.0, 0.0)),
        steady(1.0, low_since=NOW - 1000),
        3,
        "metrics missing from 1 replica(s)",
        id="missing-metrics-never-shrink",
    ),
    pytest.param(
        LIMITS,
        Observation(3, 3, pods(0.1, 0.1, 0.1)),
        steady(0.3, low_since=NOW - 1000, panic_until=NOW + 30),
        3,
        "panic window",
        id="no-scale-down-during-panic",
    ),
    pytest.param(
        LIMITS,
        Observation(2, 2, pods(1.0, 1.0, waiting=3, running=8)),
        steady(0.4, demand_fast=2.0),
        4,
        "panic: short-window demand",
        id="sudden-demand-twice-the-replicas-panics",
    ),
    pytest.param(LIMITS, Observation(8, 8, pods(*[0.1] * 8)), steady(0.8), 6, "outside [1, 6]", id="clamped-to-max"),
    pytest.param(LIMITS, Observation(0, 0), State(), 1, "outside [1, 6]", id="clamped-to-min"),
    pytest.param(
        LIMITS,
        Observation(6, 6, pods(1.0, 1.0, 1.0, 1.0, 1.0, 1.0, waiting=40)),
        steady(6.0),
        6,
        "above maxReplicas",
        id="at-max-holds",
    ),
    pytest.param(
        replace(LIMITS, min_replicas=0, scale_to_zero_after_seconds=600),
        Observation(1, 1, pods(0.0), GatewaySample(0, 0, 0, seconds_since_last_request=900)),
        steady(0.0),
        0,
        "idle for 900s: scale to zero",
        id="idle-scales-to-zero",
    ),
    pytest.param(
        replace(LIMITS, min_replicas=0, scale_to_zero_after_seconds=600),
        Observation(1, 1, pods(0.0), GatewaySample(0, 0, 0, seconds_since_last_request=300)),
        steady(0.0),
        1,
        "load within target",
        id="not-idle-long-enough-stays",
    ),
    pytest.param(
        replace(LIMITS, min_replicas=0, scale_to_zero_after_seconds=600),
        Observation(1, 1, pods(0.0), GatewaySample(0, 0, 0, seconds_since_last_request=900)),
        with_days(steady(0.0), profile_with(0.4, 12 * 3600, 13 * 3600)),
        1,
        "profile floor 1",
        id="no-zero-when-the-profile-expects-load",
    ),
    pytest.param(
        replace(LIMITS, min_replicas=0, scale_to_zero_after_seconds=600),
        Observation(0, 0, (), GatewaySample(1, 30.0)),
        steady(0.0),
        1,
        "request held at zero replicas",
        id="held-request-wakes-a-replica",
    ),
    pytest.param(
        replace(LIMITS, min_replicas=0, scale_to_zero_after_seconds=600),
        Observation(0, 0, (), GatewaySample(0, 0.0)),
        steady(0.0),
        0,
        "at zero replicas",
        id="zero-stays-zero-without-requests",
    ),
]


@pytest.mark.parametrize(("limits", "observation", "state", "replicas", "reason"), CASES)
def test_decide(limits: Limits, observation: Observation, state: State, replicas: int, reason: str) -> None:
    decision = decide(limits, observation, state, NOW)
    assert decision.replicas == replicas, decision.reason
    assert reason in decision.reason


KUBECTL = ManualScale(2, "kubectl", NOW - 60)  # `kubectl scale --replicas 2` a minute ago


def held(ready_at: float | None, **more: Any) -> dict[str, Any]:
    """State fields of a person's scale (KUBECTL) already seen, all ready at `ready_at`."""
    return {"hold_replicas": 2, "hold_by": "kubectl", "hold_at": KUBECTL.at, "hold_ready_at": ready_at, **more}


PERSON_CASES = [
    # (observation, state, expected replicas, fragment of the reason)
    pytest.param(
        Observation(2, 1, pods(0.0), manual=KUBECTL),
        steady(0.0, loading_since=(NOW - 1300,), ready=1, low_since=NOW - 250),
        2,
        "spec.replicas 2 set by kubectl: kept until all 2 are ready",
        id="loading-replicas-a-person-asked-for-are-never-cancelled",
    ),
    pytest.param(
        Observation(2, 0, (), manual=KUBECTL),
        steady(0.0, loading_since=(NOW - 5000, NOW - 5000), low_since=NOW - 900),
        2,
        "the load alone: low load for 900s: cancel 1 loading replica(s), overdue (5000s)",
        id="however-long-they-load",
    ),
    pytest.param(
        Observation(3, 1, pods(0.0)),  # the autoscaler wrote 3 since: the person's 2 still holds
        steady(0.0, loading_since=(NOW - 1300, NOW - 1300), ready=1, low_since=NOW - 250, **held(None)),
        2,
        "cancel 2 loading replica(s)",
        id="the-autoscaler-cancels-its-own-above-a-persons-floor",
    ),
    pytest.param(
        Observation(2, 2, pods(0.05, 0.05), manual=KUBECTL),
        steady(0.1, low_since=NOW - 1000, ready=2, **held(NOW - 100)),
        2,
        "all ready, kept for scaleDownDelaySeconds (300s) more",
        id="ready-then-kept-for-the-delay",
    ),
    pytest.param(
        Observation(2, 2, pods(0.05, 0.05), manual=KUBECTL),
        steady(0.1, low_since=NOW - 1000, ready=2, **held(NOW - 300)),
        1,
        "low load for 1000s",
        id="then-released",
    ),
    pytest.param(
        Observation(2, 2, pods(0.05, 0.05), manual=ManualScale(2, "kubectl", NOW - 5)),
        steady(0.1, low_since=NOW - 1000, ready=2, **held(NOW - 300)),
        2,
        "all ready, kept for scaleDownDelaySeconds",
        id="a-new-scale-holds-again",
    ),
    pytest.param(
        Observation(2, 2, pods(0.9, 0.9, waiting=20, running=8), manual=KUBECTL),
        steady(1.8, ready=2),
        4,
        "scale up, panic",
        id="a-persons-scale-is-no-ceiling",
    ),
]


@pytest.mark.parametrize(("observation", "state", "replicas", "reason"), PERSON_CASES)
def test_a_persons_scale_is_a_floor_until_ready_and_the_delay(
    observation: Observation, state: State, replicas: int, reason: str
) -> None:
    decision = decide(LIMITS, observation, state, NOW)
    assert decision.replicas == replicas, decision.reason
    assert reason in decision.reason


def test_a_persons_scale_holds_through_a_slow_load_then_steps_down_after_the_delay() -> None:
    """Idle endpoint, `kubectl scale --replicas 3` at t=0; they take 20 minutes to load (on a busy node)."""
    limits = replace(LIMITS, scale_down_delay_seconds=15.0)
    manual = ManualScale(3, "kubectl", NOW)
    state, replicas, now, seen_replicas = steady(0.1, ready=1), 3, NOW, []
    while now <= NOW + 1500:
        ready = replicas if now >= NOW + 1200 else 1  # all loaded by then
        seen = Observation(replicas, min(ready, replicas), pods(*[0.1 / ready] * min(ready, replicas)), manual=manual)
        decision = decide(limits, seen, state, now)
        seen_replicas.append(decision.replicas)
        if now < NOW + 1200 + 15:
            assert decision.hold is not None, decision.reason
            assert decision.replicas == 3, f"t={now - NOW:.0f}s: {decision.reason}"
        replicas, state, now = decision.replicas, decision.state, now + 2
    assert decision.hold is None
    assert replicas == 1  # after the hold, one step at a time back to what the load needs


def test_every_decision_explains_signal_capacity_target_and_why() -> None:
    decision = decide(LIMITS, Observation(1, 1, pods(0.5, waiting=10, running=3)), State(), NOW)
    explanation = decision.explanation
    assert explanation.target == decision.replicas == 3
    assert "busy 0.5 replicas, queue 10 waiting" in explanation.signal
    assert "capacity 1000 work/s per replica, cold start 600s" in explanation.capacity_text
    assert "target 3" in explanation.target_text
    assert decision.reason.startswith("scale up, panic: queue 10 waiting")


def test_scale_down_is_one_at_a_time_each_after_the_delay() -> None:
    state, replicas, now, removed_at = steady(0.2), 4, NOW, []
    while now <= NOW + 2000:
        seen = Observation(replicas, replicas, pods(*[0.2 / replicas] * replicas))
        decision: Decision = decide(LIMITS, seen, state, now)
        if decision.replicas < replicas:
            assert decision.replicas == replicas - 1
            removed_at.append(now - NOW)
        replicas, state, now = decision.replicas, decision.state, now + 10
    assert removed_at == [300.0, 330.0, 360.0]
    assert replicas == 1


def test_a_transient_busy_spike_shorter_than_a_cold_start_adds_nothing() -> None:
    """Two minutes of double load on a 10-minute cold start: demand smoothed over a quarter of a cold
    start, and a surge counted only as it lasts, stay within the target."""
    state, now = steady(0.8), NOW
    for second in range(0, 120, 2):
        decision = decide(LIMITS, Observation(2, 2, pods(0.8, 0.8)), state, now + second)
        assert decision.replicas == 2, decision.reason
        state = decision.state


def test_a_surge_that_lasts_a_cold_start_is_met_in_full() -> None:
    state, now, replicas = steady(0.8), NOW, 2
    for second in range(0, 1200, 10):
        seen = Observation(replicas, replicas, pods(*[1.6 / replicas] * replicas))
        decision = decide(LIMITS, seen, state, now + second)
        replicas, state = decision.replicas, replace(decision.state, loading_since=())
    assert replicas == 4  # 1.6 replicas' worth at 50 %


def test_a_surge_beyond_max_replicas_is_the_replicas_it_asks_for_beyond_them() -> None:
    limits, state, replicas = replace(LIMITS, max_replicas=3), steady(0.8), 2
    shorts = []
    for second in range(0, 2400, 10):
        seen = Observation(replicas, replicas, pods(*[2.4 / replicas] * replicas))
        decision = decide(limits, seen, state, NOW + second)
        replicas, state = decision.replicas, replace(decision.state, loading_since=())
        shorts.append(replicas_short(limits, decision))
    assert replicas == 3
    assert shorts[0] == 0  # the surge not yet counted: the load fits
    assert shorts[-1] == 2, decision.reason  # 2.4 replicas' worth at 50 % asks for 5


def test_capacity_is_learned_from_token_counters_of_saturated_replicas() -> None:
    first = decide(
        LIMITS, Observation(1, 1, (PodSample("a", 2, 8, 0.95, 0.0, 0.0, 0.0),)), State(), NOW
    )  # counters seen for the first time: nothing learned yet
    assert first.state.capacity == LIMITS.prior_work_per_second
    later = decide(
        LIMITS,
        Observation(1, 1, (PodSample("a", 2, 8, 0.95, 8000.0, 3000.0, 10.0),)),
        first.state,
        NOW + 600,  # 8000 prompt tokens x 0.125 + 3000 generated = 4000 work in 600 s: 6.7/s
    )
    assert later.state.capacity is not None
    assert 6.7 < later.state.capacity < LIMITS.prior_work_per_second * 0.5
    assert later.state.work_per_request == pytest.approx(400.0, rel=0.5)


def test_a_restarted_pods_counters_teach_nothing() -> None:
    seen = Observation(1, 1, (PodSample("a", 2, 8, 0.95, 9000.0, 9000.0, 10.0),))
    state = decide(LIMITS, seen, State(), NOW).state
    restarted = Observation(1, 1, (PodSample("a", 2, 8, 0.95, 10.0, 10.0, 0.0),))
    assert decide(LIMITS, restarted, state, NOW + 10).state.capacity == LIMITS.prior_work_per_second


def test_cold_start_is_learned_from_how_long_replicas_took() -> None:
    state = steady(0.5, loading_since=(NOW - 400,), ready=1)
    decision = decide(LIMITS, Observation(2, 2, pods(0.3, 0.3)), state, NOW)
    assert decision.state.cold_start == pytest.approx(600 + (400 - 600) * 0.3)
    assert decision.state.loading_since == ()


def test_the_profile_is_the_median_of_days_so_one_days_burst_is_not_forecast() -> None:
    quiet = profile_with(0.5, 0, 0)[0]
    burst = profile_with(3.0, 12 * 3600 + 600, 12 * 3600 + 1800)[0]
    seen = Observation(2, 2, pods(0.25, 0.25))
    one_burst = decide(LIMITS, seen, with_days(steady(0.5), (quiet, burst, quiet)), NOW)
    assert one_burst.explanation.floor == 1
    two_bursts = decide(LIMITS, seen, with_days(steady(0.5), (burst, quiet, burst)), NOW)
    assert two_bursts.explanation.floor == 5  # (0.5 + 3 + 3) / 3 bins around 12:10, at 50 %


def test_a_day_of_decisions_fills_the_profile_bin_by_bin() -> None:
    state, day_start = State(), 20 * 86400.0
    for second in range(0, 86400, 60):
        busy = 0.9 if 9 * 3600 <= second < 17 * 3600 else 0.1
        seen = Observation(3, 3, pods(busy, busy, busy))
        state = decide(replace(LIMITS, max_replicas=12), seen, state, day_start + second).state
    assert len(state.days) == 1
    by_hour = {h: state.profile[h * 3600 // BIN] for h in (3, 12)}
    assert by_hour[3] == pytest.approx(0.3, abs=0.05)
    assert by_hour[12] == pytest.approx(2.7, abs=0.1)


def test_state_survives_serialisation() -> None:
    state = with_days(
        steady(1.5, capacity=812.5, cold_start=1234.0, loading_since=(NOW - 5,), low_since=NOW - 40),
        profile_with(2.0, 9 * 3600, 17 * 3600),
    )
    state = decide(LIMITS, Observation(3, 2, pods(0.5, 0.7)), state, NOW).state
    back = State.from_dict(json.loads(json.dumps(state.to_dict())))
    assert back.to_dict() == state.to_dict()
    assert back.profile == state.profile
    seen = Observation(3, 3, pods(0.5, 0.5, 0.5))
    assert decide(LIMITS, seen, back, NOW + 2) == decide(LIMITS, seen, state, NOW + 2)


@pytest.mark.parametrize(
    "data",
    [
        {},
        {"capacity": "fast", "days": "many", "counters": [1, 2], "loadingSince": {"a": 1}},
        {"days": [[1.0] * 3], "updatedAt": float("nan"), "ready": True, "counters": {"a": [1, "x", 3]}},
    ],
    ids=["empty", "wrong-types", "wrong-shapes"],
)
def test_state_from_damaged_data_falls_back_to_defaults(data: dict[str, object]) -> None:
    state = State.from_dict(data)
    assert state.days == ()
    assert state.counters == {}
    assert decide(LIMITS, Observation(1, 1, pods(0.1)), state, NOW).replicas == 1


def test_prior_capacity_follows_memory_bandwidth_and_weights() -> None:
    small_h100 = prior_work_per_second(55e9, "H100-80GB", 1, 64)
    mini_l4 = prior_work_per_second(9.5e9, "L4-24GB", 1, 256)
    assert small_h100 == pytest.approx(3350e9 * 0.7 / 55e9 * 32)
    assert mini_l4 == pytest.approx(300e9 * 0.7 / 9.5e9 * 32)
    assert prior_work_per_second(55e9, "H100-80GB", 2, 64) == pytest.approx(2 * small_h100)


def test_scrape_reads_kv_cache_usage_and_the_token_counters() -> None:
    text = "\n".join(
        [
            'vllm:num_requests_waiting{engine="0",model_name="m"} 3.0',
            'vllm:num_requests_running{engine="0",model_name="m"} 5.0',
            'vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.6',
            'vllm:kv_cache_usage_perc{engine="1",model_name="m"} 0.2',
            'vllm:prompt_tokens_total{engine="0",model_name="m"} 1200.0',
            'vllm:prompt_tokens_created{engine="0",model_name="m"} 1.7e+09',
            'vllm:generation_tokens_total{engine="0",model_name="m"} 340.0',
            'vllm:request_success_total{engine="0",finished_reason="stop",model_name="m"} 7.0',
            'vllm:request_success_total{engine="0",finished_reason="length",model_name="m"} 1.0',
        ]
    )
    sample = parse_queue_metrics(text)
    assert sample is not None
    assert (sample.waiting, sample.running) == (3.0, 5.0)
    assert sample.kv_cache_usage == pytest.approx(0.4)
    assert (sample.prompt_tokens, sample.generation_tokens, sample.finished) == (1200.0, 340.0, 8.0)
    bare = parse_queue_metrics('vllm:num_requests_waiting{engine="0"} 1.0\n')
    assert bare is not None
    assert (bare.kv_cache_usage, bare.prompt_tokens, bare.finished) == (None, None, None)


# managedFields as a 1.34 API server records them (a write through /scale carries no time).
APPLIED = {"manager": "kubectl-client-side-apply", "operation": "Update", "time": "2026-12-02T07:19:38Z"}
REPLICAS_FIELD = {"fieldsV1": {"f:spec": {".": {}, "f:replicas": {}}}}
STATUS_ONLY = {"manager": "voxtral-operator", "operation": "Apply", "subresource": "status", "fieldsV1": {}}


@pytest.mark.parametrize(
    ("entries", "shown", "manager", "at"),
    [
        (
            [STATUS_ONLY, APPLIED | REPLICAS_FIELD],
            "kubectl-client-side-apply",
            "kubectl-client-side-apply",
            1796195978.0,
        ),
        (
            [
                APPLIED | {"fieldsV1": {"f:spec": {"f:model": {}}}},
                {"manager": "kubectl", "subresource": "scale"} | REPLICAS_FIELD,
            ],
            "kubectl (/scale)",
            "kubectl",
            None,
        ),
        (
            [{"manager": AUTOSCALER_FIELD_MANAGER, "subresource": "scale"} | REPLICAS_FIELD],
            f"{AUTOSCALER_FIELD_MANAGER} (/scale)",
            AUTOSCALER_FIELD_MANAGER,
            None,
        ),
        ([STATUS_ONLY], None, None, None),
    ],
    ids=["apply", "kubectl-scale", "the-autoscaler-itself", "nobody"],
)
def test_the_writer_of_spec_replicas_is_read_from_managed_fields(
    entries: list[dict[str, Any]], shown: str | None, manager: str | None, at: float | None
) -> None:
    writer = replicas_writer({"metadata": {"managedFields": entries}})
    if shown is None:
        assert writer is None
        return
    assert writer is not None
    assert (writer.shown, writer.manager, writer.at) == (shown, manager, at)


def test_a_restarted_autoscaler_resumes_the_floor_its_status_shows() -> None:
    at = 1_800_000_000.0
    manual = ManualScale(replicas=2, by="kubectl", at=at)
    shown = {"replicas": 2, "setBy": "kubectl", "setAt": "2027-01-15T08:00:00Z", "until": "2027-01-15T08:05:00Z"}
    holding = resumed_hold(State(), manual, {"status": {"scaleHold": shown}}, delay=60.0)
    # The floor ends when the status said, not a delay after the restart.
    assert (holding.hold_replicas, holding.hold_at, holding.hold_ready_at) == (2, at, at + 300.0 - 60.0)

    status_write = {"manager": AUTOSCALER_FIELD_MANAGER, "subresource": "status", "time": "2027-01-15T09:00:00Z"}
    served = resumed_hold(State(), manual, {"metadata": {"managedFields": [status_write]}, "status": {}}, delay=60.0)
    assert served.hold_ready_at is not None
    assert served.hold_ready_at + 60.0 <= at  # its time was served

    # Never handled (no status written since the person's write): the floor starts as a new one would.
    assert resumed_hold(State(), manual, {"status": {}}, delay=60.0) == State()
    other = {"status": {"scaleHold": {**shown, "replicas": 3}}}
    assert resumed_hold(State(), manual, other, delay=60.0) == State()


def test_a_day_unlike_the_profile_pulls_its_floor_down_and_a_working_day_brings_it_back() -> None:
    """A holiday after a busy week: the profile's floor follows the quiet day down within two hours
    (it used to stay at 70 % of a working day's), and comes back within minutes of a busy morning."""
    week = profile_with(2.0, 0, 86400) * 7
    state = with_days(steady(0.2), week)
    quiet = Observation(2, 2, pods(0.1, 0.1))
    for second in range(0, 7200, 60):
        decision = decide(LIMITS, quiet, state, NOW + second)
        state = decision.state
    assert decision.explanation.floor <= 1, decision.reason
    busy = Observation(4, 4, pods(0.5, 0.5, 0.5, 0.5))
    for second in range(7200, 7200 + 1200, 60):
        decision = decide(LIMITS, busy, state, NOW + second)
        state = decision.state
    assert decision.explanation.floor >= 3, decision.reason


RESERVED = replace(LIMITS, reserved_replicas=4)


def deferrable(
    queued: float, in_flight_audio: float = 0.0, deferrable_audio: float = 0.0, in_flight: float = 0.0
) -> GatewaySample:
    """The gateway with this much deferrable work queued and in flight (and this much audio in flight)."""
    return GatewaySample(0, 0, in_flight_audio, 1.0, queued, deferrable_audio, in_flight)


def test_deferrable_work_waiting_keeps_the_reserved_pool_up() -> None:
    decision = decide(RESERVED, Observation(1, 1, pods(0.1), gateway=deferrable(50)), steady(0.1), NOW)
    assert decision.replicas == 4, decision.reason
    assert "deferrable work waits" in decision.reason
    # Once the reserved pool is up it is kept while the lane still has work, however low the demand.
    state = replace(decision.state, low_since=NOW - 3600, loading_since=())
    busy_on_deferrable = deferrable(0, in_flight_audio=4000, deferrable_audio=4000, in_flight=12)
    kept = decide(RESERVED, Observation(4, 4, pods(0.9, 0.9, 0.9, 0.9), gateway=busy_on_deferrable), state, NOW + 60)
    assert kept.replicas == 4, kept.reason


def test_deferrable_work_alone_never_scales_beyond_the_reserved_pool() -> None:
    """Four replicas full of deferrable work and a deep deferrable queue: no demand of its own."""
    state, now = steady(0.2), NOW
    full = pods(1.0, 1.0, 1.0, 1.0, waiting=30, running=8)  # vLLM's queue holds deferrable requests too
    seen = Observation(4, 4, full, gateway=deferrable(500, 9000, 8800, in_flight=60))
    for second in range(0, 1800, 10):
        decision = decide(RESERVED, seen, state, now + second)
        assert decision.replicas == 4, decision.reason
        state = decision.state


def test_without_deferrable_work_the_reserved_pool_scales_down_as_before() -> None:
    state = steady(0.2, low_since=NOW - 3600)
    seen = Observation(4, 4, pods(0.05, 0.05, 0.05, 0.05), gateway=GatewaySample(0, 0, 0.0, 1.0))
    assert decide(RESERVED, seen, state, NOW).replicas == 3


def test_interactive_demand_scales_beyond_the_reserved_pool() -> None:
    seen = Observation(4, 4, pods(1.0, 1.0, 1.0, 1.0, running=8), gateway=deferrable(10, 1000, 100, in_flight=2))
    decision = decide(RESERVED, seen, steady(3.6), NOW)
    assert decision.replicas == 6, decision.reason  # 90 % of the work is interactive: 3.6 replicas at 50 %
