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
    RateLimited,
    Replica,
    Stopping,
    Suspended,
    choose,
)
from voxtral_operator.gateway.flows import FirstComeFirstServed
from voxtral_operator.gateway.limits import KeyLimits, KeyPolicies
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


async def test_a_replica_ready_again_keeps_the_requests_still_in_flight_on_it() -> None:
    # Its readiness flapped (one probe missed): the requests sent before are still running there.
    dispatcher = Dispatcher(max_inflight=2)
    dispatcher.set_replicas(["a:1"])
    first = [await dispatcher.acquire(SHORT) for _ in range(2)]  # a is full
    dispatcher.set_replicas([])
    dispatcher.set_replicas(["a:1"])
    snapshot = dispatcher.snapshot()
    assert snapshot.inflight == 2, snapshot
    assert snapshot.replicas == {"a:1": (2, 10.0)}, snapshot.replicas
    queued = asyncio.create_task(dispatcher.acquire(SHORT))
    await asyncio.sleep(0.05)
    assert not queued.done(), "dispatched beside the two still in flight on a full replica"
    first[0].release()
    lease = await asyncio.wait_for(queued, 5)
    assert lease.address == "a:1"
    for done in (first[1], lease):
        done.release()
    assert dispatcher.snapshot().inflight == 0


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


# --- fairness between keys and per-key limits -------------------------------------------------


async def queue_burst(dispatcher: Dispatcher, key: str, count: int, work: Work = SHORT) -> list[asyncio.Task[Lease]]:
    tasks = [asyncio.create_task(dispatcher.acquire(work, key=key, tenant=key)) for _ in range(count)]
    await asyncio.sleep(0.01)
    return tasks


async def serve_one_at_a_time(running: Lease, tasks: list[asyncio.Task[Lease]], count: int) -> list[str]:
    """Release the running request `count` times; the key of each request dispatched, in order."""
    order = []
    for _ in range(count):
        running.release()
        deadline = asyncio.get_running_loop().time() + 10
        while not (started := [t.result() for t in tasks if t.done() and not t.result().released]):
            assert asyncio.get_running_loop().time() < deadline, "no queued request was dispatched"
            await asyncio.sleep(0)
        assert len(started) == 1
        running = started[0]
        order.append(running.key)
    running.release()
    return order


@pytest.mark.parametrize(("fair", "b_served_within"), [(True, 7), (False, 201)])
async def test_a_burst_from_one_key_delays_another_by_about_one_turn(fair: bool, b_served_within: int) -> None:
    dispatcher = Dispatcher(max_inflight=1, queue_timeout=60, fairness=None if fair else FirstComeFirstServed())
    dispatcher.set_replicas(["a:1"])
    running = await dispatcher.acquire(SHORT, key="a")
    burst = await queue_burst(dispatcher, "a", 200)
    late = await queue_burst(dispatcher, "b", 1)
    assert dispatcher.snapshot().queued_by_key == {"a": 200, "b": 1}
    order = await serve_one_at_a_time(running, burst + late, 201)
    # A turn is 30 work-seconds: five of A's clips (5.9 work-seconds each), then B's; one FIFO queue serves it last.
    assert order.index("b") < b_served_within, order
    assert order.index("b") >= b_served_within - 7


async def test_weights_share_dispatch_in_proportion() -> None:
    policies = KeyPolicies(overrides={"heavy": KeyLimits(weight=3)})
    dispatcher = Dispatcher(max_inflight=1, queue_timeout=60, key_policies=policies)
    dispatcher.set_replicas(["a:1"])
    running = await dispatcher.acquire(SHORT, key="x")
    tasks = await queue_burst(dispatcher, "heavy", 100) + await queue_burst(dispatcher, "light", 100)
    order = await serve_one_at_a_time(running, tasks, 80)
    assert order.count("heavy") == pytest.approx(60, abs=4), order
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert dispatcher.snapshot().queued == 0
    assert dispatcher.snapshot().inflight == 0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_a_key_over_its_limit_gets_429_with_retry_after_while_another_is_served() -> None:
    clock = Clock()
    policies = KeyPolicies(KeyLimits(requests_per_minute=2), {"batch": KeyLimits(audio_seconds_per_minute=120)})
    dispatcher = Dispatcher(key_policies=policies, clock=clock)
    dispatcher.set_replicas(["a:1"])
    for _ in range(2):
        (await dispatcher.acquire(SHORT, key="k1", tenant="alice")).release()
    with pytest.raises(RateLimited) as limited:
        await dispatcher.acquire(SHORT, key="k1", tenant="alice")
    assert (limited.value.status, limited.value.retry_after, limited.value.code) == (429, 30, "rate_limit_exceeded")
    assert "requests per minute" in str(limited.value)
    (await dispatcher.acquire(SHORT, key="k2", tenant="bob")).release()  # another key: its own bucket
    (await dispatcher.acquire(Work(100, 0), key="k3", tenant="batch")).release()
    with pytest.raises(RateLimited) as limited:
        await dispatcher.acquire(Work(100, 0), key="k3", tenant="batch")
    assert limited.value.retry_after == 40  # 20 audio-seconds left, 100 wanted, 2 per second
    clock.now += 30
    (await dispatcher.acquire(SHORT, key="k1", tenant="alice")).release()
    assert dispatcher.snapshot().limited == {("k1", "requests_per_minute"): 1, ("k3", "audio_seconds_per_minute"): 1}


