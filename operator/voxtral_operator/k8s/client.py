"""A small asyncio Kubernetes client: apply, patch, delete with retries. Nothing else talks HTTP to the API.

Credentials come from kopf's login (kubeconfig or in-cluster service account), so the operator
and kopf authenticate the same way.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import random
import ssl
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from voxtral_operator import metrics
from voxtral_operator.k8s.resources import Resource

logger = logging.getLogger(__name__)

FIELD_MANAGER = "voxtral-operator"
RETRYABLE = frozenset({409, 429, 500, 502, 503, 504})
NOT_FOUND = frozenset({404})
# Connections to the API server at most (the reconciler runs 32 reconciles, Events go 8 at a time).
CONNECTIONS = 24
# A list's objects as metadata only (PartialObjectMetadataList), or whole where a server cannot.
METADATA_ONLY = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json"


class ApiError(Exception):
    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


class NotFound(ApiError):
    pass


@dataclass(frozen=True)
class Connection:
    server: str
    token: str | None = None
    scheme: str | None = None
    username: str | None = None
    password: str | None = None
    ca_path: str | None = None
    ca_data: bytes | None = None
    insecure: bool = False
    certificate_path: str | None = None
    certificate_data: bytes | None = None
    private_key_path: str | None = None
    private_key_data: bytes | None = None
    # Which operator process made a request: the API server's audit log keeps it (userAgent).
    user_agent: str | None = None

    @classmethod
    def from_kopf(cls, info: Any, user_agent: str | None = None) -> Connection:
        fields: dict[str, Any] = {name: getattr(info, name, None) for name in cls.__dataclass_fields__}
        fields["insecure"] = bool(fields["insecure"])
        fields["user_agent"] = user_agent
        return cls(**fields)

    def ssl_context(self) -> ssl.SSLContext | bool:
        if not self.server.startswith("https"):
            return False
        if self.insecure:
            return False
        context = ssl.create_default_context(
            cafile=self.ca_path, cadata=self.ca_data.decode() if self.ca_data else None
        )
        if self.certificate_path or self.certificate_data:
            cert_path, key_path = self.certificate_path, self.private_key_path
            if self.certificate_data:
                cert_path = _to_file(self.certificate_data)
            if self.private_key_data:
                key_path = _to_file(self.private_key_data)
            assert cert_path is not None
            context.load_cert_chain(cert_path, key_path)
        return context

    def headers(self) -> dict[str, str]:
        headers = {"User-Agent": self.user_agent} if self.user_agent else {}
        if self.token:
            headers["Authorization"] = f"{self.scheme or 'Bearer'} {self.token}"
        elif self.username and self.password:
            raw = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
            headers["Authorization"] = f"Basic {raw}"
        return headers


def _to_file(data: bytes) -> str:
    handle = tempfile.NamedTemporaryFile(delete=False, suffix=".pem")  # noqa: SIM115 - must outlive this call
    handle.write(data)
    handle.close()
    return handle.name


class ApiClient:
    """Retries 409/429/5xx and connection errors with jittered exponential backoff.

    Every write the operator makes is idempotent (apply, status merge patch, scale patch,
    delete with a uid precondition), so retrying one can never double an effect.
    """

    def __init__(
        self,
        connection: Connection,
        *,
        attempts: int = 6,
        base_delay: float = 0.1,
        max_delay: float = 5.0,
        timeout: float = 30.0,
    ) -> None:
        self.connection = connection
        self.attempts = attempts
        self.base_delay = base_delay
        self.max_delay = max_delay
        # Each attempt's connect and each read are bounded, not the wait for one of the pool's
        # connections: in a burst, requests queue for the pool, and that queue is back-pressure,
        # not a fault (a total bound timed out waits that had not yet reached the server).
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=timeout, sock_read=timeout)
        self._session: aiohttp.ClientSession | None = None

    async def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # Each TLS connection holds a 256 kB read buffer (asyncio's SSLProtocol) and OpenSSL's
            # own: at 64, a burst's connections were a tenth of the operator's traced memory. The
            # server, not the pool, bounds a burst (README "The operator loop").
            connector = aiohttp.TCPConnector(ssl=self.connection.ssl_context(), limit=CONNECTIONS)
            self._session = aiohttp.ClientSession(
                base_url=None, connector=connector, headers=self.connection.headers(), timeout=self._timeout
            )
        return self._session

    async def reconnect(self, connection: Connection) -> None:
        """New credentials (kopf logged in again): later requests use them."""
        self.connection = connection
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        retry_statuses: frozenset[int] = RETRYABLE,
        expected: frozenset[int] = frozenset(),
        accept: str | None = None,
    ) -> dict[str, Any]:
        """`expected`: answers the caller handles as normal (a GET's 404): raised, not counted as API errors."""
        session = await self._get_session()
        url = self.connection.server.rstrip("/") + path
        data = None if body is None else json.dumps(body)
        headers = {"Content-Type": content_type} if data is not None else {}
        if accept is not None:
            headers["Accept"] = accept
        metrics.API_REQUESTS.labels(method.lower()).inc()
        for attempt in range(1, self.attempts + 1):
            retry_after: float | None = None
            try:
                async with session.request(method, url, params=params, data=data, headers=headers) as response:
                    text = await response.text()
                    if response.status < 400:
                        return json.loads(text) if text else {}
                    if response.status not in expected:
                        metrics.API_ERRORS.labels(str(response.status)).inc()
                    error = _api_error(response.status, text)
                    if response.status not in retry_statuses or attempt == self.attempts:
                        raise error
                    if response.headers.get("Retry-After", "").isdigit():
                        retry_after = float(response.headers["Retry-After"])
            except (TimeoutError, aiohttp.ClientConnectionError) as exc:
                metrics.API_ERRORS.labels("connection").inc()
                if attempt == self.attempts:
                    raise ApiError(0, "ConnectionError", str(exc)) from exc
            delay = min(self.max_delay, self.base_delay * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)
            if retry_after is not None:
                delay = min(max(delay, retry_after), self.max_delay)
            logger.debug("retrying %s %s in %.2fs (attempt %d)", method, path, delay, attempt)
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")  # the loop returns or raises

    async def apply(self, resource: Resource, obj: dict[str, Any]) -> dict[str, Any]:
        """Server-side apply as the operator's one field manager, taking over conflicting fields."""
        meta = obj["metadata"]
        return await self.request(
            "PATCH",
            resource.path(meta.get("namespace"), meta["name"]),
            params={"fieldManager": FIELD_MANAGER, "force": "true"},
            body=obj,
            content_type="application/apply-patch+yaml",
        )

    async def create(self, resource: Resource, namespace: str | None, body: dict[str, Any]) -> dict[str, Any]:
        """POST a new object. A 409 is final (the object exists), not a conflict to retry."""
        return await self.request("POST", resource.path(namespace), body=body, retry_statuses=RETRYABLE - {409})

    async def apply_status(
        self, resource: Resource, namespace: str, name: str, status: dict[str, Any], field_manager: str
    ) -> None:
        """Server-side apply of the status fields one writer owns; fields it stops sending are removed."""
        body = {
            "apiVersion": resource.api_version,
            "kind": resource.kind,
            "metadata": {"name": name, "namespace": namespace},
            "status": status,
        }
        await self.request(
            "PATCH",
            resource.path(namespace, name, "status"),
            params={"fieldManager": field_manager, "force": "true"},
            body=body,
            content_type="application/apply-patch+yaml",
        )

    async def scale(self, resource: Resource, namespace: str, name: str, replicas: int, field_manager: str) -> None:
        """Through the scale subresource; the server records the write under `field_manager`."""
        await self.request(
            "PATCH",
            resource.path(namespace, name, "scale"),
            params={"fieldManager": field_manager},
            body={"spec": {"replicas": replicas}},
            content_type="application/merge-patch+json",
        )

    async def delete(self, resource: Resource, namespace: str, name: str, uid: str | None) -> None:
        body: dict[str, Any] = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"}
        if uid:
            body["preconditions"] = {"uid": uid}
        with contextlib.suppress(NotFound):  # already gone is what was wanted
            await self.request("DELETE", resource.path(namespace, name), body=body, expected=NOT_FOUND)

    async def list_uids(
        self, resource: Resource, namespace: str | None, label_selector: str | None = None, page_size: int = 100
    ) -> set[str]:
        """The uids of every object listed, read page by page as metadata only: a fleet's worth of
        objects is never in memory at once. 404: a type the cluster does not serve (a CRD not
        installed), raised as NotFound for the caller to decide. Small pages: each is decoded in the
        event loop, and a page of 500 objects' metadata (managedFields and all) held it for about 0.1 s."""
        params = {"limit": str(page_size)}
        if label_selector:
            params["labelSelector"] = label_selector
        uids: set[str] = set()
        while True:
            page = await self.request(
                "GET", resource.path(namespace), params=params, expected=NOT_FOUND, accept=METADATA_ONLY
            )
            uids.update(item["metadata"]["uid"] for item in page.get("items") or [])
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                return uids
            params = {**params, "continue": token}

    async def get(self, resource: Resource, namespace: str | None, name: str) -> dict[str, Any] | None:
        try:
            return await self.request("GET", resource.path(namespace, name), expected=NOT_FOUND)
        except NotFound:
            return None


def _api_error(status: int, text: str) -> ApiError:
    try:
        payload = json.loads(text)
        reason, message = str(payload.get("reason", "")), str(payload.get("message", ""))
    except (ValueError, AttributeError):
        reason, message = "", text[:500]
    return (NotFound if status == 404 else ApiError)(status, reason, message)
