"""Cluster DNS, simplified: Service names resolve to their cluster IPs inside the cluster's network namespace.

`ip netns exec NETNS` bind-mounts /etc/netns/NETNS/hosts over /etc/hosts for what it runs, so
every process of the local control plane (the pods the node agent runs, `e2e/cluster/exec`) reads
this file for names. It is kept listing each Service with a cluster IP as
`NAME.NAMESPACE.svc.CLUSTER_DOMAIN`, `NAME.NAMESPACE.svc` and `NAME.NAMESPACE`, which is what the
operator's `status.url` and a caller in another namespace use. Short names (a resolver's search
path) and headless Services' pod records are not served: a hosts file has no search path, and
nothing here needs them. A hosts file rather than a DNS server: every resolver (glibc, Python,
curl, the OpenAI SDK) reads it on each lookup, with no port 53, no resolv.conf and no dependency.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path
from typing import Any

from voxtral_testbed.kube import Kube

logger = logging.getLogger(__name__)
# The least time between two listings of every Service (a new name resolves within about this).
MIN_REWRITE_SECONDS = 1.0
HEADER = "127.0.0.1 localhost\n::1 localhost\n# Services of the local control plane, kept by the node agent\n"


def hosts_text(services: list[dict[str, Any]], cluster_domain: str) -> str:
    lines = []
    for service in sorted(services, key=lambda s: (s["metadata"]["namespace"], s["metadata"]["name"])):
        address = (service.get("spec") or {}).get("clusterIP")
        if not address or address == "None":
            continue
        name, namespace = service["metadata"]["name"], service["metadata"]["namespace"]
        lines.append(f"{address} {name}.{namespace}.svc.{cluster_domain} {name}.{namespace}.svc {name}.{namespace}\n")
    return HEADER + "".join(lines)


def write_in_place(path: Path, text: str) -> None:
    """Rewrites the file without replacing it: the bind mounts hold its inode, so a new file (an atomic
    rename) would never be seen. It is never truncated either, so a lookup never finds it empty: a
    shorter text is padded with blanks, which resolvers skip."""
    data = text.encode()
    size = path.stat().st_size if path.exists() else 0
    if len(data) < size:
        data += b" " * (size - len(data) - 1) + b"\n"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.pwrite(fd, data, 0)
    finally:
        os.close(fd)


class ServiceHosts:
    def __init__(self, kube: Kube, path: Path, cluster_domain: str = "cluster.local") -> None:
        self.kube = kube
        self.path = path
        self.cluster_domain = cluster_domain
        self._written = ""

    async def run(self) -> None:
        # Level-triggered: any Service event (a fresh listing after a watch gap included) rewrites the
        # file from a fresh listing, so a Service deleted while the watch was broken is dropped too.
        # Events that arrive during a rewrite fold into the next one.
        changed = asyncio.Event()

        async def watch() -> None:
            async for _kind, _service in self.kube.watch("/api/v1/services"):
                changed.set()

        async def write() -> None:
            while True:
                await changed.wait()
                changed.clear()
                began = time.monotonic()
                await self.sync()
                # A burst of Services (a thousand endpoints at once) must not cost a listing of every
                # Service per event: the agent then used most of a core, beside the control plane it
                # stands in for. Events during this pause fold into one listing after it.
                await asyncio.sleep(max(MIN_REWRITE_SECONDS, 4 * (time.monotonic() - began)))

        await asyncio.gather(watch(), write())

    async def sync(self) -> None:
        listing = await self.kube.request("GET", "/api/v1/services")
        text = hosts_text(list(listing.get("items") or []), self.cluster_domain)
        if text != self._written:
            await asyncio.to_thread(write_in_place, self.path, text)
            self._written = text
            logger.info("hosts file %s: %d Services", self.path, text.count("\n") - HEADER.count("\n"))
