"""Pure: how many replicas the overflow pool runs, and the GPU-seconds each pool has held.

The reserved Deployment always carries the endpoint's whole desired count. An overflow replica
exists for each reserved pod the scheduler found no room for (PodScheduled False, Unschedulable),
except one it has nominated a node for: that one waits for lower-priority pods to be preempted and
gets its reserved GPU shortly. An overflow replica stays until a reserved one is Ready in its place
(make-before-break), and a scale-down, which removes unscheduled pods first, ends overflow replicas
first. Every input is read from the pods as they are now: the count is level-triggered.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

POOL_LABEL = "voxtral.dev/pool"
RESERVED = "reserved"
OVERFLOW = "overflow"
POOLS = (RESERVED, OVERFLOW)


def pool_of(pod: Mapping[str, Any]) -> str:
    """A pod summary's pool: the overflow Deployment labels its pods; the reserved one does not
    (adding a label to its template would restart every running replica)."""
    return OVERFLOW if pod.get("pool") == OVERFLOW else RESERVED


def _unschedulable(pod: Mapping[str, Any]) -> bool:
    return any(
        c.get("type") == "PodScheduled" and c.get("status") == "False" and c.get("reason") == "Unschedulable"
        for c in pod.get("conditions") or []
    )


def waits_for_preemption(pod: Mapping[str, Any]) -> bool:
    """The scheduler nominated a node once lower-priority pods there are gone."""
    return bool(pod.get("nominatedNode")) and not pod.get("holdsNode") and not pod.get("deleting")


def waits_for_room(pod: Mapping[str, Any]) -> bool:
    """A reserved pod the scheduler found no room for, and no preemption will make room."""
    return (
        pool_of(pod) == RESERVED
        and not pod.get("deleting")
        and not pod.get("holdsNode")
        and _unschedulable(pod)
        and not waits_for_preemption(pod)
    )


def overflow_replicas(*, desired: int, pods: Iterable[Mapping[str, Any]], current: int, cap: int | None) -> int:
    """The overflow Deployment's replicas.

    desired: the endpoint's replicas now; current: the overflow Deployment's replicas as they are;
    cap: spec.nodePool.overflow.maxReplicas."""
    reserved = [pod for pod in pods if pool_of(pod) == RESERVED and not pod.get("deleting")]
    no_room = sum(1 for pod in reserved if waits_for_room(pod))
    ready = sum(1 for pod in reserved if pod.get("ready"))
    # Make-before-break: an overflow replica stays while the reserved pod that replaces it loads.
    kept = min(current, max(desired - ready, 0))
    return max(0, min(max(no_room, kept), desired, desired if cap is None else cap))


def gpus_by_pool(pods: Iterable[Mapping[str, Any]], tensor_parallel_size: int) -> dict[str, int]:
    """GPUs each pool holds: pods bound to a node and not finished, x the tensor-parallel size."""
    held = dict.fromkeys(POOLS, 0)
    for pod in pods:
        if pod.get("holdsNode"):
            held[pool_of(pod)] += tensor_parallel_size
    return held


@dataclass
class GpuMeter:
    """GPU-seconds per (namespace, endpoint, pool), for chargeback: what was held, for how long.

    `held` is called whenever the operator recomputes an endpoint's GPUs; `totals` integrates up to
    `now`, so a scrape between two reconciles counts the GPUs held meanwhile too."""

    _totals: dict[tuple[str, str, str], float] = field(default_factory=dict)
    _holding: dict[tuple[str, str, str], tuple[int, float]] = field(default_factory=dict)

    def held(self, namespace: str, endpoint: str, by_pool: Mapping[str, int], now: float) -> None:
        for pool in POOLS:
            key = (namespace, endpoint, pool)
            self._settle(key, now)
            self._holding[key] = (by_pool.get(pool, 0), now)

    def forget(self, namespace: str, endpoint: str) -> None:
        for pool in POOLS:
            self._totals.pop((namespace, endpoint, pool), None)
            self._holding.pop((namespace, endpoint, pool), None)

    def totals(self, now: float) -> dict[tuple[str, str, str], float]:
        result = dict(self._totals)
        for key, (gpus, since) in self._holding.items():
            result[key] = result.get(key, 0.0) + gpus * max(now - since, 0.0)
        return result

    def _settle(self, key: tuple[str, str, str], now: float) -> None:
        gpus, since = self._holding.get(key, (0, now))
        self._totals[key] = self._totals.get(key, 0.0) + gpus * max(now - since, 0.0)
