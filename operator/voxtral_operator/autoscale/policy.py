"""Pure: how many replicas an endpoint should have, from what its replicas and its gateway report.

No I/O and no clock: `now` is given in epoch seconds (the time of day matters for the daily
profile). What carries over between decisions is a plain value, `State` (`to_dict`/`from_dict`), so
the operator can keep it in status or a ConfigMap and a restart forgets nothing.

Two policies, chosen by `spec.autoscaling.policy`:

**requests** (the default, `_decide_requests`): requests in flight per replica (running and waiting at
vLLM, queued at the gateway, deferrable work left out) held at `targetActiveRequests`, with the
algorithm of Kubernetes' HPA (autoscaling/v2): a 10 % tolerance, scale-up by at most max(4, the
replicas there are) every 15 s, scale-down to the highest recommendation of the last
`scaleDownDelaySeconds` (900 s by default). One change to HPA's rule: a fleet of at most
SMALL_FLEET_REPLICAS scales up only when a request waits (at vLLM or the gateway) or the count averaged
over 5 minutes is above target, so an in-flight spike its batch absorbs starts no replica that would
come a cold start later. In the simulation (bench/policy_sim.py, README) it used fewer GPU-hours on
held-out days than the workload policy below at the same tails; simpler won. What the operator adds to
HPA's rule is shared with the workload policy: scale to and from zero at the gateway, a person's scale
kept as a floor, the reserved pool kept up for deferrable work (and released only a scale-down delay
after it), loading replicas kept until ready, no scale-down while a ready replica's metrics are
missing.

**workload** (`_decide_workload`): load counted in replicas' worth of work, not in requests (a
5-second clip and a 40-minute file are not the same request):
- a ready replica is as busy as the larger of its KV-cache usage and its share of `maxNumSeqs` in
  flight; the target keeps that, averaged over the replicas, at `target_utilization`;
- waiting work (waiting requests x the work a request has taken lately, plus the gateway's queued
  audio-seconds when there is a gateway) is turned into replica-seconds with the throughput a
  saturated replica has shown, learned online from vLLM's counters (`vllm:prompt_tokens`,
  `vllm:generation_tokens`, `vllm:request_success`), the catalog giving the prior (the weights a
  decode step reads against the GPU's memory bandwidth).

Cold starts (the catalog's startup budget as the prior, then learned from how long replicas took, one
figure per cold-start path, `Observation.start_path`: a staged cache starts in minutes, a download in tens):
- demand is smoothed over a quarter of a cold start: what will not last until a new replica is
  ready is not worth one. A surge above the level of the last cold start counts in proportion to how
  long it has lasted, in full once it has lasted a cold start;
- a backlog counts only if it would outlive a cold start: the queue in one cold start, at its recent
  growth (or drain), less what the loading replicas do as they arrive; new replicas clear the rest
  within one more cold start. Loading replicas count against the target at once;
- a predictive floor: demand at the same time of day, the median over the last PROFILE_DAYS days
  (5-minute bins, so one day's burst is not forecast), scaled by how today compares with the profile
  so far, looked up one cold start ahead: the morning ramp is met by replicas started before it;
- panic (Knative's idea, cold-start aware): when the short-window demand asks for at least twice the
  replicas there are and the backlog would outlive a cold start, or the queue is deeper than
  `targetQueueDepth` per ready replica, scale up at once; nothing scales down during the panic;
- replicas still loading are kept until ready even when the demand that asked for them is gone
  (cancelling them saved 0.3-1.7 % of GPU-hours in the simulation, at a p95 wait no better); only a load
  overdue by more than OVERDUE_COLD_STARTS cold starts (no GPU for it, a failing start) is cancelled.

A person's scale is a floor for a while: when `spec.replicas` was last written by someone other
than the autoscaler (`kubectl scale`, `kubectl apply` or `edit` with `replicas`, at creation too),
the autoscaler keeps at least that many replicas until all of them have been ready at once and then
for `scaleDownDelaySeconds` more. It never cancels them while they load; it may add more above them.
A lower number is no ceiling: demand still scales up (maxReplicas caps).

Scale-down is slow and drain-aware: only after `scaleDownDelaySeconds` of demand below the replicas,
one replica every SCALE_DOWN_STEP_SECONDS, never while a ready replica's metrics are missing, never
below what the profile expects over the next cold start plus the node retention (a freed GPU node
bills that long anyway, so a replica wanted back within it saves nothing). Scale to zero when
`scale_to_zero_after_seconds` is set, `min_replicas` is 0, the gateway has seen no request for that
long and the profile expects none within a cold start; a request held at the gateway brings a
replica back at once.

A reserved pool (`reserved_replicas`, GPUs paid whatever happens) earns only when busy: while the
gateway's deferrable lane has work waiting or in flight, the policy keeps up to that many replicas
up (the deferrable lane fills their idle capacity), and never scales beyond it for deferrable work
alone: deferrable work is left out of the demand, the queue and the profile. Its share of a
replica's load is estimated by its share of the audio-seconds in flight (the KV cache a request
holds grows with its audio).

Every decision carries an `Explanation`: the signal, the capacity, the target and why.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from voxtral_operator import coldstart
from voxtral_operator.api.catalog import DEFAULT_MAX_NUM_SEQS
from voxtral_operator.api.models import DEFAULT_TARGET_ACTIVE_REQUESTS

AUDIO_TOKENS_PER_SECOND = 12.5
# A prompt token costs a fraction of a decode slot: prefill is computed in large chunks while each
# generated token needs its own step. Work = generated tokens + prompt tokens x this.
PREFILL_WORK_WEIGHT = 0.125
# Work one queued audio-second stands for: its prompt tokens, weighted, plus about three tokens of
# transcript (speech runs at roughly 2.5 words, 3 tokens, a second).
WORK_PER_AUDIO_SECOND = AUDIO_TOKENS_PER_SECOND * PREFILL_WORK_WEIGHT + 3.0
# Before the counters have said anything: the work of one request (a minute of audio, transcribed).
PRIOR_WORK_PER_REQUEST = 60 * WORK_PER_AUDIO_SECOND
# Decode steps run at about this share of the GPU's memory bandwidth (all weights read per step).
BANDWIDTH_EFFICIENCY = 0.7
PRIOR_BATCH = 32  # sequences a busy replica is assumed to decode at once, for the prior only
SATURATED_KV = 0.9  # a replica this full (or with anything waiting) shows its capacity

STABLE_WINDOW_SECONDS = 120.0  # at least; and never longer than scaleDownDelaySeconds
STABLE_SHARE_OF_COLD_START = 0.25
PANIC_WINDOW_SECONDS = 6.0
PANIC_RATIO = 2.0
SURGE_MARGIN = 0.1  # demand above the cold-start level by more than this share of it is a surge
CAPACITY_WINDOW_SECONDS = 600.0  # how fast the learned capacity follows new evidence
COLD_START_WEIGHT = 0.3  # of each newly observed load time
CANCEL_DELAY_SECONDS = 120.0  # an overdue loading replica unneeded this long is cancelled
OVERDUE_COLD_STARTS = 2.0  # a replica loading longer than this many cold starts is overdue
SCALE_DOWN_STEP_SECONDS = 30.0
PROFILE_BIN_SECONDS = 300
PROFILE_BINS = 86400 // PROFILE_BIN_SECONDS
PROFILE_DAYS = 7
# Today's level against the profile (a busier Monday, a quiet holiday) follows within this range;
# bins below MIN_PROFILE_DEMAND (replicas' worth) are too quiet to compare. It falls over an hour and
# rises within minutes: a weekend or holiday unlike the week behind it pulls the profile's floor down
# to what the day shows, and a working day after it has the floor back before its morning ramp.
LEVEL_WINDOW_SECONDS = 3600.0
LEVEL_RISE_WINDOW_SECONDS = 600.0
LEVEL_RANGE = (0.1, 1.5)
MIN_PROFILE_DEMAND = 0.5
IDLE_DEMAND = 0.05  # replicas' worth the profile may expect while the endpoint still goes to zero

# Memory bandwidth (bytes/s) per catalog GPU type, for the capacity prior only.
GPU_MEMORY_BANDWIDTH: dict[str, float] = {
    "L4-24GB": 300e9,
    "A10-24GB": 600e9,
    "A100-40GB": 1555e9,
    "A100-80GB": 2039e9,
    "H100-80GB": 3350e9,
    "H200-141GB": 4800e9,
}


def prior_work_per_second(weights_bytes: float, gpu_type: str, tensor_parallel_size: int, max_num_seqs: int) -> float:
    """A replica's throughput in work units per second before anything is measured.

    A decode step reads every weight once, so one sequence decodes at about bandwidth / weights
    tokens per second; a busy replica decodes a batch of them.
    """
    bandwidth = GPU_MEMORY_BANDWIDTH.get(gpu_type, 300e9) * tensor_parallel_size * BANDWIDTH_EFFICIENCY
    return bandwidth / max(weights_bytes, 1.0) * min(max_num_seqs, PRIOR_BATCH)


REQUESTS_POLICY = "requests"
WORKLOAD_POLICY = "workload"
# The requests policy (the default) holds requests in flight per replica at a target, as Kubernetes'
# HPA (autoscaling/v2) does with an AverageValue target: a 10 % tolerance, scale-up by at most
# max(4, the replicas there are) every 15 s, scale-down to the highest recommendation of the last
# scaleDownDelaySeconds.
REQUESTS_TOLERANCE = 0.1
SCALE_UP_PERIOD_SECONDS = 15.0
SCALE_UP_MIN_STEP = 4
# A small fleet absorbs a spike of requests in its batch, and a replica started for in-flight requests that
# nothing waits behind comes a cold start later, after the spike, billing its cold start and the scale-down
# delay. Up to SMALL_FLEET_REPLICAS, a scale-up needs a request waiting (at vLLM or the gateway), or the count
# averaged over ACTIVE_LEVEL_WINDOW_SECONDS above target (both chosen on the simulation's training days).
SMALL_FLEET_REPLICAS = 3
ACTIVE_LEVEL_WINDOW_SECONDS = 300.0


@dataclass(frozen=True)
class Limits:
    min_replicas: int
    max_replicas: int
    policy: str = REQUESTS_POLICY  # or WORKLOAD_POLICY
    # The requests policy: running + waiting + queued, a replica (the spec's default, one constant).
    target_active_requests: float = DEFAULT_TARGET_ACTIVE_REQUESTS
    max_num_seqs: int = DEFAULT_MAX_NUM_SEQS
    prior_work_per_second: float = 1000.0  # per replica; see prior_work_per_second()
    cold_start_seconds: float = 600.0  # the catalog's startup budget: the prior for load time
    scale_down_delay_seconds: float = 300.0
    max_scale_up_step: int = 2  # the workload policy, outside panic
    target_queue_depth: int = 4  # waiting requests per ready replica tolerated before a queue is a surge
    target_utilization: float = 0.35  # of KV cache and sequence slots, averaged over ready replicas
    node_retention_seconds: float = 600.0  # a GPU node bills this long after its pod goes
    scale_to_zero_after_seconds: float | None = None  # with the gateway; needs min_replicas 0
    reserved_replicas: int = 0  # replicas' worth of reserved GPUs: kept up while deferrable work waits (and a
    # scale-down delay after)


@dataclass(frozen=True)
class PodSample:
    """One ready replica's /metrics."""

    name: str
    waiting: float  # vllm:num_requests_waiting
    running: float  # vllm:num_requests_running
    kv_cache_usage: float | None = None  # vllm:kv_cache_usage_perc, 0..1
    prompt_tokens: float | None = None  # vllm:prompt_tokens_total
    generation_tokens: float | None = None  # vllm:generation_tokens_total
    finished: float | None = None  # vllm:request_success_total


