"""`simulate-vllm`: a stand-in for a vLLM replica serving Voxtral, for tests and demos.

It honours vLLM's HTTP contract where the operator and its callers can see it:
- the port refuses connections while the "model loads" (nothing listens), then `/health` is 200
  with an empty body; after a simulated engine death `/health` is 503 and the process exits ~5 s later;
- `/ping`, `/version`, `/load` (`{"server_load": N}`), `/v1/models`, `/metrics` in vLLM's
  Prometheus text (names with colons, `model_name`/`engine` labels, gauges, counters, histograms,
  plus the `python_*`/`process_*`/`http_requests_total` series vLLM's page also carries);
- `/v1/audio/transcriptions` and `/v1/audio/translations` (multipart, as the OpenAI SDK sends),
  `/v1/chat/completions` with audio content parts, answering `tool_calls` when tools are given;
- `"stream": true` (chat, completions): the `text/event-stream` headers at once, before the request
  is scheduled, as vLLM's server returns its StreamingResponse; the events once it has run;
- with an API key, everything under `/v1` needs `Authorization: Bearer <key>` (else 401
  `{"error": "Unauthorized"}`); `/health`, `/metrics`, `/ping`, `/version`, `/load` stay open;
- at most `--max-num-seqs` requests run at once; the rest wait and show as
  `vllm:num_requests_waiting`; beyond `--max-num-queued-reqs` waiting, requests get 503;
- `--scheduling-policy priority`: waiting requests start lowest `priority` first (chat and
  completions carry it; default 0), then in arrival order; without it a nonzero `priority` is a 400;
- SIGTERM: new requests are refused while running ones drain for up to `--shutdown-timeout`
  seconds; `/health` still answers 200 while draining;
- for a realtime model, the WebSocket `/v1/realtime` (realtime.py) and its `vllm:websocket_*` metrics.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import heapq
import itertools
import json
import os
import signal
import sys
import time
import uuid
from collections.abc import Sequence
from typing import Any

from aiohttp import web
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    gc_collector,
    generate_latest,
    platform_collector,
    process_collector,
)

from voxtral_testbed.realtime import REALTIME_MODELS, RealtimeMetrics, serve_realtime

VLLM_VERSION = "0.33.0"
OPEN_PATHS = ("/health", "/metrics", "/ping", "/version", "/load")


class Engine:
    """The scheduler: max_num_seqs slots, a waiting line, and vLLM's metrics about both."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.model_name = args.served_model_name or args.model
        self.free_slots = args.max_num_seqs
        # Waiting requests as (priority, arrival, future): vLLM's priority scheduler, or FCFS when all are 0.
        self._line: list[tuple[int, int, asyncio.Future[None]]] = []
        self._arrivals = itertools.count()
        self.waiting = 0
        self.running = 0
        self.in_flight_http = 0
        self.dead = False
        self.draining = False
        registry = CollectorRegistry()
        process_collector.ProcessCollector(registry=registry)
        platform_collector.PlatformCollector(registry=registry)
        gc_collector.GCCollector(registry=registry)
        self.registry = registry
        labels = ["model_name", "engine"]
        self.labels = {"model_name": self.model_name, "engine": "0"}
        self.g_waiting = Gauge(
            "vllm:num_requests_waiting", "Number of requests waiting to be processed.", labels, registry=registry
        )
        self.g_running = Gauge(
            "vllm:num_requests_running", "Number of requests in model execution batches.", labels, registry=registry
        )
        self.g_waiting_reason = Gauge(
            "vllm:num_requests_waiting_by_reason",
            "Number of requests waiting, by reason.",
            [*labels, "reason"],
            registry=registry,
        )
        self.g_kv = Gauge(
            "vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", labels, registry=registry
        )
        self.c_prompt = Counter("vllm:prompt_tokens", "Number of prefill tokens processed.", labels, registry=registry)
        self.c_generation = Counter(
            "vllm:generation_tokens", "Number of generation tokens processed.", labels, registry=registry
        )
        self.c_success = Counter(
            "vllm:request_success",
            "Count of successfully processed requests.",
            [*labels, "finished_reason"],
            registry=registry,
        )
        self.c_preemptions = Counter(
            "vllm:num_preemptions", "Cumulative number of preemption from the engine.", labels, registry=registry
        )
        self.c_rejections = Counter(
            "vllm:admission_rejections", "Requests rejected at admission.", ["model_name", "reason"], registry=registry
        )
        buckets = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
        self.h_ttft = Histogram(
            "vllm:time_to_first_token_seconds",
            "Histogram of time to first token in seconds.",
            labels,
            buckets=buckets,
            registry=registry,
        )
        self.h_e2e = Histogram(
            "vllm:e2e_request_latency_seconds",
            "Histogram of e2e request latency in seconds.",
            labels,
            buckets=buckets,
            registry=registry,
        )
        self.h_queue = Histogram(
            "vllm:request_queue_time_seconds",
            "Histogram of time spent in WAITING phase.",
            labels,
            buckets=buckets,
            registry=registry,
        )
        self.h_itl = Histogram(
            "vllm:inter_token_latency_seconds",
            "Histogram of inter-token latency in seconds.",
            labels,
            buckets=buckets,
            registry=registry,
        )
        self.http_requests = Counter(
            "http_requests",
            "Total number of requests by method, status and handler.",
            ["method", "status", "handler"],
            registry=registry,
        )
        self._publish()

    def _publish(self) -> None:
        self.g_waiting.labels(**self.labels).set(self.waiting)
        self.g_running.labels(**self.labels).set(self.running)
        self.g_waiting_reason.labels(**self.labels, reason="capacity").set(self.waiting)
        self.g_waiting_reason.labels(**self.labels, reason="deferred").set(0)
        self.g_kv.labels(**self.labels).set(min(1.0, self.running / max(1, self.args.max_num_seqs)))

    async def begin(self, priority: int = 0) -> None:
        """A streaming request (a realtime session's generation) takes a slot, waiting its turn like any other."""
        self.waiting += 1
        self._publish()
        arrived = time.perf_counter()
        try:
            if self.free_slots > 0 and not self._line:
                self.free_slots -= 1
            else:
                turn = asyncio.get_running_loop().create_future()
                entry = (priority, next(self._arrivals), turn)
                heapq.heappush(self._line, entry)
                try:
                    await turn
                except BaseException:
                    if turn.done() and not turn.cancelled():
                        self._hand_over()  # given a slot as it gave up: pass it on
                    else:
                        self._line.remove(entry)
                        heapq.heapify(self._line)
                    raise
        finally:
            self.waiting -= 1
        self.running += 1
        self._publish()
        self.h_queue.labels(**self.labels).observe(time.perf_counter() - arrived)

    def end(self) -> None:
        self.running -= 1
        self._hand_over()
        self._publish()

    def _hand_over(self) -> None:
        """A slot came free: the first in line (lowest priority number, then oldest) takes it."""
        while self._line:
            _, _, turn = heapq.heappop(self._line)
            if not turn.done():
                turn.set_result(None)
                return
        self.free_slots += 1

    def finish(self, prompt_tokens: int, output_tokens: int) -> None:
        self.c_prompt.labels(**self.labels).inc(prompt_tokens)
        self.c_generation.labels(**self.labels).inc(output_tokens)
        self.c_success.labels(**self.labels, finished_reason="stop").inc()

    def refuse_when_full(self) -> None:
        """503 once --max-num-queued-reqs requests wait."""
        limit = self.args.max_num_queued_reqs
        if limit is not None and self.waiting >= limit:
            self.c_rejections.labels(model_name=self.model_name, reason="queue_full").inc()
            raise web.HTTPServiceUnavailable(
                text=json.dumps({"error": "queue is full"}), content_type="application/json"
            )

    async def generate(self, prompt_tokens: int, output_tokens: int, priority: int = 0) -> None:
        """Queue for a slot, then 'compute' for --request-seconds."""
        self.refuse_when_full()
        arrived = time.perf_counter()
        await self.begin(priority)
        started = time.perf_counter()
        try:
            await asyncio.sleep(self.args.request_seconds)
        except asyncio.CancelledError:
            # The caller's connection closed: vLLM's server aborts the request (`with_cancellation`).
            self.c_success.labels(**self.labels, finished_reason="abort").inc()
            raise
        finally:
            self.end()
        self.h_ttft.labels(**self.labels).observe(min(0.05, self.args.request_seconds) + started - arrived)
        self.h_e2e.labels(**self.labels).observe(time.perf_counter() - arrived)
        self.h_itl.labels(**self.labels).observe(0.01)
        self.finish(prompt_tokens, output_tokens)


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status)


