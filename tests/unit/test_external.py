"""server = "url": what the loader accepts and refuses, and the pid a replica is given."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from infbench import config
from infbench.launch.base import LaunchError
from infbench.launch.contract import ReplicaSpec, service_url
from infbench.launch.external import ExternalReplica, read_pid, url_port
from tests.unit.test_config import GOOD, write

URL = 'server = "url"\nurl = "http://127.0.0.1:8000/"'


def load(tmp_path: Path, extra: str = "") -> config.Variant:
    text = GOOD.replace('server = "uvicorn"', URL + ("\n" + extra if extra else ""))
    return config.load(write(tmp_path, text)).variant("a")


def test_a_url_server_loads_with_its_url_and_no_model(tmp_path: Path) -> None:
    v = load(tmp_path, "pid = 1")
    s = v.entry_service
    assert (s.server, s.url, s.pid, s.health, s.gets_model) == (
        "url", "http://127.0.0.1:8000", 1, "http", False)
    assert service_url(s, 0) == "http://127.0.0.1:8000"
    assert url_port(s.url) == 8000
    assert url_port("https://example.org/api") == 443
    assert url_port("http://example.org") == 80


@pytest.mark.parametrize(("extra", "message"), [
    ("probes = true", r"variants\.a\.probes: not for server = 'url'"),
    ('allocator = "jemalloc"', r"variants\.a\.allocator: not for server = 'url'"),
    ("replicas = 2", r"variants\.a\.replicas: not for server = 'url'"),
    ('command = ["x"]', r"variants\.a\.command: not for server = 'url'"),
    ('module = "x"', r"variants\.a\.module: not for server = 'url'"),
    ("workers = 2", r"variants\.a\.workers: not for server = 'url'"),
    ('health = "tcp"', r"variants\.a\.health: server = 'url' takes"),
    ('pid = 5\npid_file = "p"', r"variants\.a\.pid_file: give pid or pid_file"),
    ("pid = 0", r"variants\.a\.pid: must be > 0"),
])
def test_what_needs_a_started_process_is_a_one_line_error(tmp_path: Path, extra: str,
                                                          message: str) -> None:
    with pytest.raises(config.ConfigError, match=message) as e:
        load(tmp_path, extra)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(("url", "message"), [
    ("", r"variants\.a\.url: server = 'url' needs a url"),
    ("ftp://127.0.0.1/", r"expected http\(s\)://host"),
    ("http:///health", r"expected http\(s\)://host"),
    ("http://127.0.0.1:8000/?q=1", r"expected http\(s\)://host"),
    ("http://127.0.0.1:port", r"variants\.a\.url: Port could not be cast"),
])
def test_a_bad_url_is_a_one_line_error(tmp_path: Path, url: str, message: str) -> None:
    text = GOOD.replace('server = "uvicorn"', f'server = "url"\nurl = "{url}"')
    with pytest.raises(config.ConfigError, match=message):
        config.load(write(tmp_path, text))


def test_url_and_pid_are_only_for_a_url_server(tmp_path: Path) -> None:
    text = GOOD.replace('server = "uvicorn"', 'server = "uvicorn"\npid = 3')
    with pytest.raises(config.ConfigError, match=r"variants\.a\.pid: only used with server"):
        config.load(write(tmp_path, text))


def spec(v: config.Variant, out: Path) -> ReplicaSpec:
    return ReplicaSpec(variant=v, service=v.entry_service, replica=0, ports={"port": 8000},
                       out_dir=out, model_path=None, sample_interval=0.5, run_id="t")


def test_the_pid_file_is_read_and_checked(tmp_path: Path) -> None:
    pid_file = tmp_path / "server.pid"
    v = load(tmp_path, f'pid_file = "{pid_file}"')
    with pytest.raises(LaunchError, match="cannot read pid_file"):
        read_pid(spec(v, tmp_path))
    pid_file.write_text("not a pid\n")
    with pytest.raises(LaunchError, match="not a pid"):
        read_pid(spec(v, tmp_path))
    pid_file.write_text(f"{os.getpid()}\n")
    r = ExternalReplica(spec(v, tmp_path))
    assert r.pid == os.getpid() and os.getpid() in [p.pid for p in r.processes()]
    assert r.exit_code() is None and r.info()["launcher"] == "external"
    r.stop()  # ends nothing: we are still here
    assert "did not start" in (tmp_path / "server.log").read_text()


def test_a_pid_that_does_not_exist_is_refused(tmp_path: Path) -> None:
    v = load(tmp_path, "pid = 4194304")  # above Linux's pid_max limit
    with pytest.raises(LaunchError, match="is not running here"):
        read_pid(spec(v, tmp_path))


def test_without_a_pid_there_are_no_processes(tmp_path: Path) -> None:
    r = ExternalReplica(spec(load(tmp_path), tmp_path))
    assert r.pid is None and r.processes() == []


def test_url_from_the_command_line_replaces_the_variants_url(tmp_path: Path) -> None:
    from infbench.cli.run import with_url

    v = load(tmp_path)
    (moved,) = with_url([v], "https://staging.example:8443/api/")
    assert moved.entry_service.url == "https://staging.example:8443/api"
    with pytest.raises(config.ConfigError, match=r"--url \(INFBENCH_URL\): expected http"):
        with_url([v], "staging:8443")
    ours = config.load(write(tmp_path, GOOD)).variant("a")
    with pytest.raises(config.ConfigError, match=r"only for variants whose entry is server = "
                                                 r"'url'; not a"):
        with_url([ours], "http://127.0.0.1:1")


EXPOSITION = """# HELP process_resident_memory_bytes Resident memory size in bytes.
# TYPE process_resident_memory_bytes gauge
process_resident_memory_bytes 2.5e+07
process_cpu_seconds_total 1.25 1700000000000
http_requests_total{method="post",path="/a \\\\\\"b\\\\\\" {c}, d"} 1027
http_requests_total{code="200",} +Inf

