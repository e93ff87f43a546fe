"""Benchmark: one queue across the gateway pods, or a queue per pod, under skewed arrivals.

A seeded discrete-event simulation that runs the gateway's real `Dispatcher` (its flows, fairness
policy and replica choice) on an asyncio loop whose clock is virtual: sleeps advance simulated
time at once, so an hour of traffic takes seconds. For each seed the same arrivals go through:

- `one queue`: a single dispatcher with a replica's whole `maxNumSeqs` (the baseline);
- `per-pod, split`: G gateway pods, each its own dispatcher allowed floor(maxNumSeqs / G) in flight
  per replica (what the operator renders), callers reaching a pod through kube-proxy;
- `per-pod, full`: the same pods, each allowed the whole maxNumSeqs per replica; what a replica
  cannot run at once waits in vLLM's own FCFS queue.

Skew: callers are keys with Zipf-distributed rates sending Poisson arrivals over HTTP/1.1
keep-alive connections (one request at a time per connection; a caller reuses its most recently
freed connection, opens a new one when none is free, and drops one idle for 15 s); kube-proxy
picks a pod at random for each new connection, and the connection sticks to it. On top, one
batch key opens a burst of requests with many connections every ten minutes.

Printed per configuration, spread over the seeds (median, and the worst seed):
- utilisation while work waits: busy sequence slots / all slots, counted only while some request
  waits anywhere (a gateway queue or vLLM's); one queue is near 100 %, idle slots here are lost;
- overall utilisation of the slots over the horizon;
- p95 and p99 wait (from reaching a gateway pod to a vLLM slot: the gateway's queue and vLLM's),
  for all requests, for the interactive (non-batch) keys alone, and p95 for the batch key.

Not modelled: vLLM's batching (a slot runs at one speed whatever the others do), network and
gateway CPU time, replicas coming and going (autoscaling), gateway pods restarting, limits and
timeouts (none is reached), kube-proxy modes other than random (IPVS round robin skews less).

    .venv/bin/python bench/gateway_queues.py [--seeds N] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import selectors
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from voxtral_operator.gateway.dispatch import Dispatcher
from voxtral_operator.gateway.work import Work

REPLICAS = 2
SLOTS = 16  # vLLM's maxNumSeqs per replica
GATEWAY_PODS = 2  # the spec's default gateway.replicas
SPEED = 12.0  # work-seconds a slot does per second
KEYS = 20
ZIPF = 1.1
BACKGROUND_LOAD = 0.6  # of the slots' capacity, from the interactive keys
BURST_EVERY = 600.0
BURST_CONNECTIONS = 24
BURST_WORK = 0.25  # each burst brings this share of a BURST_EVERY period's capacity
CLIENT_POOL = 100  # aiohttp's default connection limit, for the interactive keys
IDLE_CLOSE = 15.0
HORIZON = 3600.0


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock jumps to the next timer instead of waiting for it (no I/O happens)."""

    def __init__(self) -> None:
        super().__init__(selectors.DefaultSelector())
        self._now = 0.0
        real = self._selector.select  # type: ignore[attr-defined]

        def select(timeout: float | None = None) -> list[Any]:
            if timeout is None:
                raise RuntimeError("the simulation waits on nothing: a request was never answered")
            self._now += max(0.0, timeout)
            return real(0)  # type: ignore[no-any-return]

        self._selector.select = select  # type: ignore[attr-defined]

    def time(self) -> float:
        return self._now


def clip(rng: random.Random) -> Work:
    """Mostly short clips, now and then a long recording."""
    if rng.random() < 0.02:
        return Work(audio_seconds=rng.uniform(300, 1200), output_tokens=rng.randint(1000, 4000))
    return Work(audio_seconds=rng.uniform(3, 60), output_tokens=rng.randint(20, 400))


@dataclass
class Arrival:
    at: float
    key: str
    work: Work
    batch: bool


def arrivals(seed: int, horizon: float) -> list[Arrival]:
    rng = random.Random(seed)
    capacity = REPLICAS * SLOTS * SPEED  # work-seconds per second
    sampler = random.Random(seed + 1)
    mean = statistics.fmean(clip(sampler).cost for _ in range(20000))
    weights = [1 / (rank + 1) ** ZIPF for rank in range(KEYS)]
    total = sum(weights)
    found: list[Arrival] = []
    for index, weight in enumerate(weights):
        rate = BACKGROUND_LOAD * capacity / mean * weight / total
        at = rng.expovariate(rate)
        while at < horizon:
            found.append(Arrival(at, f"key-{index}", clip(rng), False))
            at += rng.expovariate(rate)
    start = rng.uniform(0, BURST_EVERY / 2)
    while start < horizon:
        work = 0.0
        while work < BURST_WORK * capacity * BURST_EVERY:
            request = clip(rng)
            found.append(Arrival(start, "batch", request, True))
            work += request.cost
        start += BURST_EVERY
    found.sort(key=lambda a: a.at)
    return found


