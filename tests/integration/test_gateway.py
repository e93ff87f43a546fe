"""`voxtral-operator gateway` as a process, against the API emulator (EndpointSlices through watches;
Secrets as the kubelet mounts them: a stand-in projects the emulator's Secrets into files the
kubelet's way) and real backends over loopback: the vLLM simulator, and a recording backend that
says what reached it (for routes the simulator lacks: /v1/completions, SSE streams).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import ipaddress
import json
import os
import ssl
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from voxtral_operator.gateway import metrics as names
from voxtral_operator.gateway.metrics import key_id
from voxtral_testbed.harness import Kube, endpoint_path, eventually, free_port, start_simulator
from voxtral_testbed.sandbox import Sandbox
from voxtral_testbed.secret_volumes import project, secret_payload

pytestmark = pytest.mark.integration

NS = "speech"
SERVICE = "voxtral-mini-vllm"
CALLER_KEY = "caller-key-one"
BACKEND_KEY = "backend-secret-key"
# How often the kubelet stand-in refreshes the Secrets' files (the kubelet: about a minute).
VOLUME_SYNC_SECONDS = 0.2


# --- the world around the gateway -------------------------------------------------------------


def b64(text: str | bytes) -> str:
    return base64.b64encode(text.encode() if isinstance(text, str) else text).decode()


async def put_secret(kube: Kube, name: str, data: dict[str, str | bytes], type_: str = "Opaque") -> None:
    body = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": NS},
        "type": type_,
        "data": {k: b64(v) for k, v in data.items()},
    }
    path = f"/api/v1/namespaces/{NS}/secrets"
    if await kube.get(f"{path}/{name}") is None:
        await kube.create(path, body)
    else:
        await kube.request("PUT", f"{path}/{name}", body)


async def put_slice(kube: Kube, name: str, port: int, *, ready: bool = True) -> None:
    body = {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": NS, "labels": {"kubernetes.io/service-name": SERVICE}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
        "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": ready}}],
    }
    path = f"/apis/discovery.k8s.io/v1/namespaces/{NS}/endpointslices"
    if await kube.get(f"{path}/{name}") is None:
        await kube.create(path, body)
    else:
        await kube.request("PUT", f"{path}/{name}", body)


async def put_endpoint(kube: Kube, **spec: Any) -> None:
    """The gateway's own VoxtralEndpoint ("mini"), whose live settings it follows."""
    body = {
        "apiVersion": "voxtral.dev/v1alpha1",
        "kind": "VoxtralEndpoint",
        "metadata": {"name": "mini", "namespace": NS},
        "spec": {"model": "mistralai/Voxtral-Mini-3B-2507", "gpu": {"type": "L4-24GB"}, **spec},
    }
    if await kube.get(endpoint_path(NS, "mini")) is None:
        await kube.create(endpoint_path(NS), body)
    else:
        await kube.merge(endpoint_path(NS, "mini"), {"spec": spec})


class Recorder:
    """A backend that records what reached it; /v1/completions waits on `gate`, chat streams SSE."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, str | None, int]] = []  # method, raw path, Authorization, body size
        self.gate = asyncio.Event()
        self.gate.set()
        self.release_stream = asyncio.Event()
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def start(self) -> Recorder:
        app = web.Application(client_max_size=1 << 30)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        self.port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()  # a truncated upload raises here: it is never recorded
        self.requests.append((request.method, request.raw_path, request.headers.get("Authorization"), len(body)))
        if request.path == "/v1/chat/completions" and json.loads(body).get("stream"):
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            await response.write(b'data: {"choices": [{"delta": {"content": "first"}}]}\n\n')
            await asyncio.wait_for(self.release_stream.wait(), 10)
            usage = {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}
            await response.write(b"data: " + json.dumps({"choices": [], "usage": usage}).encode() + b"\n\n")
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
            return response
        if request.path == "/v1/completions":
            await asyncio.wait_for(self.gate.wait(), 20)
        usage = {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}
        return web.json_response({"path": request.path, "usage": usage})


class Gateway:
    """`voxtral-operator gateway` as a subprocess on ephemeral loopback ports."""

    def __init__(self, kubeconfig: Path, log: Path, *args: str) -> None:
        self.port = free_port()
        self.metrics_port = free_port()
        self.log_path = log
        command = [sys.executable, "-m", "voxtral_operator.cli", "gateway", "--namespace", NS, "--endpoint", "mini"]
        command += ["--backend-service", SERVICE, "--host", "127.0.0.1", "--port", str(self.port)]
        command += ["--metrics-port", str(self.metrics_port), "--verbose", "--secrets-dir", str(secrets_dir(log))]
        command += args
        self.process = subprocess.Popen(
            command,
            env={**os.environ, "KUBECONFIG": str(kubeconfig)},
            stdout=log.open("ab"),
            stderr=subprocess.STDOUT,
        )
        self.url = f"http://127.0.0.1:{self.port}"

    async def ready(self, session: aiohttp.ClientSession) -> None:
        async def check() -> bool:
            assert self.process.poll() is None, self.log_path.read_text()
            try:
                async with session.get(f"http://127.0.0.1:{self.metrics_port}/readyz") as response:
                    if response.status != 200:
                        return False
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.close()
                return True
            except OSError:
                return False

        await eventually(check, timeout=20, interval=0.05)

    async def metric(self, session: aiohttp.ClientSession, name: str, labels: str = "") -> float:
        async with session.get(f"http://127.0.0.1:{self.metrics_port}/metrics") as response:
            text = await response.text()
        wanted = f"{name}{{{labels}}}" if labels else name
        for line in text.splitlines():
            if line.startswith(wanted + " "):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def secrets_dir(near: Path) -> Path:
    return near.parent / "secrets"


@contextlib.asynccontextmanager
async def projected_secrets(sandbox: Sandbox, root: Path) -> AsyncIterator[None]:
    """A kubelet stand-in that keeps every Secret of NS projected under root/NAME, the kubelet's way
    (an optional volume: empty once the Secret is gone)."""

    async def project_secrets() -> None:
        seen: set[str] = set()
        while True:
            present = {s["metadata"]["name"]: s for s in sandbox.api.objects_of("v1/secrets", NS)}
            for name in seen | set(present):
                await asyncio.to_thread(project, root / name, secret_payload(present.get(name)) or {})
            seen |= set(present)
            await asyncio.sleep(VOLUME_SYNC_SECONDS)

    kubelet = asyncio.create_task(project_secrets())
    try:
        yield
    finally:
        kubelet.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await kubelet


@pytest.fixture
async def sandbox(tmp_path: Path) -> AsyncIterator[Sandbox]:
    """The API emulator, its Secrets projected where the test's gateways read them."""
    async with Sandbox(controllers=False) as running, projected_secrets(running, secrets_dir(tmp_path / "gateway.log")):
        yield running


