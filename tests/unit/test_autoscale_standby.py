"""The autoscaler's replicas_short gauge: gone on a replica that is not the active one (peering), and
with an episode over while its endpoint is not autoscaled."""

from __future__ import annotations

import asyncio
from typing import Any

from prometheus_client import REGISTRY

from voxtral_operator.autoscale.loop import REPLICAS_SHORT, Autoscaler, _EndpointState
from voxtral_operator.autoscale.policy import Decision, Explanation, Limits, State
from voxtral_operator.config import OperatorConfig
from voxtral_operator.k8s.client import ApiClient, Connection
from voxtral_operator.reconcile import EmptyView


class NoEndpoints(EmptyView):
    """The reconciler's empty view, with the gateway pods the autoscaler also reads."""

    def gateway_pods(self, key: tuple[str, str]) -> list[dict[str, Any]]:
        return []


def short(namespace: str, endpoint: str) -> float | None:
    return REGISTRY.get_sample_value("voxtral_operator_replicas_short", {"namespace": namespace, "endpoint": endpoint})


async def test_a_replica_that_lost_its_turn_shows_no_replicas_short() -> None:
    # Left by its active turn: an alert on max(...) > 0 would fire on a standby's stale figure.
    REPLICAS_SHORT.labels("team", "asr").set(2)
    turns = 0

    async def is_active() -> bool:
        nonlocal turns
        turns += 1
        return False

    autoscaler = Autoscaler(
        client=ApiClient(Connection(server="https://127.0.0.1:1")),  # never called: no endpoint, no turn
        config=OperatorConfig(scrape_interval_seconds=0.01),
        view=NoEndpoints(),
        post_event=lambda *_: None,
        is_active=is_active,
    )
    loop = asyncio.create_task(autoscaler.run_forever())
    try:
        for _ in range(500):
            if turns >= 2:
                break
            await asyncio.sleep(0.01)
    finally:
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)
    assert turns >= 2, f"the loop asked whether it is active {turns} times"
    assert short("team", "asr") is None


class OneEndpoint(NoEndpoints):
    def __init__(self, spec: dict[str, Any]) -> None:
        self.body = {"metadata": {"namespace": "team", "name": "held", "uid": "u1"}, "spec": spec}

    def endpoint(self, key: tuple[str, str]) -> dict[str, Any] | None:
        return self.body if key == ("team", "held") else None

    def endpoint_keys(self) -> list[tuple[str, str]]:
        return [("team", "held")]


async def test_a_suspend_ends_the_scaling_limited_episode_and_its_gauge() -> None:
    spec: dict[str, Any] = {"model": "mistralai/Voxtral-Mini-3B-2507", "gpu": {"type": "L4-24GB"}}
    view = OneEndpoint(spec)
    events: list[str] = []
    autoscaler = Autoscaler(
        client=ApiClient(Connection(server="https://127.0.0.1:1")),  # never called: suspended, nothing to scale
        config=OperatorConfig(),
        view=view,
        post_event=lambda _body, _type, reason, _message: events.append(reason),
    )
    key, limits = ("team", "held"), Limits(min_replicas=1, max_replicas=2)
    held = Decision(replicas=2, explanation=Explanation(why="test"), state=State(), demand_replicas=5)
    state = autoscaler._states.setdefault(key, _EndpointState())
    autoscaler._note_ceiling(key, view.body, state, held, limits, now=0.0)
    autoscaler._note_ceiling(key, view.body, state, held, limits, now=2.0)
    assert (events, short(*key)) == (["ScalingLimited"], 3.0)

    view.body["spec"] = {**spec, "suspended": True}
    await autoscaler.tick()
    assert short(*key) is None, "a suspended endpoint is held at zero by its owner, not by maxReplicas"

    # Started again and held at maxReplicas again: a new episode, told again.
    autoscaler._note_ceiling(key, view.body, state, held, limits, now=10.0)
    assert (events, short(*key)) == (["ScalingLimited", "ScalingLimited"], 3.0)
    REPLICAS_SHORT.clear()
