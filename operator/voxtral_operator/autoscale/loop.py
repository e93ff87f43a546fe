"""The autoscaler's edges: gather (scrape ready pods' /metrics) and act (the scale subresource, status).

Every interval, all endpoints with operator-mode autoscaling are scraped concurrently with short
timeouts, so one hung pod costs one timeout, not a stalled loop. The decision is
`policy.decide`; the result goes to `spec.replicas` through the endpoint's scale subresource, the
same field `kubectl scale`, HPA or KEDA would write, and the reconciler carries it to the Deployment.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, TypeVar

import aiohttp
from prometheus_client import Counter, Gauge, Histogram

from voxtral_operator import coldstart, logs, render
from voxtral_operator.api import catalog, models, resolve
from voxtral_operator.api.models import AutoscalingMode, VoxtralEndpointSpec
from voxtral_operator.autoscale.policy import (
    Decision,
    GatewaySample,
    Hold,
    Limits,
    ManualScale,
    Observation,
    PodSample,
    State,
    decide,
    prior_work_per_second,
    replicas_short,
    restored_within,
)
from voxtral_operator.autoscale.scrape import (
    MAX_PROBE_BODY_BYTES,
    GatewayPage,
    QueueSample,
    ReadLimitExceeded,
    get_bounded,
    parse_gateway_metrics,
    parse_queue_metrics,
    read_page,
)
from voxtral_operator.config import OperatorConfig
from voxtral_operator.gateway.lanes import DEFERRABLE, INTERACTIVE
from voxtral_operator.k8s import resources
from voxtral_operator.k8s.client import ApiClient, ApiError, NotFound
from voxtral_operator.reconcile import Key, utc_now

logger = logging.getLogger(__name__)
Page = TypeVar("Page")

JSON = dict[str, Any]
ENDPOINTS_AT_ONCE = 64  # endpoints a tick works on at once (as many as its scrapes in flight)

SCRAPE_SECONDS = Histogram(
    "voxtral_operator_scrape_duration_seconds",
    "Time to scrape one vLLM pod's /metrics",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
SCRAPE_ERRORS = Counter("voxtral_operator_scrape_errors_total", "vLLM pod scrapes that failed")
DECISIONS = Counter("voxtral_operator_scale_decisions_total", "Scale decisions written, by direction", ["direction"])
REPLICAS_SHORT = Gauge(
    "voxtral_operator_replicas_short",
    "Replicas the load asks for beyond maxReplicas while an endpoint is held at it (0: it is not)",
    ["namespace", "endpoint"],
)
SCALING_LIMITED = "ScalingLimited"  # the Event's reason, HPA's word for it
# A load that stays at maxReplicas or above makes one ScalingLimited Event, not one each time it dips:
# the episode ends once the load has fit within maxReplicas this long.
SCALING_LIMITED_CLEAR_SECONDS = 300.0
# The autoscaler's status fields are its own, under a field manager of their own.
AUTOSCALER_FIELD_MANAGER = "voxtral-operator-autoscaler"
# queueDepth changes with every request; status carries it at most this often unless a decision changes.
QUEUE_DEPTH_STATUS_INTERVAL = 10.0
NOT_ANSWERING = "NotAnswering"  # the Serving reason of a check that got no answer, or a wrong one
# A check that got no answer is told only once this many in a row got none, like a readiness probe's
# failureThreshold: one slow answer on a busy node is not an outage, and Serving (and Degraded)
# flapping on it would rewrite status twice and alert for nothing. A wrong key answer is told at once.
SERVING_FAILURES_TO_REPORT = 3


class EndpointSource(Protocol):
    def endpoint_keys(self) -> list[Key]: ...

    def endpoint(self, key: Key) -> JSON | None: ...

    def pods(self, key: Key) -> list[JSON]: ...

    def children(self, key: Key) -> dict[tuple[str, str], JSON]: ...

    def gateway_pods(self, key: Key) -> list[JSON]: ...


# What the policy learned slowly and a restart should not forget; the rest it relearns in seconds.
SAVED_FIELDS = (
    "capacity",
    "workPerRequest",
    "coldStart",
    "coldStarts",
    "level",
    "days",
    "day",
    "binStart",
    "binTotal",
    "binSeconds",
)
STATE_KEY = "state.json"


def state_config_map_name(name: str) -> str:
    return f"{name}-autoscaler"


EventPoster = Callable[[JSON, str, str, str], None]
ServingSink = Callable[[Key, tuple[bool, str, str]], None]


def policy_limits(spec: VoxtralEndpointSpec, config: OperatorConfig, start_path: str = "") -> Limits:
    """The policy's bounds from the spec, and its priors from the catalog. `start_path` is the cold-start
    path the next replica takes (coldstart.py; "" when unknown: the hub's, the slowest), which the default
    targetActiveRequests follows."""
    model = resolve.model_profile(spec)
    gpu = resolve.gpu_catalog(config)[spec.gpu.type]
    engine = spec.engine
    fitting = (
        tp
        for tp in catalog.TENSOR_PARALLEL_SIZES
        if catalog.check_fit(model, gpu, tp, engine.gpu_memory_utilization, engine.max_model_len).fits
    )
    tensor_parallel_size: int = spec.tensor_parallel_size or next(fitting, 1)  # as the renderer picks it
    max_num_seqs = engine.max_num_seqs or catalog.DEFAULT_MAX_NUM_SEQS
    if model.realtime and engine.max_num_seqs is None:
        # A realtime replica runs one sequence per session, as many as the renderer gave it.
        max_num_seqs = max(1, resolve.sessions_per_replica(spec, model, gpu, tensor_parallel_size))
    target_active_requests = spec.autoscaling.target_active_requests
    if target_active_requests is None:
        target_active_requests = models.DEFAULT_TARGET_ACTIVE_REQUESTS
        if start_path == coldstart.SHARED_CACHE:
            target_active_requests = models.STAGED_TARGET_ACTIVE_REQUESTS
        if model.realtime:
            target_active_requests = max(1, math.floor(models.REALTIME_TARGET_SESSION_SHARE * max_num_seqs))
    return Limits(
        min_replicas=spec.min_replicas,
        max_replicas=spec.max_replicas,
        policy=str(spec.autoscaling.policy),
        target_active_requests=float(target_active_requests),
        max_num_seqs=max_num_seqs,
        prior_work_per_second=prior_work_per_second(
            model.weights_bytes, spec.gpu.type, tensor_parallel_size, max_num_seqs
        ),
        cold_start_seconds=float(model.startup_budget_seconds),
        scale_down_delay_seconds=float(spec.autoscaling.scale_down_delay),
        max_scale_up_step=spec.autoscaling.max_scale_up_step,
        target_queue_depth=spec.autoscaling.target_queue_depth,
        scale_to_zero_after_seconds=spec.autoscaling.scale_to_zero_after_seconds,
        reserved_replicas=spec.autoscaling.reserved_replicas,
    )


def lanes_status(pages: list[GatewayPage]) -> JSON:
    """status.lanes: each lane's queue, and what the deferrable lane has on replicas, summed over the
    gateway pods. The interactive lane's in-flight count changes with every request: in status it would
    be a write at every tick of steady traffic, so it stays in the gateway's metrics."""
    status: JSON = {}
    for lane in (INTERACTIVE, DEFERRABLE):
        seen = [p.lanes[lane] for p in pages if lane in p.lanes]
        status[lane] = {
            "queuedRequests": round(sum(s.queued for s in seen)),
            "queuedAudioSeconds": round(sum(s.queued_audio_seconds for s in seen)),
        }
        if lane == DEFERRABLE:
            status[lane]["inFlightRequests"] = round(sum(s.in_flight for s in seen))
    return status


def gateway_sample(pages: list[GatewayPage], seconds_since_last_request: float | None) -> GatewaySample:
    """What the policy reads of the gateway pods' pages, summed: the interactive lane's queue (the whole
    queue from a gateway without lanes) and the deferrable lane's apart."""
    queued = queued_audio = deferrable_queued = deferrable_audio = deferrable_in_flight = 0.0
    for page in pages:
        deferrable = page.lanes.get(DEFERRABLE)
        # Everything held but the deferrable lane: the interactive lane's queue and realtime
        # handshakes held at zero replicas (counted in the total, in no lane).
        queued += page.queued - (deferrable.queued if deferrable else 0.0)
        queued_audio += page.queued_audio_seconds - (deferrable.queued_audio_seconds if deferrable else 0.0)
        if deferrable is not None:
            deferrable_queued += deferrable.queued
            deferrable_audio += deferrable.in_flight_audio_seconds
            deferrable_in_flight += deferrable.in_flight
    return GatewaySample(
        queued_requests=queued,
        queued_audio_seconds=queued_audio,
        in_flight_audio_seconds=sum(p.in_flight_audio_seconds for p in pages),
        seconds_since_last_request=seconds_since_last_request,
        deferrable_queued_requests=deferrable_queued,
        deferrable_in_flight_audio_seconds=deferrable_audio,
        deferrable_in_flight_requests=deferrable_in_flight,
    )


@dataclass(frozen=True)
class ReplicasWriter:
    manager: str  # the field manager, as the writer named itself
    subresource: str  # "scale" for `kubectl scale` (and the autoscaler), "" for the object itself
    at: float | None  # epoch seconds; a 1.34 server records no time for a write through /scale

    @property
    def shown(self) -> str:
        return f"{self.manager} (/{self.subresource})" if self.subresource else self.manager


def replicas_writer(endpoint: JSON) -> ReplicasWriter | None:
    """Who last wrote spec.replicas and when, from the API server's managedFields; None when nobody
    owns the field. A write through the scale subresource is recorded under the parent object."""
    found: ReplicasWriter | None = None
    for entry in (endpoint.get("metadata") or {}).get("managedFields") or []:
        fields = entry.get("fieldsV1") or {}
        if not isinstance(fields.get("f:spec"), dict) or "f:replicas" not in fields["f:spec"]:
            continue
        at = _epoch(entry.get("time"))
        if found is None or (at or 0.0) >= (found.at or 0.0):
            found = ReplicasWriter(
                str(entry.get("manager") or "an unnamed client"), str(entry.get("subresource") or ""), at
            )
    return found


@dataclass
class _EndpointState:
    policy: State = field(default_factory=State)  # the policy's memory; plain data (State.to_dict)
    last_status: JSON = field(default_factory=dict)
    last_status_time: float = 0.0
    # The gateways' answered-request counters per pod, and when any of them last moved.
    gateway_requests: dict[str, float] = field(default_factory=dict)
    last_request_at: float | None = None
    gateway_pages: list[GatewayPage] = field(default_factory=list)  # the last answers (status shows them)
    # What this autoscaler last wrote to spec.replicas (how a person's scale is told apart on a server
    # that keeps no managedFields), and the person's write last seen, with when it was first seen.
    written_replicas: int | None = None
    hold_resumed: bool = False  # a person's floor shown in status was taken up after a start
    person_write: tuple[tuple[int, str, float | None], float] | None = None
    restored: bool = False  # the saved state was looked for
    saved_at: float | None = None  # when the learned state was last saved (or restored)
    saved: JSON = field(default_factory=dict)
    # NAME-autoscaler exists and is not this endpoint's: neither read nor written (looked at again when
    # a save is due, as it may be an earlier endpoint's of the same name, not yet garbage-collected).
    foreign_state: bool = False
    restored_unchecked: bool = False  # read back from the ConfigMap, not yet held to this endpoint's limits
    # The load held at maxReplicas: since when it has fit again (None while it does not), and whether
    # this episode's Event has been posted.
    limited: bool = False
    fits_since: float | None = None


def requests_moved(
    last: Mapping[str, float], answered: Mapping[str, float], present: set[str]
) -> tuple[bool, dict[str, float]]:
    """Whether inference went through the gateway pods since the last look, and the counts to compare
    with at the next: each pod that answered against its own last answer (a pod seen for the first time
    against 0). A pod that missed a look keeps its last count: a missed scrape is not traffic, or one
    gateway pod timing out now and then would keep an idle endpoint from ever scaling to zero. Pods
    gone are forgotten."""
    moved = any(last.get(name, 0.0) != count for name, count in answered.items())
    kept = {name: count for name, count in last.items() if name in present and name not in answered}
    return moved, kept | dict(answered)


def _state_owned_by(config_map: JSON, endpoint: JSON) -> bool:
    """The saved-state ConfigMap is this endpoint's: an owner reference to its uid (the one `_save` writes)."""
    uid = (endpoint.get("metadata") or {}).get("uid")
    references = (config_map.get("metadata") or {}).get("ownerReferences") or []
    return bool(uid) and any(reference.get("uid") == uid for reference in references)


@dataclass
class ServingDebounce:
    """What a Serving check's result makes the condition say: an answer at once, no answer only at the
    SERVING_FAILURES_TO_REPORT-th check in a row without one (None: say nothing new yet)."""

    unanswered: dict[Key, int] = field(default_factory=dict)

    def observe(self, key: Key, result: tuple[bool, str, str]) -> tuple[bool, str, str] | None:
        ok, reason, message = result
        if ok or reason != NOT_ANSWERING:
            self.unanswered.pop(key, None)
            return result
        count = self.unanswered[key] = self.unanswered.get(key, 0) + 1
        if count < SERVING_FAILURES_TO_REPORT:
            return None
        return ok, reason, f"{message} ({SERVING_FAILURES_TO_REPORT} checks in a row)"

    def forget(self, key: Key) -> None:
        self.unanswered.pop(key, None)


@dataclass
class Autoscaler:
    client: ApiClient
    config: OperatorConfig
    view: EndpointSource
    post_event: EventPoster
    is_active: Callable[[], Any] | None = None  # async () -> bool; None: always active
    serving_sink: ServingSink | None = None  # where Serving check results go (the reconciler)
    # Where the gateway pods' reports of missing Secrets go (the reconciler).
    secrets_sink: Callable[[Key, tuple[tuple[str, str], ...]], None] | None = None
    clock: Callable[[], float] = time.monotonic
    wall_clock: Callable[[], float] = time.time  # the policy's daily profile needs the time of day
    _last_serving_check: float = float("-inf")
    _states: dict[Key, _EndpointState] = field(default_factory=dict)
    _specs: dict[Key, tuple[str, VoxtralEndpointSpec | None]] = field(default_factory=dict)  # see _valid_spec
    _session: aiohttp.ClientSession | None = None
    _semaphore: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(64))
    # The endpoints the replicas_short gauge shows, so one it never showed costs nothing to forget.
    _shown_short: set[Key] = field(default_factory=set)
    _serving: ServingDebounce = field(default_factory=ServingDebounce)

    async def run_forever(self) -> None:
        timeout = aiohttp.ClientTimeout(total=self.config.scrape_timeout_seconds)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            self._session = session
            while True:
                started = self.clock()
                try:
                    if self.is_active is None or await self.is_active():
                        await self.tick()
                    else:
                        REPLICAS_SHORT.clear()  # a standby's last figures would outlive its turn
                        self._shown_short.clear()
                except Exception:  # the loop must outlive any one bad tick
                    logger.exception("autoscaler tick failed")
                elapsed = self.clock() - started
                await asyncio.sleep(max(0.0, self.config.scrape_interval_seconds - elapsed))

    async def tick(self) -> None:
        keys = self.view.endpoint_keys()
        await self._for_each(keys, self._one)
        interval = self.config.serving_check_seconds  # 0: never
        if self.serving_sink is not None and interval and self.clock() - self._last_serving_check >= interval:
            self._last_serving_check = self.clock()
            await self._for_each(keys, self._check_serving, self._check_gateway_secrets)
        for gone in set(self._states) - set(keys):
            del self._states[gone]
            self._forget_short(gone)
        for gone in set(self._serving.unanswered) - set(keys):
            self._serving.forget(gone)
        for gone in set(self._specs) - set(keys):
            del self._specs[gone]

    async def _for_each(self, keys: list[Key], *works: Callable[[Key], Awaitable[None]]) -> None:
        """Every work on every endpoint, by at most ENDPOINTS_AT_ONCE workers (each its own task, whose
        log lines name the endpoint it is on); one endpoint's failure is logged and the rest are done.
        A task for each endpoint at each tick, a thousand at once, made every step of a reconcile wait
        behind a thousand of the tick's steps in the event loop, and creating them cost a tenth of it."""
        pending = iter([(work, key) for work in works for key in keys])

        async def worker() -> None:
            for work, key in pending:
                logs.bind_endpoint(key)
                try:
                    await work(key)
                except Exception:
                    logger.exception("autoscaler: %s/%s failed this tick", *key)

        await asyncio.gather(*(worker() for _ in range(min(ENDPOINTS_AT_ONCE, len(keys) * len(works)))))

    def _start_path(self, key: Key, endpoint: JSON, spec: VoxtralEndpointSpec, any_ready: bool) -> str:
        """The cold-start path the next replica takes, so the policy plans with that path's learned time."""
        children = self.view.children(key).items()
        staged = any(kind == "Job" and coldstart.staging(name, child).staged for (kind, name), child in children)
        filled = any_ready or bool((endpoint.get("status") or {}).get("readyReplicas"))
        return coldstart.start_path(spec, staged=staged, cache_filled=filled)

    def _valid_spec(self, key: Key, given: JSON) -> VoxtralEndpointSpec | None:
        """The endpoint's spec validated, or None when it is not valid. Validated again only when it
        changes: every endpoint is looked at every tick, and validating a thousand specs a second
        took most of the operator's CPU."""
        known = self._specs.get(key)
        # Kept as compact JSON text, not a copy of the dict: a tenth of its memory.
        fingerprint = json.dumps(given, sort_keys=True, separators=(",", ":"))
        if known is not None and known[0] == fingerprint:
            return known[1]
        try:
            spec: VoxtralEndpointSpec | None = VoxtralEndpointSpec.model_validate(given)
        except ValueError:
            spec = None
        if spec is not None and spec.cross_field_problems():
            spec = None
        self._specs[key] = (fingerprint, spec)
        return spec

    async def _one(self, key: Key) -> None:
        endpoint = self.view.endpoint(key)
        if endpoint is None:
            return
        spec = self._valid_spec(key, endpoint.get("spec") or {})
        if spec is None or not spec.autoscaling.enabled:
            self._forget_short(key)
            return  # the reconciler reports invalid specs
        if spec.autoscaling.mode != AutoscalingMode.OPERATOR or spec.suspended:
            self._forget_short(key)
            return  # a suspended endpoint stays at zero whatever its gateway holds
        state = self._states.setdefault(key, _EndpointState())
        now = self.clock()
        if not state.restored:
            await self._restore(key, endpoint, state, now)
        ready = [p for p in self.view.pods(key) if p.get("ready") and p.get("ip") and not p.get("deleting")]
        if ready:
            samples, gateway = await asyncio.gather(
                asyncio.gather(*(self._scrape(p["ip"]) for p in ready)),
                self._gateway_sample(key, spec, state, now),
            )
        else:  # most endpoints at most ticks: no task to make
            samples, gateway = [], await self._gateway_sample(key, spec, state, now)
        start_path = self._start_path(key, endpoint, spec, bool(ready))
        seen = Observation(
            start_path=start_path,
            manual=self._manual_scale(endpoint, spec, state),
            gateway=gateway,
            replicas=spec.desired_replicas,
            ready=len(ready),
            pods=[
                PodSample(
                    name=str(pod.get("name") or pod["ip"]),
                    waiting=sample.waiting,
                    running=sample.running,
                    kv_cache_usage=sample.kv_cache_usage,
                    prompt_tokens=sample.prompt_tokens,
                    generation_tokens=sample.generation_tokens,
                    finished=sample.finished,
                )
                for pod, sample in zip(ready, samples, strict=True)
                if sample is not None
            ],
        )
        if not state.hold_resumed:
            state.hold_resumed = True
            delay = spec.autoscaling.scale_down_delay
            state.policy = resumed_hold(state.policy, seen.manual, endpoint, delay)
        limits = policy_limits(spec, self.config, start_path)
        if state.restored_unchecked:
            state.restored_unchecked = False
            state.policy = restored_within(state.policy, limits)
        decision = decide(limits, seen, state.policy, self.wall_clock())
        state.policy = decision.state
        self._note_ceiling(key, endpoint, state, decision, limits, now)
        await self._save(key, endpoint, state, now)
        namespace, name = key
        if decision.replicas == seen.replicas:
            logger.debug("%s/%s: keep %d replicas: %s", namespace, name, seen.replicas, decision.reason)
        else:
            await self.client.scale(resources.ENDPOINTS, namespace, name, decision.replicas, AUTOSCALER_FIELD_MANAGER)
            state.written_replicas = decision.replicas
            direction = "up" if decision.replicas > seen.replicas else "down"
            DECISIONS.labels(direction).inc()
            self.post_event(
                endpoint,
                "Normal",
                f"ScaledReplicas{direction.capitalize()}",
                f"replicas {seen.replicas} -> {decision.replicas}: {decision.reason}",
            )
            logs.log_scale_decision(key, seen.replicas, decision.replicas, decision.reason)
        await self._reflect(
            key,
            state,
            seen,
            decision.replicas,
            decision.reason,
            now,
            changed=decision.replicas != seen.replicas,
            hold=_hold_status(decision.hold, spec.autoscaling.scale_down_delay),
            cold_starts=decision.state.cold_starts,
        )

    def _note_ceiling(
        self,
        key: Key,
        endpoint: JSON,
        state: _EndpointState,
        decision: Decision,
        limits: Limits,
        now: float,
    ) -> None:
        """The load held at maxReplicas: the gauge at every tick, a Warning Event once an episode."""
        short = replicas_short(limits, decision)
        REPLICAS_SHORT.labels(*key).set(short)
        self._shown_short.add(key)
        if short:
            state.fits_since = None
            if not state.limited:
                state.limited = True
                message = (
                    f"the load asks for {decision.demand_replicas} replicas and maxReplicas is "
                    f"{limits.max_replicas}: requests wait longer than the target until maxReplicas is "
                    "raised (with the GPUs for it)"
                )
                self.post_event(endpoint, "Warning", SCALING_LIMITED, message)
                logger.warning("%s/%s: %s", *key, message)
        elif state.limited:
            state.fits_since = now if state.fits_since is None else state.fits_since
            if now - state.fits_since >= SCALING_LIMITED_CLEAR_SECONDS:
                state.limited, state.fits_since = False, None
                logger.info("%s/%s: the load fits within maxReplicas again", *key)

    def _forget_short(self, key: Key) -> None:
        """Not autoscaled by this operator now (gone, suspended, another mode): no gauge, and the episode
        over, so a load held at maxReplicas after a resume is told again."""
        state = self._states.get(key)
        if state is not None:
            state.limited, state.fits_since = False, None
        if key in self._shown_short:
            self._shown_short.discard(key)
            REPLICAS_SHORT.remove(*key)

    def _manual_scale(self, endpoint: JSON, spec: VoxtralEndpointSpec, state: _EndpointState) -> ManualScale | None:
        """spec.replicas when a person (anyone but this autoscaler) wrote it last: creation, apply, edit or
        `kubectl scale`. Read from managedFields where the server records who owns spec.replicas; else
        what differs from the autoscaler's own last write."""
        replicas = spec.replicas
        by: str | None = None
        written_at: float | None = None
        if replicas is None:
            pass  # nobody asked for a number: minReplicas is the autoscaler's to start from
        elif (writer := replicas_writer(endpoint)) is not None:
            if writer.manager != AUTOSCALER_FIELD_MANAGER:
                by, written_at = writer.shown, writer.at
        elif replicas != self._autoscaler_wrote(endpoint, state):
            # No owner recorded: a server without managedFields, or (a 1.34 server) writes through /scale to a
            # field nobody owned, which its scale handler records under no manager (an endpoint created without
            # spec.replicas keeps it unowned through every scale, the autoscaler's and `kubectl scale`'s).
            recorded = (endpoint.get("metadata") or {}).get("managedFields")
            by = "a client of /scale" if recorded else "a client other than the autoscaler"
        if replicas is None or by is None:
            state.person_write = None
            return None
        write = (replicas, by, written_at)
        if state.person_write is None or state.person_write[0] != write:
            # A write without a time dates from when it was first seen, or, after a restart, from the floor
            # the last autoscaler showed for it, so that floor ends when it would have.
            shown = (endpoint.get("status") or {}).get("scaleHold") or {}
            restarted = written_at is None and state.person_write is None and isinstance(shown, dict)
            if restarted and shown.get("replicas") == replicas and shown.get("setBy") == by[:128]:
                written_at = _epoch(shown.get("setAt"))
            state.person_write = (write, written_at if written_at is not None else self.wall_clock())
        return ManualScale(replicas, by, state.person_write[1])

    @staticmethod
    def _autoscaler_wrote(endpoint: JSON, state: _EndpointState) -> int | None:
        """The replicas this autoscaler last wrote: remembered since its start, else its last decision
        shown in status (a restarted operator does not take its predecessor's scale for a person's)."""
        if state.written_replicas is not None:
            return state.written_replicas
        shown = ((endpoint.get("status") or {}).get("lastScaleDecision") or {}).get("replicas")
        return shown if isinstance(shown, int) else None

    async def _reflect(
        self,
        key: Key,
        state: _EndpointState,
        seen: Observation,
        replicas: int,
        reason: str,
        now: float,
        *,
        changed: bool,
        hold: JSON | None,
        cold_starts: Mapping[str, float] | None = None,
    ) -> None:
        status: JSON = {"queueDepth": round(seen.waiting), "desiredReplicas": replicas}
        if cold_starts:
            # Whole seconds: the learned figure moves only when a replica becomes ready.
            status["coldStartSeconds"] = {path: round(seconds) for path, seconds in sorted(cold_starts.items())}
        if hold is not None:
            status["scaleHold"] = hold
        if seen.gateway is not None and state.gateway_pages:
            status["queuedAudioSeconds"] = round(sum(p.queued_audio_seconds for p in state.gateway_pages))
            status["lanes"] = lanes_status(state.gateway_pages)
        current = (self.view.endpoint(key) or {}).get("status") or {}
        if changed:
            status["lastScaleDecision"] = {
                "replicas": replicas,
                "reason": reason[:512],
                "time": utc_now(),
            }
        elif state.last_status.get("lastScaleDecision") or current.get("lastScaleDecision"):
            # Applied status keeps only what is sent: the last decision goes with every write.
            status["lastScaleDecision"] = state.last_status.get("lastScaleDecision") or current["lastScaleDecision"]
        hold_changed = status.get("scaleHold") != current.get("scaleHold")
        if all(current.get(k) == v for k, v in status.items()) and not hold_changed:
            return
        if not changed and status == state.last_status:
            return
        recent = now - state.last_status_time < QUEUE_DEPTH_STATUS_INTERVAL
        if not changed and not hold_changed and recent and state.last_status:
            return
        try:
            await self.client.apply_status(resources.ENDPOINTS, key[0], key[1], status, AUTOSCALER_FIELD_MANAGER)
        except NotFound:
            return  # deleted since this tick began
        state.last_status, state.last_status_time = status, now

    async def _check_serving(self, key: Key) -> None:
        """GET /v1/models through the Service, without a key: the operator never holds callers' keys.

        With auth configured, 401 is the right answer (vLLM is up and enforcing the key) and 200 is
        a misconfiguration; without auth, 200 is right.
        """
        endpoint = self.view.endpoint(key)
        service = self.view.children(key).get(("Service", key[1]))
        ready = ((endpoint or {}).get("status") or {}).get("readyReplicas") or 0
        cluster_ip = ((service or {}).get("spec") or {}).get("clusterIP")
        if endpoint is None or not ready or not cluster_ip or cluster_ip == "None" or self.serving_sink is None:
            self._serving.forget(key)  # checks without an answer count in a row while there is one to get
            return
        spec = endpoint.get("spec") or {}
        auth_spec = spec.get("auth") or {}
        gateway = spec.get("gateway") or {}
        gateway_enabled = _gateway_enabled(spec)
        keyed_by_gateway = bool(gateway_enabled and auth_spec.get("apiKeysSecretName"))
        auth = bool(auth_spec.get("apiKeySecretRef")) or keyed_by_gateway
        # Only the status code matters here, so a gateway's certificate is not verified.
        scheme = "https" if gateway_enabled and gateway.get("tls") else "http"
        url = f"{scheme}://{cluster_ip}:{self.config.vllm_port}/v1/models"
        assert self._session is not None
        try:
            code = (
                await get_bounded(
                    self._session,
                    url,
                    max_bytes=MAX_PROBE_BODY_BYTES,
                    timeout_seconds=self.config.scrape_timeout_seconds,
                )
            ).status
        except (TimeoutError, aiohttp.ClientError, ReadLimitExceeded) as exc:
            self._serving_result(key, (False, NOT_ANSWERING, f"GET {url}: {exc.__class__.__name__}"))
            return
        if code == (401 if auth else 200):
            note = ""
            if auth and gateway_enabled:
                note = "; the gateway enforces the API key"
            elif auth:
                # vLLM checks the key only under /v1: say so rather than claim the endpoint is guarded.
                note = (
                    "; vLLM enforces the API key under /v1 only: /invocations and /tokenize answer without it "
                    "(gateway.enabled closes them)"
                )
            self._serving_result(key, (True, "Answering", f"GET /v1/models through the Service: {code}{note}"))
        elif code == 200:
            self._serving_result(key, (False, "AuthNotEnforced", "the Service answers /v1 without an API key"))
        elif code == 401:
            self._serving_result(key, (False, "UnexpectedAuth", "the Service wants an API key the spec does not set"))
        else:
            self._serving_result(key, (False, NOT_ANSWERING, f"GET /v1/models through the Service: {code}"))

    def _serving_result(self, key: Key, result: tuple[bool, str, str]) -> None:
        told = self._serving.observe(key, result)
        if told is not None and self.serving_sink is not None:
            self.serving_sink(key, told)

    async def _restore(self, key: Key, endpoint: JSON, state: _EndpointState, now: float) -> None:
        """Pick up what an earlier operator learned about this endpoint (its ConfigMap), once."""
        try:
            saved = await self.client.get(resources.CONFIG_MAPS, key[0], state_config_map_name(key[1]))
        except ApiError as exc:
            logger.warning("cannot read the saved autoscaler state of %s/%s: %s", *key, exc)
            return  # looked for again on the next tick
        state.restored, state.saved_at = True, now
        if saved is not None and not _state_owned_by(saved, endpoint):
            self._refuse_foreign_state(key, endpoint, state)
            return
        raw = ((saved or {}).get("data") or {}).get(STATE_KEY)
        if not raw:
            return
        try:
            learned = json.loads(raw)
        except ValueError:
            logger.warning("saved autoscaler state of %s/%s is not JSON: starting afresh", *key)
            return
        if isinstance(learned, dict):
            state.policy = State.from_dict({k: v for k, v in learned.items() if k in SAVED_FIELDS})
            state.restored_unchecked = True
            state.saved = {k: v for k, v in learned.items() if k in SAVED_FIELDS}
            days = len(state.policy.days)
            logger.info("%s/%s: restored the autoscaler's learned state (%d day(s) of profile)", *key, days)

    def _refuse_foreign_state(self, key: Key, endpoint: JSON, state: _EndpointState) -> None:
        state.foreign_state = True
        message = (
            f"ConfigMap {state_config_map_name(key[1])} exists and is not owned by this endpoint; it is left "
            "untouched, and what the autoscaler learns is not saved across operator restarts: remove it or "
            "rename the endpoint"
        )
        logger.warning("%s/%s: %s", *key, message)
        self.post_event(endpoint, "Warning", "NameConflict", message)

    async def _save(self, key: Key, endpoint: JSON, state: _EndpointState, now: float) -> None:
        """Save what took long to learn, at most every autoscalerStateSaveSeconds and only when it changed."""
        if state.saved_at is not None and now - state.saved_at < self.config.autoscaler_state_save_seconds:
            return
        learned = {k: v for k, v in state.policy.to_dict().items() if k in SAVED_FIELDS}
        if learned == state.saved or not (state.policy.days or state.policy.capacity):
            if state.saved_at is None:
                state.saved_at = now  # count the interval from the first look
            return
        if state.foreign_state:
            # Another's ConfigMap is never taken over (an endpoint author could otherwise have the operator
            # overwrite, and garbage-collect, any ConfigMap named NAME-autoscaler); it may be gone by now.
            try:
                found = await self.client.get(resources.CONFIG_MAPS, key[0], state_config_map_name(key[1]))
            except ApiError as exc:
                logger.warning("cannot read the saved autoscaler state of %s/%s: %s", *key, exc)
                state.saved_at = now  # looked at again when the next save is due
                return
            if found is not None and not _state_owned_by(found, endpoint):
                state.saved_at = now
                return
            state.foreign_state = False
        meta = endpoint.get("metadata") or {}
        config_map = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": state_config_map_name(key[1]),
                "namespace": key[0],
                "labels": render.standard_labels(key[1]),
                "ownerReferences": [
                    {"apiVersion": models.API_VERSION, "kind": models.KIND, "name": key[1], "uid": meta.get("uid")}
                ],
            },
            "data": {STATE_KEY: json.dumps(learned, separators=(",", ":"))},
        }
        try:
            await self.client.apply(resources.CONFIG_MAPS, config_map)
        except ApiError as exc:
            logger.warning("cannot save the autoscaler state of %s/%s: %s", *key, exc)
            # Tried again after the interval, not every tick: refused saves of every endpoint at every
            # tick took the API client's connections from the reconciles.
            state.saved_at = now
            return
        state.saved, state.saved_at = learned, now

    async def _gateway_sample(
        self, key: Key, spec: VoxtralEndpointSpec, state: _EndpointState, now: float
    ) -> GatewaySample | None:
        """The gateways' queues summed (each pod queues on its own); None without a gateway or an answer."""
        if not spec.gateway.enabled:
            return None
        listed = self.view.gateway_pods(key)
        pods = [p for p in listed if p.get("ip") and p.get("ready") and not p.get("deleting")]
        pages = await asyncio.gather(*(self._scrape_gateway(p["ip"]) for p in pods)) if pods else []
        answered = {str(p["name"]): page for p, page in zip(pods, pages, strict=True) if page is not None}
        if not answered:
            state.gateway_pages = []
            return None
        present = {str(p["name"]) for p in listed}
        counts = {name: page.work_requests for name, page in answered.items()}
        moved, state.gateway_requests = requests_moved(state.gateway_requests, counts, present)
        if state.last_request_at is None or moved:
            state.last_request_at = now  # traffic since the last look (or the first look: count from now)
        state.gateway_pages = list(answered.values())
        return gateway_sample(state.gateway_pages, now - state.last_request_at)

    async def _check_gateway_secrets(self, key: Key) -> None:
        """What the gateway pods report missing (a Secret's name and key, never its data), pooled;
        pods that do not answer are left out, and with no answer at all nothing is reported."""
        endpoint = self.view.endpoint(key)
        if self.secrets_sink is None or endpoint is None:
            return
        if not _gateway_enabled(endpoint.get("spec") or {}):
            self.secrets_sink(key, ())
            return
        pods = [p for p in self.view.gateway_pods(key) if p.get("ip") and not p.get("deleting")]
        if not pods:
            return
        pages = [page for page in await asyncio.gather(*(self._scrape_gateway(p["ip"]) for p in pods)) if page]
        if pages:
            self.secrets_sink(key, tuple(sorted({m for page in pages for m in page.missing_secrets})))

    async def _scrape_gateway(self, ip: str) -> GatewayPage | None:
        return await self._read_page(f"http://{ip}:{self.config.gateway_metrics_port}/metrics", parse_gateway_metrics)

    async def _scrape(self, ip: str) -> QueueSample | None:
        started = time.perf_counter()
        try:
            return await self._read_page(f"http://{ip}:{self.config.vllm_port}/metrics", parse_queue_metrics)
        finally:
            SCRAPE_SECONDS.observe(time.perf_counter() - started)

    async def _read_page(self, url: str, parse: Callable[[str], Page | None]) -> Page | None:
        """One bounded /metrics read, parsed; None (and a counted error) when it fails or does not parse."""
        assert self._session is not None
        timeout = self.config.scrape_timeout_seconds
        page = await read_page(self._session, url, parse, timeout_seconds=timeout, gate=self._semaphore)
        if page is None:  # a failed read, an answer other than 200, or a page that does not parse
            SCRAPE_ERRORS.inc()
        return page


