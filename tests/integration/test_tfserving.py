"""servers.tfserving against TensorFlow Serving's own client code, and its Locust users.

Two real servers (the tiny RGB model and the 1-channel mnist model) run as subprocesses in
their own process groups on ports they pick themselves (port 0, read back from their first log
line). The official stubs and protos of tensorflow-serving-api talk to them unchanged, and every
answer is checked against the same model run in this process. Each Locust user kind runs
headless for a few seconds, and its request count must match the server's timing file.
"""

from __future__ import annotations

import base64
import contextlib
import csv
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
from PIL import Image

from infbench.paths import HOST, ROOT
from tests.fixtures.helpers import quiet_env, spawn, stop_group, tail, wait_healthy

pytestmark = pytest.mark.integration

LOCUSTFILE = ROOT / "loadtests" / "tfserving_users.py"
MODEL_NAME = "default"
MAX_IMAGES = 8
MAX_BODY_BYTES = 1_500_000
START_TIMEOUT_S = 90.0
KIND_FORMAT = {"rest-row-pixels": "row", "rest-b64": "row-b64", "rest-columnar": "columnar",
               "grpc-tensor": "tensor_content", "grpc-string": "string_val"}
TIMING_KEYS = {"t", "protocol", "format", "batch", "status", "ok", "receive_ms", "parse_ms",
               "decode_ms", "queue_ms", "model_ms", "serialize_ms", "total_ms",
               "decode_cpu_ms", "model_cpu_ms"}
PHASES = ("parse_ms", "decode_ms", "queue_ms", "model_ms", "serialize_ms")
# The shapes of the two models, as the arch definitions build them.
SPECS = {"tiny": ("tiny_cnn", 32, 3), "mnist": ("mnist_cnn", 28, 1)}


# ---------------------------------------------------------------------------------------------
# Helpers


def jpeg(size: tuple[int, int], seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


@dataclass
class Server:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    timing_dir: Path
    size: int
    channels: int
    model_path: Path
    rest: str = ""
    grpc_target: str = ""
    client: httpx.Client = field(init=False)
    channel: grpc.Channel = field(init=False)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.size, self.size, self.channels)

    @property
    def timing_file(self) -> Path:
        return self.timing_dir / f"timings-{self.proc.pid}.jsonl"

    def timings(self, since: float = 0.0) -> list[dict[str, Any]]:
        if not self.timing_file.exists():
            return []
        lines = self.timing_file.read_text().splitlines()
        return [r for r in map(json.loads, lines) if r["t"] >= since]


def start(name: str, model_path: Path, tmp: Path) -> Server:
    _, size, channels = SPECS[name]
    log = tmp / f"{name}.log"
    timing_dir = tmp / f"{name}-timings"
    env = quiet_env(INFBENCH_MODEL_PATH=str(model_path), INFBENCH_TIMING_DIR=str(timing_dir),
                    INFBENCH_MAX_IMAGES=str(MAX_IMAGES),
                    INFBENCH_MAX_BODY_BYTES=str(MAX_BODY_BYTES))
    argv = [sys.executable, "-m", "servers.tfserving", "--rest-port", "0", "--grpc-port", "0",
            "--model-name", MODEL_NAME]
    return Server(name, spawn(argv, env, log), log, timing_dir, size, channels, model_path)


def wait_ready(server: Server) -> None:
    """Ports from the server's first line; ready when /health answers with ITS pid."""
    deadline = time.monotonic() + START_TIMEOUT_S
    pattern = re.compile(r"REST on (http://\S+) gRPC on (\S+) pid=(\d+)")
    while not server.rest:
        if server.proc.poll() is not None:
            pytest.fail(f"{server.name} exited with {server.proc.returncode}:\n{tail(server.log)}")
        found = pattern.search(server.log.read_text(errors="replace"))
        if found:
            assert int(found[3]) == server.proc.pid
            server.rest, server.grpc_target = found[1], found[2]
        elif time.monotonic() > deadline:
            pytest.fail(f"{server.name}: no ports line:\n{tail(server.log)}")
        time.sleep(0.1)
    server.client = httpx.Client(base_url=server.rest, timeout=30.0)
    server.channel = grpc.insecure_channel(server.grpc_target)
    r = wait_healthy(server.proc, f"{server.rest}/health", server.log,
                     max(0.0, deadline - time.monotonic()), server.name)
    assert r.json()["pid"] == server.proc.pid


