"""The gateway's central queue and work-aware dispatch, without any network."""

from __future__ import annotations

import asyncio

import pytest

from voxtral_operator.gateway.dispatch import (
    Dispatcher,
    HoldTimeout,
    Lease,
    QueueFull,
    QueueTimeout,
    Replica,
    Stopping,
    Suspended,
    choose,
)
from voxtral_operator.gateway.work import Work

SHORT = Work(audio_seconds=5, output_tokens=20)
LONG = Work(audio_seconds=1200, output_tokens=4800)


def test_choose_least_outstanding_work_with_room() -> None:
    a = Replica("a:1", inflight=1, outstanding=600)
    b = Replica("b:1", inflight=5, outstanding=30)
    c = Replica("c:1", inflight=8, outstanding=1)
    assert choose([a, b, c], max_inflight=8) is b  # c is full
    assert choose([a, b, c], max_inflight=9) is c
    assert choose([a, b, c], max_inflight=8, exclude=frozenset({"b:1"})) is a
    assert choose([a], max_inflight=1) is None
    assert choose([], max_inflight=8) is None
    assert choose([Replica("z:1"), Replica("y:1")], max_inflight=1).address == "y:1"  # type: ignore[union-attr]


async def test_short_requests_go_around_a_long_one() -> None:
    dispatcher = Dispatcher(max_inflight=8)
    dispatcher.set_replicas(["a:1", "b:1"])
    long = await dispatcher.acquire(LONG)
    shorts = [await dispatcher.acquire(SHORT) for _ in range(6)]
    # Least in-flight would have split them; outstanding work keeps them all off the long one.
    assert [lease.address for lease in shorts] == [next(a for a in dispatcher.replicas if a != long.address)] * 6
    for lease in [long, *shorts]:
        lease.release()
    assert dispatcher.snapshot().replicas == {"a:1": (0, 0.0), "b:1": (0, 0.0)}


async def test_fifo_when_every_replica_is_full() -> None:
    dispatcher = Dispatcher(max_inflight=1, queue_timeout=5)
    dispatcher.set_replicas(["a:1"])
    first = await dispatcher.acquire(SHORT)
    order: list[str] = []

    async def waiter(name: str) -> Lease:
        lease = await dispatcher.acquire(SHORT)
        order.append(name)
        return lease

    tasks = [asyncio.create_task(waiter(name)) for name in "xyz"]
    await asyncio.sleep(0.01)
    assert dispatcher.snapshot().queued == 3
    assert dispatcher.snapshot().queued_audio_seconds == pytest.approx(15)
    lease = first
    for _ in range(3):
        lease.release()
        await asyncio.sleep(0.01)
        lease = next(t.result() for t in tasks if t.done() and not t.result().released)
    assert order == ["x", "y", "z"]
    lease.release()
    assert dispatcher.snapshot().inflight == 0


async def test_a_new_request_does_not_overtake_queued_ones() -> None:
    dispatcher = Dispatcher(max_inflight=1, queue_timeout=5)
    dispatcher.set_replicas(["a:1"])
    first = await dispatcher.acquire(SHORT)
    queued = asyncio.create_task(dispatcher.acquire(SHORT))
    await asyncio.sleep(0.01)
    first.release()  # the queued one takes the slot at once
    late = asyncio.create_task(dispatcher.acquire(SHORT))
    await asyncio.sleep(0.01)
    assert queued.done()
    assert not late.done()
    queued.result().release()
    await asyncio.sleep(0.01)
    assert late.done()
    late.result().release()


async def test_queue_full_and_queue_timeout() -> None:
    dispatcher = Dispatcher(max_inflight=1, max_queue=2, queue_timeout=0.2)
    dispatcher.set_replicas(["a:1"])
    running = await dispatcher.acquire(SHORT)
    waiting = [asyncio.create_task(dispatcher.acquire(SHORT)) for _ in range(2)]
    await asyncio.sleep(0.01)
    with pytest.raises(QueueFull) as full:
        await dispatcher.acquire(SHORT)
    assert full.value.status == 429
    assert full.value.retry_after > 0
    for task in waiting:
        with pytest.raises(QueueTimeout) as late:
            await task
        assert late.value.status == 503
    assert dispatcher.snapshot().queued == 0
    running.release()


async def test_held_while_no_replica_then_dispatched_at_once() -> None:
    dispatcher = Dispatcher(queue_timeout=0.05, hold_timeout=5)
    held = asyncio.create_task(dispatcher.acquire(Work(30, 0)))
    await asyncio.sleep(0.2)  # past the queue timeout: a held request waits for the hold timeout
    assert not held.done()
    snapshot = dispatcher.snapshot()
    assert (snapshot.held, snapshot.queued, snapshot.queued_audio_seconds) == (1, 1, 30)
    dispatcher.set_replicas(["a:1"])
    assert dispatcher.replicas["a:1"].inflight == 1  # dispatched within set_replicas itself
    await asyncio.sleep(0.01)
    assert held.done()
    lease = held.result()
    assert lease.address == "a:1"
    assert dispatcher.snapshot().held == 0
    assert dispatcher.snapshot().inflight == 1
    lease.release()