@pytest.fixture
async def kube(sandbox: Sandbox) -> AsyncIterator[Kube]:
    async with aiohttp.ClientSession() as session:
        yield Kube(sandbox.url, session)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


@pytest.fixture
async def recorder() -> AsyncIterator[Recorder]:
    backend = await Recorder().start()
    yield backend
    backend.gate.set()
    backend.release_stream.set()
    await backend.stop()


@pytest.fixture
def gateways(sandbox: Sandbox, tmp_path: Path) -> Iterator[list[Gateway]]:
    started: list[Gateway] = []
    yield started
    for gateway in started:
        gateway.stop()


@pytest.fixture
def simulators() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        process.terminate()
    for process in started:
        process.wait(timeout=10)


async def start_gateway(
    gateways: list[Gateway], sandbox: Sandbox, tmp_path: Path, session: aiohttp.ClientSession, *args: str
) -> Gateway:
    gateway = Gateway(sandbox.kubeconfig, tmp_path / f"gateway-{len(gateways)}.log", *args)
    gateways.append(gateway)
    await gateway.ready(session)
    return gateway


async def start_sim(simulators: list[subprocess.Popen[bytes]], session: aiohttp.ClientSession, *args: str) -> int:
    port = free_port()
    simulators.append(start_simulator("127.0.0.1", port, *args))

    async def healthy() -> bool:
        try:
            async with session.get(f"http://127.0.0.1:{port}/health") as response:
                return response.status == 200
        except aiohttp.ClientError:
            return False

    await eventually(healthy, timeout=20, interval=0.05)
    return port


def wav(seconds: float, actual_bytes: int = 3200) -> bytes:
    """A 16 kHz 16-bit mono WAV whose header says `seconds`, with `actual_bytes` of samples."""
    data_size = int(seconds * 32000)
    header = b"RIFF" + struct.pack("<I", 36 + data_size) + b"WAVE"
    header += b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, 16000, 32000, 2, 16)
    return header + b"data" + struct.pack("<I", data_size) + b"\x00" * actual_bytes


def form(clip: bytes, name: str = "clip.wav") -> aiohttp.FormData:
    data = aiohttp.FormData()
    data.add_field("file", clip, filename=name, content_type="audio/wav")
    data.add_field("model", "mistralai/Voxtral-Mini-3B-2507")
    return data


