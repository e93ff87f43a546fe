"""kube-proxy, simplified: each Service's clusterIP:port forwards TCP connections to its ready endpoints.

Backends come from the Service's EndpointSlices, as kube-proxy takes them (the real endpointslice
controller fills them from pod readiness). A port with no ready backend is not listened on, so a
caller gets "connection refused", as kube-proxy's REJECT rule gives. Connections are spread round
robin, one backend per connection: like kube-proxy, it balances connections, not requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from voxtral_testbed.kube import Kube

logger = logging.getLogger(__name__)
ServiceKey = tuple[str, str]
# The least time between two syncs of the listeners (a new ready backend is served within about this).
MIN_SYNC_GAP_SECONDS = 0.1


@dataclass
class _Listener:
    server: asyncio.Server | None = None
    backends: list[tuple[str, int]] = field(default_factory=list)
    turn: itertools.count[int] = field(default_factory=itertools.count)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while chunk := await reader.read(65536):
            writer.write(chunk)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            if writer.can_write_eof():
                writer.write_eof()


class ServiceProxy:
    def __init__(self, kube: Kube) -> None:
        self.kube = kube
        self.services: dict[ServiceKey, dict[str, Any]] = {}
        self.slices: dict[tuple[str, str], dict[str, Any]] = {}
        self.listeners: dict[tuple[str, int], _Listener] = {}
        self._changed = asyncio.Event()

    async def run(self) -> None:
        await asyncio.gather(self._watch_services(), self._watch_slices(), self._keep_listeners())

    async def _keep_listeners(self) -> None:
        """One sync at a time (two could bind the same address), after any change. A burst of Services
        and slices (a thousand endpoints at once) folds into few syncs: one per event cost the node
        agent most of a core, beside the control plane it stands in for."""
        while True:
            await self._changed.wait()
            self._changed.clear()
            began = time.monotonic()
            await self._sync_listeners()
            await asyncio.sleep(max(MIN_SYNC_GAP_SECONDS, 4 * (time.monotonic() - began)))

    async def _watch_services(self) -> None:
        async for kind, obj in self.kube.watch("/api/v1/services"):
            if kind == "SYNCED":
                continue
            key = (obj["metadata"]["namespace"], obj["metadata"]["name"])
            if kind == "DELETED":
                self.services.pop(key, None)
            else:
                self.services[key] = obj
            self._changed.set()

    async def _watch_slices(self) -> None:
        async for kind, obj in self.kube.watch("/apis/discovery.k8s.io/v1/endpointslices"):
            if kind == "SYNCED":
                continue
            key = (obj["metadata"]["namespace"], obj["metadata"]["name"])
            if kind == "DELETED":
                self.slices.pop(key, None)
            else:
                self.slices[key] = obj
            self._changed.set()

    def _slices_by_service(self) -> dict[ServiceKey, list[dict[str, Any]]]:
        by_service: dict[ServiceKey, list[dict[str, Any]]] = {}
        for endpoint_slice in self.slices.values():
            meta = endpoint_slice["metadata"]
            service = (meta.get("labels") or {}).get("kubernetes.io/service-name")
            if service:
                by_service.setdefault((meta["namespace"], service), []).append(endpoint_slice)
        return by_service

    @staticmethod
    def _backends(slices: list[dict[str, Any]], port_name: str) -> list[tuple[str, int]]:
        found: list[tuple[str, int]] = []
        for endpoint_slice in slices:
            ports = [p for p in endpoint_slice.get("ports") or [] if (p.get("name") or "") == port_name]
            if not ports:
                continue
            for endpoint in endpoint_slice.get("endpoints") or []:
                if (endpoint.get("conditions") or {}).get("ready") is False:
                    continue
                found += [(address, int(ports[0]["port"])) for address in endpoint.get("addresses") or []]
        return sorted(found)

    async def _sync_listeners(self) -> None:
        wanted: dict[tuple[str, int], list[tuple[str, int]]] = {}
        slices = self._slices_by_service()
        for key, service in self.services.items():
            spec = service.get("spec") or {}
            ip = spec.get("clusterIP")
            if not ip or ip == "None":
                continue
            for port in spec.get("ports") or []:
                if port.get("protocol", "TCP") == "TCP":
                    wanted[(ip, int(port["port"]))] = self._backends(slices.get(key, []), port.get("name") or "")
        for address in set(self.listeners) - set(wanted):
            await self._close(self.listeners.pop(address))
        for address, backends in wanted.items():
            listener = self.listeners.setdefault(address, _Listener())
            listener.backends = backends
            if backends and listener.server is None:
                try:
                    listener.server = await asyncio.start_server(
                        functools.partial(self._forward, listener), address[0], address[1], reuse_address=True
                    )
                except OSError as exc:  # still held by a closing listener: the next sync tries again
                    logger.warning("cannot serve %s:%d yet: %s", *address, exc)
            elif not backends and listener.server is not None:
                await self._close(listener)

    @staticmethod
    async def _close(listener: _Listener) -> None:
        if listener.server is not None:
            listener.server.close()
            await listener.server.wait_closed()
            listener.server = None

    async def _forward(self, listener: _Listener, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not listener.backends:
            writer.close()
            return
        host, port = listener.backends[next(listener.turn) % len(listener.backends)]
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(host, port)
        except OSError:
            writer.close()
            return
        await asyncio.gather(_pipe(reader, upstream_writer), _pipe(upstream_reader, writer))
        for stream in (writer, upstream_writer):
            stream.close()