async def test_concurrency_counts_queued_and_in_flight_and_every_path_gives_it_back() -> None:
    dispatcher = Dispatcher(
        max_inflight=1, queue_timeout=0.2, key_policies=KeyPolicies(KeyLimits(concurrent_requests=2))
    )
    dispatcher.set_replicas(["a:1"])
    running = await dispatcher.acquire(SHORT, key="k")
    queued = await queue_burst(dispatcher, "k", 1)
    with pytest.raises(RateLimited) as limited:
        await dispatcher.acquire(SHORT, key="k")
    assert (limited.value.retry_after, dispatcher.limited[("k", "concurrent_requests")]) == (1, 1)
    queued[0].cancel()  # a caller hanging up
    await asyncio.gather(*queued, return_exceptions=True)
    timed_out = await queue_burst(dispatcher, "k", 1)
    with pytest.raises(QueueTimeout):
        await timed_out[0]
    running.release()
    # Every path gave its place back: the key has its two again.
    first = await dispatcher.acquire(SHORT, key="k")
    second = await queue_burst(dispatcher, "k", 1)
    with pytest.raises(RateLimited):
        await dispatcher.acquire(SHORT, key="k")
    first.release()
    (await second[0]).release()
    assert dispatcher.snapshot().inflight == 0
    assert dispatcher.limited[("k", "concurrent_requests")] == 2


async def test_a_full_queue_pushes_out_the_longest_flows_newest_request() -> None:
    dispatcher = Dispatcher(max_inflight=1, max_queue=3, queue_timeout=60)
    dispatcher.set_replicas(["a:1"])
    running = await dispatcher.acquire(SHORT, key="a")
    burst = await queue_burst(dispatcher, "a", 3)
    with pytest.raises(QueueFull):
        await dispatcher.acquire(SHORT, key="a")  # A's own request does not push A's out
    late = await queue_burst(dispatcher, "b", 1)
    with pytest.raises(QueueFull, match="this key has the most"):
        await burst[2]
    assert dispatcher.snapshot().queued_by_key == {"a": 2, "b": 1}
    assert dispatcher.limited == {("a", "queue_full"): 2}
    order = await serve_one_at_a_time(running, burst[:2] + late, 3)
    assert sorted(order) == ["a", "a", "b"]
    assert dispatcher.snapshot().inflight == 0


async def test_a_request_refused_or_pushed_out_of_a_full_queue_is_charged_nothing() -> None:
    now = [0.0]
    limits = KeyLimits(requests_per_minute=3)
    dispatcher = Dispatcher(
        max_inflight=1, max_queue=1, queue_timeout=60, key_policies=KeyPolicies(limits), clock=lambda: now[0]
    )
    dispatcher.set_replicas(["a:1"])
    running = await dispatcher.acquire(SHORT, key="a")  # charged: 1 of the minute's 3
    queued = asyncio.create_task(dispatcher.acquire(SHORT, key="a"))  # charged: 2
    await asyncio.sleep(0)
    with pytest.raises(QueueFull):
        await dispatcher.acquire(SHORT, key="a")  # refused: not charged
    running.release()
    (await queued).release()
    try:
        third = await dispatcher.acquire(SHORT, key="a")  # the minute's third: passes
    except RateLimited as exc:
        pytest.fail(f"the minute's third request refused: the queue_full refusal was charged ({exc})")
    with pytest.raises(RateLimited):
        await dispatcher.acquire(SHORT, key="a")  # and a fourth is over the limit
    third.release()


async def test_a_request_pushed_out_of_a_full_queue_is_refunded() -> None:
    now = [0.0]
    dispatcher = Dispatcher(
        max_inflight=1,
        max_queue=2,
        queue_timeout=60,
        key_policies=KeyPolicies(KeyLimits(requests_per_minute=3)),
        clock=lambda: now[0],
    )
    dispatcher.set_replicas(["a:1"])
    running = await dispatcher.acquire(SHORT, key="a")
    burst = await queue_burst(dispatcher, "b", 2)  # b charged 2 of its minute's 3
    late = await queue_burst(dispatcher, "c", 1)  # pushes out b's newest
    with pytest.raises(QueueFull, match="this key has the most"):
        await burst[1]
    order = await serve_one_at_a_time(running, [burst[0], *late], 2)
    assert sorted(order) == ["b", "c"]
    for served in range(2):  # b used one of its three: two more pass
        try:
            (await dispatcher.acquire(SHORT, key="b")).release()
        except RateLimited as exc:
            pytest.fail(f"b's request {served + 2} of 3 refused: the one pushed out was charged ({exc})")
