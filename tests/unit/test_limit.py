"""The machine's limit: the model alone's CPU per image and the usable cores in, the limit and
each step's share of it out, on synthetic files with known answers (tests/fixtures/synth.py);
the child's cgroup quota reader on fake cgroup trees."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any

import pytest

from infbench.analysis import limit, summary
from infbench.report import build, markdown, tables
from infbench.results import readers, schemas
from servers.image import model_alone as child
from tests.fixtures.synth import add_service_cpu, make_variant, write_loadgen


def alone_v2(cores: float = 2.0) -> dict[str, Any]:
    """Batch 2: decode 1.5 + model 8.5 = 10 ms of CPU an image; batch 4: 1.5 + 3.5 = 5 ms."""
    return {"schema": 2, "model": "m", "call": "predict_on_batch",
            "cores": {"usable": cores, "affinity": 2, "cpu_count": 2, "cgroup_quota": None,
                      "cgroup_quota_from": None, "source": "affinity"},
            "batches": [
                {"batch": 2, "decode_model_images_per_s": 19.2, "model_images_per_s": 40.0,
                 "decode_cpu_ms_per_image": 1.5, "model_cpu_ms_per_image": 8.5,
                 "model_cores": 1.4},
                {"batch": 4, "decode_model_images_per_s": 30.0, "model_images_per_s": 90.0,
                 "decode_cpu_ms_per_image": 1.5, "model_cpu_ms_per_image": 3.5,
                 "model_cores": 1.8}]}


def test_the_limit_is_the_cores_over_decode_plus_model_cpu_at_the_best_batch() -> None:
    m = limit.machine_limit(alone_v2())
    assert m is not None
    assert (m["best_batch"], m["cpu_ms_per_image"], m["images_per_s"]) == (4, 5.0, 400.0)
    assert [(b["batch"], b["images_per_s"]) for b in m["batches"]] == [(2, 200.0), (4, 400.0)]
    assert m["usable_cores"] == 2.0 and m["cores_from"] == "affinity" and m["why"] is None
    assert m["busy"] is None  # no decode_cores figure: nothing said
    half = limit.machine_limit(alone_v2(cores=1.5))  # a cgroup quota of 1.5 cores
    assert half is not None and half["images_per_s"] == 300.0


def test_a_step_against_the_limit_and_net_of_the_load_generator() -> None:
    m = limit.machine_limit(alone_v2())
    step = {"index": 1, "batch": 2, "images_per_s": 240.0, "loadgen": {"total_cpu_pct": 40.0}}
    io_ = {"steps": [{"service": "api", "index": 1, "cpu_ms_per_request": 12.0, "cpu_pct": 90,
                      "main_thread_cpu_ms_per_request": 3.0},
                     {"service": "model", "index": 1, "cpu_ms_per_request": 4.0, "cpu_pct": 50,
                      "main_thread_cpu_ms_per_request": None},
                     {"service": "api", "index": 2, "cpu_ms_per_request": 99.0}]}
    s = limit.step_limit(m, step, io_)
    assert s is not None
    assert (s["images_per_s"], s["fraction"]) == (400.0, 0.6)
    # 2 cores - 0.4 for Locust = 1.6 cores over 5 ms an image = 320 images/s
    assert (s["loadgen_cores"], s["images_per_s_net"], s["fraction_net"]) == (0.4, 320.0, 0.75)
    # (12 + 4) ms a request of 2 images: 8 ms an image, 3 more than decode + model
    assert (s["server_cpu_ms_per_image"], s["beyond_model_cpu_ms_per_image"]) == (8.0, 3.0)
    assert s["main_thread_cpu_ms_per_image"] == 1.5  # the api's loop: 3 ms a request of 2
    assert (s["server_cores"], s["busy_cores"]) == (1.4, 1.8)
    # What stops it, from the CPU figures: 1.4 of the 2 cores busy, and 5 of the server's 8 ms
    # an image is what decode + model cost alone at the best batch.
    assert (s["cores_share"], s["cpu_share"]) == (0.7, 0.625)
    bare = limit.step_limit(m, {"index": 3, "batch": 1, "images_per_s": 100.0})
    assert bare is not None and bare["fraction"] == 0.25 and bare["images_per_s_net"] is None
    assert bare["server_cpu_ms_per_image"] is None and bare["busy_cores"] is None
    assert bare["main_thread_cpu_ms_per_image"] is None
    # A generator that used every core leaves no limit to be a share of.
    full = limit.step_limit(m, {**step, "loadgen": {"total_cpu_pct": 200.0}}, io_)
    assert full is not None and full["images_per_s_net"] is None and full["fraction_net"] is None


def test_a_steps_limit_decodes_its_own_images_and_runs_the_model_at_its_cheapest_batch(
) -> None:
    alone = alone_v2()
    alone["batches"][0]["decode_cpu_ms_per_image"] = 1.0  # the first sample image is small
    alone["batches"][1]["decode_cpu_ms_per_image"] = 2.0
    m = limit.machine_limit(alone)
    assert m is not None and (m["best_batch"], m["cpu_ms_per_image"]) == (4, 5.5)
    assert m["images_per_s"] == round(2000 / 5.5, 1) and m["model_best_batch"] == 4
    two = limit.step_limit(m, {"index": 1, "batch": 2, "images_per_s": 100.0})
    assert two is not None and (two["cpu_ms_per_image"], two["images_per_s"]) == (4.5, 444.4)
    assert (two["decode_from_batch"], two["model_from_batch"]) == (2, 4)
    other = limit.step_limit(m, {"index": 2, "batch": 3, "images_per_s": 100.0})  # unmeasured
    assert other is not None and other["images_per_s"] == m["images_per_s"]
    assert other["decode_from_batch"] == 4


@pytest.mark.parametrize(("decode_cores", "busy"), [(0.98, False), (0.5, True)])
def test_a_model_alone_that_shared_its_cores_is_said(decode_cores: float, busy: bool) -> None:
    alone = alone_v2()
    for b in alone["batches"]:
        b["decode_cores"] = decode_cores
    m = limit.machine_limit(alone)
    assert m is not None and m["images_per_s"] == 400.0
    assert (m["busy"] is not None) == busy
    row = tables.machine_limit_table([{"variant": "v", "machine_limit": m}]).rows[0]
    assert ("read with care" in row[-1]) == busy
    if busy:
        assert "kept 0.50 of a core busy" in m["busy"]


def test_no_limit_is_said_not_guessed() -> None:
    assert limit.machine_limit(None) is None  # the run did not measure the model alone
    old = limit.machine_limit({"batches": [{"batch": 2, "decode_cpu_ms_per_image": None,
                                            "model_cpu_ms_per_image": None}], "cores": None})
    assert old is not None and old["images_per_s"] is None and "before version 2" in old["why"]
    coreless = limit.machine_limit({**alone_v2(), "cores": None})
    assert coreless is not None and coreless["images_per_s"] is None
    assert "usable cores" in coreless["why"]
    bad = limit.machine_limit({"error": "x.json: model_alone.json schema 9 is newer",
                               "batches": []})
    assert bad is not None and bad["why"].endswith("schema 9 is newer")
    assert limit.step_limit(old, {"index": 1, "batch": 2, "images_per_s": 9.0}) is None


def test_model_alone_json_1_is_migrated_and_a_newer_one_refused(tmp_path: Path) -> None:
    assert child.SCHEMA == schemas.MODEL_ALONE_SCHEMA == 2  # the writer and the readers agree
    (tmp_path / "model_alone.json").write_text(json.dumps({"schema": 1, "batches": [
        {"batch": 2, "decode_model_images_per_s": 19.2, "model_images_per_s": 40.0}]}))
    doc = readers.model_alone_json(tmp_path)
    assert doc is not None and doc["migrated_from"] == 1 and doc["cores"] is None
    b = doc["batches"][0]
    assert b["decode_model_images_per_s"] == 19.2 and b["model_cpu_ms_per_image"] is None
    (tmp_path / "model_alone.json").write_text(json.dumps({"schema": 3, "batches": []}))
    with pytest.raises(readers.ReadError, match=r"model_alone\.json schema 3 is newer"):
        readers.model_alone_json(tmp_path)
    assert readers.model_alone_json(tmp_path / "absent") is None


def synthetic(tmp_path: Path) -> Path:
    """make_variant's steps (48 requests of 2 images at 4.8 req/s in 10-20 s, then 30 of 4),
    one service at 1.2 cores, Locust at 0.4 core in step 1, and alone_v2's model alone."""
    d = make_variant(tmp_path)
    add_service_cpu(d, {1: 1.2}, main=0.3)
    write_loadgen(d / "step1-b2_loadgen.csv", 0.4, 0.0, seconds=52)
    (d / "model_alone.json").write_text(json.dumps(alone_v2()))
    return d