@dataclass(frozen=True)
class GatewaySample:
    """What the endpoint's gateway reports: its own queue, in requests and audio-seconds (the
    interactive lane's), what it has in flight (both lanes), and its deferrable lane."""

    queued_requests: float
    queued_audio_seconds: float
    in_flight_audio_seconds: float = 0.0
    seconds_since_last_request: float | None = None
    deferrable_queued_requests: float = 0.0
    deferrable_in_flight_audio_seconds: float = 0.0  # the deferrable share of in_flight_audio_seconds
    deferrable_in_flight_requests: float = 0.0  # sent to replicas, running or waiting in vLLM's queue

    @property
    def deferrable_pending(self) -> bool:
        return (
            self.deferrable_queued_requests > 0
            or self.deferrable_in_flight_requests > 0
            or self.deferrable_in_flight_audio_seconds > 0
        )

    @property
    def interactive_share(self) -> float:
        """The interactive lane's share of the work in flight, by audio-seconds."""
        total = self.in_flight_audio_seconds
        if total <= 0:
            return 1.0
        return min(1.0, max(0.0, 1.0 - self.deferrable_in_flight_audio_seconds / total))


@dataclass(frozen=True)
class ManualScale:
    """spec.replicas as someone other than the autoscaler last wrote it."""

    replicas: int
    by: str  # who wrote it: the field manager the API server recorded (kubectl, kubectl-client-side-apply, ...)
    at: float  # when (epoch seconds); with `replicas`, tells one write from the next


