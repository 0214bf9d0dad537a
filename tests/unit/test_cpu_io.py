"""CPU or IO bound, per request: the schedstat reader on this process, the powercap reader on a
fake tree, and the figures, table and summary over a synthetic run."""

from __future__ import annotations

import csv
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from infbench.analysis import cpu_io, summary
from infbench.measure import energy, monitors, sampler
from infbench.measure.phases import PhaseLog
from infbench.report import markdown, tables
from infbench.results import readers, samples, schemas
from tests.fixtures.synth import T0, add_service_cpu, make_variant


def _spin(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


# -- schedstat ------------------------------------------------------------------------------
def test_schedstat_fields_parse_one_line() -> None:
    assert sampler.schedstat_fields("93380046 5878513 45\n") == (93380046, 5878513, 45)


def test_task_schedstats_of_this_process_cover_every_thread() -> None:
    ready, done = threading.Event(), threading.Event()

    def worker() -> None:
        _spin(0.05)
        ready.set()
        done.wait(30)

    t = threading.Thread(target=worker)
    t.start()
    try:
        assert ready.wait(30)
        stats = sampler.task_schedstats(os.getpid())
        assert stats is not None
        assert os.getpid() in stats and t.native_id in stats  # the main thread and the worker
        assert len(stats) == psutil.Process().num_threads()
        assert all(v >= 0 for fields in stats.values() for v in fields)
        assert stats[t.native_id][0] > 0  # it ran: on-CPU ns
    finally:
        done.set()
        t.join()
    assert sampler.task_schedstats(2**22 + 12345) is None  # no such process


def test_run_wait_stays_monotone_when_a_thread_exits() -> None:
    waits = sampler.RunWait()
    readings = []
    for _ in range(3):
        t = threading.Thread(target=_spin, args=(0.02,))
        t.start()
        readings.append(waits.read(os.getpid()))
        t.join()  # gone: its schedstat file with it
        readings.append(waits.read(os.getpid()))
    assert all(r is not None and r >= 0 for r in readings)
    assert readings == sorted(readings)  # type: ignore[type-var]
    waits.forget(os.getpid())
    assert waits.read(2**22 + 12345) is None


def test_the_sampler_writes_run_wait_and_old_files_read_without_it(tmp_path: Path) -> None:
    me = psutil.Process(os.getpid())
    path = tmp_path / "processes.csv"
    s = sampler.ProcessSampler(lambda: [me], path, interval=0.02, sched_every=0.05).start()
    deadline = time.monotonic() + 60
    while s.samples < 10 and time.monotonic() < deadline:
        _spin(0.01)
    s.stop()
    rows = samples.process_rows(path)
    assert len(rows) >= 5
    waits = [r["run_wait_s"] for r in rows if r["run_wait_s"] is not None]
    assert len(waits) >= 2  # read every 0.05 s, empty between
    assert all(w >= 0 for w in waits) and waits == sorted(waits)
    # The main thread (this one, which spins) read with them: on a CPU, and never more than
    # the whole process.
    mains = [(r["main_cpu_s"], r["cpu_s"]) for r in rows if r["main_cpu_s"] is not None]
    assert len(mains) == len(waits) and [m for m, _ in mains] == sorted(m for m, _ in mains)
    assert all(0 < m <= cpu + 0.05 for m, cpu in mains)  # cpu_s has 1/100 s ticks
    old = tmp_path / "old.csv"
    old.write_text(",".join(samples.PROCESS_COLUMNS[:15]) + "\n"
                   "1.5,10,1,python,100,50,40,30,60,0,0,3,1.25,server,0\n")
    assert samples.process_rows(old)[0]["run_wait_s"] is None
    assert samples.process_rows(old)[0]["main_cpu_s"] is None
    assert samples.process_rows(old)[0]["cpu_s"] == 1.25


# -- powercap -------------------------------------------------------------------------------
def _zone(root: Path, name: str, uj: int, max_range: int = 1000) -> Path:
    z = root / name
    z.mkdir(parents=True)
    (z / "name").write_text("package-0\n")
    (z / "energy_uj").write_text(f"{uj}\n")
    (z / "max_energy_range_uj").write_text(f"{max_range}\n")
    return z


def test_powercap_zones_on_a_fake_tree(tmp_path: Path) -> None:
    root = tmp_path / "powercap"
    _zone(root, "intel-rapl:0", 500)
    _zone(root, "intel-rapl:0:0", 100)  # a subzone: part of its parent, not summed
    _zone(root, "intel-rapl:1", 7, max_range=2000)
    (root / "intel-rapl").mkdir()  # the control type: no counter
    found, why = energy.zones(root)
    assert why is None
    assert [(z.name, z.max_range_uj) for z in found] == [("intel-rapl:0", 1000),
                                                        ("intel-rapl:1", 2000)]
    assert energy.read_uj(found[0]) == 500
    assert energy.delta_uj(900, 100, 1000) == 200  # across a wrap
    assert energy.delta_uj(100, 400, 1000) == 300


def test_no_powercap_or_no_readable_counter_says_why(tmp_path: Path) -> None:
    assert energy.zones(tmp_path / "none") == ([], f"no {tmp_path / 'none'} on this machine")
    root = tmp_path / "powercap"
    bad = _zone(root, "intel-rapl:0", 1)
    (bad / "energy_uj").unlink()
    (bad / "energy_uj").mkdir()  # unreadable as a file, whoever we are (root too)
    found, why = energy.zones(root)
    assert found == [] and why is not None and "not readable" in why
    empty = tmp_path / "empty"
    empty.mkdir()
    assert energy.zones(empty)[1] == f"no energy counter under {empty}"


def test_this_machine_energy_is_either_read_or_said_unavailable() -> None:
    found, why = energy.zones()
    assert (found and why is None) or (not found and why)


def test_the_energy_sampler_on_a_fake_tree(tmp_path: Path) -> None:
    root = tmp_path / "powercap"
    z = _zone(root, "intel-rapl:0", 10)
    found, _ = energy.zones(root)
    s = energy.EnergySampler(found, tmp_path / "energy.csv", interval=0.02).start()
    deadline = time.monotonic() + 60
    while s.samples < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    (z / "energy_uj").write_text("25\n")
    while s.samples < 6 and time.monotonic() < deadline:
        time.sleep(0.01)
    s.stop()
    rows = samples.energy_rows(tmp_path / "energy.csv")
    assert list(rows) == ["intel-rapl:0"] and len(rows["intel-rapl:0"]) >= 6
    assert {uj for _, uj, _ in rows["intel-rapl:0"]} == {10, 25}
    assert s.failed == 0


def _energy_monitor(tmp_path: Path, root: Path,
                    monkeypatch: pytest.MonkeyPatch) -> tuple[Any, PhaseLog]:
    monkeypatch.setenv("INFBENCH_POWERCAP", str(root))
    log = PhaseLog(tmp_path / "phases.json", "v")
    ctx = monitors.Context(variant=None, profile=None, topology=None,  # type: ignore[arg-type]
                           log=log, out=tmp_path, queue_keys=[])
    return monitors.energy_counters(ctx)[0], log


def test_the_energy_monitor_says_why_there_is_none(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    mon, log = _energy_monitor(tmp_path, tmp_path / "none", monkeypatch)
    mon.stop()
    assert log.data["energy"] == {"available": False,
                                  "why": f"no {tmp_path / 'none'} on this machine"}
    assert not (tmp_path / samples.ENERGY_FILE).exists() and log.faults == []


def test_a_counter_that_stops_answering_is_a_fault(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    z = _zone(tmp_path / "powercap", "intel-rapl:0", 10)
    mon, log = _energy_monitor(tmp_path, tmp_path / "powercap", monkeypatch)
    mon.sampler.interval = 0.02
    deadline = time.monotonic() + 60
    while mon.sampler.samples < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    (z / "energy_uj").unlink()
    while mon.sampler.failed < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    mon.stop()
    assert log.data["energy"]["available"] is True
    assert log.data["energy"]["zones"] == ["intel-rapl:0"]
    assert [e["kind"] for e in log.faults] == ["energy_failed"]
    assert samples.energy_rows(tmp_path / samples.ENERGY_FILE)["intel-rapl:0"]


def test_energy_over_a_window_interpolates_and_unwraps() -> None:
    zones = {"intel-rapl:0": [(0.0, 900_000, 1_000_000), (1.0, 950_000, 1_000_000),
                              (2.0, 50_000, 1_000_000)]}  # wraps between 1 and 2
    # 50 000 µJ in the first second, 100 000 in the second: 0.5-1.5 s is 25 000 + 50 000.
    j = cpu_io.energy_j(zones, 0.5, 1.5)
    assert j is not None and abs(j - 0.075) < 1e-9
    assert cpu_io.energy_j(zones, -1.0, 1.0) is None  # not covered
    assert cpu_io.energy_j({}, 0.0, 1.0) is None


# -- off-CPU share from timing lines --------------------------------------------------------
def test_off_cpu_share_over_the_measured_phases() -> None:
    lines = [{"_t": 1.0, "decode_ms": 10.0, "decode_cpu_ms": 8.0, "model_ms": 30.0,
              "model_cpu_ms": 12.0, "total_ms": 50.0},
             {"_t": 2.0, "decode_ms": 0.0, "decode_cpu_ms": 0.0},  # nothing to weigh
             {"_t": 9.0, "model_ms": 10.0, "model_cpu_ms": 10.0},  # outside the window
             {"_t": 1.5, "model_ms": 5.0, "model_cpu_ms": 5.2}]  # two clocks: CPU over wall
    off = cpu_io.off_cpu(lines, 0.0, 5.0)
    assert off is not None
    assert off["phases"] == ["decode", "model"] and off["lines"] == 2
    assert off["share"] == round(1 - (8 + 12 + 5.2) / 45, 3)
    assert cpu_io.off_cpu([{"_t": 1.0, "model_ms": 3.0}], 0.0, 5.0) is None
    clamped = cpu_io.off_cpu([{"_t": 1.0, "model_ms": 3.0, "model_cpu_ms": 3.1}], 0.0, 5.0)
    assert clamped is not None and clamped["share"] == 0.0


def test_readings() -> None:
    assert cpu_io.reading({"off_cpu_share": 0.08, "wait_share": 0.3}) == (
        "CPU bound: 92% of the server's time on CPU; waiting for a core 30% of its runnable "
        "time: the machine's cores are contended")
    assert cpu_io.reading({"off_cpu_share": 0.7, "wait_share": 0.05}).startswith(
        "IO or waiting bound: 70% of the server's time off CPU")
    assert "not measured" in cpu_io.reading({"off_cpu_share": None, "cpu_pct": 40.0,
                                             "wait_share": None})
    assert cpu_io.reading({}) == ""


# -- a synthetic run ------------------------------------------------------------------------
def _synthetic(tmp_path: Path, with_energy: bool) -> Path:
    """make_variant's two steps (10-22 s and 30-42 s with drains; 48 and 30 requests), one
    service "server" of two processes: pid 1 uses 0.5 core and waits 0.1 s a second, pid 2
    0.25 core; timing lines with decode and model CPU; energy 2 W if `with_energy`."""
    d = make_variant(tmp_path)
    add_service_cpu(d, {1: 0.5, 2: 0.25}, waits={1: 0.1})
    ph = json.loads((d / "phases.json").read_text())
    ph["energy"] = {"available": False, "why": "no /sys/class/powercap on this machine"}
    (d / "phases.json").write_text(json.dumps(ph))
    lines = [{"t": T0 + 11 + i * 0.2, "decode_ms": 4.0, "decode_cpu_ms": 3.0,
              "model_ms": 16.0, "model_cpu_ms": 12.0, "total_ms": 25.0} for i in range(40)]
    (d / "timings-1.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    if with_energy:
        with (d / samples.ENERGY_FILE).open("w", newline="") as f:
            out = csv.writer(f)
            out.writerow(samples.ENERGY_COLUMNS)
            for s in range(0, 53):
                out.writerow([f"{T0 + s:.3f}", "intel-rapl:0", (2_000_000 * s) % 2**32,
                              2**32])
    return d


def test_figures_of_a_synthetic_run(tmp_path: Path) -> None:
    d = _synthetic(tmp_path, with_energy=False)
    s = summary.summarize_variant(d)
    assert s["schema"] == schemas.SUMMARY_SCHEMA
    found = s["cpu_io"]
    assert found["energy"] == {"available": False,
                               "why": "no /sys/class/powercap on this machine"}
    one, two = found["steps"]
    assert (one["service"], one["index"], one["requests"]) == ("server", 1, 48)
    # 12 s (load and drain) at 0.75 core = 9 CPU-s over 48 requests; the samples are 0.1 s
    # apart and cpu_s has two decimals, so within a sample's worth.
    assert abs(one["cpu_ms_per_request"] - 9000 / 48) < 0.1 * 750 / 48 + 1
    assert abs(one["run_wait_ms_per_request"] - 1200 / 48) < 1
    assert abs(one["wait_share"] - 1.2 / (9 + 1.2)) < 0.01
    assert one["off_cpu_share"] == 0.25 and one["off_cpu"]["phases"] == ["decode", "model"]
    assert one["energy_j_per_request"] is None
    assert one["reading"].startswith("CPU bound: 75% of the server's time on CPU")
    assert two["off_cpu_share"] is None  # no timing line in step 2
    assert "not measured" in two["reading"]
    # The split of the time leaves the CPU fields out: they are not parts of a request.
    assert all(not k.endswith("_cpu_ms") for sp in s["split"] for k in sp["split"])

    table = tables.cpu_io_table([s])
    assert [row[7] for row in table.rows] == ["25%", "not measured"]
    assert [row[8] for row in table.rows] == ["not available"] * 2
    assert "not available here: no /sys/class/powercap" in table.caption
    text = "\n".join(markdown.section(table))
    assert "## CPU or IO bound (per service and step)" in text


def test_energy_per_request_where_the_counter_is_there(tmp_path: Path) -> None:
    d = _synthetic(tmp_path, with_energy=True)
    found = summary.summarize_variant(d)["cpu_io"]
    assert found["energy"]["available"] is True and found["energy"]["zones"] == ["intel-rapl:0"]
    one = found["steps"][0]
    assert abs(one["energy_j_per_request"] - 2.0 * 12 / 48) < 1e-3  # 2 W for 12 s, 48 requests


def test_a_version_5_summary_reads_with_no_cpu_io(tmp_path: Path) -> None:
    d = tmp_path / "v"
    d.mkdir()
    old: dict[str, Any] = {"schema": 5, "variant": "v", "memory_mb": {}, "steps": [],
                           "totals": {}, "verdict": {"verdict": "plateau", "culprit": None}}
    (d / "summary.json").write_text(json.dumps(old))
    s = readers.summary_json(d)
    assert s["cpu_io"] is None and s["migrated_from"] == 5
    assert tables.cpu_io_table([s]).rows == ()
