"""vLLM 0.33's realtime transcription WebSocket (`GET /v1/realtime`), as the simulator serves it.

The protocol, as vLLM's source has it (../shared contract, "Realtime transcription"):
- the key check happens on the upgrade request (the simulator's middleware answers 401 before the
  socket is accepted); on accept the server sends `session.created {id, created}`;
- client events are JSON text frames: `session.update {model}` (required before the first commit),
  `input_audio_buffer.append {audio}` (base64 of PCM16, 16 kHz, mono), `input_audio_buffer.commit
  {final}`: the first commit starts the generation (one per socket; another commit while it runs is
  ignored, except that `final: true` ends the audio input);
- server events: `transcription.delta {delta}` as text is produced, `transcription.done {text,
  usage}`, `error {error, code}` with the codes in ERROR_CODES;
- a generation holds one of the engine's `--max-num-seqs` slots (beyond them it waits, as a request
  does), and stops at `--max-model-len` tokens.

Text is produced at the pace audio arrives, behind it by the model's transcription delay: one audio
token per 80 ms, one word per WORD_TOKENS tokens, each word naming the token it ends on (`w12`), so a
client can tell which audio a delta answers.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import time
import uuid
from typing import TYPE_CHECKING, Any

from aiohttp import WSMsgType, web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

if TYPE_CHECKING:
    from voxtral_testbed.simulator import Engine

REALTIME_MODELS = frozenset({"mistralai/Voxtral-Mini-4B-Realtime-2602"})
SAMPLE_RATE = 16_000
BYTES_PER_SECOND = SAMPLE_RATE * 2  # PCM16 mono
TOKEN_SECONDS = 0.08  # one audio token per 80 ms
WORD_TOKENS = 5  # a word of text per 400 ms of audio
ERROR_CODES = (
    "invalid_json",
    "invalid_event",
    "invalid_audio",
    "model_not_found",
    "model_not_validated",
    "unknown_event",
    "processing_error",
)


class RealtimeMetrics:
    """The three series vLLM adds for models that serve /v1/realtime."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.active = Gauge("vllm:websocket_connections_active", "Active WebSocket connections.", registry=registry)
        self.total = Counter("vllm:websocket_connections", "Total WebSocket connections accepted.", registry=registry)
        self.duration = Histogram(
            "vllm:websocket_connection_duration_seconds",
            "Duration of WebSocket connections in seconds.",
            buckets=(1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 600.0, 1800.0, 3600.0, 10800.0),
            registry=registry,
        )


