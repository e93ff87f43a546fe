"""The numbers the autoscaler reads from a vLLM /metrics page (pure), and the one bounded way the
operator reads anything from a pod (`get_bounded`).

The image, and so whatever answers on the pod's port, is the endpoint author's choice: every read
from a pod has a time limit (connect to last byte) and a size limit, follows no redirect, and asks
for an uncompressed body.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

import aiohttp

from voxtral_operator.gateway import metrics as gateway_metrics

logger = logging.getLogger(__name__)

# A vLLM /metrics page is about 100 KB (histograms included); far more is not vLLM.
MAX_METRICS_BYTES = 4 * 2**20
# GET /v1/models answers a few hundred bytes.
MAX_PROBE_BODY_BYTES = 64 * 2**10
_CHUNK_BYTES = 64 * 2**10


Page = TypeVar("Page")


class ReadLimitExceeded(Exception):
    """The pod sent more than the operator reads."""


@dataclass(frozen=True)
class PodResponse:
    status: int
    body: bytes


async def get_bounded(
    session: aiohttp.ClientSession, url: str, *, max_bytes: int, timeout_seconds: float
) -> PodResponse:
    """GET `url`; at most `max_bytes` of body (decompressed), all within `timeout_seconds`.

    Raises TimeoutError, aiohttp.ClientError or ReadLimitExceeded.
    """
    async with asyncio.timeout(timeout_seconds):
        headers = {"Accept-Encoding": "identity"}
        # https only for a gateway's Serving check, where the status code is all that is read.
        verify = not url.startswith("https://")
        async with session.get(url, headers=headers, allow_redirects=False, ssl=verify) as response:
            if response.content_length is not None and response.content_length > max_bytes:
                raise ReadLimitExceeded(f"{url}: Content-Length {response.content_length} > {max_bytes} bytes")
            body = bytearray()
            while chunk := await response.content.read(min(_CHUNK_BYTES, max_bytes + 1 - len(body))):
                body += chunk
                if len(body) > max_bytes:
                    raise ReadLimitExceeded(f"{url}: body longer than {max_bytes} bytes")
            return PodResponse(response.status, bytes(body))


WAITING = "vllm:num_requests_waiting"
RUNNING = "vllm:num_requests_running"
KV_CACHE_USAGE = "vllm:kv_cache_usage_perc"
PROMPT_TOKENS = "vllm:prompt_tokens_total"
GENERATION_TOKENS = "vllm:generation_tokens_total"
REQUEST_SUCCESS = "vllm:request_success_total"
# Realtime models only: open WebSocket sessions, each holding an engine slot for its life.
WEBSOCKETS_ACTIVE = "vllm:websocket_connections_active"
_SUMMED = (WAITING, RUNNING, PROMPT_TOKENS, GENERATION_TOKENS, REQUEST_SUCCESS, WEBSOCKETS_ACTIVE)
_QUEUE_NAMES = frozenset({*_SUMMED, KV_CACHE_USAGE})


# What a pod may report: pods are not trusted, so a value no real page holds (NaN, infinite,
# negative, beyond any real count) is skipped, and a page with more matching samples than any real
# page has is not read to its end (the parse is bounded in CPU whatever the pod sends).
MAX_SAMPLE_VALUE = 1e15
MAX_SAMPLES = 20_000  # of the series read (a gateway's page has a usage series per key, not counted)
MAX_LABELS_CHARS = 8192  # a sample's `{...}` longer than this is no real page's: skipped unread


class TooManySamples(Exception):
    """The page holds more matching samples than any real one: not a page to trust."""


@functools.cache
def _sample_line(prefix: str) -> re.Pattern[str]:
    """A sample line whose name starts with `prefix`: name, labels (to the line's last brace), value."""
    # Possessive where nothing is to be given back: a long run that does not parse fails in one pass.
    return re.compile(r"^(" + re.escape(prefix) + r"[^\s{]*+)(\{[^\n]*\})?[ \t]++(\S++)", re.MULTILINE)


def _samples(text: str, prefix: str, names: frozenset[str]) -> Iterator[tuple[str, str, float]]:
    """(name, labels text, value) of each sample line of a Prometheus text page whose name is one of
    `names` (all starting with `prefix`); lines that do not parse, and values no real page holds, are
    skipped. The scan of the other lines runs in the regex engine. Raises TooManySamples past
    MAX_SAMPLES lines of `names`."""
    seen = 0
    for match in _sample_line(prefix).finditer(text):
        name, labels, text_value = match.groups()
        if name not in names:
            continue
        seen += 1
        if seen > MAX_SAMPLES:
            raise TooManySamples(f"more than {MAX_SAMPLES} {prefix}* samples")
        if labels is not None and len(labels) > MAX_LABELS_CHARS:
            continue
        try:
            value = float(text_value)  # a timestamp may follow the value
        except ValueError:
            continue
        if math.isfinite(value) and 0 <= value <= MAX_SAMPLE_VALUE:
            yield name, labels or "", value


# One parse at a time beside the event loop: a page never stalls the loop (and with it every other
# scrape's deadline), and parses never crowd it out of the interpreter between them.
_PARSER = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="metrics-parse")