def offered_load(workload: list[Arrival]) -> float:
    return sum(a.work.cost for a in workload) / (REPLICAS * SLOTS * SPEED * HORIZON)


@dataclass
class Connection:
    pod: int
    freed: float = 0.0


@dataclass
class Caller:
    """A key's client: a pool of keep-alive connections, each stuck to the pod it first reached."""

    limit: int
    idle: list[Connection] = field(default_factory=list)
    open: int = 0
    waiting: list[asyncio.Future[Connection]] = field(default_factory=list)

    async def connection(self, loop: asyncio.AbstractEventLoop, pods: int, rng: random.Random) -> Connection:
        now = loop.time()
        while self.idle and now - self.idle[0].freed > IDLE_CLOSE:  # closed while idle
            self.idle.pop(0)
            self.open -= 1
        if self.idle:
            return self.idle.pop()  # the most recently freed
        if self.open < self.limit:
            self.open += 1
            return Connection(rng.randrange(pods))  # kube-proxy: a pod at random per connection
        future: asyncio.Future[Connection] = loop.create_future()
        self.waiting.append(future)
        return await future

    def free(self, connection: Connection, now: float) -> None:
        if self.waiting:
            self.waiting.pop(0).set_result(connection)
            return
        connection.freed = now
        self.idle.append(connection)


class Ledger:
    """Busy slots and waiting requests over time, integrated as they change."""

    def __init__(self, loop: asyncio.AbstractEventLoop, slots: int, horizon: float) -> None:
        self.loop = loop
        self.slots = slots
        self.horizon = horizon
        self.busy = 0
        self.waiting = 0
        self.last = 0.0
        self.busy_time = 0.0
        self.busy_while_waiting = 0.0
        self.time_waiting = 0.0

    def change(self, busy: int = 0, waiting: int = 0) -> None:
        now = min(self.loop.time(), self.horizon)
        span = now - self.last
        self.busy_time += self.busy * span
        if self.waiting > 0:
            self.busy_while_waiting += self.busy * span
            self.time_waiting += span
        self.last = now
        self.busy += busy
        self.waiting += waiting


class Replica:
    """vLLM: SLOTS sequences at once, the rest in its FCFS waiting queue."""

    def __init__(self, ledger: Ledger) -> None:
        self.free = SLOTS
        self.queue: list[asyncio.Future[None]] = []
        self.ledger = ledger

    async def run(self, seconds: float, started: Callable[[], None]) -> None:
        if self.free == 0 or self.queue:
            self.ledger.change(waiting=+1)
            ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self.queue.append(ready)
            await ready
            self.ledger.change(waiting=-1)
        else:
            self.free -= 1
        started()
        self.ledger.change(busy=+1)
        await asyncio.sleep(seconds)
        self.ledger.change(busy=-1)
        if self.queue:
            self.queue.pop(0).set_result(None)  # the slot passes straight on
        else:
            self.free += 1


@dataclass
class Outcome:
    waiting_utilisation: float
    utilisation: float
    p95: float
    p99: float
    p95_interactive: float
    p99_interactive: float
    p95_batch: float


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else 0.0