# ---------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def tf() -> Any:
    import tensorflow

    return tensorflow


@pytest.fixture(scope="module")
def model_files(tf: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Both models built from seed 0 through servers.shared.model, as the harness builds them."""
    from servers.shared.model import build_model, save_atomically

    out = tmp_path_factory.mktemp("models")
    paths = {}
    for name, (arch, size, _) in SPECS.items():
        paths[name] = out / f"{name}.keras"
        save_atomically(build_model(arch, size, 10, seed=0), paths[name])
    return paths


@pytest.fixture(scope="module")
def servers(model_files: dict[str, Path],
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Server]]:
    tmp = tmp_path_factory.mktemp("tfserving")
    running = {name: start(name, path, tmp) for name, path in model_files.items()}
    try:
        for server in running.values():
            wait_ready(server)
        yield running
    finally:
        for server in running.values():
            stop_group(server.proc)
            with contextlib.suppress(AttributeError):
                server.client.close()
                server.channel.close()


@pytest.fixture(scope="module")
def tiny(servers: dict[str, Server]) -> Server:
    return servers["tiny"]


@pytest.fixture(scope="module")
def mnist(servers: dict[str, Server]) -> Server:
    return servers["mnist"]


@pytest.fixture(params=["tiny", "mnist"])
def server(request: pytest.FixtureRequest, servers: dict[str, Server]) -> Server:
    return servers[request.param]


@pytest.fixture(scope="module")
def reference(model_files: dict[str, Path]) -> dict[str, Any]:
    """The same models in this process, for checking what the servers answer."""
    from servers.shared.model import load_model

    return {name: load_model(str(path)) for name, path in model_files.items()}


@pytest.fixture(scope="module")
def images() -> list[bytes]:
    return [jpeg((40, 30), 1), jpeg((64, 64), 2), jpeg((20, 50), 3)]


def expected(reference: dict[str, Any], server: Server, batch: np.ndarray) -> np.ndarray:
    from servers.shared.model import forward

    return forward(reference[server.name], batch, "predict_on_batch")


def pixels(server: Server, images: list[bytes]) -> np.ndarray:
    from servers.shared.model import preprocess

    return preprocess(images, server.size, server.channels)


def apis() -> Any:
    from tensorflow_serving.apis import (
        get_model_status_pb2,
        model_service_pb2_grpc,
        predict_pb2,
        prediction_service_pb2_grpc,
    )

    return predict_pb2, get_model_status_pb2, prediction_service_pb2_grpc, model_service_pb2_grpc


def predict_request(tensor: Any, name: str = MODEL_NAME, input_name: str = "image") -> Any:
    predict_pb2 = apis()[0]
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    request.model_spec.signature_name = "serving_default"
    request.inputs[input_name].CopyFrom(tensor)
    return request


def assert_still_serving(server: Server, tf: Any) -> None:
    """After a refused request: same process, healthy on both protocols, still predicting."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    r = server.client.get("/health")
    assert r.status_code == 200 and r.json()["pid"] == server.proc.pid
    check = health_pb2_grpc.HealthStub(server.channel).Check(health_pb2.HealthCheckRequest(),
                                                             timeout=10)
    assert check.status == health_pb2.HealthCheckResponse.SERVING
    stub = apis()[2].PredictionServiceStub(server.channel)
    ok = stub.Predict(predict_request(tf.make_tensor_proto(np.zeros((1, *server.shape),
                                                                    np.float32))), timeout=30)
    assert tf.make_ndarray(ok.outputs["output_0"]).shape == (1, 10)


# ---------------------------------------------------------------------------------------------
# servers.shared.model: 1-channel models


def test_one_channel_model_loads_and_three_channel_still_does(
        model_files: dict[str, Path], images: list[bytes]) -> None:
    from servers.shared.model import ARCHS, load_model, preprocess

    assert "mnist_cnn" in ARCHS
    mnist_model = load_model(str(model_files["mnist"]))
    assert (mnist_model.input_size, mnist_model.channels) == (28, 1)
    tiny_model = load_model(str(model_files["tiny"]))
    assert (tiny_model.input_size, tiny_model.channels) == (32, 3)
    gray = preprocess(images, 28, 1)
    assert gray.shape == (3, 28, 28, 1) and gray.dtype == np.float32
    rgb = preprocess(images, 28)
    assert rgb.shape == (3, 28, 28, 3)
    # Grayscale is Pillow's L conversion of the same image, on the same [-1, 1] scale.
    with Image.open(io.BytesIO(images[1])) as img:
        lum = np.asarray(img.convert("L").resize((28, 28), Image.Resampling.BILINEAR))
    assert np.allclose(gray[1, :, :, 0], lum / 127.5 - 1.0, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# gRPC with TF-Serving's own client code


def test_grpc_health_says_serving(server: Server) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    stub = health_pb2_grpc.HealthStub(server.channel)
    for service in ("", "tensorflow.serving.PredictionService"):
        reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_grpc_get_model_status(server: Server) -> None:
    _, get_model_status_pb2, _, model_service_pb2_grpc = apis()
    stub = model_service_pb2_grpc.ModelServiceStub(server.channel)
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = MODEL_NAME
    reply = stub.GetModelStatus(request, timeout=10)
    (status,) = reply.model_version_status
    assert status.version == 1
    assert status.state == get_model_status_pb2.ModelVersionStatus.AVAILABLE
    assert status.status.error_code == 0
    request.model_spec.version.value = 1
    assert stub.GetModelStatus(request, timeout=10).model_version_status[0].version == 1
    for name, version in (("nope", None), (MODEL_NAME, 7)):
        bad = get_model_status_pb2.GetModelStatusRequest()
        bad.model_spec.name = name
        if version is not None:
            bad.model_spec.version.value = version
        with pytest.raises(grpc.RpcError) as info:
            stub.GetModelStatus(bad, timeout=10)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_grpc_predict_float_tensor_make_tensor_proto(server: Server, tf: Any, images: list[bytes],
                                                     reference: dict[str, Any]) -> None:
    stub = apis()[2].PredictionServiceStub(server.channel)
    batch = pixels(server, images)
    reply = stub.Predict(predict_request(tf.make_tensor_proto(batch)), timeout=30)
    assert reply.model_spec.name == MODEL_NAME and reply.model_spec.version.value == 1
    out = tf.make_ndarray(reply.outputs["output_0"])
    assert out.shape == (3, 10) and out.dtype == np.float32
    assert np.allclose(out, expected(reference, server, batch), rtol=1e-4, atol=1e-6)


def test_grpc_predict_hand_built_float_val(server: Server, tf: Any,
                                           reference: dict[str, Any]) -> None:
    from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

    batch = np.random.default_rng(5).uniform(-1, 1, (2, *server.shape)).astype(np.float32)
    shape = tensor_shape_pb2.TensorShapeProto(
        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=n) for n in batch.shape])
    tensor = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_shape=shape,
                                    float_val=batch.ravel().tolist())
    stub = apis()[2].PredictionServiceStub(server.channel)
    reply = stub.Predict(predict_request(tensor, input_name="any_name"), timeout=30)
    out = tf.make_ndarray(reply.outputs["output_0"])
    assert np.allclose(out, expected(reference, server, batch), rtol=1e-4, atol=1e-6)


