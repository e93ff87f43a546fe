"""The operator's own Prometheus metrics (served on --metrics-port)."""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from voxtral_operator import capacity

RECONCILES = Counter("voxtral_operator_reconciles_total", "Endpoint reconciles, by result", ["result"])
RECONCILE_DURATION = Histogram(
    "voxtral_operator_reconcile_duration_seconds",
    "Time to reconcile one endpoint",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
API_REQUESTS = Counter("voxtral_operator_api_requests_total", "Kubernetes API requests, by verb", ["verb"])
API_ERRORS = Counter("voxtral_operator_api_errors_total", "Kubernetes API error responses, by HTTP code", ["code"])
ENDPOINTS_BY_PHASE = Gauge("voxtral_operator_endpoints", "VoxtralEndpoints, by phase", ["phase"])

# GPU-seconds per endpoint and pool, for chargeback. Integrated up to each scrape, so GPUs held
# between two reconciles are counted at the scrape's time, not at the next reconcile's.
GPU_METER = capacity.GpuMeter()


class _GpuSecondsCollector(Collector):
    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "voxtral_operator_gpu_seconds",
            "GPU-seconds held by an endpoint's replicas, by pool (reserved, overflow)",
            labels=["namespace", "endpoint", "pool"],
        )
        for (namespace, endpoint, pool), seconds in sorted(GPU_METER.totals(time.monotonic()).items()):
            family.add_metric([namespace, endpoint, pool], seconds)
        yield family


REGISTRY.register(_GpuSecondsCollector())
