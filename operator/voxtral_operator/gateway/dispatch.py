"""The queue, per-key limits and work-aware dispatch of one gateway process. No I/O.

A request first passes its key's limits (requests and audio-seconds per minute, concurrency; 429
with a Retry-After from the limiter when over). It then waits in one bounded queue, kept as a flow
per key with a fairness policy between the flows (weighted deficit round robin by estimated work;
first come first served inside a flow), until some replica has fewer than `max_inflight` requests
in flight; among those, it goes to the replica with the least outstanding work (the sum of the
estimated work of its in-flight requests). While no replica is ready at all, waiting requests are
*held* (bounded by the hold timeout, not the queue timeout) and dispatch the moment a replica
appears. When the queue is full, a newcomer whose key has fewer requests waiting than the longest
flow takes the place of that flow's newest request (429 to it): one key's burst cannot fill the
queue against the others.
"""

from __future__ import annotations

import asyncio
import collections
import copy
import itertools
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from voxtral_operator.gateway.flows import DeficitRoundRobin, FairnessPolicy, FlowQueue
from voxtral_operator.gateway.limits import KeyLimiter, KeyPolicies
from voxtral_operator.gateway.metrics import Snapshot
from voxtral_operator.gateway.work import Work

QUEUE_FULL = "queue_full"  # the limit a 429 for a full queue is counted under


class Rejected(Exception):
    """A request the gateway will not dispatch: the status and the Retry-After it answers with."""

    status = 503
    retry_after = 5
    code = "service_unavailable"


class QueueFull(Rejected):
    status = 429
    retry_after = 2
    code = "queue_full"


class QueueTimeout(Rejected):
    retry_after = 5
    code = "queue_timeout"


class HoldTimeout(Rejected):
    retry_after = 30
    code = "endpoint_starting"


class Suspended(Rejected):
    retry_after = 60
    code = "endpoint_suspended"


class Stopping(Rejected):
    """This gateway pod is shutting down: another one (or its successor) takes the retry."""

    retry_after = 1
    code = "gateway_stopping"


class RateLimited(Rejected):
    status = 429
    code = "rate_limit_exceeded"

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass
class Replica:
    address: str  # host:port
    inflight: int = 0
    outstanding: float = 0.0  # estimated work in flight
    audio_seconds: float = 0.0  # audio in flight
    gone: bool = False  # left the EndpointSlice; its in-flight requests finish or fail on their own


def choose(replicas: Iterable[Replica], max_inflight: int, exclude: frozenset[str] = frozenset()) -> Replica | None:
    """The replica with spare capacity and the least outstanding work (ties: fewer in flight, then address)."""
    best: Replica | None = None
    for replica in replicas:
        if replica.gone or replica.inflight >= max_inflight or replica.address in exclude:
            continue
        if best is None or (replica.outstanding, replica.inflight, replica.address) < (
            best.outstanding,
            best.inflight,
            best.address,
        ):
            best = replica
    return best


@dataclass(eq=False)
class Lease:
    """A request's place on a replica, from dispatch to release."""

    replica: Replica
    work: Work
    _dispatcher: Dispatcher
    key: str = "anonymous"
    released: bool = False

    @property
    def address(self) -> str:
        return self.replica.address

    def release(self) -> None:
        if not self.released:
            self.released = True
            self._dispatcher._release(self)


@dataclass(eq=False)
class _Waiter:
    work: Work
    exclude: frozenset[str]
    arrived: float
    future: asyncio.Future[Lease]
    key: str
    order: int
    wakeup: asyncio.Future[None] | None = field(default=None)

    @property
    def cost(self) -> float:
        return self.work.cost