def test_grpc_predict_encoded_images(server: Server, tf: Any, images: list[bytes],
                                     reference: dict[str, Any]) -> None:
    stub = apis()[2].PredictionServiceStub(server.channel)
    reply = stub.Predict(predict_request(tf.make_tensor_proto(images)), timeout=30)
    out = tf.make_ndarray(reply.outputs["output_0"])
    want = expected(reference, server, pixels(server, images))
    assert np.allclose(out, want, rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# REST


def test_rest_model_status(server: Server) -> None:
    for path in (f"/v1/models/{MODEL_NAME}", f"/v1/models/{MODEL_NAME}/versions/1"):
        r = server.client.get(path)
        assert r.status_code == 200, r.text
        assert r.json() == {"model_version_status": [
            {"version": "1", "state": "AVAILABLE",
             "status": {"error_code": "OK", "error_message": ""}}]}
    for path in ("/v1/models/nope", f"/v1/models/{MODEL_NAME}/versions/2"):
        r = server.client.get(path)
        assert r.status_code == 404 and "not found" in r.json()["error"]


def test_rest_predict_row_columnar_b64(server: Server, images: list[bytes],
                                       reference: dict[str, Any]) -> None:
    batch = pixels(server, images)
    want = expected(reference, server, batch)
    path = f"/v1/models/{MODEL_NAME}:predict"
    cases = [
        ("predictions", {"instances": batch.tolist()}),
        ("predictions", {"signature_name": "serving_default",
                         "instances": [{"image": x} for x in batch.tolist()]}),
        ("outputs", {"inputs": batch.tolist()}),
        ("outputs", {"inputs": {"image": batch.tolist()}}),
        ("predictions", {"instances": [{"b64": b64(i)} for i in images]}),
        ("outputs", {"inputs": [{"b64": b64(i)} for i in images]}),
    ]
    for key, body in cases:
        r = server.client.post(path, json=body)
        assert r.status_code == 200, (body.keys(), r.text)
        assert list(r.json()) == [key]
        assert np.allclose(np.array(r.json()[key]), want, rtol=1e-4, atol=1e-6)
    r = server.client.post(f"/v1/models/{MODEL_NAME}/versions/1:predict",
                           json={"instances": [{"b64": b64(images[0])}]})
    assert r.status_code == 200 and np.allclose(r.json()["predictions"], want[:1], rtol=1e-4)


# ---------------------------------------------------------------------------------------------
# Bad input: the right code on both protocols, and the server stays up


def _rest_bad_cases(server: Server, images: list[bytes]) -> list[tuple[str, str, bytes, int]]:
    path = f"/v1/models/{MODEL_NAME}:predict"
    good = np.zeros((1, *server.shape)).tolist()
    wrong = np.zeros((1, server.size + 1, server.size, server.channels)).tolist()

    def j(doc: Any) -> bytes:
        return json.dumps(doc).encode()

    return [
        ("malformed JSON", path, b'{"instances": [[1, 2', 400),
        ("not an object", path, b"[1, 2]", 400),
        ("NaN is not JSON", path, b'{"instances": [NaN]}', 400),
        ("both instances and inputs", path, j({"instances": good, "inputs": good}), 400),
        ("neither", path, j({"signature_name": "serving_default"}), 400),
        ("wrong shape", path, j({"instances": wrong}), 400),
        ("ragged", path, j({"instances": [good[0], [1.0]]}), 400),
        ("strings, not floats", path, j({"instances": [["a", "b"]]}), 400),
        ("bad base64", path, j({"instances": [{"b64": "@@not base64@@"}]}), 400),
        ("not an image", path, j({"instances": [{"b64": b64(b"hello, world")}]}), 400),
        ("truncated image", path, j({"instances": [{"b64": b64(images[1][:300])}]}), 400),
        ("unknown signature", path, j({"signature_name": "nope", "instances": good}), 400),
        ("empty batch", path, j({"instances": []}), 400),
        ("unknown model", "/v1/models/nope:predict", j({"instances": good}), 404),
        ("unknown version", f"/v1/models/{MODEL_NAME}/versions/3:predict",
         j({"instances": good}), 404),
        ("too many instances", path, j({"instances": [{"b64": b64(images[0])}] * 9}), 413),
        ("body over the limit", path, b" " * (MAX_BODY_BYTES + 1), 413),
    ]


def test_rest_bad_input(server: Server, images: list[bytes], tf: Any) -> None:
    for what, path, body, status in _rest_bad_cases(server, images):
        r = server.client.post(path, content=body,
                               headers={"content-type": "application/json"})
        assert r.status_code == status, (what, r.text)
        error = r.json()["error"]
        assert isinstance(error, str) and error and "\n" not in error, what
    assert_still_serving(server, tf)


def test_grpc_bad_input(server: Server, images: list[bytes], tf: Any) -> None:
    from tensorflow.core.framework import tensor_pb2, types_pb2

    predict_pb2 = apis()[0]
    stub = apis()[2].PredictionServiceStub(server.channel)
    good = tf.make_tensor_proto(np.zeros((1, *server.shape), np.float32))
    wrong_shape = tf.make_tensor_proto(np.zeros((1, server.size, server.size, 2), np.float32))
    short = tensor_pb2.TensorProto()
    short.CopyFrom(good)
    short.tensor_content = short.tensor_content[:-4]
    two_inputs = predict_request(good)
    two_inputs.inputs["other"].CopyFrom(good)
    unknown_version = predict_request(good)
    unknown_version.model_spec.version.value = 9
    bad_signature = predict_request(good)
    bad_signature.model_spec.signature_name = "classify_please"
    cases = [
        ("wrong shape", predict_request(wrong_shape), grpc.StatusCode.INVALID_ARGUMENT),
        ("wrong dtype", predict_request(tf.make_tensor_proto(np.zeros((1, *server.shape),
                                                                      np.int32))),
         grpc.StatusCode.INVALID_ARGUMENT),
        ("content length", predict_request(short), grpc.StatusCode.INVALID_ARGUMENT),
        ("not an image", predict_request(tf.make_tensor_proto([b"hello"])),
         grpc.StatusCode.INVALID_ARGUMENT),
        ("two inputs", two_inputs, grpc.StatusCode.INVALID_ARGUMENT),
        ("unknown signature", bad_signature, grpc.StatusCode.INVALID_ARGUMENT),
        ("no inputs", predict_pb2.PredictRequest(model_spec=two_inputs.model_spec),
         grpc.StatusCode.INVALID_ARGUMENT),
        ("unknown model", predict_request(good, name="nope"), grpc.StatusCode.NOT_FOUND),
        ("unknown version", unknown_version, grpc.StatusCode.NOT_FOUND),
        ("too many instances", predict_request(tf.make_tensor_proto(images[:1] * 9)),
         grpc.StatusCode.RESOURCE_EXHAUSTED),
        ("message over the limit", predict_request(
            tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, string_val=[b"x" * MAX_BODY_BYTES])),
         grpc.StatusCode.RESOURCE_EXHAUSTED),
    ]
    for what, request, code in cases:
        with pytest.raises(grpc.RpcError) as info:
            stub.Predict(request, timeout=30)
        assert info.value.code() == code, (what, info.value.details())
        assert info.value.details(), what
    assert_still_serving(server, tf)


