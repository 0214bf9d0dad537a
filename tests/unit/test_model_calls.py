"""The model-call lines (servers/shared/model.py's forward, INFBENCH_MODEL_CALLS=1) and what the
harness reads from them (infbench/analysis/model_calls.py, the report's "Model calls" table)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from infbench.analysis import model_calls
from infbench.report import tables
from servers.shared import model as shared_model


class TwoClasses:
    """A stand-in with Keras' predict_on_batch: the forward-pass bookkeeping is what is tested."""

    def predict_on_batch(self, batch: np.ndarray) -> np.ndarray:
        return np.tile(np.array([[0.25, 0.75]], np.float32), (len(batch), 1))


@pytest.fixture
def calls_on(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setenv(shared_model.MODEL_CALLS_ENV, "1")
    monkeypatch.setenv("INFBENCH_TIMING_DIR", str(tmp_path))
    monkeypatch.setattr(shared_model, "_calls", None)
    return tmp_path


def _lines(folder: Path) -> list[dict[str, Any]]:
    shared_model.model_calls_log().flush()
    path = folder / f"calls-{os.getpid()}.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_forward_writes_one_line_per_call_with_padding_and_waits(calls_on: Path) -> None:
    x = np.zeros((3, 4, 4, 3), np.float32)
    out = shared_model.forward(TwoClasses(), x, "predict_on_batch")
    assert out.shape == (3, 2)
    shared_model.forward(TwoClasses(), x, "predict_on_batch", pad_to=4,
                         waited_s=[0.010, 0.030])
    first, second = _lines(calls_on)
    assert first["images"] == 3 and "padded" not in first and "wait_ms" not in first
    assert first["model_ms"] >= 0 and isinstance(first["t"], float)
    assert second["padded"] == 4 and second["wait_ms"] == 20.0
    assert second["wait_max_ms"] == 30.0


def test_off_without_the_setting_or_without_a_folder(monkeypatch: pytest.MonkeyPatch,
                                                      tmp_path: Path) -> None:
    monkeypatch.setattr(shared_model, "_calls", None)
    monkeypatch.delenv(shared_model.MODEL_CALLS_ENV, raising=False)
    monkeypatch.setenv("INFBENCH_TIMING_DIR", str(tmp_path))
    shared_model.forward(TwoClasses(), np.zeros((1, 4, 4, 3), np.float32), "predict_on_batch")
    assert shared_model.model_calls_log().folder is None
    monkeypatch.setattr(shared_model, "_calls", None)
    monkeypatch.setenv(shared_model.MODEL_CALLS_ENV, "1")
    monkeypatch.delenv("INFBENCH_TIMING_DIR")
    assert shared_model.model_calls_log().folder is None
    assert list(tmp_path.iterdir()) == []


def _write(folder: Path, name: str, rows: list[dict[str, Any]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"t": 1')


def test_a_steps_figures_from_two_processes(tmp_path: Path) -> None:
    # Step window [100, 110]: process A makes 4 calls of 8 images, 500 ms each, one of them
    # crossing the window's end by 300 ms; process B 2 calls of 4 images, 250 ms; a call before
    # the window (at 99.9, 200 ms) counts for its 100 ms inside, not as a call of the step.
    _write(tmp_path / "server-0", "calls-11.jsonl",
           [{"t": 99.9, "images": 8, "model_ms": 200.0},
            {"t": 101.0, "images": 8, "model_ms": 500.0, "wait_ms": 4.0, "wait_max_ms": 5.0},
            {"t": 103.0, "images": 8, "model_ms": 500.0, "wait_ms": 6.0, "wait_max_ms": 9.0},
            {"t": 105.0, "images": 8, "model_ms": 500.0, "wait_ms": 2.0, "wait_max_ms": 3.0},
            {"t": 109.8, "images": 8, "model_ms": 500.0, "wait_ms": 8.0, "wait_max_ms": 8.0}])
    _write(tmp_path / "server-1", "calls-12.jsonl",
           [{"t": 102.0, "images": 4, "model_ms": 250.0},
            {"t": 104.0, "images": 4, "model_ms": 250.0}, {"images": 4}])
    found = model_calls.figures(tmp_path, [{"index": 1, "batch": 2, "t_start": 100.0,
                                            "t_end": 110.0},
                                           {"index": 2, "batch": 2, "t_start": 200.0,
                                            "t_end": 210.0}])
    assert found is not None and len(found) == 1  # step 2 had no calls
    f = found[0]
    assert (f["index"], f["calls"], f["images"], f["processes"]) == (1, 6, 40, 2)
    assert f["calls_per_s"] == 0.6 and f["images_per_call"] == 6.67 and f["largest"] == 8
    assert f["requests_per_call"] == 3.33
    assert f["model_ms_p50"] == 500.0 and f["model_ms_per_image"] == 62.5
    # inside: 0.1 + 3 * 0.5 + 0.2 (A) + 2 * 0.25 (B) = 2.3 s over 10 s and 2 processes
    assert f["model_busy"] == 0.115 and f["calls_at_once"] == 1.0
    assert f["wait_ms_p50"] == 5.0 and f["wait_max_ms"] == 9.0


def test_overlapping_calls_count_once_in_busy_and_say_how_many_ran_at_once(
        tmp_path: Path) -> None:
    # A sync app's threadpool: three calls of one process overlap, [100, 101], [100.5, 101.5]
    # and [100.5, 101]: busy 1.5 s of the 10 s window (not their summed 2.5 s), 1.67 at once.
    _write(tmp_path / "server-0", "calls-11.jsonl",
           [{"t": 100.0, "images": 1, "model_ms": 1000.0},
            {"t": 100.5, "images": 1, "model_ms": 1000.0},
            {"t": 100.5, "images": 1, "model_ms": 500.0}])
    found = model_calls.figures(tmp_path, [{"index": 1, "batch": 1, "t_start": 100.0,
                                            "t_end": 110.0}])
    assert found is not None
    assert found[0]["model_busy"] == 0.15 and found[0]["calls_at_once"] == 1.67


def test_none_without_lines_and_the_table_says_what_the_model_did(tmp_path: Path) -> None:
    assert model_calls.figures(tmp_path, [{"index": 1, "batch": 1, "t_start": 0.0,
                                           "t_end": 1.0}]) is None
    row = {"variant": "starlette-batching", "steps": [{"index": 1, "images_per_s": 250.0}],
           "model_calls": [{"index": 1, "batch": 1, "calls": 300, "calls_per_s": 30.0,
                            "images": 7500, "images_per_call": 25.0, "largest": 64,
                            "requests_per_call": 25.0, "model_ms_p50": 30.0,
                            "model_ms_per_image": 1.2, "model_busy": 0.9, "calls_at_once": 1.0,
                            "processes": 1,
                            "wait_ms_p50": 12.0, "wait_max_ms": 40.0}]}
    t = tables.model_calls_table([row])
    assert [list(r) for r in t.rows] == [["starlette-batching", "1", "1", "250.0", "30.0",
                                          "25.0", "64", "25.0", "30.0", "1.20", "90%", "1.0",
                                          "12.0", "40.0"]]
    assert not tables.model_calls_table([{"variant": "x", "steps": []}]).rows
