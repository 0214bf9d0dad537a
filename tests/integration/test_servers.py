"""The inference servers: model helpers without a server, then real servers as subprocesses.

Each server variant is started once per module (uvicorn in its own process group on a free
loopback port) and every contract test runs against it; teardown ends the whole group.
"""

from __future__ import annotations

import io
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import matplotlib.cbook
import numpy as np
import pytest
from PIL import Image

from infbench.paths import HOST, ROOT
from servers.shared.model import BadImage, build_model, load_model, predict, preprocess
from servers.shared.settings import SettingsError, load_settings
from tests.fixtures.helpers import free_port, multipart, quiet_env, running

INPUT_SIZE = 32
CLASSES = 10
MAX_IMAGES = 4
MAX_BODY_BYTES = 2_000_000
START_TIMEOUT_S = 90.0


# ---------------------------------------------------------------------------------------------
# Helpers


def image_files(images: list[bytes]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("images", (f"img{i}.jpg", data, "image/jpeg")) for i, data in enumerate(images)]


# ---------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="session")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny test model, built through the CLI exactly as the harness builds models."""
    out = tmp_path_factory.mktemp("model") / "tiny.keras"
    argv = [sys.executable, "-m", "servers.shared.model", "build", "--arch", "tiny_cnn",
            "--input-size", str(INPUT_SIZE), "--classes", str(CLASSES), "--seed", "0",
            "--out", str(out)]
    res = subprocess.run(argv, cwd=ROOT, env=quiet_env(), capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert out.exists()
    assert res.stdout.strip().splitlines()[-1].startswith("built tiny_cnn")
    return out


@pytest.fixture(scope="session")
def jpegs() -> list[bytes]:
    """A few real JPEGs of different sizes, cut from matplotlib's bundled photograph."""
    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as f:
        photo = Image.open(f).convert("RGB")
    out = []
    for box, size in [((0, 0, 512, 600), (96, 112)), ((100, 100, 400, 400), (64, 64)),
                      ((50, 200, 450, 600), (200, 200))]:
        buf = io.BytesIO()
        photo.crop(box).resize(size).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


@dataclass
class Running:
    url: str
    app: str
    env: dict[str, str]
    proc: subprocess.Popen[bytes]
    log: Path
    client: httpx.Client = field(init=False)

    def __post_init__(self) -> None:
        self.client = httpx.Client(base_url=self.url, timeout=30.0)


VARIANTS = {
    "starlette-sync": ("starlette", {"INFBENCH_ENDPOINT": "sync"}),
    "starlette-async-limit1": ("starlette", {"INFBENCH_ENDPOINT": "async",
                                             "INFBENCH_THREAD_LIMIT": "1"}),
    "fastapi-sync": ("fastapi", {"INFBENCH_ENDPOINT": "sync"}),
}


@pytest.fixture(scope="module", params=list(VARIANTS), ids=list(VARIANTS))
def server(request: pytest.FixtureRequest, model_path: Path,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """A real uvicorn server for one variant, in its own process group."""
    app, extra = VARIANTS[request.param]
    port = free_port()
    env = quiet_env(INFBENCH_MODEL_PATH=str(model_path), INFBENCH_MAX_IMAGES=str(MAX_IMAGES),
                    INFBENCH_MAX_BODY_BYTES=str(MAX_BODY_BYTES), **extra)
    log = tmp_path_factory.mktemp(f"server-{request.param}") / "server.log"
    argv = [sys.executable, "-m", "uvicorn", f"servers.image.app_{app}:app", "--host", HOST,
            "--port", str(port), "--no-access-log"]
    url = f"http://{HOST}:{port}"
    with running(argv, env, log, f"{url}/health", START_TIMEOUT_S, grace=10.0) as proc:
        server = Running(url, app, env, proc, log)
        try:
            yield server
        finally:
            server.client.close()


def assert_still_serving(server: Running, jpegs: list[bytes]) -> None:
    assert server.client.get("/health").status_code == 200
    r = server.client.post("/predict", files=image_files(jpegs[:1]))
    assert r.status_code == 200, r.text
    assert r.json()["count"] == 1


def assert_error(r: httpx.Response, status: int, *needles: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body = r.json()
    assert isinstance(body.get("error"), str) and body["error"], body
    for needle in needles:
        assert needle in body["error"], body
    return dict(body)


# ---------------------------------------------------------------------------------------------
# Unit tests: no server


def test_preprocess_shape_dtype_range(jpegs: list[bytes]) -> None:
    buf = io.BytesIO()
    Image.new("RGBA", (40, 20), (255, 0, 0, 128)).save(buf, "PNG")
    batch = preprocess([*jpegs, buf.getvalue()], INPUT_SIZE)
    assert batch.shape == (len(jpegs) + 1, INPUT_SIZE, INPUT_SIZE, 3)
    assert batch.dtype == np.float32
    assert batch.min() >= -1.0 and batch.max() <= 1.0
    assert batch.min() < -0.5 and batch.max() > 0.5  # really spread over [-1, 1]
    assert np.allclose(batch[-1, :, :, 0], 1.0)  # the red PNG: R=255 -> 1.0


def test_preprocess_rejects_truncated_jpeg(jpegs: list[bytes]) -> None:
    with pytest.raises(BadImage) as info:
        preprocess([jpegs[0], jpegs[2][: len(jpegs[2]) // 2]], INPUT_SIZE)
    assert info.value.index == 1
    assert "truncated" in str(info.value)


def test_preprocess_rejects_non_image(jpegs: list[bytes]) -> None:
    with pytest.raises(BadImage) as info:
        preprocess([b"definitely not an image", jpegs[0]], INPUT_SIZE)
    assert info.value.index == 0
    assert str(info.value).startswith("image 0:")


@pytest.mark.parametrize("style", ["predict", "predict_on_batch", "call"])
def test_call_styles_and_padding_give_the_same_answers(model_path: Path, jpegs: list[bytes],
                                                       style: str) -> None:
    model = load_model(str(model_path))
    batch = preprocess(jpegs, INPUT_SIZE)
    plain = predict(model, batch, "predict")
    assert len(plain) == len(jpegs)
    for pad in (0, 2, 4, 8):
        got = predict(model, batch, style, pad_to=pad)
        assert [c for c, _ in got] == [c for c, _ in plain]
        assert [score for _, score in got] == pytest.approx([score for _, score in plain],
                                                           abs=1e-5)


def test_build_model_unknown_arch() -> None:
    with pytest.raises(ValueError, match="unknown arch 'resnet'"):
        build_model("resnet", INPUT_SIZE, CLASSES, seed=0)


def test_build_cli_bad_args_one_line_exit_1(tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "servers.shared.model", "build", "--arch", "tiny_cnn",
            "--input-size", "0", "--classes", "10", "--seed", "0", "--out", str(tmp_path / "m")]
    res = subprocess.run(argv, cwd=ROOT, env=quiet_env(), capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 1
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert "--input-size" in res.stderr


def test_settings_errors_name_the_variable(model_path: Path) -> None:
    good = {"INFBENCH_MODEL_PATH": str(model_path)}
    assert load_settings(good).endpoint == "sync"
    for name, value in [("INFBENCH_ENDPOINT", "threads"), ("INFBENCH_THREAD_LIMIT", "0"),
                        ("INFBENCH_MAX_IMAGES", "many"), ("INFBENCH_CALL", "apply"),
                        ("INFBENCH_MAX_BODY_BYTES", "-5"), ("INFBENCH_TRIM_EACH", "yes"),
                        ("INFBENCH_PAD_BATCH", "0"), ("INFBENCH_DEVICE", "tpu")]:
        with pytest.raises(SettingsError, match=rf"^{name}"):
            load_settings({**good, name: value})
    with pytest.raises(SettingsError, match=r"^INFBENCH_MODEL_PATH"):
        load_settings({})
    with pytest.raises(SettingsError, match=r"^INFBENCH_MODEL_PATH.*nowhere"):
        load_settings({"INFBENCH_MODEL_PATH": "/nowhere/model.keras"})


def test_app_refuses_to_start_on_bad_setting(model_path: Path) -> None:
    env = quiet_env(INFBENCH_MODEL_PATH=str(model_path), INFBENCH_ENDPOINT="bogus")
    res = subprocess.run([sys.executable, "-c", "import servers.image.app_starlette"], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode != 0
    assert "INFBENCH_ENDPOINT" in res.stderr.strip().splitlines()[-1]


# ---------------------------------------------------------------------------------------------
# Integration: real servers


@pytest.mark.integration
def test_health(server: Running) -> None:
    r = server.client.get("/health")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok"
    assert body["model"] == "tiny.keras"
    assert body["input_size"] == INPUT_SIZE
    assert body["endpoint"] == server.env["INFBENCH_ENDPOINT"]
    limit = server.env.get("INFBENCH_THREAD_LIMIT")
    assert body["thread_limit"] == (int(limit) if limit else None)
    assert body["call"] == "predict"
    assert isinstance(body["pid"], int) and body["pid"] > 0
    assert body["inflight"] == 0


@pytest.mark.integration
def test_predict(server: Running, jpegs: list[bytes]) -> None:
    images = [jpegs[0], jpegs[1], jpegs[2], jpegs[0]]
    r = server.client.post("/predict", files=image_files(images))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["count"] == len(images) == len(body["predictions"])
    assert isinstance(body["elapsed_ms"], float) and body["elapsed_ms"] >= 0
    for p in body["predictions"]:
        assert isinstance(p["class"], int) and 0 <= p["class"] < CLASSES
        assert isinstance(p["score"], float) and 0.0 <= p["score"] <= 1.0
    # Upload order is kept: the same image first and last gets the same answer.
    assert body["predictions"][0] == body["predictions"][3]
    # Deterministic model and preprocessing: the same image again, the same answer.
    again = server.client.post("/predict", files=image_files(images[:1])).json()
    assert again["predictions"][0] == body["predictions"][0]


@pytest.mark.integration
def test_no_files(server: Running, jpegs: list[bytes]) -> None:
    content, headers = multipart([("other", None, b"hello")])
    r = server.client.post("/predict", content=content, headers=headers)
    assert_error(r, 400, "no files")
    content, headers = multipart([])
    r = server.client.post("/predict", content=content, headers=headers)
    assert_error(r, 400, "no files")
    assert_still_serving(server, jpegs)


@pytest.mark.integration
def test_text_part_in_images(server: Running, jpegs: list[bytes]) -> None:
    content, headers = multipart([("images", None, b"hello")])
    r = server.client.post("/predict", content=content, headers=headers)
    assert_error(r, 400, "image 0")
    assert_still_serving(server, jpegs)


@pytest.mark.integration
def test_not_an_image(server: Running, jpegs: list[bytes]) -> None:
    files = image_files([jpegs[0], b"%PDF-1.4 not an image at all", jpegs[1]])
    body = assert_error(server.client.post("/predict", files=files), 400, "image 1")
    assert body["index"] == 1
    assert_still_serving(server, jpegs)


@pytest.mark.integration
def test_truncated_jpeg(server: Running, jpegs: list[bytes]) -> None:
    files = image_files([jpegs[2][: len(jpegs[2]) // 2]])
    body = assert_error(server.client.post("/predict", files=files), 400, "truncated")
    assert body["index"] == 0
    assert_still_serving(server, jpegs)


@pytest.mark.integration
@pytest.mark.parametrize("count", [MAX_IMAGES + 1, MAX_IMAGES + 3])
def test_too_many_images(server: Running, jpegs: list[bytes], count: int) -> None:
    files = image_files([jpegs[1]] * count)
    assert_error(server.client.post("/predict", files=files), 413, "too many images")
    # Exactly the limit is fine.
    r = server.client.post("/predict", files=image_files([jpegs[1]] * MAX_IMAGES))
    assert r.status_code == 200, r.text
    assert_still_serving(server, jpegs)


@pytest.mark.integration
def test_body_too_large_by_content_length(server: Running, jpegs: list[bytes]) -> None:
    content, headers = multipart([("images", "big.jpg", b"\xff" * (MAX_BODY_BYTES + 100_000))])
    r = server.client.post("/predict", content=content, headers=headers)
    assert "content-length" in {k.lower() for k in r.request.headers}
    assert_error(r, 413, "body")
    assert_still_serving(server, jpegs)


@pytest.mark.integration
def test_body_too_large_chunked(server: Running, jpegs: list[bytes]) -> None:
    boundary = uuid.uuid4().hex
    sent = 0

    def body() -> Iterator[bytes]:
        nonlocal sent
        yield (f'--{boundary}\r\nContent-Disposition: form-data; name="images"; '
               f'filename="big.jpg"\r\nContent-Type: image/jpeg\r\n\r\n').encode()
        chunk = b"\xff" * 65536
        while sent < MAX_BODY_BYTES + 500_000:
            sent += len(chunk)
            yield chunk
        yield f"\r\n--{boundary}--\r\n".encode()

    headers = {"content-type": f"multipart/form-data; boundary={boundary}"}
    r = server.client.post("/predict", content=body(), headers=headers)
    assert r.request.headers.get("transfer-encoding") == "chunked"
    assert "content-length" not in r.request.headers
    assert_error(r, 413, "body")
    assert_still_serving(server, jpegs)


@pytest.mark.integration
@pytest.mark.parametrize("ctype, content", [("application/json", b'{"images": []}'),
                                            ("text/plain", b"hello"),
                                            ("application/x-www-form-urlencoded", b"images=x")])
def test_wrong_content_type(server: Running, jpegs: list[bytes], ctype: str,
                            content: bytes) -> None:
    r = server.client.post("/predict", content=content, headers={"content-type": ctype})
    assert_error(r, 415, "multipart/form-data")
    assert_still_serving(server, jpegs)


@pytest.mark.integration
def test_unknown_path_is_json(server: Running) -> None:
    assert_error(server.client.get("/nope"), 404)
