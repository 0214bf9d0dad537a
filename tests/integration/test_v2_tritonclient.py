"""The Open Inference Protocol ("V2") on servers.tfserving against the official tritonclient,
unchanged, and against our own V2 users; then the protocol variants through the CLI.

One real server (the 1-channel mnist model) runs as a subprocess in its own process group on
ports it picks itself. tritonclient.http and tritonclient.grpc ask it whether it is ready, for
the model's metadata and for inferences with JSON and with binary tensors; every answer must
equal (1e-5) what our own V2 users' requests get and what TF-Serving's REST :predict gives for
the same images. Bad requests get the protocol's errors. The protocol variants through the CLI
are tests/slow/test_protocol_cli.py.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from infbench.paths import ROOT
from tests.fixtures.helpers import quiet_env, stop_group
from tests.integration.test_tfserving import (
    LOCUSTFILE,
    MODEL_NAME,
    SPECS,
    Server,
    jpeg,
    start,
    wait_ready,
)

pytestmark = pytest.mark.integration

V2_KINDS = ("v2-rest-json", "v2-rest-binary", "v2-grpc")
# The four rows: TF-Serving REST and gRPC, V2 REST (binary tensors: what perf_analyzer and
# tritonclient send by default) and V2 gRPC. The V2 JSON user's request is checked above.
BATCH = 2

# Our users' first request body and headers per kind, written by a subprocess (the users read
# their settings from the environment at import, as under Locust).
DUMP = """
import importlib.util, json, os, sys
out, path = sys.argv[1], sys.argv[2]
sys.path.insert(0, os.path.dirname(path))
for kind in sys.argv[3:]:
  for repeat in "10":
    os.environ.update(INFBENCH_TFS_KIND=kind, INFBENCH_TFS_REPEAT=repeat)
    name = f"users_{kind}_{repeat}".replace("-", "_")
    spec = importlib.util.spec_from_file_location(name, path)
    m = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(m)
    if repeat == "0":  # every request unique: two bodies that differ
        for n in (0, 1):
            with open(os.path.join(out, f"{kind}-unique-{n}"), "wb") as f:
                f.write(m.PAYLOAD.body(n))
        continue
    with open(os.path.join(out, kind), "wb") as f:
        f.write(m.PAYLOAD.fixed)
    with open(os.path.join(out, kind + ".json"), "w") as f:
        json.dump({"path": m.REST_PATH, "method": m.PREDICT_METHOD,
                   "headers": m.REST_HEADERS}, f)
"""


@pytest.fixture(scope="module")
def mnist_v2(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    import tensorflow  # noqa: F401  (the model is built here, as the harness builds it)

    from servers.shared.model import build_model, save_atomically

    tmp = tmp_path_factory.mktemp("v2")
    arch, size, _ = SPECS["mnist"]
    path = tmp / "mnist.keras"
    save_atomically(build_model(arch, size, 10, seed=0), path)
    server = start("mnist", path, tmp)
    try:
        wait_ready(server)
        yield server
    finally:
        stop_group(server.proc)
        with contextlib.suppress(AttributeError):
            server.client.close()
            server.channel.close()


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("v2-images")
    for i, size in enumerate([(40, 30), (64, 64), (300, 200)]):
        (out / f"img{i}.jpg").write_bytes(jpeg(size, i))
    return out


@pytest.fixture(scope="module")
def tensor(images: Path) -> np.ndarray:
    """The batch our users send: the first BATCH images after the servers' preprocessing."""
    from servers.shared.model import preprocess

    jpegs = [p.read_bytes() for p in sorted(images.glob("*.jpg"))][:BATCH]
    return np.asarray(preprocess(jpegs, SPECS["mnist"][1], SPECS["mnist"][2]), dtype=np.float32)


@pytest.fixture(scope="module")
def reference(mnist_v2: Server, tensor: np.ndarray) -> np.ndarray:
    """TF-Serving REST's answer for the same images (JSON numbers, as its users send them)."""
    r = mnist_v2.client.post(f"/v1/models/{MODEL_NAME}:predict",
                             json={"instances": np.round(tensor.astype(np.float64), 6).tolist()})
    assert r.status_code == 200, r.text
    out = np.asarray(r.json()["predictions"], dtype=np.float32)
    assert out.shape == (BATCH, 10)
    return out


@pytest.fixture(scope="module")
def http_client(mnist_v2: Server) -> Iterator[Any]:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(mnist_v2.rest.removeprefix("http://"))
    yield client
    client.close()


@pytest.fixture(scope="module")
def grpc_client(mnist_v2: Server) -> Iterator[Any]:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(mnist_v2.grpc_target)
    yield client
    client.close()


