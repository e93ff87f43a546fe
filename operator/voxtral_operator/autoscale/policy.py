"""Pure: how many replicas an endpoint should have, given what its replicas report. No I/O, no clock.

- Scale up at once when the queue exceeds what the ready replicas tolerate
  (`targetQueueDepth` waiting requests each), adding at most `maxScaleUpStep` replicas.
- Hold while replicas are still loading: their capacity is on its way, and a 15-minute model
  load must not set off one scale-up per scrape.
- Scale down one replica at a time, only after `scaleDownDelaySeconds` of sustained low load:
  nothing waiting, and the running requests would fit on one replica fewer.
- Missing metrics (a ready replica that did not answer its scrape) never cause a scale-down.
- Never outside [minReplicas, maxReplicas].
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# vLLM's default --max-num-seqs: the running requests one replica batches when the spec sets none.
DEFAULT_MAX_NUM_SEQS = 256


@dataclass(frozen=True)
class Limits:
    min_replicas: int
    max_replicas: int
    target_queue_depth: int
    scale_down_delay_seconds: float
    max_scale_up_step: int
    max_num_seqs: int = DEFAULT_MAX_NUM_SEQS


@dataclass(frozen=True)
class Observation:
    replicas: int  # spec.replicas now
    ready: int  # replicas passing readiness
    scraped: int  # ready replicas whose /metrics answered
    waiting: float  # vllm:num_requests_waiting summed over the scraped replicas
    running: float  # vllm:num_requests_running summed over the scraped replicas

    @property
    def loading(self) -> int:
        return max(0, self.replicas - self.ready)

    @property
    def complete(self) -> bool:
        return self.scraped == self.ready


@dataclass(frozen=True)
class History:
    low_since: float | None = None  # when load last became low (continuously low since)


@dataclass(frozen=True)
class Decision:
    replicas: int
    reason: str
    history: History


def decide(limits: Limits, seen: Observation, history: History, now: float) -> Decision:
    current = seen.replicas
    bounded = min(max(current, limits.min_replicas), limits.max_replicas)
    if bounded != current:
        return Decision(
            bounded, f"replicas {current} outside [{limits.min_replicas}, {limits.max_replicas}]", History()
        )

    tolerated = limits.target_queue_depth * max(seen.ready, 1)
    if seen.waiting > tolerated:
        if current >= limits.max_replicas:
            return Decision(current, f"queue {seen.waiting:g} > {tolerated}, at maxReplicas", History())
        if seen.loading:
            return Decision(
                current, f"queue {seen.waiting:g} > {tolerated}, {seen.loading} replica(s) loading", History()
            )
        excess = seen.waiting - tolerated
        step = min(limits.max_scale_up_step, math.ceil(excess / limits.target_queue_depth))
        target = min(limits.max_replicas, current + max(step, 1))
        return Decision(target, f"queue {seen.waiting:g} > {tolerated} tolerated by {seen.ready} ready", History())

    if not seen.complete:
        return Decision(
            current, f"metrics missing from {seen.ready - seen.scraped} replica(s): not scaling down", History()
        )

    fits_on_fewer = seen.running <= (seen.ready - 1) * limits.max_num_seqs
    low = seen.waiting == 0 and seen.ready > 0 and fits_on_fewer and seen.loading == 0
    if not low or current <= limits.min_replicas:
        return Decision(current, "load within target", History())
    low_since = history.low_since if history.low_since is not None else now
    waited = now - low_since
    if waited < limits.scale_down_delay_seconds:
        return Decision(
            current, f"low load for {waited:.0f}s of {limits.scale_down_delay_seconds:g}s", History(low_since)
        )
    # One replica at a time; the delay starts over for the next one.
    return Decision(current - 1, f"low load for {waited:.0f}s", History(now))
