"""A model's `format` (keras | onnx | torch) in experiments.toml: what is accepted, where its file
goes, the one-line errors, and the equivalence check a conversion must pass (no servers; the
conversions themselves are tests/integration/test_onnx.py and tests/torch/test_torch.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from infbench import config
from infbench.config.model import TORCH_NOT_IN_IMAGE, has_gpu
from infbench.measure import assets
from infbench.paths import ROOT
from servers.shared import model as server_model
from servers.shared.runtimes import MIN_SPREAD, TOLERANCE, TORCH_MISSING, compare_outputs

BASE = """
[study]
variants = ["a"]
profile = "p"
model = "m"

[models.m]
arch = "tiny_cnn"
input_size = 32
{extra}

[profiles.p]
users = 2
spawn_rate = 2
steps = [{{ batch = 1, seconds = 2 }}]

[variants.a]
server = "uvicorn"
"""


def load(tmp_path: Path, extra: str) -> config.Experiments:
    p = tmp_path / "experiments.toml"
    p.write_text(BASE.format(extra=extra))
    return config.load(p)


@pytest.mark.parametrize("fmt", ["onnx", "torch"])
def test_the_shipped_models_are_the_keras_ones_on_another_format(fmt: str) -> None:
    exp = config.load(ROOT / "experiments.toml")
    for name in ("tiny", "small"):
        keras, other = exp.model(name), exp.model(f"{name}-{fmt}")
        assert keras.format == "keras" and other.format == fmt
        for key in ("arch", "input_size", "classes", "seed", "alpha"):
            assert getattr(keras, key) == getattr(other, key), key


def test_torch_settings_are_read_and_the_file_is_a_pt_file(tmp_path: Path) -> None:
    m = load(tmp_path, 'format = "torch"\nintra_op_threads = 1\ninter_op_threads = 2').model("m")
    assert (m.format, m.intra_op_threads, m.inter_op_threads) == ("torch", 1, 2)
    path = assets.model_path(m, tmp_path)
    assert path.suffix == ".pt"
    twin = assets.keras_twin(m)
    assert twin.format == "keras" and twin.intra_op_threads == twin.inter_op_threads == 0


def test_a_built_models_file_name_carries_the_builders_version(tmp_path: Path) -> None:
    """The harness's copy of the builder's version is the builder's; a model of an older
    builder (small's softmax was 0.001 everywhere before its batch norms were calibrated) has
    another name, so it is rebuilt rather than reused."""
    assert assets.MODEL_BUILD == server_model.BUILDER_VERSION
    m = load(tmp_path, "").model("m")
    old = tmp_path / "models" / f"m-{config.fingerprint(m)}.keras"
    assert assets.model_path(m, tmp_path) != old
    assert assets.model_path(m, tmp_path).name == f"m-{config.fingerprint(m, 2)}.keras"


def test_onnx_settings_are_read_and_the_file_is_an_onnx_file(tmp_path: Path) -> None:
    m = load(tmp_path, 'format = "onnx"\nintra_op_threads = 2\ncpu_mem_arena = false').model("m")
    assert (m.format, m.intra_op_threads, m.inter_op_threads, m.cpu_mem_arena) == (
        "onnx", 2, 0, False)
    path = assets.model_path(m, tmp_path)
    assert path.suffix == ".onnx"
    twin = assets.keras_twin(m)
    assert twin.format == "keras" and twin.cpu_mem_arena and twin.intra_op_threads == 0
    assert assets.model_path(twin, tmp_path).suffix == ".keras"
    # Each setting is its own file (the fingerprint differs); the Keras twin is shared.
    other = load(tmp_path, 'format = "onnx"').model("m")
    assert assets.model_path(other, tmp_path) != path
    assert assets.keras_twin(other) == twin


@pytest.mark.parametrize("extra, needle", [
    ('format = "tflite"', "models.m.format: 'tflite' is not one of keras, onnx, torch"),
    ("cpu_mem_arena = false", "models.m.cpu_mem_arena: an ONNX Runtime setting"),
    ('format = "torch"\ncpu_mem_arena = false', "models.m.cpu_mem_arena: an ONNX Runtime"),
    ("intra_op_threads = 2", "models.m.intra_op_threads: a setting of ONNX Runtime and PyTorch"),
    ('format = "torch"\ninter_op_threads = -2', "models.m.inter_op_threads: must be 0"),
    ('format = "onnx"\nintra_op_threads = -1', "models.m.intra_op_threads: must be 0"),
    ('format = "onnx"\ninter_op_threads = "two"', "models.m.inter_op_threads"),
])
def test_format_errors_are_one_line_and_name_the_key(tmp_path: Path, extra: str,
                                                     needle: str) -> None:
    with pytest.raises(config.ConfigError) as info:
        load(tmp_path, extra)
    assert needle in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.skipif(has_gpu(), reason="a GPU is here: device = 'cuda' is allowed (see below)")
def test_device_cuda_is_a_one_line_error_before_anything_starts(tmp_path: Path) -> None:
    p = tmp_path / "experiments.toml"
    p.write_text(BASE.format(extra="") + 'device = "cuda"\n')
    with pytest.raises(config.ConfigError) as info:
        config.load(p)
    msg = str(info.value)
    assert "variants.a.device: 'cuda' " in msg and "\n" not in msg
    assert "has none" in msg
    p.write_text(BASE.format(extra="") + 'device = "tpu"\n')
    with pytest.raises(config.ConfigError, match=r"variants\.a\.device: 'tpu' is not one of cpu"):
        config.load(p)
    p.write_text(BASE.format(extra="") + 'device = "cpu"\n')
    assert config.load(p).variant("a").entry_service.device == "cpu"


def test_the_description_does_not_make_another_file(tmp_path: Path) -> None:
    plain = load(tmp_path, 'format = "onnx"').model("m")
    described = load(tmp_path, 'format = "onnx"\ndescription = "the same, said"').model("m")
    assert described.description and assets.model_path(described, tmp_path) == \
        assets.model_path(plain, tmp_path)


@pytest.fixture
def torch_findable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A `torch` package on the path (the real one where installed, else an empty one found
    first): torch_installed() is true whatever this venv has, so the other rules are tested."""
    fake = tmp_path / "findable"
    (fake / "torch").mkdir(parents=True)
    (fake / "torch" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(fake))
    assert config.torch_installed()


@pytest.fixture
def no_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    """`import torch` fails, as in a venv without it (make torch never ran)."""
    monkeypatch.setitem(sys.modules, "torch", None)
    assert not config.torch_installed()


@pytest.mark.usefixtures("torch_findable")
def test_a_keras_model_on_cuda_and_torch_in_docker_are_refused_before_anything_starts(
        tmp_path: Path) -> None:
    """Variant.check_model, which every run path calls before it starts anything (cuda is
    allowed by the loader only where a GPU is, so the variant is made here directly)."""
    exp = load(tmp_path, "")
    keras = exp.model("m")
    onnx = load(tmp_path, 'format = "onnx"').model("m")
    torch = load(tmp_path, 'format = "torch"').model("m")
    on_gpu = config.one_service("g", server="uvicorn", device="cuda")
    with pytest.raises(config.ConfigError) as info:
        on_gpu.check_model(keras, "native")
    msg = str(info.value)
    assert "variants.g: service 'server' has device = 'cuda'" in msg and "\n" not in msg
    on_gpu.check_model(onnx, "native")
    on_gpu.check_model(torch, "native")
    # Containers get no GPU: cuda under RUNTIME=docker is refused whatever the model.
    with pytest.raises(config.ConfigError) as info:
        on_gpu.check_model(onnx, "docker")
    msg = str(info.value)
    assert "RUNTIME=docker starts containers without a GPU" in msg and "\n" not in msg
    plain = exp.variant("a")
    plain.check_model(torch, "native")
    plain.check_model(onnx, "docker")
    user_pt = config.Model(name="mine", path=str(tmp_path / "mine.pt"))
    for m in (torch, user_pt):
        with pytest.raises(config.ConfigError, match="RUNTIME=docker cannot serve a PyTorch"):
            plain.check_model(m, "docker")
    assert "\n" not in TORCH_NOT_IN_IMAGE


@pytest.mark.usefixtures("no_torch")
def test_a_torch_model_without_torch_is_one_line_naming_make_torch(tmp_path: Path) -> None:
    exp = load(tmp_path, "")
    plain = exp.variant("a")
    torch = load(tmp_path, 'format = "torch"').model("m")
    user_pt = config.Model(name="mine", path=str(tmp_path / "mine.pt"))
    for m in (torch, user_pt):
        with pytest.raises(config.ConfigError) as info:
            plain.check_model(m, "native")
        msg = str(info.value)
        assert msg.startswith(f"model {m.name!r} runs on PyTorch: PyTorch is not installed")
        assert "make torch" in msg and "\n" not in msg
        # Docker's own refusal comes first: torch installed would not help there.
        with pytest.raises(config.ConfigError, match="RUNTIME=docker cannot serve a PyTorch"):
            plain.check_model(m, "docker")
    for fine in (exp.model("m"), load(tmp_path, 'format = "onnx"').model("m")):
        plain.check_model(fine, "native")
    # Building one is refused before its Keras file is built.
    with pytest.raises(assets.AssetError, match=r"converted to PyTorch: .*make torch"):
        assets.ensure_model(torch, tmp_path / "build", log=False)
    assert not (tmp_path / "build").exists()


# The CLI in a child where `import torch` fails, as in a venv without it: nothing else changed.
WITHOUT_TORCH = ("import sys; sys.modules['torch'] = None; from infbench.cli.main import main; "
                 "sys.exit(main(sys.argv[1:]))")


@pytest.mark.parametrize("command", [
    ["run", "starlette-uvicorn", "--model", "tiny-torch", "--profile", "quick"],
    ["build", "starlette-uvicorn", "--model", "small-torch"],
    ["gpu-pack", "--models", "tiny"],
])
def test_the_cli_without_torch_stops_in_one_line_before_anything_starts(
        tmp_path: Path, command: list[str]) -> None:
    results, pack = tmp_path / "results", tmp_path / "pack"
    extra = ["--out", str(pack)] if command[0] == "gpu-pack" else []
    res = subprocess.run([sys.executable, "-c", WITHOUT_TORCH, "--results", str(results),
                          *command, *extra], cwd=ROOT, capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 1, res.stdout + res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "PyTorch is not installed" in lines[0], lines
    assert "make torch" in lines[0]
    assert res.stdout == ""  # no progress line: nothing was built or started
    assert not results.exists() and not pack.exists()


def test_a_server_loading_a_pt_file_without_torch_says_make_torch(tmp_path: Path) -> None:
    """What a server started by hand on a .pt file stops with where torch is missing: the
    runtime's one line, not a bare ImportError (the file is not even read)."""
    pt = tmp_path / "m.pt"
    pt.write_bytes(b"not read")
    code = ("import sys; sys.modules['torch'] = None\n"
            "from servers.shared.model import load_model\n"
            "from servers.shared.runtimes import RuntimeUnavailable\n"
            "try:\n    load_model(sys.argv[1])\n"
            "except RuntimeUnavailable as e:\n    print(e)\n    sys.exit(3)\n")
    res = subprocess.run([sys.executable, "-c", code, str(pt)], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 3, res.stderr[-1500:]
    assert res.stdout.strip() == TORCH_MISSING and "make torch" in TORCH_MISSING


def test_the_cli_refuses_torch_in_docker_in_one_line(tmp_path: Path) -> None:
    res = subprocess.run([sys.executable, "-m", "infbench", "build", "--model", "tiny-torch",
                          "--runtime", "docker"], cwd=ROOT, capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "RUNTIME=docker cannot serve a PyTorch model" in lines[0], lines


# -- the equivalence check -----------------------------------------------------------------


def _outputs(seed: int = 0, n: int = 6, k: int = 10) -> np.ndarray:
    logits = np.random.default_rng(seed).normal(0, 2, (n, k))
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_outputs_that_agree_pass_and_say_how_well() -> None:
    want = _outputs()
    got = want + np.random.default_rng(1).uniform(-TOLERANCE / 2, TOLERANCE / 2, want.shape)
    a = compare_outputs(want, got)
    assert a.diff <= TOLERANCE and a.spread > MIN_SPREAD * TOLERANCE and a.images == 6
    assert a.top1_classes == len(set(want.argmax(axis=1).tolist()))
    assert "6 sample images" in a.describe()


def test_a_model_that_answers_the_same_for_every_image_cannot_pass() -> None:
    """The old `small`: 0.001 for each of 1000 classes on every image. Any conversion that also
    answers a constant matched it; now the check refuses to call that a match."""
    want = np.full((24, 1000), 0.001)
    with pytest.raises(ValueError, match="barely vary across the 24 sample images"):
        compare_outputs(want, want.copy())


@pytest.mark.parametrize("damage, needle", [
    (lambda g: g + 3 * TOLERANCE, "differ from the Keras file's by"),
    (lambda g: g[:, ::-1], "differ from the Keras file's by"),
    (lambda g: g[:, :5], "have shape"),
    (lambda g: np.where(g > 0.5, np.nan, g), "not all finite"),
])
def test_a_wrong_conversion_is_caught(damage: object, needle: str) -> None:
    want = _outputs()
    with pytest.raises(ValueError, match=needle) as info:
        compare_outputs(want, damage(want.copy()))  # type: ignore[operator]
    assert "\n" not in str(info.value)


def test_a_different_top1_class_is_caught_even_within_the_tolerance() -> None:
    tol = 4e-4
    want = _outputs(n=4, k=3)
    want[0] = [0.5003, 0.4997, 0.0]  # a clear winner, by more than the tolerance
    want[1] = [0.0, 0.5, 0.5]  # a tie: either class is right
    got = want.copy()
    got[1] = [0.0, 0.49999, 0.50001]
    compare_outputs(want, got, tolerance=tol)
    got[0] = [0.49995, 0.50005, 0.0]  # each within 3.5e-4 of the right answer, another top-1
    with pytest.raises(ValueError, match=r"top-1 class differs .* on 1 of 4 sample images"):
        compare_outputs(want, got, tolerance=tol)
