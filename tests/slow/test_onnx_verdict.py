"""A short cycled run on MODEL=tiny-onnx reaches its verdict through the CLI: the ONNX Runtime
servers under the whole harness (the conversion and the server on its own are
tests/integration/test_onnx.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures.helpers import short_cycled_run

pytestmark = pytest.mark.integration


def test_a_short_cycled_run_on_tiny_onnx_reaches_a_verdict(tmp_path: Path) -> None:
    folder, _ = short_cycled_run(tmp_path, "tiny-onnx")
    manifest = (folder / "manifest.json").read_text()
    assert ".onnx" in manifest
