"""What the HTTP side reads: ready backends, accepted caller keys, the backend keys, the TLS pair,
and the endpoint's live settings (suspended, hold timeout).

`Sources` is the interface (tests may set it directly). The gateway reads no Secret through the
API: the kubelet mounts each one it needs as a Secret volume (`optional: true`) under
`SECRETS_DIR/NAME/`, and refreshes the files when the Secret changes (within its sync period, about
a minute), by swapping the `..data` symlink to a new timestamped directory. `watch_secret_files`
polls those directories (one readlink each, every second) and `watch_backends` keeps the ready
backends current from the EndpointSlices of the backend Service (kube.py).

The backend key: vLLM takes its key from the environment at start, so a replica accepts the key the
Secret held when it started, for ever. The gateway keeps every backend key it has read (newest
first) and learns by a probe which one each replica accepts; a replica that accepts none is not
dispatched to. A deleted Secret changes nothing here: the last keys read are kept.

The live settings come from the gateway's own VoxtralEndpoint, through a watch (`watch_sources`):
they are no command-line flags, so changing them never rolls the gateway's pods.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from voxtral_operator.gateway import SECRETS_DIR
from voxtral_operator.gateway.kube import KubeReader, informer
from voxtral_operator.gateway.metrics import key_id
from voxtral_operator.k8s.resources import ENDPOINTS

logger = logging.getLogger(__name__)

ANONYMOUS = "anonymous"  # the key id when the endpoint has no caller auth
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
BACKEND_PORT_NAME = "http"
POLL_SECONDS = 1.0
# Keys read earlier stay usable for replicas started with them; a bound keeps a flapping Secret harmless.
MAX_BACKEND_KEYS = 8
PROBE_PATH = "/v1/models"
PROBE_USER_AGENT = "voxtral-gateway (backend key probe)"  # how a replica's log tells the probe apart
PROBE_TIMEOUT_SECONDS = 10.0
PROBE_RETRY_SECONDS = 5.0


@dataclass(frozen=True)
class SecretRef:
    name: str
    key: str | None = None

    @classmethod
    def parse(cls, text: str, *, key_required: bool = False) -> SecretRef:
        name, _, key = text.partition(":")
        if not name or (key_required and not key) or (":" in text and not key):
            raise ValueError(f"{text!r}: expected SECRET{':KEY' if key_required else '[:KEY]'}")
        if name in (".", "..") or "/" in name:
            raise ValueError(f"{text!r}: {name!r} is not a Secret name")
        return cls(name, key or None)

    def describe(self, namespace: str) -> str:
        """How logs, metrics and status name it: never any of its data."""
        return f"Secret {namespace}/{self.name}" + (f" key {self.key!r}" if self.key else "")


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
        # Backends the gateway may dispatch to: ready, and (with a backend key) accepting a key it holds.
        self.backends: tuple[str, ...] = ()
        self.caller_keys: CallerKeys | None = None  # None: no caller auth
        self.backend_keys: tuple[str, ...] = ()  # newest first
        self.accepted_key: dict[str, str] = {}  # backend address -> the backend key it accepts
        self.tls: tuple[bytes, bytes] | None = None  # (certificate chain PEM, private key PEM)
        # (Secret name, key or "") of each configured Secret (or key) that is not there.
        self.missing: tuple[tuple[str, str], ...] = ()
        self.backend_key_required = False
        self.synced = asyncio.Event()
        self.on_backends: list[Callable[[tuple[str, ...]], None]] = []
        self.on_tls: list[Callable[[tuple[bytes, bytes]], None]] = []

    @property
    def backend_key(self) -> str | None:
        """The newest backend key read: what a replica started now accepts."""
        return self.backend_keys[0] if self.backend_keys else None

    def backend_key_for(self, address: str) -> str | None:
        return self.accepted_key.get(address) or self.backend_key

    @property
    def misconfigured(self) -> bool:
        """A Secret every request needs was never read: callers would all be refused (no caller key)
        or every backend would refuse the gateway (no backend key)."""
        no_caller_keys = self.caller_keys is not None and len(self.caller_keys) == 0
        return bool(self.missing) and (no_caller_keys or (self.backend_key_required and not self.backend_keys))

    def set_backends(self, backends: Iterable[str]) -> None:
        new = tuple(sorted(set(backends)))
        if new != self.backends:
            logger.info("ready backends: %s", ", ".join(new) or "none")
        self.backends = new
        for listener in self.on_backends:
            listener(new)

    def add_backend_key(self, key: str) -> bool:
        """Make `key` the newest; True when it was not the newest already."""
        if self.backend_keys[:1] == (key,):
            return False
        self.backend_keys = (key, *(k for k in self.backend_keys if k != key))[:MAX_BACKEND_KEYS]
        return True

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


def read_secret_volume(directory: Path) -> dict[str, bytes] | None:
    """The keys of a mounted Secret as the kubelet lays it out (`KEY -> ..data/KEY`,
    `..data -> ..TIMESTAMP/`), read through one resolution of `..data` so a swap during the read never
    mixes two versions; a plain directory of files is read as it is. {} when the directory is missing
    or empty (an optional volume of a missing Secret); None when a swap interrupted every attempt."""
    for _ in range(3):
        data_link = directory / "..data"
        try:
            version = os.readlink(data_link) if data_link.is_symlink() else None
            base = directory / version if version is not None else directory
            files: dict[str, bytes] = {}
            with os.scandir(base) as entries:
                for entry in entries:
                    if not entry.name.startswith(".") and entry.is_file():
                        files[entry.name] = Path(entry.path).read_bytes()
            if version is not None and os.readlink(data_link) != version:
                continue  # swapped meanwhile: the old version may have been half deleted as we read
            return files
        except FileNotFoundError:
            if not directory.exists():
                return {}
            continue  # the kubelet swapped versions while we read: read the new one
        except NotADirectoryError:
            return {}
    return None


@dataclass(frozen=True)
class Spec:
    """What to read: from the command line."""

    namespace: str
    backend_service: str
    endpoint: str | None = None  # the VoxtralEndpoint whose live settings the gateway follows
    backend_key: SecretRef | None = None
    caller_keys: tuple[SecretRef, ...] = ()
    tls_secret: str | None = None
    secrets_dir: Path = Path(SECRETS_DIR)

    def secret_names(self) -> list[str]:
        return sorted(
            {ref.name for ref in self.caller_keys}
            | ({self.backend_key.name} if self.backend_key else set())
            | ({self.tls_secret} if self.tls_secret else set())
        )


def _entries(ref: SecretRef, data: Mapping[str, bytes]) -> list[tuple[str, bytes]] | None:
    """(entry name, value) of the key, or of every entry when no key is named; None when missing."""
    if ref.key is not None:
        return [(ref.key, data[ref.key])] if ref.key in data else None
    return list(data.items()) or None


def apply_secrets(spec: Spec, sources: Sources, volumes: Mapping[str, Mapping[str, bytes]]) -> bool:
    """Update `sources` from the Secrets' files (name -> key -> bytes); True when the backend keys changed."""
    missing: list[tuple[str, str]] = []
    if spec.caller_keys:
        keys: list[tuple[str, bytes]] = []
        for ref in spec.caller_keys:
            entries = _entries(ref, volumes.get(ref.name) or {})
            if entries is None:
                missing.append((ref.name, ref.key or ""))
            keys += [(name, value.strip()) for name, value in entries or []]
        sources.caller_keys = CallerKeys(keys)
    new_backend_key = False
    sources.backend_key_required = spec.backend_key is not None
    if spec.backend_key is not None:
        entries = _entries(spec.backend_key, volumes.get(spec.backend_key.name) or {})
        key = entries[0][1].decode(errors="replace").strip() if entries else ""
        if key:
            new_backend_key = sources.add_backend_key(key)
        else:  # the keys read before stay: replicas started with them still accept them
            missing.append((spec.backend_key.name, spec.backend_key.key or ""))
    if spec.tls_secret is not None:
        data = volumes.get(spec.tls_secret) or {}
        if "tls.crt" in data and "tls.key" in data:
            sources.set_tls((data["tls.crt"], data["tls.key"]))
        else:
            missing.append((spec.tls_secret, "tls.crt" if "tls.crt" not in data else "tls.key"))
    if tuple(missing) != sources.missing:
        for name, key in sorted(set(missing) - set(sources.missing)):
            logger.warning(
                "%s is missing: %s",
                SecretRef(name, key or None).describe(spec.namespace),
                "callers are refused until it exists"
                if spec.backend_key is None or name != spec.backend_key.name
                else "the backend keys read before are kept",
            )
        for name, key in sorted(set(sources.missing) - set(missing)):
            logger.info("%s is there again", SecretRef(name, key or None).describe(spec.namespace))
        sources.missing = tuple(missing)
    return new_backend_key


