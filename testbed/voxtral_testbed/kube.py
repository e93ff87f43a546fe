"""A small asyncio client for the local control plane's API server: requests, lists and watches.

The node agent and the kube-proxy stand-in use it with the admin credentials of the local cluster's
kubeconfig (client certificate), as a kubelet and kube-proxy would use theirs.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import ssl
import tempfile
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import yaml

logger = logging.getLogger(__name__)
JSON = dict[str, Any]


class ApiError(Exception):
    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"{status}: {body[:300]}")
        self.status = status


def _materialise(user: Mapping[str, Any], key: str, base: Path) -> str | None:
    """A kubeconfig names a file (`key`) or embeds it (`key-data`): a path either way."""
    if user.get(key):
        path = Path(str(user[key]))
        return str(path if path.is_absolute() else base / path)
    if user.get(f"{key}-data"):
        handle = tempfile.NamedTemporaryFile(delete=False, suffix=".pem")  # noqa: SIM115 - outlives this call
        handle.write(base64.b64decode(user[f"{key}-data"]))
        handle.close()
        return handle.name
    return None


class Kube:
    def __init__(self, server: str, ssl_context: ssl.SSLContext | None, headers: dict[str, str]) -> None:
        self.server = server.rstrip("/")
        self._ssl = ssl_context
        self._headers = headers
        self._session: aiohttp.ClientSession | None = None
        self.ca_file: str | None = None  # the cluster's CA, for kubeconfigs handed to pods

    @classmethod
    def from_kubeconfig(cls, path: str | Path) -> Kube:
        path = Path(path)
        config = yaml.safe_load(path.read_text())
        context_name = config["current-context"]
        context = next(c["context"] for c in config["contexts"] if c["name"] == context_name)
        cluster = next(c["cluster"] for c in config["clusters"] if c["name"] == context["cluster"])
        user = next(u["user"] for u in config["users"] if u["name"] == context["user"])
        context_ssl = None
        ca_file = None
        if cluster["server"].startswith("https"):
            ca_file = _materialise(cluster, "certificate-authority", path.parent)
            context_ssl = ssl.create_default_context(cafile=ca_file)
            cert = _materialise(user, "client-certificate", path.parent)
            if cert:
                context_ssl.load_cert_chain(cert, _materialise(user, "client-key", path.parent))
        headers = {"Authorization": f"Bearer {user['token']}"} if user.get("token") else {}
        kube = cls(cluster["server"], context_ssl, headers)
        kube.ca_file = ca_file
        return kube

    async def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self._ssl if self._ssl is not None else False),
                headers={**self._headers, "User-Agent": "voxtral-testbed"},
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        params: Mapping[str, str] | None = None,
        content_type: str = "application/json",
    ) -> JSON:
        session = await self.session()
        data = None if body is None else json.dumps(body)
        headers = {"Content-Type": content_type} if data is not None else {}
        timeout = aiohttp.ClientTimeout(total=30)
        async with session.request(
            method, self.server + path, data=data, params=params, headers=headers, timeout=timeout
        ) as response:
            text = await response.text()
            if response.status >= 400:
                raise ApiError(response.status, text)
            result: JSON = json.loads(text) if text else {}
            return result

    async def get(self, path: str) -> JSON | None:
        try:
            return await self.request("GET", path)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    async def watch(self, path: str, params: Mapping[str, str] | None = None) -> AsyncIterator[tuple[str, JSON]]:
        """List, then watch from the list's resourceVersion; ("SYNCED", {}) after each full list.

        Yields ("ADDED" | "MODIFIED" | "DELETED", object). On 410 Gone (or a dropped stream) it lists
        again, yielding every listed object as ADDED: consumers must treat events as level, not edges.
        """
        while True:
            try:
                listing = await self.request("GET", path, params=params)
                for item in listing.get("items") or []:
                    yield "ADDED", item
                yield "SYNCED", {}
                version = listing["metadata"]["resourceVersion"]
                session = await self.session()
                query = {**(params or {}), "watch": "true", "resourceVersion": version, "allowWatchBookmarks": "true"}
                async with session.get(
                    self.server + path, params=query, timeout=aiohttp.ClientTimeout(total=None, sock_read=120)
                ) as response:
                    if response.status >= 400:
                        raise ApiError(response.status, await response.text())
                    async for line in response.content:
                        if not line.strip():
                            continue
                        event = json.loads(line)
                        if event["type"] == "ERROR":
                            break  # 410 Gone and friends: list again
                        if event["type"] == "BOOKMARK":
                            continue
                        yield event["type"], event["object"]
            except (aiohttp.ClientError, TimeoutError, ApiError) as exc:
                logger.debug("watch %s ended (%s); listing again", path, exc)
                await asyncio.sleep(0.5)
