"""Replay a bursty 24-hour request trace through the operator's scaling policy and an HPA-style one.

Simulated time, one-second steps; nothing real runs. The trace (seeded, so every run is the same):
- a diurnal base load: 0.4 req/s at night rising to 2.4 req/s at 14:00 (a sinusoid);
- 24 bursts at random times, each 2-10 minutes long at 3-6x the base rate (a call-centre shift
  change, a batch upload);
- Poisson arrivals; service time exponential with mean 4 s (a short transcription or audio chat).
The endpoint model: each replica batches 16 requests (`maxNumSeqs`), takes 180 s from scale-up to
ready (a cold Voxtral Mini load), uses 1 GPU; bounds 1..12 replicas.

Policies:
- operator: `voxtral_operator.autoscale.policy.decide` every 2 s, targetQueueDepth 4,
  scaleDownDelaySeconds 300, maxScaleUpStep 2;
- hpa: Kubernetes HPA on the same metric (average waiting requests per replica, target 4):
  15 s sync, desired = ceil(current x metric / target) with 10 % tolerance, scale-up limited to
  max(4 pods, 100 %) per 15 s, scale-down stabilised over 300 s.
Reports GPU-hours and queue wait (p50/p95/p99) for each, side by side.

    python bench/policy_sim.py [--seed 7]
"""

from __future__ import annotations

import argparse
import heapq
import math
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from voxtral_operator.autoscale.policy import History, Limits, Observation, decide

DAY = 24 * 3600
SLOTS_PER_REPLICA = 16
LOAD_SECONDS = 180
MEAN_SERVICE_SECONDS = 4.0
MIN_REPLICAS, MAX_REPLICAS, TARGET_QUEUE = 1, 12, 4


def trace(seed: int) -> list[list[float]]:
    """Arrivals per second: a list of service times for each second of the day."""
    rng = random.Random(seed)
    bursts = []
    for _ in range(24):
        start = rng.uniform(0, DAY - 600)
        bursts.append((start, start + rng.uniform(120, 600), rng.uniform(3, 6)))
    seconds: list[list[float]] = []
    for t in range(DAY):
        rate = 1.4 - 1.0 * math.cos(2 * math.pi * (t - 2 * 3600) / DAY)  # 0.4 at 02:00, 2.4 at 14:00
        for start, end, factor in bursts:
            if start <= t < end:
                rate *= factor
        # Poisson arrivals for this second
        count, threshold, product = 0, math.exp(-rate), rng.random()
        while product > threshold:
            count += 1
            product *= rng.random()
        seconds.append([rng.expovariate(1 / MEAN_SERVICE_SECONDS) for _ in range(count)])
    return seconds


@dataclass
class Cluster:
    replicas: int = MIN_REPLICAS  # what the policy asked for (pods exist, loading or ready)
    ready_at: list[float] = field(default_factory=lambda: [0.0] * MIN_REPLICAS)
    waiting: deque[tuple[float, float]] = field(default_factory=deque)  # (arrival, service)
    running: list[float] = field(default_factory=list)  # completion times (heap)
    waits: list[float] = field(default_factory=list)
    gpu_seconds: float = 0.0

    def ready(self, now: float) -> int:
        return sum(1 for t in self.ready_at if t <= now)

    def scale(self, replicas: int, now: float) -> None:
        if replicas > self.replicas:
            self.ready_at += [now + LOAD_SECONDS] * (replicas - self.replicas)
        elif replicas < self.replicas:
            self.ready_at = sorted(self.ready_at)[:replicas]  # remove the newest (loading) first
        self.replicas = replicas

    def step(self, now: float, arrivals: list[float]) -> None:
        while self.running and self.running[0] <= now:
            heapq.heappop(self.running)
        self.waiting.extend((now, service) for service in arrivals)
        capacity = self.ready(now) * SLOTS_PER_REPLICA
        while self.waiting and len(self.running) < capacity:
            arrival, service = self.waiting.popleft()
            self.waits.append(now - arrival)
            heapq.heappush(self.running, now + service)
        self.gpu_seconds += self.replicas


def operator_policy() -> Callable[[Cluster, float], None]:
    limits = Limits(MIN_REPLICAS, MAX_REPLICAS, TARGET_QUEUE, 300, 2, SLOTS_PER_REPLICA)
    history = History()

    def tick(cluster: Cluster, now: float) -> None:
        nonlocal history
        if int(now) % 2:
            return
        ready = cluster.ready(now)
        seen = Observation(cluster.replicas, ready, ready, len(cluster.waiting), len(cluster.running))
        decision = decide(limits, seen, history, now)
        history = decision.history
        cluster.scale(decision.replicas, now)

    return tick


def hpa_policy() -> Callable[[Cluster, float], None]:
    recommendations: deque[tuple[float, int]] = deque()

    def tick(cluster: Cluster, now: float) -> None:
        if int(now) % 15:
            return
        current = cluster.replicas
        metric = len(cluster.waiting) / max(cluster.ready(now), 1)
        ratio = metric / TARGET_QUEUE
        desired = current if abs(ratio - 1) <= 0.1 else math.ceil(current * ratio)
        desired = min(max(desired, MIN_REPLICAS), MAX_REPLICAS)
        recommendations.append((now, desired))
        while recommendations and recommendations[0][0] < now - 300:
            recommendations.popleft()
        if desired < current:
            desired = max(r for _, r in recommendations)  # scale-down stabilisation window
        else:
            desired = min(desired, max(current + 4, current * 2))
        cluster.scale(desired, now)

    return tick


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * pct / 100))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    arrivals = trace(args.seed)
    print(f"trace: {sum(len(s) for s in arrivals)} requests over 24 h (seed {args.seed})")
    print(f"{'policy':<10}{'GPU-hours':>11}{'wait p50':>11}{'wait p95':>11}{'wait p99':>11}{'max replicas':>14}")
    for name, make in (("operator", operator_policy), ("hpa", hpa_policy)):
        cluster, policy, peak = Cluster(), make(), 0
        for second in range(DAY):
            policy(cluster, float(second))
            cluster.step(float(second), arrivals[second])
            peak = max(peak, cluster.replicas)
        print(
            f"{name:<10}{cluster.gpu_seconds / 3600:>11.1f}{percentile(cluster.waits, 50):>10.1f}s"
            f"{percentile(cluster.waits, 95):>10.1f}s{percentile(cluster.waits, 99):>10.1f}s{peak:>14}"
        )


if __name__ == "__main__":
    main()