def auth(key: str = CALLER_KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def raw_status(port: int, request_line: str, key: str = CALLER_KEY) -> int:
    """The status of a request sent byte for byte (no client-side path normalisation)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"{request_line}\r\nHost: gw\r\nAuthorization: Bearer {key}\r\nContent-Length: 0\r\n\r\n".encode())
    await writer.drain()
    status_line = await reader.readline()
    writer.close()
    return int(status_line.split()[1])


# --- the tests --------------------------------------------------------------------------------


async def test_every_api_route_reaches_the_simulator_with_the_backend_key(
    sandbox: Sandbox,
    kube: Kube,
    session: aiohttp.ClientSession,
    gateways: list[Gateway],
    simulators: Any,
    tmp_path: Path,
) -> None:
    port = await start_sim(simulators, session, "--api-key", BACKEND_KEY, "--request-seconds", "0.01")
    await put_secret(kube, "callers", {"alice": CALLER_KEY, "bob": "caller-key-two"})
    await put_secret(kube, "vllm-key", {"api-key": BACKEND_KEY})
    await put_slice(kube, "mini-a", port)
    gateway = await start_gateway(
        gateways,
        sandbox,
        tmp_path,
        session,
        "--caller-keys-secret",
        "callers",
        "--backend-key-secret",
        "vllm-key:api-key",
    )
    async with session.get(f"{gateway.url}/v1/models", headers=auth()) as response:
        assert response.status == 200, await response.text()
        assert (await response.json())["data"][0]["id"] == "mistralai/Voxtral-Mini-3B-2507"
    chat = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 32}
    async with session.post(
        f"{gateway.url}/v1/chat/completions", json=chat, headers=auth("caller-key-two")
    ) as response:
        assert response.status == 200, await response.text()
        assert (await response.json())["usage"]["completion_tokens"] == 24
    for route in ("transcriptions", "translations"):
        async with session.post(f"{gateway.url}/v1/audio/{route}", data=form(wav(2.0)), headers=auth()) as response:
            assert response.status == 200, await response.text()
            assert "simulated transcript of clip.wav" in (await response.json())["text"]
    # Usage per key id (never the key), audio seconds from the WAV header.
    alice = key_id(CALLER_KEY.encode())
    assert await gateway.metric(session, names.USAGE_AUDIO_SECONDS_TOTAL, f'key_id="{alice}"') == pytest.approx(4.0)
    bob = key_id(b"caller-key-two")
    assert await gateway.metric(session, names.USAGE_TOKENS_TOTAL, f'key_id="{bob}",kind="completion"') == 24
    async with session.get(f"http://127.0.0.1:{gateway.metrics_port}/metrics") as response:
        page = await response.text()
    assert CALLER_KEY not in page
    assert BACKEND_KEY not in page
    assert CALLER_KEY not in gateway.log_path.read_text()


async def test_only_the_api_reaches_the_backend_and_keys_are_checked(
    sandbox: Sandbox,
    kube: Kube,
    session: aiohttp.ClientSession,
    gateways: list[Gateway],
    recorder: Recorder,
    tmp_path: Path,
) -> None:
    await put_secret(kube, "callers", {"alice": CALLER_KEY})
    await put_secret(kube, "vllm-key", {"api-key": BACKEND_KEY})
    await put_slice(kube, "rec", recorder.port)
    gateway = await start_gateway(
        gateways,
        sandbox,
        tmp_path,
        session,
        "--caller-keys-secret",
        "callers:alice",
        "--backend-key-secret",
        "vllm-key:api-key",
    )
    # The gateway asks each replica which backend key it accepts (GET /v1/models), before sending it work.
    probe = ("GET", "/v1/models", f"Bearer {BACKEND_KEY}", 0)
    await eventually(lambda: _equals(asyncio.sleep(0, recorder.requests), [probe]), timeout=10)
    recorder.requests.clear()
    for line in (
        "POST /invocations HTTP/1.1",
        "GET /metrics HTTP/1.1",
        "GET /health HTTP/1.1",
        "GET /version HTTP/1.1",
        "GET /load HTTP/1.1",
        "POST /tokenize HTTP/1.1",
        "GET /v2/models HTTP/1.1",
        "POST /v1/../invocations HTTP/1.1",
        "POST //invocations HTTP/1.1",
        "POST /v1/%2e%2e/invocations HTTP/1.1",
        "POST /v1/%2E%2E%2Finvocations HTTP/1.1",
        "POST /v1%2f..%2finvocations HTTP/1.1",
        "GET /v1/models/../../metrics HTTP/1.1",
        "GET /healthz HTTP/1.1",
    ):
        assert await raw_status(gateway.port, line) == 404, line
    assert recorder.requests == []
    # Keys: missing, wrong, wrong scheme.
    for headers in ({}, auth("nope"), {"Authorization": f"Basic {CALLER_KEY}"}, auth(CALLER_KEY + "x")):
        async with session.post(f"{gateway.url}/v1/completions", json={"prompt": "x"}, headers=headers) as response:
            assert response.status == 401
            error = (await response.json())["error"]
            assert error["code"] == "invalid_api_key"
            assert error["type"] == "invalid_request_error"
    assert recorder.requests == []
    async with session.post(f"{gateway.url}/v1/completions?x=1", json={"prompt": "x"}, headers=auth()) as response:
        assert response.status == 200
        assert (await response.json())["path"] == "/v1/completions"
    # The caller's key is replaced by the backend's; the query string stays at the gateway.
    assert recorder.requests == [("POST", "/v1/completions", f"Bearer {BACKEND_KEY}", 15)]
    # Health on the metrics port only.
    async with session.get(f"http://127.0.0.1:{gateway.metrics_port}/healthz") as response:
        assert response.status == 200
    # Audio routes take multipart only.
    async with session.post(f"{gateway.url}/v1/audio/transcriptions", json={"file": "x"}, headers=auth()) as response:
        assert response.status == 415
        assert (await response.json())["error"]["code"] == "unsupported_media_type"


async def test_key_rotation_loses_no_request(
    sandbox: Sandbox,
    kube: Kube,
    session: aiohttp.ClientSession,
    gateways: list[Gateway],
    recorder: Recorder,
    tmp_path: Path,
) -> None:
    await put_secret(kube, "callers", {"old": "old-key"})
    await put_slice(kube, "rec", recorder.port)
    gateway = await start_gateway(gateways, sandbox, tmp_path, session, "--caller-keys-secret", "callers")
    current = ["old-key"]
    failures: list[int] = []
    sent = 0
    done = asyncio.Event()

    async def hammer() -> None:
        nonlocal sent
        while not done.is_set():
            async with session.get(f"{gateway.url}/v1/models", headers=auth(current[0])) as response:
                sent += 1
                if response.status != 200:
                    failures.append(response.status)

    async def status(key: str) -> int:
        async with session.get(f"{gateway.url}/v1/models", headers=auth(key)) as response:
            return response.status

    client = asyncio.create_task(hammer())
    try:
        assert await status("new-key") == 401
        await put_secret(kube, "callers", {"old": "old-key", "new": "new-key"})
        started = time.monotonic()
        await eventually(lambda: _equals(status("new-key"), 200), timeout=5)
        assert time.monotonic() - started < 5
        assert await status("old-key") == 200
        current[0] = "new-key"  # callers move over
        await asyncio.sleep(0.2)
        await put_secret(kube, "callers", {"new": "new-key"})
        await eventually(lambda: _equals(status("old-key"), 401), timeout=5)
        await asyncio.sleep(0.2)
    finally:
        done.set()
        await client
    assert failures == []
    assert sent > 20


async def _at_least(awaitable: Any, value: float) -> bool:
    return bool(await awaitable >= value)


async def _equals(awaitable: Any, value: Any) -> bool:
    return bool(await awaitable == value)


def _cert(name: str) -> tuple[bytes, bytes]:
    """A self-signed certificate for 127.0.0.1, and its key (PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


async def test_tls_from_a_secret_and_renewed_without_restart(
    sandbox: Sandbox,
    kube: Kube,
    session: aiohttp.ClientSession,
    gateways: list[Gateway],
    recorder: Recorder,
    tmp_path: Path,
) -> None:
    first, second = _cert("gw-first"), _cert("gw-second")
    await put_secret(kube, "gw-tls", {"tls.crt": first[0], "tls.key": first[1]}, "kubernetes.io/tls")
    await put_slice(kube, "rec", recorder.port)
    gateway = await start_gateway(gateways, sandbox, tmp_path, session, "--tls-secret", "gw-tls")
    url = f"https://127.0.0.1:{gateway.port}/v1/models"

    async def answered_with(cert: bytes) -> bool:
        context = ssl.create_default_context(cadata=cert.decode())
        try:
            async with session.get(url, ssl=context) as response:
                return response.status == 200
        except aiohttp.ClientConnectorCertificateError:
            return False

    assert await answered_with(first[0])
    assert not await answered_with(second[0])
    pid = gateway.process.pid
    await put_secret(kube, "gw-tls", {"tls.crt": second[0], "tls.key": second[1]}, "kubernetes.io/tls")
    await eventually(lambda: answered_with(second[0]), timeout=5)
    assert not await answered_with(first[0])
    assert gateway.process.pid == pid
    assert gateway.process.poll() is None
    with pytest.raises(aiohttp.ClientError):  # no plain HTTP on the TLS port
        async with session.get(f"http://127.0.0.1:{gateway.port}/v1/models") as response:
            await response.read()


async def test_sse_chunks_pass_before_the_response_ends(
    sandbox: Sandbox,
    kube: Kube,
    session: aiohttp.ClientSession,
    gateways: list[Gateway],
    recorder: Recorder,
    tmp_path: Path,
) -> None:
    await put_slice(kube, "rec", recorder.port)
    gateway = await start_gateway(gateways, sandbox, tmp_path, session)
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    async with session.post(f"{gateway.url}/v1/chat/completions", json=body) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        # The backend holds the rest of its stream until the first chunk has come through.
        first = await asyncio.wait_for(response.content.readuntil(b"\n\n"), 5)
        assert b"first" in first
        recorder.release_stream.set()
        rest = await response.content.read()
    assert rest.endswith(b"data: [DONE]\n\n")
    anonymous = 'key_id="anonymous",kind="prompt"'
    assert await gateway.metric(session, names.USAGE_TOKENS_TOTAL, anonymous) == 11


async def test_oversize_uploads_never_reach_the_backend(
    sandbox: Sandbox,
    kube: Kube,
    session: aiohttp.ClientSession,
    gateways: list[Gateway],
    recorder: Recorder,
    tmp_path: Path,
) -> None:
    await put_slice(kube, "rec", recorder.port)
    gateway = await start_gateway(gateways, sandbox, tmp_path, session, "--max-upload-mb", "1")
    big = wav(60, actual_bytes=1_500_000)
    # The gateway answers from the headers and closes without reading the body: a client that waits
    # for 100 Continue sees the 413 for sure; one that sends on may see its connection reset first.
    url = f"{gateway.url}/v1/audio/transcriptions"
    async with session.post(url, data=form(big), expect100=True) as response:
        assert response.status == 413
        assert (await response.json())["error"]["code"] == "request_too_large"
    with contextlib.suppress(aiohttp.ClientOSError, aiohttp.ServerDisconnectedError):
        async with session.post(url, data=form(big)) as response:
            assert response.status == 413

    async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: caught while streaming
        boundary = b"--b0undary"
        yield boundary + b'\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'
        for _ in range(30):
            yield b"\x00" * 100_000
            await asyncio.sleep(0)
        yield b"\r\n" + boundary + b"--\r\n"

    headers = {"Content-Type": "multipart/form-data; boundary=b0undary"}
    with contextlib.suppress(aiohttp.ClientError):  # the gateway may close the upload before answering
        async with session.post(f"{gateway.url}/v1/audio/transcriptions", data=chunked(), headers=headers) as response:
            assert response.status == 413
    await asyncio.sleep(0.3)
    assert recorder.requests == []
    async with session.post(f"{gateway.url}/v1/audio/transcriptions", data=form(wav(1))) as response:
        assert response.status == 200  # under the cap, fine


async def test_held_request_dispatches_when_a_replica_appears(
    sandbox: Sandbox,
    kube: Kube,
    session: aiohttp.ClientSession,
    gateways: list[Gateway],
    simulators: Any,
    tmp_path: Path,
) -> None:
    port = await start_sim(simulators, session, "--request-seconds", "0.01")
    await put_slice(kube, "mini-a", port, ready=False)  # scaled to zero: nothing ready
    gateway = await start_gateway(gateways, sandbox, tmp_path, session, "--hold-timeout-seconds", "30")
    held = asyncio.create_task(session.post(f"{gateway.url}/v1/audio/transcriptions", data=form(wav(3))))
    await eventually(lambda: gateway.metric(session, names.HELD_REQUESTS), timeout=5)
    assert await gateway.metric(session, names.QUEUED_AUDIO_SECONDS) == pytest.approx(3.0)
    assert not held.done()
    appeared = time.monotonic()
    await put_slice(kube, "mini-a", port, ready=True)
    async with await asyncio.wait_for(held, 10) as response:
        assert response.status == 200
    assert time.monotonic() - appeared < 3
    assert await gateway.metric(session, names.HELD_REQUESTS) == 0
    assert await gateway.metric(session, names.READY_REPLICAS) == 1


async def test_hold_times_out_when_no_replica_comes(
    sandbox: Sandbox, kube: Kube, session: aiohttp.ClientSession, gateways: list[Gateway], tmp_path: Path
) -> None:
    gateway = await start_gateway(gateways, sandbox, tmp_path, session, "--hold-timeout-seconds", "0.5")
    async with session.get(f"{gateway.url}/v1/models") as response:
        assert response.status == 503
        assert response.headers["Retry-After"].isdigit()
        error = (await response.json())["error"]
        assert error["code"] == "endpoint_starting"
        assert "scaled to zero" in error["message"]


async def test_full_queue_429_and_queue_timeout_503(
    sandbox: Sandbox,
    kube: Kube,
    session: aiohttp.ClientSession,
    gateways: list[Gateway],
    recorder: Recorder,
    tmp_path: Path,
) -> None:
    await put_slice(kube, "rec", recorder.port)
    gateway = await start_gateway(
        gateways,
        sandbox,
        tmp_path,
        session,
        "--max-inflight-per-replica",
        "1",
        "--max-queue",
        "1",
        "--queue-timeout-seconds",
        "1.5",
    )
    recorder.gate.clear()
    url = f"{gateway.url}/v1/completions"
    running = asyncio.create_task(session.post(url, json={"prompt": "a"}))
    await eventually(lambda: gateway.metric(session, names.INFLIGHT_REQUESTS), timeout=5)
    queued = asyncio.create_task(session.post(url, json={"prompt": "b"}))
    await eventually(lambda: gateway.metric(session, names.QUEUED_REQUESTS), timeout=5)
    async with session.post(url, json={"prompt": "c"}) as response:
        assert response.status == 429
        assert int(response.headers["Retry-After"]) > 0
        assert (await response.json())["error"]["code"] == "queue_full"
    async with await asyncio.wait_for(queued, 5) as response:
        assert response.status == 503
        assert int(response.headers["Retry-After"]) > 0
        assert (await response.json())["error"]["code"] == "queue_timeout"
    recorder.gate.set()
    async with await running as response:
        assert response.status == 200
    assert len(recorder.requests) == 1


async def test_short_clips_go_around_a_long_one(
    sandbox: Sandbox,
    kube: Kube,
    session: aiohttp.ClientSession,
    gateways: list[Gateway],
    simulators: Any,
    tmp_path: Path,
) -> None:
    ports = [await start_sim(simulators, session, "--request-seconds", "1.5") for _ in range(2)]
    for index, port in enumerate(ports):
        await put_slice(kube, f"mini-{index}", port)
    gateway = await start_gateway(gateways, sandbox, tmp_path, session)
    await eventually(lambda: _equals(gateway.metric(session, names.READY_REPLICAS), 2), timeout=5)
    url = f"{gateway.url}/v1/audio/transcriptions"
    long = asyncio.create_task(session.post(url, data=form(wav(1200), "long.wav")))
    await eventually(lambda: gateway.metric(session, names.INFLIGHT_REQUESTS), timeout=5)
    shorts = [asyncio.create_task(session.post(url, data=form(wav(5), "short.wav"))) for _ in range(6)]
    responses = await asyncio.gather(long, *shorts)
    for response in responses:
        assert response.status == 200
        response.release()
    served = []
    for port in ports:
        async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
            page = await response.text()
        line = next(x for x in page.splitlines() if x.startswith("vllm:request_success_total"))
        served.append(float(line.rsplit(" ", 1)[1]))
    assert sorted(served) == [1, 6], served  # the long clip alone on one replica


async def test_suspended_endpoint_answers_503(
    sandbox: Sandbox,
    kube: Kube,
    session: aiohttp.ClientSession,
    gateways: list[Gateway],
    recorder: Recorder,
    tmp_path: Path,
) -> None:
    await put_slice(kube, "rec", recorder.port)
    await put_endpoint(kube, suspended=True)
    gateway = await start_gateway(gateways, sandbox, tmp_path, session)
    for method, route in (("GET", "/v1/models"), ("POST", "/v1/chat/completions")):
        body = {} if method == "POST" else None  # GET /v1/models takes no body
        async with session.request(method, gateway.url + route, json=body) as response:
            assert response.status == 503
            assert response.headers["Retry-After"].isdigit()
            error = (await response.json())["error"]
            assert error["code"] == "endpoint_suspended"
            assert "endpoint suspended" in error["message"]
    assert recorder.requests == []


async def test_suspend_and_resume_under_load_answer_every_request_without_a_restart(
    sandbox: Sandbox,
    kube: Kube,
    session: aiohttp.ClientSession,
    gateways: list[Gateway],
    recorder: Recorder,
    tmp_path: Path,
) -> None:
    """Callers hammer the gateway while its endpoint scales to zero (requests held), is suspended,
    resumed, and gets a replica back, as the operator does it: every request gets a complete answer,
    200 or 503 endpoint_suspended with Retry-After, within the bound; the same process throughout."""
    bound = 60.0  # far below the hold timeout (1200 s): a request held past a suspend would show
    await put_endpoint(kube, suspended=False)
    await put_slice(kube, "rec", recorder.port)
    gateway = await start_gateway(gateways, sandbox, tmp_path, session)
    answers: list[tuple[int, str | None, str | None]] = []  # status, Retry-After, error code
    failures: list[str] = []
    stop = asyncio.Event()

    async def caller() -> None:
        timeout = aiohttp.ClientTimeout(total=bound)
        while not stop.is_set():
            try:
                url = f"{gateway.url}/v1/chat/completions"
                async with session.post(url, json={"messages": []}, timeout=timeout) as response:
                    body = await response.read()
                    code = json.loads(body)["error"]["code"] if response.status != 200 else None
                    answers.append((response.status, response.headers.get("Retry-After"), code))
            except (aiohttp.ClientError, TimeoutError, ValueError, KeyError) as exc:
                failures.append(repr(exc))
                await asyncio.sleep(0.1)

    def count(status: int) -> int:
        return sum(1 for answer in answers if answer[0] == status)

    async def answered(status: int, at_least: int) -> bool:
        return count(status) >= at_least

    callers = [asyncio.create_task(caller()) for _ in range(6)]
    try:
        await eventually(lambda: answered(200, 20), timeout=30)
        recorder.gate.clear()  # one request in flight on the replica across the suspend
        in_flight = asyncio.create_task(session.post(f"{gateway.url}/v1/completions", json={"prompt": "a"}))

        async def on_the_replica() -> bool:
            return any(path == "/v1/completions" for _, path, _, _ in recorder.requests)

        await eventually(on_the_replica, timeout=30)
        await put_slice(kube, "rec", recorder.port, ready=False)  # scaled to zero: callers are held
        await eventually(lambda: _at_least(gateway.metric(session, names.HELD_REQUESTS), 6), timeout=30)
        await put_endpoint(kube, suspended=True)  # held requests get 503 at once
        await eventually(lambda: _equals(gateway.metric(session, names.HELD_REQUESTS), 0), timeout=30)
        suspended_at = count(503)
        await eventually(lambda: answered(503, suspended_at + 20), timeout=30)
        recorder.gate.set()
        async with await asyncio.wait_for(in_flight, 30) as response:
            assert response.status == 200  # what was on a replica finished there
        await put_endpoint(kube, suspended=False)  # resumed: held again until a replica is ready
        await eventually(lambda: _at_least(gateway.metric(session, names.HELD_REQUESTS), 6), timeout=30)
        await put_slice(kube, "rec", recorder.port)
        resumed_at = count(200)
        await eventually(lambda: answered(200, resumed_at + 20), timeout=30)
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*callers), bound + 10)
    assert failures == [], failures[:5]
    statuses = {answer[0] for answer in answers}
    assert statuses == {200, 503}, statuses
    refused = [answer for answer in answers if answer[0] == 503]
    assert all(code == "endpoint_suspended" and (retry or "").isdigit() for _, retry, code in refused), refused[:5]
    assert gateway.process.poll() is None  # learned it all live, with no restart


