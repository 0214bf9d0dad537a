"""The peer serving stacks (MLServer, BentoML, Ray Serve), each in its own environment, through
the CLI on the tiny model: a smoke run that completes with every process of the peer sampled;
then, in a longer run, one good request and one bad request sent beside the load (the bad one
gets the peer's own error), and the peer killed mid-step, which is a fault: the variant fails,
nothing it started is left running.

A missing environment is built first, by the code path of `make peers` (envs.ensure, a
progress line on the terminal): minutes once per machine, nothing after.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

from infbench.launch import envs
from infbench.measure import assets
from infbench.paths import ROOT
from tests.fixtures.helpers import multipart, the_run

EXTRA = """
[profiles.peer-long]
users = 2
spawn_rate = 2
wait = [0.0, 0.1]
steps = [{ batch = 2, seconds = 90 }]
baseline = 0
pause = 0
cooldown = 0
drain_timeout = 5
request_timeout = 20
sample_interval = 0.2
"""
NOT_AN_IMAGE = b"this is not an image"


@dataclass(frozen=True)
class Peer:
    variant: str
    env: str
    processes: tuple[str, ...]  # names that must be among the sampled processes

    def good(self, url: str, jpegs: list[bytes]) -> tuple[str, bytes, dict[str, str]]:
        if self.env == "mlserver":
            return _v2_bytes(url, [base64.b64encode(j).decode() for j in jpegs])
        body, headers = multipart([("images", f"{i}.jpg", j) for i, j in enumerate(jpegs)])
        return f"{url}/predict", body, headers

    def bad(self, url: str) -> tuple[str, bytes, dict[str, str]]:
        if self.env == "mlserver":
            return _v2_bytes(url, [base64.b64encode(NOT_AN_IMAGE).decode()])
        body, headers = multipart([("images", "x.jpg", NOT_AN_IMAGE)])
        return f"{url}/predict", body, headers

    def answers(self, doc: Any) -> int:
        """How many images the peer's answer is about, read in its own format."""
        if self.env == "mlserver":
            (out,) = doc["outputs"]
            assert out["datatype"] == "FP32" and out["shape"][1] == 10
            return int(out["shape"][0])
        if self.env == "bentoml":  # a list, one {"class", "score"} per image
            assert all(set(p) == {"class", "score"} for p in doc)
            return len(doc)
        assert doc["count"] == len(doc["predictions"])
        return len(doc["predictions"])


def _v2_bytes(url: str, data: list[str]) -> tuple[str, bytes, dict[str, str]]:
    doc = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [len(data)], "data": data}]}
    return (f"{url}/v2/models/default/infer", json.dumps(doc).encode(),
            {"content-type": "application/json"})


PEERS = {
    "mlserver": Peer("mlserver", "mlserver", ("python",)),
    "bentoml": Peer("bentoml", "bentoml", ("python",)),
    # Ray's GCS and raylet are the service's too, and the actors by their own names.
    "ray": Peer("ray-serve", "ray", ("gcs_server", "raylet", "ray::ProxyActor",
                                     "ray::ServeController")),
}


def cli(tmp: Path, *args: str) -> list[str]:
    exp = tmp / "experiments.toml"
    exp.write_text((ROOT / "experiments.toml").read_text() + EXTRA)
    return [sys.executable, "-m", "infbench", "--results", str(tmp / "r"), "--experiments",
            str(exp), *args]


def post(where: tuple[str, bytes, dict[str, str]]) -> tuple[int, Any]:
    url, body, headers = where
    req = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def say(line: str) -> None:
    """Progress on the terminal even when pytest captures the test's output."""
    print(line, file=sys.__stderr__, flush=True)


