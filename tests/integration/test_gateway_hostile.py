"""Hostile requests over raw sockets against `voxtral-operator gateway`, with a strict backend behind it.

The backend frames what reaches it as a strict HTTP/1.1 server does (h11) and records every byte of
every connection the gateway opens to it; afterwards httptools parses the same byte streams, and
both must find the same messages at the same boundaries (a pooled keep-alive connection that two
strict parsers read alike cannot be desynchronised). The requests are generated from a seed: the
smuggling families (CL.TE, TE.CL, TE.TE, duplicate Content-Length, a body on GET, chunk-size
tricks, pipelining after a short body), content codings, header and path tricks, and overflowing
numbers in every JSON field the gateway reads (the callers' max_tokens and the backend's usage).
Only allowed routes may reach the backend, each with the method, route and body bytes the caller
sent, and the gateway's own headers and framing. Both of aiohttp's HTTP parsers (C and pure Python)
sit in front.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gzip
import json
import random
import struct
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import h11
import httptools
import pytest

from tests.integration.test_gateway import (
    BACKEND_KEY,
    CALLER_KEY,
    Gateway,
    projected_secrets,
    put_secret,
    put_slice,
    secrets_dir,
)
from voxtral_operator.gateway import metrics as names
from voxtral_operator.gateway.sources import PROBE_PATH, PROBE_USER_AGENT
from voxtral_testbed.harness import Kube, free_port
from voxtral_testbed.sandbox import Sandbox

BACKEND_KEY_PROBE = ("GET", PROBE_PATH, b"")
pytestmark = pytest.mark.integration

SEED = 15
FORWARDED = {"host", "authorization", "x-forwarded-for", "x-forwarded-proto", "content-length"}
FORWARDED |= {"transfer-encoding", "content-type", "accept", "user-agent", "x-request-id"}
# What the backend answers in `usage`: numbers a JSON parser may choke on or overflow with.
HOSTILE_USAGE = (b"1" + b"0" * 400, b"1e999", b"-5", b"NaN", b"Infinity", b"true", b"2.5", b"1" * 5000, b"7")


# --- the strict backend ---------------------------------------------------------------------


@dataclass
class Received:
    method: str
    target: str
    headers: list[tuple[bytes, bytes]]
    body: bytes


@dataclass
class BackendConnection:
    raw: bytearray = field(default_factory=bytearray)
    messages: list[Received] = field(default_factory=list)
    error: str | None = None
    cut_off: bool = False  # ended in the middle of a message


class StrictBackend:
    """Frames each connection's bytes with h11, answers each request with JSON, records everything."""

    def __init__(self) -> None:
        self.connections: list[BackendConnection] = []
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._answered = 0

    async def start(self) -> StrictBackend:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    @property
    def received(self) -> list[Received]:
        return [message for connection in self.connections for message in connection.messages]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        record = BackendConnection()
        self.connections.append(record)
        conn = h11.Connection(h11.SERVER)
        current: Received | None = None
        try:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = await reader.read(65536)
                    record.raw += data
                    conn.receive_data(data)
                    if not data and conn.their_state is not h11.DONE:
                        record.cut_off = conn.their_state is h11.SEND_BODY
                        return
                elif isinstance(event, h11.Request):
                    current = Received(event.method.decode(), event.target.decode(), list(event.headers), b"")
                elif isinstance(event, h11.Data) and current is not None:
                    current.body += bytes(event.data)
                elif isinstance(event, h11.EndOfMessage) and current is not None:
                    record.messages.append(current)
                    current = None
                    payload = self._usage()
                    length = str(len(payload)).encode()
                    answer = h11.Response(
                        status_code=200, headers=[(b"Content-Type", b"application/json"), (b"Content-Length", length)]
                    )
                    writer.write(conn.send(answer) or b"")
                    writer.write(conn.send(h11.Data(data=payload)) or b"")
                    writer.write(conn.send(h11.EndOfMessage()) or b"")
                    await writer.drain()
                    conn.start_next_cycle()
                elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                    return
        except h11.RemoteProtocolError as exc:
            record.error = f"h11 refused what the gateway sent: {exc}"
        except (ConnectionError, h11.LocalProtocolError):
            pass
        finally:
            writer.close()

    def _usage(self) -> bytes:
        number = HOSTILE_USAGE[self._answered % len(HOSTILE_USAGE)]
        self._answered += 1
        return b'{"usage": {"prompt_tokens": ' + number + b', "completion_tokens": ' + number + b"}}"