async def watch_secret_files(
    spec: Spec,
    sources: Sources,
    on_backend_key: Callable[[], None] = lambda: None,
    first_read: asyncio.Event | None = None,
    *,
    poll: float = POLL_SECONDS,
) -> None:
    """Read the mounted Secrets now and again whenever their files change, for ever; `first_read`
    is set after the first reading."""
    names = spec.secret_names()
    if spec.caller_keys:
        sources.caller_keys = CallerKeys([])  # fail closed until the files are read
    seen: dict[str, dict[str, bytes]] = {}
    first = True
    while True:
        current = dict(seen)
        for name in names:
            read = await asyncio.to_thread(read_secret_volume, spec.secrets_dir / name)
            if read is not None:
                current[name] = read
        if first or current != seen:
            seen = current
            if apply_secrets(spec, sources, seen):
                on_backend_key()
            first = False
            if first_read is not None:
                first_read.set()
        await asyncio.sleep(poll)


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


class BackendKeys:
    """Which backend key each ready replica accepts, learned by `GET /v1/models` with each key held.

    Only replicas whose key is known (or that could not be probed: they get the newest key, as
    before any rotation) are handed to the dispatcher; one that refuses every key is left out and
    logged, so no caller's request is sent with a key it would refuse."""

    def __init__(self, sources: Sources, probe: Callable[[str, str], Any] | None = None) -> None:
        self.sources = sources
        self.ready: tuple[str, ...] = ()
        self.refusing: set[str] = set()
        self.unasked: set[str] = set()  # could not be probed: sent the newest key meanwhile
        self._probe = probe or self._http_probe
        self._session: aiohttp.ClientSession | None = None
        self._changed = asyncio.Event()

    def set_ready(self, ready: Iterable[str]) -> None:
        self.ready = tuple(sorted(set(ready)))
        self._changed.set()

    def keys_changed(self) -> None:
        # A replica that refused every key may accept the new one.
        self.refusing.clear()
        self._changed.set()

    async def _http_probe(self, address: str, key: str) -> int | None:
        """The status of a probe with `key`; None when the replica could not be asked."""
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=PROBE_TIMEOUT_SECONDS),
                skip_auto_headers=("Accept-Encoding", "Accept"),
            )
        try:
            async with self._session.get(
                f"http://{address}{PROBE_PATH}",
                headers={"Authorization": f"Bearer {key}", "User-Agent": PROBE_USER_AGENT},
                allow_redirects=False,
            ) as response:
                await response.read()
                return response.status
        except (aiohttp.ClientError, TimeoutError):
            return None

    async def _learn(self, address: str) -> bool:
        """Probe one replica; False when it could not be asked (retry later)."""
        keys = self.sources.backend_keys
        for key in keys:
            status = await self._probe(address, key)
            if status is None:
                self.unasked.add(address)
                return False
            if status != 401:
                self.sources.accepted_key[address] = key
                self.unasked.discard(address)
                return True
        self.unasked.discard(address)
        logger.warning(
            "replica %s refuses all %d backend keys this gateway has read (it was started with another key);"
            " no requests are sent to it",
            address,
            len(keys),
        )
        self.refusing.add(address)
        return True

    def _publish(self) -> None:
        """Hand the dispatcher the replicas it may use: with backend keys, only those probed (or that
        could not be asked); a replica that became ready during the probes waits for its own."""
        accepted = self.sources.accepted_key
        for gone in set(accepted) - set(self.ready):
            del accepted[gone]
        self.unasked &= set(self.ready)
        if self.sources.backend_keys:
            usable = [a for a in self.ready if a in accepted or a in self.unasked]
        else:
            usable = list(self.ready)
        self.sources.set_backends(usable)

    async def run(self) -> None:
        try:
            while True:
                await self._changed.wait()
                self._changed.clear()
                retry = False
                if self.sources.backend_keys:
                    for address in self.ready:
                        if address in self.sources.accepted_key or address in self.refusing:
                            continue
                        if not await self._learn(address):
                            retry = True
                self._publish()
                if retry:
                    await asyncio.sleep(PROBE_RETRY_SECONDS)
                    self._changed.set()
        finally:
            if self._session is not None:
                await self._session.close()


