"""The request-head limit of every ASGI server: a target or header block over MAX_HEADER_BYTES
(servers.shared.settings, 16 KiB) is a JSON 414 / 431 (servers.shared.errors' body).

The servers' HTTP parsers (h11) cap a request head only while it is incomplete: one that
arrives whole in a single read gets through them, so the app checks again. Add the middleware
inside BodyLimitMiddleware (servers.shared.bodylimit), which drains the body before any answer.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from servers.shared.errors import error_response
from servers.shared.settings import MAX_HEADER_BYTES


def header_problem(scope: Scope, limit: int) -> tuple[int, str] | None:
    """414 or 431 for a request target or header block over `limit` bytes, else None."""
    target = len(scope.get("raw_path") or scope["path"].encode()) + len(scope["query_string"])
    if target > limit:
        return 414, f"request target over {limit} bytes"
    head = target + sum(len(k) + len(v) + 4 for k, v in scope.get("headers", []))
    if head > limit:
        return 431, f"request headers over {limit} bytes"
    return None


class HeaderLimitsMiddleware:
    """A request target or header block over `max_header_bytes`: a JSON 414 / 431."""

    def __init__(self, app: ASGIApp, max_header_bytes: int = MAX_HEADER_BYTES) -> None:
        self.app = app
        self.max_header_bytes = max_header_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        problem = None
        if scope["type"] == "http":
            problem = header_problem(scope, self.max_header_bytes)
        if problem is None:
            await self.app(scope, receive, send)
            return
        await error_response(*problem)(scope, receive, send)
