"""Locust's master and workers in a step (infbench/measure/distributed.py): the argv, the open
loop's split, the merge of the workers' counters and request logs, the profile's keys."""

from __future__ import annotations

import csv
import itertools
import subprocess
from pathlib import Path

import pytest

from infbench import config
from infbench.config import ConfigError, Profile, Step
from infbench.config.schedule import arrivals
from infbench.measure import distributed, load
from tests.unit.test_schedule import HEAD

STEP = Step(batch=1, seconds=3)


def profile(tmp_path: Path, body: str) -> Profile:
    p = tmp_path / "e.toml"
    p.write_text(HEAD + "[profiles.p]\nusers = 4\nspawn_rate = 4\n"
                 "steps = [{ batch = 1, seconds = 2 }]\n" + body)
    return config.load(p).profile("p")


def test_the_profile_keys_and_their_defaults(tmp_path: Path) -> None:
    p = profile(tmp_path, "")
    assert (p.load_processes, p.load_external_workers, p.distributed) == (1, 0, False)
    p = profile(tmp_path, "load_processes = 3\nload_external_workers = 2\n"
                "load_master_port = 5557\nload_worker_wait = 5\n")
    assert (p.distributed, p.load_workers, p.load_master_port, p.load_worker_wait) == \
        (True, 5, 5557, 5.0)


@pytest.mark.parametrize(("body", "message"), [
    ("load_processes = 0\n", r"load_processes: must be > 0"),
    ("load_external_workers = -1\n", r"load_external_workers: must be >= 0"),
    ("load_master_port = 70000\n", r"load_master_port: a TCP port"),
    ("load_worker_wait = 0\n", r"load_worker_wait: must be > 0"),
    ('load_master_bind = ""\n', r"load_master_bind: an address"),
])
def test_load_engine_mistakes_are_one_line_errors(tmp_path: Path, body: str,
                                                  message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        profile(tmp_path, body)


def test_a_distributed_master_waits_for_every_worker_and_an_open_loop_has_one_user_each(
        ) -> None:
    p = Profile(name="p", steps=(STEP,), users=6, spawn_rate=3, load_processes=2,
                load_external_workers=1)
    argv = load.locust_argv(p, STEP, "http://127.0.0.1:1", Path("/x/s"), master_port=5999)
    at = argv.index("--expect-workers")
    assert argv[at + 1] == "3" and "--master" in argv
    assert argv[argv.index("--master-bind-port") + 1] == "5999"
    assert argv[argv.index("--master-bind-host") + 1] == "127.0.0.1"
    assert argv[argv.index("--users") + 1] == "6"
    ol = Profile(name="p", steps=(STEP,), rate=30.0, load_processes=3)
    argv = load.locust_argv(ol, STEP, "http://127.0.0.1:1", Path("/x/s"), master_port=1)
    assert argv[argv.index("--users") + 1] == "3"
    single = load.locust_argv(Profile(name="p", steps=(STEP,), users=2, spawn_rate=2), STEP,
                              "http://h", Path("/x/s"))
    assert "--master" not in single


def test_each_worker_gets_its_share_of_the_rate_and_constant_schedules_interleave(
        tmp_path: Path) -> None:
    envs = [distributed.worker_env({"INFBENCH_RATE": "30"}, k, 3, 30.0, "constant", 7, 2,
                                   tmp_path / f"c{k}", tmp_path / f"r{k}") for k in (1, 2, 3)]
    assert {e["INFBENCH_RATE"] for e in envs} == {"10"}
    assert len({e["INFBENCH_ARRIVAL_SEED"] for e in envs}) == 3
    assert all(e["INFBENCH_UNTIL_STABLE"] == "0" for e in envs)
    # The three shifted schedules of 10/s together are one schedule of 30/s.
    times = sorted(float(e["INFBENCH_ARRIVAL_OFFSET_S"]) + t for e in envs
                   for t in itertools.islice(arrivals(10.0, "constant"), 10))
    assert times == pytest.approx([i / 30 for i in range(30)])
    closed = distributed.worker_env({}, 1, 2, 0.0, "poisson", 0, 1, tmp_path / "c",
                                    tmp_path / "r")
    assert "INFBENCH_RATE" not in closed and closed["INFBENCH_COUNTS"] == str(tmp_path / "c")


def test_counters_are_summed_and_the_clock_is_the_masters() -> None:
    master = {"test_start": 10.0, "test_stopping": 13.0, "started": 0, "finished": 0}
    w1 = {"started": 5, "finished": 4, "failed": 1, "test_start": 10.1,
          "open_loop": {"rate": 5.0, "scheduled": 5, "sent": 5, "in_flight_max": 2,
                        "schedule_start": 10.2, "seed": 1, "cap_hits": 0}}
    w2 = {"started": 6, "finished": 6, "failed": 0, "test_start": 10.2,
          "open_loop": {"rate": 5.0, "scheduled": 6, "sent": 6, "in_flight_max": 3,
                        "schedule_start": 10.1, "seed": 2, "cap_hits": 1}}
    m = distributed.merge_counts(master, [w1, w2, None])
    assert (m["started"], m["finished"], m["failed"]) == (11, 10, 1)
    assert (m["test_start"], m["test_stopping"]) == (10.0, 13.0)
    ol = m["open_loop"]
    assert (ol["rate"], ol["scheduled"], ol["in_flight_max"], ol["cap_hits"]) == (10.0, 11, 3, 1)
    assert ol["schedule_start"] == 10.1 and ol["seeds"] == [1, 2]
    assert m["parts_missing"] == [3] and m["workers"][0]["finished"] == 4
    assert distributed.merge_counts(None, [None]) == {}


def write_log(path: Path, rows: list[tuple[float, float]]) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["t_end", "latency_ms", "ok", "lag_ms", "name"])
        for t, ms in rows:
            w.writerow([t, ms, 1, "", "/p"])


def test_request_logs_are_merged_in_time_order_and_a_missing_one_is_named(
        tmp_path: Path) -> None:
    write_log(tmp_path / "a.csv", [(1.0, 10.0), (3.0, 30.0)])
    write_log(tmp_path / "b.csv", [(2.0, 20.0)])
    out = tmp_path / "m.csv"
    n, missing = distributed.merge_requests(
        [tmp_path / "a.csv", tmp_path / "b.csv", tmp_path / "none.csv"], out)
    assert (n, missing) == (3, [3])
    with out.open() as f:
        assert [float(r["latency_ms"]) for r in csv.DictReader(f)] == [10.0, 20.0, 30.0]


def test_the_external_worker_script_is_valid_shell_with_its_environment(
        tmp_path: Path) -> None:
    script = tmp_path / "w.sh"
    distributed.write_worker_script(script, {"INFBENCH_RATE": "5", "HOME": "/root",
                                             "INFBENCH_REQUEST": '{"a": "b c"}'},
                                    Path("/x/loadtests/locustfile.py"), 5557)
    text = script.read_text()
    assert "HOME" not in text and "export INFBENCH_REQUEST=" in text
    assert '--master-host "${1:-127.0.0.1}" --master-port 5557' in text
    subprocess.run(["sh", "-n", str(script)], check=True)


@pytest.mark.parametrize("raw", ["0", "-2", "two", "1.5"])
def test_a_bad_load_processes_flag_is_a_one_line_error(raw: str) -> None:
    from infbench.cli.run import positive_int

    with pytest.raises(ConfigError, match=r"--load-processes \(INFBENCH_LOAD_PROCESSES\)"):
        positive_int(raw)
    assert positive_int("3") == 3