class PeerTests:
    """One class per peer, so that pytest-xdist (--dist loadscope) runs the peers side by side."""

    peer: Peer

    @pytest.fixture(scope="class")
    @classmethod
    def built(cls) -> Path:
        assets.ensure_images()
        return envs.ensure(cls.peer.env, say)

    @pytest.fixture(scope="class")
    @classmethod
    def smoke(cls, built: Path, tmp_path_factory: pytest.TempPathFactory
              ) -> tuple[Path, subprocess.CompletedProcess[str]]:
        tmp = tmp_path_factory.mktemp(cls.peer.env)
        res = subprocess.run(cli(tmp, "run", cls.peer.variant, "--profile", "smoke", "--model",
                                 "tiny"), cwd=ROOT, capture_output=True, text=True, timeout=400)
        return the_run(tmp / "r") / cls.peer.variant, res

    def test_a_smoke_run_completes_with_every_process_sampled(
            self, smoke: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
        d, res = smoke
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        s = json.loads((d / "summary.json").read_text())
        assert s["status"] == "complete"
        assert s["totals"]["requests"] > 0 and s["totals"]["failures"] == 0
        ph = json.loads((d / "phases.json").read_text())
        health = ph["services"]["server"]
        assert health["healthy"] >= health["start"] and health["pids"]
        names = {line.split(",")[3] for line in (d / "processes.csv").read_text().splitlines()[1:]}
        pids = {line.split(",")[1] for line in (d / "processes.csv").read_text().splitlines()[1:]}
        for name in self.peer.processes:
            assert any(n.startswith(name) for n in names), (name, names)
        assert {str(p) for p in health["pids"]} <= pids  # every process of the peer sampled
        # The peer's model calls, from its own process (INFBENCH_MODEL_CALLS in the variant's
        # env reaches MLServer's pool worker, BentoML's service worker, Ray's replica actor).
        calls = s["model_calls"]
        assert calls and {c["index"] for c in calls} == {st["index"] for st in s["steps"]}
        for c in calls:
            assert c["calls"] > 0 and c["images_per_call"] >= 1 and 0 < c["model_busy"] <= 1

    def test_a_request_a_bad_request_and_a_killed_peer(self, built: Path,
                                                       tmp_path: Path) -> None:
        p = subprocess.Popen(cli(tmp_path, "run", self.peer.variant, "--profile", "peer-long",
                                 "--model", "tiny"), cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, start_new_session=True)
        try:
            deadline = time.monotonic() + 240
            counts = None
            while time.monotonic() < deadline and p.poll() is None:
                found = list((tmp_path / "r").glob(f"*/{self.peer.variant}/step1-b2_counts.json"))
                if found and json.loads(found[0].read_text() or "{}").get("finished", 0) > 3:
                    counts = found[0]
                    break
                time.sleep(0.3)
            assert counts is not None, "the load never got going"
            service = json.loads((counts.parent / "phases.json").read_text())["services"]["server"]
            jpegs = [f.read_bytes() for f in assets.ensure_images()[:2]]
            status, doc = post(self.peer.good(service["url"], jpegs))
            assert status == 200 and self.peer.answers(doc) == 2, (status, doc)
            status, doc = post(self.peer.bad(service["url"]))
            assert status == 400, (status, doc)  # the peer's own error, not a 500
            text = json.dumps(doc)
            assert "error" in text and "not a recognised image format" in text, doc
            procs = [psutil.Process(pid) for pid in service["pids"]]
            top = min(procs, key=lambda q: q.create_time())  # the peer's own first process
            os.kill(top.pid, signal.SIGKILL)
            out, _ = p.communicate(timeout=120)
        finally:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        assert p.returncode == 1, out[-3000:]
        assert f"FAILED {self.peer.variant}: server exited during step" in out, out[-3000:]
        left = [f"{q.pid} {q.name()}" for q in procs if q.is_running()
                and q.status() != psutil.STATUS_ZOMBIE]
        assert left == [], left  # its workers, actors and daemons ended with it


class TestMLServer(PeerTests):
    peer = PEERS["mlserver"]


class TestBentoML(PeerTests):
    peer = PEERS["bentoml"]


class TestRayServe(PeerTests):
    peer = PEERS["ray"]
