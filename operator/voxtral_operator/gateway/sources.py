"""What the HTTP side reads: ready backends, accepted caller keys, the backend key, the TLS pair,
and the endpoint's live settings (suspended, hold timeout).

`Sources` is the interface (tests may set it directly); `watch_sources` keeps it current from
the namespace's Secrets, EndpointSlices and the gateway's own VoxtralEndpoint through watches
(kube.py). Settings read from the endpoint need no restart, so changing them never rolls the pods.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from voxtral_operator.gateway.kube import KubeReader, informer
from voxtral_operator.gateway.metrics import key_id
from voxtral_operator.k8s.resources import ENDPOINTS

logger = logging.getLogger(__name__)

ANONYMOUS = "anonymous"  # the key id when the endpoint has no caller auth
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
BACKEND_PORT_NAME = "http"


@dataclass(frozen=True)
class SecretRef:
    name: str
    key: str | None = None

    @classmethod
    def parse(cls, text: str, *, key_required: bool = False) -> SecretRef:
        name, _, key = text.partition(":")
        if not name or (key_required and not key) or (":" in text and not key):
            raise ValueError(f"{text!r}: expected SECRET{':KEY' if key_required else '[:KEY]'}")
        return cls(name, key or None)


class CallerKeys:
    """Accepted keys, compared in constant time: every key is compared, whichever matches.

    A key may come with the name of its Secret entry: the tenant its weight and limits are set for.
    """

    def __init__(self, keys: Iterable[bytes | tuple[str, bytes]]) -> None:
        self._digests: list[tuple[bytes, str]] = []
        self._tenants: dict[str, str] = {}  # key id -> Secret entry name
        for entry in keys:
            tenant, key = entry if isinstance(entry, tuple) else ("", entry)
            if key:
                self._digests.append((hashlib.sha256(key).digest(), key_id(key)))
                if tenant:
                    self._tenants[key_id(key)] = tenant

    def tenant(self, ident: str) -> str | None:
        """The Secret entry name of the key with this id, if it came with one."""
        return self._tenants.get(ident)

    def __len__(self) -> int:
        return len(self._digests)

    def match(self, presented: bytes) -> str | None:
        """The key id of the presented key, or None. Timing does not depend on which key matched."""
        digest = hashlib.sha256(presented).digest()
        found: str | None = None
        for known, ident in self._digests:
            equal = hmac.compare_digest(known, digest)
            found = ident if equal else found
        return found


@dataclass(frozen=True)
class LiveSettings:
    """What the endpoint's owner may change at any time without the gateway pods restarting."""

    suspended: bool = False
    hold_timeout_seconds: float | None = None  # None: the --hold-timeout-seconds default


def live_settings(endpoint: Mapping[str, Any] | None) -> LiveSettings:
    """The live settings in a VoxtralEndpoint; an absent one (being deleted) suspends nothing."""
    spec = (endpoint or {}).get("spec") or {}
    hold = (spec.get("gateway") or {}).get("holdTimeoutSeconds")
    if isinstance(hold, bool) or not isinstance(hold, int) or hold <= 0:
        hold = None
    return LiveSettings(
        suspended=spec.get("suspended") is True, hold_timeout_seconds=None if hold is None else float(hold)
    )


class Sources:
    """The state the HTTP part reads; listeners hear about backend, TLS and settings changes."""

    def __init__(self) -> None:
        self.settings = LiveSettings()
        self.on_settings: list[Callable[[LiveSettings], None]] = []
        self.backends: tuple[str, ...] = ()
        self.caller_keys: CallerKeys | None = None  # None: no caller auth
        self.backend_key: str | None = None
        self.tls: tuple[bytes, bytes] | None = None  # (certificate chain PEM, private key PEM)
        self.synced = asyncio.Event()
        self.on_backends: list[Callable[[tuple[str, ...]], None]] = []
        self.on_tls: list[Callable[[tuple[bytes, bytes]], None]] = []

    def set_backends(self, backends: Iterable[str]) -> None:
        new = tuple(sorted(set(backends)))
        if new != self.backends:
            logger.info("ready backends: %s", ", ".join(new) or "none")
        self.backends = new
        for listener in self.on_backends:
            listener(new)

    def set_settings(self, settings: LiveSettings) -> None:
        if settings != self.settings:
            logger.info(
                "endpoint settings: %s, hold timeout %s",
                "suspended" if settings.suspended else "serving",
                f"{settings.hold_timeout_seconds:g}s" if settings.hold_timeout_seconds else "default",
            )
        self.settings = settings
        for listener in self.on_settings:
            listener(settings)

    def set_tls(self, pair: tuple[bytes, bytes] | None) -> None:
        if pair is None or pair == self.tls:
            return
        self.tls = pair
        for listener in self.on_tls:
            listener(pair)