async def test_held_requests_get_503_when_the_gateway_stops(
    sandbox: Sandbox,
    kube: Kube,
    session: aiohttp.ClientSession,
    gateways: list[Gateway],
    tmp_path: Path,
) -> None:
    """SIGTERM with requests held (no replica): they get 503 with Retry-After now, not a reset later."""
    gateway = await start_gateway(gateways, sandbox, tmp_path, session)
    url = f"{gateway.url}/v1/chat/completions"
    held = [asyncio.create_task(session.post(url, json={"messages": []})) for _ in range(3)]
    await eventually(lambda: _at_least(gateway.metric(session, names.HELD_REQUESTS), 3), timeout=30)
    gateway.process.terminate()
    for task in held:
        async with await asyncio.wait_for(task, 30) as response:
            assert response.status == 503
            assert response.headers["Retry-After"].isdigit()
            assert (await response.json())["error"]["code"] == "gateway_stopping"
    assert await asyncio.to_thread(gateway.process.wait, 30) == 0


async def test_sigterm_lets_in_flight_requests_finish(
    sandbox: Sandbox,
    kube: Kube,
    session: aiohttp.ClientSession,
    gateways: list[Gateway],
    recorder: Recorder,
    tmp_path: Path,
) -> None:
    await put_slice(kube, "rec", recorder.port)
    gateway = await start_gateway(gateways, sandbox, tmp_path, session)
    recorder.gate.clear()
    running = asyncio.create_task(session.post(f"{gateway.url}/v1/completions", json={"prompt": "a"}))
    await eventually(lambda: gateway.metric(session, names.INFLIGHT_REQUESTS), timeout=5)
    gateway.process.terminate()
    await asyncio.sleep(0.5)
    assert gateway.process.poll() is None  # still draining
    recorder.gate.set()
    async with await asyncio.wait_for(running, 5) as response:
        assert response.status == 200
    assert await asyncio.to_thread(gateway.process.wait, 10) == 0


