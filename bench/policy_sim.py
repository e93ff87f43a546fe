"""Scaling policies for a Voxtral endpoint, compared in simulated time: GPU-hours against queue wait.

Pure and deterministic per seed: the same seed (or trace) and the same policy give the same numbers.
Nothing real runs; a day takes a second or two of CPU per policy.

Traffic (built in, one call-centre day per seed): arrivals follow a working day (quiet night, a
morning ramp, a lunch dip, an afternoon peak, an evening tail), with day-to-day jitter of level and
timing, slow noise, and bursts of 5-30 minutes at 1.5-2.5x. Requests are short call clips
(transcription, most requests), audio questions on 1-15 minute recordings, and a heavy tail of
25-40 minute uploads (4 % of requests, most of the GPU work). `--trace FILE` replays a CSV with
the header `arrival_s,audio_s,output_tokens` instead.

Engine, per replica, from the catalog (the same fit arithmetic the operator uses): a prompt is
about 12.5 tokens per second of audio plus the text around it; the KV cache holds
`check_fit(...).kv_cache_available_bytes / kv_cache_bytes_per_token` tokens; continuous batching up to
`maxNumSeqs`, admission first come first served while both a sequence slot and the request's KV
cache (prompt + output) are free; chunked prefill up to a token budget per step; a step costs the
weights read once (memory bandwidth), the KV cache of the batch read once, and the prefill chunk's
compute. Cold start from the catalog's startup budget: 60-100 % of it on a new node, 30 % on a node
still held from a replica that left (weights on local disk). Scale-down drains: the pod leaves the
Service at once and finishes what it runs for up to `shutdownTimeoutSeconds`; requests still queued
on it are sent again by their callers. The GPU node bills from the scale-up until a retention period
(the cluster autoscaler's unneeded time) after its pod goes.

Routing: `service` (kube-proxy picks a ready pod at random per request; each pod queues on its own)
or `gateway` (one queue per endpoint; each request goes to the replica with the least outstanding
work that has fewer than `maxNumSeqs` in flight).

Metrics each system sees, with its own lag: the operator scrapes every pod every 2 s; HPA reads
Prometheus (15 s scrape) at its 15 s sync; KubeAI samples its proxy every 10 s and averages 10 min.

Policies: `new` (voxtral_operator.autoscale.policy), `current` (the queue-depth policy it replaces),
HPA on waiting requests (what the operator's KEDA mode renders), HPA on (running + waiting) per
replica with a stabilisation window, HPA on `vllm:kv_cache_usage_perc`, and a KubeAI-style moving
average of active requests. Each baseline's main knob is swept; it is reported at its cheapest setting
whose pooled p95 queue wait is no worse than the new policy's.

Not modelled: preemption and recomputation (KV is reserved for the whole sequence at admission, so
vLLM would admit somewhat more), prefix caching, speculative decoding, the audio encoder's own
compute, attention cost growing with context length, stragglers and failures, pods sharing a node,
node-pool quotas or capacity shortages (every scale-up gets a node), image pulls apart from the
startup budget, network time, callers giving up (429/503) and client retries beyond a drained pod's
queue, the Kubernetes control plane's own latency between a decision and a pod, and the operator's
and the gateway's CPU cost.

    python bench/policy_sim.py                    # 20 seeds, both routings, table + plot
    python bench/policy_sim.py --quick --json     # smoke test
    python bench/policy_sim.py --trace calls.csv  # replay a trace
"""

from __future__ import annotations

import argparse
import bisect
import csv
import heapq
import json
import math
import os
import random
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from voxtral_operator.api import catalog
from voxtral_operator.autoscale import policy as new_policy

DAY = 86400.0
AUDIO_TOKENS_PER_SECOND = 12.5  # Voxtral's audio encoder: 80 ms per token after downsampling
TEXT_PROMPT_TOKENS = 64  # the instruction or transcription prompt around the audio

# ---------------------------------------------------------------------------------------------
# Scenario and engine


# Bench-only hardware figures (spec sheets): memory bandwidth in bytes/s, dense bf16 FLOP/s.
GPU_SPEED: dict[str, tuple[float, float]] = {
    "L4-24GB": (300e9, 121e12),
    "A10-24GB": (600e9, 125e12),
    "A100-40GB": (1555e9, 312e12),
    "A100-80GB": (2039e9, 312e12),
    "H100-80GB": (3350e9, 989e12),
    "H200-141GB": (4800e9, 989e12),
}
BANDWIDTH_EFFICIENCY = 0.7  # share of peak memory bandwidth a decode step reaches
COMPUTE_EFFICIENCY = 0.45  # model FLOP utilisation of a prefill chunk
TENSOR_PARALLEL_EFFICIENCY = 0.85  # per extra GPU, all-reduce overhead


@dataclass(frozen=True)
class Scenario:
    name: str
    model: str
    gpu_type: str
    tensor_parallel_size: int
    max_num_seqs: int
    max_batched_tokens: int  # chunked-prefill token budget per step
    min_replicas: int
    max_replicas: int
    peak_rate: float  # requests per second at the day's peak
    shutdown_timeout_s: float = 300.0
    node_retention_s: float = 600.0  # cluster autoscaler: a node unneeded this long is removed
    gpu_memory_utilization: float = 0.9
    max_model_len: int = 32768


SCENARIOS = {
    "small-h100": Scenario(
        name="small-h100",
        model="mistralai/Voxtral-Small-24B-2507",
        gpu_type="H100-80GB",
        tensor_parallel_size=1,
        max_num_seqs=64,
        max_batched_tokens=8192,
        min_replicas=1,
        max_replicas=24,
        peak_rate=5.0,
    ),
    "mini-l4": Scenario(
        name="mini-l4",
        model="mistralai/Voxtral-Mini-3B-2507",
        gpu_type="L4-24GB",
        tensor_parallel_size=1,
        max_num_seqs=128,
        max_batched_tokens=2048,
        min_replicas=1,
        max_replicas=24,
        peak_rate=3.0,
    ),
}


