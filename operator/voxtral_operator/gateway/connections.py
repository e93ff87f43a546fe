"""The API port's connections: aiohttp's low-level server with the bounds it lacks.

- at most `max_connections` open at once (one more is closed as it is accepted);
- a connection idle (no request, or a request's head not complete) for `idle_timeout` is closed
  (aiohttp's keep-alive timer, which also runs from the moment a connection opens);
- a request's head must be complete within `header_timeout` of its first byte;
- no lingering read of an unread body after the answer, no decompression of request bodies;
- a small read buffer (`READ_BUFSIZE`): a connection whose request waits in the queue holds little of its body;
- what aiohttp logs about a connection (a malformed request, a handler's failure) names the
  exception's type only: its text may quote a header, and a header may hold a key.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

logger = logging.getLogger("voxtral_operator.gateway")


class _TypeOnly(logging.Filter):
    """What aiohttp logs about a connection keeps only the exception's type: no text, no traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        record.msg = "refused a malformed request or failed a connection (%s)"
        record.args = (type(exc).__name__ if exc is not None else "no exception",)
        record.exc_info = record.exc_text = None
        record.stack_info = None
        return True


# The logger aiohttp's connection handlers log to (instead of aiohttp.server).
connection_logger = logging.getLogger("voxtral_operator.gateway.connections")
connection_logger.addFilter(_TypeOnly())


# What a connection buffers of a body the gateway has not read yet: aiohttp stops reading the socket at twice
# this (its default, 256 KiB, let each queued upload hold about 830 KiB). One socket read (up to 256 KiB)
# may land on top, and a queued request holds its 64 KiB prefix: PER_CONNECTION_BYTES at most in all.
READ_BUFSIZE = 16 * 1024
PER_CONNECTION_BYTES = 16 * 1024 + 64 * 1024 + 2 * READ_BUFSIZE + 256 * 1024  # objects, prefix, buffer, a read


@dataclass(frozen=True)
class Limits:
    max_connections: int = 4096
    idle_timeout: float = 75.0
    header_timeout: float = 10.0


class GuardedHandler(RequestHandler):
    """One connection: aiohttp's handler plus the head timeout and log hygiene."""

    def __init__(self, manager: GuardedServer, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._header_timeout = manager.limits.header_timeout
        self._head_timer: asyncio.TimerHandle | None = None
        self.in_request = False

    def data_received(self, data: bytes) -> None:
        if data and not self.in_request and self._head_timer is None:
            self._head_timer = self._loop.call_later(self._header_timeout, self._head_expired)
        super().data_received(data)

    def request_started(self) -> None:
        self.in_request = True
        self._cancel_head_timer()

    def request_finished(self) -> None:
        self.in_request = False

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_expired(self) -> None:
        self._head_timer = None
        if not self.in_request:
            logger.debug("closing a connection whose request head did not arrive in %gs", self._header_timeout)
            self.force_close()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def log_exception(self, *args: Any, **kw: Any) -> None:
        connection_logger.debug(*args, **kw)  # a malformed request is the caller's problem, not an error


class GuardedServer(web.Server):
    """aiohttp's low-level server whose connections are `GuardedHandler`s, at most `max_connections`."""

    def __init__(
        self, handler: Callable[[web.BaseRequest], Awaitable[web.StreamResponse]], limits: Limits, **kwargs: Any
    ) -> None:
        self.limits = limits

        async def tracked(request: web.BaseRequest) -> web.StreamResponse:
            protocol = request.protocol
            if isinstance(protocol, GuardedHandler):
                protocol.request_started()
            try:
                return await handler(request)
            finally:
                if isinstance(protocol, GuardedHandler):
                    protocol.request_finished()

        super().__init__(
            tracked,
            keepalive_timeout=limits.idle_timeout,
            logger=connection_logger,
            lingering_time=0,  # an answered request's unread body is not drained: the connection closes
            auto_decompress=False,  # request bodies with a content coding are refused, never inflated
            read_bufsize=READ_BUFSIZE,
            **kwargs,
        )

    def __call__(self) -> GuardedHandler:
        return GuardedHandler(self, loop=self._loop, **self._kwargs)

    def connection_made(self, handler: RequestHandler, transport: asyncio.Transport) -> None:
        super().connection_made(handler, transport)
        if len(self._connections) > self.limits.max_connections:
            logger.debug("connection limit (%d) reached: closing a new connection", self.limits.max_connections)
            handler.force_close()
