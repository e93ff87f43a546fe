"""The gateway's Prometheus metrics: names as constants (the autoscaler parses the page with them).

Gauges are computed from the dispatcher's state at scrape time (no bookkeeping per request);
counters and the queue-wait histogram are updated as requests go.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

QUEUED_REQUESTS = "voxtral_gateway_queued_requests"
QUEUED_AUDIO_SECONDS = "voxtral_gateway_queued_audio_seconds"
HELD_REQUESTS = "voxtral_gateway_held_requests"
INFLIGHT_REQUESTS = "voxtral_gateway_inflight_requests"
INFLIGHT_AUDIO_SECONDS = "voxtral_gateway_inflight_audio_seconds"
QUEUE_WAIT_SECONDS = "voxtral_gateway_queue_wait_seconds"
REPLICA_OUTSTANDING_AUDIO_SECONDS = "voxtral_gateway_replica_outstanding_audio_seconds"
REPLICA_INFLIGHT_REQUESTS = "voxtral_gateway_replica_inflight_requests"
READY_REPLICAS = "voxtral_gateway_ready_replicas"
REQUESTS_TOTAL = "voxtral_gateway_requests_total"
USAGE_AUDIO_SECONDS_TOTAL = "voxtral_gateway_usage_audio_seconds_total"
USAGE_TOKENS_TOTAL = "voxtral_gateway_usage_tokens_total"
KEY_QUEUED_REQUESTS = "voxtral_gateway_key_queued_requests"
KEY_LIMITED_REQUESTS_TOTAL = "voxtral_gateway_key_limited_requests_total"
SECRET_MISSING = "voxtral_gateway_secret_missing"
# Per lane (interactive, deferrable): the queue, what is in flight, what was dispatched and what failed.
LANE_QUEUED_REQUESTS = "voxtral_gateway_lane_queued_requests"
LANE_QUEUED_AUDIO_SECONDS = "voxtral_gateway_lane_queued_audio_seconds"
LANE_INFLIGHT_REQUESTS = "voxtral_gateway_lane_inflight_requests"
LANE_INFLIGHT_AUDIO_SECONDS = "voxtral_gateway_lane_inflight_audio_seconds"
LANE_ADMITTED_TOTAL = "voxtral_gateway_lane_admitted_total"
LANE_FAILED_TOTAL = "voxtral_gateway_lane_failed_total"
LANE_QUEUE_WAIT_SECONDS = "voxtral_gateway_lane_queue_wait_seconds"
# Deferrable requests aborted on a replica to make room for an interactive one, and queued again.
DEFERRABLE_TAKEN_BACK_TOTAL = "voxtral_gateway_deferrable_taken_back_total"
# Reads of a replica's vllm:num_requests_waiting that decide what is taken back, by result: a pod whose reads
# fail takes nothing back, and an interactive request waits behind deferrable work until it finishes.
WAITING_READS_TOTAL = "voxtral_gateway_waiting_reads_total"
WAITING_READ_RESULTS = ("read", "failed")
LANE_NAMES = ("interactive", "deferrable")  # as voxtral_operator.gateway.lanes names them

ALL = (
    QUEUED_REQUESTS,
    QUEUED_AUDIO_SECONDS,
    HELD_REQUESTS,
    INFLIGHT_REQUESTS,
    INFLIGHT_AUDIO_SECONDS,
    QUEUE_WAIT_SECONDS,
    REPLICA_OUTSTANDING_AUDIO_SECONDS,
    REPLICA_INFLIGHT_REQUESTS,
    READY_REPLICAS,
    REQUESTS_TOTAL,
    USAGE_AUDIO_SECONDS_TOTAL,
    USAGE_TOKENS_TOTAL,
    KEY_QUEUED_REQUESTS,
    KEY_LIMITED_REQUESTS_TOTAL,
    SECRET_MISSING,
    LANE_QUEUED_REQUESTS,
    LANE_QUEUED_AUDIO_SECONDS,
    LANE_INFLIGHT_REQUESTS,
    LANE_INFLIGHT_AUDIO_SECONDS,
    LANE_ADMITTED_TOTAL,
    LANE_FAILED_TOTAL,
    LANE_QUEUE_WAIT_SECONDS,
    DEFERRABLE_TAKEN_BACK_TOTAL,
    WAITING_READS_TOTAL,
)


def key_id(key: bytes) -> str:
    """How a caller key is named in metrics: never the key itself."""
    return hashlib.sha256(key).hexdigest()[:8]


class LaneSnapshot:
    """One lane's queue, in-flight requests and counts so far."""

    def __init__(self) -> None:
        self.queued = 0
        self.queued_audio_seconds = 0.0
        self.inflight = 0
        self.inflight_audio_seconds = 0.0
        self.admitted = 0
        self.failed: dict[str, int] = {}  # by the code answered (queue_full, queue_timeout, ...)
        self.taken_back = 0  # (deferrable) aborted on a replica for an interactive request, queued again