async def test_a_replica_that_refuses_connections_is_skipped(
    sandbox: Sandbox,
    kube: Kube,
    session: aiohttp.ClientSession,
    gateways: list[Gateway],
    recorder: Recorder,
    tmp_path: Path,
) -> None:
    await put_slice(kube, "dead", free_port())  # listed ready, but nothing listens (yet)
    await put_slice(kube, "rec", recorder.port)
    gateway = await start_gateway(gateways, sandbox, tmp_path, session)
    await eventually(lambda: _equals(gateway.metric(session, names.READY_REPLICAS), 2), timeout=5)
    statuses = []
    for response in await asyncio.gather(*(session.get(f"{gateway.url}/v1/models") for _ in range(6))):
        statuses.append(response.status)
        response.release()
    assert statuses == [200] * 6
    assert len(recorder.requests) == 6
    assert "unreachable" in gateway.log_path.read_text()  # the dead one was tried, and skipped


async def test_a_request_to_a_lost_only_replica_waits_for_its_replacement(
    sandbox: Sandbox,
    kube: Kube,
    session: aiohttp.ClientSession,
    gateways: list[Gateway],
    recorder: Recorder,
    tmp_path: Path,
) -> None:
    await put_slice(kube, "dead", free_port())  # the only replica, still listed ready: its node was lost
    gateway = await start_gateway(gateways, sandbox, tmp_path, session)
    await eventually(lambda: _equals(gateway.metric(session, names.READY_REPLICAS), 1), timeout=5)
    answer = asyncio.create_task(session.get(f"{gateway.url}/v1/models"))

    async def dead_one_tried() -> bool:
        return "unreachable" in gateway.log_path.read_text()

    await eventually(dead_one_tried, timeout=10)
    await put_slice(kube, "rec", recorder.port)  # the replacement is ready
    async with await asyncio.wait_for(answer, 30) as response:
        assert response.status == 200, await response.text()
    assert len(recorder.requests) == 1