def httptools_messages(raw: bytes) -> tuple[list[tuple[str, str, bytes]], str | None]:
    """The complete messages httptools finds in a byte stream, and its error if it refuses the stream."""
    found: list[tuple[str, str, bytes]] = []

    class Collector:
        url = b""
        body = b""

        def on_message_begin(self) -> None:
            self.url, self.body = b"", b""

        def on_url(self, url: bytes) -> None:
            self.url += url

        def on_body(self, body: bytes) -> None:
            self.body += body

        def on_message_complete(self) -> None:
            found.append((parser.get_method().decode(), self.url.decode(), self.body))

    parser = httptools.HttpRequestParser(Collector())
    try:
        parser.feed_data(raw)
    except httptools.HttpParserError as exc:
        return found, f"{type(exc).__name__}: {exc}"
    return found, None


# --- the hostile requests -------------------------------------------------------------------


@dataclass
class Case:
    name: str
    data: bytes
    expected: list[tuple[str, str, bytes]]  # what must reach the backend (method, route, body)
    close_early: bool = False  # the caller hangs up right after sending
    # What may reach it or not, by the parser in front (where aiohttp's two parsers differ).
    optional: list[tuple[str, str, bytes]] = field(default_factory=list)


def request(
    method: str,
    target: str,
    headers: list[tuple[str, str]] | None = None,
    body: bytes = b"",
    *,
    key: str | None = CALLER_KEY,
    length: bool = True,
    close: bool = True,
    version: str = "HTTP/1.1",
) -> bytes:
    lines = [f"{method} {target} {version}", "Host: gateway"]
    if key is not None:
        lines.append(f"Authorization: Bearer {key}")
    lines += [f"{name}: {value}" for name, value in headers or []]
    chunked = any(name.strip().lower() == "transfer-encoding" for name, _ in headers or [])
    if length and body and not chunked:  # a case that sends Transfer-Encoding frames its body itself
        lines.append(f"Content-Length: {len(body)}")
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def chunked(body: bytes, sizes: list[int]) -> bytes:
    out, start = b"", 0
    for size in [*sizes, len(body)]:
        piece = body[start : start + size]
        start += len(piece)
        if piece:
            out += f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    return out + b"0\r\n\r\n"


def wav_header(byte_rate: int, data_size: int) -> bytes:
    header = b"RIFF" + struct.pack("<I", 36 + data_size & 0xFFFFFFFF) + b"WAVE"
    header += b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, 16000, byte_rate, 2, 16)
    return header + b"data" + struct.pack("<I", data_size) + b"\x00" * 64


def multipart(clip: bytes, name: str = "a.wav") -> tuple[str, bytes]:
    boundary = "hostile0boundary"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
        f"Content-Type: audio/wav\r\n\r\n"
    ).encode() + clip
    body += f'\r\n--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\nm\r\n--{boundary}--\r\n'.encode()
    return f"multipart/form-data; boundary={boundary}", body