def test_the_summary_and_the_report_carry_the_limit(tmp_path: Path) -> None:
    s = summary.summarize_variant(synthetic(tmp_path))
    assert s["schema"] == schemas.SUMMARY_SCHEMA == 9
    assert s["machine_limit"]["images_per_s"] == 400.0
    assert "machine_limit" in s["definitions"] and "limit" in s["definitions"]
    one, two = s["steps"]
    # served: the 47 of 48 requests that succeeded, 4.8 x 47/48 x 2 images
    assert one["images_per_s"] == 9.4 and one["efficiency"]["efficiency"] == 0.49
    lim = one["limit"]
    assert lim["fraction"] == 0.024 and lim["loadgen_cores"] == pytest.approx(0.4, abs=0.01)
    assert lim["images_per_s_net"] == pytest.approx(320.0, abs=2)
    # 12 s (load and drain) at 1.2 cores over 48 requests of 2 images: 150 ms an image
    assert lim["server_cpu_ms_per_image"] == pytest.approx(150.0, abs=2.0)
    assert lim["beyond_model_cpu_ms_per_image"] == pytest.approx(145.0, abs=2.0)
    assert lim["main_thread_cpu_ms_per_image"] == pytest.approx(37.5, abs=0.5)  # 0.3 core
    assert lim["cores_share"] == pytest.approx(0.6, abs=0.01)  # 1.2 of 2 cores
    assert lim["cpu_share"] == pytest.approx(5 / 150, abs=0.001)
    assert two["limit"]["fraction"] == 0.03 and two["limit"]["loadgen_cores"] is None

    machine = tables.machine_limit_table([s])
    assert machine.rows[0][:3] == ("v1", "2 (affinity)", "4")
    assert machine.rows[0][7] == "400" and machine.rows[0][8] == "b2: 200, b4: 400"
    served = tables.limit_table([s])
    first = served.rows[0]
    assert first[:8] == ("v1", "1", "2", "9.4", "19.2", "0.49", "400", "0.02")
    assert first[9] in ("319", "320", "321")
    steps = tables.steps_table([s])
    assert "of the limit" in steps.columns[steps.columns.index(">efficiency") + 1]
    text = "\n".join(markdown.section(machine) + markdown.section(served))
    assert "## The machine's limit (model alone, CPU per image)" in text
    assert "usable cores (CPU affinity, capped by a cgroup CPU quota)" in text

    out = io.StringIO()
    csv.writer(out).writerows(build.csv_rows([s]))
    row = dict(zip(*csv.reader(io.StringIO(out.getvalue())), strict=True))
    assert row["s1_b2_limit_images_per_s"] == "400.0" and row["s1_b2_limit_fraction"] == "0.024"
    assert row["s2_b4_limit_fraction_net"] == ""  # no load generator file in step 2


