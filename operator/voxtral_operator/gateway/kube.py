"""List-then-watch of one namespace's objects: the gateway's only I/O with the API server.

Never a polling loop: one list, then a watch from its resourceVersion that the server ends after
`timeoutSeconds` (resumed from the last resourceVersion seen) or with 410 Gone (a fresh list).
Errors back off with jitter up to 30 s. The in-cluster token file is re-read every minute, as
bound service-account tokens rotate.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

import aiohttp

from voxtral_operator.k8s.client import Connection

logger = logging.getLogger(__name__)

SERVICE_ACCOUNT_TOKEN = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")
TOKEN_REREAD_SECONDS = 60.0
WATCH_SECONDS = (240, 360)  # the server ends each watch after a random time in this range

JSON = dict[str, Any]


class WatchExpired(Exception):
    """410 Gone: the resourceVersion is too old; list again."""


class KubeError(Exception):
    pass


class KubeReader:
    def __init__(self, connection: Connection, token_path: Path | None = None) -> None:
        self.connection = connection
        self.token_path = token_path
        self._token: str | None = connection.token
        self._token_read = time.monotonic()
        self._session: aiohttp.ClientSession | None = None

    def headers(self) -> dict[str, str]:
        if self.token_path is not None and time.monotonic() - self._token_read > TOKEN_REREAD_SECONDS:
            try:
                self._token = self.token_path.read_text().strip() or self._token
            except OSError as exc:
                logger.warning("cannot re-read the service account token %s: %s", self.token_path, exc)
            self._token_read = time.monotonic()
        if self.token_path is not None and self._token:
            return {"Authorization": f"Bearer {self._token}", "Accept": "application/json"}
        return {**self.connection.headers(), "Accept": "application/json"}

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(ssl=self.connection.ssl_context(), limit=16)
            self._session = aiohttp.ClientSession(connector=connector)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def _url(self, path: str) -> str:
        return self.connection.server.rstrip("/") + path

    async def list(self, path: str, params: Mapping[str, str]) -> tuple[list[JSON], str]:
        timeout = aiohttp.ClientTimeout(total=30)
        async with self._get_session().get(
            self._url(path), params=dict(params), headers=self.headers(), timeout=timeout
        ) as response:
            text = await response.text()
            if response.status >= 400:
                raise KubeError(f"GET {path}: {response.status} {text[:300]}")
            listing = json.loads(text)
        items: list[JSON] = listing.get("items") or []
        return items, str((listing.get("metadata") or {}).get("resourceVersion") or "")

    async def watch(self, path: str, params: Mapping[str, str], resource_version: str) -> AsyncIterator[JSON]:
        """Events from resource_version on, until the server ends the watch; raises WatchExpired on 410."""
        seconds = random.randint(*WATCH_SECONDS)
        query = {
            **params,
            "watch": "true",
            "resourceVersion": resource_version,
            "timeoutSeconds": str(seconds),
            "allowWatchBookmarks": "true",
        }
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=seconds + 30)
        async with self._get_session().get(
            self._url(path), params=query, headers=self.headers(), timeout=timeout
        ) as response:
            if response.status == 410:
                raise WatchExpired()
            if response.status >= 400:
                raise KubeError(f"watch {path}: {response.status} {(await response.text())[:300]}")
            async for line in response.content:
                if not line.strip():
                    continue
                event: JSON = json.loads(line)
                if event.get("type") == "ERROR":
                    status = event.get("object") or {}
                    if status.get("code") == 410:
                        raise WatchExpired()
                    raise KubeError(f"watch {path}: {status.get('code')} {status.get('message', status)}")
                yield event


async def informer(
    reader: KubeReader,
    path: str,
    params: Mapping[str, str],
    on_change: Callable[[dict[str, JSON]], None],
    *,
    what: str,
) -> None:
    """Keep `on_change` fed with the current objects by name (after the first list, after each event)."""
    failures = 0
    while True:
        try:
            items, version = await reader.list(path, params)
            objects = {obj["metadata"]["name"]: obj for obj in items}
            on_change(dict(objects))
            failures = 0
            while True:
                started = time.monotonic()
                async for event in reader.watch(path, params, version):
                    obj = event.get("object") or {}
                    meta = obj.get("metadata") or {}
                    version = str(meta.get("resourceVersion") or version)
                    if event.get("type") == "BOOKMARK":
                        continue
                    if event.get("type") == "DELETED":
                        objects.pop(meta.get("name", ""), None)
                    else:
                        objects[meta.get("name", "")] = obj
                    on_change(dict(objects))
                if time.monotonic() - started < 1.0:  # a server ending watches at once is not hammered
                    await asyncio.sleep(1.0)
        except WatchExpired:
            logger.debug("watch of %s expired; listing again", what)
        except asyncio.CancelledError:
            raise
        except (aiohttp.ClientError, TimeoutError, KubeError, ValueError, KeyError) as exc:
            failures += 1
            delay = min(30.0, 0.5 * 2 ** min(failures, 6)) * random.uniform(0.5, 1.0)
            logger.warning("watching %s failed (%s); retrying in %.1fs", what, exc, delay)
            await asyncio.sleep(delay)