# ---------------------------------------------------------------------------------------------
# The timing file


def test_timing_lines_cover_both_protocols(tiny: Server, tf: Any, images: list[bytes]) -> None:
    since = time.time()
    tiny.client.post(f"/v1/models/{MODEL_NAME}:predict",
                     json={"instances": [{"b64": b64(i)} for i in images[:2]]})
    tiny.client.post(f"/v1/models/{MODEL_NAME}:predict", content=b"{oops")
    stub = apis()[2].PredictionServiceStub(tiny.channel)
    stub.Predict(predict_request(tf.make_tensor_proto(images)), timeout=30)
    with pytest.raises(grpc.RpcError):
        stub.Predict(predict_request(tf.make_tensor_proto(images), name="nope"), timeout=30)
    rows = wait_for_lines(tiny, since, 4)
    assert len(rows) == 4
    for row in rows:
        assert set(row) == TIMING_KEYS
        assert all(row[k] >= 0 for k in (*PHASES, "receive_ms", "total_ms"))
        # The phases follow each other (receiving is part of parsing): never more than total.
        assert row["parse_ms"] >= row["receive_ms"]
        assert sum(row[k] for k in PHASES) <= row["total_ms"] + 0.01, row
    got = {(r["protocol"], r["format"], r["batch"], r["status"], r["ok"]) for r in rows}
    assert got == {("rest", "row-b64", 2, 200, True), ("rest", None, 0, 400, False),
                   ("grpc", "string_val", 3, "OK", True), ("grpc", None, 0, "NOT_FOUND", False)}
    ok = [r for r in rows if r["ok"]]
    assert all(r["model_ms"] > 0 and r["decode_ms"] > 0 for r in ok)
    # The thread CPU of the phases that ran; null for those that did not (a refused request).
    assert all(r["decode_cpu_ms"] >= 0 and r["model_cpu_ms"] >= 0 for r in ok)
    assert all(r["decode_cpu_ms"] is None and r["model_cpu_ms"] is None
               for r in rows if not r["ok"])