def cases(rng: random.Random) -> Iterator[Case]:
    json_type = [("Content-Type", "application/json")]
    smuggled = b"GET /metrics HTTP/1.1\r\nHost: vllm\r\n\r\n"
    serial = iter(range(10_000))

    def body() -> bytes:
        return json.dumps({"prompt": f"case {next(serial)}", "max_tokens": rng.randint(1, 64)}).encode()

    def te_name() -> str:
        return rng.choice(["Transfer-Encoding", "transfer-encoding", "TRANSFER-ENCODING"])

    # CL.TE and TE.CL: both headers, either order.
    for order in range(4):
        inner = b"0\r\n\r\n" + smuggled
        te = (te_name(), "chunked")
        cl = ("Content-Length", str(len(inner)))
        headers = [te, cl] if order % 2 else [cl, te]
        yield Case(f"cl-te-{order}", request("POST", "/v1/completions", json_type + headers, inner, length=False), [])
    # TE.TE: a second or obfuscated Transfer-Encoding.
    for value in (
        "chunked\r\nTransfer-Encoding: x",
        "xchunked",
        "chunked, identity",
        "gzip, chunked",
        "chunked, chunked",
        '"chunked"',
        "chunked\x0b",
        "identity",
    ):
        payload = chunked(b'{"prompt": "te"}', [3]) + smuggled
        yield Case(
            f"te-te-{value!r}", request("POST", "/v1/completions", [*json_type, (te_name(), value)], payload), []
        )
    yield Case(
        "te-obs-fold",
        request("POST", "/v1/completions", [*json_type, ("X-Pad", "a\r\n Transfer-Encoding: chunked")], body()),
        [],
    )
    yield Case(
        "te-space-before-colon",
        request("POST", "/v1/completions", [("Transfer-Encoding ", "chunked")], b"0\r\n\r\n"),
        [],
    )
    yield Case(
        "te-http10",
        request("POST", "/v1/completions", [(te_name(), "chunked")], chunked(b"{}", []), version="HTTP/1.0"),
        [],
    )
    # Accepted chunked bodies, with sizes split at random and an extension: reach the backend whole.
    for index in range(4):
        payload = body()
        sizes = sorted(rng.sample(range(1, len(payload)), 2))
        framed = chunked(payload, [sizes[0], sizes[1] - sizes[0]])
        if index == 3:
            framed = framed.replace(b"\r\n", b';ext="x"\r\n', 1)
        name = te_name() if index != 2 else "Transfer-Encoding"
        value = "chunked" if index != 2 else "\tCHUNKED "
        yield Case(
            f"chunked-{index}",
            request("POST", "/v1/completions", [*json_type, (name, value)], framed),
            [("POST", "/v1/completions", payload)],
        )
    # Duplicate or malformed Content-Length.
    for values in (["5", "5"], ["5", "6"], ["5, 5"], ["+5"], ["-1"], ["0x5"], [" 5 5"], ["5" + "0" * 30], ["\xb2"]):
        headers = [("Content-Length", value) for value in values]
        yield Case(f"cl-{values!r}", request("POST", "/v1/completions", headers, b"hello" + smuggled, length=False), [])
    # A body (or its framing) on GET /v1/models, the next request hidden in it.
    for headers, payload in (
        ([("Content-Length", str(len(smuggled)))], smuggled),
        ([("Content-Length", "5")], b"GET /" + smuggled),
        ([("Transfer-Encoding", "chunked")], chunked(smuggled, [])),
        ([("Content-Length", "0"), ("Content-Length", "0")], smuggled),
    ):
        yield Case(f"get-body-{headers}", request("GET", "/v1/models", headers, payload, length=False, close=False), [])
    # Chunk-size tricks.
    for framed in (
        b"0x5\r\nhello\r\n0\r\n\r\n",
        b"5 \r\nhello\r\n0\r\n\r\n",
        b"-5\r\nhello\r\n0\r\n\r\n",
        b"fffffffffffffffffffff5\r\nhello\r\n0\r\n\r\n",
        b"5\nhello\n0\n\n",
        b"5\r\nhelloXX\r\n0\r\n\r\n",
        b"3\r\nhello\r\n0\r\n\r\n",
        b"5\r\nhello\r\n0\r\nContent-Length: 99\r\n\r\n",
    ):
        yield Case(
            f"chunk-{framed[:8]!r}",
            request("POST", "/v1/completions", [("Transfer-Encoding", "chunked")], framed + smuggled, close=False),
            [],
            # A trailer naming Content-Length: the C parser refuses it, the pure-Python one drops it.
            optional=[("POST", "/v1/completions", b"hello")] if b"Content-Length: 99" in framed else [],
        )
    # Pipelining after a short body: the first reaches the backend; what follows is parsed at the
    # gateway as requests of their own (404, or a second allowed request).
    for index in range(3):
        first = body()
        follow = [
            request("GET", "/metrics", close=False),
            request("POST", "/v1/../invocations", json_type, b"{}", close=False),
            request("GET", "/v1/models"),
        ][index]
        expected = [("POST", "/v1/completions", first)]
        if index == 2:
            expected.append(("GET", "/v1/models", b""))
        yield Case(
            f"pipeline-{index}", request("POST", "/v1/completions", json_type, first, close=False) + follow, expected
        )
    # Content codings: refused, never inflated.
    bomb = gzip.compress(b"\x00" * 2_000_000)
    for coding in ("gzip", "deflate", "br", "gzip, identity", "x-gzip"):
        yield Case(
            f"coding-{coding}", request("POST", "/v1/completions", [*json_type, ("Content-Encoding", coding)], bomb), []
        )
    identity = body()
    yield Case(
        "coding-identity",
        request("POST", "/v1/completions", [*json_type, ("Content-Encoding", "identity")], identity),
        [("POST", "/v1/completions", identity)],
    )
    # Header tricks: dropped on the way (hop-by-hop, forwarding claims, Connection-named), or refused.
    tricks = body()
    yield Case(
        "headers-dropped",
        request(
            "POST",
            "/v1/completions",
            [
                *json_type,
                ("Connection", "X-Secret"),
                ("X-Secret", "internal"),
                ("X-Forwarded-For", "6.6.6.6"),
                ("X-Forwarded-Host", "evil"),
                ("Forwarded", "for=6.6.6.6"),
                ("X-Real-IP", "6.6.6.6"),
                ("Proxy-Authorization", "Basic eA=="),
                ("Upgrade", "h2c"),
                ("Keep-Alive", "timeout=999"),
                ("TE", "trailers"),
                ("Cookie", "session=1"),
            ],
            tricks,
        ),
        [("POST", "/v1/completions", tricks)],
    )
    for name, line in (
        ("nul", b"X-A: a\x00b"),
        ("bare-cr", b"X-A: a\rX-B: b"),
        ("space-name", b"X A: b"),
        ("utf8-name", b"X\xc3\xa9: b"),
        ("no-colon", b"X-A"),
        ("obs-fold", b"X-A: a\r\n\tb"),
        ("ctl", b"X-A: a\x7fb"),
        ("auth-nul", b"Authorization: Bearer " + CALLER_KEY.encode() + b"\x00"),
        ("dup-host", b"Host: other"),
        ("expect", b"Expect: 200-ok"),
    ):
        payload = body()
        data = request("POST", "/v1/completions", json_type, payload)
        data = data.replace(b"\r\nConnection: close", b"\r\n" + line + b"\r\nConnection: close", 1)
        yield Case(f"header-{name}", data, [])
    yield Case("bare-lf", request("GET", "/v1/models").replace(b"\r\n", b"\n"), [])
    odd_key = request("GET", "/v1/models", key=None, headers=[("Authorization", "Bearer \xe9\xff" + CALLER_KEY)])
    yield Case("auth-latin1", odd_key, [])
    yield Case("auth-twice", request("GET", "/v1/models", headers=[("Authorization", "Bearer other")]), [])
    # Path tricks: only the exact route matches; the query string never reaches the backend.
    for target in (
        "/v1/%6dodels",
        "/v1/models/",
        "/v1//models",
        "//v1/models",
        "/v1/./models",
        "/v1/x/../models",
        "/V1/MODELS",
        "/v1/models;x",
        "/v1/models%00",
        "/v1\\models",
        "http://gateway/v1/models",
        "*",
        "/v1/models#x",
        "/metrics",
        "/invocations",
        "/v1/load_lora_adapter",
    ):
        yield Case(f"path-{target}", request("GET", target), [])
    yield Case("query", request("GET", f"/v1/models?api_key={CALLER_KEY}&x=1"), [("GET", "/v1/models", b"")])
    yield Case("version-2", request("GET", "/v1/models", version="HTTP/2.0"), [])
    yield Case("version-0.9", b"GET /v1/models\r\n\r\n", [])
    # aiohttp's C parser refuses a lower-case method; its pure-Python one upper-cases it first.
    yield Case("method-lower", request("get", "/v1/models"), [], optional=[("GET", "/v1/models", b"")])
    yield Case("method-wrong", request("PUT", "/v1/models", json_type, b"{}"), [])
    # Overflowing numbers in the fields the gateway reads.
    for number in (
        "9" * 400,
        "9" * 5000,
        "1e999",
        "-1",
        "-" + "9" * 400,
        "1.5",
        "NaN",
        "Infinity",
        "true",
        '"9999999999999999999999"',
        "0",
        "1" + "0" * 18,
    ):
        for field_name in ("max_tokens", "max_completion_tokens"):
            payload = f'{{"prompt": "n{next(serial)}", "{field_name}": {number}}}'.encode()
            yield Case(
                f"number-{field_name}-{number[:12]}",
                request("POST", "/v1/completions", json_type, payload),
                [("POST", "/v1/completions", payload)],
            )
    long_payload = b'{"messages": [], "pad": "' + b"x" * 70_000 + b'", "max_tokens": ' + b"9" * 400 + b"}"
    yield Case(
        "number-after-prefix",
        request("POST", "/v1/chat/completions", json_type, long_payload),
        [("POST", "/v1/chat/completions", long_payload)],
    )
    early = b'{"max_tokens": ' + b"9" * 400 + b', "pad": "' + b"x" * 70_000 + b'"}'
    yield Case(
        "number-in-prefix-of-long-body",
        request("POST", "/v1/chat/completions", json_type, early),
        [("POST", "/v1/chat/completions", early)],
    )
    deep = b"[" * 60_000 + b"]" * 60_000
    yield Case("deep-json", request("POST", "/v1/completions", json_type, deep), [("POST", "/v1/completions", deep)])
    for rate, size in ((0, 100), (1, 0xFFFFFFFF), (0xFFFFFFFF, 0xFFFFFFFF), (32000, 0)):
        content_type, payload = multipart(wav_header(rate, size))
        yield Case(
            f"wav-{rate}-{size}",
            request("POST", "/v1/audio/transcriptions", [("Content-Type", content_type)], payload),
            [("POST", "/v1/audio/transcriptions", payload)],
        )
    flac = b"fLaC\x00\x00\x00\x22" + b"\x00" * 10 + b"\xff" * 8 + b"\x00" * 16
    content_type, payload = multipart(flac, "a.flac")
    yield Case(
        "flac-zero-rate",
        request("POST", "/v1/audio/translations", [("Content-Type", content_type)], payload),
        [("POST", "/v1/audio/translations", payload)],
    )
    # A chunked upload longer than the prefix, abandoned midway: the backend never gets a whole message.
    # (It names its tier in the prefix, so it streams rather than being read whole before dispatch.)
    partial = b'{"service_tier": "auto", "prompt": "' + b"y" * 100_000
    yield Case(
        "abandoned-upload",
        request("POST", "/v1/completions", [*json_type, ("Transfer-Encoding", "chunked")], b"")
        + f"{len(partial):x}\r\n".encode()
        + partial,
        [],
        close_early=True,
    )


