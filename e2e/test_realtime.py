"""Realtime transcription on a real control plane: Voxtral Mini 4B Realtime (the simulator behind the
`vllm` shim) behind its gateway, reached through the endpoint's Service as a caller in the cluster
reaches it. A session opened at zero replicas is held until the autoscaler's 0 -> 1 and then answered;
a wrong key is refused at the handshake; 50 concurrent sessions stream at real-time pace with keys (on
the H100 pool, where 57 fit one replica); a rollout while streaming ends the old replica's session with
1012 only after the drain time; a scale-up while streaming drops no session; suspend closes open
sessions with a reason saying so."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
import pytest

from voxtral_testbed.realtime_client import MODEL, StreamResult, auth_headers, frame, stream

from .conftest import Kubectl, delete_endpoint, endpoint_body, eventually, service_base_url
from .test_gateway import OLD_KEY, _set_keys, _vllm_pods

pytestmark = pytest.mark.e2e

CONCURRENT = 50  # one gateway pod, 57 sessions per H100 replica: all fit one replica
# A session held at zero replicas waits for the autoscaler, the scheduler and the simulator's start.
HELD_BOUND_SECONDS = 240.0
# Sessions streaming while a replica is added: long enough for it to start and become ready.
SCALE_UP_SESSIONS = 10
SCALE_UP_STREAM_SECONDS = 40.0
# vLLM's drain on SIGTERM, and the gateway's for a leaving replica's sessions.
DRAIN_SECONDS = 5


def _endpoint(name: str, namespace: str, keys: str) -> dict[str, Any]:
    body = endpoint_body(
        name,
        namespace,
        model=MODEL,
        gpu={"type": "H100-80GB"},
        nodePool={"nodeSelector": {"pool": "h100-reserved"}},
        minReplicas=0,
        maxReplicas=2,
        auth={"apiKeysSecretName": keys},
        gateway={"replicas": 1, "holdTimeoutSeconds": int(HELD_BOUND_SECONDS)},
        engine={"shutdownTimeoutSeconds": DRAIN_SECONDS},
        realtime={"idleTimeoutSeconds": 60},
    )
    return body


def _ws_url(base_url: str) -> str:
    return base_url.replace("http://", "ws://").removesuffix("/v1") + "/v1/realtime"


async def _handshake_status(url: str, key: str) -> int:
    async with aiohttp.ClientSession() as session:
        try:
            async with session.ws_connect(url, headers=auth_headers(key)):
                return 101
        except aiohttp.WSServerHandshakeError as exc:
            return exc.status


async def _streams(url: str, count: int, seconds: float) -> list[StreamResult | BaseException]:
    async with aiohttp.ClientSession() as session:
        return await asyncio.gather(
            *(
                stream(session, url, key=OLD_KEY, seconds=seconds, read_timeout=HELD_BOUND_SECONDS)
                for _ in range(count)
            ),
            return_exceptions=True,
        )


def _ready_vllm_pods(kubectl: Kubectl, name: str, namespace: str) -> int:
    ready = 0
    for pod in _vllm_pods(kubectl, name, namespace):
        conditions = (pod.get("status") or {}).get("conditions") or []
        ready += any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
    return ready


async def _scale_up_while_streaming(
    url: str, kubectl: Kubectl, name: str, namespace: str
) -> list[StreamResult | BaseException]:
    """Sessions streaming while a second replica is added and becomes ready: each must end in full."""
    async with aiohttp.ClientSession() as session:
        streams = [
            asyncio.ensure_future(
                stream(session, url, key=OLD_KEY, seconds=SCALE_UP_STREAM_SECONDS, read_timeout=HELD_BOUND_SECONDS)
            )
            for _ in range(SCALE_UP_SESSIONS)
        ]
        await asyncio.sleep(2.0)
        await asyncio.to_thread(kubectl.run, "scale", "vxe", name, "-n", namespace, "--replicas=2")
        await asyncio.to_thread(
            eventually, lambda: _ready_vllm_pods(kubectl, name, namespace) == 2, 120, "a second replica ready"
        )
        return await asyncio.gather(*streams, return_exceptions=True)


async def _rollout_close(url: str, kubectl: Kubectl, name: str, namespace: str) -> tuple[int | None, str, float]:
    """A session streaming at real-time pace while the replica is replaced: (close code, reason, seconds
    from the rollout's start to the close)."""
    async with aiohttp.ClientSession() as session, session.ws_connect(url, headers=auth_headers(OLD_KEY)) as ws:
        first = await ws.receive(timeout=60)
        assert first.type == aiohttp.WSMsgType.TEXT, first
        await ws.send_str(json.dumps({"type": "session.update", "model": MODEL}))
        await ws.send_str(json.dumps({"type": "input_audio_buffer.commit"}))

        async def speak() -> None:
            while True:
                await ws.send_str(frame(0.1))
                await asyncio.sleep(0.1)

        speaker = asyncio.ensure_future(speak())
        await asyncio.sleep(1.0)
        patch = ["patch", "vxe", name, "-n", namespace, "--type=merge", "-p", '{"spec":{"resources":{"cpu":"5"}}}']
        started = time.monotonic()
        await asyncio.to_thread(kubectl.run, *patch)
        try:
            async with asyncio.timeout(120):
                while True:
                    message = await ws.receive()
                    if message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
                        return ws.close_code, str(message.extra or ""), time.monotonic() - started
        finally:
            speaker.cancel()
            await asyncio.gather(speaker, return_exceptions=True)


async def _suspended_close(url: str, kubectl: Kubectl, name: str, namespace: str) -> tuple[int | None, str]:
    async with aiohttp.ClientSession() as session, session.ws_connect(url, headers=auth_headers(OLD_KEY)) as ws:
        first = await ws.receive(timeout=60)
        assert first.type == aiohttp.WSMsgType.TEXT, first
        patch = ["patch", "vxe", name, "-n", namespace, "--type=merge", "-p", '{"spec":{"suspended":true}}']
        await asyncio.to_thread(kubectl.run, *patch)
        async with asyncio.timeout(60):
            while True:
                message = await ws.receive()
                if message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
                    return ws.close_code, str(message.extra or "")


def test_realtime_sessions_through_the_service(kubectl: Kubectl, namespace: str, unique_name: str) -> None:
    name = unique_name
    keys = f"{name}-callers"
    _set_keys(kubectl, keys, namespace, current=OLD_KEY)
    kubectl.apply(_endpoint(name, namespace, keys))
    try:
        eventually(
            lambda: (
                (kubectl.get("deployment", f"{name}-gateway", namespace) or {}).get("status", {}).get("readyReplicas")
                == 1
            ),
            timeout=180,
            what="the gateway pod ready",
        )
        assert not _vllm_pods(kubectl, name, namespace), "minReplicas 0 starts no replica"
        with service_base_url(kubectl, name, namespace) as base_url:
            url = _ws_url(base_url)
            assert asyncio.run(_handshake_status(url, "sk-wrong")) == 401

            # At zero replicas: the handshake is held, the autoscaler starts a replica, the session is answered.
            opened = time.monotonic()
            (held,) = asyncio.run(_streams(url, 1, 1.0))
            assert isinstance(held, StreamResult), held
            assert held.done is not None, held
            assert held.done["text"] == "w5 w10 w12", held
            assert len(_vllm_pods(kubectl, name, namespace)) == 1
            waited = time.monotonic() - opened

            # Concurrent sessions at real-time pace (100 ms frames), each answered in full.
            results = asyncio.run(_streams(url, CONCURRENT, 3.0))
            failures = [r for r in results if not isinstance(r, StreamResult) or r.done is None or r.errors]
            assert not failures, failures
            texts = {r.done["text"] for r in results if isinstance(r, StreamResult) and r.done is not None}
            assert texts == {"w5 w10 w15 w20 w25 w30 w35 w37"}, texts
            latencies = sorted(x for r in results if isinstance(r, StreamResult) for x in r.delta_latencies)
            median = latencies[len(latencies) // 2]
            assert median < 2.0, f"median delta latency {median:.3f}s (the model's delay is 0.48s)"

            # A scale-up while streaming drops no session: each stays on its replica and ends in full.
            scaled = asyncio.run(_scale_up_while_streaming(url, kubectl, name, namespace))
            failures = [r for r in scaled if not isinstance(r, StreamResult) or r.done is None or r.errors]
            assert not failures, failures
            assert _ready_vllm_pods(kubectl, name, namespace) == 2

            # A rollout while streaming: the old replica's session runs on through the drain time, then 1012.
            code, reason, after = asyncio.run(_rollout_close(url, kubectl, name, namespace))
            assert code == 1012, (code, reason)
            assert "replica leaving" in reason, reason
            assert after >= DRAIN_SECONDS, f"closed {after:.1f}s after the rollout began, before the drain time"
            (again,) = asyncio.run(_streams(url, 1, 1.0))  # held while the new replica starts, then answered
            assert isinstance(again, StreamResult), again
            assert again.done is not None, again

            code, reason = asyncio.run(_suspended_close(url, kubectl, name, namespace))
            assert code == 1001, (code, reason)
            assert "endpoint suspended" in reason, reason
            assert asyncio.run(_handshake_status(url, OLD_KEY)) == 503
        print(
            f"held session answered after {waited:.1f}s; {CONCURRENT} sessions, median delta {median:.3f}s; "
            f"rollout closed the old session after {after:.1f}s"
        )
        eventually(lambda: not _vllm_pods(kubectl, name, namespace), 180, "the vLLM pods gone after suspend")
    finally:
        delete_endpoint(kubectl, name, namespace)
        kubectl.run("delete", "secret", keys, "-n", namespace, "--ignore-not-found")