@dataclass(frozen=True)
class Engine:
    """Per-replica costs derived from the catalog and the GPU's speed."""

    kv_tokens: int
    weights_read_s: float  # per step
    kv_read_s_per_token: float  # per step, per token held in the KV cache
    prefill_s_per_token: float
    max_num_seqs: int
    max_batched_tokens: int
    cold_start_s: float  # the catalog's startup budget
    gpus: int

    @classmethod
    def of(cls, scenario: Scenario) -> Engine:
        model = catalog.MODELS[scenario.model]
        gpu = catalog.GPUS[scenario.gpu_type]
        tp = scenario.tensor_parallel_size
        fit = catalog.check_fit(model, gpu, tp, scenario.gpu_memory_utilization, scenario.max_model_len)
        if not fit.fits:
            raise ValueError(f"{scenario.model} does not fit on {tp} x {scenario.gpu_type}")
        bandwidth, flops = GPU_SPEED[scenario.gpu_type]
        scale = tp * TENSOR_PARALLEL_EFFICIENCY if tp > 1 else 1.0
        bandwidth *= BANDWIDTH_EFFICIENCY * scale
        flops *= COMPUTE_EFFICIENCY * scale
        return cls(
            kv_tokens=fit.kv_cache_available_bytes // model.kv_cache_bytes_per_token,
            weights_read_s=model.weights_bytes / bandwidth,
            kv_read_s_per_token=model.kv_cache_bytes_per_token / bandwidth,
            # 2 FLOP per parameter per token; bf16 weights are 2 bytes per parameter.
            prefill_s_per_token=model.weights_bytes / flops,
            max_num_seqs=scenario.max_num_seqs,
            max_batched_tokens=scenario.max_batched_tokens,
            cold_start_s=float(model.startup_budget_seconds),
            gpus=tp,
        )


# ---------------------------------------------------------------------------------------------
# Traffic


class Request:
    __slots__ = ("arrival", "audio_s", "left", "need", "output", "prompt")

    def __init__(self, arrival: float, audio_s: float, output: int) -> None:
        self.arrival = arrival
        self.audio_s = audio_s
        self.prompt = math.ceil(audio_s * AUDIO_TOKENS_PER_SECOND) + TEXT_PROMPT_TOKENS
        self.output = max(1, output)
        self.need = self.prompt + self.output  # KV-cache tokens the whole sequence holds
        self.left = float(self.prompt)  # prefill tokens still to compute


# (hour, share of the peak arrival rate) of a working day: quiet night, morning ramp, lunch dip,
# afternoon peak, evening tail. Each day jitters the level, the timing and the lunch depth.
DAY_SHAPE = (
    (0.0, 0.04),
    (6.0, 0.04),
    (7.0, 0.15),
    (8.0, 0.55),
    (9.0, 0.9),
    (10.5, 1.0),
    (11.75, 0.9),
    (12.25, 0.6),
    (13.25, 0.6),
    (14.0, 0.95),
    (15.5, 1.0),
    (16.75, 0.85),
    (17.75, 0.5),
    (19.0, 0.25),
    (21.0, 0.12),
    (23.0, 0.06),
    (24.0, 0.04),
)
LONG_FILE_SHARE = 0.04  # 25-40 minute uploads
AUDIO_QUESTION_SHARE = 0.12  # questions about 1-15 minute recordings


