"""The dynamic-batching app (servers/image/app_batching.py) on a real Uvicorn with the tiny model:
the shared contract, and that concurrent requests share model calls without mixing answers."""

from __future__ import annotations

import concurrent.futures
import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from infbench import config
from infbench.measure import assets
from infbench.paths import ROOT

pytestmark = pytest.mark.integration
MAX_BATCH = 4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def timing_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("batching-timing")


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory, timing_dir: Path) -> Iterator[str]:
    exp = config.load(ROOT / "experiments.toml")
    model = assets.ensure_model(exp.model("tiny"), log=False)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFBENCH_")}
    env.update({"INFBENCH_MODEL_PATH": str(model), "INFBENCH_CALL": "predict_on_batch",
                "INFBENCH_BATCH_WAIT_MS": "100", "INFBENCH_BATCH_MAX_IMAGES": str(MAX_BATCH),
                "INFBENCH_MAX_IMAGES": "8", "INFBENCH_MAX_BODY_BYTES": "4000000",
                "TF_CPP_MIN_LOG_LEVEL": "2", "INFBENCH_MODEL_CALLS": "1",
                "INFBENCH_TIMING_DIR": str(timing_dir)})
    log = tmp_path_factory.mktemp("batching") / "server.log"
    with log.open("wb") as out:
        p = subprocess.Popen([sys.executable, "-m", "uvicorn", "servers.image.app_batching:app",
                              "--host", "127.0.0.1", "--port", str(port), "--no-access-log"],
                             cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                             start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            with contextlib.suppress(httpx.HTTPError):
                h = httpx.get(base + "/health", timeout=2)
                if h.status_code == 200 and h.json()["pid"] == p.pid:
                    break
            assert p.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.3)
        yield base
    finally:
        os.killpg(p.pid, signal.SIGTERM)
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def jpegs() -> list[bytes]:
    return [p.read_bytes() for p in sorted(Path(assets.images_dir()).glob("*.jpg"))[:8]] or \
        [p.read_bytes() for p in assets.ensure_images()[:8]]


def post(url: str, images: list[bytes]) -> httpx.Response:
    files = [("images", (f"i{k}.jpg", data, "image/jpeg")) for k, data in enumerate(images)]
    return httpx.post(url + "/predict", files=files, timeout=60)


def batching(url: str) -> dict[str, Any]:
    data: dict[str, Any] = httpx.get(url + "/health", timeout=5).json()["batching"]
    return data


def test_health_says_ok_with_its_pid_and_batching_settings(url: str) -> None:
    h = httpx.get(url + "/health", timeout=5).json()
    assert h["status"] == "ok" and isinstance(h["pid"], int) and h["endpoint"] == "batching"
    assert h["call"] == "predict_on_batch" and h["batching"]["max_images"] == MAX_BATCH


def test_concurrent_requests_share_model_calls_and_each_gets_its_own_answers(url: str) -> None:
    imgs = jpegs()
    alone = [post(url, [img]).json()["predictions"][0] for img in imgs[:6]]
    before = batching(url)
    # Six requests at once: 1, 2, 1, 2, 1, 2 images (9 in all, batches of at most 4).
    shapes = [[0], [1, 2], [3], [4, 5], [0], [1, 2]]
    with concurrent.futures.ThreadPoolExecutor(len(shapes)) as pool:
        answers = list(pool.map(lambda idx: post(url, [imgs[i] for i in idx]), shapes))
    after = batching(url)
    for idx, r in zip(shapes, answers, strict=True):
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["count"] == len(idx)
        for i, pred in zip(idx, body["predictions"], strict=True):
            assert pred["class"] == alone[i]["class"]
            assert pred["score"] == pytest.approx(alone[i]["score"], abs=1e-5)
    calls, images = after["model_calls"] - before["model_calls"], after["images"] - before[
        "images"]
    assert images == 9 and calls < len(shapes)  # gathered: fewer calls than requests
    assert after["largest_batch"] <= MAX_BATCH


def test_each_model_call_is_a_line_with_its_images_and_its_requests_wait(
        url: str, timing_dir: Path) -> None:
    imgs = jpegs()
    pid = httpx.get(url + "/health", timeout=5).json()["pid"]
    since = time.time()
    shapes = [[0], [1, 2], [3], [4, 5], [0], [1, 2]]
    with concurrent.futures.ThreadPoolExecutor(len(shapes)) as pool:
        answers = list(pool.map(lambda idx: post(url, [imgs[i] for i in idx]), shapes))
    assert all(r.status_code == 200 for r in answers)
    path = timing_dir / f"calls-{pid}.jsonl"
    deadline = time.monotonic() + 10  # the writer flushes about once a second
    lines: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        if path.exists():
            lines = [json.loads(x) for x in path.read_text().splitlines()]
            lines = [x for x in lines if x["t"] >= since]
            if sum(x["images"] for x in lines) >= 9:
                break
        time.sleep(0.2)
    assert sum(x["images"] for x in lines) == 9, lines  # every image, in exactly one call
    assert len(lines) < len(shapes) and max(x["images"] for x in lines) <= MAX_BATCH
    for x in lines:
        assert x["model_ms"] > 0 and 0 <= x["wait_ms"] <= x["wait_max_ms"], x
    # A request that waited for a gathering batch waited at most the batch wait (100 ms) plus
    # the call before it; none waited for ever.
    assert max(x["wait_max_ms"] for x in lines) < 30_000


def test_a_request_bigger_than_the_batch_cap_runs_alone(url: str) -> None:
    imgs = jpegs()
    r = post(url, imgs[:6])
    assert r.status_code == 200 and r.json()["count"] == 6
    assert batching(url)["largest_batch"] >= 6


def test_a_bad_image_is_its_own_requests_400(url: str) -> None:
    imgs = jpegs()
    broken = imgs[0][: len(imgs[0]) // 3]
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        good, bad = pool.map(lambda batch: post(url, batch), [[imgs[1]], [imgs[2], broken]])
    assert good.status_code == 200 and good.json()["count"] == 1
    assert bad.status_code == 400 and bad.json()["index"] == 1 and "error" in bad.json()


def test_the_shared_contract_for_bad_requests(url: str) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "JPEG")
    assert post(url, [buf.getvalue()] * 9).status_code == 413  # over INFBENCH_MAX_IMAGES
    r = httpx.post(url + "/predict", json={"x": 1}, timeout=10)
    assert r.status_code == 415 and "error" in r.json()
    big = httpx.post(url + "/predict", content=b"x" * 5_000_000,
                     headers={"content-type": "multipart/form-data; boundary=b"}, timeout=10)
    assert big.status_code == 413
    empty = httpx.post(url + "/predict", files={"other": ("a.jpg", b"x")}, timeout=10)
    assert empty.status_code == 400 and "no files" in empty.json()["error"]