class Dispatcher:
    def __init__(
        self,
        *,
        max_inflight: int = 256,
        max_queue: int = 1000,
        queue_timeout: float = 600.0,
        hold_timeout: float = 1200.0,
        key_policies: KeyPolicies | None = None,
        fairness: FairnessPolicy[_Waiter] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_inflight = max_inflight
        self.max_queue = max_queue
        self.queue_timeout = queue_timeout
        self.hold_timeout = hold_timeout
        self.key_policies = key_policies or KeyPolicies()
        self.replicas: dict[str, Replica] = {}
        self.refusing: Rejected | None = None  # suspended or stopping: what new requests get at once
        self._refuse_queued_at = 0.0
        self._ready_since = time.monotonic()  # when the replica set last became non-empty
        self._gone: dict[int, Replica] = {}  # left the slice with requests still in flight
        self._queue: FlowQueue[_Waiter] = FlowQueue(fairness or DeficitRoundRobin())
        self._arrivals = itertools.count()
        self._clock = clock  # the limits' time (waits use the event loop's)
        self._limiter = KeyLimiter()
        self._active: collections.Counter[str] = collections.Counter()  # leases per key
        self.limited: collections.Counter[tuple[str, str]] = collections.Counter()  # 429s per (key, limit)

    # --- the replica set --------------------------------------------------------------------

    def set_replicas(self, addresses: Iterable[str]) -> None:
        """The ready replicas now (from the EndpointSlices): waiting requests dispatch at once."""
        wanted = set(addresses)
        if wanted and not self.replicas:
            self._ready_since = time.monotonic()  # held requests' queue time starts now
        for address in list(self.replicas):
            if address not in wanted:
                replica = self.replicas.pop(address)
                replica.gone = True
                if replica.inflight:
                    self._gone[id(replica)] = replica
        for address in wanted:
            self.replicas.setdefault(address, Replica(address))
        self._pump()
        self._wake_all()  # held and queued ones re-read which timeout applies

    def refuse(self, error: Rejected | None, *, queued_grace: float = 0.0) -> None:
        """From now on answer new requests with `error` (None: serve again). Held requests (no replica
        ready) get it at once; queued ones keep their place for `queued_grace` seconds more, then get it.
        Requests already on a replica are not touched: they finish there."""
        self.refusing = error
        self._refuse_queued_at = time.monotonic() + queued_grace
        self._wake_all()

    def set_hold_timeout(self, seconds: float) -> None:
        """A new bound for held requests, counted from their arrival; they re-read it now."""
        self.hold_timeout = seconds
        self._wake_all()

    def _wake_all(self) -> None:
        for waiter in self._queue:
            if waiter.wakeup is not None and not waiter.wakeup.done():
                waiter.wakeup.set_result(None)

    # --- requests ---------------------------------------------------------------------------

    async def acquire(
        self, work: Work, exclude: frozenset[str] = frozenset(), key: str = "anonymous", tenant: str | None = None
    ) -> Lease:
        """A lease on the best replica, waiting its key's turn; raises a Rejected when it cannot.

        `key`: the caller's key id (its flow and limits); `tenant`: the name its weight and limits are
        configured under. A retry (`exclude` not empty) was admitted already and is not charged again.
        """
        if self.refusing is not None:
            raise copy.copy(self.refusing)
        limits = self.key_policies.of(tenant)
        if not exclude:
            active = self._active[key] + self._queue.waiting(key)
            refusal = self._limiter.admit(key, limits, work.audio_seconds, active, self._clock())
            if refusal is not None:
                self.limited[(key, refusal.limit)] += 1
                raise RateLimited(
                    f"Rate limit reached for key {key} on {refusal.limit.replace('_', ' ')}: {refusal.allowed:g} "
                    f"on this gateway pod; retry in {refusal.retry_after}s",
                    refusal.retry_after,
                )
        if not self._queue:
            replica = choose(self.replicas.values(), self.max_inflight, exclude)
            if replica is not None:
                return self._lease(replica, work, key)
        if len(self._queue) >= self.max_queue:
            self._make_room(key)
        loop = asyncio.get_running_loop()
        waiter = _Waiter(work, exclude, time.monotonic(), loop.create_future(), key, next(self._arrivals))
        self._queue.push(key, waiter, limits.weight)
        try:
            while not waiter.future.done():
                held = not self.replicas
                now = time.monotonic()
                if self.refusing is not None and (held or now >= self._refuse_queued_at):
                    raise copy.copy(self.refusing)
                if held:
                    remaining = waiter.arrived + self.hold_timeout - now
                else:
                    remaining = max(waiter.arrived, self._ready_since) + self.queue_timeout - now
                    if self.refusing is not None:
                        remaining = min(remaining, self._refuse_queued_at - now)
                if remaining <= 0:
                    if held:
                        raise HoldTimeout(
                            f"the endpoint is starting (scaled to zero or no replica ready): none became ready "
                            f"within {self.hold_timeout:g}s; retry later"
                        )
                    raise QueueTimeout(f"the request waited {self.queue_timeout:g}s in the queue; retry later")
                waiter.wakeup = loop.create_future()
                either: list[asyncio.Future[Any]] = [waiter.future, waiter.wakeup]
                await asyncio.wait(either, timeout=remaining, return_when="FIRST_COMPLETED")
            return waiter.future.result()
        except BaseException:
            future = waiter.future
            if future.done() and not future.cancelled() and future.exception() is None:
                future.result().release()  # dispatched as the caller gave up: give the slot back
            else:
                future.cancel()
            raise
        finally:
            self._queue.remove(key, waiter)
            if waiter.wakeup is not None and not waiter.wakeup.done():
                waiter.wakeup.cancel()

    def _make_room(self, key: str) -> None:
        """Push out the newest request of the longest flow for this key's request, or raise QueueFull."""
        longest = self._queue.longest()
        if longest is None or len(longest) <= self._queue.waiting(key) + 1:
            self.limited[(key, QUEUE_FULL)] += 1
            raise QueueFull(f"the endpoint's queue is full ({self.max_queue} requests waiting); retry later")
        victim = longest.newest()
        self._queue.remove(victim.key, victim)
        self.limited[(victim.key, QUEUE_FULL)] += 1
        victim.future.set_exception(
            QueueFull(
                f"the endpoint's queue is full ({self.max_queue} requests waiting) and this key has the most of "
                "them; retry later"
            )
        )

    def _lease(self, replica: Replica, work: Work, key: str) -> Lease:
        cost = work.cost  # before any count moves: nothing is left to undo if it fails
        replica.inflight += 1
        replica.outstanding += cost
        replica.audio_seconds += work.audio_seconds
        self._active[key] += 1
        return Lease(replica, work, self, key)

    def _release(self, lease: Lease) -> None:
        self._active[lease.key] -= 1
        if not self._active[lease.key]:
            del self._active[lease.key]
        replica = lease.replica
        replica.inflight -= 1
        replica.outstanding = max(0.0, replica.outstanding - lease.work.cost)
        replica.audio_seconds = max(0.0, replica.audio_seconds - lease.work.audio_seconds)
        if replica.inflight == 0:  # no float drift left behind
            replica.outstanding = replica.audio_seconds = 0.0
            self._gone.pop(id(replica), None)
        self._pump()

    def _pump(self) -> None:
        """Dispatch waiting requests, the fairness policy choosing whose turn it is, while some replica has room."""
        while self._queue and choose(self.replicas.values(), self.max_inflight) is not None:
            waiter = self._queue.pop_next(self._placeable)
            if waiter is None:
                return  # those waiting exclude the replicas with room
            replica = choose(self.replicas.values(), self.max_inflight, waiter.exclude)
            assert replica is not None
            waiter.future.set_result(self._lease(replica, waiter.work, waiter.key))

    def _placeable(self, waiter: _Waiter) -> bool:
        return (
            not waiter.future.done() and choose(self.replicas.values(), self.max_inflight, waiter.exclude) is not None
        )

    # --- what the metrics show --------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        now = Snapshot()
        waiting = list(self._queue)
        now.queued = len(waiting)
        now.queued_by_key = self._queue.by_key()
        now.limited = dict(self.limited)
        now.queued_audio_seconds = sum(w.work.audio_seconds for w in waiting)
        now.held = now.queued if not self.replicas else 0
        now.ready_replicas = len(self.replicas)
        for replica in self.replicas.values():
            now.inflight += replica.inflight
            now.inflight_audio_seconds += replica.audio_seconds
            now.replicas[replica.address] = (replica.inflight, replica.audio_seconds)
        for replica in self._gone.values():
            now.inflight += replica.inflight
            now.inflight_audio_seconds += replica.audio_seconds
        return now

    @property
    def waiting(self) -> int:
        return len(self._queue)

    def replica_states(self) -> Mapping[str, Replica]:
        return self.replicas
