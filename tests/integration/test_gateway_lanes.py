"""The deferrable lane through the gateway process and the vLLM simulator over loopback: how callers
mark work, what the gateway refuses, what it sends vLLM, and that interactive requests never queue
behind deferrable ones."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import aiohttp.web
import pytest

from tests.integration.test_gateway import (
    Gateway,
    form,
    gateways,
    kube,
    put_slice,
    sandbox,
    session,
    simulators,
    start_gateway,
    start_sim,
    wav,
)
from voxtral_operator.gateway import metrics as names
from voxtral_operator.gateway.app import Gateway as InProcessGateway
from voxtral_operator.gateway.app import Settings, serve_api
from voxtral_operator.gateway.dispatch import Dispatcher
from voxtral_operator.gateway.sources import Sources
from voxtral_testbed.harness import Kube, eventually, free_port
from voxtral_testbed.sandbox import Sandbox

pytestmark = pytest.mark.integration
__all__ = ["gateways", "kube", "sandbox", "session", "simulators"]  # fixtures

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def flex_form(clip: bytes) -> aiohttp.FormData:
    data = aiohttp.FormData()
    data.add_field("service_tier", "flex")  # before the file, as the OpenAI SDK (httpx) sends fields
    data.add_field("file", clip, filename="clip.wav", content_type="audio/wav")
    data.add_field("model", "mistralai/Voxtral-Mini-3B-2507")
    return data


Serve = Callable[..., Awaitable[Gateway]]


@pytest.fixture
def serve(
    sandbox: Sandbox,
    kube: Kube,
    session: aiohttp.ClientSession,
    gateways: list[Gateway],
    simulators: Any,
    tmp_path: Path,
) -> Serve:
    """A gateway in front of one simulated replica started with `simulator_args` (None: the one there)."""

    async def start(simulator_args: tuple[str, ...] | None, *gateway_args: str) -> Gateway:
        if simulator_args is not None:
            await put_slice(kube, "mini-a", await start_sim(simulators, session, *simulator_args))
        gateway = await start_gateway(gateways, sandbox, tmp_path, session, *gateway_args)
        await eventually(lambda: gateway.metric(session, names.READY_REPLICAS), timeout=10)
        return gateway

    return start


async def lane_metric(gateway: Gateway, session: aiohttp.ClientSession, name: str, lane: str) -> float:
    return await gateway.metric(session, name, f'lane="{lane}"')


async def interactive_beside_the_backlog(
    gateway: Gateway, session: aiohttp.ClientSession, url: str, clip: bytes, count: int
) -> tuple[float, float]:
    """(the most deferrable requests in flight seen, the interactive lane's total queue wait) while `count`
    interactive requests of `clip`, one after another, each answered 200, run beside a deferrable backlog."""
    await eventually(lambda: lane_metric(gateway, session, names.LANE_QUEUED_REQUESTS, "deferrable"), timeout=10)
    most_deferrable = 0.0
    for _ in range(count):
        most_deferrable = max(
            most_deferrable, await lane_metric(gateway, session, names.LANE_INFLIGHT_REQUESTS, "deferrable")
        )
        async with session.post(url, data=form(clip)) as response:
            assert response.status == 200, await response.text()
    waited = await gateway.metric(session, names.LANE_QUEUE_WAIT_SECONDS + "_sum", 'lane="interactive"')
    return most_deferrable, waited


async def test_interactive_requests_never_wait_behind_a_deferrable_backlog(
    serve: Serve, kube: Kube, session: aiohttp.ClientSession, simulators: Any
) -> None:
    gateway = await serve(("--max-num-seqs", "8", "--request-seconds", "0.5"), "--max-inflight-per-replica", "8")
    url = f"{gateway.url}/v1/audio/transcriptions"
    backlog = [asyncio.create_task(session.post(url, data=flex_form(wav(30)))) for _ in range(80)]
    most_deferrable, waited = await interactive_beside_the_backlog(gateway, session, url, wav(5), 6)
    assert most_deferrable == 7, f"deferrable requests in flight: {most_deferrable}, not 8 slots less 1 of headroom"
    # Each interactive request found a free slot at once: its time in the gateway's queue is no wait at all
    # (the machine's load cannot lengthen it: a free slot is taken without yielding to the event loop).
    assert waited < 0.05 * 6, f"interactive requests waited {waited:.3f}s in all in the gateway's queue"
    assert await lane_metric(gateway, session, names.LANE_QUEUED_REQUESTS, "deferrable") > 0  # the backlog remained
    for response in await asyncio.gather(*backlog):
        assert response.status == 200, await response.text()
        response.release()
    assert await lane_metric(gateway, session, names.LANE_ADMITTED_TOTAL, "deferrable") == 80
    assert await lane_metric(gateway, session, names.LANE_ADMITTED_TOTAL, "interactive") == 6


async def test_long_deferrable_recordings_are_bounded_by_the_replicas_kv_cache(
    serve: Serve, kube: Kube, session: aiohttp.ClientSession, simulators: Any
) -> None:
    # 30-minute recordings: 22,500 audio tokens, the 64-token prompt and 7,200 of transcript = 29,764 each.
    # This pod's share of the replica's KV cache, 70,000 tokens, holds 2 of them; slots would take 7.
    gateway = await serve(
        ("--max-num-seqs", "8", "--request-seconds", "0.5"),
        "--max-inflight-per-replica",
        "8",
        "--kv-cache-tokens-per-replica",
        "70000",
    )
    url = f"{gateway.url}/v1/audio/transcriptions"
    backlog = [asyncio.create_task(session.post(url, data=flex_form(wav(1800)))) for _ in range(12)]
    # Interactive work is not bound by the estimate: a long interactive recording starts at once too, taking
    # back a deferrable one (sent again later) where it does not fit beside them.
    most_deferrable, waited = await interactive_beside_the_backlog(gateway, session, url, wav(1800), 4)
    assert most_deferrable == 2, f"deferrable requests in flight: {most_deferrable}, not the 2 the KV share holds"
    assert waited < 0.05 * 4, f"interactive requests waited {waited:.3f}s in all in the gateway's queue"
    for response in await asyncio.gather(*backlog):
        assert response.status == 200, await response.text()
        response.release()
    assert await lane_metric(gateway, session, names.LANE_ADMITTED_TOTAL, "deferrable") == 12


async def sim_metric(session: aiohttp.ClientSession, port: int, name: str, labels: str) -> float:
    """The simulator's first sample of `name` whose labels include `labels` (0 when it has none yet)."""
    async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
        for line in (await response.text()).splitlines():
            if line.startswith(name + "{") and labels in line:
                return float(line.rsplit(" ", 1)[1])
    return 0.0


async def one_replica_with_a_50000_token_share(
    serve: Serve, kube: Kube, session: aiohttp.ClientSession, simulators: Any, seconds: str, *gateway_args: str
) -> tuple[int, Gateway, str]:
    """(the simulator's port, the gateway, its transcription URL): one replica taking `seconds` a request, in
    front of it a gateway giving each pod a 50,000-token share of its KV cache: one 30-minute recording
    (29,764 tokens by its header) fits beside another, a second does not."""
    port = await start_sim(simulators, session, "--max-num-seqs", "8", "--request-seconds", seconds)
    await put_slice(kube, "mini-a", port)
    args = ("--max-inflight-per-replica", "8", "--kv-cache-tokens-per-replica", "50000", *gateway_args)
    gateway = await serve(None, *args)
    return port, gateway, f"{gateway.url}/v1/audio/transcriptions"


async def test_an_interactive_request_takes_back_deferrable_work_its_kv_tokens_need_and_it_is_sent_again(
    serve: Serve, kube: Kube, session: aiohttp.ClientSession, simulators: Any
) -> None:
    # One deferrable 30-minute recording fits the share; an interactive one beside it does not: it takes it back.
    port, gateway, url = await one_replica_with_a_50000_token_share(serve, kube, session, simulators, "3")
    recording = wav(1800, actual_bytes=300_000)  # past the 64 KiB the gateway reads first: it streams, and is kept
    deferrable = asyncio.create_task(session.post(url, data=flex_form(recording)))
    await eventually(lambda: lane_metric(gateway, session, names.LANE_INFLIGHT_REQUESTS, "deferrable"), timeout=10)
    await eventually(lambda: sim_metric(session, port, "vllm:num_requests_running", ""), timeout=10)
    async with session.post(url, data=form(wav(1800))) as response:
        assert response.status == 200, await response.text()
    response = await deferrable
    assert response.status == 200, await response.text()
    answer = await response.json()
    response.release()
    # The replica transcribed the whole upload the second time: the gateway kept the body it had streamed.
    assert f"({len(recording)} bytes)" in answer["text"], answer
    assert await gateway.metric(session, names.DEFERRABLE_TAKEN_BACK_TOTAL) == 1
    assert await sim_metric(session, port, "vllm:request_success_total", 'finished_reason="abort"') == 1
    assert await sim_metric(session, port, "vllm:request_success_total", 'finished_reason="stop"') == 2
    assert await lane_metric(gateway, session, names.LANE_ADMITTED_TOTAL, "deferrable") == 1  # admitted once


def _transcription(deferrable: bool) -> dict[str, Any]:
    return {"data": flex_form(wav(30)) if deferrable else form(wav(5))}


def _streamed_chat(deferrable: bool) -> dict[str, Any]:
    return {"json": {**CHAT, "stream": True, **({"service_tier": "flex"} if deferrable else {})}}


@pytest.mark.parametrize(
    ("route", "request_of"),
    [("/v1/audio/transcriptions", _transcription), ("/v1/chat/completions", _streamed_chat)],
    ids=["transcriptions", "streamed-chat"],
)
async def test_a_gateway_reading_vllms_waiting_count_takes_back_what_an_interactive_request_waits_behind(
    serve: Serve,
    kube: Kube,
    session: aiohttp.ClientSession,
    simulators: Any,
    route: str,
    request_of: Callable[[bool], dict[str, Any]],
) -> None:
    # vLLM runs one request at a time here; the gateway, sending up to 8, learns that one waits only from the
    # replica's vllm:num_requests_waiting. No KV size is given: nothing is taken back by the count, and
    # without the reads the interactive request would wait the deferrable one's 3 s out and finish after it.
    # Streamed, both requests' headers come back before vLLM schedules them (as vLLM sends them): until its
    # first event a stream counts as unanswered, the interactive one a suspect, the deferrable one taken back.
    port = await start_sim(simulators, session, "--max-num-seqs", "1", "--request-seconds", "3")
    await put_slice(kube, "mini-a", port)
    gateway = await serve(None, "--max-inflight-per-replica", "8", "--take-back-read-seconds", "0.2")
    url = f"{gateway.url}{route}"
    finished: list[str] = []

    async def send(lane: str) -> None:
        async with session.post(url, **request_of(lane == "deferrable")) as response:
            assert response.status == 200, await response.text()
            answer = await response.text()
        if route == "/v1/chat/completions":
            assert answer.rstrip().endswith("data: [DONE]"), answer
        finished.append(lane)

    deferrable = asyncio.create_task(send("deferrable"))
    await eventually(lambda: sim_metric(session, port, "vllm:num_requests_running", ""), timeout=10)
    await send("interactive")
    await deferrable
    taken_back = await gateway.metric(session, names.DEFERRABLE_TAKEN_BACK_TOTAL)
    aborted = await sim_metric(session, port, "vllm:request_success_total", 'finished_reason="abort"')
    # Taken back within a read of the interactive request waiting; sent again behind it, and not taken again.
    assert (finished, taken_back, aborted) == (["interactive", "deferrable"], 1, 1)
    assert await sim_metric(session, port, "vllm:request_success_total", 'finished_reason="stop"') == 2
    reads = [await gateway.metric(session, names.WAITING_READS_TOTAL, f'result="{r}"') for r in ("read", "failed")]
    assert reads[0] >= 1, f"waiting-count reads (read, failed): {reads}"
    assert reads[1] == 0, f"waiting-count reads (read, failed): {reads}"


async def test_a_replica_whose_waiting_count_cannot_be_read_is_counted_and_nothing_is_taken_back(
    serve: Serve, kube: Kube, session: aiohttp.ClientSession
) -> None:
    # A replica that serves requests but answers /metrics with 500: the pod cannot tell whether its
    # interactive request waits, so it takes nothing back, and says so in its failed reads.
    release = asyncio.Event()
    arrived: list[str] = []
    requests: list[asyncio.Task[aiohttp.ClientResponse]] = []

    async def transcribe(request: aiohttp.web.Request) -> aiohttp.web.Response:
        await request.read()
        arrived.append(request.path)
        await release.wait()
        return aiohttp.web.json_response({"text": "ok"})

    async def metrics_fail(request: aiohttp.web.Request) -> aiohttp.web.Response:
        return aiohttp.web.Response(status=500, text="metrics unavailable")

    async def healthy(request: aiohttp.web.Request) -> aiohttp.web.Response:
        return aiohttp.web.Response(text="ok")

    app = aiohttp.web.Application()
    app.router.add_post("/v1/audio/transcriptions", transcribe)
    app.router.add_get("/metrics", metrics_fail)
    app.router.add_get("/health", healthy)
    runner = aiohttp.web.AppRunner(app)
    await runner.setup()
    site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        await put_slice(kube, "mini-a", port)
        gateway = await serve(None, "--max-inflight-per-replica", "8", "--take-back-read-seconds", "0.2")
        url = f"{gateway.url}/v1/audio/transcriptions"

        async def sent(count: int) -> bool:
            return len(arrived) >= count

        async def failed_reads() -> float:
            return await gateway.metric(session, names.WAITING_READS_TOTAL, 'result="failed"')

        deferrable = asyncio.create_task(session.post(url, data=flex_form(wav(30))))
        requests.append(deferrable)
        await eventually(lambda: sent(1), timeout=10)
        interactive = asyncio.create_task(session.post(url, data=form(wav(5))))
        requests.append(interactive)
        await eventually(lambda: sent(2), timeout=10)
        await eventually(failed_reads, timeout=10)
        release.set()
        for task in (deferrable, interactive):
            async with await task as response:
                assert response.status == 200, await response.text()
        assert await gateway.metric(session, names.DEFERRABLE_TAKEN_BACK_TOTAL) == 0
        assert await gateway.metric(session, names.WAITING_READS_TOTAL, 'result="read"') == 0
        assert arrived == ["/v1/audio/transcriptions"] * 2  # neither sent twice
    finally:
        release.set()
        for task in requests:
            task.cancel()
        await runner.cleanup()


async def test_a_deferrable_upload_taken_back_mid_stream_is_sent_again_whole(
    serve: Serve, kube: Kube, session: aiohttp.ClientSession, simulators: Any
) -> None:
    port, gateway, url = await one_replica_with_a_50000_token_share(serve, kube, session, simulators, "1")
    recording = wav(1800, actual_bytes=400_000)
    boundary = "lanes-test-boundary"
    head = "".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
        for name, value in (("service_tier", "flex"), ("model", "mistralai/Voxtral-Mini-3B-2507"))
    )
    head += f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="clip.wav"\r\n'
    body = (head + "Content-Type: audio/wav\r\n\r\n").encode() + recording + f"\r\n--{boundary}--\r\n".encode()
    rest_may_come = asyncio.Event()

    async def upload() -> AsyncIterator[bytes]:
        """Half the body, then the rest only once the request was taken back half-way through its upload."""
        half = len(body) // 2
        for start in range(0, half, 32768):
            yield body[start : min(start + 32768, half)]
        await rest_may_come.wait()
        for start in range(half, len(body), 32768):
            yield body[start : start + 32768]

    deferrable = asyncio.create_task(
        session.post(url, data=upload(), headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    )
    await eventually(lambda: lane_metric(gateway, session, names.LANE_INFLIGHT_REQUESTS, "deferrable"), timeout=10)
    interactive = asyncio.create_task(session.post(url, data=form(wav(1800))))
    await eventually(lambda: gateway.metric(session, names.DEFERRABLE_TAKEN_BACK_TOTAL), timeout=10)
    rest_may_come.set()
    async with await interactive as response:
        assert response.status == 200, await response.text()
    async with await deferrable as response:
        assert response.status == 200, await response.text()
        answer = await response.json()
    assert f"({len(recording)} bytes)" in answer["text"], answer  # every byte, each once
    assert await sim_metric(session, port, "vllm:request_success_total", 'finished_reason="stop"') == 2


async def test_a_deferrable_body_beyond_the_resend_buffers_is_not_taken_back(
    serve: Serve, kube: Kube, session: aiohttp.ClientSession, simulators: Any
) -> None:
    port, gateway, url = await one_replica_with_a_50000_token_share(
        serve, kube, session, simulators, "2", "--resend-buffer-mb", "0.1"
    )
    deferrable = asyncio.create_task(session.post(url, data=flex_form(wav(1800, actual_bytes=300_000))))
    await eventually(lambda: sim_metric(session, port, "vllm:num_requests_running", ""), timeout=10)
    async with session.post(url, data=form(wav(1800))) as response:
        assert response.status == 200, await response.text()
    response = await deferrable
    assert response.status == 200, await response.text()
    response.release()
    assert await gateway.metric(session, names.DEFERRABLE_TAKEN_BACK_TOTAL) == 0
    assert await sim_metric(session, port, "vllm:request_success_total", 'finished_reason="abort"') == 0


async def test_flex_chat_carries_a_lower_priority_only_where_vllm_schedules_by_it(
    serve: Serve, kube: Kube, session: aiohttp.ClientSession, simulators: Any
) -> None:
    # vLLM without the priority policy refuses a nonzero priority: the gateway must send none.
    plain = await serve(("--request-seconds", "0.01"))
    async with session.post(f"{plain.url}/v1/chat/completions", json={**CHAT, "service_tier": "flex"}) as response:
        assert response.status == 200, await response.text()
    # The gateway told to set it: a replica without the policy says it got one.
    priority = await serve(None, "--deferrable-priority", "10")
    async with session.post(f"{priority.url}/v1/chat/completions", json={**CHAT, "service_tier": "flex"}) as response:
        assert response.status == 400, await response.text()
        assert "priority" in (await response.text())
    async with session.post(f"{priority.url}/v1/chat/completions", json=CHAT) as response:
        assert response.status == 200, await response.text()  # interactive requests carry none
    # Bodies that stream (their tier named early, the rest past the prefix) get the gateway's member last:
    # vLLM reads the last of duplicate members, so one spelt with an escape, which the gateway cannot
    # find in a stream, is overridden (here the replica would refuse its 5, and takes the gateway's 0).
    pad = "x" * 100_000
    for tier, sneaked, status in (("auto", ', "priorit\\u0079": 5', 200), ("flex", "", 400)):
        head = f'{{"service_tier": "{tier}", "model": "m", "messages": [{{"role": "user", "content": "hi"}}], '
        streamed = f'{head}"pad": "{pad}"{sneaked}}}  '.encode()
        async with session.post(
            f"{priority.url}/v1/chat/completions",
            data=_in_pieces(streamed, 8192),
            headers={"Content-Type": "application/json"},
        ) as response:
            assert response.status == status, (tier, await response.text())
    scheduled = await start_sim(simulators, session, "--request-seconds", "0.01", "--scheduling-policy", "priority")
    await put_slice(kube, "mini-a", scheduled)  # the gateway follows the slice: the next requests go there
    await eventually(lambda: _chat_ok(session, priority.url, {**CHAT, "service_tier": "flex"}), timeout=10)
    # An interactive caller's own priority would run ahead of everyone's work: refused too.
    async with session.post(f"{priority.url}/v1/chat/completions", json={**CHAT, "priority": -100}) as response:
        assert response.status == 400
        assert (await response.json())["error"]["code"] == "priority_not_allowed"
    # A caller's own priority on a flex request would undo the lane: refused.
    own = {**CHAT, "service_tier": "flex", "priority": -100}
    async with session.post(f"{priority.url}/v1/chat/completions", json=own) as response:
        assert response.status == 400
        assert (await response.json())["error"]["code"] == "priority_not_allowed"


async def _chat_ok(session: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> bool:
    async with session.post(f"{url}/v1/chat/completions", json=body) as response:
        return response.status == 200


async def test_what_the_gateway_cannot_read_unambiguously_it_refuses(
    serve: Serve, kube: Kube, session: aiohttp.ClientSession, simulators: Any
) -> None:
    gateway = await serve(("--request-seconds", "0.01"))
    chat = f"{gateway.url}/v1/chat/completions"
    async with session.post(chat, json={**CHAT, "service_tier": "scale"}) as response:
        assert response.status == 400
        assert (await response.json())["error"]["code"] == "invalid_service_tier"
    # A gateway that never reads JSON bodies whole: a tier named after the inline audio, past what was read
    # before dispatch, is too late to honour. One whose budget is spent (below the body's size): the same,
    # but as a 503 to retry, the caller having done nothing wrong.
    audio = {"type": "input_audio", "input_audio": {"data": "A" * 1_000_000, "format": "wav"}}
    late = {"model": "m", "messages": [{"role": "user", "content": [audio]}], "service_tier": "flex"}
    sent = {"data": json.dumps(late), "headers": {"Content-Type": "application/json"}}
    for budget, status, code in (("0", 400, "service_tier_too_late"), ("0.1", 503, "gateway_busy")):
        streams = await serve(None, "--json-buffer-mb", budget)
        async with session.post(f"{streams.url}/v1/chat/completions", **sent) as response:
            assert response.status == status, await response.text()
            assert (await response.json())["error"]["code"] == code
        # It had been dispatched as interactive (its tier unknown) and failed before the replica answered.
        assert await lane_metric(streams, session, names.LANE_ADMITTED_TOTAL, "interactive") == 1
        assert await lane_metric(streams, session, names.LANE_ADMITTED_TOTAL, "deferrable") == 0
    # The multipart field after the file part of a long upload: the same.
    data = aiohttp.FormData()
    data.add_field("file", wav(10, actual_bytes=200_000), filename="clip.wav", content_type="audio/wav")
    data.add_field("service_tier", "flex")
    async with session.post(f"{gateway.url}/v1/audio/transcriptions", data=data) as response:
        assert response.status == 400, await response.text()
        assert (await response.json())["error"]["code"] == "service_tier_too_late"


async def test_a_json_body_naming_its_tier_after_inline_audio_is_read_whole_and_queued_in_its_lane(
    serve: Serve, kube: Kube, session: aiohttp.ClientSession, simulators: Any
) -> None:
    # The OpenAI SDK writes service_tier after messages: past the first 64 KiB when the audio is inline.
    gateway = await serve(("--request-seconds", "0.01", "--scheduling-policy", "priority"))
    chat = f"{gateway.url}/v1/chat/completions"
    audio = {"type": "input_audio", "input_audio": {"data": "A" * 200_000, "format": "wav"}}
    late = {"model": "m", "messages": [{"role": "user", "content": [audio]}], "service_tier": "flex"}
    for chunked in (False, True):
        body = json.dumps(late).encode()
        data: Any = body if not chunked else _in_pieces(body, 8192)
        async with session.post(chat, data=data, headers={"Content-Type": "application/json"}) as response:
            assert response.status == 200, await response.text()
    assert await lane_metric(gateway, session, names.LANE_ADMITTED_TOTAL, "deferrable") == 2
    assert await lane_metric(gateway, session, names.LANE_ADMITTED_TOTAL, "interactive") == 0
    unknown = {**late, "service_tier": "scale"}
    async with session.post(chat, json=unknown) as response:
        assert response.status == 400
        assert (await response.json())["error"]["code"] == "invalid_service_tier"
    # A budget of 0.3 MB holds one such body at a time: it is given back when each request is answered.
    small = await serve(None, "--json-buffer-mb", "0.3")
    for _ in range(3):
        async with session.post(f"{small.url}/v1/chat/completions", json=late) as response:
            assert response.status == 200, await response.text()
    assert await lane_metric(small, session, names.LANE_ADMITTED_TOTAL, "deferrable") == 3
    # Where the gateway sets vLLM's priority, it does so on the whole body; one the caller brings is refused.
    priority = await serve(None, "--deferrable-priority", "10")
    async with session.post(f"{priority.url}/v1/chat/completions", json=late) as response:
        assert response.status == 200, await response.text()
    async with session.post(f"{priority.url}/v1/chat/completions", json={**late, "priority": -5}) as response:
        assert response.status == 400
        assert (await response.json())["error"]["code"] == "priority_not_allowed"


async def _in_pieces(body: bytes, size: int) -> AsyncIterator[bytes]:
    """The body as a chunked upload (no Content-Length), `size` bytes at a time."""
    for start in range(0, len(body), size):
        yield body[start : start + size]


async def test_the_simulator_starts_waiting_requests_lowest_priority_first(
    session: aiohttp.ClientSession, simulators: Any
) -> None:
    port = await start_sim(
        simulators, session, "--max-num-seqs", "1", "--request-seconds", "2", "--scheduling-policy", "priority"
    )
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    finished: list[str] = []

    async def chat(name: str, priority: int) -> None:
        async with session.post(url, json={**CHAT, "priority": priority}) as response:
            assert response.status == 200, await response.text()
        finished.append(name)

    running = asyncio.create_task(chat("running", 0))
    await eventually(lambda: sim_metric(session, port, "vllm:num_requests_running", ""), timeout=5, interval=0.01)
    deferred = asyncio.create_task(chat("deferred", 10))
    await eventually(lambda: sim_metric(session, port, "vllm:num_requests_waiting", ""), timeout=5, interval=0.01)
    interactive = asyncio.create_task(chat("interactive", 0))
    await asyncio.gather(running, deferred, interactive)
    assert finished == ["running", "interactive", "deferred"], finished


async def test_a_deferrable_body_reserves_its_resend_buffer_when_dispatched_not_while_it_waits() -> None:
    # In this process, so the pod's budget and the replica's retractable requests can be read directly.
    size = 1_000_000
    gates: list[asyncio.Event] = []

    async def answer(request: aiohttp.web.Request) -> aiohttp.web.Response:
        await request.read()
        gate = asyncio.Event()
        gates.append(gate)
        await asyncio.wait_for(gate.wait(), 30)
        return aiohttp.web.json_response({})

    backend = aiohttp.web.Application(client_max_size=10 * size)
    backend.router.add_route("*", "/{tail:.*}", answer)
    backend_runner = aiohttp.web.AppRunner(backend, access_log=None)
    await backend_runner.setup()
    backend_port = free_port()
    await aiohttp.web.TCPSite(backend_runner, "127.0.0.1", backend_port).start()
    sources = Sources()
    sources.set_backends([f"127.0.0.1:{backend_port}"])
    dispatcher = Dispatcher(max_inflight=2, max_queue=10, queue_timeout=30)  # one deferrable slot
    settings = Settings(body_timeout=10, max_upload_bytes=5 * size, resend_buffer_bytes=int(2.5 * size))
    gateway = InProcessGateway(sources, dispatcher, settings)
    runner, port = await serve_api(gateway, "127.0.0.1", 0, shutdown_timeout=1)
    address = f"127.0.0.1:{backend_port}"
    body = b'{"service_tier": "flex", "prompt": "' + b"a" * (size - 40) + b'"}'
    requests: list[asyncio.Task[Any]] = []
    try:
        async with aiohttp.ClientSession() as client:
            for count in (1, 2, 3):  # the first one dispatched, the next two wait
                requests.append(asyncio.create_task(client.post(f"http://127.0.0.1:{port}/v1/completions", data=body)))
                await eventually(
                    lambda count=count: asyncio.sleep(0, len(gates) + dispatcher.waiting == count), timeout=15
                )
            held = gateway.resend_buffers.held
            assert held == len(body), f"{held} bytes reserved with one body dispatched and two waiting"
            for finished in (1, 2):  # the third one is dispatched into a budget with room for it
                gates[finished - 1].set()
                await eventually(lambda finished=finished: asyncio.sleep(0, len(gates) > finished), timeout=15)
            retractable = len(dispatcher.replicas[address].retractable)
            assert retractable == 1, f"{retractable} retractable: the third body went out unkept"
            assert gateway.resend_buffers.held == len(body)
            gates[2].set()
            for request in requests:
                async with await request as response:
                    assert response.status == 200, await response.text()
        assert gateway.resend_buffers.held == 0
    finally:
        for gate in gates:
            gate.set()
        for request in requests:
            request.cancel()
        await runner.cleanup()
        await gateway.close()
        await backend_runner.cleanup()
