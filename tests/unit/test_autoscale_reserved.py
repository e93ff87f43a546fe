"""A reserved pool: deferrable work keeps it up and never scales beyond it; interactive work scales as always."""

from __future__ import annotations

from dataclasses import replace

from tests.unit.test_autoscale_policy import LIMITS, NOW, pods, steady
from voxtral_operator.autoscale.policy import GatewaySample, Limits, Observation, State, decide

RESERVED = replace(LIMITS, reserved_replicas=3, max_replicas=6)  # 8 slots a replica


def backlog(queued: float = 500, in_flight: float = 0, *, interactive: float = 0) -> GatewaySample:
    """A gateway with `queued` deferrable requests of a minute's audio each (and `interactive` queued ones)."""
    return GatewaySample(
        queued_requests=queued + interactive,
        queued_audio_seconds=60 * (queued + interactive),
        in_flight_audio_seconds=60 * in_flight,
        seconds_since_last_request=0,
        deferrable_queued_requests=queued,
        deferrable_queued_audio_seconds=60 * queued,
        deferrable_in_flight=in_flight,
    )


def run(limits: Limits, seen: Observation, state: State, seconds: float, step: float = 15) -> list[int]:
    """Replicas decided every `step` seconds for `seconds`, each decision becoming the next spec.replicas
    (and ready at once: the pool's replicas load within the test's clock)."""
    replicas: list[int] = []
    now = NOW
    while now < NOW + seconds:
        decision = decide(limits, seen, state, now)
        state = decision.state
        replicas.append(decision.replicas)
        count = decision.replicas
        busy = [0.875] * count  # seven of eight slots on each: the deferrable lane's share
        gateway = replace(seen.gateway, deferrable_in_flight=7 * count) if seen.gateway else None
        seen = replace(seen, replicas=count, ready=count, pods=pods(*busy), gateway=gateway)
        now += step
    return replicas


def test_a_deferrable_backlog_fills_the_reserved_pool_and_never_more() -> None:
    seen = Observation(1, 1, pods(0.875), gateway=backlog(queued=5000, in_flight=7))
    replicas = run(RESERVED, seen, steady(0.0), seconds=3600)
    assert replicas[0] > 1, replicas  # up at once: deferrable work waits
    assert max(replicas) == 3, replicas
    assert replicas[-1] == 3, replicas


def test_without_a_reserved_pool_the_same_backlog_is_demand() -> None:
    seen = Observation(1, 1, pods(0.875), gateway=backlog(queued=5000, in_flight=7))
    replicas = run(LIMITS, seen, steady(0.0), seconds=3600)
    assert max(replicas) > 3, replicas


def test_interactive_demand_scales_beyond_the_pool_as_always() -> None:
    seen = Observation(3, 3, pods(1.0, 1.0, 1.0, waiting=40), gateway=backlog(queued=100, interactive=40))
    decision = decide(RESERVED, seen, steady(3.0), NOW)
    assert decision.replicas > 3, decision.explanation


def test_the_pool_stays_while_deferrable_work_runs_and_goes_when_it_is_done() -> None:
    state = steady(0.0)
    running = Observation(3, 3, pods(0.875, 0.875, 0.875), gateway=backlog(queued=0, in_flight=21))
    now = NOW
    for _ in range(100):  # 25 minutes: far past the scale-down delay
        decision = decide(RESERVED, running, state, now)
        assert decision.replicas == 3, decision.explanation
        state, now = decision.state, now + 15
    assert "reserved pool" in str(decision.explanation)
    done = Observation(3, 3, pods(0.0, 0.0, 0.0), gateway=backlog(queued=0, in_flight=0))
    decided = []
    for _ in range(100):
        decision = decide(RESERVED, done, state, now)
        state, now = decision.state, now + 15
        decided.append(decision.replicas)
        done = replace(done, replicas=decision.replicas, ready=decision.replicas, pods=pods(*[0.0] * decision.replicas))
    assert decided[-1] == 1, decided  # minReplicas, once the delay has passed


def test_at_zero_replicas_deferrable_work_wakes_only_a_reserved_pool() -> None:
    seen = Observation(0, 0, (), gateway=backlog(queued=10))
    limits = replace(RESERVED, min_replicas=0, scale_to_zero_after_seconds=60)
    assert decide(limits, seen, State(), NOW).replicas == 3
    none_reserved = replace(limits, reserved_replicas=0)
    assert decide(none_reserved, seen, State(), NOW).replicas == 0
    assert decide(replace(limits, reserved_replicas=None), seen, State(), NOW).replicas >= 1  # demand as today