def test_tritonclient_health_and_metadata(http_client: Any, grpc_client: Any) -> None:
    assert http_client.is_server_live() and http_client.is_server_ready()
    assert grpc_client.is_server_live() and grpc_client.is_server_ready()
    assert http_client.is_model_ready(MODEL_NAME) and grpc_client.is_model_ready(MODEL_NAME)
    assert "binary_tensor_data" in http_client.get_server_metadata()["extensions"]
    meta = http_client.get_model_metadata(MODEL_NAME)
    assert meta["name"] == MODEL_NAME and meta["versions"] == ["1"]
    (inp,), (out,) = meta["inputs"], meta["outputs"]
    assert (inp["datatype"], inp["shape"]) == ("FP32", [-1, 28, 28, 1])
    assert (out["name"], out["datatype"], out["shape"]) == ("output_0", "FP32", [-1, 10])
    gmeta = grpc_client.get_model_metadata(MODEL_NAME, as_json=True)
    assert gmeta["name"] == MODEL_NAME and gmeta["versions"] == ["1"]
    assert [int(d) for d in gmeta["inputs"][0]["shape"]] == [-1, 28, 28, 1]
    assert gmeta["inputs"][0]["name"] == inp["name"]
    assert [int(d) for d in gmeta["outputs"][0]["shape"]] == [-1, 10]


def _tritonclient_answers(http_client: Any, grpc_client: Any, name: str,
                          tensor: np.ndarray) -> dict[str, np.ndarray]:
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    answers = {}
    for binary in (False, True):
        inp = httpclient.InferInput(name, list(tensor.shape), "FP32")
        inp.set_data_from_numpy(tensor, binary_data=binary)
        out = httpclient.InferRequestedOutput("output_0", binary_data=binary)
        result = http_client.infer(MODEL_NAME, [inp], outputs=[out])
        answers[f"http-{'binary' if binary else 'json'}"] = result.as_numpy("output_0")
    ginp = grpcclient.InferInput(name, list(tensor.shape), "FP32")
    ginp.set_data_from_numpy(tensor)
    result = grpc_client.infer(MODEL_NAME, [ginp])
    answers["grpc"] = result.as_numpy("output_0")
    return answers


def _our_answers(server: Server, images: Path, tmp: Path) -> dict[str, np.ndarray]:
    env = quiet_env(INFBENCH_IMAGES=str(images), INFBENCH_BATCH=str(BATCH),
                    INFBENCH_IMAGE_SIZE="28", INFBENCH_IMAGE_CHANNELS="1",
                    INFBENCH_GRPC_HOST=server.grpc_target, INFBENCH_TFS_MODEL=MODEL_NAME)
    res = subprocess.run([sys.executable, "-c", DUMP, str(tmp), str(LOCUSTFILE), *V2_KINDS],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    answers = {}
    for kind in ("v2-rest-json", "v2-rest-binary"):
        spec = json.loads((tmp / f"{kind}.json").read_text())
        r = server.client.post(spec["path"], content=(tmp / kind).read_bytes(),
                               headers=spec["headers"])
        assert r.status_code == 200, r.text
        if kind == "v2-rest-json":
            (out,) = r.json()["outputs"]
            answers[kind] = np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])
            continue
        length = int(r.headers["inference-header-content-length"])
        (out,) = json.loads(r.content[:length])["outputs"]
        assert out["parameters"]["binary_data_size"] == len(r.content) - length
        raw = np.frombuffer(r.content[length:], dtype="<f4")
        answers[kind] = raw.reshape(out["shape"])
    from tritonclient.grpc import service_pb2

    spec = json.loads((tmp / "v2-grpc.json").read_text())
    call = server.channel.unary_unary(spec["method"], request_serializer=None,
                                      response_deserializer=None)
    response = service_pb2.ModelInferResponse.FromString(call((tmp / "v2-grpc").read_bytes()))
    shape = [int(d) for d in response.outputs[0].shape]
    answers["v2-grpc"] = np.frombuffer(response.raw_output_contents[0], "<f4").reshape(shape)
    # The typed form (contents.fp32_contents) instead of raw_input_contents: the same answer.
    typed = service_pb2.ModelInferRequest(model_name=MODEL_NAME)
    tensor = typed.inputs.add(name="image", datatype="FP32", shape=[BATCH, 28, 28, 1])
    raw = service_pb2.ModelInferRequest.FromString((tmp / "v2-grpc").read_bytes())
    tensor.contents.fp32_contents.extend(np.frombuffer(raw.raw_input_contents[0], "<f4"))
    response = service_pb2.ModelInferResponse.FromString(call(typed.SerializeToString()))
    answers["v2-grpc-contents"] = np.frombuffer(response.raw_output_contents[0],
                                                "<f4").reshape(shape)
    # REPEAT=0: each request's body differs (one value changed), and the server takes each.
    for kind in V2_KINDS:
        spec = json.loads((tmp / f"{kind}.json").read_text())
        bodies = [(tmp / f"{kind}-unique-{n}").read_bytes() for n in (0, 1)]
        if kind != "v2-rest-json":  # binary: the same bytes but one float
            assert len(bodies[0]) == len((tmp / kind).read_bytes()), kind
        for body in bodies:
            if kind == "v2-grpc":
                service_pb2.ModelInferResponse.FromString(call(body))
            else:
                r = server.client.post(spec["path"], content=body, headers=spec["headers"])
                assert r.status_code == 200, (kind, r.text)
        assert bodies[0] != bodies[1], kind
    return answers