def test_a_run_without_cpu_figures_says_why_in_its_table(tmp_path: Path) -> None:
    d = make_variant(tmp_path)
    (d / "model_alone.json").write_text(json.dumps({"schema": 1, "batches": [
        {"batch": 2, "decode_model_images_per_s": 19.2, "model_images_per_s": 40.0}]}))
    s = summary.summarize_variant(d)
    assert s["steps"][0]["efficiency"]["efficiency"] == 0.49  # the reference is still there
    assert s["steps"][0]["limit"] is None and s["machine_limit"]["images_per_s"] is None
    row = tables.machine_limit_table([s]).rows[0]
    assert row[-1].startswith("no limit: the model alone measured no CPU per image")
    assert not tables.limit_table([s]).rows


# -- the child's usable cores ---------------------------------------------------------------
def cgroup_tree(tmp_path: Path, lines: str, files: dict[str, str]) -> tuple[Path, Path]:
    root = tmp_path / "cg"
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    me = tmp_path / "self_cgroup"
    me.write_text(lines)
    return root, me


def test_cgroup_v2_quota_is_the_tightest_of_the_process_and_its_ancestors(tmp_path: Path
                                                                           ) -> None:
    root, me = cgroup_tree(tmp_path, "0::/a/b\n", {
        "cpu.max": "max 100000\n", "a/cpu.max": "150000 100000\n", "a/b/cpu.max": "max 100000\n"})
    quota, where = child._cgroup_quota(root, me)
    assert quota == 1.5 and where == str(root / "a")
    root2, me2 = cgroup_tree(tmp_path / "none", "0::/\n", {"cpu.max": "max 100000\n"})
    assert child._cgroup_quota(root2, me2) == (None, None)


def test_cgroup_v1_quota_and_none(tmp_path: Path) -> None:
    root, me = cgroup_tree(tmp_path, "4:memory:/x\n3:cpu,cpuacct:/x\n", {
        "cpu,cpuacct/cpu.cfs_quota_us": "-1\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n",
        "cpu,cpuacct/x/cpu.cfs_quota_us": "50000\n",
        "cpu,cpuacct/x/cpu.cfs_period_us": "100000\n"})
    assert child._cgroup_quota(root, me) == (0.5, str(root / "cpu,cpuacct" / "x"))
    # A namespaced path that is not under the mount (a container's view): its root is read.
    root2, me2 = cgroup_tree(tmp_path / "ns", "1:cpu:/docker/abc\n", {
        "cpu/cpu.cfs_quota_us": "200000\n", "cpu/cpu.cfs_period_us": "100000\n"})
    assert child._cgroup_quota(root2, me2) == (2.0, str(root2 / "cpu"))
    quota, why = child._cgroup_quota(root2, tmp_path / "missing")
    assert quota is None and why and why.startswith("unreadable: ") and "missing" in why


def test_usable_cores_of_this_process_are_its_affinity_or_less() -> None:
    c = child.usable_cores()
    assert c["affinity"] == len(os.sched_getaffinity(0))
    assert c["usable"] == min([float(c["affinity"]), *([c["cgroup_quota"]]
                                                       if c["cgroup_quota"] else [])])


def test_an_unreadable_cgroup_is_said_in_the_cores_source(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    why = child._cgroup_quota(tmp_path, tmp_path / "missing")[1]
    monkeypatch.setattr(child, "_cgroup_quota", lambda: (None, why))
    c = child.usable_cores()
    assert c["usable"] == c["affinity"] and c["cgroup_quota"] is None
    assert c["source"].startswith("affinity (cgroup quota unreadable: ")
