"""The simulator speaks vLLM 0.33's realtime protocol (WebSocket /v1/realtime) as the contract has it."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
from typing import Any

import aiohttp
import pytest

from tests.integration import test_gateway
from tests.integration.test_gateway import start_sim
from voxtral_testbed.realtime_client import MODEL, auth_headers, frame, stream

pytestmark = pytest.mark.integration
KEY = "sk-realtime"


session = test_gateway.session
simulators = test_gateway.simulators


@pytest.fixture
async def simulator(simulators: list[subprocess.Popen[bytes]], session: aiohttp.ClientSession) -> int:
    return await start_sim(simulators, session, "--model", MODEL, "--api-key", KEY, "--max-num-seqs", "1")


async def _events(ws: aiohttp.ClientWebSocketResponse, *sent: Any) -> list[dict[str, Any]]:
    """Send each event (a dict as JSON, a str as is) and collect what comes back within a moment."""
    for event in sent:
        await ws.send_str(event if isinstance(event, str) else json.dumps(event))
    got = []
    while True:
        try:
            message = await ws.receive(timeout=0.5)
        except TimeoutError:
            return got
        got.append(json.loads(message.data))


async def _metric(session: aiohttp.ClientSession, port: int, name: str) -> float:
    async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
        for line in (await response.text()).splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
    return -1.0


async def test_the_key_is_checked_on_the_upgrade(simulator: int, session: aiohttp.ClientSession) -> None:
    url = f"ws://127.0.0.1:{simulator}/v1/realtime"
    for headers in ({}, auth_headers("wrong")):
        with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
            await session.ws_connect(url, headers=headers)
        assert caught.value.status == 401
    assert await _metric(session, simulator, "vllm:websocket_connections_total") == 0


async def test_a_session_streams_text_behind_the_audio_and_ends_with_usage(
    simulator: int, session: aiohttp.ClientSession
) -> None:
    result = await stream(session, f"ws://127.0.0.1:{simulator}/v1/realtime", key=KEY, seconds=1.6)
    assert result.created is not None
    assert set(result.created) == {"type", "id", "created"}
    assert result.deltas == ["w5", " w10", " w15", " w20"]
    assert result.done == {
        "type": "transcription.done",
        "text": "w5 w10 w15 w20",
        "usage": {"prompt_tokens": 20, "completion_tokens": 4, "total_tokens": 24},
    }
    # Paced: a word comes the model's delay (480 ms) after its audio (the last ones when the audio ends).
    assert min(result.delta_latencies[:2]) >= 0.45, result.delta_latencies
    assert await _metric(session, simulator, "vllm:websocket_connections_total") == 1
    assert await _metric(session, simulator, "vllm:websocket_connections_active") == 0
    assert await _metric(session, simulator, "vllm:websocket_connection_duration_seconds_count") == 1


async def test_every_error_code(simulator: int, session: aiohttp.ClientSession) -> None:
    url = f"ws://127.0.0.1:{simulator}/v1/realtime"
    async with session.ws_connect(url, headers=auth_headers(KEY)) as ws:
        created = json.loads((await ws.receive(timeout=5)).data)
        assert created["type"] == "session.created"
        assert await _metric(session, simulator, "vllm:websocket_connections_active") == 1
        got = await _events(
            ws,
            "{not json",
            ["a list"],
            {"type": "response.create"},
            {"type": "input_audio_buffer.commit"},
            {"type": "session.update"},
            {"type": "session.update", "model": "other/model"},
            {"type": "input_audio_buffer.append", "audio": ""},
            {"type": "input_audio_buffer.append", "audio": "!!not base64!!"},
            {"type": "input_audio_buffer.append", "audio": base64.b64encode(b"\0\0\0").decode()},
        )
        codes = [event["code"] for event in got]
        assert codes == [
            "invalid_json",
            "invalid_event",
            "unknown_event",
            "model_not_validated",
            "invalid_event",
            "model_not_found",
            "invalid_audio",
            "invalid_audio",
            "invalid_audio",
        ]
        assert all(event["type"] == "error" and event["error"] for event in got)
        # Validated: a commit starts the generation, a second one while it runs is ignored, final ends it.
        got = await _events(
            ws,
            {"type": "session.update", "model": MODEL},
            {"type": "input_audio_buffer.commit", "final": False},
            frame(1.0),
            {"type": "input_audio_buffer.commit"},
            {"type": "input_audio_buffer.commit", "final": True},
        )
        assert [e["type"] for e in got] == ["transcription.delta"] * 3 + ["transcription.done"], got


async def test_sessions_beyond_max_num_seqs_wait_like_requests(simulator: int, session: aiohttp.ClientSession) -> None:
    url = f"ws://127.0.0.1:{simulator}/v1/realtime"
    start = [{"type": "session.update", "model": MODEL}, {"type": "input_audio_buffer.commit"}]
    async with session.ws_connect(url, headers=auth_headers(KEY)) as first:
        await _events(first, *start)
        async with session.ws_connect(url, headers=auth_headers(KEY)) as second:
            await _events(second, *start, frame(1.0))
            assert await _metric(session, simulator, "vllm:num_requests_running") == 1
            assert await _metric(session, simulator, "vllm:num_requests_waiting") == 1
            await _events(first, {"type": "input_audio_buffer.commit", "final": True})
            got = await _events(second, {"type": "input_audio_buffer.commit", "final": True})
            await asyncio.sleep(0)
            assert got[-1]["type"] == "transcription.done", got
    assert await _metric(session, simulator, "vllm:num_requests_running") == 0


async def test_other_models_serve_no_realtime_route(
    simulators: list[subprocess.Popen[bytes]], session: aiohttp.ClientSession
) -> None:
    port = await start_sim(simulators, session, "--model", "mistralai/Voxtral-Mini-3B-2507")
    async with session.get(f"http://127.0.0.1:{port}/v1/realtime") as response:
        assert response.status == 404


async def test_an_engine_failure_mid_stream_is_a_processing_error(
    simulators: list[subprocess.Popen[bytes]], session: aiohttp.ClientSession
) -> None:
    port = await start_sim(simulators, session, "--model", MODEL, "--realtime-fail-after-tokens", "10")
    async with session.ws_connect(f"ws://127.0.0.1:{port}/v1/realtime") as ws:
        await ws.receive(timeout=5)  # session.created
        start = [{"type": "session.update", "model": MODEL}, {"type": "input_audio_buffer.commit"}]
        got = await _events(ws, *start, frame(1.5))
    assert got[-1]["type"] == "error", got
    assert got[-1]["code"] == "processing_error", got
    assert "transcription.done" not in [e["type"] for e in got]
