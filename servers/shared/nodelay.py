"""TCP_NODELAY on every accepted connection, also when the listener came from someone else.

asyncio turns Nagle's algorithm off on an accepted TCP connection only when the socket says
`proto == IPPROTO_TCP`. A listener made with `socket.socket(AF_INET, SOCK_STREAM)` says 0, and
its connections inherit that, so Nagle stays on. That is the listener Uvicorn's `--workers N`
supervisor binds and hands to its workers; Uvicorn's single-process path is unaffected (asyncio
builds that listener from getaddrinfo, which gives 6), and Gunicorn and Hypercorn set
TCP_NODELAY on their listeners themselves, which accepted sockets inherit on Linux (checked
here: no stall with Gunicorn's Uvicorn worker or Hypercorn, infbench/measure/keepalive.py).
An ASGI server writes a response's head and body as two sends, so on a keep-alive connection
the body waits for the client's delayed ACK: ~40 ms on Linux for every request after the first
(uvicorn#3149, open as of uvicorn 0.54). Measured here: a 40-50 ms sleeping model API
answered in a median 54 ms with `--workers 1` and 96 ms with `--workers 2`.

Off by default, so a hypothesis measures the stack as it ships; INFBENCH_TCP_NODELAY=1 makes a
server of ours set the option itself (the `-nodelay` variants), which is what a fix upstream
does. Call `apply_from_env()` at import, before the server accepts anything.
"""

from __future__ import annotations

import asyncio.base_events
import contextlib
import os
import socket
from collections.abc import Callable, Mapping

ENV = "INFBENCH_TCP_NODELAY"


def _patched(original: Callable[[socket.socket], None]) -> Callable[[socket.socket], None]:
    def set_nodelay(sock: socket.socket) -> None:
        if (sock.family in (socket.AF_INET, socket.AF_INET6) and sock.type == socket.SOCK_STREAM
                and sock.proto == 0):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return
        original(sock)

    set_nodelay.infbench_nodelay = True  # type: ignore[attr-defined]
    return set_nodelay


def apply() -> bool:
    """Patch asyncio's per-connection hook (once); True if it was patched now."""
    current = asyncio.base_events._set_nodelay  # type: ignore[attr-defined]
    if getattr(current, "infbench_nodelay", False):
        return False
    asyncio.base_events._set_nodelay = _patched(current)  # type: ignore[attr-defined]
    return True


def apply_from_env(env: Mapping[str, str] | None = None) -> bool:
    """apply() when INFBENCH_TCP_NODELAY is 1/true/yes; a bad value is a SettingsError."""
    from servers.shared.settings import SettingsError

    raw = (os.environ if env is None else env).get(ENV, "").strip().lower()
    if raw in ("", "0", "false", "no"):
        return False
    if raw not in ("1", "true", "yes"):
        raise SettingsError(f"{ENV}: expected 1 or 0, got {raw!r}")
    apply()
    return True
