"""How the gateway frames what it accepts and what it sends a backend: pure, no I/O.

The gateway never relays a caller's framing. It accepts a request only when its framing has one
reading (one Content-Length of digits, or `Transfer-Encoding: chunked` alone on HTTP/1.1; no body
where the route takes none; no content coding), and it builds each backend request itself: an
allowlist of the caller's headers, its own Authorization, X-Forwarded-For/-Proto from the
connection, and body framing from the bytes it sends.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

# What a backend gets from the caller's headers; everything else (hop-by-hop, framing, codings,
# forwarding claims, cookies, the caller's key) is dropped.
FORWARDED_REQUEST_HEADERS = ("Content-Type", "Accept", "User-Agent", "X-Request-Id")
_FORWARDED = frozenset(name.lower() for name in FORWARDED_REQUEST_HEADERS)
# What a caller gets from a backend's headers: not the backend's framing or connection management
# (the gateway's server frames the response itself).
_RESPONSE_HOP_BY_HOP = frozenset(
    ("connection", "keep-alive", "proxy-connection", "transfer-encoding", "content-length", "trailer", "upgrade", "te")
)
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_VISIBLE = re.compile(rb"[\t\x20-\x7e]*")  # what a forwarded value may hold: no CTL, no obs-text
_FIELD_VALUE = re.compile(rb"[\t\x20-\x7e\x80-\xff]*")  # RFC 9110 field-value (obs-text allowed)
MAX_CONTENT_LENGTH_DIGITS = 15


@dataclass(frozen=True)
class Refusal:
    """A request the gateway answers itself, and closes the connection after."""

    status: int
    message: str
    code: str


@dataclass(frozen=True)
class Framing:
    """A request body's framing as the gateway reads it: a length, chunked, or none."""

    length: int | None  # the declared Content-Length
    chunked: bool

    @property
    def has_body(self) -> bool:
        return self.chunked or bool(self.length)


def _bad(message: str) -> Refusal:
    return Refusal(400, f"Bad request: {message}", "bad_request")


def request_framing(
    version: tuple[int, int], raw_headers: Sequence[tuple[bytes, bytes]], takes_body: bool
) -> Framing | Refusal:
    """The body framing of a request from its raw header fields, or why the gateway refuses it.

    The HTTP parser in front of this already refuses most malformed framing; this is the one
    place that says what the gateway accepts, whichever parser (C or pure Python) ran.
    """
    if version not in ((1, 0), (1, 1)):
        return Refusal(505, "HTTP version not supported: HTTP/1.1 or HTTP/1.0 only", "http_version_not_supported")
    lengths: list[bytes] = []
    codings: list[bytes] = []
    hosts = keys = 0
    for name, value in raw_headers:
        if not _TOKEN.fullmatch(name):
            return _bad("a header name is not a token")
        if not _FIELD_VALUE.fullmatch(value):
            return _bad("a header value holds a control character")
        lowered = name.lower()
        if lowered == b"content-length":
            lengths.append(value.strip(b" \t"))
        elif lowered == b"transfer-encoding":
            codings.append(value.strip(b" \t"))
        elif lowered == b"host":
            hosts += 1
        elif lowered == b"authorization":
            keys += 1
        elif lowered == b"content-encoding" and value.strip(b" \t").lower() != b"identity":
            return Refusal(
                415, "Unsupported Content-Encoding: request bodies are taken uncompressed", "unsupported_encoding"
            )
        elif lowered == b"expect" and value.strip(b" \t").lower() != b"100-continue":
            return Refusal(417, "Expectation failed: only Expect: 100-continue is understood", "expectation_failed")
    if hosts > 1 or keys > 1:
        return _bad("more than one Host or Authorization header")
    if len(lengths) > 1 or len(codings) > 1:
        return _bad("more than one Content-Length or Transfer-Encoding header")
    if lengths and codings:
        return _bad("both Content-Length and Transfer-Encoding")
    if codings:
        if version != (1, 1):
            return _bad("Transfer-Encoding on HTTP/1.0")
        if codings[0].lower() != b"chunked":
            return Refusal(501, "Transfer-Encoding other than chunked is not supported", "not_implemented")
        framing = Framing(length=None, chunked=True)
    elif lengths:
        text = lengths[0]
        if not text.isdigit() or not text.isascii() or len(text) > MAX_CONTENT_LENGTH_DIGITS:
            return _bad("Content-Length is not a number of bytes")
        framing = Framing(length=int(text), chunked=False)
    else:
        framing = Framing(length=None, chunked=False)
    if framing.has_body and not takes_body:
        return _bad("this route takes no request body")
    return framing


def backend_headers(
    raw_headers: Iterable[tuple[bytes, bytes]], *, backend_key: str | None, peer: str | None, scheme: str
) -> list[tuple[str, str]] | Refusal:
    """The headers of the backend request: the allowlisted ones of the caller's, then the gateway's own.

    Framing (Content-Length, Transfer-Encoding) is not among them: the HTTP client sets it from
    the body the gateway sends. A forwarded value with obs-text is refused rather than re-encoded.
    """
    headers: list[tuple[str, str]] = []
    for name, value in raw_headers:
        if name.lower().decode("ascii", "replace") not in _FORWARDED:
            continue
        if not _VISIBLE.fullmatch(value):
            return _bad("a header value is not visible ASCII")
        headers.append((name.decode("ascii"), value.decode("ascii").strip(" \t")))
    if backend_key:
        headers.append(("Authorization", f"Bearer {backend_key}"))
    if peer:
        headers.append(("X-Forwarded-For", peer))
    headers.append(("X-Forwarded-Proto", scheme))
    return headers


def response_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """A backend's response headers as the caller gets them: without its hop-by-hop and framing ones."""
    pairs = list(headers)
    named = {
        token.strip().lower() for name, value in pairs if name.lower() == "connection" for token in value.split(",")
    }
    return [(name, value) for name, value in pairs if name.lower() not in _RESPONSE_HOP_BY_HOP | named]
