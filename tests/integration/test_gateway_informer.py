"""The gateway's watches against an API server that refuses them at first.

A new endpoint's gateway Deployment is applied with its RoleBinding, not after it (reconcile.py,
APPLY_STAGES): a gateway pod can ask for its EndpointSlices before the binding exists. It must then
retry, and serve what it reads once allowed, without a restart.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web

from voxtral_operator.gateway.kube import KubeReader, informer
from voxtral_operator.k8s.client import Connection
from voxtral_testbed.harness import free_port

SLICES = "/apis/discovery.k8s.io/v1/namespaces/speech/endpointslices"


async def test_a_watch_refused_until_the_binding_exists_is_retried_and_then_read() -> None:
    refusals_left = 2
    asked: list[int] = []

    async def listing(request: web.Request) -> web.StreamResponse:
        nonlocal refusals_left
        if request.query.get("watch") == "true":
            await asyncio.sleep(3600)  # a watch with nothing to say
        if refusals_left:
            refusals_left -= 1
            asked.append(403)
            return web.json_response(
                {"kind": "Status", "code": 403, "reason": "Forbidden", "message": "cannot list endpointslices"},
                status=403,
            )
        asked.append(200)
        body = {
            "kind": "EndpointSliceList",
            "metadata": {"resourceVersion": "7"},
            "items": [{"metadata": {"name": "mini-vllm-abc", "resourceVersion": "7"}, "endpoints": []}],
        }
        return web.Response(text=json.dumps(body), content_type="application/json")

    app = web.Application()
    app.router.add_get(SLICES, listing)
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=1.0)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    reader = KubeReader(Connection(server=f"http://127.0.0.1:{port}"))
    seen: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    watching = asyncio.create_task(informer(reader, SLICES, {}, seen.put_nowait, what="EndpointSlices"))
    try:
        # Two refusals back off 0.25-0.5 s and 0.5-1 s: well inside the bound, however busy the machine.
        objects = await asyncio.wait_for(seen.get(), timeout=30)
        assert list(objects) == ["mini-vllm-abc"], objects
        assert asked == [403, 403, 200], asked
    finally:
        watching.cancel()
        await asyncio.gather(watching, return_exceptions=True)
        await reader.close()
        await runner.cleanup()
