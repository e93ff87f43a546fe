"""The operator's own Prometheus metrics (served on --metrics-port)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

RECONCILES = Counter("voxtral_operator_reconciles_total", "Endpoint reconciles, by result", ["result"])
RECONCILE_DURATION = Histogram(
    "voxtral_operator_reconcile_duration_seconds",
    "Time to reconcile one endpoint",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
API_REQUESTS = Counter("voxtral_operator_api_requests_total", "Kubernetes API requests, by verb", ["verb"])
API_ERRORS = Counter("voxtral_operator_api_errors_total", "Kubernetes API error responses, by HTTP code", ["code"])
ENDPOINTS_BY_PHASE = Gauge("voxtral_operator_endpoints", "VoxtralEndpoints, by phase", ["phase"])