go_gc_duration_seconds{quantile="0.5"} NaN
"""


def test_the_text_exposition_is_parsed_sample_by_sample() -> None:
    from infbench.measure.prometheus import parse, process_figures

    found = parse(EXPOSITION)
    assert [(n, lb) for n, lb, _ in found] == [
        ("process_resident_memory_bytes", ""), ("process_cpu_seconds_total", ""),
        ("http_requests_total", 'method="post",path="/a \\\\\\"b\\\\\\" {c}, d"'),
        ("http_requests_total", 'code="200"'), ("go_gc_duration_seconds", 'quantile="0.5"')]
    assert found[2][2] == 1027 and found[3][2] == float("inf")
    assert process_figures(found) == {"rss_mb": 25.0, "cpu_s": 1.25}


@pytest.mark.parametrize("line", [
    "<html>not metrics</html>", 'x{a="b" 1', "x", "x 1 2 3", "x one", 'x{a="b"}1'])
def test_a_line_that_is_not_a_sample_fails_the_scrape(line: str) -> None:
    from infbench.measure.prometheus import ParseError, parse

    with pytest.raises(ParseError):
        parse("ok 1\n" + line + "\n")


def test_metrics_is_a_url_and_only_for_a_url_server(tmp_path: Path) -> None:
    s = load(tmp_path, 'metrics = "http://127.0.0.1:8000/metrics/"').entry_service
    assert s.metrics == "http://127.0.0.1:8000/metrics"
    with pytest.raises(config.ConfigError, match=r"variants\.a\.metrics: expected http"):
        load(tmp_path, 'metrics = "127.0.0.1:8000/metrics"')
    text = GOOD.replace('server = "uvicorn"', 'server = "uvicorn"\nmetrics = "http://x/m"')
    with pytest.raises(config.ConfigError, match=r"variants\.a\.metrics: only used with"):
        config.load(write(tmp_path, text))


def test_a_cgroup_folder_is_read_as_v2_or_v1(tmp_path: Path) -> None:
    from infbench.measure.cgroup import cpu_seconds, usage_file

    v2, v1 = tmp_path / "v2", tmp_path / "v1"
    v2.mkdir()
    v1.mkdir()
    assert usage_file(v2) is None and cpu_seconds(v2) is None
    (v2 / "memory.current").write_text("1048576\n")
    (v2 / "cpu.stat").write_text("usage_usec 2500000\nuser_usec 2000000\n")
    (v1 / "memory.usage_in_bytes").write_text("1048576\n")
    (v1 / "cpuacct.usage").write_text("1500000000\n")
    assert usage_file(v2) == v2 / "memory.current" and cpu_seconds(v2) == 2.5
    assert usage_file(v1) == v1 / "memory.usage_in_bytes" and cpu_seconds(v1) == 1.5


def test_a_cgroup_is_an_absolute_folder_checked_at_start(tmp_path: Path) -> None:
    with pytest.raises(config.ConfigError, match=r"variants\.a\.cgroup: a cgroup's folder"):
        load(tmp_path, 'cgroup = "sys/fs/cgroup"')
    v = load(tmp_path, f'cgroup = "{tmp_path}"')
    with pytest.raises(LaunchError, match="not a memory cgroup"):
        ExternalReplica(spec(v, tmp_path))
    (tmp_path / "memory.current").write_text("1\n")
    assert ExternalReplica(spec(v, tmp_path)).spec.service.cgroup == str(tmp_path)
