"""kopf's start-up gate, counted (voxtral_operator.toggles): kopf's semantics, linear cost."""

from __future__ import annotations

import asyncio
import random

import pytest
from kopf._cogs.aiokits import aiotoggles

from voxtral_operator.toggles import STOCK_TOGGLE_SET, CountedToggleSet, install


class _Evaluated:
    """Counts the set's evaluations of its state: one per waiter woken, plus the set's own checks."""

    evaluations = 0

    def is_on(self) -> bool:
        self.evaluations += 1
        return super().is_on()  # type: ignore[misc, no-any-return]


class CountedEvaluated(_Evaluated, CountedToggleSet):
    pass


class StockEvaluated(_Evaluated, STOCK_TOGGLE_SET):  # type: ignore[misc, valid-type]
    pass


async def _startup(toggle_set: aiotoggles.ToggleSet, objects: int) -> None:
    """kopf's start-up as queueing.watcher and processing.process_resource_event drive the gate:
    a toggle per listed object, made before its worker starts; each worker drops its own and waits
    for all, and passes only once every toggle is dropped."""
    listing = await toggle_set.make_toggle(name="listing")
    passed = 0

    async def worker(toggle: aiotoggles.Toggle) -> None:
        nonlocal passed
        for _ in range(3):  # indexing the object takes a few turns of the loop
            await asyncio.sleep(0)
        await toggle_set.drop_toggle(toggle)
        await toggle_set.wait_for(True)
        passed += 1

    tasks = []
    for index in range(objects):
        assert not toggle_set.is_on(), f"the gate opened at object {index}, before the listing ended"
        tasks.append(asyncio.create_task(worker(await toggle_set.make_toggle(name=str(index)))))
        await asyncio.sleep(0)  # the listing arrives object by object, workers indexing meanwhile
    for _ in range(10):  # every worker has dropped its toggle and waits
        await asyncio.sleep(0)
    assert passed == 0, f"{passed} workers passed the gate before the listing ended"
    await toggle_set.drop_toggle(listing)
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=600)
    assert passed == objects


def _evaluations(toggle_set: _Evaluated, objects: int) -> int:
    asyncio.run(_startup(toggle_set, objects))  # type: ignore[arg-type]
    return toggle_set.evaluations


def test_ten_thousand_objects_pass_the_gate_in_linear_time() -> None:
    # Work is counted in evaluations of the set's state, not timed: the count is the same on a busy machine.
    thousand = _evaluations(CountedEvaluated(all), 1_000)
    ten_thousand = _evaluations(CountedEvaluated(all), 10_000)
    assert ten_thousand <= 8 * 10_000, f"10,000 objects: {ten_thousand} evaluations of the gate"
    assert ten_thousand <= 11 * thousand, f"not linear: {thousand} evaluations for 1,000, {ten_thousand} for 10,000"
    # kopf's own set, for scale: every drop wakes every waiting worker, so the work grows with the square.
    stock = _evaluations(StockEvaluated(all), 600)
    assert stock > 100 * 600, f"600 objects through kopf's set: only {stock} evaluations"


@pytest.mark.parametrize("fn", [any, all])
def test_same_states_as_kopfs_set(fn: object) -> None:
    """Random makes, turns and drops: the counted set is on exactly when kopf's would be."""

    async def run() -> None:
        rng = random.Random(7)
        counted = CountedToggleSet(fn)  # type: ignore[arg-type]
        stock = STOCK_TOGGLE_SET(fn)  # type: ignore[arg-type]
        pairs: list[tuple[aiotoggles.Toggle, aiotoggles.Toggle]] = []
        for step in range(2_000):
            action = rng.choice(["make", "turn", "drop", "drop-many"]) if pairs else "make"
            if action == "make":
                value = rng.random() < 0.5
                pairs.append((await counted.make_toggle(value), await stock.make_toggle(value)))
            elif action == "turn":
                mine, theirs = rng.choice(pairs)
                value = rng.random() < 0.5
                await mine.turn_to(value)
                await theirs.turn_to(value)
            elif action == "drop":
                mine, theirs = pairs.pop(rng.randrange(len(pairs)))
                await counted.drop_toggle(mine)
                await stock.drop_toggle(theirs)
                await counted.drop_toggle(mine)  # dropping twice changes nothing, as in kopf
            else:
                chosen = rng.sample(pairs, min(3, len(pairs)))
                pairs = [pair for pair in pairs if pair not in chosen]
                await counted.drop_toggles([pair[0] for pair in chosen])
                await stock.drop_toggles([pair[1] for pair in chosen])
            seen = f"step {step} ({action}): counted {counted.is_on()}, stock {stock.is_on()}"
            assert counted.is_on() == stock.is_on(), seen
            assert len(counted) == len(stock)

    asyncio.run(run())


def test_waiters_wake_when_the_state_changes() -> None:
    async def run() -> None:
        paused = CountedToggleSet(any)
        conflict = await paused.make_toggle(name="peering")
        resumed = asyncio.create_task(paused.wait_for(False))
        pausing = asyncio.create_task(paused.wait_for(True))
        await conflict.turn_to(True)
        await asyncio.wait_for(pausing, timeout=5)
        assert not resumed.done(), "a waiter for off woke while the set was on"
        await conflict.turn_to(False)
        await asyncio.wait_for(resumed, timeout=5)
        # A toggle's own waiters still wake at its turns (peering waits on its toggle so).
        own = asyncio.create_task(conflict.wait_for(True))
        await conflict.turn_to(True)
        await asyncio.wait_for(own, timeout=5)

    asyncio.run(run())


def test_install_makes_kopfs_sets_counted() -> None:
    try:
        install()
        from kopf._core.reactor import orchestration  # kopf builds its sets as aiotoggles.ToggleSet(...)

        assert orchestration.aiotoggles.ToggleSet is CountedToggleSet
    finally:
        aiotoggles.ToggleSet = STOCK_TOGGLE_SET  # type: ignore[misc]


def test_only_any_and_all_are_counted() -> None:
    with pytest.raises(ValueError, match="only any and all"):
        CountedToggleSet(lambda states: sum(states) > 1)
