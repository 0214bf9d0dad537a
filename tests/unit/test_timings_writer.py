"""servers/shared/timings.py: the one writer of the servers' timings-<pid>.jsonl files, its
format (what the harness reads) and its one failure behaviour (reported once, keeps trying)."""

from __future__ import annotations

import ctypes
import errno
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from infbench.paths import ROOT
from servers.shared.timings import TimingsWriter, timings_path

RECORDS = [{"t": 1700000000.123456, "status": 200, "total_ms": 1.5, "worker_pid": None},
           {"id": "ab", "status": "OK", "ok": True, "batch": 3}]


def lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def test_records_round_trip_one_compact_line_each(tmp_path: Path) -> None:
    folder = tmp_path / "a" / "b"
    writer = TimingsWriter(folder, flush_s=60)
    writer.create()  # the folder and the empty file, at once
    path = timings_path(folder, os.getpid())
    assert writer.path == path and path.read_text() == ""
    for r in RECORDS:
        writer.append(r)
    writer.flush()
    assert lines(path) == [json.dumps(r, separators=(",", ":")) for r in RECORDS]
    assert [json.loads(x) for x in lines(path)] == RECORDS
    writer.append({"status": 504})
    writer.close()  # what is still pending is written
    assert json.loads(lines(path)[-1]) == {"status": 504}
    assert path.read_text().endswith("\n")


def test_without_a_folder_nothing_is_kept_or_written(tmp_path: Path) -> None:
    writer = TimingsWriter(None)
    writer.create()
    writer.append(RECORDS[0])
    writer.close()
    assert writer.path is None and list(tmp_path.iterdir()) == []


def test_the_thread_writes_within_the_flush_interval(tmp_path: Path) -> None:
    writer = TimingsWriter(tmp_path, flush_s=0.05)
    writer.append(RECORDS[0])
    path = timings_path(tmp_path, os.getpid())
    deadline = time.monotonic() + 10
    while not (path.exists() and lines(path)) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert [json.loads(x) for x in lines(path)] == [RECORDS[0]]
    writer.close()


def _unwritable(tmp_path: Path, how: str) -> Path:
    if how == "missing":
        return tmp_path / "removed"  # never made, as if removed under the server
    if how == "a file":
        (tmp_path / "file").write_text("")
        return tmp_path / "file" / "timings"
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    return folder


CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER = 1, 2, 3
PR_CAPBSET_DROP = 24


def _bypasses_permissions() -> bool:
    """This process may write into a folder its mode forbids (root with CAP_DAC_OVERRIDE)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> CAP_DAC_OVERRIDE & 1)
    return os.geteuid() == 0


def _drop_dac() -> None:  # in the child, before exec: the file-permission overrides go
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def _without_permission_overrides(nodeid: str) -> None:
    """Run one test of this file in a child pytest whose root has no CAP_DAC_OVERRIDE (nor
    CAP_DAC_READ_SEARCH, CAP_FOWNER): a folder's mode holds for it as for any user."""
    with tempfile.TemporaryDirectory() as base:
        res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                              "-p", "no:xdist", f"--basetemp={base}/bt", nodeid], cwd=ROOT,
                             preexec_fn=_drop_dac, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "1 passed" in res.stdout, res.stdout[-3000:] + res.stderr


def _make_writable(folder: Path, how: str) -> None:
    if how == "a file":
        folder.parent.unlink()
    if how == "read-only":
        folder.chmod(0o700)
    folder.mkdir(parents=True, exist_ok=True)


@pytest.mark.parametrize("how", ["missing", "a file", "read-only"])
def test_an_unwritable_folder_is_one_line_on_stderr_and_the_writer_keeps_trying(
        tmp_path: Path, how: str, capsys: pytest.CaptureFixture[str],
        request: pytest.FixtureRequest) -> None:
    if how == "read-only" and _bypasses_permissions():
        # Root writes into a read-only folder: the same test, in a child without that power.
        _without_permission_overrides(request.node.nodeid)
        return
    folder = _unwritable(tmp_path, how)
    writer = TimingsWriter(folder, flush_s=60)
    path = timings_path(folder, os.getpid())
    writer.append(RECORDS[0])
    writer.flush()  # no exception: a timing line never fails a request
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"infbench: cannot write timings to {path}: ")
    writer.append(RECORDS[1])
    writer.flush()
    assert capsys.readouterr().err == ""  # once, not once per flush
    if how != "missing":  # (create() makes a missing folder)
        with pytest.raises(OSError):
            writer.create()  # a server that wants its timings stops at start-up instead

    _make_writable(folder, how)
    writer.append({"status": 200})
    writer.flush()
    assert lines(path) == ['{"status":200}']  # the failed writes' lines are dropped, not kept
    assert capsys.readouterr().err == (f"infbench: timings to {path} are written again; "
                                       "2 lines were dropped\n")
    writer.close()


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full")
def test_a_full_disk_is_reported_once_with_enospc(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    path = timings_path(tmp_path, os.getpid())
    path.symlink_to("/dev/full")  # every write to it fails with ENOSPC
    writer = TimingsWriter(tmp_path, flush_s=60)
    for _ in range(2):
        writer.append(RECORDS[0])
        writer.flush()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"cannot write timings to {path}: " in err
    assert os.strerror(errno.ENOSPC) in err

    path.unlink()  # space again
    writer.append(RECORDS[1])
    writer.close()
    assert [json.loads(x) for x in lines(path)] == [RECORDS[1]]
    assert "2 lines were dropped" in capsys.readouterr().err


def test_a_forked_child_writes_its_own_file_and_not_its_parents_lines(tmp_path: Path) -> None:
    writer = TimingsWriter(tmp_path, flush_s=60)
    writer.append({"who": "parent"})  # pending in the parent at the fork
    child = os.fork()
    if child == 0:  # pragma: no cover - the child
        try:
            writer.append({"who": "child"})
            writer.close()
        finally:
            os._exit(0)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        pid, status = os.waitpid(child, os.WNOHANG)
        if pid:
            break
        time.sleep(0.02)
    else:
        os.kill(child, 9)
        pytest.fail("the forked child did not finish")
    assert os.waitstatus_to_exitcode(status) == 0
    assert lines(timings_path(tmp_path, child)) == ['{"who":"child"}']
    writer.close()
    assert lines(timings_path(tmp_path, os.getpid())) == ['{"who":"parent"}']
