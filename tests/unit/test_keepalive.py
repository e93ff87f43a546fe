"""The peering keep-alive (voxtral_operator.keepalive): a touch every third of the lease, a withdrawal on exit."""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

import kopf
import pytest
from kopf._core.engines import peering
from kopf._core.reactor import orchestration

from voxtral_operator import keepalive


def test_touches_every_third_of_the_lease_and_withdraws_on_exit(monkeypatch: pytest.MonkeyPatch) -> None:
    touches: list[tuple[float, int | None]] = []

    async def touch(*, lifetime: int | None = None, **_: Any) -> None:
        touches.append((time.monotonic(), lifetime))

    # kopf's touch is the API call (covered by the peering e2e tests); here only the cadence is judged.
    monkeypatch.setattr(peering, "touch", touch)
    settings = kopf.OperatorSettings()
    settings.peering.lifetime = 3

    async def run() -> None:
        task = asyncio.create_task(
            keepalive.keepalive(namespace=None, resource=None, identity=peering.Identity("me"), settings=settings)  # type: ignore[arg-type]
        )
        await asyncio.sleep(3.5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(run())
    alive = [at for at, lifetime in touches if lifetime is None]
    gaps = [later - earlier for earlier, later in itertools.pairwise(alive)]
    assert len(alive) >= 3, f"{len(alive)} touches in 3.5 s with a 3 s lease: {touches}"
    assert all(gap >= 0.9 for gap in gaps), f"touches {gaps} s apart, a third of the lease is 1 s"
    assert touches[-1][1] == 0, f"no withdrawal (lease 0) on exit: {touches[-3:]}"


def test_install_replaces_kopfs_keepalive() -> None:
    try:
        keepalive.install()
        assert orchestration.peering.keepalive is keepalive.keepalive
    finally:
        peering.keepalive = keepalive.STOCK_KEEPALIVE  # type: ignore[assignment]
