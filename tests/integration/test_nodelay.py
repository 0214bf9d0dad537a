"""servers/shared/nodelay.py: TCP_NODELAY on connections accepted from a listener bound with proto 0
(what Uvicorn's --workers supervisor, Gunicorn and Hypercorn hand their workers)."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from infbench.analysis import stall
from infbench.paths import HOST
from servers.shared import nodelay
from servers.shared.settings import SettingsError
from tests.fixtures.helpers import child_env, free_port, running

CHECK = r"""
import asyncio, socket, sys
from servers.shared import nodelay

if sys.argv[1] == "1":
    nodelay.apply()

async def main() -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)  # proto 0, as a supervisor's
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    seen: asyncio.Future = asyncio.get_running_loop().create_future()

    class Proto(asyncio.Protocol):
        def connection_made(self, transport):
            s = transport.get_extra_info("socket")
            seen.set_result((s.proto, s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)))

    server = await asyncio.get_running_loop().create_server(Proto, sock=listener)
    client = socket.create_connection(listener.getsockname())
    proto, flag = await asyncio.wait_for(seen, 5)
    client.close()
    server.close()
    print(proto, int(bool(flag)))

asyncio.run(main())
"""


def accepted(patched: bool) -> tuple[int, int]:
    out = subprocess.run([sys.executable, "-c", CHECK, "1" if patched else "0"], check=True,
                         capture_output=True, text=True, timeout=60).stdout.split()
    return int(out[0]), int(out[1])


def test_asyncio_leaves_nagle_on_for_a_proto_0_listener_and_the_fix_turns_it_off() -> None:
    assert accepted(patched=False) == (0, 0)   # the bug this module exists for
    assert accepted(patched=True) == (0, 1)


def test_apply_is_once_and_the_setting_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio.base_events as be

    monkeypatch.setattr(be, "_set_nodelay", be._set_nodelay)  # restored after the test
    assert nodelay.apply_from_env({}) is False
    assert nodelay.apply_from_env({"INFBENCH_TCP_NODELAY": "0"}) is False
    assert nodelay.apply_from_env({"INFBENCH_TCP_NODELAY": "1"}) is True
    assert nodelay.apply() is False                              # already patched
    with pytest.raises(SettingsError, match="INFBENCH_TCP_NODELAY"):
        nodelay.apply_from_env({"INFBENCH_TCP_NODELAY": "maybe"})


def test_a_tcp_listener_made_properly_is_left_to_asyncio() -> None:
    # asyncio's own path (proto 6) is untouched: the original hook still runs for it.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        asyncio.base_events._set_nodelay(sock)  # type: ignore[attr-defined]
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    finally:
        sock.close()


# --- the run's keep-alive check (infbench/measure/keepalive.py) ------------------------------

def test_the_judgement_on_synthetic_times() -> None:

    assert stall.figures([2.0, 43.0, 41.5, 44.0, 42.0])["stalled"] is True
    assert stall.figures([2.0, 1.5, 1.2, 1.4])["stalled"] is False
    # Slow, not stalled; then a connection closed each time.
    assert stall.figures([60.0, 62.0, 61.0, 63.0])["stalled"] is False
    assert stall.figures([2.0])["stalled"] is False
    found = stall.figures([2.0, 43.0, 41.5, 44.0])
    assert "Nagle" in stall.message(found) and "43 ms" in stall.message(found)


@pytest.mark.integration
@pytest.mark.serial  # a 40 ms stall told from a busy machine's delays: run alone
def test_uvicorn_with_two_workers_stalls_and_the_fix_removes_it(tmp_path: Path) -> None:
    """Real Uvicorn --workers 2 serving our model API: keep-alive requests after the first
    wait for the delayed ACK; with INFBENCH_TCP_NODELAY=1 they do not (compared within the
    test, not against a fixed time)."""
    from infbench.measure import keepalive

    seen = {}
    for fix in ("0", "1"):
        port = free_port()
        env = child_env(INFBENCH_MODEL_API_KIND="sleep", INFBENCH_MODEL_SLEEP_MS="1-2",
                        INFBENCH_TCP_NODELAY=fix)
        argv = [sys.executable, "-m", "uvicorn", "servers.scoring.model_api_fastapi:app", "--host",
                HOST, "--port", str(port), "--workers", "2", "--no-access-log"]
        url = f"http://{HOST}:{port}"
        with running(argv, env, tmp_path / f"api-{fix}.log", f"{url}/health", timeout=60):
            seen[fix] = keepalive.check(url, "/health")
    assert seen["0"]["stalled"] is True, seen
    assert seen["1"]["stalled"] is False, seen
    assert seen["1"]["later_median_ms"] < seen["0"]["later_median_ms"]
