"""One reader per artifact of a run folder, each checking the version of the format it reads.

A run is read long after it was written (`make report`, `compare`, `check` on a run from last
month or another machine), so a reader never guesses: a JSON file with an older `schema` is
migrated here, one function per version step (the steps are the version comments in
infbench/results/schemas.py), so the code above sees one current shape; a
file from a newer infbench is refused in one line naming the file and its version, rather
than misread. Migrated dicts carry `migrated_from` (the version on disk).

The sample files carry no version field; their version is their columns, and their readers
check the columns they need:
  processes.csv      1: time .. threads;  2: + cpu_s, service, replica (read with defaults)
  probes-<pid>.jsonl one JSON object a line with "t" (a torn last line is skipped)
  mprofile.dat       memory-profiler's own format (MEM / CHLD / CMDLINE / FUNC lines)
  Locust CSVs        *_stats.csv (the Aggregated row), *_stats_history.csv (one row a second)
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from infbench.results import schemas
from infbench.results.schemas import RUN_SCHEMA

Migration = Callable[[dict[str, Any]], dict[str, Any]]


class ReadError(ValueError):
    """A file of a run that cannot be read as its format says; one line, naming the file.
    A ValueError, so code that already treats unreadable files as damaged keeps doing so."""


def load_json(path: Path, what: str) -> dict[str, Any]:
    """A JSON object from a file, or a one-line ReadError."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ReadError(f"{path}: no such file") from None
    except OSError as e:
        raise ReadError(f"{path}: cannot read {what}: {e.strerror or type(e).__name__}") from None
    except ValueError as e:
        raise ReadError(f"{path}: {what} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ReadError(f"{path}: {what} is not a JSON object")
    return data


def versioned(path: Path, data: dict[str, Any], what: str, current: int,
              migrations: dict[int, Migration]) -> dict[str, Any]:
    """Check `schema`, migrate an older file step by step up to `current`, refuse a newer one."""
    version = data.get("schema")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ReadError(f"{path}: {what} has no valid schema version ({version!r})")
    if version > current:
        raise ReadError(f"{path}: {what} schema {version} is newer than this infbench reads "
                        f"(up to {current}): update infbench to read it")
    start = version
    while version < current:
        data = migrations[version](dict(data))
        version += 1
        data["schema"] = version
    if start != current:
        data["migrated_from"] = start
    return data


# -- run.json ---------------------------------------------------------------------------------
def _run_1_to_2(d: dict[str, Any]) -> dict[str, Any]:
    # 2 added "harness" (None: the writer is not known, so a `running` file is taken as live,
    # as version 1 readers did), and the statuses partial/degraded (version 1 never wrote them).
    for key in ("harness", "error", "current", "stopped_in", "ended", "wall_seconds"):
        d.setdefault(key, None)
    d.setdefault("results", {})
    return d


def run_json(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "run.json"
    return versioned(path, load_json(path, "run.json"), "run.json", RUN_SCHEMA,
                     {1: _run_1_to_2})


# -- phases.json ------------------------------------------------------------------------------
def _phases_1_to_2(d: dict[str, Any]) -> dict[str, Any]:
    # 2 added per-replica "services", "events" (faults) and a status per step; version 1 ran
    # one server and recorded no faults, so every finished step was complete.
    d.setdefault("services", {})
    d.setdefault("events", [])
    d["phases"] = [dict(p, status=p.get("status") or "complete") if p.get("kind") == "step"
                   else p for p in d.get("phases", [])]
    return d


def _phases_2_to_3(d: dict[str, Any]) -> dict[str, Any]:
    # 3 added the culprit window's phases and "window", and "settled"; a version 2 run opened
    # no window and always ran all its cycles.
    d.setdefault("window", None)
    d.setdefault("settled", None)
    return d


def _phases_3_to_4(d: dict[str, Any]) -> dict[str, Any]:
    # 4 added the crosscheck's "tool" phases: a version 3 run has none.
    return d


def phases_json(variant_dir: Path) -> dict[str, Any]:
    path = variant_dir / "phases.json"
    data = versioned(path, load_json(path, "phases.json"), "phases.json",
                     schemas.PHASES_SCHEMA, {1: _phases_1_to_2, 2: _phases_2_to_3,
                                             3: _phases_3_to_4})
    if not isinstance(data.get("phases"), list):
        raise ReadError(f"{path}: phases.json has no list of phases")
    return data


# -- summary.json -----------------------------------------------------------------------------
def _summary_1_to_2(d: dict[str, Any]) -> dict[str, Any]:
    # 2 added "services", "split", "events"/"faults" and a status per step; version 1 had no
    # topologies and recorded no faults.
    for key in ("services", "split", "breakdown_mb"):
        d.setdefault(key, None)
    d.setdefault("events", [])
    d.setdefault("faults", 0)
    d["steps"] = [dict(s, status=s.get("status") or "complete") for s in d.get("steps", [])]
    return d


def _summary_2_to_3(d: dict[str, Any]) -> dict[str, Any]:
    # 3 added the per-step trust figures (stable windows, memory flattening, the load
    # generator's CPU, open loop, efficiency); a version 2 step did not measure them: unknown.
    d.setdefault("model_alone", None)
    d["steps"] = [{**{k: None for k in ("stable", "memory_flat", "loadgen", "efficiency")},
                   "limited_by_loadgen": None, "open_loop": False, "notes": [], **s}
                  for s in d.get("steps", [])]
    return d


def _summary_3_to_4(d: dict[str, Any]) -> dict[str, Any]:
    # 4 says "no verdict" where the profile runs its sweep once; 1-3 called that
    # "inconclusive" ("0 complete cycle(s) ... need at least 3"). Which runs those are is the
    # writer's own rule (schemas.runs_once): the profile (3 keeps it, from the manifest), else
    # no cycle counted while steps ran.
    v = d.get("verdict")
    if not isinstance(v, dict) or v.get("verdict") != "inconclusive":
        return d
    profile = d.get("profile")
    counted = int(v.get("cycles") or 0)
    if schemas.runs_once(schemas.profile_cycles(profile) if isinstance(profile, dict) else None,
                         counted, bool(d.get("steps"))):
        # The thresholds stay the file's own: "no verdict" applied none.
        d["verdict"] = {**v, "verdict": schemas.NO_VERDICT, "reason": schemas.NO_CYCLES,
                        "cycles": counted, "headline": schemas.NO_VERDICT}
    return d


def _summary_4_to_5(d: dict[str, Any]) -> dict[str, Any]:
    # 5 added the verdict's "culprit"; a version 4 run named none.
    v = d.get("verdict")
    if isinstance(v, dict):
        d["verdict"] = {"culprit": None, **v}
    return d


def _summary_5_to_6(d: dict[str, Any]) -> dict[str, Any]:
    # 6 added "cpu_io"; a version 5 run did not measure it.
    d.setdefault("cpu_io", None)
    return d


def _summary_6_to_7(d: dict[str, Any]) -> dict[str, Any]:
    # 7 added "wire"; a version 6 run captured no packets.
    d.setdefault("wire", None)
    return d


def _summary_7_to_8(d: dict[str, Any]) -> dict[str, Any]:
    # 8 added the machine's limit; a version 7 run's model alone measured no CPU.
    d.setdefault("machine_limit", None)
    d["steps"] = [{"limit": None, **s} for s in d.get("steps", [])]
    return d


def _summary_8_to_9(d: dict[str, Any]) -> dict[str, Any]:
    # 9 added "model_calls"; a version 8 run's servers wrote no model-call lines.
    d.setdefault("model_calls", None)
    return d


def summary_json(variant_dir: Path) -> dict[str, Any]:
    path = variant_dir / "summary.json"
    data = versioned(path, load_json(path, "summary.json"), "summary.json",
                     schemas.SUMMARY_SCHEMA, {1: _summary_1_to_2, 2: _summary_2_to_3,
                                               3: _summary_3_to_4, 4: _summary_4_to_5,
                                               5: _summary_5_to_6, 6: _summary_6_to_7,
                                               7: _summary_7_to_8, 8: _summary_8_to_9})
    for key, kind in (("variant", str), ("memory_mb", dict), ("steps", list),
                      ("totals", dict)):
        if not isinstance(data.get(key), kind):
            raise ReadError(f"{path}: summary.json has no {key!r}")
    return data


# -- model_alone.json -------------------------------------------------------------------------
MODEL_ALONE_CPU = ("model_cpu_ms_per_image", "decode_cpu_ms_per_image",
                   "decode_model_cpu_ms_per_image", "model_cores", "decode_cores",
                   "decode_model_cores", "decode_images_per_s", "decode_median_call_ms")


def _model_alone_1_to_2(d: dict[str, Any]) -> dict[str, Any]:
    # 2 added CPU per image, decode alone and the usable cores; version 1 measured wall time only.
    d.setdefault("cores", None)
    d["batches"] = [{**{k: None for k in MODEL_ALONE_CPU}, **b} if isinstance(b, dict) else b
                    for b in d.get("batches") or []]
    return d


def model_alone_json(variant_dir: Path) -> dict[str, Any] | None:
    """model_alone.json, version-checked and migrated; None when the run did not measure the
    model alone (no file)."""
    path = variant_dir / "model_alone.json"
    if not path.exists():
        return None
    data = versioned(path, load_json(path, "model_alone.json"), "model_alone.json",
                     schemas.MODEL_ALONE_SCHEMA, {1: _model_alone_1_to_2})
    if not isinstance(data.get("batches"), list):
        raise ReadError(f"{path}: model_alone.json has no list of batches")
    return data


# -- wire.json --------------------------------------------------------------------------------
def wire_json(variant_dir: Path) -> dict[str, Any] | None:
    """wire.json, version-checked; None when the run captured no packets (no file)."""
    path = variant_dir / "wire.json"
    if not path.exists():
        return None
    data = versioned(path, load_json(path, "wire.json"), "wire.json", schemas.WIRE_SCHEMA, {})
    if not isinstance(data.get("steps"), list):
        raise ReadError(f"{path}: wire.json has no list of steps")
    return data


# -- manifest.json ----------------------------------------------------------------------------
def manifest_json(variant_dir: Path) -> dict[str, Any]:
    path = variant_dir / "manifest.json"
    return versioned(path, load_json(path, "manifest.json"), "manifest.json",
                     schemas.MANIFEST_SCHEMA, {})


# -- crosscheck.json --------------------------------------------------------------------------
def crosscheck_json(variant_dir: Path) -> dict[str, Any]:
    """A variant's crosscheck (infbench/modes/crosscheck.py): our closed loop beside a tool."""
    path = variant_dir / "crosscheck.json"
    data = versioned(path, load_json(path, "crosscheck.json"), "crosscheck.json",
                     schemas.CROSSCHECK_SCHEMA, {})
    for key, kind in (("variant", str), ("tool", str), ("rounds", list), ("medians", dict),
                      ("tolerance", dict)):
        if not isinstance(data.get(key), kind):
            raise ReadError(f"{path}: crosscheck.json has no {key!r}")
    return data