class Snapshot:
    """What the gauges show, as the dispatcher reports it."""

    def __init__(self) -> None:
        self.queued = 0
        self.queued_audio_seconds = 0.0
        self.held = 0
        self.inflight = 0
        self.inflight_audio_seconds = 0.0
        self.ready_replicas = 0
        self.replicas: dict[str, tuple[int, float]] = {}  # address -> (in flight, outstanding audio seconds)
        self.queued_by_key: dict[str, int] = {}  # key id -> requests waiting
        self.limited: dict[tuple[str, str], int] = {}  # (key id, limit) -> requests refused with 429 so far
        self.lanes: dict[str, LaneSnapshot] = {lane: LaneSnapshot() for lane in LANE_NAMES}


class _Gauges(Collector):
    def __init__(self, snapshot: Callable[[], Snapshot], missing: Callable[[], Iterable[tuple[str, str]]]) -> None:
        self._snapshot = snapshot
        self._missing = missing

    def collect(self) -> Iterator[Metric]:
        now = self._snapshot()
        for name, doc, value in (
            (QUEUED_REQUESTS, "Requests waiting in the gateway's queue (held ones included).", now.queued),
            (QUEUED_AUDIO_SECONDS, "Seconds of audio in the queued requests.", now.queued_audio_seconds),
            (HELD_REQUESTS, "Requests waiting while no replica is ready (scale from zero).", now.held),
            (INFLIGHT_REQUESTS, "Requests sent to a replica and not answered yet.", now.inflight),
            (INFLIGHT_AUDIO_SECONDS, "Seconds of audio in the in-flight requests.", now.inflight_audio_seconds),
            (READY_REPLICAS, "Ready replicas the gateway dispatches to.", now.ready_replicas),
        ):
            yield GaugeMetricFamily(name, doc, value=value)
        inflight = GaugeMetricFamily(REPLICA_INFLIGHT_REQUESTS, "Requests in flight per replica.", labels=["replica"])
        outstanding = GaugeMetricFamily(
            REPLICA_OUTSTANDING_AUDIO_SECONDS, "Seconds of audio in flight per replica.", labels=["replica"]
        )
        for replica, (count, seconds) in sorted(now.replicas.items()):
            inflight.add_metric([replica], count)
            outstanding.add_metric([replica], seconds)
        yield inflight
        yield outstanding
        queued = GaugeMetricFamily(KEY_QUEUED_REQUESTS, "Requests waiting per caller key id.", labels=["key_id"])
        for key, count in sorted(now.queued_by_key.items()):
            queued.add_metric([key], count)
        yield queued
        limited = CounterMetricFamily(
            KEY_LIMITED_REQUESTS_TOTAL.removesuffix("_total"),
            "Requests answered 429 per caller key id, by the limit reached (requests_per_minute, "
            "audio_seconds_per_minute, concurrent_requests, queue_full).",
            labels=["key_id", "limit"],
        )
        for (key, limit), count in sorted(now.limited.items()):
            limited.add_metric([key, limit], count)
        yield limited
        missing = GaugeMetricFamily(
            SECRET_MISSING,
            "1 for each Secret (and key) the gateway is configured to read that it finds missing or empty.",
            labels=["secret", "key"],
        )
        for secret, key in self._missing():
            missing.add_metric([secret, key], 1)
        yield missing
        yield from _lane_families(now)


