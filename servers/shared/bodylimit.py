"""The request-body limit, and how a refused body is drained: one copy for every server.

Each server caps the request body (INFBENCH_MAX_BODY_BYTES) and refuses more with a 413
{"error": "request body over N bytes"}. A refusal must reach a client that sends its whole
body before it reads (http.client, urllib, requests): a server that closes while the client is
still writing leaves unread bytes in its socket, the kernel answers them with a reset, and the
client gets ConnectionResetError instead of the 413. So, like nginx's lingering close, a server
that answers before the body has ended first reads and discards the rest of it, for at most
DRAIN_S seconds: a bound in time, not in bytes, since a client that stops sending is waited for
however much it sent, and one that never stops is cut off all the same. If the body ended, the
connection stays usable; if not, the answer carries `Connection: close` and the server closes.
Nothing drained is kept: each chunk is dropped as it arrives.

ASGI (every Starlette and FastAPI app), BodyLimitMiddleware, outermost, so that it sees every
answer:
    - a Content-Length over the limit: the 413, before the app runs;
    - a body that passes the limit as it streams (chunked, or no Content-Length): BodyTooLarge
      from `receive`, an HTTPException, so that the app's own handler answers (and logs) its 413
      and FastAPI's body parsing lets it through; the middleware answers if the app does not;
    - any answer the app starts while the body is still coming (413, 415, 404, ...) waits for
      the drain.
WSGI (the Flask apps), BodyLimitWSGI, around the Flask app: a Content-Length over the limit is
Flask's own 413 (MAX_CONTENT_LENGTH), a chunked body past it a 413 here (Werkzeug alone would
hand the app the first MAX_CONTENT_LENGTH bytes as if they were all); whatever the app answers,
the rest of wsgi.input is drained before the server gets the answer. Gunicorn's sync workers
close every connection after the answer, so there is no `Connection` to set (a WSGI app may not
send hop-by-hop headers anyway).

Why in the app: none of our servers drains with a bound in time. Uvicorn and Gunicorn's Uvicorn
worker close at once after an answer that says `Connection: close`, and without it read the
rest of the body for as long as it comes; Hypercorn closes once the answer is out; Gunicorn's
sync worker lingers for 64 KiB or 2 s at most.

The ASGI code runs on asyncio (all three ASGI servers here). At import this module takes
nothing of a framework but starlette.exceptions (two small modules, no dependencies), so the
Flask builds stay Flask builds; BodyLimitWSGI imports Werkzeug's exception when it is made.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# How long a body still coming is read and discarded before the answer. On a busy 2-core box,
# a 300 MB body sent before reading gets its 413 in 1.3-3 s on our servers (Gunicorn's sync
# workers the slowest; tests/integration/test_body_limit.py), so this leaves a client three
# times that or more; a client that never stops costs one connection, and the reading, for this
# long (the image servers' drain had the same 10 s, next to a bound in bytes).
DRAIN_S = 10.0
# Bytes per read of a WSGI body while draining (the ASGI servers choose their own chunks).
WSGI_CHUNK = 64 * 1024
CLOSE = (b"connection", b"close")


def too_large_message(limit: int) -> str:
    return f"request body over {limit} bytes"


class BodyTooLarge(HTTPException):
    """Raised from `receive` once a streamed body passes the limit.

    An HTTPException so that the frameworks' form and body parsing let it through untouched
    (FastAPI re-raises HTTPException but turns other parse errors into a 400) and the apps'
    HTTPException handlers answer it as the 413 it is.
    """

    def __init__(self, limit: int) -> None:
        super().__init__(413, too_large_message(limit))


def error_messages(status: int, message: str) -> tuple[Message, Message]:
    """An {"error": message} JSON answer as ASGI messages, byte for byte Starlette's
    JSONResponse (the apps' own answers), without going through an app."""
    body = json.dumps({"error": message}, ensure_ascii=False, allow_nan=False,
                      separators=(",", ":")).encode()
    start = {"type": "http.response.start", "status": status,
             "headers": [(b"content-length", str(len(body)).encode()),
                         (b"content-type", b"application/json")]}
    return start, {"type": "http.response.body", "body": body}


def header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return str(value.decode("latin-1"))
    return None


class _Exchange:
    """One request's body as it passes the middleware: counted, drained, ended or not."""

    def __init__(self, scope: Scope, receive: Receive, send: Send, limit: int,
                 drain_s: float) -> None:
        self._receive = receive
        self._send = send
        self.limit = limit
        self.drain_s = drain_s
        self.received = 0
        length = header(scope, b"content-length")
        # HTTP/1.1: a request has a body only if it says so (RFC 9112 6.3).
        self.ended = (length is None or length.strip() == "0") and \
            header(scope, b"transfer-encoding") is None
        self.gone = False
        self.started = False
        self._deadline: float | None = None

    def _note(self, message: Message) -> None:
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if not message.get("more_body", False):
                self.ended = True
        elif message["type"] == "http.disconnect":
            self.gone = True

    async def receive(self) -> Message:
        message = await self._receive()
        self._note(message)
        if self.received > self.limit:
            raise BodyTooLarge(self.limit)
        return message

    async def drain(self) -> None:
        """Read and discard the rest of the body until it ends, the client goes, or DRAIN_S
        (counted from the first drain of this request) has passed."""
        if self.ended or self.gone:
            return
        loop = asyncio.get_running_loop()
        if self._deadline is None:
            self._deadline = loop.time() + self.drain_s
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(self._deadline):
                while not (self.ended or self.gone):
                    self._note(await self._receive())  # the chunk is dropped here

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            await self.drain()
            headers = list(message.get("headers", []))
            if not self.ended and CLOSE not in headers:
                message = {**message, "headers": [*headers, CLOSE]}
            self.started = True
        await self._send(message)

    async def answer(self, status: int, message: str) -> None:
        for part in error_messages(status, message):
            await self.send(part)


class BodyLimitMiddleware:
    """ASGI: a body over `max_body_bytes` is a 413, and no answer goes out before the body
    has been drained (see the module's docstring). Add it outermost of the app's middleware."""

    def __init__(self, app: ASGIApp, max_body_bytes: int, drain_s: float = DRAIN_S) -> None:
        self.app = app
        self.limit = max_body_bytes
        self.drain_s = drain_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = header(scope, b"content-length")
        if length is not None and not length.strip().isdigit():
            # Where the body ends is unknown, so there is nothing to drain: answer and close.
            start, body = error_messages(400, f"bad Content-Length {length!r}")
            await send({**start, "headers": [*start["headers"], CLOSE]})
            await send(body)
            return
        exchange = _Exchange(scope, receive, send, self.limit, self.drain_s)
        if length is not None and int(length) > self.limit:
            await exchange.answer(413, too_large_message(self.limit))
            return
        try:
            await self.app(scope, exchange.receive, exchange.send)
        except BodyTooLarge as exc:
            # Normally the app's handler has answered the 413 already; if it could not, answer
            # here, unless an answer is already on its way.
            if exchange.started:
                raise
            await exchange.answer(413, str(exc.detail))


# ---------------------------------------------------------------------------------------------
# WSGI

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def drain_wsgi_input(stream: Any, environ: dict[str, Any], drain_s: float = DRAIN_S) -> bool:
    """Read and discard what is left of `stream` (the server's wsgi.input), for at most
    `drain_s`; True if the body ended.

    Each read waits at most the time left: Gunicorn hands the app its socket (gunicorn.socket),
    whose timeout is set for the drain; without one a read waits as long as the server lets it.
    A body already read to its end costs one read that returns at once.
    """
    sock = environ.get("gunicorn.socket")
    before = sock.gettimeout() if sock is not None else None
    deadline = time.monotonic() + drain_s
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if sock is not None:
                sock.settimeout(left)
            if not stream.read(WSGI_CHUNK):
                return True
    except Exception:
        # A timeout, a reset, a malformed chunk: the body cannot be read further, and the
        # answer still goes out (the server closes the connection).
        return False
    finally:
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.settimeout(before)


class _CountedInput:
    """wsgi.input of a body without Content-Length (chunked): `too_large` once it is longer
    than `limit`.

    Werkzeug reads such a body up to MAX_CONTENT_LENGTH and stops there without a word, so the
    app would take the first `limit` bytes for the whole body; this reads one byte further.
    """

    def __init__(self, stream: Any, limit: int, too_large: Callable[[], Exception]) -> None:
        self.stream = stream
        self.limit = limit
        self.too_large = too_large
        self.delivered = 0

    def _count(self, data: bytes) -> bytes:
        self.delivered += len(data)
        if self.delivered > self.limit or (
                data and self.delivered == self.limit and self.stream.read(1)):
            raise self.too_large()
        return data

    def read(self, size: int | None = -1) -> bytes:
        return self._count(self.stream.read(-1 if size is None else size))

    def readline(self, size: int | None = -1) -> bytes:
        return self._count(self.stream.readline(-1 if size is None else size))

    def readlines(self, hint: int = -1) -> list[bytes]:
        return list(iter(self.readline, b""))

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.readline, b"")


