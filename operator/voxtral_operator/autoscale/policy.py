"""Pure: how many replicas an endpoint should have, given what its replicas report. No I/O, no clock.

- Scale up at once when the queue exceeds what the ready replicas tolerate
  (`targetQueueDepth` waiting requests each), adding at most `maxScaleUpStep` replicas.
- While replicas are still loading, count them as capacity on its way: scale up further only if
  the whole demand (waiting + running) overflows every replica, ready or loading, at a full batch
  (`maxNumSeqs`) plus its tolerated queue. A 15-minute model load must not set off one scale-up
  per scrape, yet a burst far beyond the incoming capacity is not left waiting for it.
- Scale down one replica at a time, only after `scaleDownDelaySeconds` of sustained low load
  (nothing waiting, and the running requests would fit on one replica fewer), then one more
  every SCALE_DOWN_STEP_SECONDS (or the delay, if shorter) while the load stays that low.
- Missing metrics (a ready replica that did not answer its scrape) never cause a scale-down.
- Never outside [minReplicas, maxReplicas].
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# vLLM's default --max-num-seqs: the running requests one replica batches when the spec sets none.
DEFAULT_MAX_NUM_SEQS = 256
# Once load has been low for the whole delay, further replicas go one at a time this far apart
# (each removal re-checks that the load still fits on one replica fewer).
SCALE_DOWN_STEP_SECONDS = 30.0


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
    last_scale_down: float | None = None


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
            # Loading replicas are capacity on its way: add more only if the whole demand would
            # overflow every replica, ready or loading, each running a full batch plus its
            # tolerated queue. A long load then adds what demand needs, not a step per scrape.
            per_replica = limits.max_num_seqs + limits.target_queue_depth
            needed = math.ceil((seen.waiting + seen.running) / per_replica)
            if needed <= current:
                return Decision(
                    current, f"queue {seen.waiting:g} > {tolerated}, {seen.loading} replica(s) loading", History()
                )
            step = min(limits.max_scale_up_step, needed - current)
        else:
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
    step_gap = min(SCALE_DOWN_STEP_SECONDS, limits.scale_down_delay_seconds)
    if history.last_scale_down is not None and now - history.last_scale_down < step_gap:
        return Decision(current, f"low load for {waited:.0f}s, next step down soon", history)
    return Decision(current - 1, f"low load for {waited:.0f}s", History(low_since, last_scale_down=now))