async def test_a_caller_hanging_up_leaves_the_queue(
    sandbox: Sandbox,
    kube: Kube,
    session: aiohttp.ClientSession,
    gateways: list[Gateway],
    recorder: Recorder,
    tmp_path: Path,
) -> None:
    await put_slice(kube, "rec", recorder.port)
    gateway = await start_gateway(gateways, sandbox, tmp_path, session, "--max-inflight-per-replica", "1")
    recorder.gate.clear()
    url = f"{gateway.url}/v1/completions"
    running = asyncio.create_task(session.post(url, json={"prompt": "a"}))
    await eventually(lambda: gateway.metric(session, names.INFLIGHT_REQUESTS), timeout=5)
    impatient = asyncio.create_task(session.post(url, json={"prompt": "b"}))
    await eventually(lambda: gateway.metric(session, names.QUEUED_REQUESTS), timeout=5)
    impatient.cancel()  # the client closes its connection
    with contextlib.suppress(asyncio.CancelledError):
        await impatient
    await eventually(lambda: _equals(gateway.metric(session, names.QUEUED_REQUESTS), 0), timeout=5)
    recorder.gate.set()
    async with await running as response:
        assert response.status == 200
    await asyncio.sleep(0.2)
    assert len(recorder.requests) == 1  # the abandoned one never reached the backend


