"""The vLLM simulator honours vLLM's contract, and the official OpenAI SDK works against it unchanged."""

from __future__ import annotations

import asyncio
import io
import json
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
import wave
from collections.abc import Iterator

import openai
import pytest

from voxtral_operator.autoscale.scrape import parse_queue_metrics
from voxtral_testbed.harness import free_port, start_simulator

pytestmark = pytest.mark.integration
API_KEY = "sk-test-key"


def _start(*args: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    process = start_simulator("127.0.0.1", port, *args)
    return process, port


def _wait_listening(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError("the simulator never listened")


def _get(port: int, path: str, key: str | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _wav(seconds: float = 1.0) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16000)
        out.writeframes(b"\0\0" * int(16000 * seconds))
    return buffer.getvalue()


@pytest.fixture
def simulator() -> Iterator[int]:
    process, port = _start(
        "--api-key", API_KEY, "--max-num-seqs", "2", "--request-seconds", "0.3", "--served-model-name", "voxtral-mini"
    )
    _wait_listening(port)
    yield port
    process.terminate()
    process.wait(timeout=10)


def test_refuses_connections_while_loading_then_healthy() -> None:
    process, port = _start("--load-seconds", "1.5")
    try:
        time.sleep(0.5)
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", port)) != 0  # refused: nothing listens while loading
        _wait_listening(port)
        assert _get(port, "/health") == (200, b"")
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_engine_death_answers_503_then_exits() -> None:
    process, port = _start("--die-after", "0.5")
    try:
        _wait_listening(port)
        deadline = time.monotonic() + 5
        while _get(port, "/health")[0] != 503:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert process.wait(timeout=10) != 0
    finally:
        if process.poll() is None:
            process.kill()


def test_auth_exactly_where_vllm_enforces_it(simulator: int) -> None:
    assert _get(simulator, "/v1/models") == (401, b'{"error": "Unauthorized"}')
    status, body = _get(simulator, "/v1/models", API_KEY)
    assert status == 200
    assert b'"voxtral-mini"' in body
    for open_path in ("/health", "/metrics", "/ping", "/version", "/load"):
        assert _get(simulator, open_path)[0] == 200, open_path
    assert _get(simulator, "/version")[1] == b'{"version": "0.33.0"}'


def _post(port: int, path: str, body: dict[str, object]) -> tuple[int, bytes]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_inference_outside_v1_answers_without_the_key_as_vllm_does(simulator: int) -> None:
    # The hole the gateway closes: vLLM checks keys only under /v1.
    status, body = _post(simulator, "/invocations", {"messages": [{"role": "user", "content": "hi"}]})
    assert status == 200
    assert json.loads(body)["object"] == "chat.completion"
    assert _post(simulator, "/tokenize", {"prompt": "hello there"})[0] == 200
    assert _post(simulator, "/v1/completions", {"prompt": "hello"})[0] == 401


def test_completions_and_streams_through_the_sdk(simulator: int) -> None:
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{simulator}/v1", api_key=API_KEY, max_retries=0)
    assert client.completions.create(model="voxtral-mini", prompt="Once").choices[0].text
    stream = client.chat.completions.create(
        model="voxtral-mini",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.startswith("simulated answer")
    assert len([c for c in chunks if c.choices]) > 1  # word by word, not one block
    usage = chunks[-1].usage
    assert usage is not None
    assert usage.completion_tokens > 0


def test_openai_sdk_transcription_audio_chat_and_function_calling(simulator: int) -> None:
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{simulator}/v1", api_key=API_KEY, max_retries=0)
    transcript = client.audio.transcriptions.create(
        model="voxtral-mini", file=("call.wav", _wav(), "audio/wav"), language="en", temperature=0.0
    )
    assert transcript.text.startswith("simulated transcript of call.wav")

    import base64

    audio = {"type": "input_audio", "input_audio": {"data": base64.b64encode(_wav()).decode(), "format": "wav"}}
    chat = client.chat.completions.create(
        model="voxtral-mini",
        messages=[{"role": "user", "content": [audio, {"type": "text", "text": "What is said?"}]}],
        temperature=0.2,
        top_p=0.95,
    )
    assert chat.choices[0].message.content == "simulated answer about 1 audio(s)"

    tools = [
        {
            "type": "function",
            "function": {
                "name": "book_meeting",
                "description": "Book a meeting",
                "parameters": {"type": "object", "properties": {}},
            },
        }
    ]
    called = client.chat.completions.create(
        model="voxtral-mini", messages=[{"role": "user", "content": [audio]}], tools=tools, tool_choice="auto"
    )
    (tool_call,) = called.choices[0].message.tool_calls or []
    assert tool_call.function.name == "book_meeting"
    assert called.choices[0].finish_reason == "tool_calls"


@pytest.fixture
def slow_simulator() -> Iterator[int]:
    """Two slots and 2 s a request: the queue of a burst lasts long enough to be seen on a busy machine."""
    process, port = _start(
        "--api-key", API_KEY, "--max-num-seqs", "2", "--request-seconds", "2", "--served-model-name", "voxtral-mini"
    )
    _wait_listening(port)
    yield port
    process.terminate()
    process.wait(timeout=10)


def test_requests_beyond_max_num_seqs_queue_and_show_in_metrics(slow_simulator: int) -> None:
    simulator = slow_simulator

    async def burst() -> list[tuple[float, float]]:
        client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{simulator}/v1", api_key=API_KEY, max_retries=0)
        calls = [
            client.chat.completions.create(model="voxtral-mini", messages=[{"role": "user", "content": "hi"}])
            for _ in range(6)
        ]
        tasks = [asyncio.ensure_future(c) for c in calls]
        seen: list[tuple[float, float]] = []
        # Until all six have arrived (or the first batch is done): the peak is 2 running, 4 waiting.
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline and (2.0, 4.0) not in seen:
            sample = parse_queue_metrics((await asyncio.to_thread(_get, simulator, "/metrics"))[1].decode())
            assert sample is not None
            seen.append((sample.running, sample.waiting))
            await asyncio.sleep(0.05)
        await asyncio.gather(*tasks)
        await client.close()
        return seen

    seen = asyncio.run(burst())
    assert (2.0, 4.0) in seen, f"(running, waiting) samples during the burst: {seen}"
    text = _get(simulator, "/metrics")[1].decode()
    for series in (
        "vllm:num_requests_waiting{",
        "vllm:kv_cache_usage_perc{",
        "vllm:e2e_request_latency_seconds_bucket{",
        "vllm:request_success_total{",
        "python_gc_objects_collected_total",
        "process_cpu_seconds_total",
        "http_requests_total{",
    ):
        assert series in text, series
    assert 'engine="0"' in text
    assert 'model_name="voxtral-mini"' in text


def test_sigterm_drains_running_requests_and_refuses_new_ones() -> None:
    process, port = _start("--shutdown-timeout", "5", "--request-seconds", "1.5")
    try:
        _wait_listening(port)

        async def drain() -> tuple[int, int]:
            client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0)
            running = asyncio.ensure_future(
                client.chat.completions.create(model="m", messages=[{"role": "user", "content": "long"}])
            )
            await asyncio.sleep(0.3)
            process.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.2)
            refused = await asyncio.to_thread(_get, port, "/v1/models")
            health = await asyncio.to_thread(_get, port, "/health")
            result = await running
            await client.close()
            assert result.choices[0].message.content
            return refused[0], health[0]

        refused, health = asyncio.run(drain())
        assert refused == 503
        assert health == 200  # still healthy while draining, as vLLM
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()


def test_parser_reads_vllm_text_and_skips_the_rest() -> None:
    text = "\n".join(
        [
            "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.",
            "# TYPE vllm:num_requests_waiting gauge",
            'vllm:num_requests_waiting{engine="0",model_name="mistralai/Voxtral-Small-24B-2507"} 7.0',
            'vllm:num_requests_waiting{engine="1",model_name="mistralai/Voxtral-Small-24B-2507"} 1.0',
            'vllm:num_requests_waiting_by_reason{engine="0",model_name="m",reason="capacity"} 99.0',
            'vllm:num_requests_running{engine="0",model_name="mistralai/Voxtral-Small-24B-2507"} 12.0',
            'vllm:kv_cache_usage_perc{engine="0",model_name="mistralai/Voxtral-Small-24B-2507"} 0.8342',
            'python_gc_objects_collected_total{generation="0"} 1234.0',
            "process_cpu_seconds_total 12.5",
            'vllm:num_requests_running_created{engine="0",model_name="m"} 1.7e+09',
        ]
    )
    sample = parse_queue_metrics(text)
    assert sample is not None
    assert (sample.waiting, sample.running) == (8.0, 12.0)
    assert parse_queue_metrics("process_cpu_seconds_total 1.0\n") is None
