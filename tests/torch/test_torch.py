"""PyTorch beside Keras, for real: the tiny model's layers rebuilt in torch with the Keras
file's weights by the harness's own build path (a state dict and the description that rebuilds
the module); its outputs equal to the Keras file's, a conversion with one weight wrong caught,
the file loaded, answering and measured alone (with its thread settings) with TensorFlow
unimportable, a real server answering /predict on it, and a short real run on MODEL=tiny-torch
reaching its verdict."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from infbench import config
from infbench.config.model import has_gpu
from infbench.measure import assets
from infbench.paths import HOST, ROOT
from servers.shared.model import forward, load_model, preprocess
from servers.shared.runtimes import (
    TOLERANCE,
    RuntimeUnavailable,
    compare_outputs,
    convert_to_torch,
)
from tests.fixtures.helpers import (
    answers_like_keras,
    convert_cli_refuses,
    free_port,
    quiet_env,
    running,
    short_cycled_run,
)

pytestmark = pytest.mark.integration

# The servers' code with TensorFlow and Keras made unimportable: what a machine with torch
# alone (scripts/gpu-check.sh's) can do with the file. It loads the model, answers the sample
# images, and measures the model alone (servers/image/model_alone.py) on it.
NO_TF = """
import glob, json, sys
sys.modules["tensorflow"] = None
sys.modules["keras"] = None
from pathlib import Path
from servers.image import model_alone
from servers.shared.model import forward, load_model, preprocess
m = load_model(sys.argv[1])
jpegs = [open(p, "rb").read() for p in sorted(glob.glob(sys.argv[2] + "/*.jpg"))]
out = forward(m, preprocess(jpegs, m.input_size), "call")
alone = model_alone.measure(sys.argv[1], Path(sys.argv[2]), [1, 4], "call", 0.2)
print(json.dumps({"kind": m.kind, "size": m.input_size, "out": out.tolist(), "alone": alone}))
"""


@pytest.fixture(scope="module")
def built() -> tuple[Path, Path, Path]:
    """(keras file, .pt file, sample images) of the shipped tiny-torch, through
    assets.ensure_model into the shared build folder: the very path `make build
    MODEL=tiny-torch` takes, and the file the cycled run below finds already built."""
    model = config.load(ROOT / "experiments.toml").model("tiny-torch")
    pt = assets.ensure_model(model, log=False)
    keras = assets.model_path(assets.keras_twin(model))
    return keras, pt, assets.images_dir()


def _sample(images: Path, size: int) -> np.ndarray:
    return preprocess([p.read_bytes() for p in sorted(images.glob("*.jpg"))], size)


def test_torch_outputs_equal_the_keras_files(built: tuple[Path, Path, Path]) -> None:
    keras_file, pt_file, images = built
    assert pt_file.suffix == ".pt" and keras_file.exists()
    keras, torch = load_model(str(keras_file)), load_model(str(pt_file))
    assert (torch.kind, torch.input_size, torch.channels) == ("torch", 32, 3)
    batch = _sample(images, keras.input_size)
    want = forward(keras, batch, "predict_on_batch")
    for style in ("predict", "predict_on_batch", "call"):
        got = forward(torch, batch, style, pad_to=5)  # 24 images: one blank added
        assert got.shape == want.shape == (len(batch), 10)
        agreement = compare_outputs(want, got)  # raises unless they vary, agree and rank alike
        assert agreement.diff <= TOLERANCE


def test_a_conversion_with_one_weight_wrong_is_caught_and_leaves_no_file(
        built: tuple[Path, Path, Path], tmp_path: Path) -> None:
    keras_file, _, images = built
    sample = _sample(images, 32)

    def first_conv_off_by_5_percent(module: object) -> None:
        import torch

        with torch.no_grad():
            module.layers[0].conv.weight.mul_(1.05)  # type: ignore[attr-defined]

    with pytest.raises(ValueError, match=r"differ from the Keras file's|top-1") as info:
        convert_to_torch(keras_file, tmp_path / "wrong.pt", sample,
                         tweak=first_conv_off_by_5_percent)
    assert "\n" not in str(info.value)
    assert list(tmp_path.iterdir()) == []
    # The same conversion untouched passes.
    ok = convert_to_torch(keras_file, tmp_path / "right.pt", sample)
    assert ok.diff <= TOLERANCE and (tmp_path / "right.pt").is_file()


def test_the_file_loads_answers_and_is_measured_without_tensorflow(
        built: tuple[Path, Path, Path], tmp_path: Path) -> None:
    """Its thread settings travel beside the file, as the build writes them: a copy with
    intra_op_threads 1 and inter_op_threads 1 is loaded with torch's pools set so."""
    keras_file, pt_file, images = built
    copy = tmp_path / "tiny.pt"
    shutil.copy(pt_file, copy)
    copy.with_suffix(".json").write_text(json.dumps({"intra_op_threads": 1,
                                                     "inter_op_threads": 1}))
    res = subprocess.run([sys.executable, "-c", NO_TF, str(copy), str(images)], cwd=ROOT,
                         env=quiet_env(), capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    doc = json.loads(res.stdout.strip().splitlines()[-1])
    assert doc["kind"] == "torch" and doc["size"] == 32
    want = forward(load_model(str(keras_file)), _sample(images, 32), "predict_on_batch")
    compare_outputs(want, np.asarray(doc["out"]))
    alone = doc["alone"]
    assert alone["kind"] == "torch" and alone["device"] == "cpu"
    assert alone["threads"].startswith("PyTorch intra-op 1 (asked: 1), inter-op 1 (asked: 1)")
    assert [b["batch"] for b in alone["batches"]] == [1, 4]
    assert all(b["model_images_per_s"] > 0 for b in alone["batches"])


def test_convert_cli_bad_input_is_one_line(built: tuple[Path, Path, Path],
                                           tmp_path: Path) -> None:
    keras_file, _, images = built
    convert_cli_refuses("torch", keras_file, images, tmp_path)


@pytest.fixture(scope="module")
def server(built: tuple[Path, Path, Path],
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    _, pt_file, _ = built
    port = free_port()
    env = quiet_env(INFBENCH_MODEL_PATH=str(pt_file), INFBENCH_MAX_IMAGES="4",
                    INFBENCH_DEVICE="cpu")
    log = tmp_path_factory.mktemp("torch-server") / "server.log"
    argv = [sys.executable, "-m", "uvicorn", "servers.image.app_starlette:app", "--host", HOST,
            "--port", str(port), "--no-access-log"]
    url = f"http://{HOST}:{port}"
    with running(argv, env, log, f"{url}/health", 90.0, grace=10.0):
        yield url


def test_a_server_on_the_torch_model_answers_predict_like_keras(
        server: str, built: tuple[Path, Path, Path]) -> None:
    keras_file, _, images = built
    health = httpx.get(f"{server}/health", timeout=10).json()
    assert (health["kind"], health["device"]) == ("torch", "cpu")
    answers_like_keras(server, keras_file, images)


@pytest.mark.skipif(has_gpu(), reason="a GPU is here: device cuda would load")
def test_cuda_without_a_gpu_is_refused_at_load_in_one_line(
        built: tuple[Path, Path, Path]) -> None:
    """What a server asked for INFBENCH_DEVICE=cuda here stops with at startup (the harness
    refuses device = 'cuda' before that: tests/unit/test_model_formats.py)."""
    _, pt_file, _ = built
    with pytest.raises(RuntimeUnavailable, match=r"device 'cuda': torch .* sees no CUDA") as info:
        load_model(str(pt_file), device="cuda")
    assert "\n" not in str(info.value)
    keras_file = built[0]
    with pytest.raises(RuntimeUnavailable, match="a Keras model runs on TensorFlow as installed"):
        load_model(str(keras_file), device="cuda")


def test_a_short_cycled_run_on_tiny_torch_reaches_a_verdict(
        built: tuple[Path, Path, Path], tmp_path: Path) -> None:
    folder, _ = short_cycled_run(tmp_path, "tiny-torch")
    assert built[1].name in (folder / "manifest.json").read_text()
