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

Deferrable work (`lanes.py`) waits in a second queue with its own bound and its own (long) timeout,
held or queued alike; it is dispatched only while no interactive request waits and only into a
replica with more than the headroom of its slots free and, when the replica's KV cache size is
given, its outstanding KV tokens (both lanes', as this pod counts them) with the request's within
this pod's share. Each lane's admissions and failures are counted.

An interactive request that may wait in a replica's vLLM queue behind deferrable work, by a read of
the replica's waiting count (`read_waiting`, `lanes.to_take_back_on_waiting`), takes back this pod's
deferrable requests there that can be sent again: each is aborted (its connection to vLLM closed,
which aborts it there) and waits in the deferrable queue again, keeping its arrival time. Without
reads (`take_back_on_reads` off), an interactive request sent to a replica where its KV tokens do not
fit beside what this pod has in flight there takes them back at once, newest first, until they fit
(`lanes.to_take_back`), unless another replica has room where they fit as they are.
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

from voxtral_operator.gateway import lanes
from voxtral_operator.gateway.flows import DeficitRoundRobin, FairnessPolicy, FlowQueue
from voxtral_operator.gateway.limits import KeyLimiter, KeyLimits, KeyPolicies, Refusal
from voxtral_operator.gateway.metrics import Snapshot
from voxtral_operator.gateway.work import Work

QUEUE_FULL = "queue_full"  # the limit a 429 for a full queue is counted under
# A realtime session opens only while its key has audio left for one append of this length (a 100 ms
# chunk): a key whose audio-seconds are spent is refused at the handshake with a Retry-After, not given
# a replica's session slot that its first append would close.
SESSION_AUDIO_PROBE_SECONDS = 0.1


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
    deferrable: int = 0  # of `inflight`, deferrable requests
    deferrable_audio_seconds: float = 0.0  # of `audio_seconds`, the deferrable requests'
    kv_tokens: int = 0  # estimated KV tokens of the requests in flight, both lanes (Work.kv_tokens)
    gone: bool = False  # left the EndpointSlice; its in-flight requests finish or fail on their own
    # The deferrable leases that may be taken back (their body can be sent again), in dispatch order.
    retractable: list[Lease] = field(default_factory=list)
    # This pod's leases the replica has not answered yet, both lanes, in dispatch order (read_waiting).
    unanswered: list[Lease] = field(default_factory=list)


def choose(
    replicas: Iterable[Replica],
    max_inflight: int,
    exclude: frozenset[str] = frozenset(),
    fits: Callable[[Replica], bool] | None = None,
) -> Replica | None:
    """The replica with spare capacity (and that `fits` accepts) and the least outstanding work (ties: fewer
    in flight, then address)."""
    best: Replica | None = None
    for replica in replicas:
        if replica.gone or replica.inflight >= max_inflight or replica.address in exclude:
            continue
        if fits is not None and not fits(replica):
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
    lane: str = lanes.INTERACTIVE
    released: bool = False
    taken_back: bool = False  # aborted for an interactive request: to be sent again
    answered: bool = False  # the replica has answered (its headers came back; a stream's first event)
    _abort: Callable[[], object] | None = None

    @property
    def address(self) -> str:
        return self.replica.address

    @property
    def can_be_taken_back(self) -> bool:
        """Deferrable, its body kept, and not answered yet: in its replica's `retractable`."""
        return self._abort is not None

    def retractable(self, abort: Callable[[], object]) -> None:
        """This deferrable request can be sent again: `abort` stops its exchange if it is taken back."""
        if self.lane == lanes.DEFERRABLE and not self.released and self._abort is None:
            self._abort = abort
            self.replica.retractable.append(self)

    def settled(self) -> None:
        """The replica has answered (its caller sees the answer): no longer taken back."""
        if not self.answered:
            self.answered = True
            self.replica.unanswered.remove(self)
        if self._abort is not None:
            self._abort = None
            self.replica.retractable.remove(self)

    def take_back(self) -> None:
        abort = self._abort
        self.settled()
        self.taken_back = True
        if abort is not None:
            abort()

    def release(self) -> None:
        if not self.released:
            self.settled()
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
    lane: str = lanes.INTERACTIVE
    wakeup: asyncio.Future[None] | None = field(default=None)
    charged: KeyLimits | None = None  # the limits its key was charged under (refunded if it is pushed out)

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
        max_deferrable_queue: int = 10000,
        deferrable_timeout: float = 6 * 3600.0,
        kv_tokens_per_replica: int = 0,
        take_back_on_reads: bool = False,
        key_policies: KeyPolicies | None = None,
        fairness: FairnessPolicy[_Waiter] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_inflight = max_inflight
        self.max_queue = max_queue
        self.queue_timeout = queue_timeout
        self.hold_timeout = hold_timeout
        self.max_deferrable_queue = max_deferrable_queue
        self.deferrable_timeout = deferrable_timeout
        self.kv_tokens_per_replica = kv_tokens_per_replica  # this pod's share of a replica's KV cache; 0: unknown
        # Deferrable work is taken back on reads of vLLM's waiting count (read_waiting), not by the count
        # at dispatch.
        self.take_back_on_reads = take_back_on_reads
        self.key_policies = key_policies or KeyPolicies()
        self.replicas: dict[str, Replica] = {}
        self.refusing: Rejected | None = None  # suspended or stopping: what new requests get at once
        self._refuse_queued_at = 0.0
        self._ready_since = time.monotonic()  # when the replica set last became non-empty
        self._gone: dict[int, Replica] = {}  # left the slice with requests still in flight
        self._queue: FlowQueue[_Waiter] = FlowQueue(fairness or DeficitRoundRobin())
        self._deferred: FlowQueue[_Waiter] = FlowQueue(DeficitRoundRobin())
        self._arrivals = itertools.count()
        self._clock = clock  # the limits' time (waits use the event loop's)
        self._limiter = KeyLimiter()
        self._active: collections.Counter[str] = collections.Counter()  # leases per key
        self.limited: collections.Counter[tuple[str, str]] = collections.Counter()  # 429s per (key, limit)
        self.admitted: collections.Counter[str] = collections.Counter()  # dispatched per lane
        self.failed: collections.Counter[tuple[str, str]] = collections.Counter()  # refused per (lane, code)
        self.taken_back = 0  # deferrable requests aborted for interactive ones, to be sent again

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
        returning = {replica.address: replica for replica in self._gone.values() if replica.address in wanted}
        for address in wanted:
            if address in self.replicas:
                continue
            back = returning.get(address)
            if back is not None:  # ready again with requests still in flight there (a probe missed): they count
                del self._gone[id(back)]
                back.gone = False
            self.replicas[address] = back if back is not None else Replica(address)
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
        for waiter in [*self._queue, *self._deferred]:
            if waiter.wakeup is not None and not waiter.wakeup.done():
                waiter.wakeup.set_result(None)

    # --- requests ---------------------------------------------------------------------------

    async def acquire(
        self,
        work: Work,
        exclude: frozenset[str] = frozenset(),
        key: str = "anonymous",
        tenant: str | None = None,
        lane: str = lanes.INTERACTIVE,
        arrived: float | None = None,
    ) -> Lease:
        """A lease on the best replica, waiting its key's turn; raises a Rejected when it cannot.

        `key`: the caller's key id (its flow and limits); `tenant`: the name its weight and limits are
        configured under. A retry (`exclude` not empty, or `arrived` given: a request taken back) was
        admitted already and is not charged again; `arrived` (the event loop's clock) is when it first
        arrived, which its timeout counts from.
        `lane`: interactive, or deferrable (admitted only into what interactive work leaves idle).
        """
        try:
            lease = await self._acquire(work, exclude, key, tenant, lane, arrived)
        except Rejected as exc:
            self.failed[(lane, exc.code)] += 1
            raise
        if not exclude and arrived is None:
            self.admitted[lane] += 1
        return lease

    async def _acquire(
        self, work: Work, exclude: frozenset[str], key: str, tenant: str | None, lane: str, arrived: float | None
    ) -> Lease:
        if self.refusing is not None:
            raise copy.copy(self.refusing)
        deferrable = lane == lanes.DEFERRABLE
        queue = self._deferred if deferrable else self._queue
        limits = self.key_policies.of(tenant)
        first = not exclude and arrived is None  # charged once placed (a refused request is charged nothing)
        if first:
            active = self._held_by(key)
            refusal = self._limiter.admit(key, limits, work.audio_seconds, active, self._clock(), charge=False)
            if refusal is not None:
                raise self._rate_limited(key, refusal)
        if not queue and not self._queue:
            replica = self._choose(lane, work, exclude)
            if replica is not None:
                if first:
                    self._limiter.charge(key, limits, work.audio_seconds, self._clock())
                return self._lease(replica, work, key, lane)
        if len(queue) >= (self.max_deferrable_queue if deferrable else self.max_queue):
            self._make_room(queue, key, self.max_deferrable_queue if deferrable else self.max_queue)
        loop = asyncio.get_running_loop()
        since = time.monotonic() if arrived is None else arrived
        waiter = _Waiter(work, exclude, since, loop.create_future(), key, next(self._arrivals), lane)
        queue.push(key, waiter, limits.weight)
        if first:
            self._limiter.charge(key, limits, work.audio_seconds, self._clock())
            waiter.charged = limits
        try:
            while not waiter.future.done():
                held = not self.replicas
                now = time.monotonic()
                if self.refusing is not None and (held or now >= self._refuse_queued_at):
                    raise copy.copy(self.refusing)
                if deferrable:  # waits for spare capacity, held or queued: one long bound
                    remaining = waiter.arrived + self.deferrable_timeout - now
                elif held:
                    remaining = waiter.arrived + self.hold_timeout - now
                else:
                    remaining = max(waiter.arrived, self._ready_since) + self.queue_timeout - now
                    if self.refusing is not None:
                        remaining = min(remaining, self._refuse_queued_at - now)
                if remaining <= 0:
                    if deferrable:
                        raise QueueTimeout(
                            f"the deferrable request waited {self.deferrable_timeout:g}s for spare capacity; "
                            "retry later"
                        )
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
            queue.remove(key, waiter)
            if waiter.wakeup is not None and not waiter.wakeup.done():
                waiter.wakeup.cancel()

    def _held_by(self, key: str) -> int:
        """The key's requests (and realtime sessions) queued or in flight on this pod: its concurrency."""
        return self._active[key] + self._queue.waiting(key) + self._deferred.waiting(key)

    def _rate_limited(self, key: str, refusal: Refusal) -> RateLimited:
        """The answer to a limiter's refusal, counted."""
        self.limited[(key, refusal.limit)] += 1
        return RateLimited(
            f"Rate limit reached for key {key} on {refusal.limit.replace('_', ' ')}: {refusal.allowed:g} "
            f"on this gateway pod; retry in {refusal.retry_after}s",
            refusal.retry_after,
        )

    # --- realtime sessions: the same per-key limits ---------------------------------------------

    def open_session(self, key: str, tenant: str | None) -> None:
        """Charge a realtime session to its key as one request that holds one of the key's concurrent slots
        until `close_session`; raises RateLimited (nothing charged), also while the key's audio is spent."""
        limits, now = self.key_policies.of(tenant), self._clock()
        refusal = self._limiter.admit(key, limits, SESSION_AUDIO_PROBE_SECONDS, self._held_by(key), now, charge=False)
        if refusal is not None:
            raise self._rate_limited(key, refusal)
        self._limiter.charge(key, limits, 0.0, now)  # the request; its audio is charged append by append
        self._active[key] += 1

    def close_session(self, key: str) -> None:
        self._active[key] -= 1
        if self._active[key] <= 0:
            del self._active[key]

    def charge_session_audio(self, key: str, tenant: str | None, audio_seconds: float) -> RateLimited | None:
        """Charge the audio of a session's append to its key, or the refusal (counted, nothing charged)."""
        refusal = self._limiter.admit_audio(key, self.key_policies.of(tenant), audio_seconds, self._clock())
        return None if refusal is None else self._rate_limited(key, refusal)

    def _make_room(self, queue: FlowQueue[_Waiter], key: str, bound: int) -> None:
        """Push out the newest request of the longest flow for this key's request, or raise QueueFull."""
        longest = queue.longest()
        if longest is None or len(longest) <= queue.waiting(key) + 1:
            self.limited[(key, QUEUE_FULL)] += 1
            raise QueueFull(f"the endpoint's queue is full ({bound} requests waiting); retry later")
        victim = longest.newest()
        queue.remove(victim.key, victim)
        if victim.charged is not None:  # refused after all: charged nothing
            self._limiter.refund(victim.key, victim.charged, victim.work.audio_seconds, self._clock())
        self.limited[(victim.key, QUEUE_FULL)] += 1  # its own acquire() counts it as a failure of its lane
        victim.future.set_exception(
            QueueFull(
                f"the endpoint's queue is full ({bound} requests waiting) and this key has the most of them; "
                "retry later"
            )
        )

    def _slots(self, lane: str) -> int:
        """In-flight requests per replica below which a request of `lane` may be dispatched (lanes.admits)."""
        return lanes.deferrable_slots(self.max_inflight) if lane == lanes.DEFERRABLE else self.max_inflight

    def _choose(self, lane: str, work: Work, exclude: frozenset[str] = frozenset()) -> Replica | None:
        """The replica a request of `lane` goes to now by the lane rule (lanes.admits), or None. An interactive
        request that would take deferrable work back goes where its KV tokens fit as they are, if some replica
        has room for it: the deferrable work then is not sent again."""
        tokens, kv = work.kv_tokens, self.kv_tokens_per_replica
        if lane != lanes.DEFERRABLE or kv <= 0:
            best = choose(self.replicas.values(), self._slots(lane), exclude)
            if best is not None and kv > 0 and best.retractable and best.kv_tokens + tokens > kv:
                room = choose(self.replicas.values(), self._slots(lane), exclude, lambda r: r.kv_tokens + tokens <= kv)
                return room or best
            return best
        return choose(
            self.replicas.values(), self._slots(lane), exclude, lambda r: lanes.kv_admits(r.kv_tokens, tokens, kv)
        )

    def _lease(self, replica: Replica, work: Work, key: str, lane: str = lanes.INTERACTIVE) -> Lease:
        cost, tokens = work.cost, work.kv_tokens  # before any count moves: nothing is left to undo if it fails
        if lane == lanes.DEFERRABLE:
            replica.deferrable += 1
            replica.deferrable_audio_seconds += work.audio_seconds
        replica.inflight += 1
        replica.kv_tokens += tokens
        replica.outstanding += cost
        replica.audio_seconds += work.audio_seconds
        self._active[key] += 1
        counted = self.kv_tokens_per_replica > 0 and not self.take_back_on_reads
        if lane == lanes.INTERACTIVE and counted and replica.retractable:
            held = [lease.work.kv_tokens for lease in replica.retractable]
            indexes = lanes.to_take_back(replica.kv_tokens, self.kv_tokens_per_replica, held)
            taken = [replica.retractable[index] for index in indexes]
            for lease in taken:
                lease.take_back()
            self.taken_back += len(taken)
        lease = Lease(replica, work, self, key, lane)
        replica.unanswered.append(lease)
        return lease

    def to_read(self) -> list[str]:
        """The replicas whose waiting count `read_waiting` could act on now: where this pod has an unanswered
        interactive request beside deferrable ones it can take back (none unless it takes back on reads)."""
        if not self.take_back_on_reads:
            return []
        return [
            replica.address
            for replica in self.replicas.values()
            if replica.retractable and any(lease.lane == lanes.INTERACTIVE for lease in replica.unanswered)
        ]

    def read_waiting(self, address: str, waiting: float) -> int:
        """`waiting` requests wait in the vLLM queue of the replica at `address`, as just read from its metrics:
        take back this pod's deferrable requests there that one of its interactive requests may wait behind
        (lanes.to_take_back_on_waiting). Returns how many were taken back."""
        replica = self.replicas.get(address)
        if replica is None or not self.take_back_on_reads:
            return 0
        leases = list(replica.unanswered)
        unanswered = [
            lanes.Unanswered(lease.lane == lanes.DEFERRABLE, lease.work.kv_tokens, lease.can_be_taken_back)
            for lease in leases
        ]
        taken = [leases[index] for index in lanes.to_take_back_on_waiting(int(waiting), unanswered)]
        for lease in taken:
            lease.take_back()
        self.taken_back += len(taken)
        return len(taken)

    def _release(self, lease: Lease) -> None:
        self._active[lease.key] -= 1
        if not self._active[lease.key]:
            del self._active[lease.key]
        replica = lease.replica
        if lease.lane == lanes.DEFERRABLE:
            replica.deferrable -= 1
            replica.deferrable_audio_seconds = max(0.0, replica.deferrable_audio_seconds - lease.work.audio_seconds)
        replica.inflight -= 1
        replica.kv_tokens = max(0, replica.kv_tokens - lease.work.kv_tokens)
        replica.outstanding = max(0.0, replica.outstanding - lease.work.cost)
        replica.audio_seconds = max(0.0, replica.audio_seconds - lease.work.audio_seconds)
        if replica.inflight == 0:  # no float drift left behind
            replica.outstanding = replica.audio_seconds = replica.deferrable_audio_seconds = 0.0
            replica.kv_tokens = 0
            self._gone.pop(id(replica), None)
        self._pump()

    def _pump(self) -> None:
        """Dispatch waiting requests, the fairness policy choosing whose turn it is, while some replica has room:
        interactive ones first; deferrable ones only while no interactive request waits (lanes.admits)."""
        for lane, queue in ((lanes.INTERACTIVE, self._queue), (lanes.DEFERRABLE, self._deferred)):
            while queue and choose(self.replicas.values(), self._slots(lane)) is not None:
                if lane == lanes.DEFERRABLE and self._queue:
                    return
                waiter = queue.pop_next(self._placeable)
                if waiter is None:
                    break  # those waiting exclude the replicas with room
                replica = self._choose(waiter.lane, waiter.work, waiter.exclude)
                assert replica is not None
                waiter.future.set_result(self._lease(replica, waiter.work, waiter.key, waiter.lane))

    def _placeable(self, waiter: _Waiter) -> bool:
        return not waiter.future.done() and self._choose(waiter.lane, waiter.work, waiter.exclude) is not None

    # --- what the metrics show --------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        now = Snapshot()
        waiting = [*self._queue, *self._deferred]
        now.queued = len(waiting)
        now.queued_by_key = dict(
            collections.Counter(self._queue.by_key()) + collections.Counter(self._deferred.by_key())
        )
        now.limited = dict(self.limited)
        now.queued_audio_seconds = sum(w.work.audio_seconds for w in waiting)
        for lane, queue in ((lanes.INTERACTIVE, self._queue), (lanes.DEFERRABLE, self._deferred)):
            now.lanes[lane].queued = len(queue)
            now.lanes[lane].queued_audio_seconds = sum(w.work.audio_seconds for w in queue)
            now.lanes[lane].admitted = self.admitted[lane]
        now.lanes[lanes.DEFERRABLE].taken_back = self.taken_back
        for (lane, code), count in self.failed.items():
            now.lanes[lane].failed[code] = count
        now.held = now.queued if not self.replicas else 0
        now.ready_replicas = len(self.replicas)
        for replica in [*self.replicas.values(), *self._gone.values()]:
            now.lanes[lanes.DEFERRABLE].inflight += replica.deferrable
            now.lanes[lanes.INTERACTIVE].inflight += replica.inflight - replica.deferrable
            now.lanes[lanes.DEFERRABLE].inflight_audio_seconds += replica.deferrable_audio_seconds
            now.lanes[lanes.INTERACTIVE].inflight_audio_seconds += max(
                0.0, replica.audio_seconds - replica.deferrable_audio_seconds
            )
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
        return len(self._queue) + len(self._deferred)

    def replica_states(self) -> Mapping[str, Replica]:
        return self.replicas