class BodyLimitWSGI:
    """WSGI (Flask): a chunked body over `max_body_bytes` is a 413, and the server gets the
    app's answer only once the rest of the body is drained.

    A Content-Length over the limit is Werkzeug's to refuse (MAX_CONTENT_LENGTH, before reading;
    set it to the same limit); a chunked body past it raises Werkzeug's RequestEntityTooLarge
    from wsgi.input, which the app's handler answers. The app's start_response is held back
    until the app has returned (Flask calls it before; an app that calls it from its body's
    first iteration is released then), the drain runs, and then the server's start_response is
    called.
    """

    def __init__(self, app: WSGIApp, max_body_bytes: int, drain_s: float = DRAIN_S) -> None:
        from werkzeug.exceptions import RequestEntityTooLarge  # Flask's own; WSGI apps only

        self.app = app
        self.limit = max_body_bytes
        self.drain_s = drain_s
        self.too_large = RequestEntityTooLarge

    def __call__(self, environ: dict[str, Any],
                 start_response: Callable[..., Any]) -> Iterable[bytes]:
        stream = environ.get("wsgi.input")
        length = (environ.get("CONTENT_LENGTH") or "").strip()
        chunked = "HTTP_TRANSFER_ENCODING" in environ
        if stream is None or (length in ("", "0") and not chunked):  # no body (RFC 9112 6.3)
            return self.app(environ, start_response)
        if not length:
            environ["wsgi.input"] = _CountedInput(stream, self.limit, self.too_large)
        held: list[tuple[Any, ...]] = []
        write: list[Callable[[bytes], Any]] = []
        returned = False

        def release() -> Callable[[bytes], Any]:
            if not write:
                drain_wsgi_input(stream, environ, self.drain_s)
                write.append(start_response(*held[-1]))
            return write[0]

        def hold(status: str, headers: list[tuple[str, str]],
                 exc_info: Any = None) -> Callable[[bytes], Any]:
            if write and exc_info is not None:
                raise exc_info[1].with_traceback(exc_info[2])
            held.append((status, headers, exc_info))
            if returned:  # called from the body's first iteration: the server waits for it
                release()
            return lambda data: release()(data)

        body = self.app(environ, hold)
        returned = True
        if held:
            release()
        return body
