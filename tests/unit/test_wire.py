"""The wire view on synthetic captures: our pcap reader (link types, byte orders, stamps, a torn
file), TCP flows and HTTP/1.1 exchanges, and the findings (delayed-ACK stall, churn, handshake
share) on pcaps written here with struct."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from infbench.analysis import wire
from infbench.config import ConfigError
from infbench.measure import capture
from infbench.results import pcap, readers, schemas
from tests.fixtures import pcapgen
from tests.fixtures.pcapgen import ACK, PSH, SYN, Conn, exchange


def segments(path: Path, frames: list[tuple[float, bytes]], **kw: object) -> pcap.Capture:
    pcapgen.write(path, frames, **kw)  # type: ignore[arg-type]
    return pcap.read(path)


def one_step(tmp_path: Path, conns: list[Conn], **kw: object) -> dict[str, object]:
    frames = sorted((f for c in conns for f in c.frames), key=lambda f: f[0])
    pcapgen.write(tmp_path / "s.pcap", frames, **kw)  # type: ignore[arg-type]
    return wire.step(pcap.read(tmp_path / "s.pcap"), {8000: "api"})


# -- the reader ---------------------------------------------------------------------------
def test_ethernet_ipv4_as_tcpdump_writes_lo(tmp_path: Path) -> None:
    h = pcapgen.tcp_header(40000, 8000, 7, 9, PSH | ACK)
    frame = pcapgen.ether(pcapgen.ipv4("127.0.0.1", "127.0.0.2", h + b"hello"))
    cap = segments(tmp_path / "a.pcap", [(1_700_000_000.25, frame)])
    (s,) = cap.segments
    assert (s.src, s.sport, s.dst, s.dport, s.seq, s.ack) == ("127.0.0.1", 40000, "127.0.0.2",
                                                              8000, 7, 9)
    assert s.length == 5 and s.data == b"hello" and s.flags == PSH | ACK
    assert s.t == pytest.approx(1_700_000_000.25, abs=1e-6)
    assert cap.linktype == 1 and cap.packets == 1 and cap.torn == 0


def test_ipv6_over_linux_sll_nanoseconds_big_endian(tmp_path: Path) -> None:
    h = pcapgen.tcp_header(40000, 8000, 1, 0, SYN)
    frame = pcapgen.sll(pcapgen.ipv6("::1", "::1", h), 0x86DD)
    cap = segments(tmp_path / "b.pcap", [(1_700_000_000.123456789, frame)], linktype=113,
                   nano=True, big_endian=True)
    (s,) = cap.segments
    assert s.src == "::1" and s.flags == SYN and s.length == 0
    assert s.t == pytest.approx(1_700_000_000.123456789, abs=1e-6)


def test_null_link_type_and_what_is_not_tcp(tmp_path: Path) -> None:
    h = pcapgen.tcp_header(1, 2, 0, 0, ACK)
    tcp_frame = (2).to_bytes(4, "little") + pcapgen.ipv4("127.0.0.1", "127.0.0.1", h)
    udp = bytearray(pcapgen.ipv4("127.0.0.1", "127.0.0.1", b"\x00" * 8))
    udp[9] = 17
    cap = segments(tmp_path / "c.pcap", [(1.0, tcp_frame),
                                         (2.0, (2).to_bytes(4, "little") + bytes(udp))],
                   linktype=0)
    assert len(cap.segments) == 1 and cap.other == 1


def test_a_snap_length_keeps_the_true_length_and_a_torn_file_is_counted(tmp_path: Path) -> None:
    h = pcapgen.tcp_header(1, 2, 0, 0, ACK)
    frame = pcapgen.ether(pcapgen.ipv4("127.0.0.1", "127.0.0.1", h + b"y" * 500))
    path = tmp_path / "d.pcap"
    pcapgen.write(path, [(1.0, frame), (2.0, frame)], snaplen=100)
    path.write_bytes(path.read_bytes()[:-10])  # tcpdump stopped mid-record
    cap = pcap.read(path)
    (s,) = cap.segments
    assert s.length == 500 and len(s.data) == 100 - 14 - 20 - 20
    assert cap.torn == 1


def test_not_a_pcap_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "x.pcap"
    bad.write_bytes(b"\x0a\x0d\x0d\x0a" + b"\x00" * 40)  # pcapng
    with pytest.raises(pcap.PcapError, match=r"x\.pcap: not a classic pcap"):
        pcap.read(bad)
    (tmp_path / "short.pcap").write_bytes(b"abc")
    with pytest.raises(pcap.PcapError, match="no file header"):
        pcap.read(tmp_path / "short.pcap")


# -- flows, exchanges, findings -------------------------------------------------------------
def test_a_stalled_keepalive_connection_is_found(tmp_path: Path) -> None:
    c = Conn(40001).handshake(0.0)
    t = exchange(c, 1.0)  # the first answers at once
    for _ in range(4):
        t = exchange(c, t, stall=True)
    out = one_step(tmp_path, [c])
    f = out["services"]["api"]  # type: ignore[index]
    assert f["connections"] == 1 and f["opened"] == 1 and f["requests"] == 5
    assert f["requests_per_connection"] == 5.0 and f["keepalive_asked"] == 1.0
    assert f["request_bytes"] == {"head": len(pcapgen.REQUEST), "body": 100.0}
    assert f["response_bytes"] == {"head": len(pcapgen.RESPONSE_HEAD),
                                   "body": len(pcapgen.RESPONSE_BODY)}
    assert f["segments_per_response"] == {"mean": 2.0, "max": 2}
    assert f["stalled_responses"] == 4 and 39 < f["stall_ms_p50"] < 41
    assert f["server_ms"]["p50"] == pytest.approx(2.0, abs=0.01)
    assert f["handshake_ms"]["p50"] == pytest.approx(0.05, abs=0.002)
    (finding,) = out["findings"]  # type: ignore[misc]
    assert finding["kind"] == "delayed_ack_stall" and "4 of 5 responses" in finding["detail"]


def test_no_stall_when_the_body_follows_at_once_or_a_slow_server_ignores_the_ack(
        tmp_path: Path) -> None:
    quick = Conn(40002).handshake(0.0)
    t = 1.0
    for _ in range(5):
        t = exchange(quick, t)
    # A server that takes 60 ms between head and body: the client's ACK came at 40 ms, but the
    # body left 20 ms after it, so it was not held for the ACK.
    slow = Conn(40003, t0=1_700_000_010.0).handshake(0.0)
    t = 1.0
    for _ in range(5):
        t = exchange(slow, t, gap_ms=60.0, ack_at_ms=40.0)
    out = one_step(tmp_path, [quick, slow])
    f = out["services"]["api"]  # type: ignore[index]
    assert f["stalled_responses"] == 0 and f["requests"] == 10
    assert out["findings"] == []


def test_churn_and_the_handshake_share(tmp_path: Path) -> None:
    conns = []
    for i in range(6):
        c = Conn(41000 + i, t0=1_700_000_000.0 + i).handshake(0.0, took_ms=1.0)
        exchange(c, 1.5)
        c.reset(5.0, False)
        conns.append(c)
    out = one_step(tmp_path, conns)
    f = out["services"]["api"]  # type: ignore[index]
    assert f["connections"] == 6 and f["requests_per_connection"] == 1.0 and f["resets"] == 6
    # 1 ms of handshake against ~2.07 ms of exchange each: a third of the time on the wire.
    assert 0.3 < f["handshake_share"] < 0.35
    kinds = {x["kind"] for x in out["findings"]}  # type: ignore[union-attr]
    assert kinds == {"connection_churn", "handshake_share"}


def test_retransmissions_and_a_connection_seen_mid_way(tmp_path: Path) -> None:
    c = Conn(42000)  # no handshake in the capture: it started before
    c.send(0.0, True, pcapgen.REQUEST + b"x" * 100).resend_last(200.0)
    c.send(201.0, False, pcapgen.RESPONSE_HEAD + pcapgen.RESPONSE_BODY)
    out = one_step(tmp_path, [c])
    f = out["services"]["api"]  # type: ignore[index]
    assert f["retransmissions"] == 1 and f["opened"] == 0 and f["requests"] == 1
    assert f["handshake_ms"]["p50"] is None and f["handshake_share"] == 0.0


def test_http2_is_bytes_only_and_a_cut_head_is_unknown(tmp_path: Path) -> None:
    h2 = Conn(43000).handshake(0.0)
    h2.send(1.0, True, wire.H2_PREFACE + b"\x00" * 30)
    h2.send(2.0, False, b"\x00" * 40)
    cut = Conn(43001, t0=1_700_000_005.0).handshake(0.0)
    exchange(cut, 1.0)
    out = one_step(tmp_path, [h2, cut], snaplen=14 + 20 + 20 + 30)
    f = out["services"]["api"]  # type: ignore[index]
    assert f["h2_connections"] == 1 and set(f["protocols"]) == {"h2", "http/1.1"}
    assert f["requests"] == 1 and f["bytes"]["up"] == len(wire.H2_PREFACE) + 30 + \
        len(pcapgen.REQUEST) + 100
    assert f["heads_unknown"] == 2 and f["request_bytes"]["head"] is None


def test_a_reused_port_is_a_new_connection(tmp_path: Path) -> None:
    a = Conn(44000).handshake(0.0)
    exchange(a, 1.0)
    b = Conn(44000, t0=1_700_000_001.0, cseq=90_000).handshake(0.0)
    exchange(b, 1.0)
    pcapgen.write(tmp_path / "r.pcap", a.frames + b.frames)
    conns = wire.connections(pcap.read(tmp_path / "r.pcap").segments, {8000})
    assert [len(c.exchanges) for c in conns] == [1, 1]


# -- the files, the config, the pre-flight ----------------------------------------------------
def test_summary_5_reads_with_no_wire_and_a_newer_wire_json_is_refused(tmp_path: Path) -> None:
    doc = {"schema": 5, "variant": "v", "memory_mb": {}, "steps": [], "totals": {},
           "verdict": {"verdict": "plateau"}}
    (tmp_path / "summary.json").write_text(json.dumps(doc))
    s = readers.summary_json(tmp_path)
    assert s["wire"] is None and s["schema"] == schemas.SUMMARY_SCHEMA
    assert readers.wire_json(tmp_path) is None
    (tmp_path / "wire.json").write_text(json.dumps({"schema": schemas.WIRE_SCHEMA + 1,
                                                    "steps": []}))
    with pytest.raises(readers.ReadError, match="newer"):
        readers.wire_json(tmp_path)


def test_capture_keys_are_checked(tmp_path: Path) -> None:
    from infbench.config import loader

    base = ('[study]\nvariants = ["a"]\nprofile = "p"\nmodel = "m"\n'
            '[models.m]\narch = "tiny_cnn"\ninput_size = 32\n'
            '[variants.a]\nserver = "uvicorn"\n[profiles.p]\nusers = 1\nspawn_rate = 1\n'
            'steps = [{ batch = 1, seconds = 1 }]\ncapture = true\n')
    f = tmp_path / "e.toml"
    f.write_text(base + "capture_snaplen = 2000\ncapture_max_mb = 5\n")
    p = loader.load(f).profile("p")
    assert (p.capture, p.capture_snaplen, p.capture_max_mb) == (True, 2000, 5)
    f.write_text(base + "capture_snaplen = 40\n")
    with pytest.raises(ConfigError, match="capture_snaplen: at least 96"):
        loader.load(f)
    f.write_text(base + "capture_max_mb = 0\n")
    with pytest.raises(ConfigError, match="capture_max_mb"):
        loader.load(f)


def test_tcpdump_missing_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="needs tcpdump, which is not installed"):
        capture.preflight("tcpdump-that-is-not-installed")


def test_the_command_line_and_the_closing_counts() -> None:
    from infbench.config import Profile, Step

    p = dataclasses.replace(Profile(name="p", steps=(Step(batch=1, seconds=1),)),
                            capture_snaplen=512, capture_max_mb=7)
    argv = capture.argv(Path("/r/wire/step-1.pcap"), [9001, 9000], p)
    assert argv[:3] == ["tcpdump", "-i", "lo"] and "--immediate-mode" in argv
    assert argv[argv.index("-B") + 1] == str(capture.BUFFER_KB)
    assert argv[argv.index("-s") + 1] == "512" and argv[argv.index("-C") + 1] == "7"
    assert argv[-1] == "tcp and (port 9000 or port 9001)"
    said = ("tcpdump: listening on lo\n12 packets captured\n24 packets received by filter\n"
            "3 packets dropped by kernel\n")
    assert capture.stats(said) == {"captured": 12, "received": 24, "dropped": 3}


def test_tcpdump_not_allowed_to_capture_is_one_line(tmp_path: Path) -> None:
    fake = tmp_path / "tcpdump"
    fake.write_text("#!/bin/sh\necho \"tcpdump: lo: You don't have permission to perform this "
                    "capture on that device\" >&2\nexit 1\n")
    fake.chmod(0o755)
    with pytest.raises(ConfigError, match=r"cannot capture on lo .*permission.*CAP_NET_RAW"):
        capture.preflight(str(fake))


def test_the_wire_table_per_step_and_service(tmp_path: Path) -> None:
    from infbench.report import tables

    c = Conn(40001).handshake(0.0)
    t = exchange(c, 1.0)
    for _ in range(3):
        t = exchange(c, t, stall=True)
    h2 = Conn(43000, t0=1_700_000_005.0).handshake(0.0)
    h2.send(1.0, True, wire.H2_PREFACE).send(2.0, False, b"\x00" * 9)
    frames = sorted(c.frames + h2.frames, key=lambda f: f[0])
    pcapgen.write(tmp_path / "s.pcap", frames)
    two = wire.step(pcap.read(tmp_path / "s.pcap"), {8000: "api"})
    row = {"variant": "v", "wire": {"steps": [{"index": 1, **two}]}}
    t_ = tables.wire_table([row])
    (line,) = t_.rows
    cells = dict(zip((c.lstrip(">") for c in t_.columns), line, strict=True))
    assert cells["protocol"] == "h2, http/1.1 (bytes only)" and cells["requests"] == "4"
    assert cells["stalled responses"] == "**3**" and cells["capture"] == "whole"
    assert tables.wire_table([{"variant": "v", "wire": None}]).rows == ()


def test_the_cli_says_a_missing_tcpdump_in_one_line_before_anything_starts(
        tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from infbench.paths import ROOT

    empty = tmp_path / "bin"
    empty.mkdir()
    res = subprocess.run([sys.executable, "-m", "infbench", "--results", str(tmp_path / "r"),
                          "run", "starlette-uvicorn", "--profile", "smoke", "--model", "tiny",
                          "--capture"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PATH": str(empty)})
    assert res.returncode == 1
    assert res.stderr.strip().splitlines() == [
        "infbench: error: capture = true needs tcpdump, which is not installed (make system "
        "installs it: scripts/system-packages.sh)"]
    assert not (tmp_path / "r").exists()