# --- the run --------------------------------------------------------------------------------


async def exchange(port: int, case: Case) -> bytes:
    """Send a case's bytes; what the gateway answered before it closed (or the deadline)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    answer = b""
    try:
        writer.write(case.data)
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        if case.close_early:
            await asyncio.sleep(0.3)
            return answer
        with contextlib.suppress(ConnectionError, TimeoutError):
            async with asyncio.timeout(15):
                while chunk := await reader.read(65536):
                    answer += chunk
    finally:
        writer.close()
    return answer


@pytest.fixture
async def sandbox(tmp_path: Path) -> AsyncIterator[Sandbox]:
    async with Sandbox(controllers=False) as running, projected_secrets(running, secrets_dir(tmp_path / "gateway.log")):
        yield running


@pytest.fixture
async def backend() -> AsyncIterator[StrictBackend]:
    running = await StrictBackend().start()
    yield running
    await running.stop()


@pytest.mark.parametrize("parser", ["c", "python"])
async def test_hostile_requests_reach_the_backend_only_as_allowed(
    sandbox: Sandbox, backend: StrictBackend, tmp_path: Path, parser: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if parser == "python":
        monkeypatch.setenv("AIOHTTP_NO_EXTENSIONS", "1")
    else:
        monkeypatch.delenv("AIOHTTP_NO_EXTENSIONS", raising=False)
    all_cases = list(cases(random.Random(SEED)))
    async with aiohttp.ClientSession() as session:
        kube = Kube(sandbox.url, session)
        await put_secret(kube, "callers", {"alice": CALLER_KEY})
        await put_secret(kube, "vllm-key", {"api-key": BACKEND_KEY})
        await put_slice(kube, "strict", backend.port)
        gateway = Gateway(
            sandbox.kubeconfig,
            tmp_path / "gateway.log",
            "--caller-keys-secret",
            "callers",
            "--backend-key-secret",
            "vllm-key:api-key",
            "--body-timeout-seconds",
            "5",
        )
        try:
            await gateway.ready(session)
            limit = asyncio.Semaphore(8)

            async def run(case: Case) -> bytes:
                async with limit:
                    return await exchange(gateway.port, case)

            answers = await asyncio.gather(*(run(case) for case in all_cases))
            await asyncio.sleep(0.5)  # the abandoned upload's backend connection closes
            inflight = await gateway.metric(session, names.INFLIGHT_REQUESTS)
            queued = await gateway.metric(session, names.QUEUED_REQUESTS)
            assert gateway.process.poll() is None
        finally:
            gateway.stop()
    log = gateway.log_path.read_text(errors="replace")

    # 1. Exactly the allowed requests reached the backend, as the callers sent them.
    expected = collections.Counter(item for case in all_cases for item in case.expected)
    got = collections.Counter((m.method, m.target, m.body) for m in backend.received)
    optional = collections.Counter(item for case in all_cases for item in case.optional)
    optional[BACKEND_KEY_PROBE] += 1  # the gateway asks the replica which backend key it accepts
    missing, extra = expected - got, got - expected - optional
    names_of = {item: case.name for case in all_cases for item in case.expected}
    assert not missing, f"never reached the backend: {[names_of.get(i, i[:2]) for i in missing]}"
    answered = [
        case.name
        for case, answer in zip(all_cases, answers, strict=True)
        if b"HTTP/1.1 200" in answer and not case.expected
    ]
    assert not extra, f"reached the backend unasked: {[(m, t, b[:80]) for m, t, b in extra]}; 200 for {answered}"
    # 2. Each with the gateway's headers only, its own key and forwarding, none of the caller's claims.
    for message in backend.received:
        headers = [(name.decode().lower(), value.decode()) for name, value in message.headers]
        if ("user-agent", PROBE_USER_AGENT) in headers:
            continue  # the gateway's own question, not a caller's request
        assert {name for name, _ in headers} <= FORWARDED, headers
        assert sum(name == "host" for name, _ in headers) == 1
        assert ("authorization", f"Bearer {BACKEND_KEY}") in headers
        assert ("x-forwarded-for", "127.0.0.1") in headers
        assert ("x-forwarded-proto", "http") in headers
        framing = [name for name, _ in headers if name in ("content-length", "transfer-encoding")]
        assert len(framing) <= 1, headers
    # 3. h11 and httptools agree on every message boundary of every backend connection.
    for connection in backend.connections:
        assert connection.error is None, connection.error
        found, error = httptools_messages(bytes(connection.raw))
        assert error is None, f"httptools refused a stream h11 accepted: {error}"
        assert found == [(m.method, m.target, m.body) for m in connection.messages]
        assert CALLER_KEY.encode() not in connection.raw
    # The abandoned upload reached the backend in part, and neither parser took it for a message.
    assert any(connection.cut_off for connection in backend.connections)
    # 4. Nothing was left behind, the gateway still answers, and no key is in its log.
    assert inflight == 0
    assert queued == 0
    assert CALLER_KEY not in log
    assert "Traceback" not in log
    statuses = {case.name: answer.split(b"\r\n", 1)[0] for case, answer in zip(all_cases, answers, strict=True)}
    assert statuses["pipeline-0"].startswith(b"HTTP/1.1 200"), statuses["pipeline-0"]
    assert statuses["query"].startswith(b"HTTP/1.1 200"), statuses["query"]
    assert statuses["coding-gzip"].startswith(b"HTTP/1.1 415"), statuses["coding-gzip"]
    assert statuses["cl-te-0"].startswith(b"HTTP/1.1 400") or statuses["cl-te-0"].startswith(b"HTTP/1.0 400")
