"""Limits on a request's body, kept by an ASGI middleware in front of the API (uvicorn keeps none)."""

import asyncio
import time
from http import HTTPStatus

from starlette.responses import JSONResponse

Refusal = tuple[HTTPStatus, str]
# A response sent before the body is read whole ends the connection: the rest of the body would be
# read as the next request (how requests are smuggled past a proxy that frames bodies another way).
CLOSE = (b"connection", b"close")


def refusal(status: HTTPStatus, detail: str) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers={"connection": "close"})


def refusal_before_body(length: bytes | None, chunked: bool, max_bytes: int) -> Refusal | None:
    """Why a request is refused by its headers alone, if it is."""
    if length is not None and chunked:
        return HTTPStatus.BAD_REQUEST, "send Content-Length or chunked Transfer-Encoding, not both"
    if chunked:
        return HTTPStatus.LENGTH_REQUIRED, "send a Content-Length header (chunked bodies are refused)"
    if length is not None and length.isdigit() and int(length) > max_bytes:
        return (
            HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
            f"request body of {int(length)} bytes is over the limit of {max_bytes}",
        )
    return None


class RequestLimits:
    """ASGI middleware: the body limit holds on the bytes received, and slow bodies time out.

    Refused before the body is read: over `max_bytes` by Content-Length (413), chunked (411), or
    Content-Length and chunked together (400: which one frames the body is how requests are smuggled).
    While it is read: more bytes than declared or than `max_bytes` (413), or a client that sends
    nothing for `body_timeout_s` or has not sent it all `body_deadline_s` after the headers (408).
    The app's own answer is then dropped for that one. Every answer sent before the body is whole
    closes the connection.
    """

    def __init__(self, app, max_bytes: int, body_timeout_s: float, body_deadline_s: float) -> None:
        self.app, self.max_bytes = app, max_bytes
        self.body_timeout_s, self.body_deadline_s = body_timeout_s, body_deadline_s

    def next_wait(self, deadline: float) -> tuple[float, Refusal]:
        """How long the next receive may wait, and the refusal if it waits that long."""
        left = deadline - time.monotonic()
        if left < self.body_timeout_s:
            return max(left, 0), (
                HTTPStatus.REQUEST_TIMEOUT,
                f"the request body did not arrive whole within {self.body_deadline_s:g} s",
            )
        silent = (HTTPStatus.REQUEST_TIMEOUT, f"no data from the client for {self.body_timeout_s:g} s")
        return self.body_timeout_s, silent

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        length, chunked = headers.get(b"content-length"), b"chunked" in headers.get(b"transfer-encoding", b"")
        refused = refusal_before_body(length, chunked, self.max_bytes)
        if refused:
            await refusal(*refused)(scope, receive, send)
            return
        allowed = min(self.max_bytes, int(length)) if length is not None and length.isdigit() else self.max_bytes
        received, stopped, answered, whole = 0, None, False, False
        has_body = length not in (None, b"0")  # chunked ones were refused above
        deadline = time.monotonic() + self.body_deadline_s

        async def limited_receive():
            nonlocal received, stopped, whole
            if stopped is not None:
                return {"type": "http.disconnect"}
            if whole:  # after the body, receive only waits for a disconnect: no timeout there
                return await receive()
            wait_s, timed_out = self.next_wait(deadline)
            try:
                message = await asyncio.wait_for(receive(), wait_s)
            except TimeoutError:
                stopped = timed_out
                return {"type": "http.disconnect"}
            received += len(message.get("body", b""))
            if received > allowed:
                stopped = (
                    HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                    f"request body is over {allowed} bytes (its declared length or the limit)",
                )
                return {"type": "http.disconnect"}
            whole = not message.get("more_body", False)
            return message

        async def guarded_send(message) -> None:
            nonlocal answered
            if stopped is None:
                if message["type"] == "http.response.start" and has_body and not whole:
                    message = message | {"headers": [*message.get("headers", []), CLOSE]}
                await send(message)
            elif not answered:  # the app's answer to a body it did not get whole is replaced by ours
                answered = True
                await refusal(*stopped)(scope, receive, send)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if stopped is None:
                raise
        if stopped is not None and not answered:
            await guarded_send({"type": "http.response.start"})
