"""The kubelet's HTTPS endpoint, the part `kubectl logs` needs: GET /containerLogs/NS/POD/CONTAINER.

The API server proxies `kubectl logs` to the kubelet of the pod's node, at the node's InternalIP and
`status.daemonEndpoints.kubeletEndpoint.Port`, over TLS. As a kubelet does, this server presents a
certificate for the node's address and accepts only clients with a certificate from the cluster's CA
(the API server's kubelet-client certificate). It serves the container's output as the node agent
writes it (`PODS_DIR/NAMESPACE_POD/container.log`), with `tailLines`, `limitBytes` and `follow`.
Not served: `previous` (one log per pod, across restarts), `timestamps` and `sinceSeconds`, exec,
attach and port-forward.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from pathlib import Path

from aiohttp import web

KUBELET_PORT = 10250
FOLLOW_POLL_SECONDS = 0.5


def tls_context(cert: Path, key: Path, client_ca: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(client_ca))
    context.load_cert_chain(str(cert), str(key))
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def _tail(data: bytes, lines: int) -> bytes:
    if lines <= 0:
        return b""
    parts = data.splitlines(keepends=True)
    return b"".join(parts[-lines:])


class KubeletServer:
    def __init__(self, pods_dir: Path, is_running: Callable[[str, str], bool]) -> None:
        self.pods_dir = pods_dir
        self.is_running = is_running

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/containerLogs/{namespace}/{pod}/{container}", self.container_logs)
        return app

    async def container_logs(self, request: web.Request) -> web.StreamResponse:
        namespace, pod = request.match_info["namespace"], request.match_info["pod"]
        query = request.query
        if query.get("previous") == "true":
            raise web.HTTPBadRequest(text="the testbed node agent keeps one log per pod: no previous container's log")
        path = self.pods_dir / f"{namespace}_{pod}" / "container.log"
        if not path.exists():
            raise web.HTTPNotFound(text=f'container "{request.match_info["container"]}" in pod "{pod}" has no log yet')
        try:
            tail = int(query["tailLines"]) if "tailLines" in query else None
            limit = int(query["limitBytes"]) if "limitBytes" in query else None
        except ValueError as exc:
            raise web.HTTPBadRequest(text=f"bad query: {exc}") from exc
        data = await asyncio.to_thread(path.read_bytes)
        offset = len(data)  # following goes on from here: whatever the tail left out has been seen
        if tail is not None:
            data = _tail(data, tail)
        if limit is not None:
            data = data[:limit]
        response = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await response.prepare(request)
        await response.write(data)
        if query.get("follow") == "true" and limit is None:
            while self.is_running(namespace, pod):
                await asyncio.sleep(FOLLOW_POLL_SECONDS)
                offset = await self._send_new(path, offset, response)
            await self._send_new(path, offset, response)
        await response.write_eof()
        return response

    async def _send_new(self, path: Path, offset: int, response: web.StreamResponse) -> int:
        def read() -> bytes:
            with path.open("rb") as f:
                f.seek(offset)
                return f.read()

        new = await asyncio.to_thread(read)
        if new:
            await response.write(new)
        return offset + len(new)

    async def serve(self, host: str, port: int, context: ssl.SSLContext) -> None:
        runner = web.AppRunner(self.app(), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, host, port, ssl_context=context)
        await site.start()
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()