def _lane_families(now: Snapshot) -> Iterator[Metric]:
    queued = GaugeMetricFamily(
        LANE_QUEUED_REQUESTS, "Requests waiting in the gateway's queue, per lane.", labels=["lane"]
    )
    audio = GaugeMetricFamily(LANE_QUEUED_AUDIO_SECONDS, "Seconds of audio queued, per lane.", labels=["lane"])
    inflight = GaugeMetricFamily(LANE_INFLIGHT_REQUESTS, "Requests in flight on replicas, per lane.", labels=["lane"])
    inflight_audio = GaugeMetricFamily(
        LANE_INFLIGHT_AUDIO_SECONDS, "Seconds of audio in flight on replicas, per lane.", labels=["lane"]
    )
    admitted = CounterMetricFamily(
        LANE_ADMITTED_TOTAL.removesuffix("_total"), "Requests dispatched to a replica, per lane.", labels=["lane"]
    )
    failed = CounterMetricFamily(
        LANE_FAILED_TOTAL.removesuffix("_total"),
        "Requests the gateway refused or timed out before a replica took them, per lane and reason "
        "(queue_full, queue_timeout, endpoint_starting, rate_limit_exceeded, ...).",
        labels=["lane", "reason"],
    )
    taken_back = CounterMetricFamily(
        DEFERRABLE_TAKEN_BACK_TOTAL.removesuffix("_total"),
        "Deferrable requests aborted on a replica to make room in its KV cache for an interactive request, "
        "and queued again (sent again from the start).",
    )
    taken_back.add_metric([], now.lanes["deferrable"].taken_back)
    for lane, state in now.lanes.items():
        queued.add_metric([lane], state.queued)
        audio.add_metric([lane], state.queued_audio_seconds)
        inflight.add_metric([lane], state.inflight)
        inflight_audio.add_metric([lane], state.inflight_audio_seconds)
        admitted.add_metric([lane], state.admitted)
        for reason, count in sorted(state.failed.items()):
            failed.add_metric([lane, reason], count)
    yield from (queued, audio, inflight, inflight_audio, admitted, failed, taken_back)


class GatewayMetrics:
    def __init__(
        self, snapshot: Callable[[], Snapshot], missing: Callable[[], Iterable[tuple[str, str]]] = tuple
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_Gauges(snapshot, missing))
        self.queue_wait = Histogram(
            QUEUE_WAIT_SECONDS,
            "Time from a request's arrival to its dispatch to a replica.",
            buckets=(0.005, 0.05, 0.25, 1, 5, 15, 60, 180, 600, 1200),
            registry=self.registry,
        )
        self.lane_queue_wait = Histogram(
            LANE_QUEUE_WAIT_SECONDS,
            "Time from a request's arrival to its dispatch to a replica, per lane.",
            ["lane"],
            buckets=(0.005, 0.05, 0.25, 1, 5, 15, 60, 180, 600, 1800, 3600, 14400),
            registry=self.registry,
        )
        self.requests = Counter(
            REQUESTS_TOTAL.removesuffix("_total"), "Requests answered, by route and status.", ["route", "code"],
            registry=self.registry,
        )  # fmt: skip
        self.usage_audio = Counter(
            USAGE_AUDIO_SECONDS_TOTAL.removesuffix("_total"),
            "Seconds of audio sent per caller key (sha256 prefix).",
            ["key_id"],
            registry=self.registry,
        )
        self.waiting_reads = Counter(
            WAITING_READS_TOTAL.removesuffix("_total"),
            "Reads of a replica's vllm:num_requests_waiting for taking back deferrable work, by result.",
            ["result"],
            registry=self.registry,
        )
        for result in WAITING_READ_RESULTS:
            self.waiting_reads.labels(result)  # both series from the start: a rate of failures needs its zero
        self.usage_tokens = Counter(
            USAGE_TOKENS_TOTAL.removesuffix("_total"),
            "Tokens per caller key, from the responses' usage objects.",
            ["key_id", "kind"],
            registry=self.registry,
        )
