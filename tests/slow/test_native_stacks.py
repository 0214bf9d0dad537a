"""Native leaks named from outside (infbench/measure/native_stacks.py): a planted server we
start, heaptrack attached to its pid for a window of 200 requests, then the top stacks of what
the window left alive. The server must answer as before once the window is closed."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from infbench.measure import native_stacks as ns
from tests.fixtures.helpers import child_env, free_port, running

pytestmark = [pytest.mark.integration, pytest.mark.requires("heaptrack", "gdb")]

REQUESTS = 200
KB = 64
LEAK_MB = REQUESTS * KB * 1024 / ns.MB  # 12.5


def post(port: int, n: int) -> None:
    for _ in range(n):
        req = urllib.request.Request(f"http://127.0.0.1:{port}/predict", data=b'{"x": 1}',
                                     method="POST", headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            assert r.status == 200


def health(port: int) -> dict[str, int]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as r:
        return dict(json.loads(r.read()))


def untraced_and_running(pid: int) -> bool:
    status = dict(line.split(":", 1) for line in
                  Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return status["TracerPid"].strip() == "0" and not status["State"].strip().startswith("T")


@pytest.fixture
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[int, int]]:
    port = free_port()
    argv = [sys.executable, "-m", "uvicorn", "tests.fixtures.planted_app:app", "--host",
            "127.0.0.1", "--port", str(port), "--no-access-log"]
    env = child_env(**request.param)
    with running(argv, env, tmp_path / "server.log", f"http://127.0.0.1:{port}/health",
                 timeout=60) as proc:
        post(port, 20)  # warm: what the first requests allocate for good is before the window
        yield proc.pid, port


def window(pid: int, port: int, out: Path) -> dict[str, object]:
    assert ns.available() is None
    w = ns.Window(pid, out)
    w.start()
    folder = window_folder(w)
    post(port, REQUESTS)
    result = w.stop()
    assert untraced_and_running(pid) and not ours_left(folder)
    before = health(port)["served"]
    post(port, 5)
    assert health(port)["served"] == before + 5  # it goes on serving
    return result


@pytest.mark.parametrize("server", [{"PLANTED_NATIVE_KB": str(KB),
                                     "PLANTED_NATIVE_VIA": "strdup"}], indirect=True)
def test_a_native_leak_is_named_with_its_stack(server: tuple[int, int], tmp_path: Path) -> None:
    pid, port = server
    r = window(pid, port, tmp_path / "window")
    assert r["tool"] == "heaptrack" and r["pid"] == pid
    top = r["top"]
    assert isinstance(top, list) and top
    leak = top[0]
    assert 0.7 * LEAK_MB <= leak["bytes_mb"] <= 1.1 * LEAK_MB, leak
    assert leak["blocks"] == REQUESTS  # one block a request, nothing from before the window
    assert (leak["library"], leak["function"]) == ("libc.so.6", "__GI___strdup"), leak
    assert any("ffi_call (libffi" in f for f in leak["stack"]), leak["stack"]
    assert all(other["bytes_mb"] < 0.1 * LEAK_MB for other in top[1:]), top
    files = r["files"]
    assert isinstance(files, list) and f"heaptrack.{pid}.zst" in files
    assert all((tmp_path / "window" / f).stat().st_size > 0 for f in files)


@pytest.mark.parametrize("server", [{"PLANTED_LEAK": "0"}], indirect=True)
def test_a_healthy_server_has_no_such_stack(server: tuple[int, int], tmp_path: Path) -> None:
    pid, port = server
    r = window(pid, port, tmp_path / "window")
    assert isinstance(r["top"], list)
    assert all(t["bytes_mb"] < 0.05 * LEAK_MB for t in r["top"]), r["top"]


@pytest.mark.parametrize("server", [{"PLANTED_NATIVE_KB": str(KB)}], indirect=True)
def test_a_malloc_through_a_ctypes_pointer_is_not_seen(server: tuple[int, int],
                                                       tmp_path: Path) -> None:
    """The limit the module states: heaptrack rewrites GOT entries, and ctypes calls malloc
    through a pointer it took with dlsym, so this server's 12.5 MB are not in the window."""
    pid, port = server
    r = window(pid, port, tmp_path / "window")
    assert isinstance(r["top"], list)
    assert all(t["bytes_mb"] < 0.05 * LEAK_MB for t in r["top"]), r["top"]
    assert health(port)["native_blocks"] == 20 + REQUESTS + 5  # the leak was there all along


def test_a_process_that_ends_in_the_window_is_one_line_and_nothing_is_left(
        tmp_path: Path) -> None:
    p = subprocess.Popen([sys.executable, "-c", "import time; print('up', flush=True); "
                          "time.sleep(2)"], stdout=subprocess.PIPE, start_new_session=True)
    with p:
        assert p.stdout is not None and p.stdout.readline().strip() == b"up"
        w = ns.Window(p.pid, tmp_path / "window")
        w.start()
        folder = window_folder(w)
        with pytest.raises(ns.NativeStacksError, match="started already"):
            w.start()
        p.wait(timeout=30)
        started = time.monotonic()
        with pytest.raises(ns.NativeStacksError) as e:
            w.stop()
        assert "\n" not in str(e.value) and f"pid {p.pid}" in str(e.value)
        assert time.monotonic() - started < 10
    assert not ours_left(folder)


def window_folder(w: ns.Window) -> str:
    """The started window's own temporary folder (infbench-heaptrack-*), which its reader's
    command line names."""
    assert w._tmp is not None and w._tmp.name.startswith("infbench-heaptrack-")
    return str(w._tmp)


def ours_left(folder: str) -> list[str]:
    """Processes still running on this window's FIFO: only this one's (another window, a
    run's culprit window in tests/slow/test_verdict_planted.py say, may run at the same time
    in another worker)."""
    left = []
    for q in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            if folder.encode() in q.read_bytes():
                left.append(q.parent.name)
    return left