async def watch_sources(reader: KubeReader, spec: Spec, sources: Sources) -> None:
    """Run the watches for ever; `sources.synced` is set once the Secrets' files, the
    EndpointSlices and the endpoint's settings have been read."""
    backends = BackendKeys(sources)
    secrets_read = asyncio.Event()
    slices_listed = asyncio.Event()
    settings_read = asyncio.Event()
    if not spec.endpoint:
        settings_read.set()

    def on_endpoint(objects: dict[str, Any]) -> None:
        sources.set_settings(live_settings(objects.get(spec.endpoint or "")))
        settings_read.set()

    def on_slices(objects: dict[str, Any]) -> None:
        backends.set_ready(ready_backends(objects.values()))
        slices_listed.set()

    async def synced() -> None:
        await secrets_read.wait()
        await slices_listed.wait()
        await settings_read.wait()
        sources.synced.set()

    ns = spec.namespace
    await asyncio.gather(
        watch_secret_files(spec, sources, backends.keys_changed, secrets_read),
        backends.run(),
        synced(),
        informer(
            reader,
            f"/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices",
            {"labelSelector": f"{SERVICE_NAME_LABEL}={spec.backend_service}"},
            on_slices,
            what=f"EndpointSlices of Service {ns}/{spec.backend_service}",
        ),
        *(
            [
                informer(
                    reader,
                    ENDPOINTS.path(ns),
                    {"fieldSelector": f"metadata.name={spec.endpoint}"},
                    on_endpoint,
                    what=f"VoxtralEndpoint {ns}/{spec.endpoint}",
                )
            ]
            if spec.endpoint
            else []
        ),
    )
