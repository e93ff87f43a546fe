"""The requests policy (the default), as tables: observation and state in, replicas and an explanation out."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from tests.unit.test_render import CONFIG
from voxtral_operator.api.models import (
    DEFAULT_TARGET_ACTIVE_REQUESTS,
    STAGED_TARGET_ACTIVE_REQUESTS,
    AutoscalingSpec,
    parse_spec,
)
from voxtral_operator.autoscale.loop import policy_limits
from voxtral_operator.autoscale.policy import (
    REQUESTS_POLICY,
    SCALE_UP_PERIOD_SECONDS,
    GatewaySample,
    Limits,
    ManualScale,
    Observation,
    PodSample,
    State,
    decide,
    replicas_short,
)
from voxtral_operator.coldstart import COLD_DOWNLOAD, LOCAL_CACHE, SHARED_CACHE

LIMITS = Limits(
    min_replicas=1,
    max_replicas=20,
    max_num_seqs=64,
    target_active_requests=6,
    cold_start_seconds=600.0,
    scale_down_delay_seconds=300.0,
)
NOW = 10 * 86400.0 + 12 * 3600
BEFORE = State(updated_at=NOW - 2)  # a policy that has decided before, with no window yet
LOW_WINDOW = replace(BEFORE, recommendations=((NOW - 400, 9), (NOW - 100, 0)))  # a window that allows any scale-down


def ready(*active: float, waiting: float = 0) -> tuple[PodSample, ...]:
    """Ready pods with this many requests running; the first also has `waiting`."""
    return tuple(PodSample(f"pod-{i}", waiting if i == 0 else 0, running) for i, running in enumerate(active))


def seen(*active: float, replicas: int | None = None, waiting: float = 0, **more: object) -> Observation:
    pods = ready(*active, waiting=waiting)
    count = len(pods) if replicas is None else replicas
    return Observation(replicas=count, ready=len(pods), pods=pods, **more)  # type: ignore[arg-type]


def gateway(queued: float = 0, **more: float) -> GatewaySample:
    return GatewaySample(queued_requests=queued, queued_audio_seconds=queued * 30, **more)


def test_it_is_the_default_the_spec_gives() -> None:
    assert (AutoscalingSpec().policy, Limits(0, 1).policy) == (REQUESTS_POLICY, REQUESTS_POLICY)
    assert Limits(0, 1).target_active_requests == DEFAULT_TARGET_ACTIVE_REQUESTS
    assert (AutoscalingSpec().scale_down_delay, AutoscalingSpec(policy="workload").scale_down_delay) == (900, 300)
    assert AutoscalingSpec(mode="keda").scale_down_delay == 300  # HPA's own cooldown under KEDA


@pytest.mark.parametrize(
    ("observation", "state", "replicas", "reason"),
    [
        # 3 replicas with 24 in flight, one of them waiting, at a target of 6: 24 / 6 = 4.
        (seen(7, 8, 8, waiting=1), BEFORE, 4, "scale up: requests in flight above target"),
        (seen(8, 8, 7, gateway=gateway(1)), BEFORE, 4, "scale up: requests in flight above target"),
        # Nothing waiting: a fleet of at most 3 absorbs the spike, unless the 5-minute average asks too.
        (seen(8, 8, 8), BEFORE, 3, "nothing waiting: 3 replica(s) absorb it"),
        (seen(8, 8, 8), replace(BEFORE, active_level=24.0), 4, "scale up: requests in flight above target"),
        (seen(8, 8, 8, 8), BEFORE, 6, "scale up: requests in flight above target"),  # 4 replicas: no longer small
        # Within the 10 % tolerance (6.5 a replica): nothing changes.
        (seen(6.5, 6.5, 6.5), BEFORE, 3, "load within target"),
        # Waiting at vLLM and queued at the gateway count: 6 running + 30 waiting + 24 queued = 60 -> 10,
        # but one scale-up adds at most max(4, the replicas there are).
        (seen(6, waiting=30, gateway=gateway(24)), BEFORE, 5, "scale up"),
        (seen(6, 6, 6, 6, 6, 6, waiting=100), BEFORE, 12, "scale up"),
        # One scale-up every 15 s.
        (seen(7, 8, 8, waiting=1), replace(BEFORE, last_scale_up=NOW - 5), 3, "scale up paced"),
        (seen(7, 8, 8, waiting=1), replace(BEFORE, last_scale_up=NOW - SCALE_UP_PERIOD_SECONDS), 4, "scale up"),
        # Down to the highest recommendation of the last scaleDownDelaySeconds, all at once.
        (seen(1, 1, 1, 1, 1), replace(BEFORE, recommendations=((NOW - 200, 5),)), 5, "more replicas recommended"),
        (seen(1, 1, 1, 1, 1), replace(BEFORE, recommendations=((NOW - 250, 4), (NOW - 100, 2))), 4, "scale down"),
        (seen(1, 1, 1, 1, 1), replace(BEFORE, recommendations=((NOW - 400, 5), (NOW - 100, 2))), 2, "scale down"),
        (seen(0, 0, 0, 0, 0), replace(BEFORE, recommendations=((NOW - 400, 5),)), 1, "scale down"),
        # A restarted operator has no window: it starts one at the replicas there are.
        (seen(0, 0, 0, 0, 0), State(), 5, "more replicas recommended"),
        (seen(0, 0, 0, 0, 0), BEFORE, 5, "more replicas recommended"),
        # Never down while a ready replica's metrics are missing, nor while replicas load.
        (Observation(replicas=3, ready=3, pods=ready(0, 0)), LOW_WINDOW, 3, "metrics missing from 1 replica"),
        (seen(0, 0, replicas=4), replace(LOW_WINDOW, loading_since=(NOW - 60,) * 2), 4, "loading replica(s) kept"),
        # Outside the bounds.
        (seen(*[0] * 22), BEFORE, 20, "replicas 22 outside [1, 20]"),
    ],
)
def test_decide(observation: Observation, state: State, replicas: int, reason: str) -> None:
    decision = decide(LIMITS, observation, state, NOW)
    assert (decision.replicas, reason in decision.reason) == (replicas, True), decision.reason


def test_the_window_remembers_its_highest_recommendation_through_lower_ones() -> None:
    state, replicas = BEFORE, 6
    for second, active in enumerate([6 * 6, 4 * 6, 3 * 6, 2 * 6]):
        at = NOW + 60 * second
        decision = decide(LIMITS, seen(*[active / replicas] * replicas), state, at)
        state, replicas = decision.state, decision.replicas
        assert replicas == 6, decision.reason
    assert [r for _, r in state.recommendations] == [6, 4, 3, 2]  # each kept while no later one is as high
    later = decide(LIMITS, seen(*[2] * 6), state, NOW + 301)
    assert later.replicas == 4, later.reason  # the 6 has left the window; the 4 (60 s later) has not


def test_the_target_is_at_most_what_a_replica_runs_at_once() -> None:
    limits = replace(LIMITS, max_num_seqs=4)  # a replica runs 4: a target of 6 would keep 2 waiting each
    decision = decide(limits, seen(4, 4, waiting=4), BEFORE, NOW)
    assert decision.replicas == 3, decision.reason
    assert "target 4 a replica" in decision.reason


def test_deferrable_work_is_no_demand_but_keeps_the_reserved_pool_up() -> None:
    limits = replace(LIMITS, reserved_replicas=3)
    lane = gateway(0, deferrable_in_flight_requests=40, deferrable_queued_requests=500)
    decision = decide(limits, seen(42, gateway=lane), BEFORE, NOW)  # 42 running, 40 of them deferrable
    assert decision.replicas == 3, decision.reason
    assert "reserved pool" in decision.reason
    # ...and never beyond the pool for deferrable work alone, however much of it there is.
    lane = replace(lane, deferrable_in_flight_requests=120)
    decision = decide(limits, seen(42, 40, 40, gateway=lane), BEFORE, NOW)
    assert decision.replicas == 3, decision.reason
    # Interactive work scales beyond it as always.
    decision = decide(limits, seen(42, 40, 40, gateway=replace(lane, queued_requests=60)), BEFORE, NOW)
    assert decision.replicas > 3, decision.reason


def test_the_reserved_pool_goes_only_a_scale_down_delay_after_its_deferrable_work_ends() -> None:
    """Released at once, the pool went as the morning's interactive load arrived: its count, spread over the
    whole pool, had recommended fewer replicas than that load needs on fewer (README, Reserved GPUs)."""
    limits = replace(LIMITS, reserved_replicas=6)
    lane = gateway(0, deferrable_in_flight_requests=30, deferrable_queued_requests=200)
    state, now = BEFORE, NOW
    for _ in range(400):  # an hour and more of deferrable work on the pool, 2 interactive requests in flight
        decision = decide(limits, seen(6, 6, 6, 6, 6, 2, gateway=lane), state, now)
        assert decision.replicas == 6, decision.reason
        state, done, now = decision.state, now, now + 10  # `done`: the work last seen
    while now < done + limits.scale_down_delay_seconds:  # then none: the pool kept for the delay
        decision = decide(limits, seen(0, 0, 0, 0, 0, 2, gateway=gateway(0)), state, now)
        assert decision.replicas == 6, f"{now - done:.0f}s after the deferrable work ended: {decision.reason}"
        assert "kept for deferrable work" in decision.reason
        state, now = decision.state, now + 10
    decision = decide(limits, seen(0, 0, 0, 0, 0, 2, gateway=gateway(0)), state, now)
    assert decision.replicas == 1, decision.reason  # then to the interactive recommendation, as always


def test_zero_and_back_at_the_gateway() -> None:
    limits = replace(LIMITS, min_replicas=0, scale_to_zero_after_seconds=600)
    idle = gateway(0, seconds_since_last_request=601)
    assert decide(limits, seen(0, 0, gateway=idle), BEFORE, NOW).replicas == 0
    busy_lately = gateway(0, seconds_since_last_request=30)
    assert decide(limits, seen(0, 0, gateway=busy_lately), BEFORE, NOW).replicas == 2  # the window holds
    assert decide(limits, seen(0, 0, gateway=busy_lately), LOW_WINDOW, NOW).replicas == 1  # the idle rule alone: 0
    nobody = Observation(replicas=0, ready=0, gateway=gateway(0))
    assert decide(limits, nobody, BEFORE, NOW).replicas == 0
    held = decide(limits, Observation(replicas=0, ready=0, gateway=gateway(1)), BEFORE, NOW)
    assert (held.replicas, "request held at zero" in held.reason) == (1, True), held.reason
    # Without scaleToZeroAfterSeconds the last replica stays.
    always_on = replace(limits, scale_to_zero_after_seconds=None)
    assert decide(always_on, seen(0, 0, gateway=idle), LOW_WINDOW, NOW).replicas == 1


def test_a_persons_scale_is_a_floor_until_ready_and_the_delay() -> None:
    person = ManualScale(replicas=5, by="kubectl", at=NOW - 10)
    loading = decide(LIMITS, seen(0, 0, replicas=5, manual=person), LOW_WINDOW, NOW)
    assert (loading.replicas, loading.hold is not None) == (5, True), loading.reason
    all_ready = decide(LIMITS, seen(0, 0, 0, 0, 0, manual=person), loading.state, NOW + 2)
    assert all_ready.replicas == 5, all_ready.reason
    assert "spec.replicas 5 set by kubectl" in all_ready.reason
    served = replace(all_ready.state, recommendations=LOW_WINDOW.recommendations)
    after = decide(LIMITS, seen(0, 0, 0, 0, 0, manual=person), served, NOW + 2 + LIMITS.scale_down_delay_seconds)
    assert (after.replicas, after.hold) == (1, None), after.reason


def test_state_survives_serialisation() -> None:
    state = BEFORE
    for second in range(4):
        state = decide(LIMITS, seen(8 - 2 * second, 8, 8, waiting=1), state, NOW + 20 * second).state
    assert state.recommendations, state
    assert state.last_scale_up is not None, state
    assert state.active_level > 0, state
    again = State.from_dict(json.loads(json.dumps(state.to_dict())))
    assert (again.recommendations, again.last_scale_up, again.active_level) == (
        state.recommendations,
        state.last_scale_up,
        state.active_level,
    )
    broken = State.from_dict({"recommendations": [[1, 2, 3], "x", [NOW, 4]], "lastScaleUp": "soon"})
    assert (broken.recommendations, broken.last_scale_up) == (((NOW, 4),), None)


def test_the_spec_chooses_the_policy_and_its_target() -> None:
    example = Path(__file__).resolve().parents[2] / "examples" / "small-on-h100.yaml"
    spec = yaml.safe_load(example.read_text())["spec"]
    assert policy_limits(parse_spec(spec), CONFIG).policy == REQUESTS_POLICY
    spec["autoscaling"] |= {"policy": "workload", "targetActiveRequests": 9}
    limits = policy_limits(parse_spec(spec), CONFIG)
    assert (limits.policy, limits.target_active_requests) == ("workload", 9)


@pytest.mark.parametrize(
    ("path", "target"),
    [("", DEFAULT_TARGET_ACTIVE_REQUESTS), (COLD_DOWNLOAD, 4), (SHARED_CACHE, 5), (LOCAL_CACHE, 4)],
)
def test_the_default_target_follows_the_way_the_next_replica_gets_its_weights(path: str, target: int) -> None:
    # A replica that reads its weights and compiled kernels from the model cache is ready minutes sooner
    # than one that downloads them, so its replicas may run fuller: the values bench/tune_policies.py
    # chose for each path (from the node's disk, still compiling, it chose the hub's).
    assert STAGED_TARGET_ACTIVE_REQUESTS == 5
    example = Path(__file__).resolve().parents[2] / "examples" / "small-on-h100.yaml"
    spec = yaml.safe_load(example.read_text())["spec"]
    spec["autoscaling"] = {}
    assert policy_limits(parse_spec(spec), CONFIG, path).target_active_requests == target
    spec["autoscaling"] = {"targetActiveRequests": 7}  # set: it wins on every path
    assert policy_limits(parse_spec(spec), CONFIG, path).target_active_requests == 7


@pytest.mark.parametrize(("gpu", "sessions", "target"), [("L4-24GB", 10, 6), ("H100-80GB", 57, 34)])
def test_a_realtime_replica_is_targeted_at_a_share_of_its_sessions(gpu: str, sessions: int, target: int) -> None:
    example = Path(__file__).resolve().parents[2] / "examples" / "realtime-on-l4.yaml"
    spec = yaml.safe_load(example.read_text())["spec"] | {"gpu": {"type": gpu}}
    limits = policy_limits(parse_spec(spec), CONFIG)
    assert (limits.max_num_seqs, limits.target_active_requests) == (sessions, target)
    staged = policy_limits(parse_spec(spec), CONFIG, SHARED_CACHE)  # a session holds its slot whatever the path
    assert staged.target_active_requests == target
    spec["autoscaling"] = {"targetActiveRequests": 3}  # set: it wins
    assert policy_limits(parse_spec(spec), CONFIG).target_active_requests == 3


CEILING_3 = replace(LIMITS, max_replicas=3)


@pytest.mark.parametrize(
    ("observation", "state", "short"),
    [
        # 3 replicas, 52 in flight at 6 a replica: 9 asked for, maxReplicas holds the endpoint at 3.
        (seen(16, 16, 16, waiting=4), BEFORE, 6),
        # 2 replicas, 36 in flight: 6 asked for, and the scale-up goes to the ceiling at once.
        (seen(16, 16, waiting=4), BEFORE, 3),
        # The same while scale-ups are paced: below the ceiling it is on its way, not limited yet.
        (seen(16, 16, waiting=4), replace(BEFORE, last_scale_up=NOW - 5), 0),
        # At the ceiling with the load within it, or within the 10 % tolerance HPA keeps: not limited.
        (seen(6, 6, 6), BEFORE, 0),
        (seen(6.5, 6.5, 6.5), BEFORE, 0),
    ],
)
def test_the_replicas_the_load_asks_beyond_max_replicas(observation: Observation, state: State, short: int) -> None:
    decision = decide(CEILING_3, observation, state, NOW)
    assert decision.replicas <= CEILING_3.max_replicas
    assert replicas_short(CEILING_3, decision) == short, decision.reason