def test_tritonclient_infer_equals_our_users_and_tfserving_rest(
        mnist_v2: Server, http_client: Any, grpc_client: Any, images: Path,
        tensor: np.ndarray, reference: np.ndarray, tmp_path: Path) -> None:
    name = http_client.get_model_metadata(MODEL_NAME)["inputs"][0]["name"]
    theirs = _tritonclient_answers(http_client, grpc_client, name, tensor)
    ours = _our_answers(mnist_v2, images, tmp_path)
    assert set(theirs) == {"http-json", "http-binary", "grpc"}
    assert set(ours) == {*V2_KINDS, "v2-grpc-contents"}
    for label, out in {**theirs, **ours}.items():
        assert out.shape == (BATCH, 10), label
        assert np.allclose(out, reference, atol=1e-5), (label, out, reference)
    # The server timed each V2 request under its own format (lines flushed about once a second).
    want = {"v2-json", "v2-binary", "v2-raw", "v2-contents"}
    deadline = time.monotonic() + 10.0
    while not want <= (formats := {t["format"] for t in mnist_v2.timings() if t["ok"]}) \
            and time.monotonic() < deadline:
        time.sleep(0.2)
    assert want <= formats


def test_bad_requests_get_the_protocols_errors(mnist_v2: Server, http_client: Any,
                                               grpc_client: Any, tensor: np.ndarray) -> None:
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    wrong = np.zeros((1, 27, 28, 1), dtype=np.float32)
    inp = httpclient.InferInput("image", list(wrong.shape), "FP32")
    inp.set_data_from_numpy(wrong, binary_data=True)
    with pytest.raises(InferenceServerException) as info:
        http_client.infer(MODEL_NAME, [inp])
    assert info.value.status() == "400" and "shape" in str(info.value.message())
    with pytest.raises(InferenceServerException) as info:
        http_client.get_model_metadata("nope")
    assert info.value.status() == "404"
    ginp = grpcclient.InferInput("image", list(wrong.shape), "FP32")
    ginp.set_data_from_numpy(wrong)
    with pytest.raises(InferenceServerException) as info:
        grpc_client.infer(MODEL_NAME, [ginp])
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
    with pytest.raises(InferenceServerException) as info:
        grpc_client.get_model_metadata("nope")
    assert info.value.status() == "StatusCode.NOT_FOUND"
    # Raw requests: each a 4xx with one JSON error line; the server stays up.
    c = mnist_v2.client
    infer = f"/v2/models/{MODEL_NAME}/infer"
    good = {"name": "image", "datatype": "FP32", "shape": [1, 28, 28, 1]}
    cases: list[tuple[str, dict[str, Any], int]] = [
        (infer, {"content": b"{not json"}, 400),
        (infer, {"json": {"inputs": [{**good, "datatype": "UINT8", "data": [0] * 784}]}}, 400),
        (infer, {"json": {"inputs": [{**good, "data": [0.0] * 783}]}}, 400),
        (infer, {"json": {"inputs": [good]}}, 400),
        (infer, {"json": {"inputs": [{**good, "data": [0.0] * 784}],
                          "outputs": [{"name": "nope"}]}}, 400),
        (infer, {"content": json.dumps({"inputs": [{**good, "parameters": {
            "binary_data_size": 3136}}]}).encode() + b"\0" * 100,
            "headers": {"Inference-Header-Content-Length": "93"}}, 400),
        ("/v2/models/nope/infer", {"json": {"inputs": [{**good, "data": [0.0] * 784}]}}, 404),
        (f"/v2/models/{MODEL_NAME}/versions/7/infer", {"json": {}}, 404),
    ]
    for path, kwargs, status in cases:
        r = c.post(path, **kwargs)
        assert r.status_code == status, (path, kwargs.get("json"), r.text)
        assert set(r.json()) == {"error"} and "\n" not in r.json()["error"]
    with pytest.raises(grpc.RpcError) as err:
        mnist_v2.channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")(b"\xff\xff")
    assert err.value.code() != grpc.StatusCode.OK
    assert http_client.is_server_ready() and mnist_v2.proc.poll() is None
