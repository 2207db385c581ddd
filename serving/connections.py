"""Limits on connections that uvicorn has no option for, or that `bentoml serve` does not pass on.

uvicorn (0.54, h11) arms its keep-alive timer only after a response and cancels it on any byte:
a connection that never sends a request, or trickles its headers a byte at a time, is held for
ever; and BentoML's worker gives uvicorn no `limit_concurrency`. So the service makes uvicorn use
`BoundedH11Protocol` (see `bound_connections`): the request head must arrive whole within
`header_timeout_s` of its first byte (or of the connection's opening), idle keep-alive lasts
`keep_alive_s`, and a process holds at most `max_connections` connections, refusing the next with a 503.
"""

import asyncio
import json
from dataclasses import dataclass
from http import HTTPStatus

import h11
import uvicorn.config
from uvicorn.protocols.http.h11_impl import H11Protocol


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


class BoundedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline on each request head and a cap on connections."""

    limits = ConnectionLimits(header_timeout_s=10, keep_alive_s=75, max_connections=256)

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.timeout_keep_alive = self.limits.keep_alive_s  # the setting, whatever the command line says
        self.head_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            detail = f"this server process holds its limit of {self.limits.max_connections} connections; retry later"
            self.close_with(raw_response(HTTPStatus.SERVICE_UNAVAILABLE, detail))
            return
        self.start_head_deadline()  # a connection that never sends a request is closed too

    def data_received(self, data: bytes) -> None:
        if self.conn.their_state is h11.IDLE:  # a head begins (or goes on): its deadline runs from here
            self.start_head_deadline()
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:
            self.stop_head_deadline()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # a pipelined head that is only partly here gets no data_received of its own to start its deadline
        if self.conn.their_state is h11.IDLE and self.conn.trailing_data[0] and not self.transport.is_closing():
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
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        started = bool(self.conn.trailing_data[0])  # a silent connection gets no answer, only closed
        detail = f"the request's headers did not arrive whole within {self.limits.header_timeout_s:g} s"
        self.close_with(raw_response(HTTPStatus.REQUEST_TIMEOUT, detail) if started else b"")

    def close_with(self, response: bytes) -> None:
        self.stop_head_deadline()
        self._unset_keepalive_if_required()
        if response:
            self.transport.write(response)
        self.transport.close()


def bound_connections(limits: ConnectionLimits) -> None:
    """Make uvicorn serve HTTP with `BoundedH11Protocol` under `limits`, in this process.

    Called when the service is imported: BentoML's worker imports it before it configures uvicorn,
    with `http="auto"`, which uvicorn looks up in this table then.
    """
    BoundedH11Protocol.limits = limits
    uvicorn.config.HTTP_PROTOCOLS["auto"] = f"{__name__}:BoundedH11Protocol"