def _rate_curve(rng: random.Random, peak: float) -> list[float]:
    """Arrival rate (requests/s) for every second of one day."""
    level = peak * rng.uniform(0.9, 1.1)
    shift = rng.uniform(-1200, 1200)
    lunch = rng.uniform(0.85, 1.15)
    hours = [h * 3600 + (shift if 0 < h < 24 else 0) for h, _ in DAY_SHAPE]
    shares = [s * (lunch if 12 <= h <= 13.5 else 1.0) for h, s in DAY_SHAPE]
    noise, drift = [], 0.0
    for _ in range(int(DAY // 300) + 1):  # slow noise, 5-minute steps
        drift = 0.85 * drift + rng.gauss(0, 0.06)
        noise.append(math.exp(drift))
    bursts = []
    for _ in range(_poisson(rng, 5.0)):
        start = rng.uniform(7 * 3600, 20 * 3600)
        bursts.append((start, start + rng.uniform(300, 1800), rng.uniform(1.5, 2.5)))
    curve = []
    index = 0
    for second in range(int(DAY)):
        while index < len(hours) - 2 and second >= hours[index + 1]:
            index += 1
        h0, h1 = hours[index], hours[index + 1]
        share = shares[index] + (shares[index + 1] - shares[index]) * min(1.0, max(0.0, (second - h0) / (h1 - h0)))
        rate = level * share * noise[second // 300]
        for start, end, factor in bursts:
            if start <= second < end:
                rate *= factor
        curve.append(rate)
    return curve


def _poisson(rng: random.Random, mean: float) -> int:
    count, threshold, product = 0, math.exp(-mean), rng.random()
    while product > threshold:
        count += 1
        product *= rng.random()
    return count


def _request(rng: random.Random, arrival: float) -> Request:
    kind = rng.random()
    if kind < LONG_FILE_SHARE:
        audio = rng.uniform(1500, 2400)
        if audio <= 1800 and rng.random() < 0.6:  # transcription (the card's 30-minute limit)
            return Request(arrival, audio, round(audio * rng.uniform(2.6, 3.4)))
        return Request(arrival, audio, round(min(2000, rng.lognormvariate(math.log(600), 0.6))))
    if kind < LONG_FILE_SHARE + AUDIO_QUESTION_SHARE:
        audio = rng.uniform(60, 900)
        return Request(arrival, audio, round(min(1500, max(30, rng.lognormvariate(math.log(300), 0.7)))))
    audio = min(600.0, max(1.0, rng.lognormvariate(math.log(20), 0.9)))  # a call clip, transcribed
    return Request(arrival, audio, round(audio * rng.uniform(2.6, 3.4)) + 5)


def call_centre_day(seed: int, peak: float, day: int = 1) -> list[tuple[float, float, int]]:
    """One day's requests as (arrival_s, audio_s, output_tokens), arrivals from day x 86400 on.

    Each (seed, day) is its own day: its own level, timing, noise and bursts."""
    rng = random.Random(seed * 1_000_003 + day)
    curve = _rate_curve(rng, peak)
    offset = day * DAY
    out = []
    for second, rate in enumerate(curve):
        for _ in range(_poisson(rng, rate)):
            r = _request(rng, offset + second + rng.random())
            out.append((r.arrival, r.audio_s, r.output))
    out.sort()
    return out


def read_trace(path: Path) -> list[tuple[float, float, int]]:
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or {"arrival_s", "audio_s", "output_tokens"} - set(reader.fieldnames):
            raise SystemExit(f"{path}: the header must be arrival_s,audio_s,output_tokens")
        rows = [(float(r["arrival_s"]), float(r["audio_s"]), int(float(r["output_tokens"]))) for r in reader]
    rows.sort()
    return rows


def write_trace(path: Path, rows: Iterable[tuple[float, float, int]]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["arrival_s", "audio_s", "output_tokens"])
        for arrival, audio, output in rows:
            writer.writerow([f"{arrival:.3f}", f"{audio:.2f}", output])


# ---------------------------------------------------------------------------------------------
# Replicas, nodes and routing

LOADING, READY, DRAINING = 0, 1, 2
WARM_START_SHARE = 0.3  # of the startup budget, on a node still held from a replica that left


class Replica:
    __slots__ = (
        "clock",
        "decoding",
        "drain_deadline",
        "finished",
        "generation_total",
        "kv_used",
        "name",
        "prefill_left",
        "prefilling",
        "prompt_total",
        "queue",
        "queued_tokens",
        "ready_at",
        "running",
        "started",
        "state",
    )

    def __init__(self, name: str, started: float, ready_at: float) -> None:
        self.name = name
        self.state = LOADING
        self.started = started
        self.ready_at = ready_at
        self.queue: deque[Request] = deque()  # waiting in the engine's scheduler
        self.queued_tokens = 0
        self.prefilling: deque[Request] = deque()
        self.prefill_left = 0.0
        self.decoding: list[tuple[float, int, Request]] = []  # heap by the clock value it finishes at
        self.clock = 0.0  # tokens each decoding sequence has produced so far
        self.kv_used = 0
        self.running = 0
        self.prompt_total = 0.0
        self.generation_total = 0.0
        self.finished = 0
        self.drain_deadline = math.inf

    def advance(self, engine: Engine, now: float, dt: float, waits: list[float], done: list[Request]) -> None:
        queue = self.queue
        if queue and self.state == READY:
            limit_seqs, limit_kv = engine.max_num_seqs, engine.kv_tokens
            while queue:
                head = queue[0]
                if self.running >= limit_seqs or self.kv_used + head.need > limit_kv:
                    break  # first come, first served: the head blocks the rest (vLLM's FCFS scheduler)
                queue.popleft()
                self.queued_tokens -= head.need
                waits.append(now - head.arrival if now > head.arrival else 0.0)
                self.running += 1
                self.kv_used += head.need
                self.prefilling.append(head)
                self.prefill_left += head.left
        if not self.running:
            return
        base = engine.weights_read_s + self.kv_used * engine.kv_read_s_per_token
        pending = self.prefill_left
        if pending:
            chunk = engine.max_batched_tokens
            chunk_step = base + chunk * engine.prefill_s_per_token
            full, rest = divmod(pending, chunk)
            all_prefill = full * chunk_step + (base + rest * engine.prefill_s_per_token if rest else 0.0)
            if all_prefill <= dt:
                steps = full + (1 if rest else 0) + (dt - all_prefill) / base
                processed = pending
            else:
                steps = dt / chunk_step
                processed = steps * chunk
        else:
            steps = dt / base
            processed = 0.0
        decoding = self.decoding
        self.clock += steps
        clock = self.clock
        if decoding:
            self.generation_total += len(decoding) * steps
            while decoding and decoding[0][0] <= clock:
                finish, _, request = heapq.heappop(decoding)
                self.generation_total -= clock - finish
                self.running -= 1
                self.kv_used -= request.need
                self.finished += 1
                done.append(request)
        if processed:
            self.prompt_total += processed
            self.prefill_left -= processed
            prefilling = self.prefilling
            while prefilling and processed >= prefilling[0].left - 1e-6:
                request = prefilling.popleft()
                processed -= request.left
                request.left = 0.0
                heapq.heappush(decoding, (clock + request.output, id(request), request))
            if prefilling and processed > 0:
                prefilling[0].left -= processed
            if not prefilling:
                self.prefill_left = 0.0

    def in_flight(self) -> list[Request]:
        return [entry[2] for entry in self.decoding] + list(self.prefilling)


@dataclass
class PodMetrics:
    """One pod's /metrics, as a scrape would read it."""

    name: str
    waiting: int
    running: int
    kv_cache_usage: float
    prompt_tokens: float
    generation_tokens: float
    finished: int


@dataclass
class GatewayMetrics:
    queued: int
    queued_audio_s: float
    in_flight_audio_s: float
    since_last_request_s: float


class Cluster:
    """An endpoint's replicas, their GPU nodes, and the path requests take to them."""

    def __init__(
        self, scenario: Scenario, engine: Engine, routing: str, seed: int, start: float, replicas: int
    ) -> None:
        self.scenario = scenario
        self.engine = engine
        self.routing = routing
        self.rng = random.Random(seed * 7919 + 17)
        self.pods: list[Replica] = []  # loading or ready: what spec.replicas counts
        self.draining: list[Replica] = []
        self.spare_nodes: list[float] = []  # release times of nodes whose pod left
        self.gpu_seconds = 0.0
        self.held: deque[Request] = deque()  # the gateway's queue, or callers retrying with no pod ready
        self.held_audio_s = 0.0
        self.in_flight_audio_s = 0.0
        self.last_arrival = -math.inf
        self.waits: list[float] = []
        self.resent = 0
        self.peak = replicas
        self._serial = 0
        self._done: list[Request] = []
        for _ in range(replicas):
            pod = self._new_pod(start, start)
            pod.state = READY
            self.pods.append(pod)

    # -- what policies read ---------------------------------------------------------------

    @property
    def replicas(self) -> int:
        return len(self.pods)

    def ready(self) -> list[Replica]:
        return [p for p in self.pods if p.state == READY]

    def pod_metrics(self) -> list[PodMetrics]:
        kv = self.engine.kv_tokens
        return [
            PodMetrics(p.name, len(p.queue), p.running, p.kv_used / kv, p.prompt_total, p.generation_total, p.finished)
            for p in self.pods
            if p.state == READY
        ]

    def gateway_metrics(self, now: float) -> GatewayMetrics | None:
        if self.routing != "gateway":
            return None
        return GatewayMetrics(len(self.held), self.held_audio_s, self.in_flight_audio_s, now - self.last_arrival)

    # -- scaling ----------------------------------------------------------------------------

    def _new_pod(self, now: float, ready_at: float) -> Replica:
        self._serial += 1
        return Replica(f"pod-{self._serial}", now, ready_at)

    def scale_to(self, replicas: int, now: float) -> None:
        replicas = min(max(replicas, 0), self.scenario.max_replicas)
        budget = self.engine.cold_start_s
        while len(self.pods) < replicas:
            if self.spare_nodes:  # the scheduler lands the pod on a node still held: weights on disk
                self.spare_nodes.remove(max(self.spare_nodes))
                load = budget * WARM_START_SHARE
            else:
                load = budget * self.rng.uniform(0.6, 1.0)
            self.pods.append(self._new_pod(now, now + load))
        if len(self.pods) > replicas:
            # A ReplicaSet deletes pods that are not ready first, then the most recently ready.
            order = sorted(self.pods, key=lambda p: (p.state == READY, -p.ready_at))
            for pod in order[: len(self.pods) - replicas]:
                self.pods.remove(pod)
                if pod.state == LOADING:
                    self.spare_nodes.append(now + self.scenario.node_retention_s)
                    continue
                pod.state = DRAINING
                pod.drain_deadline = now + self.scenario.shutdown_timeout_s
                self.draining.append(pod)
                while pod.queue:  # not yet started: the caller (or the gateway) sends it again
                    request = pod.queue.popleft()
                    self.in_flight_audio_s -= request.audio_s
                    self.resent += 1
                    self._hold(request)
                pod.queued_tokens = 0
        self.peak = max(self.peak, len(self.pods))

    # -- requests ---------------------------------------------------------------------------

    def _hold(self, request: Request) -> None:
        self.held.append(request)
        self.held_audio_s += request.audio_s

    def arrive(self, request: Request) -> None:
        self.last_arrival = request.arrival
        self._hold(request)

    def _route(self) -> None:
        if not self.held:
            return
        ready = self.ready()
        if not ready:
            return
        held = self.held
        if self.routing == "service":
            rng = self.rng
            while held:
                request = held.popleft()
                pod = ready[int(rng.random() * len(ready))]
                pod.queue.append(request)
                pod.queued_tokens += request.need
                self.held_audio_s -= request.audio_s
                self.in_flight_audio_s += request.audio_s
            return
        limit = self.engine.max_num_seqs
        while held:
            best, best_work = None, math.inf
            for pod in ready:
                if pod.running + len(pod.queue) < limit:
                    work = pod.kv_used + pod.queued_tokens
                    if work < best_work:
                        best, best_work = pod, work
            if best is None:
                return
            request = held.popleft()
            best.queue.append(request)
            best.queued_tokens += request.need
            self.held_audio_s -= request.audio_s
            self.in_flight_audio_s += request.audio_s

    def step(self, now: float, dt: float) -> None:
        for pod in self.pods:
            if pod.state == LOADING and pod.ready_at <= now:
                pod.state = READY
        self._route()
        engine, waits, done = self.engine, self.waits, self._done
        for pod in self.pods:
            if pod.running or pod.queue:
                pod.advance(engine, now, dt, waits, done)
        if self.draining:
            for pod in list(self.draining):
                if pod.running:
                    pod.advance(engine, now, dt, waits, done)
                if not pod.running or now >= pod.drain_deadline:
                    for request in pod.in_flight():  # cut at the drain deadline: sent again
                        request.left = float(request.prompt)
                        self.in_flight_audio_s -= request.audio_s
                        self.resent += 1
                        self._hold(request)
                    self.draining.remove(pod)
                    self.spare_nodes.append(now + self.scenario.node_retention_s)
        if done:
            for request in done:
                self.in_flight_audio_s -= request.audio_s
            done.clear()
        if self.spare_nodes:
            self.spare_nodes = [t for t in self.spare_nodes if t > now]
        self.gpu_seconds += (len(self.pods) + len(self.draining) + len(self.spare_nodes)) * self.engine.gpus * dt

    def unserved(self, now: float) -> list[float]:
        """Waits so far of requests never started by the end: counted, so a queue cannot hide."""
        pending = list(self.held)
        for pod in self.pods + self.draining:
            pending.extend(pod.queue)
        return [now - r.arrival for r in pending]


# ---------------------------------------------------------------------------------------------
# Policies: each reads what its system would see, when it would see it, and sets the replicas.


class SimPolicy(Protocol):
    def tick(self, cluster: Cluster, now: float) -> None: ...


def _waiting_total(cluster: Cluster, pods: Sequence[PodMetrics], now: float) -> float:
    """Waiting requests: the engines' queues, plus the gateway's when there is one."""
    gateway = cluster.gateway_metrics(now)
    return sum(p.waiting for p in pods) + (gateway.queued if gateway else 0)


@dataclass
class Static:
    """A fixed number of replicas (tests and the invariants)."""

    replicas: int

    def tick(self, cluster: Cluster, now: float) -> None:
        if cluster.replicas != self.replicas:
            cluster.scale_to(self.replicas, now)


PROMETHEUS_SCRAPE_S = 15
HPA_SYNC_S = 15
HPA_TOLERANCE = 0.1


@dataclass
class Hpa:
    """Kubernetes' HPA (autoscaling/v2) with an AverageValue target on one metric, read from Prometheus.

    Every 15 s: desired = ceil(ratio x pods) with a 10 % tolerance; pods without a metric (still
    loading) count as 0 when scaling up and as the target when scaling down; scale-up at most
    max(4 pods, 100 %) per period; scale-down to the highest recommendation of the stabilisation window.
    """

    metric: str  # "waiting" | "active" (running + waiting) | "kv"
    target: float
    window_s: float = 300.0
    min_replicas: int = 1
    max_replicas: int = 24
    _scraped: tuple[list[float], float] = ((), 0.0)  # type: ignore[assignment]
    _recommendations: deque[tuple[float, int]] = field(default_factory=deque)

    def _read(self, cluster: Cluster, now: float) -> tuple[list[float], float]:
        pods = cluster.pod_metrics()
        gateway = cluster.gateway_metrics(now)
        queued = gateway.queued if gateway else 0
        if self.metric == "kv":
            return [p.kv_cache_usage for p in pods], 0.0
        if self.metric == "waiting":
            return [float(p.waiting) for p in pods], float(queued)
        return [float(p.waiting + p.running) for p in pods], float(queued)

    def tick(self, cluster: Cluster, now: float) -> None:
        second = int(now)
        if second % PROMETHEUS_SCRAPE_S == 7:
            self._scraped = self._read(cluster, now)
        if second % HPA_SYNC_S:
            return
        values, extra = self._scraped
        values = list(values)
        current = cluster.replicas
        if not values:
            return
        if extra:  # the gateway's queue is one series: spread over the pods that report
            values = [v + extra / len(values) for v in values]
        missing = max(0, current - len(values))
        ratio = sum(values) / len(values) / self.target
        desired = current
        if missing:
            filled = values + [0.0 if ratio > 1 else self.target] * missing
            new_ratio = sum(filled) / len(filled) / self.target
            crossed = (ratio > 1) != (new_ratio > 1)
            if abs(new_ratio - 1) > HPA_TOLERANCE and not crossed:
                desired = math.ceil(new_ratio * len(filled))
        elif abs(ratio - 1) > HPA_TOLERANCE:
            desired = math.ceil(ratio * len(values))
        desired = min(max(desired, self.min_replicas), self.max_replicas)
        self._recommendations.append((now, desired))
        while self._recommendations and self._recommendations[0][0] < now - self.window_s:
            self._recommendations.popleft()
        if desired < current:
            desired = min(current, max(r for _, r in self._recommendations))
        elif desired > current:
            desired = min(desired, max(current + 4, current * 2))
        if desired != current:
            cluster.scale_to(desired, now)


@dataclass
class KubeAi:
    """KubeAI's autoscaler: active requests (running + queued at its proxy) sampled every 10 s,
    averaged over 10 minutes; desired = ceil(average / targetRequests); scale-down only after
    `scaleDownDelaySeconds` (30 s) of lower recommendations."""

    target: float
    interval_s: int = 10
    window_s: int = 600
    scale_down_delay_s: float = 30.0
    min_replicas: int = 1
    max_replicas: int = 24
    _samples: deque[float] = field(default_factory=deque)
    _lower_since: float | None = None

    def tick(self, cluster: Cluster, now: float) -> None:
        if int(now) % self.interval_s:
            return
        pods = cluster.pod_metrics()
        self._samples.append(sum(p.running for p in pods) + _waiting_total(cluster, pods, now))
        while len(self._samples) > self.window_s // self.interval_s:
            self._samples.popleft()
        average = sum(self._samples) / len(self._samples)
        desired = min(max(math.ceil(average / self.target), self.min_replicas), self.max_replicas)
        current = cluster.replicas
        if desired > current:
            self._lower_since = None
            cluster.scale_to(desired, now)
        elif desired < current:
            self._lower_since = now if self._lower_since is None else self._lower_since
            if now - self._lower_since >= self.scale_down_delay_s:
                cluster.scale_to(desired, now)
                self._lower_since = None
        else:
            self._lower_since = None


@dataclass
class Current:
    """The queue-depth policy the new one replaces, as shipped (scrape every 2 s): scale up when waiting
    exceeds targetQueueDepth per ready replica (step <= maxScaleUpStep; while replicas load, only if
    the whole demand overflows every replica at a full batch plus its tolerated queue); scale down one
    replica after scaleDownDelaySeconds of nothing waiting and the running fitting on one fewer, then
    one more every 30 s."""

    target_queue_depth: int
    scale_down_delay_s: float = 300.0
    max_scale_up_step: int = 2
    max_num_seqs: int = 64
    min_replicas: int = 1
    max_replicas: int = 24
    _low_since: float | None = None
    _last_down: float | None = None

    def tick(self, cluster: Cluster, now: float) -> None:
        if int(now) % 2:
            return
        pods = cluster.pod_metrics()
        waiting = _waiting_total(cluster, pods, now)
        running = sum(p.running for p in pods)
        current, ready = cluster.replicas, len(pods)
        loading = current - ready
        tolerated = self.target_queue_depth * max(ready, 1)
        if waiting > tolerated:
            self._low_since = self._last_down = None
            if current >= self.max_replicas:
                return
            if loading:
                per_replica = self.max_num_seqs + self.target_queue_depth
                needed = math.ceil((waiting + running) / per_replica)
                if needed <= current:
                    return
                step = min(self.max_scale_up_step, needed - current)
            else:
                step = min(self.max_scale_up_step, math.ceil((waiting - tolerated) / self.target_queue_depth))
            cluster.scale_to(min(self.max_replicas, current + max(step, 1)), now)
            return
        low = waiting == 0 and ready > 0 and running <= (ready - 1) * self.max_num_seqs and loading == 0
        if not low or current <= self.min_replicas:
            self._low_since = self._last_down = None
            return
        self._low_since = now if self._low_since is None else self._low_since
        if now - self._low_since < self.scale_down_delay_s:
            return
        gap = min(30.0, self.scale_down_delay_s)
        if self._last_down is not None and now - self._last_down < gap:
            return
        self._last_down = now
        cluster.scale_to(current - 1, now)


@dataclass
class New:
    """voxtral_operator.autoscale.policy.decide, fed what the operator scrapes every 2 s (and the gateway's
    queue in audio-seconds when requests go through the gateway)."""

    limits: new_policy.Limits
    state: new_policy.State = field(default_factory=new_policy.State)
    interval_s: int = 2

    def tick(self, cluster: Cluster, now: float) -> None:
        if int(now) % self.interval_s:
            return
        pods = tuple(
            new_policy.PodSample(
                p.name, p.waiting, p.running, p.kv_cache_usage, p.prompt_tokens, p.generation_tokens, p.finished
            )
            for p in cluster.pod_metrics()
        )
        gateway = cluster.gateway_metrics(now)
        seen = new_policy.Observation(
            replicas=cluster.replicas,
            ready=len(pods),
            pods=pods,
            gateway=None
            if gateway is None
            else new_policy.GatewaySample(
                gateway.queued, gateway.queued_audio_s, gateway.in_flight_audio_s, gateway.since_last_request_s
            ),
        )
        decision = new_policy.decide(self.limits, seen, self.state, now)
        self.state = decision.state
        if decision.replicas != cluster.replicas:
            cluster.scale_to(decision.replicas, now)


def new_limits(scenario: Scenario, engine: Engine, target_utilization: float) -> new_policy.Limits:
    model = catalog.MODELS[scenario.model]
    return new_policy.Limits(
        min_replicas=scenario.min_replicas,
        max_replicas=scenario.max_replicas,
        max_num_seqs=scenario.max_num_seqs,
        prior_work_per_second=new_policy.prior_work_per_second(
            model.weights_bytes, scenario.gpu_type, scenario.tensor_parallel_size, scenario.max_num_seqs
        ),
        cold_start_seconds=engine.cold_start_s,
        target_utilization=target_utilization,
        node_retention_seconds=scenario.node_retention_s,
    )


# ---------------------------------------------------------------------------------------------
# Running


@dataclass(frozen=True)
class PolicySpec:
    """A policy and its main knob; `make` builds a fresh instance for one run."""

    name: str
    knob: str
    values: tuple[float, ...]
    default: float
    make: Callable[[Scenario, Engine, float], SimPolicy]

    def label(self, value: float) -> str:
        return f"{self.knob}={value:g}"


# HPA baselines use a 900 s scale-down stabilisation window: tried at 120, 300, 600, 900 and 1800 s,
# 900 s gave each its best GPU-hours at equal p95 (with cold starts this long, flapping costs most).
HPA_WINDOW_S = 900.0

POLICIES: tuple[PolicySpec, ...] = (
    PolicySpec(
        "new",
        "targetUtilization",
        (0.3, 0.35, 0.4, 0.45, 0.5),
        0.35,
        lambda s, e, v: New(new_limits(s, e, v)),
    ),
    PolicySpec(
        "current",
        "targetQueueDepth",
        (1, 2, 3, 4, 6, 8, 16),
        4,
        lambda s, e, v: Current(int(v), max_num_seqs=s.max_num_seqs, max_replicas=s.max_replicas),
    ),
    PolicySpec(
        "hpa-waiting",
        "waiting/replica",
        (0.5, 1, 2, 4, 8, 16),
        4,
        lambda s, e, v: Hpa("waiting", v, window_s=HPA_WINDOW_S, max_replicas=s.max_replicas),
    ),
    PolicySpec(
        "hpa-active",
        "(running+waiting)/replica",
        (3, 4, 5, 6, 8, 10, 12, 16),
        6,
        lambda s, e, v: Hpa("active", v, window_s=HPA_WINDOW_S, max_replicas=s.max_replicas),
    ),
    PolicySpec(
        "hpa-kv",
        "kv_cache_usage_perc",
        (0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.7),
        0.5,
        lambda s, e, v: Hpa("kv", v, window_s=HPA_WINDOW_S, max_replicas=s.max_replicas),
    ),
    PolicySpec(
        "kubeai",
        "targetRequests",
        (2, 2.5, 3, 3.5, 4, 5, 6, 8),
        3,
        lambda s, e, v: KubeAi(v, max_replicas=s.max_replicas),
    ),
)
POLICY_BY_NAME = {p.name: p for p in POLICIES}

WAIT_BIN_S = 0.25  # queue-wait histogram resolution


@dataclass
class Outcome:
    gpu_hours: float
    requests: int
    waits: dict[int, int]  # histogram: bin -> count (bin 0: no wait)
    p95_wait_s: float
    p99_wait_s: float
    peak_replicas: int
    resent: int


def _histogram(waits: Iterable[float]) -> dict[int, int]:
    out: dict[int, int] = {}
    for wait in waits:
        key = 0 if wait <= 0 else 1 + int(wait / WAIT_BIN_S)
        out[key] = out.get(key, 0) + 1
    return out


def percentile(histogram: dict[int, int], pct: float) -> float:
    """The wait at this percentile (upper edge of its bin)."""
    total = sum(histogram.values())
    if not total:
        return 0.0
    rank, seen = math.ceil(total * pct / 100), 0
    for key in sorted(histogram):
        seen += histogram[key]
        if seen >= rank:
            return 0.0 if key == 0 else key * WAIT_BIN_S
    return max(histogram) * WAIT_BIN_S


def simulate(
    rows: Sequence[tuple[float, float, int]],
    scenario: Scenario,
    routing: str,
    policy: SimPolicy,
    seed: int,
    start: float,
    end: float,
) -> Outcome:
    """Replay `rows` (arrivals in [start, end)) through one policy, one-second steps."""
    engine = Engine.of(scenario)
    cluster = Cluster(scenario, engine, routing, seed, start, scenario.min_replicas)
    limit = min(scenario.max_model_len, engine.kv_tokens)
    index, count = bisect.bisect_left(rows, (start,)), 0
    now = start
    while now < end:
        while index < len(rows) and rows[index][0] < now + 1:
            arrival, audio, output = rows[index]
            request = Request(arrival, audio, output)
            if request.need > limit:  # vLLM refuses what can never fit; a caller sees 400 at once
                request = Request(arrival, audio, max(1, limit - request.prompt))
            if request.need <= limit:
                cluster.arrive(request)
                count += 1
            index += 1
        cluster.step(now, 1.0)
        policy.tick(cluster, now)
        now += 1.0
    waits = _histogram(cluster.waits)
    for wait in cluster.unserved(end):
        key = 0 if wait <= 0 else 1 + int(wait / WAIT_BIN_S)
        waits[key] = waits.get(key, 0) + 1
    return Outcome(
        gpu_hours=cluster.gpu_seconds / 3600,
        requests=count,
        waits=waits,
        p95_wait_s=percentile(waits, 95),
        p99_wait_s=percentile(waits, 99),
        peak_replicas=cluster.peak,
        resent=cluster.resent,
    )


# ---------------------------------------------------------------------------------------------
# Sweeps over seeds, matched p95, report


@dataclass(frozen=True)
class Setup:
    scenario: Scenario
    seeds: tuple[int, ...]
    start_s: float  # time of day the simulated window starts
    hours: float
    trace: Path | None = None
    peak_scale: float = 1.0
    history_days: int = 7  # days the new policy lives through before the measured one: a week of profile


def window(setup: Setup, day: int) -> tuple[float, float]:
    """The simulated span: the trace's, or `hours` from `start_s` on the given day."""
    if setup.trace is not None:
        rows = read_trace(setup.trace)
        first = math.floor(rows[0][0]) if rows else 0.0
        last = math.ceil(rows[-1][0]) if rows else 0.0
        return first, last + setup.scenario.shutdown_timeout_s
    start = day * DAY + setup.start_s
    return start, start + setup.hours * 3600


@dataclass(frozen=True)
class Task:
    """Every policy setting for one seed and one routing (the new policy's history is shared by them)."""

    setup: Setup
    routing: str
    seed: int
    settings: tuple[tuple[str, float], ...]


_HISTORY: dict[tuple[Setup, str, int], dict[str, Any]] = {}


def history(setup: Setup, routing: str, seed: int) -> dict[str, Any]:
    """The new policy's state after a week of this seed's earlier days, at its default setting, as the
    operator would keep it (serialised). The knob's other values start from the same history."""
    key = (setup, routing, seed)
    if key not in _HISTORY:
        scenario = setup.scenario
        engine = Engine.of(scenario)
        policy = New(new_limits(scenario, engine, POLICY_BY_NAME["new"].default))
        for day in range(setup.history_days):
            start, end = window(setup, day)
            rows = call_centre_day(seed, scenario.peak_rate * setup.peak_scale, day)
            simulate(rows, scenario, routing, policy, seed + 7 * day, start, end)
            policy = New(policy.limits, new_policy.State.from_dict(json.loads(json.dumps(policy.state.to_dict()))))
        _HISTORY.clear()
        _HISTORY[key] = policy.state.to_dict()
    return _HISTORY[key]


def run_task(task: Task) -> list[Outcome]:
    setup, scenario = task.setup, task.setup.scenario
    engine = Engine.of(scenario)
    if setup.trace is not None:
        rows = read_trace(setup.trace)
        start, end = window(setup, 0)
    else:
        rows = call_centre_day(task.seed, scenario.peak_rate * setup.peak_scale, setup.history_days)
        start, end = window(setup, setup.history_days)
    outcomes = []
    for name, value in task.settings:
        policy = POLICY_BY_NAME[name].make(scenario, engine, value)
        if isinstance(policy, New) and setup.trace is None:
            policy = New(policy.limits, new_policy.State.from_dict(history(setup, task.routing, task.seed)))
        outcomes.append(simulate(rows, scenario, task.routing, policy, task.seed, start, end))
    return outcomes


@dataclass
class Point:
    """One policy at one knob value over all seeds."""

    policy: str
    value: float
    gpu_hours: float  # mean per seed
    gpu_hours_spread: float  # standard deviation over seeds
    p95_wait_s: float  # pooled over every request of every seed
    p99_wait_s: float
    requests: int
    peak_replicas: int
    resent: int


def _combine(policy: str, value: float, outcomes: Sequence[Outcome]) -> Point:
    waits: dict[int, int] = {}
    for outcome in outcomes:
        for key, count in outcome.waits.items():
            waits[key] = waits.get(key, 0) + count
    hours = [o.gpu_hours for o in outcomes]
    mean = sum(hours) / len(hours)
    spread = math.sqrt(sum((h - mean) ** 2 for h in hours) / max(1, len(hours) - 1))
    return Point(
        policy=policy,
        value=value,
        gpu_hours=mean,
        gpu_hours_spread=spread,
        p95_wait_s=percentile(waits, 95),
        p99_wait_s=percentile(waits, 99),
        requests=sum(o.requests for o in outcomes),
        peak_replicas=max(o.peak_replicas for o in outcomes),
        resent=sum(o.resent for o in outcomes),
    )


def sweep(
    setup: Setup, routings: Sequence[str], policies: Sequence[PolicySpec], workers: int, quick: bool = False
) -> dict[str, list[Point]]:
    """Every policy at every knob value, over every seed; points per routing."""
    settings = tuple(
        (spec.name, value) for spec in policies for value in (_quick_values(spec) if quick else spec.values)
    )
    tasks = [Task(setup, routing, seed, settings) for seed in setup.seeds for routing in routings]
    if workers > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(run_task, tasks, chunksize=1))
    else:
        results = [run_task(task) for task in tasks]
    grouped: dict[tuple[str, str, float], list[Outcome]] = {}
    for task, outcomes in zip(tasks, results, strict=True):
        for (name, value), outcome in zip(task.settings, outcomes, strict=True):
            grouped.setdefault((task.routing, name, value), []).append(outcome)
    points: dict[str, list[Point]] = {routing: [] for routing in routings}
    for (routing, name, value), group in grouped.items():
        points[routing].append(_combine(name, value, group))
    return points


def _quick_values(spec: PolicySpec) -> tuple[float, ...]:
    """Two knob values around the default: enough to check the machinery, not to tune."""
    values = sorted(spec.values, key=lambda v: abs(v - spec.default))
    return tuple(sorted({spec.default, values[0], values[1]}))[:2] if spec.name != "new" else (spec.default,)


@dataclass
class Matched:
    point: Point
    matched: bool  # False: no setting reached the new policy's p95; the lowest-p95 one is shown


def match(points: Sequence[Point], new_name: str = "new") -> tuple[Point, dict[str, Matched]]:
    """The new policy at its default; each baseline at its cheapest setting with p95 no worse than it."""
    spec = POLICY_BY_NAME[new_name]
    new = next(p for p in points if p.policy == new_name and p.value == spec.default)
    chosen: dict[str, Matched] = {}
    for name in dict.fromkeys(p.policy for p in points):
        if name == new_name:
            continue
        own = [p for p in points if p.policy == name]
        good = [p for p in own if p.p95_wait_s <= new.p95_wait_s + 1e-9]
        if good:
            chosen[name] = Matched(min(good, key=lambda p: (p.gpu_hours, p.p95_wait_s)), True)
        else:
            chosen[name] = Matched(min(own, key=lambda p: (p.p95_wait_s, p.gpu_hours)), False)
    return new, chosen


def report(setup: Setup, points: dict[str, list[Point]]) -> tuple[str, dict[str, Any]]:
    lines = []
    summary: dict[str, Any] = {}
    for routing, group in points.items():
        new, chosen = match(group)
        best = min((m for m in chosen.values() if m.matched), key=lambda m: m.point.gpu_hours, default=None)
        lines.append(f"routing: {routing}")
        unit = "GPU-h/day" if setup.trace is None and setup.hours == 24 else "GPU-h"
        lines.append(
            f"  {'policy':<13}{'setting':<44}{unit:>10}{'± sd':>7}{'p95 wait':>10}{'p99 wait':>10}"
            f"{'peak':>6}{'vs new':>8}"
        )
        rows = [(new.policy, Matched(new, True)), *chosen.items()]
        for name, matched in rows:
            p = matched.point
            setting = POLICY_BY_NAME[name].label(p.value) + ("" if matched.matched else " (p95 not reached)")
            ratio = f"{p.gpu_hours / new.gpu_hours:7.2f}x" if new.gpu_hours else "     - "
            lines.append(
                f"  {name:<13}{setting:<44}{p.gpu_hours:>10.1f}{p.gpu_hours_spread:>7.1f}"
                f"{p.p95_wait_s:>9.1f}s{p.p99_wait_s:>9.1f}s{p.peak_replicas:>6}{ratio:>8}"
            )
        if best is not None:
            saving = 1 - new.gpu_hours / best.point.gpu_hours
            lines.append(
                f"  best baseline at matched p95: {best.point.policy} ({best.point.gpu_hours:.1f} GPU-h); "
                f"new uses {saving:+.0%} fewer GPU-hours (ratio {new.gpu_hours / best.point.gpu_hours:.2f})"
            )
        else:
            lines.append("  no baseline setting reached the new policy's p95")
        lines.append("")
        summary[routing] = {
            "policies": {
                name: {"gpu_hours": round(m.point.gpu_hours, 2), "p95_wait_s": m.point.p95_wait_s}
                for name, m in [("new", Matched(new, True)), *chosen.items()]
            },
            "new": "new",
            "p99_wait_s": {name: m.point.p99_wait_s for name, m in [("new", Matched(new, True)), *chosen.items()]},
            "matched": {name: m.matched for name, m in chosen.items()},
            "settings": {name: m.point.value for name, m in [("new", Matched(new, True)), *chosen.items()]},
            "best_baseline": best.point.policy if best else None,
            "gpu_hours_ratio": round(new.gpu_hours / best.point.gpu_hours, 3) if best else None,
        }
    return "\n".join(lines), summary


def plot(points: dict[str, list[Point]], path: Path, title: str) -> None:
    import matplotlib  # the bench extra: only the plot needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(points), figsize=(6.5 * len(points), 5), squeeze=False)
    for ax, (routing, group) in zip(axes[0], points.items(), strict=True):
        new, chosen = match(group)
        for spec in POLICIES:
            own = sorted((p for p in group if p.policy == spec.name), key=lambda p: p.value)
            if not own:
                continue
            style = {"linewidth": 2.5, "color": "black", "zorder": 3} if spec.name == "new" else {"alpha": 0.8}
            ax.plot([p.p95_wait_s for p in own], [p.gpu_hours for p in own], marker="o", label=spec.name, **style)
            for p in own:
                ax.annotate(
                    f"{p.value:g}", (p.p95_wait_s, p.gpu_hours), fontsize=6, xytext=(3, 3), textcoords="offset points"
                )
        ax.scatter(
            [new.p95_wait_s],
            [new.gpu_hours],
            s=160,
            facecolors="none",
            edgecolors="red",
            zorder=4,
            label="new (default)",
        )
        for m in chosen.values():
            if m.matched:
                ax.scatter([m.point.p95_wait_s], [m.point.gpu_hours], s=90, marker="x", color="red", zorder=4)
        ax.set_xscale("symlog", linthresh=10)
        ax.set_xlabel("p95 queue wait (s), pooled over seeds")
        ax.set_ylabel("GPU-hours (mean per seed)")
        ax.set_title(f"{title}: {routing}")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), default="small-h100")
    parser.add_argument("--seeds", type=int, default=20, help="seeds 1..N (default 20)")
    parser.add_argument("--first-seed", type=int, default=1)
    parser.add_argument("--routing", choices=("service", "gateway", "both"), default="both")
    parser.add_argument("--policies", default=",".join(p.name for p in POLICIES), help="comma-separated")
    parser.add_argument("--trace", type=Path, help="CSV with header arrival_s,audio_s,output_tokens")
    parser.add_argument("--write-trace", type=Path, help="write the first seed's built-in day as a CSV and exit")
    parser.add_argument("--quick", action="store_true", help="few seeds, a short window: a smoke test")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("--plot", type=Path, default=Path("bench/results/policy_sim.png"))
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    args = parser.parse_args(argv)

    scenario = SCENARIOS[args.scenario]
    if args.write_trace:
        write_trace(args.write_trace, call_centre_day(args.first_seed, scenario.peak_rate, day=0))
        return 0
    if args.quick:
        # The morning ramp only (06:00-09:00), with a lighter load: seconds, not minutes.
        seeds = tuple(range(args.first_seed, args.first_seed + 2))
        setup = Setup(scenario, seeds, 6 * 3600, 3.0, args.trace, peak_scale=0.5, history_days=2)
    else:
        setup = Setup(scenario, tuple(range(args.first_seed, args.first_seed + args.seeds)), 0.0, 24.0, args.trace)
    if args.trace and args.quick:
        setup = replace(setup, seeds=(args.first_seed,))
    names = [n.strip() for n in args.policies.split(",") if n.strip()]
    if "new" not in names:
        names.insert(0, "new")
    policies = [POLICY_BY_NAME[n] for n in names]
    routings = ("service", "gateway") if args.routing == "both" else (args.routing,)
    started = time.perf_counter()
    points = sweep(setup, routings, policies, 1 if args.quick else args.workers, quick=args.quick)
    text, summary = report(setup, points)
    elapsed = time.perf_counter() - started
    seeds_text = f"seeds {setup.seeds[0]}-{setup.seeds[-1]}"
    source = f"trace {args.trace}, {seeds_text}" if args.trace else f"built-in call-centre days, {seeds_text}"
    if args.json:
        first = summary[routings[0]]
        print(json.dumps({**first, "routing": routings[0], "by_routing": summary, "source": source}))
    else:
        print(f"scenario {scenario.name}: {scenario.model} on {scenario.gpu_type}; {source}; {elapsed:.0f}s")
        print(text)
    if not args.no_plot and not args.quick:
        plot(points, args.plot, scenario.name)
        if not args.json:
            print(f"plot: {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
