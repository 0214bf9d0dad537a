"""heaptrack_print's leak listing read into the top native stacks (infbench/measure/
native_stacks.py), on a real listing: a planted server's 200 x 64 KiB strdup leak, captured by a
window (tests/fixtures/heaptrack-leaks.txt, `heaptrack_print -l 1 -m 0`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from infbench.measure import native_stacks as ns

SAMPLE = Path(__file__).parents[1] / "fixtures" / "heaptrack-leaks.txt"


def test_sizes_are_heaptracks_powers_of_1000() -> None:
    assert ns.parse_size("960B") == 960
    assert ns.parse_size("655.36K") == pytest.approx(655_360)
    assert ns.parse_size("9.96M") == pytest.approx(9.96e6)
    assert ns.parse_size("1.2G") == pytest.approx(1.2e9)
    with pytest.raises(ValueError):
        ns.parse_size("lots")


def test_each_backtrace_with_its_frames_and_their_libraries() -> None:
    traces = ns.parse_leaks(SAMPLE.read_text())
    assert [(t.bytes, t.blocks) for t in traces] == [(9.96e6, 152), (3.15e6, 48), (2.12e3, 10)]
    first = traces[0].frames
    assert first[0] == ("__GI___strdup", "libc.so.6")
    assert first[3] == ("ffi_call", "libffi.so.8")
    # an inlined frame has no "in" line: it is in the library of the frame before it
    assert first[5] == ("_ctypes_callproc", "_ctypes.cpython-311-x86_64-linux-gnu.so")
    assert ("_PyObject_MakeTpCall", "libpython3.11.so.1.0") in first
    assert len(first) > ns.STACK_DEPTH
    assert all(lib != "?" for t in traces for _, lib in t.frames)


def test_backtraces_sharing_their_first_frames_are_one_stack() -> None:
    top = ns.top_stacks(ns.parse_leaks(SAMPLE.read_text()))
    assert len(top) == 2
    leak = top[0]
    assert leak["blocks"] == 200 and leak["bytes_mb"] == pytest.approx(13.11e6 / ns.MB, abs=1e-3)
    assert (leak["library"], leak["function"]) == ("libc.so.6", "__GI___strdup")
    assert len(leak["stack"]) == ns.STACK_DEPTH
    assert leak["stack"][0] == "__GI___strdup (libc.so.6)"
    assert leak["stack"][3] == "ffi_call (libffi.so.8)"
    assert top[1]["function"] == "array_resize" and top[1]["bytes_mb"] < 0.01
    assert ns.top_stacks(ns.parse_leaks(SAMPLE.read_text()), top=1) == [leak]


def test_a_listing_without_leaks_is_no_stack() -> None:
    assert ns.top_stacks(ns.parse_leaks("MEMORY LEAKS\n\n\ntotal runtime: 0.5s.\n")) == []
    assert ns.parse_leaks("no such section\n") == []


def test_a_window_on_no_process_is_one_line(tmp_path: Path) -> None:
    w = ns.Window(2**22 + 12345, tmp_path)
    with pytest.raises(ns.NativeStacksError) as e:
        w.start()
    assert "\n" not in str(e.value)
    with pytest.raises(ns.NativeStacksError, match="not started"):
        w.stop()