async def parse_page(body: bytes, parse: Callable[[str], Page | None]) -> Page | None:
    """A page's body decoded and parsed in a worker thread, so a large page never stalls the event
    loop (and with it every other scrape's deadline); None when it does not parse or is not to be trusted."""

    def decode_and_parse() -> Page | None:
        try:
            return parse(body.decode("utf-8", errors="replace"))
        except TooManySamples:
            return None

    return await asyncio.get_running_loop().run_in_executor(_PARSER, decode_and_parse)


async def read_page(
    session: aiohttp.ClientSession,
    url: str,
    parse: Callable[[str], Page | None],
    *,
    timeout_seconds: float,
    gate: asyncio.Semaphore | None = None,
) -> Page | None:
    """One bounded /metrics read (`get_bounded`, within `gate` if given), parsed; None when the read fails, the
    answer is not 200, or the page does not parse."""
    try:
        async with gate or contextlib.nullcontext():
            response = await get_bounded(session, url, max_bytes=MAX_METRICS_BYTES, timeout_seconds=timeout_seconds)
    except (TimeoutError, aiohttp.ClientError, ReadLimitExceeded) as exc:
        logger.debug("read of %s failed: %s", url, exc)
        return None
    return await parse_page(response.body, parse) if response.status == 200 else None


@dataclass(frozen=True)
class QueueSample:
    waiting: float
    running: float
    kv_cache_usage: float | None = None  # mean over engines, 0..1
    prompt_tokens: float | None = None  # counters, summed over engines (and labels)
    generation_tokens: float | None = None
    finished: float | None = None


def parse_queue_metrics(text: str) -> QueueSample | None:
    """Sum the queue gauges and the token counters over engines; None when the page has no queue gauge.

    Everything else on the page (help lines, histograms, python_*/process_* series, `_created`
    series, other vllm: series whose names merely start the same) is skipped.
    """
    totals = dict.fromkeys(_SUMMED, 0.0)
    kv_total = kv_count = 0.0
    seen = set()
    for name, _, value in _samples(text, "vllm:", _QUEUE_NAMES):
        seen.add(name)
        if name == KV_CACHE_USAGE:
            if value > 1:  # a fraction of the cache
                continue
            kv_total += value
            kv_count += 1
        else:
            totals[name] += value
    if WAITING not in seen:
        return None
    return QueueSample(
        waiting=totals[WAITING],
        # A realtime session counts as running from its handshake, not only while it transcribes:
        # the gateway admitted it against the replica's sessions and it may start at any moment.
        running=max(totals[RUNNING], totals[WEBSOCKETS_ACTIVE]),
        kv_cache_usage=kv_total / kv_count if kv_count else None,
        prompt_tokens=totals[PROMPT_TOKENS] if PROMPT_TOKENS in seen else None,
        generation_tokens=totals[GENERATION_TOKENS] if GENERATION_TOKENS in seen else None,
        finished=totals[REQUEST_SUCCESS] if REQUEST_SUCCESS in seen else None,
    )