def _priority(engine: Engine, body: dict[str, Any]) -> int | web.Response:
    """A request's `priority` as vLLM reads it: an int, and nonzero only under the priority policy."""
    value = body.get("priority", 0)
    if not isinstance(value, int) or isinstance(value, bool):
        return _json({"error": {"message": "priority must be an integer", "type": "BadRequestError", "code": 400}}, 400)
    if value != 0 and engine.args.scheduling_policy != "priority":
        message = "Got priority != 0 for a request but the scheduling policy is not 'priority'"
        return _json({"error": {"message": message, "type": "BadRequestError", "code": 400}}, 400)
    return value


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _audio_tokens(size_bytes: int) -> int:
    # Voxtral's audio encoder: 12.5 tokens per second of 16 kHz 16-bit mono audio.
    return max(1, int(size_bytes / 32000 * 12.5))


def build_app(engine: Engine) -> web.Application:
    api_key = engine.args.api_key

    @web.middleware
    async def guard(request: web.Request, handler: Any) -> web.StreamResponse:
        engine.in_flight_http += 1
        status = 500
        try:
            if engine.draining and request.path.startswith("/v1"):
                status = 503
                return _json({"error": "server is shutting down"}, 503)
            if (
                api_key
                and request.path.startswith("/v1")
                and request.headers.get("Authorization") != f"Bearer {api_key}"
            ):
                status = 401
                return _json({"error": "Unauthorized"}, 401)
            response: web.StreamResponse = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            engine.in_flight_http -= 1
            engine.http_requests.labels(method=request.method, status=f"{status // 100}xx", handler=request.path).inc()

    async def health(_: web.Request) -> web.Response:
        return web.Response(status=503 if engine.dead else 200)

    async def version(_: web.Request) -> web.Response:
        return _json({"version": VLLM_VERSION})

    async def load(_: web.Request) -> web.Response:
        return _json({"server_load": engine.in_flight_http})

    async def metrics(_: web.Request) -> web.Response:
        if engine.args.metrics_hang_seconds:
            await asyncio.sleep(engine.args.metrics_hang_seconds)  # a fault: healthy, but /metrics hangs
        return web.Response(body=generate_latest(engine.registry), content_type="text/plain", charset="utf-8")

    async def models(_: web.Request) -> web.Response:
        return _json(
            {
                "object": "list",
                "data": [
                    {
                        "id": engine.model_name,
                        "object": "model",
                        "created": int(time.time()),
                        "owned_by": "vllm",
                        "root": engine.args.model,
                        "parent": None,
                        "max_model_len": engine.args.max_model_len,
                    }
                ],
            }
        )

    async def transcription(request: web.Request) -> web.Response:
        form = await request.post()
        upload = form.get("file")
        if not isinstance(upload, web.FileField):
            return _json({"error": {"message": "file is required", "type": "BadRequestError", "code": 400}}, 400)
        size = len(upload.file.read())
        if size > engine.args.max_audio_mb * 1_000_000:
            return _json({"error": {"message": "audio file too large", "type": "BadRequestError", "code": 400}}, 400)
        tokens = _audio_tokens(size)
        await engine.generate(tokens, 16)
        text = f"simulated transcript of {upload.filename} ({size} bytes)"
        if form.get("response_format") == "text":
            return web.Response(text=text)
        return _json(
            {
                "text": text,
                "usage": {"type": "tokens", "input_tokens": tokens, "output_tokens": 16, "total_tokens": tokens + 16},
            }
        )

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        messages = body.get("messages") or []
        if not messages:
            return _json({"error": {"message": "messages is required", "type": "BadRequestError", "code": 400}}, 400)
        if any(m.get("role") == "system" for m in messages):
            # Voxtral does not support system prompts; vLLM answers a validation error.
            return _json(
                {
                    "error": {
                        "message": "system prompts are not supported by this model",
                        "type": "BadRequestError",
                        "code": 400,
                    }
                },
                400,
            )
        audios = 0
        for turn in messages:
            content = turn.get("content")
            if isinstance(content, list):
                audios += sum(1 for part in content if part.get("type") in ("input_audio", "audio_url"))
        if audios > 5:
            return _json(
                {
                    "error": {
                        "message": "At most 5 audio(s) may be provided in one prompt.",
                        "type": "BadRequestError",
                        "code": 400,
                    }
                },
                400,
            )
        prompt_tokens = 32 + 375 * audios
        priority = _priority(engine, body)
        if isinstance(priority, web.Response):
            return priority
        tools = body.get("tools") or []
        message: dict[str, Any]
        if tools and body.get("tool_choice") != "none":
            function = tools[0]["function"]
            message = {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": uuid.uuid4().hex[:9],
                        "type": "function",
                        "function": {"name": function["name"], "arguments": json.dumps({})},
                    }
                ],
            }
            finish = "tool_calls"
        else:
            message = {"role": "assistant", "content": f"simulated answer about {audios} audio(s)"}
            finish = "stop"
        if body.get("stream"):
            return await _stream(
                request, body, "chat.completion.chunk", (prompt_tokens, 24, priority), message.get("content") or ""
            )
        await engine.generate(prompt_tokens, 24, priority)
        return _json(
            {
                "id": f"chatcmpl-{uuid.uuid4().hex}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": engine.model_name,
                "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
                "usage": _usage(prompt_tokens, 24),
            }
        )

    async def completions(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        prompt = body.get("prompt")
        if not isinstance(prompt, str) or not prompt:
            return _json({"error": {"message": "prompt is required", "type": "BadRequestError", "code": 400}}, 400)
        prompt_tokens = max(1, len(prompt) // 4)
        priority = _priority(engine, body)
        if isinstance(priority, web.Response):
            return priority
        text = "simulated completion"
        if body.get("stream"):
            return await _stream(request, body, "text_completion", (prompt_tokens, 16, priority), text)
        await engine.generate(prompt_tokens, 16, priority)
        return _json(
            {
                "id": f"cmpl-{uuid.uuid4().hex}",
                "object": "text_completion",
                "created": int(time.time()),
                "model": engine.model_name,
                "choices": [{"index": 0, "text": text, "finish_reason": "stop", "logprobs": None}],
                "usage": _usage(prompt_tokens, 16),
            }
        )

    async def _stream(
        request: web.Request, body: dict[str, Any], kind: str, work: tuple[int, int, int], text: str
    ) -> web.StreamResponse:
        """Server-sent events as vLLM sends them: the headers at once, before the request is scheduled (vLLM
        returns its StreamingResponse before the generator runs), then one chunk per word once it has run,
        `data: [DONE]` last. `work` is (prompt tokens, output tokens, priority)."""
        prompt_tokens = work[0]
        engine.refuse_when_full()  # a full queue is refused with a 503 the caller can read, not mid-stream
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        await engine.generate(*work)
        ident = f"{'chatcmpl' if kind.startswith('chat') else 'cmpl'}-{uuid.uuid4().hex}"
        words = text.split(" ")
        for index, word in enumerate(words):
            piece = word if index == 0 else " " + word
            choice: dict[str, Any] = (
                {"index": 0, "delta": {"content": piece}, "finish_reason": None}
                if kind.startswith("chat")
                else {"index": 0, "text": piece, "finish_reason": None}
            )
            chunk = {"id": ident, "object": kind, "created": int(time.time()), "model": engine.model_name}
            await response.write(f"data: {json.dumps({**chunk, 'choices': [choice]})}\n\n".encode())
            await asyncio.sleep(0.02)
        if (body.get("stream_options") or {}).get("include_usage"):
            usage = {"id": ident, "object": kind, "model": engine.model_name, "choices": []}
            usage["usage"] = _usage(prompt_tokens, len(words))
            await response.write(f"data: {json.dumps(usage)}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def invocations(request: web.Request) -> web.StreamResponse:
        """vLLM's SageMaker-style route: full inference, and (as in vLLM 0.33) outside the key check."""
        body = await request.json()
        return await (chat(request) if "messages" in body else completions(request))

    async def tokenize(request: web.Request) -> web.Response:
        body = await request.json()
        text = str(body.get("prompt") or "")
        tokens = list(range(max(1, len(text) // 4)))
        return _json({"count": len(tokens), "max_model_len": engine.args.max_model_len, "tokens": tokens})

    app = web.Application(middlewares=[guard], client_max_size=engine.args.max_audio_mb * 1_000_000 + 1_000_000)
    app.router.add_get("/health", health)
    app.router.add_get("/ping", health)
    app.router.add_get("/version", version)
    app.router.add_get("/load", load)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/audio/transcriptions", transcription)
    app.router.add_post("/v1/audio/translations", transcription)
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/invocations", invocations)
    app.router.add_post("/tokenize", tokenize)
    if engine.args.realtime or engine.args.model in REALTIME_MODELS:
        realtime_metrics = RealtimeMetrics(engine.registry)

        async def realtime(request: web.Request) -> web.StreamResponse:
            return await serve_realtime(engine, realtime_metrics, request)

        app.router.add_get("/v1/realtime", realtime)
    return app


async def serve(args: argparse.Namespace) -> int:
    # Loading: nothing listens, so connections are refused, as with vLLM loading weights.
    await asyncio.sleep(args.load_seconds)
    engine = Engine(args)
    # vLLM's API server cancels a request's handler when its caller disconnects, and aborts the request.
    runner = web.AppRunner(build_app(engine), access_log=None, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, args.host, args.port)
    await site.start()
    print(f"simulated vLLM {VLLM_VERSION} serving {engine.model_name} on {args.host}:{args.port}", flush=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    death = asyncio.create_task(asyncio.sleep(args.die_after)) if args.die_after else None
    waiters = [asyncio.create_task(stop.wait())] + ([death] if death else [])
    done, _ = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    if death is not None and death in done:
        engine.dead = True  # /health answers 503, then the process exits
        await asyncio.sleep(5)
        await runner.cleanup()
        return 1
    engine.draining = True
    deadline = time.monotonic() + args.shutdown_timeout
    while (engine.running or engine.waiting) and time.monotonic() < deadline:  # noqa: ASYNC110 - polls a deadline
        await asyncio.sleep(0.05)
    await runner.cleanup()
    for task in waiters:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="mistralai/Voxtral-Mini-3B-2507")
    parser.add_argument("--served-model-name", default=None)
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--api-key", default=os.environ.get("VLLM_API_KEY"))
    parser.add_argument("--max-num-seqs", type=int, default=8)
    parser.add_argument("--max-num-queued-reqs", type=int, default=None)
    parser.add_argument("--scheduling-policy", choices=("fcfs", "priority"), default="fcfs")
    parser.add_argument("--max-model-len", type=int, default=32768)
    parser.add_argument("--shutdown-timeout", type=float, default=0.0)
    parser.add_argument("--load-seconds", type=float, default=0.0, help="refuse connections this long first")
    parser.add_argument("--request-seconds", type=float, default=0.2, help="simulated compute per request")
    parser.add_argument(
        "--metrics-hang-seconds", type=float, default=0.0, help="answer /metrics only after N s (a fault)"
    )
    parser.add_argument("--die-after", type=float, default=0.0, help="simulate an engine death after N s (0: never)")
    parser.add_argument(
        "--max-audio-mb", type=int, default=int(os.environ.get("VLLM_MAX_AUDIO_CLIP_FILESIZE_MB", "25"))
    )
    parser.add_argument(
        "--realtime", action="store_true", help="serve /v1/realtime whatever the model (realtime models always do)"
    )
    parser.add_argument(
        "--transcription-delay-ms", type=int, default=480, help="how far text trails the audio (the model's delay)"
    )
    parser.add_argument(
        "--realtime-fail-after-tokens",
        type=int,
        default=0,
        help="a fault: a realtime generation fails (processing_error) once this many audio tokens arrived (0: never)",
    )


def run_simulator(args: argparse.Namespace) -> int:
    return asyncio.run(serve(args))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="simulate-vllm", description="a stand-in for a vLLM Voxtral replica")
    add_arguments(parser)
    # Takes `vllm serve`'s whole command line and ignores the flags it does not simulate.
    args, _ignored = parser.parse_known_args(argv)
    return run_simulator(args)


if __name__ == "__main__":
    sys.exit(main())
