"""Limits on connections that uvicorn has no option for, or that `bentoml serve` does not pass on.

uvicorn (0.54) arms its keep-alive timer only after a response and cancels it on any byte: a
connection that never sends a request, or trickles its headers a byte at a time, is held for ever;
its httptools protocol (the fast one: llhttp in C, several times cheaper a request than h11) takes a
request head of any size; and BentoML's worker gives uvicorn no `limit_concurrency`. So the service
makes uvicorn use `BoundedHttpToolsProtocol` (see `bound_connections`): the request head must arrive
whole within `header_timeout_s` of its first byte (or of the connection's opening) and within
`MAX_HEAD_BYTES`, idle keep-alive lasts `keep_alive_s`, a process holds at most `max_connections`
connections, refusing the next with a 503, and a request that is not HTTP/1.1 gets a 400 that says why.
"""

import asyncio
import json
from dataclasses import dataclass
from http import HTTPStatus

import httptools
import uvicorn.config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

# h11's limit, which the service had before it parsed with httptools: ample for any client's cookies
MAX_HEAD_BYTES = 16 * 1024


@dataclass(frozen=True)
class ConnectionLimits:
    header_timeout_s: float
    keep_alive_s: float
    max_connections: int


def raw_response(status: HTTPStatus, detail: str) -> bytes:
    """A whole JSON response that closes the connection, for a connection with no request to answer."""
    body = json.dumps({"detail": detail}).encode()
    head = (
        f"HTTP/1.1 {status.value} {status.phrase}\r\ncontent-type: application/json\r\n"
        f"connection: close\r\ncontent-length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline and a size cap on each request head, and a cap on connections.

    llhttp parses pipelined requests as their bytes arrive, so a head is in progress exactly from its
    `on_message_begin` to its `on_headers_complete`: its deadline and byte count run between the two.
    """

    limits = ConnectionLimits(header_timeout_s=10, keep_alive_s=75, max_connections=256)

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.timeout_keep_alive = self.limits.keep_alive_s  # the setting, whatever the command line says
        self.head_deadline: asyncio.TimerHandle | None = None
        self.head_bytes: int | None = None  # of the head being received; None between heads

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            detail = f"this server process holds its limit of {self.limits.max_connections} connections; retry later"
            self.close_with(raw_response(HTTPStatus.SERVICE_UNAVAILABLE, detail))
            return
        self.start_head_deadline()  # a connection that never sends a request is closed too

    def data_received(self, data: bytes) -> None:
        self._unset_keepalive_if_required()
        try:  # uvicorn answers a parser error with a bare "Invalid HTTP request received."
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:  # as uvicorn does: the service has no WebSockets to upgrade to
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
        except httptools.HttpParserError as exc:  # after a 431 (count_head), the connection is closing already
            detail = f"the request is not valid HTTP/1.1: {exc}"
            self.close_with(raw_response(HTTPStatus.BAD_REQUEST, detail))

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.head_bytes = 0
        if not self.answering():  # a pipelined head's deadline starts once the answer before it is sent
            self.start_head_deadline()

    def on_url(self, url: bytes) -> None:
        self.count_head(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.count_head(len(name) + len(value) + 4)  # ": " and CRLF
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self.stop_head_deadline()
        self.head_bytes = None
        super().on_headers_complete()

    def count_head(self, size: int) -> None:
        self.head_bytes = (self.head_bytes or 0) + size
        if self.head_bytes > MAX_HEAD_BYTES:
            detail = f"the request's headers are over the limit of {MAX_HEAD_BYTES} bytes"
            self.close_with(raw_response(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, detail))
            raise ValueError(detail)  # stops llhttp here (it raises HttpParserCallbackError from it)

    def answering(self) -> bool:
        return self.cycle is not None and not self.cycle.response_complete

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.head_bytes is not None and not self.transport.is_closing():  # a pipelined head, part here
            self.start_head_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self.stop_head_deadline()
        super().connection_lost(exc)

    def start_head_deadline(self) -> None:
        if self.head_deadline is None:
            self.head_deadline = self.loop.call_later(self.limits.header_timeout_s, self.head_too_slow)

    def stop_head_deadline(self) -> None:
        if self.head_deadline is not None:
            self.head_deadline.cancel()
            self.head_deadline = None

    def head_too_slow(self) -> None:
        self.head_deadline = None
        if self.transport.is_closing():
            return
        started = self.head_bytes is not None  # a silent connection gets no answer, only closed
        detail = f"the request's headers did not arrive whole within {self.limits.header_timeout_s:g} s"
        self.close_with(raw_response(HTTPStatus.REQUEST_TIMEOUT, detail) if started else b"")

    def close_with(self, response: bytes) -> None:
        self.stop_head_deadline()
        self._unset_keepalive_if_required()
        if response and not self.transport.is_closing():
            self.transport.write(response)
        self.transport.close()


def bound_connections(limits: ConnectionLimits) -> None:
    """Make uvicorn serve HTTP with `BoundedHttpToolsProtocol` under `limits`, in this process.

    Called when the service is imported: BentoML's worker imports it before it configures uvicorn,
    with `http="auto"`, which uvicorn looks up in this table then.
    """
    BoundedHttpToolsProtocol.limits = limits
    uvicorn.config.HTTP_PROTOCOLS["auto"] = f"{__name__}:BoundedHttpToolsProtocol"