# The gateway's own page (voxtral_operator.gateway): its queue in requests and in audio-seconds.
_GATEWAY_SUMMED = (
    gateway_metrics.QUEUED_REQUESTS,
    gateway_metrics.QUEUED_AUDIO_SECONDS,
    gateway_metrics.INFLIGHT_AUDIO_SECONDS,
)
# Requests that keep an endpoint awake: inference routes the gateway let through. A model listing
# (the operator's own Serving check sends one), a refused key or an unknown path is no work for a GPU.
_IDLE_ROUTES = frozenset({"/v1/models", "other"})
_REFUSED_CODES = frozenset({"401", "403", "404", "405"})


@dataclass(frozen=True)
class LanePage:
    queued: float = 0.0
    queued_audio_seconds: float = 0.0
    in_flight: float = 0.0
    in_flight_audio_seconds: float = 0.0


@dataclass(frozen=True)
class GatewayPage:
    queued: float  # waiting for a replica slot, or held while no replica is ready
    queued_audio_seconds: float
    in_flight_audio_seconds: float
    work_requests: float  # inference requests answered so far (a counter: a change means traffic)
    missing_secrets: tuple[tuple[str, str], ...] = ()  # (Secret name, key or "") the gateway cannot find
    lanes: dict[str, LanePage] = field(default_factory=dict)  # interactive, deferrable (older gateways: none)


_LANE_FIELDS = {
    gateway_metrics.LANE_QUEUED_REQUESTS: "queued",
    gateway_metrics.LANE_QUEUED_AUDIO_SECONDS: "queued_audio_seconds",
    gateway_metrics.LANE_INFLIGHT_REQUESTS: "in_flight",
    gateway_metrics.LANE_INFLIGHT_AUDIO_SECONDS: "in_flight_audio_seconds",
}
_GATEWAY_NAMES = frozenset(
    {*_GATEWAY_SUMMED, *_LANE_FIELDS, gateway_metrics.SECRET_MISSING, gateway_metrics.REQUESTS_TOTAL}
)


# A label starts where a word does (not inside one: a long run of word characters was tried from each
# of its characters, quadratic), and its value is read without giving anything back.
_LABEL = re.compile(r'(?<!\w)(\w+)="((?:[^"\\]|\\.)*+)"')


def _labels(text: str) -> dict[str, str]:
    return dict(_LABEL.findall(text))


def parse_gateway_metrics(text: str) -> GatewayPage | None:
    """The gateway's queue from its /metrics page; None when the page is not a gateway's."""
    totals = dict.fromkeys(_GATEWAY_SUMMED, 0.0)
    work_requests = 0.0
    seen = set()
    missing: set[tuple[str, str]] = set()
    lanes: dict[str, dict[str, float]] = {}
    for name, labels_text, value in _samples(text, "voxtral_gateway_", _GATEWAY_NAMES):
        if name in _LANE_FIELDS:
            lane = _labels(labels_text).get("lane", "")
            if lane in gateway_metrics.LANE_NAMES:
                fields = lanes.setdefault(lane, {})
                fields[_LANE_FIELDS[name]] = fields.get(_LANE_FIELDS[name], 0.0) + value
        elif name == gateway_metrics.SECRET_MISSING and value >= 1:
            labels = _labels(labels_text)
            missing.add((labels.get("secret", ""), labels.get("key", "")))
        elif name == gateway_metrics.REQUESTS_TOTAL:
            labels = _labels(labels_text)
            if labels.get("route") not in _IDLE_ROUTES and labels.get("code") not in _REFUSED_CODES:
                work_requests += value
        elif name in totals:
            seen.add(name)
            totals[name] += value
    if gateway_metrics.QUEUED_REQUESTS not in seen:
        return None
    return GatewayPage(
        queued=totals[gateway_metrics.QUEUED_REQUESTS],
        queued_audio_seconds=totals[gateway_metrics.QUEUED_AUDIO_SECONDS],
        in_flight_audio_seconds=totals[gateway_metrics.INFLIGHT_AUDIO_SECONDS],
        work_requests=work_requests,
        missing_secrets=tuple(sorted(m for m in missing if m[0])),
        lanes={lane: LanePage(**fields) for lane, fields in lanes.items()},
    )