@dataclass(frozen=True)
class Observation:
    replicas: int  # spec.replicas now
    ready: int  # replicas passing readiness
    pods: Sequence[PodSample] = ()  # ready replicas whose /metrics answered
    gateway: GatewaySample | None = None
    manual: ManualScale | None = None  # when spec.replicas was last written by a person, not the autoscaler
    # The cold-start path a replica started now takes (coldstart.py: ColdDownload, SharedCache,
    # LocalCache); "" when unknown: then one cold start is learned for all.
    start_path: str = ""

    @property
    def loading(self) -> int:
        return max(0, self.replicas - self.ready)

    @property
    def missing(self) -> int:
        return max(0, self.ready - len(self.pods))

    @property
    def engine_waiting(self) -> float:
        """Requests waiting in the replicas' own queues, less the deferrable ones the gateway has in
        flight (vLLM's count does not tell the lanes apart: at most that many of them are deferrable)."""
        waiting = sum(p.waiting for p in self.pods)
        if self.gateway is not None:
            waiting = max(0.0, waiting - self.gateway.deferrable_in_flight_requests)
        return waiting

    @property
    def waiting(self) -> float:
        return self.engine_waiting + (self.gateway.queued_requests if self.gateway else 0.0)


Bins = tuple[float | None, ...]
EMPTY_BINS: Bins = (None,) * PROFILE_BINS


def _median(values: list[float]) -> float:
    values.sort()
    middle = len(values) // 2
    return values[middle] if len(values) % 2 else (values[middle - 1] + values[middle]) / 2


def _profile_bin(days: Sequence[Bins], index: int) -> float | None:
    known = [day[index] for day in days if day[index] is not None]
    return _median(known) if known else None  # type: ignore[arg-type]