async def test_hold_timeout() -> None:
    dispatcher = Dispatcher(hold_timeout=0.05)
    with pytest.raises(HoldTimeout, match="starting"):
        await dispatcher.acquire(SHORT)
    assert dispatcher.snapshot().held == 0


async def test_a_cancelled_waiter_leaves_the_queue_and_gives_back_its_slot() -> None:
    dispatcher = Dispatcher(max_inflight=1)
    dispatcher.set_replicas(["a:1"])
    first = await dispatcher.acquire(SHORT)
    waiting = asyncio.create_task(dispatcher.acquire(SHORT))
    await asyncio.sleep(0.01)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert dispatcher.snapshot().queued == 0
    first.release()
    assert dispatcher.replicas["a:1"].inflight == 0


async def test_a_replica_leaving_keeps_its_in_flight_requests_counted() -> None:
    dispatcher = Dispatcher()
    dispatcher.set_replicas(["a:1"])
    lease = await dispatcher.acquire(Work(10, 0))
    dispatcher.set_replicas(["b:1"])
    snapshot = dispatcher.snapshot()
    assert snapshot.ready_replicas == 1
    assert snapshot.inflight == 1
    assert snapshot.inflight_audio_seconds == 10
    assert set(snapshot.replicas) == {"b:1"}
    lease.release()
    lease.release()  # twice is once
    assert dispatcher.snapshot().inflight == 0
    assert (await dispatcher.acquire(SHORT)).address == "b:1"


async def test_exclusion_retries_on_another_replica() -> None:
    dispatcher = Dispatcher()
    dispatcher.set_replicas(["a:1", "b:1"])
    lease = await dispatcher.acquire(SHORT, exclude=frozenset({"a:1"}))
    assert lease.address == "b:1"


async def test_a_held_request_gets_its_full_queue_time_once_replicas_appear() -> None:
    dispatcher = Dispatcher(max_inflight=1, queue_timeout=0.3, hold_timeout=5)
    dispatcher.set_replicas(["a:1"])
    busy = await dispatcher.acquire(SHORT)
    dispatcher.set_replicas([])
    held = asyncio.create_task(dispatcher.acquire(SHORT))
    await asyncio.sleep(0.4)  # held longer than the queue timeout
    dispatcher.set_replicas(["b:1"])  # b has room: dispatched at once
    await asyncio.sleep(0.01)
    assert held.result().address == "b:1"
    queued = asyncio.create_task(dispatcher.acquire(SHORT))  # b is full now: queued
    await asyncio.sleep(0.1)
    assert not queued.done()
    with pytest.raises(QueueTimeout):
        await queued
    busy.release()
    held.result().release()


async def test_refusing_answers_held_requests_at_once_and_queued_ones_after_their_grace() -> None:
    dispatcher = Dispatcher(max_inflight=1, queue_timeout=600, hold_timeout=600)
    held = asyncio.create_task(dispatcher.acquire(SHORT))
    await asyncio.sleep(0.01)
    dispatcher.refuse(Suspended("suspended"))
    with pytest.raises(Suspended):
        await asyncio.wait_for(held, 5)
    with pytest.raises(Suspended):
        await dispatcher.acquire(SHORT)  # new ones too, without waiting
    dispatcher.refuse(None)
    dispatcher.set_replicas(["a:1"])
    running = await dispatcher.acquire(SHORT)
    queued = asyncio.create_task(dispatcher.acquire(SHORT))
    await asyncio.sleep(0.01)
    dispatcher.refuse(Stopping("stopping"), queued_grace=0.2)
    await asyncio.sleep(0.05)
    assert not queued.done()  # a queued request may still reach a replica within its grace
    with pytest.raises(Stopping):
        await asyncio.wait_for(queued, 5)
    running.release()  # what was on a replica is untouched by the refusal
    assert dispatcher.snapshot().inflight == 0
    assert dispatcher.waiting == 0


async def test_a_lower_hold_timeout_applies_to_requests_already_held() -> None:
    dispatcher = Dispatcher(hold_timeout=600)
    held = asyncio.create_task(dispatcher.acquire(SHORT))
    await asyncio.sleep(0.01)
    dispatcher.set_hold_timeout(0.05)
    with pytest.raises(HoldTimeout):
        await asyncio.wait_for(held, 5)
