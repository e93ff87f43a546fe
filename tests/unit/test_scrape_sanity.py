"""Pods are not trusted: what the operator reads from a pod's /metrics page is sanity-checked."""

from __future__ import annotations

import subprocess
import sys

import pytest

from voxtral_operator.autoscale.scrape import (
    MAX_SAMPLES,
    parse_gateway_metrics,
    parse_page,
    parse_queue_metrics,
)

GOOD = "vllm:num_requests_waiting 3\nvllm:num_requests_running 2\nvllm:kv_cache_usage_perc 0.5\n"


@pytest.mark.parametrize("value", ["NaN", "+Inf", "-Inf", "-4", "1e300", "9" * 400, "0x10", "", "nan", "inf"])
def test_values_no_real_page_holds_are_ignored(value: str) -> None:
    page = (
        GOOD
        + f'vllm:num_requests_waiting{{engine="1"}} {value}\n'
        + f"vllm:kv_cache_usage_perc {value}\nvllm:generation_tokens_total {value}\n"
    )
    sample = parse_queue_metrics(page)
    assert sample is not None
    assert sample.waiting == 3
    assert sample.running == 2
    assert sample.kv_cache_usage == 0.5
    assert sample.generation_tokens is None


def test_a_cache_usage_beyond_one_is_not_a_fraction() -> None:
    sample = parse_queue_metrics(GOOD + "vllm:kv_cache_usage_perc 7\n")
    assert sample is not None
    assert sample.kv_cache_usage == 0.5


def test_gateway_page_values_are_checked_too() -> None:
    page = (
        "voxtral_gateway_queued_requests 2\nvoxtral_gateway_queued_requests NaN\n"
        "voxtral_gateway_queued_audio_seconds -50\nvoxtral_gateway_inflight_audio_seconds 1e400\n"
        'voxtral_gateway_requests_total{route="/v1/completions",code="200"} +Inf\n'
    )
    found = parse_gateway_metrics(page)
    assert found is not None
    assert (found.queued, found.queued_audio_seconds, found.in_flight_audio_seconds, found.work_requests) == (
        2,
        0,
        0,
        0,
    )


async def test_a_page_with_more_samples_than_any_real_one_is_not_read() -> None:
    flood = GOOD * (MAX_SAMPLES // 3 + 1)
    assert await parse_page(flood.encode(), parse_queue_metrics) is None
    real = await parse_page(GOOD.encode(), parse_queue_metrics)
    assert real is not None
    assert real.waiting == 3


async def test_a_page_that_is_not_text_does_not_parse() -> None:
    assert await parse_page(b"\xff\xfe\x00" * 1000, parse_queue_metrics) is None


def test_a_gateway_with_many_keys_is_read() -> None:
    """A usage series per API key (30,000 here) is not what the page is read for: the page is still read."""
    usage = "".join(
        f'voxtral_gateway_usage_requests_total{{key_id="{i:08x}",route="/v1/audio/transcriptions"}} 1\n'
        for i in range(30_000)
    )
    page = parse_gateway_metrics("voxtral_gateway_queued_requests 2\n" + usage)
    assert page is not None, "a gateway with 30,000 keys' usage series was taken for an untrustworthy page"
    assert page.queued == 2


# Each would hold the interpreter (and so the operator's event loop, beside which pages are parsed) for
# minutes to hours with a regular expression that backtracks over a long run; here they take well under
# a second. Run in a child process so that a regression fails at the bound instead of hanging the suite.
HOSTILE_PAGES = {
    "long-words-in-gateway-labels": (
        "parse_gateway_metrics",
        "'voxtral_gateway_queued_requests 0\\n'"
        " + ('voxtral_gateway_lane_queued_requests{' + 'a' * 8000 + '} 1\\n') * 500",
    ),
    "long-vllm-name": ("parse_queue_metrics", "'vllm:num_requests_waiting 1\\nvllm:' + 'a' * 4_000_000 + '\\n'"),
    "unterminated-label-values": (
        "parse_gateway_metrics",
        "'voxtral_gateway_queued_requests 0\\n'"
        " + ('voxtral_gateway_requests_total{a=\"' + '\\\\\\\\' * 4000 + '} 1\\n') * 500",
    ),
}


@pytest.mark.parametrize(("parse", "page"), HOSTILE_PAGES.values(), ids=HOSTILE_PAGES.keys())
def test_hostile_pages_parse_in_linear_time(parse: str, page: str) -> None:
    program = (
        f"from voxtral_operator.autoscale.scrape import {parse}\n"
        f"page = {page}\n"
        f"assert len(page) > 3_000_000, len(page)\n"
        f"print({parse}(page) is not None)\n"
    )
    try:
        command = [sys.executable, "-c", program]
        result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{parse} of a {page[:40]}... page took over 60 s (a regular expression backtracking?)")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "True", result.stdout