async def test_a_key_over_its_limit_gets_429_with_retry_after_while_another_key_is_served(
    sandbox: Sandbox,
    kube: Kube,
    session: aiohttp.ClientSession,
    gateways: list[Gateway],
    simulators: Any,
    tmp_path: Path,
) -> None:
    port = await start_sim(simulators, session, "--request-seconds", "0.01")
    await put_secret(kube, "callers", {"alice": CALLER_KEY, "bob": "caller-key-two"})
    await put_slice(kube, "mini-a", port)
    gateway = await start_gateway(
        gateways,
        sandbox,
        tmp_path,
        session,
        "--caller-keys-secret",
        "callers",
        "--key-requests-per-minute",
        "1000",
        "--key-override",
        "alice:requests-per-minute=2",
    )
    chat = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
    for _ in range(2):
        async with session.post(f"{gateway.url}/v1/chat/completions", json=chat, headers=auth()) as response:
            assert response.status == 200, await response.text()
    async with session.post(f"{gateway.url}/v1/chat/completions", json=chat, headers=auth()) as response:
        assert response.status == 429, await response.text()
        retry_after = int(response.headers["Retry-After"])
        error = (await response.json())["error"]
    assert 25 <= retry_after <= 30, retry_after  # the bucket refills one request every 30 s
    assert (error["type"], error["code"]) == ("rate_limit_error", "rate_limit_exceeded")
    assert "requests per minute" in error["message"]
    for _ in range(5):
        async with session.post(
            f"{gateway.url}/v1/chat/completions", json=chat, headers=auth("caller-key-two")
        ) as response:
            assert response.status == 200, await response.text()
    alice = key_id(CALLER_KEY.encode())
    limited = f'key_id="{alice}",limit="requests_per_minute"'
    assert await gateway.metric(session, names.KEY_LIMITED_REQUESTS_TOTAL, limited) == 1
    bob = key_id(b"caller-key-two")
    assert (
        await gateway.metric(session, names.KEY_LIMITED_REQUESTS_TOTAL, f'key_id="{bob}",limit="requests_per_minute"')
        == 0
    )


