"""A realtime transcription client for tests and benchmarks: vLLM's /v1/realtime protocol over aiohttp.

`stream` sends silence as PCM16 16 kHz frames at real-time pace and records when each
`transcription.delta` arrives against when the audio it answers was sent: each simulated word
(`wN`) ends on audio token N, i.e. on audio second N x 0.08.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

MODEL = "mistralai/Voxtral-Mini-4B-Realtime-2602"
SAMPLE_RATE = 16_000
TOKEN_SECONDS = 0.08


@dataclass
class StreamResult:
    created: dict[str, Any] | None = None
    deltas: list[str] = field(default_factory=list)
    # Seconds from sending the audio a delta answers to receiving the delta (the model's delay included).
    delta_latencies: list[float] = field(default_factory=list)
    done: dict[str, Any] | None = None
    errors: list[dict[str, Any]] = field(default_factory=list)
    close_code: int | None = None
    close_reason: str = ""


def frame(seconds: float) -> str:
    """An `input_audio_buffer.append` event carrying `seconds` of silence."""
    pcm = b"\0\0" * int(SAMPLE_RATE * seconds)
    return json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(pcm).decode()})


def auth_headers(key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if key else {}


async def stream(
    session: aiohttp.ClientSession,
    url: str,
    *,
    key: str | None,
    seconds: float,
    frame_seconds: float = 0.1,
    model: str = MODEL,
    paced: bool = True,
    final: bool = True,
    read_timeout: float = 60.0,
) -> StreamResult:
    """Open a session, send `seconds` of audio in frames (at real-time pace when `paced`), commit, and
    read until `transcription.done` (or the server closes)."""
    result = StreamResult()
    async with session.ws_connect(url, headers=auth_headers(key), max_msg_size=0) as ws:
        first = await ws.receive(timeout=read_timeout)
        if first.type == aiohttp.WSMsgType.TEXT:
            result.created = json.loads(first.data)
        await ws.send_str(json.dumps({"type": "session.update", "model": model}))
        await ws.send_str(json.dumps({"type": "input_audio_buffer.commit", "final": False}))
        started = time.monotonic()
        frames = max(1, round(seconds / frame_seconds))
        payload = frame(frame_seconds)
        sent_at: list[float] = []

        async def send() -> None:
            for index in range(frames):
                if paced:
                    await asyncio.sleep(max(0.0, started + index * frame_seconds - time.monotonic()))
                await ws.send_str(payload)
                sent_at.append(time.monotonic())
            if final:
                await ws.send_str(json.dumps({"type": "input_audio_buffer.commit", "final": True}))

        sender = asyncio.create_task(send())
        try:
            async with asyncio.timeout(read_timeout):
                while True:
                    message = await ws.receive()
                    if message.type == aiohttp.WSMsgType.CLOSE:
                        result.close_code, result.close_reason = message.data, message.extra or ""
                        break
                    if message.type != aiohttp.WSMsgType.TEXT:
                        result.close_code = ws.close_code
                        break
                    event = json.loads(message.data)
                    kind = event.get("type")
                    if kind == "transcription.delta":
                        now = time.monotonic()
                        result.deltas.append(event["delta"])
                        token = int(event["delta"].strip().removeprefix("w"))
                        # The frame holding the word's last audio token.
                        index = min(len(sent_at) - 1, int(token * TOKEN_SECONDS / frame_seconds - 1e-9))
                        if index >= 0:
                            result.delta_latencies.append(now - sent_at[index])
                    elif kind == "transcription.done":
                        result.done = event
                        break
                    elif kind == "error":
                        result.errors.append(event)
        finally:
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
        await ws.close()
    return result