def _decode(value: str) -> bytes | None:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None


def secret_data(secret: Mapping[str, Any] | None) -> dict[str, bytes]:
    data = (secret or {}).get("data") or {}
    decoded = {str(k): _decode(v) for k, v in data.items() if isinstance(v, str)}
    return {k: v for k, v in decoded.items() if v is not None}


def ready_backends(slices: Iterable[Mapping[str, Any]]) -> list[str]:
    """host:port of the ready endpoints of EndpointSlices, on the port named "http"."""
    found: list[str] = []
    for piece in slices:
        port = next((p.get("port") for p in piece.get("ports") or [] if p.get("name") == BACKEND_PORT_NAME), None)
        if not isinstance(port, int):
            continue
        for endpoint in piece.get("endpoints") or []:
            if (endpoint.get("conditions") or {}).get("ready") is False:  # unset means ready
                continue
            for address in endpoint.get("addresses") or []:
                host = f"[{address}]" if ":" in address else address
                found.append(f"{host}:{port}")
    return found


@dataclass(frozen=True)
class Spec:
    """What to watch: from the command line."""

    namespace: str
    backend_service: str
    endpoint: str | None = None  # the VoxtralEndpoint whose live settings the gateway follows
    backend_key: SecretRef | None = None
    caller_keys: tuple[SecretRef, ...] = ()
    tls_secret: str | None = None


class _SecretState:
    def __init__(self, spec: Spec, sources: Sources) -> None:
        self.spec = spec
        self.sources = sources
        self.secrets: dict[str, Mapping[str, Any] | None] = {}

    def update(self, name: str, objects: Mapping[str, Any]) -> None:
        self.secrets[name] = objects.get(name)
        spec, sources = self.spec, self.sources
        if spec.caller_keys:
            keys: list[tuple[str, bytes]] = []
            for ref in spec.caller_keys:
                data = secret_data(self.secrets.get(ref.name))
                entries = [(ref.key, data[ref.key])] if ref.key and ref.key in data else [] if ref.key else data.items()
                keys += [(name, value.strip()) for name, value in entries]
            sources.caller_keys = CallerKeys(keys)
        if spec.backend_key is not None:
            value = secret_data(self.secrets.get(spec.backend_key.name)).get(spec.backend_key.key or "")
            sources.backend_key = value.decode(errors="replace").strip() if value else None
        if spec.tls_secret is not None:
            data = secret_data(self.secrets.get(spec.tls_secret))
            if "tls.crt" in data and "tls.key" in data:
                sources.set_tls((data["tls.crt"], data["tls.key"]))


async def watch_sources(reader: KubeReader, spec: Spec, sources: Sources) -> None:
    """Run the watches for ever; `sources.synced` is set once each has listed."""
    if spec.caller_keys:
        sources.caller_keys = CallerKeys([])  # fail closed until the Secrets are read
    names = sorted(
        {ref.name for ref in spec.caller_keys}
        | ({spec.backend_key.name} if spec.backend_key else set())
        | ({spec.tls_secret} if spec.tls_secret else set())
    )
    state = _SecretState(spec, sources)
    pending = set(names) | {"endpointslices"} | ({"endpoint"} if spec.endpoint else set())

    def synced(what: str) -> None:
        pending.discard(what)
        if not pending:
            sources.synced.set()

    def on_secret(name: str) -> Callable[[dict[str, Any]], None]:
        def changed(objects: dict[str, Any]) -> None:
            state.update(name, objects)
            synced(name)

        return changed

    def on_slices(objects: dict[str, Any]) -> None:
        sources.set_backends(ready_backends(objects.values()))
        synced("endpointslices")

    def on_endpoint(objects: dict[str, Any]) -> None:
        sources.set_settings(live_settings(objects.get(spec.endpoint or "")))
        synced("endpoint")

    ns = spec.namespace
    tasks = [
        informer(
            reader,
            f"/api/v1/namespaces/{ns}/secrets",
            {"fieldSelector": f"metadata.name={name}"},
            on_secret(name),
            what=f"Secret {ns}/{name}",
        )
        for name in names
    ]
    tasks.append(
        informer(
            reader,
            f"/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices",
            {"labelSelector": f"{SERVICE_NAME_LABEL}={spec.backend_service}"},
            on_slices,
            what=f"EndpointSlices of Service {ns}/{spec.backend_service}",
        )
    )
    if spec.endpoint:
        tasks.append(
            informer(
                reader,
                ENDPOINTS.path(ns),
                {"fieldSelector": f"metadata.name={spec.endpoint}"},
                on_endpoint,
                what=f"VoxtralEndpoint {ns}/{spec.endpoint}",
            )
        )
    await asyncio.gather(*tasks)