def wait_for_lines(server: Server, since: float, count: int,
                   timeout: float = 10.0) -> list[dict[str, Any]]:
    """The lines after `since`, once at least `count` are on disk (flushed ~once a second)."""
    deadline = time.monotonic() + timeout
    while True:
        rows = server.timings(since)
        if len(rows) >= count or time.monotonic() > deadline:
            return rows
        time.sleep(0.2)


# ---------------------------------------------------------------------------------------------
# The Locust users

DUMP_BODIES = """
import importlib.util, os, sys
out, path = sys.argv[1], sys.argv[2]
sys.path.insert(0, os.path.dirname(path))  # as Locust does: the users import the locustfile
for kind in sys.argv[3:]:
    for repeat in "01":
        os.environ.update(INFBENCH_TFS_KIND=kind, INFBENCH_TFS_REPEAT=repeat)
        name = f"users_{kind}_{repeat}".replace("-", "_")
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        for n in (0, 1):
            with open(os.path.join(out, f"{kind}-{repeat}-{n}"), "wb") as f:
                f.write(module.PAYLOAD.body(n))
print("tensorflow" in sys.modules and hasattr(sys.modules["tensorflow"], "constant"))
"""


def locust_env(server: Server, images_dir: Path, **extra: str) -> dict[str, str]:
    return quiet_env(INFBENCH_IMAGES=str(images_dir), INFBENCH_BATCH="2",
                     INFBENCH_IMAGE_SIZE=str(server.size),
                     INFBENCH_IMAGE_CHANNELS=str(server.channels),
                     INFBENCH_GRPC_HOST=server.grpc_target, INFBENCH_TFS_MODEL=MODEL_NAME,
                     INFBENCH_WAIT_MIN="0.05", INFBENCH_WAIT_MAX="0.2", **extra)


