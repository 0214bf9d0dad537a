"""ONNX Runtime beside Keras, for real: the tiny model converted by the harness's own build
path, its outputs equal to the Keras file's, and a real server answering /predict on it. A
cycled run on MODEL=tiny-onnx reaching its verdict is tests/slow/test_onnx_verdict.py."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from infbench import config
from infbench.measure import assets
from infbench.paths import HOST, ROOT
from servers.shared.model import forward, load_model, preprocess
from servers.shared.runtimes import TOLERANCE
from tests.fixtures.helpers import (
    answers_like_keras,
    convert_cli_refuses,
    free_port,
    quiet_env,
    running,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(keras file, onnx file, sample images), built in a folder of the test's own through
    assets.ensure_model: the very path `make build MODEL=tiny-onnx` takes."""
    build = tmp_path_factory.mktemp("build")
    model = config.load(ROOT / "experiments.toml").model("tiny-onnx")
    model = dataclasses.replace(model, cpu_mem_arena=False, intra_op_threads=1)
    onnx = assets.ensure_model(model, build, log=False)
    keras = assets.model_path(assets.keras_twin(model), build)
    return keras, onnx, assets.images_dir(build)


def test_onnx_outputs_equal_the_keras_files(built: tuple[Path, Path, Path]) -> None:
    keras_file, onnx_file, images = built
    assert onnx_file.suffix == ".onnx" and keras_file.exists()
    jpegs = [p.read_bytes() for p in sorted(images.glob("*.jpg"))]
    keras, onnx = load_model(str(keras_file)), load_model(str(onnx_file))
    assert (onnx.kind, onnx.input_size, onnx.channels) == ("onnx", 32, 3)
    # The settings the build wrote beside the file are the session's.
    assert onnx.model.settings.cpu_mem_arena is False
    assert onnx.model.settings.intra_op_threads == 1
    batch = preprocess(jpegs, keras.input_size)
    want = forward(keras, batch, "predict_on_batch")
    # The tiny model's outputs differ from image to image, so equality is a real check.
    assert float(want.std(axis=0).max()) > 10 * TOLERANCE
    for style in ("predict", "predict_on_batch", "call"):
        got = forward(onnx, batch, style, pad_to=5)  # 24 images: one blank added
        assert got.shape == want.shape == (len(jpegs), 10)
        assert float(np.abs(got - want).max()) <= TOLERANCE


def test_convert_cli_bad_input_is_one_line(built: tuple[Path, Path, Path],
                                           tmp_path: Path) -> None:
    keras_file, _, images = built
    convert_cli_refuses("onnx", keras_file, images, tmp_path)


@pytest.fixture(scope="module")
def server(built: tuple[Path, Path, Path],
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    _, onnx_file, _ = built
    port = free_port()
    env = quiet_env(INFBENCH_MODEL_PATH=str(onnx_file), INFBENCH_MAX_IMAGES="4")
    log = tmp_path_factory.mktemp("onnx-server") / "server.log"
    argv = [sys.executable, "-m", "uvicorn", "servers.image.app_starlette:app", "--host", HOST,
            "--port", str(port), "--no-access-log"]
    url = f"http://{HOST}:{port}"
    with running(argv, env, log, f"{url}/health", 90.0, grace=10.0):
        yield url


def test_a_server_on_the_onnx_model_answers_predict_like_keras(
        server: str, built: tuple[Path, Path, Path]) -> None:
    keras_file, _, images = built
    answers_like_keras(server, keras_file, images)