class Session:
    """One socket: its audio so far, its generation, and what it has sent."""

    def __init__(self, engine: Engine, ws: web.WebSocketResponse, delay_seconds: float) -> None:
        self.engine = engine
        self.ws = ws
        self.delay = delay_seconds
        self.model: str | None = None
        self.audio_bytes = 0
        self.final = False
        self.arrived = asyncio.Event()  # set whenever audio or the final commit arrives
        self.generation: asyncio.Task[None] | None = None

    async def send(self, event: dict[str, Any]) -> None:
        if not self.ws.closed:
            await self.ws.send_str(json.dumps(event))

    async def error(self, message: str, code: str) -> None:
        assert code in ERROR_CODES
        await self.send({"type": "error", "error": message, "code": code})

    async def handle(self, data: str) -> None:
        try:
            event = json.loads(data)
        except ValueError:
            await self.error("Invalid JSON", "invalid_json")
            return
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            await self.error("An event is a JSON object with a string 'type'", "invalid_event")
            return
        kind = event["type"]
        if kind == "session.update":
            await self._update(event)
        elif kind == "input_audio_buffer.append":
            await self._append(event)
        elif kind == "input_audio_buffer.commit":
            await self._commit(event)
        else:
            await self.error(f"Unknown event type: {kind}", "unknown_event")

    async def _update(self, event: dict[str, Any]) -> None:
        model = event.get("model")
        if not isinstance(model, str) or not model:
            await self.error("session.update needs a model", "invalid_event")
            return
        if model != self.engine.model_name:
            await self.error(f"The model `{model}` does not exist.", "model_not_found")
            return
        self.model = model

    async def _append(self, event: dict[str, Any]) -> None:
        audio = event.get("audio")
        if not isinstance(audio, str) or not audio:
            await self.error("audio is empty", "invalid_audio")
            return
        limit = self.engine.args.max_audio_mb * 1024 * 1024
        if len(audio) * 3 // 4 > limit:
            await self.error(f"audio chunk is larger than {self.engine.args.max_audio_mb} MB", "invalid_audio")
            return
        try:
            pcm = base64.b64decode(audio, validate=True)
        except (binascii.Error, ValueError):
            await self.error("audio is not valid base64", "invalid_audio")
            return
        if not pcm or len(pcm) % 2:
            await self.error("audio is not PCM16 (an odd number of bytes)", "invalid_audio")
            return
        self.audio_bytes += len(pcm)
        self.arrived.set()

    async def _commit(self, event: dict[str, Any]) -> None:
        if self.model is None:
            await self.error("session.update with a model must come before the first commit", "model_not_validated")
            return
        if event.get("final") is True:
            self.final = True
            self.arrived.set()
        if self.generation is None or self.generation.done():
            self.generation = asyncio.create_task(self._generate())

    def _tokens_ready(self) -> int:
        """Audio tokens the model may have decoded now: those at least the delay behind the audio's end."""
        seconds = self.audio_bytes / BYTES_PER_SECOND
        if not self.final:
            seconds -= self.delay
        return max(0, int(seconds / TOKEN_SECONDS))

    async def _generate(self) -> None:
        engine = self.engine
        await engine.begin()
        words: list[str] = []
        emitted = 0
        limit = engine.args.max_model_len
        try:
            while True:
                self.arrived.clear()
                ready = min(self._tokens_ready(), limit)
                fail_at = engine.args.realtime_fail_after_tokens
                if fail_at and ready >= fail_at:
                    # A fault: the engine fails mid-stream (what vLLM reports as processing_error).
                    await self.error("the engine failed while transcribing", "processing_error")
                    return
                while emitted + WORD_TOKENS <= ready:
                    emitted += WORD_TOKENS
                    word = f"w{emitted}"
                    await self.send({"type": "transcription.delta", "delta": word if not words else " " + word})
                    words.append(word)
                if ready >= limit or (self.final and ready - emitted < WORD_TOKENS):
                    break
                await self.arrived.wait()
            if self.final and ready > emitted and ready < limit:
                emitted = ready
                word = f"w{emitted}"
                await self.send({"type": "transcription.delta", "delta": word if not words else " " + word})
                words.append(word)
            prompt = ready
            await self.send(
                {
                    "type": "transcription.done",
                    "text": " ".join(words),
                    "usage": {
                        "prompt_tokens": prompt,
                        "completion_tokens": len(words),
                        "total_tokens": prompt + len(words),
                    },
                }
            )
            engine.finish(prompt, len(words))
        except ConnectionError:
            pass  # the caller went away
        finally:
            engine.end()


async def serve_realtime(engine: Engine, metrics: RealtimeMetrics, request: web.Request) -> web.StreamResponse:
    """`GET /v1/realtime` (the key was checked on the upgrade by the middleware)."""
    ws = web.WebSocketResponse(max_msg_size=engine.args.max_audio_mb * 1024 * 1024 * 4 // 3 + 4096)
    await ws.prepare(request)
    opened = time.monotonic()
    metrics.active.inc()
    metrics.total.inc()
    session = Session(engine, ws, engine.args.transcription_delay_ms / 1000)
    try:
        await session.send({"type": "session.created", "id": f"sess-{uuid.uuid4().hex}", "created": int(time.time())})
        async for message in ws:
            if message.type == WSMsgType.TEXT:
                await session.handle(message.data)
            elif message.type == WSMsgType.BINARY:
                await session.error("Events are JSON text frames", "invalid_json")
    finally:
        if session.generation is not None:
            session.generation.cancel()
        metrics.active.dec()
        metrics.duration.observe(time.monotonic() - opened)
    return ws
