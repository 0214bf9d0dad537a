"""An exported compose file on the real engine (marked `docker`; make test-docker): the queue
topology brought up with Debian's docker-compose on its bridge network, every service healthy
by its own health check, the entry answering through its port mapped on 127.0.0.1 (one image
through API -> Redis -> worker, each reaching the next by service name), and nothing left
behind by `down`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from infbench.launch.docker import engine as dke
from infbench.launch.docker.image import Images
from infbench.launch.topology import free_ports
from infbench.measure import assets
from infbench.paths import ROOT
from tests.fixtures.helpers import the_run
from tests.fixtures.synth import TINY_MODEL

pytestmark = [pytest.mark.docker, pytest.mark.integration,
              pytest.mark.requires("docker-compose")]

VARIANT = "queue-fastapi"
SERVICES = ("redis", "model", "api")
UP_TIMEOUT_S = 600.0


def compose(project: str, file: Path, *args: str, timeout: float = 600
            ) -> subprocess.CompletedProcess[str]:
    # COMPOSE_HTTP_TIMEOUT: compose's own wait on each engine call (60 s by default). On the
    # vfs storage driver, with the other Docker test building an image beside it, creating a
    # container took longer than that (CI: "Read timed out. (read timeout=60)").
    env = {**os.environ, "COMPOSE_HTTP_TIMEOUT": str(int(timeout))}
    return subprocess.run(["docker-compose", "--no-ansi", "-p", project, "-f", str(file), *args],
                          capture_output=True, text=True, timeout=timeout, env=env)


def predict(port: int, image: bytes) -> tuple[int, dict[str, object]]:
    """One POST /predict: the image as the one file of a multipart form, in field `images`."""
    boundary = "infbench-export-test"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"images\"; "
            f"filename=\"a.jpg\"\r\nContent-Type: image/jpeg\r\n\r\n").encode() + image + \
        f"\r\n--{boundary}--\r\n".encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/predict", data=body, method="POST",
                                 headers={"Content-Type":
                                          f"multipart/form-data; boundary={boundary}"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return r.status, json.loads(r.read())


def health(container: str) -> str:
    res = subprocess.run(["docker", "inspect", "--format", "{{json .State}}", container],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    state = json.loads(res.stdout)
    return str(state.get("Health", {}).get("Status") or state.get("Status"))


def containers(project: str) -> list[str]:
    res = subprocess.run(["docker", "ps", "-a", "--format", "{{.Names}}", "--filter",
                          f"label=com.docker.compose.project={project}"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    return res.stdout.split()


def benchmark_through_url(tmp_path: Path, url: str) -> dict[str, object]:
    exp = tmp_path / "experiments.toml"
    exp.write_text(TINY_MODEL + f"""
[profiles.short]
users = 2
spawn_rate = 2
steps = [{{ batch = 1, seconds = 4 }}]
baseline = 1
pause = 0.5
cooldown = 1
drain_timeout = 5
wait = [0.05, 0.1]

[variants.exported]
server = "url"
url = "{url}"
""")
    res = subprocess.run([sys.executable, "-m", "infbench", "--results", str(tmp_path / "r"),
                          "--experiments", str(exp), "run", "exported", "--profile", "short",
                          "--model", "tiny"], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    d = the_run(tmp_path / "r")
    assert json.loads((d / "run.json").read_text())["status"] == "complete", res.stdout[-3000:]
    counts: dict[str, object] = json.loads(
        (d / "exported" / "step1-b1_counts.json").read_text())
    return counts


@pytest.mark.timeout(1500)
def test_the_exported_queue_topology_comes_up_healthy(tmp_path: Path) -> None:
    problem = dke.engine_problem()
    if problem:
        pytest.fail(f"INFBENCH_DOCKER_TESTS=1 but no engine: {problem} (make docker-engine)")
    image = Images().ensure_image(print)
    build = subprocess.run([sys.executable, "-m", "infbench", "build", VARIANT, "--model", "tiny"],
                           cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-2000:]
    (port,) = free_ports(1)
    res = subprocess.run([sys.executable, "-m", "infbench", "export", VARIANT, "--model", "tiny",
                          "--format", "compose", "--out", str(tmp_path), "--image", image,
                          "--host-port", str(port)],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    file = tmp_path / "docker-compose.yml"
    project = f"infbench-export-{os.getpid()}"
    check = compose(project, file, "config", "--quiet", timeout=60)
    assert check.returncode == 0, check.stderr
    try:
        up = compose(project, file, "up", "--detach", timeout=UP_TIMEOUT_S)
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        names = {s: f"{project}_{s}_1" for s in SERVICES}
        # `up` returns once the entry started, which waits for its dependencies to be healthy;
        # the entry's own check follows.
        deadline = time.monotonic() + UP_TIMEOUT_S
        while health(names["api"]) != "healthy" and time.monotonic() < deadline:
            time.sleep(2)
        logs = compose(project, file, "logs", "--no-color", "--tail", "30", timeout=120).stdout
        assert {s: health(n) for s, n in names.items()} == dict.fromkeys(SERVICES, "healthy"), \
            logs[-4000:]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as r:
            assert r.status == 200
        status, answer = predict(port, assets.ensure_images()[0].read_bytes())
        assert status == 200, answer
        # And benchmarked from here through `server = "url"`: the topology the harness did not
        # start, measured as any service (a short closed-loop step of one image a request).
        measured = benchmark_through_url(tmp_path, f"http://127.0.0.1:{port}")
        assert measured["finished"] > 0 and measured["failed"] == 0, measured
    finally:
        down = compose(project, file, "down", "--volumes", "--timeout", "10", timeout=600)
    assert down.returncode == 0, down.stderr
    assert containers(project) == []
