"""An endpoint's life as a platform team and its callers see it: apply, Ready, call it with the
OpenAI SDK (transcription, audio chat, function calling), a burst scales it up and back down,
delete, cleanup."""

from __future__ import annotations

import asyncio
import base64
import io
import wave
from typing import Any

import openai
import pytest

from voxtral_testbed.harness import condition, endpoint_path, eventually

from .conftest import Target, endpoint_body

pytestmark = pytest.mark.e2e
API_KEY = "sk-e2e-key"


def _endpoint(name: str, target: Target) -> dict[str, Any]:
    return endpoint_body(
        target,
        name,
        minReplicas=1,
        maxReplicas=3,
        engine={"maxNumSeqs": 2},
        autoscaling={"targetQueueDepth": 2, "scaleDownDelaySeconds": 5},
        auth={"apiKeySecretRef": {"name": f"{name}-key"}},
    )


def _wav() -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16000)
        out.writeframes(b"\0\0" * 16000)
    return buffer.getvalue()


async def _replicas(target: Target, name: str) -> int:
    current = await target.kube.get(endpoint_path(target.namespace, name))
    spec = (current or {}).get("spec") or {}
    return int(spec.get("replicas", spec.get("minReplicas", 1)))


async def test_endpoint_lifecycle(target: Target, unique_name: str) -> None:
    kube, namespace, name = target.kube, target.namespace, unique_name
    path = endpoint_path(namespace, name)
    await kube.create(
        f"/api/v1/namespaces/{namespace}/secrets",
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": f"{name}-key", "namespace": namespace},
            "stringData": {"api-key": API_KEY},
        },
    )
    await kube.create(endpoint_path(namespace), _endpoint(name, target))
    try:

        async def serving() -> dict[str, Any] | None:
            current = await kube.get(path)
            return current if condition(current, "Serving").get("status") == "True" else None

        current = await eventually(serving, timeout=1200)
        assert condition(current, "Ready")["status"] == "True"
        assert current["status"]["url"].startswith(f"http://{name}.{namespace}.svc.")

        async with target.service_url(name) as base_url:
            client = openai.AsyncOpenAI(base_url=base_url, api_key=API_KEY, max_retries=2)
            transcript = await client.audio.transcriptions.create(
                model="mistralai/Voxtral-Mini-3B-2507",
                file=("call.wav", _wav(), "audio/wav"),
                language="en",
                temperature=0.0,
            )
            assert transcript.text
            audio = {"type": "input_audio", "input_audio": {"data": base64.b64encode(_wav()).decode(), "format": "wav"}}
            chat = await client.chat.completions.create(
                model="mistralai/Voxtral-Mini-3B-2507",
                messages=[{"role": "user", "content": [audio, {"type": "text", "text": "Summarise."}]}],
            )
            assert chat.choices[0].message.content
            tools = [
                {
                    "type": "function",
                    "function": {
                        "name": "create_ticket",
                        "description": "Open a ticket",
                        "parameters": {"type": "object", "properties": {}},
                    },
                }
            ]
            called = await client.chat.completions.create(
                model="mistralai/Voxtral-Mini-3B-2507",
                messages=[{"role": "user", "content": [audio]}],
                tools=tools,
            )
            assert (called.choices[0].message.tool_calls or [])[0].function.name == "create_ticket"
            unauthorised = openai.AsyncOpenAI(base_url=base_url, api_key="wrong", max_retries=0)
            with pytest.raises(openai.AuthenticationError):
                await unauthorised.models.list()

            # A burst: 12 callers on replicas that batch 2 each.
            stop = asyncio.Event()

            async def caller() -> None:
                while not stop.is_set():
                    with_retry = client.chat.completions.create(
                        model="mistralai/Voxtral-Mini-3B-2507", messages=[{"role": "user", "content": "hi"}]
                    )
                    try:
                        await with_retry
                    except openai.APIError:
                        await asyncio.sleep(0.1)

            callers = [asyncio.create_task(caller()) for _ in range(12)]
            try:
                await eventually(lambda: _at_least(target, name, 2), timeout=600)
            finally:
                stop.set()
                await asyncio.gather(*callers, return_exceptions=True)
            await client.close()
        await eventually(lambda: _exactly(target, name, 1), timeout=600)
    finally:
        await kube.delete(path)

    async def gone() -> bool:
        children = [
            f"/apis/apps/v1/namespaces/{namespace}/deployments/{name}",
            f"/api/v1/namespaces/{namespace}/services/{name}",
        ]
        return all([await kube.get(child) is None for child in children])

    await eventually(gone, timeout=300)


async def _at_least(target: Target, name: str, count: int) -> bool:
    return await _replicas(target, name) >= count


async def _exactly(target: Target, name: str, count: int) -> bool:
    return await _replicas(target, name) == count