@pytest.fixture(scope="module")
def images_dir(tmp_path_factory: pytest.TempPathFactory, images: list[bytes]) -> Path:
    out = tmp_path_factory.mktemp("images")
    for i, data in enumerate([*images, jpeg((300, 200), 4)]):
        (out / f"img{i}.jpg").write_bytes(data)
    return out


def test_user_bodies_repeat_or_unique_and_all_accepted(mnist: Server, images_dir: Path,
                                                       tmp_path: Path) -> None:
    """REPEAT=1 sends one body; REPEAT=0 a different one each time; the server takes all."""
    res = subprocess.run([sys.executable, "-c", DUMP_BODIES, str(tmp_path), str(LOCUSTFILE),
                          *KIND_FORMAT], cwd=ROOT, env=locust_env(mnist, images_dir),
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip() == "False"  # the protos came without TensorFlow itself
    predict_pb2 = apis()[0]
    call = mnist.channel.unary_unary("/tensorflow.serving.PredictionService/Predict",
                                     request_serializer=None,
                                     response_deserializer=predict_pb2.PredictResponse.FromString)
    for kind in KIND_FORMAT:
        bodies = {(r, n): (tmp_path / f"{kind}-{r}-{n}").read_bytes() for r in "01" for n in (0, 1)}
        assert bodies["1", 0] == bodies["1", 1], kind
        assert bodies["0", 0] != bodies["0", 1], kind
        for key, body in bodies.items():
            if kind.startswith("grpc"):
                reply = call(body, timeout=30)
                assert reply.outputs["output_0"].tensor_shape.dim[0].size == 2
            else:
                r = mnist.client.post(f"/v1/models/{MODEL_NAME}:predict", content=body)
                assert r.status_code == 200, (kind, key, r.text)
                assert len(next(iter(r.json().values()))) == 2


def test_locust_smoke_every_kind(tiny: Server, images_dir: Path, tmp_path: Path) -> None:
    """Each kind, headless, 2 users, 3 s, all at once: requests, no failures, and the same
    count as the server's timing file shows for that kind's format."""
    since = time.time()
    procs = {}
    for i, kind in enumerate(KIND_FORMAT):
        argv = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
                "-u", "2", "-r", "2", "-t", "3s", "--stop-timeout", "10", "--host", tiny.rest,
                "--csv", str(tmp_path / kind), "--only-summary", "--loglevel", "WARNING"]
        env = locust_env(tiny, images_dir, INFBENCH_TFS_KIND=kind,
                         INFBENCH_TFS_REPEAT=str(i % 2),
                         INFBENCH_COUNTS=str(tmp_path / f"{kind}-counts.json"))
        procs[kind] = spawn(argv, env, tmp_path / f"{kind}.log")
    try:
        for proc in procs.values():
            proc.wait(timeout=90)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                stop_group(proc, grace=5)
    counts = {}
    for kind, proc in procs.items():
        assert proc.returncode == 0, (kind, tail(tmp_path / f"{kind}.log"))
        with (tmp_path / f"{kind}_stats.csv").open() as f:
            rows = {row["Name"]: row for row in csv.DictReader(f)}
        total = rows["Aggregated"]
        counts[kind] = int(total["Request Count"])
        assert counts[kind] > 0, kind
        assert int(total["Failure Count"]) == 0, kind
        (named,) = [r for name, r in rows.items() if name != "Aggregated"]
        assert named["Type"] == ("grpc" if kind.startswith("grpc") else "POST")
        assert f"[{kind} batch 2]" in named["Name"]
        mine = json.loads((tmp_path / f"{kind}-counts.json").read_text())
        assert mine["started"] == mine["finished"] == counts[kind] and mine["failed"] == 0
    lines = wait_for_lines(tiny, since, sum(counts.values()))
    for kind, count in counts.items():
        served = [r for r in lines if r["format"] == KIND_FORMAT[kind]]
        assert len(served) == count, (kind, len(served), count)
        assert all(r["ok"] and r["batch"] == 2 for r in served), kind
    assert len(lines) == sum(counts.values())


