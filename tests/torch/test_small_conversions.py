"""The `small` model, where the equivalence check used to prove nothing (its softmax was 0.001
for every class on every image): built by the harness, its outputs now vary across the sample
images, and a torch conversion with one layer deep in the network 5% off is caught, while the
faithful one passes (minutes: MobileNetV2 is built and converted for real)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from infbench import config
from infbench.measure import assets
from infbench.paths import ROOT
from servers.shared.model import forward, load_model, preprocess
from servers.shared.runtimes import MIN_SPREAD, TOLERANCE, convert_to_torch


@pytest.fixture(scope="module")
def small() -> tuple[Path, np.ndarray]:
    model = config.load(ROOT / "experiments.toml").model("small")
    path = assets.ensure_model(model, log=False)
    jpegs = [p.read_bytes() for p in assets.ensure_images()]
    return path, preprocess(jpegs, model.input_size)


def test_smalls_outputs_vary_across_the_sample_images(small: tuple[Path, np.ndarray]) -> None:
    path, sample = small
    out = forward(load_model(str(path)), sample, "predict_on_batch")
    assert out.shape == (24, 1000)
    assert float(out.std(axis=0).max()) > MIN_SPREAD * TOLERANCE
    assert float(out.max()) > 10 * 0.001  # far from the uniform 1/1000
    assert len(set(out.argmax(axis=1).tolist())) >= 2


def test_a_wrong_torch_conversion_of_small_is_caught(small: tuple[Path, np.ndarray],
                                                     tmp_path: Path) -> None:
    path, sample = small

    def one_block_off(module: object) -> None:
        import torch

        convs = [m for m in module.layers if hasattr(m, "conv")]  # type: ignore[attr-defined]
        with torch.no_grad():
            convs[len(convs) // 2].conv.weight.mul_(1.05)

    with pytest.raises(ValueError, match=r"differ from the Keras file's|top-1"):
        convert_to_torch(path, tmp_path / "wrong.pt", sample, tweak=one_block_off)
    assert not list(tmp_path.iterdir())
    ok = convert_to_torch(path, tmp_path / "right.pt", sample)
    assert ok.diff <= TOLERANCE and ok.spread > MIN_SPREAD * TOLERANCE