async def _served(session: aiohttp.ClientSession, port: int) -> float:
    """Requests a simulator has finished (its vllm:request_success_total)."""
    async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
        text = await response.text()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("vllm:request_success"))


async def test_backend_key_deleted_then_recreated_loses_no_request(
    sandbox: Sandbox,
    kube: Kube,
    session: aiohttp.ClientSession,
    gateways: list[Gateway],
    simulators: Any,
    tmp_path: Path,
) -> None:
    """vLLM holds the key it started with. The Secret is deleted (the gateway keeps the keys it read),
    then recreated with a new key, as the operator does: replicas started before keep getting the
    old key, replicas started after get the new one, and one started with a key the gateway never
    read gets no work. Callers see only 200s throughout."""
    old_replica = await start_sim(simulators, session, "--api-key", "key-one", "--request-seconds", "0.01")
    await put_secret(kube, "vllm-key", {"api-key": "key-one"})
    await put_slice(kube, "old", old_replica)
    gateway = await start_gateway(gateways, sandbox, tmp_path, session, "--backend-key-secret", "vllm-key:api-key")
    failures: list[tuple[int, str]] = []
    sent = 0
    done = asyncio.Event()

    async def hammer() -> None:
        nonlocal sent
        chat = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
        while not done.is_set():
            async with session.post(f"{gateway.url}/v1/chat/completions", json=chat) as response:
                sent += 1
                if response.status != 200:
                    failures.append((response.status, (await response.text())[:200]))

    async def missing() -> float:
        return await gateway.metric(session, names.SECRET_MISSING, 'key="api-key",secret="vllm-key"')

    callers = [asyncio.create_task(hammer()) for _ in range(4)]
    try:
        await eventually(lambda: _served(session, old_replica), timeout=20)
        await kube.delete(f"/api/v1/namespaces/{NS}/secrets/vllm-key")
        await eventually(lambda: _equals(missing(), 1.0), timeout=20)
        before = await _served(session, old_replica)
        await eventually(lambda: _equals_above(_served(session, old_replica), before + 20), timeout=20)
        await put_secret(kube, "vllm-key", {"api-key": "key-two"})  # the operator's new random key
        await eventually(lambda: _equals(missing(), 0.0), timeout=20)
        new_replica = await start_sim(simulators, session, "--api-key", "key-two", "--request-seconds", "0.01")
        stranger = await start_sim(simulators, session, "--api-key", "never-read", "--request-seconds", "0.01")
        await put_slice(kube, "new", new_replica)
        await put_slice(kube, "stranger", stranger)
        before = await _served(session, old_replica)
        await eventually(lambda: _equals_above(_served(session, new_replica), 20), timeout=30)
        await eventually(lambda: _equals_above(_served(session, old_replica), before + 20), timeout=30)
    finally:
        done.set()
        await asyncio.gather(*callers)
    assert failures == [], f"{len(failures)} of {sent} requests failed, first: {failures[:3]}"
    assert await _served(session, stranger) == 0
    log = gateway.log_path.read_text()
    assert "Secret speech/vllm-key key 'api-key' is missing" in log
    assert "refuses all 2 backend keys" in log
    assert f"127.0.0.1:{stranger}" in log
    for key in ("key-one", "key-two"):
        assert key not in log


async def _equals_above(awaitable: Any, floor: float) -> bool:
    return bool(await awaitable >= floor)


async def test_a_missing_caller_key_secret_is_named_and_callers_get_503(
    sandbox: Sandbox,
    kube: Kube,
    session: aiohttp.ClientSession,
    gateways: list[Gateway],
    recorder: Recorder,
    tmp_path: Path,
) -> None:
    await put_slice(kube, "rec", recorder.port)
    gateway = await start_gateway(
        gateways, sandbox, tmp_path, session, "--caller-keys-secret", "callers:alice", "--caller-keys-secret", "more"
    )
    async with session.get(f"{gateway.url}/v1/models", headers=auth()) as response:
        assert response.status == 503, await response.text()
        body = await response.text()
    assert json.loads(body)["error"]["code"] == "endpoint_misconfigured"
    assert "callers" not in body
    assert "alice" not in body
    assert await gateway.metric(session, names.SECRET_MISSING, 'key="alice",secret="callers"') == 1
    assert await gateway.metric(session, names.SECRET_MISSING, 'key="",secret="more"') == 1
    log = gateway.log_path.read_text()
    assert "Secret speech/callers key 'alice' is missing" in log
    assert "Secret speech/more is missing" in log
    # A Secret with the wrong key is as missing as no Secret.
    await put_secret(kube, "callers", {"bob": CALLER_KEY})
    await asyncio.sleep(1)
    async with session.get(f"{gateway.url}/v1/models", headers=auth()) as response:
        assert response.status == 503
    await put_secret(kube, "callers", {"alice": CALLER_KEY})

    async def status() -> int:
        async with session.get(f"{gateway.url}/v1/models", headers=auth()) as response:
            return response.status

    await eventually(lambda: _equals(status(), 200), timeout=10)
    assert await gateway.metric(session, names.SECRET_MISSING, 'key="alice",secret="callers"') == 0
    # One Secret of two there: its keys work, others get 401; the other is still reported.
    async with session.get(f"{gateway.url}/v1/models", headers=auth("wrong")) as response:
        assert response.status == 401
    assert await gateway.metric(session, names.SECRET_MISSING, 'key="",secret="more"') == 1
    assert CALLER_KEY not in gateway.log_path.read_text()