def _rfc3339(epoch: float) -> str:
    return datetime.datetime.fromtimestamp(epoch, tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _managed_time(endpoint: JSON, manager: str, subresource: str) -> float | None:
    for entry in (endpoint.get("metadata") or {}).get("managedFields") or []:
        if entry.get("manager") == manager and (entry.get("subresource") or "") == subresource:
            return _epoch(entry.get("time"))
    return None


def _epoch(text: Any) -> float | None:
    try:
        return datetime.datetime.fromisoformat(str(text).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def resumed_hold(policy: State, manual: ManualScale | None, endpoint: JSON, delay: float) -> State:
    """After a start, a person's scale the last autoscaler already handled, as its status shows it:
    the floor goes on to the same end (or stays served), instead of starting anew from now."""
    if manual is None or policy.hold_at is not None:
        return policy
    shown = (endpoint.get("status") or {}).get("scaleHold")
    if isinstance(shown, dict):
        if shown.get("replicas") != manual.replicas or shown.get("setAt") != _rfc3339(manual.at):
            return policy  # another write than the one shown: a new floor
        until = _epoch(shown["until"]) if shown.get("until") else None
        ready_at = None if until is None else until - delay
    else:
        # No floor shown although the autoscaler wrote status after this write: it had served its time.
        written = _managed_time(endpoint, AUTOSCALER_FIELD_MANAGER, "status")
        if written is None or written < manual.at:
            return policy
        ready_at = manual.at - delay
    return replace(policy, hold_replicas=manual.replicas, hold_by=manual.by, hold_at=manual.at, hold_ready_at=ready_at)


def _hold_status(hold: Hold | None, delay: float) -> JSON | None:
    """status.scaleHold: the person's scale the autoscaler keeps as a floor, while it does."""
    if hold is None:
        return None
    status: JSON = {
        "replicas": hold.replicas,
        "setBy": hold.by[:128],
        "setAt": _rfc3339(hold.at),
        "message": hold.describe(delay)[:512],
    }
    if hold.until is not None:
        status["until"] = _rfc3339(hold.until)
    return status


async def peering_is_active(client: ApiClient, path: str, own_priority: int) -> bool:
    """Whether this replica leads its kopf peering: no other live peer has an equal or higher priority.

    kopf pauses handlers on every replica but the top one; the autoscaler, which runs outside
    kopf's handlers, follows the same rule by reading kopf's peering object.
    """
    peering = await client.request("GET", path)
    now = datetime.datetime.now(tz=datetime.UTC)
    rivals = 0
    for peer in (peering.get("status") or {}).values():
        if not isinstance(peer, dict):
            continue
        with contextlib.suppress(KeyError, ValueError, TypeError):
            seen = datetime.datetime.fromisoformat(str(peer["lastseen"]).replace("Z", "+00:00"))
            if seen.tzinfo is None:
                seen = seen.replace(tzinfo=datetime.UTC)
            alive = (now - seen).total_seconds() < float(peer.get("lifetime", 60))
            if alive and int(peer.get("priority", 0)) >= own_priority:
                rivals += 1
    return rivals <= 1  # the one entry at our priority is ourselves


def _gateway_enabled(spec: dict[str, Any]) -> bool:
    """As the models read it: a spec that does not mention the gateway has one (the API server stores
    the default, but an object read before defaulting, or from another store, may lack the field)."""
    return bool((spec.get("gateway") or {}).get("enabled", True))
