"""The autoscaler reads the gateway's own /metrics page: what it counts as queue and as traffic."""

from __future__ import annotations

from prometheus_client import generate_latest

from voxtral_operator.autoscale.scrape import parse_gateway_metrics, parse_queue_metrics
from voxtral_operator.gateway.metrics import GatewayMetrics, Snapshot


def _page(snapshot: Snapshot, requests: dict[tuple[str, str], int]) -> str:
    metrics = GatewayMetrics(lambda: snapshot)
    for (route, code), count in requests.items():
        metrics.requests.labels(route, code).inc(count)
    return generate_latest(metrics.registry).decode()


def test_queue_and_work_are_read_from_the_gateways_own_page() -> None:
    snapshot = Snapshot()
    snapshot.queued, snapshot.held, snapshot.queued_audio_seconds = 3, 3, 1800.0
    snapshot.inflight_audio_seconds = 42.5
    page = parse_gateway_metrics(_page(snapshot, {("/v1/audio/transcriptions", "200"): 5}))
    assert page is not None
    assert page.queued == 3  # held requests are among the queued, not added twice
    assert page.queued_audio_seconds == 1800.0
    assert page.in_flight_audio_seconds == 42.5
    assert page.work_requests == 5


def test_probes_refusals_and_model_listings_are_not_traffic() -> None:
    requests = {
        ("/v1/models", "200"): 40,  # the operator's Serving check, every few seconds
        ("/v1/chat/completions", "401"): 7,
        ("other", "404"): 3,
        ("/v1/audio/transcriptions", "405"): 1,
        ("/v1/chat/completions", "503"): 2,  # a request that waited for a replica and gave up: demand
    }
    page = parse_gateway_metrics(_page(Snapshot(), requests))
    assert page is not None
    assert page.work_requests == 2


def test_a_vllm_page_is_not_a_gateway_page_and_back() -> None:
    vllm = 'vllm:num_requests_waiting{engine="0",model_name="m"} 7.0\n'
    assert parse_gateway_metrics(vllm) is None
    assert parse_queue_metrics(_page(Snapshot(), {})) is None
