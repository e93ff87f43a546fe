"""The autoscaler's loop on a replica that is not the active one (peering): it shows no figures."""

from __future__ import annotations

import asyncio
from typing import Any

from prometheus_client import REGISTRY

from voxtral_operator.autoscale.loop import REPLICAS_SHORT, Autoscaler
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
