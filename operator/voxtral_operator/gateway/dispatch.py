"""The central queue and work-aware dispatch of one gateway process. No I/O.

A request waits in one bounded FIFO queue until some replica has fewer than `max_inflight`
requests in flight; among those, it goes to the replica with the least outstanding work (the sum
of the estimated work of its in-flight requests). While no replica is ready at all, waiting
requests are *held* (bounded by the hold timeout, not the queue timeout) and dispatch the moment
a replica appears.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from voxtral_operator.gateway.metrics import Snapshot
from voxtral_operator.gateway.work import Work


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
    wakeup: asyncio.Future[None] | None = field(default=None)


class Dispatcher:
    def __init__(
        self,
        *,
        max_inflight: int = 256,
        max_queue: int = 1000,
        queue_timeout: float = 600.0,
        hold_timeout: float = 1200.0,
    ) -> None:
        self.max_inflight = max_inflight
        self.max_queue = max_queue
        self.queue_timeout = queue_timeout
        self.hold_timeout = hold_timeout
        self.replicas: dict[str, Replica] = {}
        self._ready_since = time.monotonic()  # when the replica set last became non-empty
        self._gone: dict[int, Replica] = {}  # left the slice with requests still in flight
        self._waiting: collections.OrderedDict[_Waiter, None] = collections.OrderedDict()

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
        for waiter in self._waiting:  # held and queued ones re-read which timeout applies
            if waiter.wakeup is not None and not waiter.wakeup.done():
                waiter.wakeup.set_result(None)

    # --- requests ---------------------------------------------------------------------------

    async def acquire(self, work: Work, exclude: frozenset[str] = frozenset()) -> Lease:
        """A lease on the best replica, waiting in FIFO order; raises a Rejected when it cannot."""
        if not self._waiting:
            replica = choose(self.replicas.values(), self.max_inflight, exclude)
            if replica is not None:
                return self._lease(replica, work)
        if len(self._waiting) >= self.max_queue:
            raise QueueFull(f"the endpoint's queue is full ({self.max_queue} requests waiting); retry later")
        loop = asyncio.get_running_loop()
        waiter = _Waiter(work, exclude, time.monotonic(), loop.create_future())
        self._waiting[waiter] = None
        try:
            while not waiter.future.done():
                held = not self.replicas
                if held:
                    remaining = waiter.arrived + self.hold_timeout - time.monotonic()
                else:
                    remaining = max(waiter.arrived, self._ready_since) + self.queue_timeout - time.monotonic()
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
            if waiter.future.done() and not waiter.future.cancelled():
                waiter.future.result().release()  # dispatched as the caller gave up: give the slot back
            else:
                waiter.future.cancel()
            raise
        finally:
            self._waiting.pop(waiter, None)
            if waiter.wakeup is not None and not waiter.wakeup.done():
                waiter.wakeup.cancel()

    def _lease(self, replica: Replica, work: Work) -> Lease:
        cost = work.cost  # before any count moves: nothing is left to undo if it fails
        replica.inflight += 1
        replica.outstanding += cost
        replica.audio_seconds += work.audio_seconds
        return Lease(replica, work, self)

    def _release(self, lease: Lease) -> None:
        replica = lease.replica
        replica.inflight -= 1
        replica.outstanding = max(0.0, replica.outstanding - lease.work.cost)
        replica.audio_seconds = max(0.0, replica.audio_seconds - lease.work.audio_seconds)
        if replica.inflight == 0:  # no float drift left behind
            replica.outstanding = replica.audio_seconds = 0.0
            self._gone.pop(id(replica), None)
        self._pump()

    def _pump(self) -> None:
        """Dispatch waiting requests in arrival order while some replica has room."""
        for waiter in list(self._waiting):
            if waiter.future.done():
                continue
            replica = choose(self.replicas.values(), self.max_inflight, waiter.exclude)
            if replica is None:
                if choose(self.replicas.values(), self.max_inflight) is None:
                    return  # every replica is full: the rest keep their places
                continue  # this one excludes the replicas with room; later ones may take them
            waiter.future.set_result(self._lease(replica, waiter.work))
            self._waiting.pop(waiter, None)

    # --- what the metrics show --------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        now = Snapshot()
        waiting = [w for w in self._waiting if not w.future.done()]
        now.queued = len(waiting)
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
        return sum(1 for w in self._waiting if not w.future.done())

    def replica_states(self) -> Mapping[str, Replica]:
        return self.replicas