async def simulate(workload: list[Arrival], pods: int, per_pod_inflight: int, seed: int) -> Outcome:
    loop = asyncio.get_running_loop()
    rng = random.Random(seed * 7919 + pods)
    ledger = Ledger(loop, REPLICAS * SLOTS, HORIZON)
    addresses = [f"replica-{i}:8000" for i in range(REPLICAS)]
    replicas = {address: Replica(ledger) for address in addresses}
    gateways = []
    for _ in range(pods):
        dispatcher = Dispatcher(max_inflight=per_pod_inflight, max_queue=10**9, queue_timeout=1e12, hold_timeout=1e12)
        dispatcher.set_replicas(addresses)
        gateways.append(dispatcher)
    callers: dict[str, Caller] = {}
    waits: list[tuple[float, bool]] = []

    async def request(arrival: Arrival) -> None:
        caller = callers.setdefault(arrival.key, Caller(BURST_CONNECTIONS if arrival.batch else CLIENT_POOL))
        connection = await caller.connection(loop, pods, rng)
        reached = loop.time()  # waiting for a free connection is the caller's own limit: not counted
        dispatcher = gateways[connection.pod]
        queued = dispatcher.waiting > 0 or not any(
            r.inflight < per_pod_inflight for r in dispatcher.replica_states().values()
        )
        if queued:
            ledger.change(waiting=+1)
        lease = await dispatcher.acquire(arrival.work, key=arrival.key, tenant=arrival.key)
        if queued:
            ledger.change(waiting=-1)
        await replicas[lease.address].run(
            arrival.work.cost / SPEED, lambda: waits.append((loop.time() - reached, arrival.batch))
        )
        lease.release()
        caller.free(connection, loop.time())

    tasks = []
    for arrival in workload:
        delay = arrival.at - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(request(arrival)))
    await asyncio.gather(*tasks)
    ledger.change()
    interactive = [wait for wait, batch in waits if not batch]
    every = [wait for wait, _ in waits]
    return Outcome(
        waiting_utilisation=ledger.busy_while_waiting / (ledger.slots * ledger.time_waiting)
        if ledger.time_waiting
        else 1.0,
        utilisation=ledger.busy_time / (ledger.slots * HORIZON),
        p95=percentile(every, 0.95),
        p99=percentile(every, 0.99),
        p95_interactive=percentile(interactive, 0.95),
        p99_interactive=percentile(interactive, 0.99),
        p95_batch=percentile([wait for wait, batch in waits if batch], 0.95),
    )


def run(simulation: Callable[[], Any]) -> Outcome:
    loop = VirtualTimeLoop()
    try:
        result: Outcome = loop.run_until_complete(simulation())
        return result
    finally:
        loop.close()


CONFIGURATIONS = {
    "one queue": (1, SLOTS),
    "per-pod, split": (GATEWAY_PODS, SLOTS // GATEWAY_PODS),
    "per-pod, full": (GATEWAY_PODS, SLOTS),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="3 seeds")
    args = parser.parse_args()
    seeds = list(range(1, (3 if args.quick else args.seeds) + 1))
    print(
        f"{REPLICAS} replicas x {SLOTS} slots, {GATEWAY_PODS} gateway pods, {KEYS} interactive keys (Zipf {ZIPF}) "
        f"at {BACKGROUND_LOAD:.0%} load, a batch key's burst of {BURST_WORK:.0%} of {BURST_EVERY:g} s of capacity "
        f"over {BURST_CONNECTIONS} connections every {BURST_EVERY:g} s; {HORIZON:g} s simulated; seeds {seeds}"
    )
    started = time.process_time()
    results: dict[str, list[Outcome]] = {name: [] for name in CONFIGURATIONS}
    for seed in seeds:
        workload = arrivals(seed, HORIZON)
        print(f"seed {seed}: {len(workload)} requests, offered load {offered_load(workload):.0%}")
        for name, (pods, inflight) in CONFIGURATIONS.items():
            results[name].append(run(lambda: simulate(workload, pods, inflight, seed)))  # noqa: B023
    baseline = results["one queue"]
    print(
        f"{'':16} {'util. while waiting':>20} {'util.':>6} {'p95 wait':>9} {'p99 wait':>9} "
        f"{'p95 interactive':>16} {'p99 interactive':>16} {'p95 batch':>10}"
        "   loss vs one queue: util. / p95 (median; worst seed)"
    )
    for name, outcomes in results.items():
        line = (
            f"{name:16} {statistics.median(o.waiting_utilisation for o in outcomes):>19.1%} "
            f"{statistics.median(o.utilisation for o in outcomes):>6.1%} "
            f"{statistics.median(o.p95 for o in outcomes):>8.2f}s {statistics.median(o.p99 for o in outcomes):>8.2f}s "
            f"{statistics.median(o.p95_interactive for o in outcomes):>15.2f}s "
            f"{statistics.median(o.p99_interactive for o in outcomes):>15.2f}s "
            f"{statistics.median(o.p95_batch for o in outcomes):>9.2f}s"
        )
        if name != "one queue":
            util_loss = [
                1 - o.waiting_utilisation / b.waiting_utilisation for o, b in zip(outcomes, baseline, strict=True)
            ]
            p95_loss = [o.p95 / b.p95 - 1 if b.p95 > 0 else 0.0 for o, b in zip(outcomes, baseline, strict=True)]
            line += (
                f"   {statistics.median(util_loss):+.1%} ({max(util_loss):+.1%}) / "
                f"{statistics.median(p95_loss):+.1%} ({max(p95_loss):+.1%})"
            )
        print(line)
    print(f"({time.process_time() - started:.0f} s of CPU)")


if __name__ == "__main__":
    main()
