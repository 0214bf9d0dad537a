"""The one error type and the one JSON error body of every infbench server.

A request a server refuses (bad input, a limit, a failed upstream, a busy server) is raised as
ApiError(status, message[, headers]); each framework's handler answers it with `status`, the
headers if any, and the body error_body(message):

    {"error": "<the message's first line>"}     ("error" when the message is empty)

never a traceback or a second line. error_response is that answer as a Starlette JSONResponse
(every ASGI server here), with any extra fields after "error" (the image servers' "index" of a
bad image); the Flask builds serialise error_body with their own jsonify.

Nothing of a web framework is imported here at module import: error_response imports
Starlette's JSONResponse when it is first called, so the Flask builds stay Flask builds.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from starlette.responses import JSONResponse


class ApiError(Exception):
    """A request refused with `status`, a one-line `message` and optional response headers."""

    def __init__(self, status: int, message: str,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers) if headers is not None else None


def one_line(text: str, default: str = "error") -> str:
    """The first line of `text` (stripped first), or `default` when there is none."""
    lines = text.strip().splitlines()
    return lines[0] if lines else default


def reason(exc: BaseException) -> str:
    """An exception's first line, for a one-line error; its type's name if it says nothing."""
    return one_line(str(exc), type(exc).__name__)


def error_body(message: str) -> dict[str, Any]:
    """{"error": "<first line>"}: the house error shape."""
    return {"error": one_line(message)}


def error_response(status: int, message: str, headers: Mapping[str, str] | None = None,
                   **extra: Any) -> JSONResponse:
    """error_body(message) (then `extra`) as a Starlette JSON answer with `status`."""
    from starlette.responses import JSONResponse

    return JSONResponse({**error_body(message), **extra}, status_code=status, headers=headers)