@dataclass(frozen=True)
class State:
    """Everything the policy remembers; plain numbers, so it serialises (to_dict/from_dict)."""

    updated_at: float | None = None
    capacity: float | None = None  # work units per second a saturated replica does (learned)
    work_per_request: float | None = None  # learned
    cold_start: float | None = None  # seconds, learned over every path
    cold_starts: Mapping[str, float] = field(default_factory=dict)  # seconds, learned per cold-start path
    counters: Mapping[str, tuple[float, float, float]] = field(default_factory=dict)  # pod: prompt, gen, finished
    demand: float = 0.0  # replicas' worth of work in flight, stable window
    base: float = 0.0  # the same over one cold start: the level a new replica would meet
    demand_fast: float = 0.0  # panic window
    surge_since: float | None = None  # demand above the base since
    queue: float = 0.0  # replica-seconds waiting, last seen
    queue_since: float | None = None  # something waiting since
    growth: float = 0.0  # replica-seconds per second the queue grows, stable window
    level: float = 1.0  # today's demand over the profile's
    loading_since: tuple[float, ...] = ()  # when each loading replica was asked for, oldest first
    ready: int = 0
    low_since: float | None = None
    last_scale_down: float | None = None
    panic_until: float | None = None
    days: tuple[Bins, ...] = ()  # demand per 5-minute bin, one row per day, oldest first
    day: int | None = None  # the day (epoch days) of the newest row
    profile: Bins = EMPTY_BINS  # the median over `days`, bin by bin (derived, not serialised)
    bin_start: float | None = None
    bin_total: float = 0.0
    bin_seconds: float = 0.0
    # The last person's scale (ManualScale) and when all its replicas were first ready at once.
    hold_replicas: int | None = None
    hold_by: str = ""
    hold_at: float | None = None
    hold_ready_at: float | None = None
    # The requests policy: its recommendations over the scale-down window, each kept only while no later
    # one is as high (so the first is the window's highest), and its last scale-up.
    recommendations: tuple[tuple[float, int], ...] = ()
    last_scale_up: float | None = None
    active_level: float = 0.0  # requests in flight, averaged over ACTIVE_LEVEL_WINDOW_SECONDS

    def to_dict(self) -> dict[str, Any]:
        return {
            "updatedAt": self.updated_at,
            "capacity": self.capacity,
            "workPerRequest": self.work_per_request,
            "coldStart": self.cold_start,
            "coldStarts": dict(self.cold_starts),
            "counters": {k: list(v) for k, v in self.counters.items()},
            "demand": self.demand,
            "base": self.base,
            "demandFast": self.demand_fast,
            "surgeSince": self.surge_since,
            "queue": self.queue,
            "queueSince": self.queue_since,
            "growth": self.growth,
            "level": self.level,
            "loadingSince": list(self.loading_since),
            "ready": self.ready,
            "lowSince": self.low_since,
            "lastScaleDown": self.last_scale_down,
            "panicUntil": self.panic_until,
            "days": [[None if v is None else round(v, 3) for v in day] for day in self.days],
            "day": self.day,
            "binStart": self.bin_start,
            "binTotal": self.bin_total,
            "binSeconds": self.bin_seconds,
            "holdReplicas": self.hold_replicas,
            "holdBy": self.hold_by,
            "holdAt": self.hold_at,
            "holdReadyAt": self.hold_ready_at,
            "recommendations": [list(r) for r in self.recommendations],
            "lastScaleUp": self.last_scale_up,
            "activeLevel": self.active_level,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> State:
        """Tolerant: a missing or malformed field falls back to its default, never an error."""

        def number(key: str) -> float | None:
            value = data.get(key)
            if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
                return float(value)
            return None

        days: list[Bins] = []
        raw_days = data.get("days")
        if isinstance(raw_days, list):
            for row in raw_days[-PROFILE_DAYS:]:
                if isinstance(row, list) and len(row) == PROFILE_BINS:
                    days.append(tuple(float(v) if isinstance(v, int | float) else None for v in row))
        counters: dict[str, tuple[float, float, float]] = {}
        raw = data.get("counters")
        if isinstance(raw, dict):
            for name, values in raw.items():
                if isinstance(values, list) and len(values) == 3 and all(isinstance(v, int | float) for v in values):
                    counters[str(name)] = (float(values[0]), float(values[1]), float(values[2]))
        cold_starts: dict[str, float] = {}
        raw_paths = data.get("coldStarts")
        if isinstance(raw_paths, dict):
            for path, seconds in raw_paths.items():
                if isinstance(seconds, int | float) and not isinstance(seconds, bool) and math.isfinite(seconds):
                    cold_starts[str(path)] = float(seconds)
        loading = data.get("loadingSince")
        day = number("day")
        hold_replicas = number("holdReplicas")
        hold_by = data.get("holdBy")
        recommendations = data.get("recommendations")
        return cls(
            updated_at=number("updatedAt"),
            capacity=number("capacity"),
            work_per_request=number("workPerRequest"),
            cold_start=number("coldStart"),
            cold_starts=cold_starts,
            counters=counters,
            demand=number("demand") or 0.0,
            base=number("base") or 0.0,
            demand_fast=number("demandFast") or 0.0,
            surge_since=number("surgeSince"),
            queue=number("queue") or 0.0,
            queue_since=number("queueSince"),
            growth=number("growth") or 0.0,
            level=number("level") or 1.0,
            loading_since=tuple(float(v) for v in loading if isinstance(v, int | float))
            if isinstance(loading, list)
            else (),
            ready=int(number("ready") or 0),
            low_since=number("lowSince"),
            last_scale_down=number("lastScaleDown"),
            panic_until=number("panicUntil"),
            days=tuple(days),
            day=None if day is None else int(day),
            profile=tuple(_profile_bin(days, i) for i in range(PROFILE_BINS)) if days else EMPTY_BINS,
            bin_start=number("binStart"),
            bin_total=number("binTotal") or 0.0,
            bin_seconds=number("binSeconds") or 0.0,
            hold_replicas=None if hold_replicas is None else int(hold_replicas),
            hold_by=hold_by if isinstance(hold_by, str) else "",
            hold_at=number("holdAt"),
            hold_ready_at=number("holdReadyAt"),
            recommendations=tuple(
                (float(r[0]), int(r[1]))
                for r in recommendations
                if isinstance(r, list) and len(r) == 2 and all(isinstance(v, int | float) for v in r)
            )
            if isinstance(recommendations, list)
            else (),
            last_scale_up=number("lastScaleUp"),
            active_level=number("activeLevel") or 0.0,
        )


@dataclass(frozen=True)
class Explanation:
    """Why a decision came out as it did; numbers, rendered on demand."""

    why: str
    busy: float = 0.0  # replicas' worth of work in flight now
    waiting: float = 0.0  # requests waiting
    queued_seconds: float = 0.0  # replica-seconds of waiting work
    demand: float = 0.0  # replicas' worth counted (base, and surges as they last)
    capacity: float = 0.0  # work units per second per replica
    cold_start: float = 0.0
    start_path: str = ""
    needed: float = 0.0  # replicas the demand needs now, at the target utilisation
    backlog: float = 0.0  # replicas added for a backlog that outlives a cold start
    floor: int = 0  # from the daily profile
    target: int = 0
    # The requests policy: requests in flight (running + waiting at the replicas + queued at the gateway),
    # the target per replica, and the highest recommendation of the scale-down window.
    active: float | None = None
    per_replica: float = 0.0
    window_highest: int = 0

    @property
    def signal(self) -> str:
        if self.active is not None:
            return (
                f"{self.active:g} requests in flight ({self.waiting:g} waiting), target {self.per_replica:g} a replica"
            )
        return (
            f"busy {self.busy:.1f} replicas, queue {self.waiting:g} waiting "
            f"({self.queued_seconds:.0f} replica-s), demand {self.demand:.1f}"
        )

    @property
    def capacity_text(self) -> str:
        via = f" ({self.start_path})" if self.start_path else ""
        return f"capacity {self.capacity:.0f} work/s per replica, cold start {self.cold_start:.0f}s{via}"

    @property
    def target_text(self) -> str:
        if self.active is not None:
            return f"target {self.target} (needs {self.needed:.2f}, highest of the window {self.window_highest})"
        parts = [f"target {self.target} (needs {self.needed:.2f}"]
        if self.backlog > 0:
            parts.append(f" + {self.backlog:.2f} for the backlog")
        if self.floor:
            parts.append(f", profile floor {self.floor}")
        return "".join(parts) + ")"

    def __str__(self) -> str:
        return f"{self.why}: {self.signal}; {self.capacity_text}; {self.target_text}"


@dataclass(frozen=True)
class Hold:
    """A person's scale the autoscaler is keeping as a floor."""

    replicas: int
    by: str
    at: float
    ready_at: float | None  # all of them ready at once since; None: not yet
    until: float | None  # when the floor ends; None: once they are all ready, plus the delay

    def describe(self, delay: float) -> str:
        asked = f"spec.replicas {self.replicas} set by {self.by}"
        if self.ready_at is None:
            return f"{asked}: kept until all {self.replicas} are ready, then for scaleDownDelaySeconds ({delay:g}s)"
        return f"{asked}: all ready, kept for scaleDownDelaySeconds ({delay:g}s) more"


def _hold(limits: Limits, seen: Observation, state: State, now: float) -> tuple[Hold | None, dict[str, Any]]:
    """The person's scale in force now, if any, and the state fields that remember it."""
    manual = seen.manual
    if manual is not None and (manual.replicas, manual.at) != (state.hold_replicas, state.hold_at):
        replicas, by, at, ready_at = manual.replicas, manual.by, manual.at, None  # a new write: a new floor
    elif state.hold_replicas is None or state.hold_at is None:
        return None, {}
    else:
        replicas, by, at, ready_at = state.hold_replicas, state.hold_by, state.hold_at, state.hold_ready_at
    if ready_at is None and seen.ready >= replicas:
        ready_at = now
    fields = {"hold_replicas": replicas, "hold_by": by, "hold_at": at, "hold_ready_at": ready_at}
    until = None if ready_at is None else ready_at + limits.scale_down_delay_seconds
    if replicas <= 0 or (until is not None and now >= until):
        return None, fields  # served its time; remembered so the same write does not start it again
    return Hold(replicas, by, at, ready_at, until), fields


def _held(limits: Limits, person: Hold | None, replicas: int, why: str) -> tuple[int, str]:
    """Never below what a person asked for while it holds; the autoscaler's own reason goes along."""
    if person is None or replicas >= min(person.replicas, limits.max_replicas):
        return replicas, why
    kept = min(person.replicas, limits.max_replicas)
    return kept, f"{person.describe(limits.scale_down_delay_seconds)}; the load alone: {why}"


@dataclass(frozen=True)
class Decision:
    replicas: int
    explanation: Explanation
    state: State
    hold: Hold | None = None  # a person's scale kept as a floor, when one is
    demand_replicas: int = 0  # what the load asks for, before minReplicas and maxReplicas bound it

    @property
    def reason(self) -> str:
        return str(self.explanation)


def replicas_short(limits: Limits, decision: Decision) -> int:
    """Replicas the load asks for beyond maxReplicas while the endpoint is held at it (0 when it is not):
    its callers wait longer than the target, and only a higher maxReplicas (and the GPUs) serves them."""
    if decision.replicas < limits.max_replicas:
        return 0  # still on its way up (paced, or a step at a time)
    return max(0, decision.demand_replicas - limits.max_replicas)


# What a restored state may hold (its ConfigMap is editable by whoever may edit ConfigMaps in the
# namespace): learned figures within these factors of their priors, the rest relearned from the prior.
RESTORED_CAPACITY_RANGE = 100.0
RESTORED_WORK_PER_REQUEST_RANGE = 1000.0
RESTORED_COLD_START_RANGE = 10.0  # of the catalog's startup budget
COLD_START_PATHS = frozenset({coldstart.COLD_DOWNLOAD, coldstart.SHARED_CACHE, coldstart.LOCAL_CACHE})


def restored_within(state: State, limits: Limits) -> State:
    """A state read back from its ConfigMap, kept to what a run could have learned: a learned figure out
    of range (not finite, not positive, or far from its prior) falls back to the prior, the level into
    its range, and the profile's bins to replicas' worth of demand within maxReplicas. Without this a
    hand-edited state could crash every tick (infinite bins) or hold maxReplicas with no load."""

    def within(value: float | None, prior: float, factor: float) -> float | None:
        if value is None or not math.isfinite(value) or not prior / factor <= value <= prior * factor:
            return None
        return value

    budget = limits.cold_start_seconds
    cold_starts = {
        path: seconds
        for path, seconds in state.cold_starts.items()
        if path in COLD_START_PATHS and within(seconds, budget, RESTORED_COLD_START_RANGE) is not None
    }
    ceiling = float(max(limits.max_replicas, 1))

    def bin_value(value: float | None) -> float | None:
        return None if value is None or not math.isfinite(value) else min(max(value, 0.0), ceiling)

    days = tuple(tuple(bin_value(v) for v in day) for day in state.days)
    return replace(
        state,
        capacity=within(state.capacity, limits.prior_work_per_second, RESTORED_CAPACITY_RANGE),
        work_per_request=within(state.work_per_request, PRIOR_WORK_PER_REQUEST, RESTORED_WORK_PER_REQUEST_RANGE),
        cold_start=within(state.cold_start, budget, RESTORED_COLD_START_RANGE),
        cold_starts=cold_starts,
        level=min(max(state.level, LEVEL_RANGE[0]), LEVEL_RANGE[1]) if math.isfinite(state.level) else 1.0,
        days=days,
        profile=tuple(_profile_bin(days, i) for i in range(PROFILE_BINS)) if days else EMPTY_BINS,
        bin_total=state.bin_total if math.isfinite(state.bin_total) and state.bin_total >= 0 else 0.0,
        bin_seconds=state.bin_seconds if math.isfinite(state.bin_seconds) and state.bin_seconds >= 0 else 0.0,
    )


def _ewma(old: float, new: float, dt: float, window: float) -> float:
    return new if dt <= 0 else old + (new - old) * (1.0 - math.exp(-dt / window))


def _profile_at(profile: Bins, at: float) -> float | None:
    """Demand the profile expects at this time of day: the mean of the known bins around it."""
    index = int(at // PROFILE_BIN_SECONDS)
    total = count = 0.0
    for offset in (-1, 0, 1):
        value = profile[(index + offset) % PROFILE_BINS]
        if value is not None:
            total += value
            count += 1
    return total / count if count else None


def _profile_max(profile: Bins, start: float, end: float) -> float | None:
    """The highest demand the profile expects from `start` to `end` (epoch seconds)."""
    best: float | None = None
    at = start
    while True:
        value = _profile_at(profile, at)
        if value is not None and (best is None or value > best):
            best = value
        if at >= end:
            return best
        at = min(end, at + PROFILE_BIN_SECONDS)


def _fold_profile(state: State, demand: float, now: float, dt: float) -> dict[str, Any]:
    """Add this interval's demand to the current 5-minute bin; file a finished bin under its day."""
    start = now - now % PROFILE_BIN_SECONDS
    if state.bin_start == start:
        return {"bin_total": state.bin_total + demand * dt, "bin_seconds": state.bin_seconds + dt}
    changes: dict[str, Any] = {"bin_start": start, "bin_total": demand * dt, "bin_seconds": dt}
    if state.bin_start is None or state.bin_seconds < PROFILE_BIN_SECONDS / 2:
        return changes
    day, index = divmod(int(state.bin_start // PROFILE_BIN_SECONDS), PROFILE_BINS)
    days = list(state.days)
    if state.day != day or not days:
        days = [*days, EMPTY_BINS][-PROFILE_DAYS:]
    row = days[-1]
    days[-1] = (*row[:index], state.bin_total / state.bin_seconds, *row[index + 1 :])
    profile = state.profile
    changes.update(
        days=tuple(days),
        day=day,
        profile=(*profile[:index], _profile_bin(days, index), *profile[index + 1 :]),
    )
    return changes


def _ceil(value: float) -> int:
    """Replicas for this much demand; a twentieth of a replica over does not buy another."""
    return math.ceil(value - 0.05)


@dataclass(frozen=True)
class _Learned:
    """What both policies learn every decision: a saturated replica's throughput, the work of a request,
    and how long a replica takes to load (per cold-start path)."""

    capacity: float
    work_per_request: float
    counters: dict[str, tuple[float, float, float]]
    cold_start: float  # for the path a replica started now takes
    overall: float  # over every path
    cold_starts: dict[str, float]
    path: str
    loading_since: list[float]

    def fields(self) -> dict[str, Any]:
        return {
            "capacity": self.capacity,
            "work_per_request": self.work_per_request,
            "cold_start": self.overall,
            "cold_starts": self.cold_starts,
            "counters": self.counters,
        }


def _learn(limits: Limits, seen: Observation, state: State, now: float, dt: float) -> _Learned:
    first = state.updated_at is None
    # -- learn: throughput of saturated replicas, work per request, load time ---------------------
    capacity = state.capacity or limits.prior_work_per_second
    work_per_request = state.work_per_request or PRIOR_WORK_PER_REQUEST
    counters: dict[str, tuple[float, float, float]] = {}
    saturated_rates: list[float] = []
    other_rates: list[float] = []
    work_done = finished_done = 0.0
    for pod in seen.pods:
        if pod.prompt_tokens is None or pod.generation_tokens is None:
            continue
        counts = (pod.prompt_tokens, pod.generation_tokens, pod.finished or 0.0)
        counters[pod.name] = counts
        before = state.counters.get(pod.name)
        if before is None or dt <= 0 or counts[0] < before[0] or counts[1] < before[1] or counts[2] < before[2]:
            continue  # a new pod, or its counters restarted
        work = (counts[0] - before[0]) * PREFILL_WORK_WEIGHT + counts[1] - before[1]
        work_done += work
        finished_done += counts[2] - before[2]
        full = pod.waiting > 0 or (pod.kv_cache_usage or 0.0) >= SATURATED_KV or pod.running >= limits.max_num_seqs
        (saturated_rates if full else other_rates).append(work / dt)
    if saturated_rates:
        capacity = _ewma(capacity, sum(saturated_rates) / len(saturated_rates), dt, CAPACITY_WINDOW_SECONDS)
    elif other_rates and max(other_rates) > capacity:
        capacity = _ewma(capacity, max(other_rates), dt, CAPACITY_WINDOW_SECONDS)
    if finished_done >= 1:
        work_per_request = _ewma(work_per_request, work_done / finished_done, dt, CAPACITY_WINDOW_SECONDS)

    # A cold start per path: a replica reading a staged cache is ready in a fraction of a cold
    # download's time, and planning with one blended number over- or under-provisions both.
    overall = state.cold_start or limits.cold_start_seconds
    path = seen.start_path
    cold_starts = dict(state.cold_starts)
    cold_start = cold_starts.get(path, limits.cold_start_seconds) if path else overall
    loading_since = list(state.loading_since)
    if seen.ready > state.ready and loading_since and not first:
        for _ in range(min(seen.ready - state.ready, len(loading_since))):
            took = now - loading_since.pop(0)
            if 0 < took <= 3 * limits.cold_start_seconds:
                overall += (took - overall) * COLD_START_WEIGHT
                cold_start += (took - cold_start) * COLD_START_WEIGHT
                if path:
                    cold_starts[path] = cold_start
    del loading_since[seen.loading :]  # loading pods removed: the newest go first
    loading_since += [now] * (seen.loading - len(loading_since))  # asked for by someone else: just started

    return _Learned(capacity, work_per_request, counters, cold_start, overall, cold_starts, path, loading_since)


def decide(limits: Limits, seen: Observation, state: State, now: float) -> Decision:
    """The endpoint's replicas now, by the policy its spec names (`Limits.policy`)."""
    if limits.policy == REQUESTS_POLICY:
        return _decide_requests(limits, seen, state, now)
    return _decide_workload(limits, seen, state, now)


def _decide_workload(limits: Limits, seen: Observation, state: State, now: float) -> Decision:
    current = seen.replicas
    first = state.updated_at is None
    dt = 0.0 if state.updated_at is None else max(0.0, now - state.updated_at)
    rho = min(max(limits.target_utilization, 0.05), 1.0)
    learned = _learn(limits, seen, state, now, dt)
    capacity, work_per_request, cold_start = learned.capacity, learned.work_per_request, learned.cold_start
    path, loading_since = learned.path, learned.loading_since

    # -- signal: replicas' worth of work in flight, and waiting ------------------------------------
    # A ready replica that did not answer adds no demand: unknown is not busy (a failed scrape of one
    # replica must not triple the GPUs). It still holds every scale-down (below).
    busy = 0.0
    for pod in seen.pods:
        busy += min(1.0, max(pod.kv_cache_usage or 0.0, pod.running / limits.max_num_seqs))
    if seen.gateway is not None:
        busy *= seen.gateway.interactive_share  # deferrable work fills idle capacity: it is no demand
    queued_work = seen.engine_waiting * work_per_request
    if seen.gateway is not None:
        queued_work += seen.gateway.queued_audio_seconds * WORK_PER_AUDIO_SECOND
    queue = queued_work / capacity  # replica-seconds
    queue_since = (state.queue_since if state.queue_since is not None else now) if queue > 0 else None
    if first:
        growth, demand, base, demand_fast = 0.0, busy, busy, busy
    else:
        growth = _ewma(state.growth, (queue - state.queue) / max(dt, 1e-9), dt, STABLE_WINDOW_SECONDS)
        stable = max(STABLE_WINDOW_SECONDS, STABLE_SHARE_OF_COLD_START * cold_start)
        stable = min(stable, max(limits.scale_down_delay_seconds, PANIC_WINDOW_SECONDS))
        demand = _ewma(state.demand, busy, dt, stable)
        base = _ewma(state.base, busy, dt, cold_start)
        demand_fast = _ewma(state.demand_fast, busy, dt, PANIC_WINDOW_SECONDS)

    # A surge counts as it lasts: in full once it has lasted a cold start.
    surging = demand > base * (1 + SURGE_MARGIN) and demand - base > 0.1
    surge_since = (state.surge_since if state.surge_since is not None else now) if surging else None
    weight = 0.0 if surge_since is None else min(1.0, (now - surge_since) / cold_start)
    counted = base + weight * max(0.0, demand - base)

    # -- forecast: the daily profile, scaled by how today compares with it ------------------------
    changes = _fold_profile(state, counted, now, dt)
    profile = changes.get("profile", state.profile)
    level = state.level
    expected_now = _profile_at(profile, now)
    if expected_now is not None and expected_now >= MIN_PROFILE_DEMAND and not first:
        ratio = min(max(base / expected_now, LEVEL_RANGE[0]), LEVEL_RANGE[1])
        level = _ewma(level, ratio, dt, LEVEL_RISE_WINDOW_SECONDS if ratio > level else LEVEL_WINDOW_SECONDS)
    ahead = _profile_at(profile, now + cold_start)
    floor = 0 if ahead is None else _ceil(level * ahead / rho)

    # -- backlog: count it only if it would outlive a cold start ---------------------------------
    # In one cold start the queue will have grown (for as long as it has been growing, at most a
    # cold start) or drained at its recent rate, and the loading replicas will have worked on it.
    lasting = cold_start if queue_since is None or growth <= 0 else min(cold_start, now - queue_since)
    arriving = sum(max(0.0, now - started) for started in loading_since)  # replica-s within one cold start
    residual = queue + growth * lasting - arriving if queue > 0 else 0.0
    backlog = max(0.0, residual) / cold_start
    needed = counted / rho
    up = max(_ceil(needed + backlog), floor)

    # -- panic: a surge the smoothing would meet too late ----------------------------------------
    panic = ""
    if residual > 0 and demand_fast / rho >= PANIC_RATIO * max(current, 1):
        needed = max(needed, demand_fast / rho)
        up = max(up, _ceil(needed + backlog))
        panic = "short-window demand asks for at least twice the replicas"
    tolerated = limits.target_queue_depth * max(seen.ready, 1)
    if seen.waiting > tolerated and residual > 0:
        # Replicas still loading count as taking a full batch plus the tolerated queue each.
        per_replica = limits.max_num_seqs + limits.target_queue_depth
        in_flight = seen.waiting + sum(p.running for p in seen.pods)
        if not seen.loading or _ceil(in_flight / per_replica) > current:
            step = min(limits.max_scale_up_step, _ceil((seen.waiting - tolerated) / limits.target_queue_depth))
            up = max(up, current + max(step, 1))
            panic = panic or f"queue {seen.waiting:g} waiting, more than {tolerated} tolerated by {seen.ready} ready"
    panic_until = now + min(STABLE_WINDOW_SECONDS, limits.scale_down_delay_seconds) if panic else state.panic_until

    person, hold_fields = _hold(limits, seen, state, now)

    def decision(replicas: int, why: str, **more: Any) -> Decision:
        replicas, why = _held(limits, person, replicas, why)
        explanation = Explanation(
            why=why,
            busy=busy,
            waiting=seen.waiting,
            queued_seconds=queue,
            demand=counted,
            capacity=capacity,
            cold_start=cold_start,
            start_path=path,
            needed=needed,
            backlog=backlog,
            floor=floor,
            target=replicas,
        )
        fields: dict[str, Any] = {
            "updated_at": now,
            **learned.fields(),
            "demand": demand,
            "base": base,
            "demand_fast": demand_fast,
            "surge_since": surge_since,
            "queue": queue,
            "queue_since": queue_since,
            "growth": growth,
            "level": level,
            "loading_since": (*loading_since, *(now,) * max(0, replicas - current)),
            "ready": seen.ready,
            "panic_until": panic_until,
            **changes,
            **hold_fields,
            **more,
        }
        return Decision(replicas, explanation, replace(state, **fields), person, up)

    low, high = limits.min_replicas, limits.max_replicas
    if current < low or current > high:
        return decision(min(max(current, low), high), f"replicas {current} outside [{low}, {high}]")

    # -- the reserved pool: kept up while deferrable work waits, never beyond it for that work -------
    gateway = seen.gateway
    reserved = _reserved_kept(limits, gateway, high)
    if reserved > current and up <= current:
        why = f"scale up: deferrable work waits: the reserved pool's {reserved} replicas kept up"
        return decision(reserved, why, low_since=None)

    # -- zero and back -----------------------------------------------------------------------------
    if current == 0:
        if gateway is not None and gateway.queued_requests > 0:
            return decision(min(high, max(1, up)), "scale up: request held at zero replicas", low_since=None)
        if floor > 0 and (level * (ahead or 0.0)) > IDLE_DEMAND:
            return decision(min(high, floor), "scale up: the profile expects load within a cold start")
        return decision(0, "at zero replicas, no request held")
    after = limits.scale_to_zero_after_seconds
    if after is not None and low == 0 and gateway is not None and not seen.loading:
        idle = gateway.seconds_since_last_request
        expected = _profile_max(profile, now, now + cold_start)
        quiet = busy == 0 and seen.waiting == 0 and gateway.in_flight_audio_seconds == 0
        quiet = quiet and not gateway.deferrable_pending
        if quiet and idle is not None and idle >= after and level * (expected or 0.0) <= IDLE_DEMAND:
            return decision(0, f"idle for {idle:.0f}s: scale to zero", low_since=None)

    # -- up ----------------------------------------------------------------------------------------
    if up > current:
        if current >= high:
            return decision(current, "demand above maxReplicas", low_since=None)
        if panic:
            return decision(min(high, up), f"scale up, panic: {panic}", low_since=None)
        if floor == up and floor > _ceil(needed + backlog):
            why = "the profile expects more one cold start ahead"
        elif _ceil(needed) == up:
            why = "demand above target"
        else:
            why = "queue outlives a cold start"
        step = min(limits.max_scale_up_step, up - current)
        return decision(max(reserved, min(high, current + step)), f"scale up: {why}", low_since=None)

    # -- down: slow, drain-aware, never below the profile over a cold start and the node retention --
    expected_max = _profile_max(profile, now, now + cold_start + limits.node_retention_seconds)
    hold = 0 if expected_max is None else _ceil(level * expected_max / rho)
    down = max(_ceil(needed + backlog), hold, low, 1, reserved)  # only the idle rule above goes to zero
    if down >= current:
        held = hold >= current > max(_ceil(needed + backlog), low, 1)
        why = "the profile expects the load back" if held else "load within target"
        if reserved >= current > max(_ceil(needed + backlog), hold, low, 1):
            why = f"deferrable work waits: the reserved pool's {reserved} replicas kept up"
        return decision(current, why, low_since=None)
    if seen.missing:
        return decision(current, f"metrics missing from {seen.missing} replica(s): not scaling down", low_since=None)
    if panic_until is not None and now < panic_until:
        return decision(current, "panic window: not scaling down", low_since=None)
    low_since = state.low_since if state.low_since is not None else now
    waited = now - low_since
    if seen.loading:
        # Replicas still loading are kept until ready: cancelling them when the demand dipped saved 0.3-1.7 %
        # of GPU-hours in the simulation at a p95 wait no better (bench/policy_sim.py, README). Only
        # a load overdue by far (no GPU for it, or a start that keeps failing) is cancelled.
        oldest = now - loading_since[0] if loading_since else 0.0
        if oldest <= OVERDUE_COLD_STARTS * cold_start:
            kept = f"{seen.loading} loading replica(s) kept until ready"
            return decision(current, f"low load for {waited:.0f}s: {kept}", low_since=low_since)
        delay = min(CANCEL_DELAY_SECONDS, limits.scale_down_delay_seconds)
        if waited < delay:
            return decision(current, f"loading replicas unneeded for {waited:.0f}s of {delay:g}s", low_since=low_since)
        keep = max(down, seen.ready)
        why = f"low load for {waited:.0f}s: cancel {current - keep} loading replica(s), overdue ({oldest:.0f}s)"
        return decision(keep, why, low_since=None)
    if waited < limits.scale_down_delay_seconds:
        delay = limits.scale_down_delay_seconds
        return decision(current, f"low load for {waited:.0f}s of {delay:g}s", low_since=low_since)
    gap = min(SCALE_DOWN_STEP_SECONDS, limits.scale_down_delay_seconds)
    if state.last_scale_down is not None and now - state.last_scale_down < gap:
        return decision(current, f"low load for {waited:.0f}s, next step down soon", low_since=low_since)
    return decision(current - 1, f"low load for {waited:.0f}s", low_since=low_since, last_scale_down=now)


def _reserved_kept(limits: Limits, gateway: GatewaySample | None, high: int) -> int:
    """The reserved pool's replicas kept up while the gateway has deferrable work waiting or running (within
    maxReplicas); 0 when it has none."""
    if gateway is not None and gateway.deferrable_pending:
        return min(limits.reserved_replicas, high)
    return 0


def _decide_requests(limits: Limits, seen: Observation, state: State, now: float) -> Decision:
    """The requests policy: requests in flight per replica held at `target_active_requests`, with HPA's
    algorithm (module docstring), and the operator's own: scale to and from zero at the gateway, a
    person's scale kept as a floor, the reserved pool kept up for deferrable work, loading replicas kept
    until ready, no scale-down while a ready replica's metrics are missing."""
    current = seen.replicas
    dt = 0.0 if state.updated_at is None else max(0.0, now - state.updated_at)
    learned = _learn(limits, seen, state, now, dt)
    gateway = seen.gateway
    per_replica = max(1.0, min(limits.target_active_requests, float(limits.max_num_seqs)))
    # Deferrable work fills idle capacity: it is no demand. vLLM's counts do not tell the lanes apart,
    # so the gateway's deferrable requests in flight are taken off them.
    active = sum(p.running + p.waiting for p in seen.pods)
    if gateway is not None:
        active = max(0.0, active - gateway.deferrable_in_flight_requests) + gateway.queued_requests
    needed = active / per_replica
    recommended = current
    if abs(needed / max(current, 1) - 1) > REQUESTS_TOLERANCE:
        recommended = math.ceil(needed)
    level = active if state.updated_at is None else _ewma(state.active_level, active, dt, ACTIVE_LEVEL_WINDOW_SECONDS)
    waiting = seen.engine_waiting > 0 or (gateway is not None and gateway.queued_requests > 0)
    absorbed = recommended > current and not waiting and 1 <= current <= SMALL_FLEET_REPLICAS
    if absorbed:
        by_level = level / per_replica
        recommended = math.ceil(by_level) if by_level / current - 1 > REQUESTS_TOLERANCE else current
    low, high = limits.min_replicas, limits.max_replicas
    wanted = recommended
    recommended = min(max(recommended, low), high)
    reserved = _reserved_kept(limits, gateway, high)
    # The scale-down window. None yet (a restarted operator, or one switched from the workload policy):
    # it starts at the replicas there are, so nothing scales down before a window has been seen. The
    # reserved pool kept up for deferrable work enters it too: when that work ends, the pool's replicas go
    # only after scaleDownDelaySeconds, as the workload policy's do. Released at once, they went just as
    # the morning's interactive load arrived: the interactive count, spread over the whole pool, had
    # recommended fewer replicas than it needs on fewer (bench/policy_sim.py, README).
    kept = max(recommended, reserved)
    window = [r for r in state.recommendations if r[0] > now - limits.scale_down_delay_seconds]
    if not state.recommendations:
        window = [(now, current)]
    while window and window[-1][1] <= kept:
        window.pop()
    window.append((now, kept))
    highest = window[0][1]
    person, hold_fields = _hold(limits, seen, state, now)

    def decision(replicas: int, why: str, **more: Any) -> Decision:
        replicas, why = _held(limits, person, replicas, why)
        explanation = Explanation(
            why=why,
            waiting=seen.waiting,
            capacity=learned.capacity,
            cold_start=learned.cold_start,
            start_path=learned.path,
            needed=needed,
            target=replicas,
            active=active,
            per_replica=per_replica,
            window_highest=highest,
        )
        fields: dict[str, Any] = {
            "updated_at": now,
            **learned.fields(),
            "loading_since": (*learned.loading_since, *(now,) * max(0, replicas - current)),
            "ready": seen.ready,
            "recommendations": tuple(window),
            "active_level": level,
            **hold_fields,
            **more,
        }
        return Decision(replicas, explanation, replace(state, **fields), person, wanted)

    if current < low or current > high:
        return decision(min(max(current, low), high), f"replicas {current} outside [{low}, {high}]")

    if reserved > current and recommended <= current:
        return decision(reserved, f"scale up: deferrable work waits: the reserved pool's {reserved} replicas kept up")

    # -- zero and back -----------------------------------------------------------------------------
    if current == 0:
        if gateway is not None and gateway.queued_requests > 0:
            return decision(
                min(high, max(1, recommended)), "scale up: request held at zero replicas", last_scale_up=now
            )
        return decision(0, "at zero replicas, no request held")
    after = limits.scale_to_zero_after_seconds
    if after is not None and low == 0 and gateway is not None and not seen.loading:
        idle = gateway.seconds_since_last_request
        quiet = active == 0 and gateway.in_flight_audio_seconds == 0 and not gateway.deferrable_pending
        if quiet and idle is not None and idle >= after:
            return decision(0, f"idle for {idle:.0f}s: scale to zero")

    # -- up: at most max(4, the replicas there are) every 15 s -------------------------------------
    if recommended > current:
        if state.last_scale_up is not None and now - state.last_scale_up < SCALE_UP_PERIOD_SECONDS:
            return decision(current, f"scale up paced: the last one {now - state.last_scale_up:.0f}s ago")
        replicas = min(recommended, current + max(SCALE_UP_MIN_STEP, current))
        return decision(max(reserved, replicas), "scale up: requests in flight above target", last_scale_up=now)

    # -- down: to the highest recommendation of the window, never while loading or unmeasured --------
    down = max(highest, low, 1, reserved)  # only the idle rule above goes to zero
    if down >= current:
        why = "load within target"
        if absorbed:
            why = (
                f"in flight above target with nothing waiting: {current} replica(s) absorb it "
                f"(averaged over {ACTIVE_LEVEL_WINDOW_SECONDS:g}s: {level:.1f} in flight)"
            )
        elif reserved >= current > max(recommended, low, 1):
            why = f"deferrable work waits: the reserved pool's {reserved} replicas kept up"
        elif highest >= current > recommended:
            delay = limits.scale_down_delay_seconds
            why = f"more replicas recommended, or kept for deferrable work, within scaleDownDelaySeconds ({delay:g}s)"
        return decision(current, why)
    if seen.missing:
        return decision(current, f"metrics missing from {seen.missing} replica(s): not scaling down")
    if seen.loading:
        oldest = now - learned.loading_since[0] if learned.loading_since else 0.0
        if oldest <= OVERDUE_COLD_STARTS * learned.cold_start:
            return decision(current, f"{seen.loading} loading replica(s) kept until ready")
        keep = max(down, seen.ready)
        return decision(keep, f"cancel {current - keep} loading replica(s), overdue ({oldest:.0f}s)")
    return decision(down, f"scale down: the highest recommendation of the last {limits.scale_down_delay_seconds:g}s")
