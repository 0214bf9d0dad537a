"""scripts/docker-engine.sh, start to stop, against a stand-in dockerd and docker on PATH (no
engine is started or stopped): the daemon's log goes under the checkout's build/ folder, owned
like the checkout, never to a fixed name in /tmp."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from infbench.paths import ROOT

SCRIPT = ROOT / "scripts" / "docker-engine.sh"

# `docker info` answers once the stand-in daemon is up; the daemon writes its pid into the
# --pidfile it is given (as dockerd does), logs a line, and ends on SIGTERM.
FAKE_DOCKER = """#!/bin/bash
[[ $1 == info && -e $FAKE_UP ]] && { echo fake; exit 0; }
exit 1
"""
FAKE_DOCKERD = """#!/bin/bash
while (($#)); do [[ $1 == --pidfile ]] && pidfile=$2; shift; done
echo $$ >"$pidfile"
echo "fake dockerd up"
trap 'rm -f "$pidfile" "$FAKE_UP"; exit 0' TERM
touch "$FAKE_UP"
while :; do sleep 0.1; done
"""


def test_the_log_goes_under_build_owned_like_the_checkout(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("scripts/docker-engine.sh start needs root")
    assert "/tmp/" not in SCRIPT.read_text()  # no fixed name there, in any setting
    checkout = tmp_path / "checkout"  # the script finds the checkout from its own path
    (checkout / "scripts").mkdir(parents=True)
    shutil.copy2(SCRIPT, checkout / "scripts" / "docker-engine.sh")
    nobody = 65534
    os.chown(checkout, nobody, nobody)
    fake = tmp_path / "bin"
    fake.mkdir()
    for name, text in (("docker", FAKE_DOCKER), ("dockerd", FAKE_DOCKERD)):
        (fake / name).write_text(text)
        (fake / name).chmod(0o755)
    pidfile = tmp_path / "run" / "dockerd.pid"
    env = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}",
           "INFBENCH_DOCKERD_PIDFILE": str(pidfile), "FAKE_UP": str(tmp_path / "up"),
           "INFBENCH_DOCKERD_WAIT": "20"}
    env.pop("INFBENCH_DOCKERD_LOG", None)
    script = [str(checkout / "scripts" / "docker-engine.sh")]
    log = checkout / "build" / "docker" / "dockerd.log"
    res = subprocess.run([*script, "start"], env=env, capture_output=True, text=True,
                         timeout=60)
    pid = int(pidfile.read_text()) if pidfile.exists() else None
    try:
        assert res.returncode == 0, res.stdout + res.stderr
        assert f"(log: {log})" in res.stdout and "engine up: dockerd pid" in res.stdout
        assert log.read_text().strip() == "fake dockerd up"
        for d in (checkout / "build", log.parent):
            assert (d.stat().st_uid, d.stat().st_gid) == (nobody, nobody), d
    finally:
        stop = subprocess.run([*script, "stop"], env=env, capture_output=True, text=True,
                              timeout=60)
    assert stop.returncode == 0 and "stopped" in stop.stdout, stop.stdout + stop.stderr
    deadline = time.monotonic() + 10
    while pid is not None and os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert pid is not None and not os.path.exists(f"/proc/{pid}")  # the stand-in ended