# ---------------------------------------------------------------------------------------------
# The command line and the process


def test_cli_errors_one_line_exit_1(model_files: dict[str, Path]) -> None:
    holder = socket.socket()
    # As another gRPC server would: grpcio sets SO_REUSEPORT by default, and two sockets that
    # both set it share a port silently. servers.tfserving turns it off, so this must fail.
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    holder.bind((HOST, 0))
    holder.listen()
    taken = str(holder.getsockname()[1])
    base = [sys.executable, "-m", "servers.tfserving"]
    cases = [
        ([*base, "--rest-port", "0", "--grpc-port", "0"], {}, "INFBENCH_MODEL_PATH"),
        ([*base, "--rest-port", "x", "--grpc-port", "0"],
         {"INFBENCH_MODEL_PATH": str(model_files["tiny"])}, "--rest-port"),
        ([*base, "--rest-port", "0", "--grpc-port", "0"],
         {"INFBENCH_MODEL_PATH": str(model_files["tiny"]), "INFBENCH_CALL": "fast"},
         "INFBENCH_CALL"),
        ([*base, "--rest-port", taken, "--grpc-port", "0"],
         {"INFBENCH_MODEL_PATH": str(model_files["tiny"])}, "cannot bind REST"),
        ([*base, "--rest-port", "0", "--grpc-port", taken],
         {"INFBENCH_MODEL_PATH": str(model_files["tiny"])}, "cannot bind gRPC"),
    ]
    procs = []
    try:
        for argv, extra, _ in cases:  # all at once: each is an interpreter start
            procs.append(subprocess.Popen(argv, cwd=ROOT, env=quiet_env(**extra),
                                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                          text=True, start_new_session=True))
        for proc, (argv, _, needle) in zip(procs, cases, strict=True):
            _, stderr = proc.communicate(timeout=60)
            assert proc.returncode == 1, (argv, stderr)
            # One line of ours, last (gRPC's C core logs its own bind failure before it).
            lines = stderr.strip().splitlines()
            ours = [line for line in lines if line.startswith("servers.tfserving:")]
            assert ours == lines[-1:] and needle in ours[0], stderr
    finally:
        holder.close()
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.communicate()


def test_rest_socket_gets_tcp_nodelay_from_asyncio() -> None:
    """The REST socket is made by hand (port 0): it must still get asyncio's TCP_NODELAY on
    each connection, or every response waits on Nagle and delayed ACKs (~40 ms a request)."""
    import asyncio

    from servers.tfserving.main import _rest_socket

    async def accept_one() -> int:
        got: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        class Probe(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                sock = transport.get_extra_info("socket")
                got.set_result(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
                transport.close()

        sock = _rest_socket(HOST, 0)
        server = await asyncio.get_running_loop().create_server(Probe, sock=sock)
        port = sock.getsockname()[1]
        _, writer = await asyncio.open_connection(HOST, port)
        try:
            return await asyncio.wait_for(got, 10)
        finally:
            writer.close()
            server.close()
            await server.wait_closed()

    assert asyncio.run(accept_one()) != 0


def test_zz_sigterm_writes_the_last_timings(tiny: Server, tf: Any, images: list[bytes]) -> None:
    """Last in the module (no module-scoped parametrisation reorders it): stops the tiny
    server. Lines still in the buffer when SIGTERM arrives reach the file."""
    since = time.time()
    for _ in range(3):
        r = tiny.client.post(f"/v1/models/{MODEL_NAME}:predict",
                             json={"instances": [{"b64": b64(images[0])}]})
        assert r.status_code == 200
    stub = apis()[2].PredictionServiceStub(tiny.channel)
    stub.Predict(predict_request(tf.make_tensor_proto(images[:1])), timeout=30)
    os.killpg(tiny.proc.pid, signal.SIGTERM)
    tiny.proc.wait(timeout=20)
    assert len(tiny.timings(since)) == 4
    assert "Traceback" not in tiny.log.read_text(errors="replace")
