"""`infbench export`: a topology as a docker-compose file or Kubernetes manifests, from the same
contract as the runtimes, with the addresses of a bridge network / a cluster; the manifests pass
the offline check (kubectl 1.20's client dry-run still asks a server, so the check is ours)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from infbench import config
from infbench.launch import export
from infbench.launch.contract import ReplicaSpec, Where, replica_env
from infbench.paths import ROOT

pytestmark = pytest.mark.unit

IMAGE = "infbench-server:test"
MODEL_DIR = Path("/models-here")


def exp() -> config.Experiments:
    return config.load(ROOT / "experiments.toml")


def test_compose_resolves_peers_by_service_name() -> None:
    v = exp().variant("queue-replicas-2")
    doc = export.compose(v, IMAGE, MODEL_DIR, "m.keras", 8123)
    assert export.check_compose(doc) == []
    s = doc["services"]
    assert list(s) == ["redis", "model", "api"]
    assert s["model"]["scale"] == 2 and "scale" not in s["api"]
    assert s["api"]["environment"]["INFBENCH_REDIS_URL"] == "redis://redis:6379/0"
    assert s["model"]["environment"]["INFBENCH_MODEL_PATH"] == "/models/m.keras"
    assert s["model"]["volumes"] == ["/models-here:/models:ro"]
    assert "volumes" not in s["redis"]
    assert s["api"]["ports"] == ["127.0.0.1:8123:8000"] and "ports" not in s["model"]
    assert s["api"]["depends_on"] == {"redis": {"condition": "service_healthy"},
                                      "model": {"condition": "service_healthy"}}
    for svc in s.values():  # everything binds every interface of its own namespace
        assert "127.0.0.1" not in " ".join(svc["command"])
        assert "127.0.0.1" not in json.dumps(svc["environment"])
        assert svc["healthcheck"]["test"][0] == "CMD"
    assert s["redis"]["command"][s["redis"]["command"].index("--protected-mode") + 1] == "no"
    assert s["api"]["command"][s["api"]["command"].index("--host") + 1] == "0.0.0.0"


def test_the_environment_is_the_contracts() -> None:
    """The same keys as the harness gives the replica; only addresses and paths differ."""
    v = exp().variant("queue-replicas-2")
    unit = {u.service.name: u for u in export.units(v, "m.keras")}["api"]
    api = v.service("api")
    native = replica_env(ReplicaSpec(
        variant=v, service=api, replica=0, ports={"port": 5555}, out_dir=Path("/x"),
        model_path=Path("/m/m.keras"), sample_interval=1.0, run_id="r",
        peer_env={"INFBENCH_REDIS_URL": "redis://127.0.0.1:1/0", "INFBENCH_REDIS_PORT": "1",
                  "INFBENCH_REDIS_PORT_PORT": "1"}),
        Where(python="p", out="/x", model="/m/m.keras", root="/r"))
    assert set(unit.env) == set(native)


def test_a_setup_task_runs_once_before_its_dependants_in_compose() -> None:
    doc = export.compose(exp().variant("scoring-async"), IMAGE, MODEL_DIR, "m.keras", 8000)
    assert export.check_compose(doc) == []
    s = doc["services"]
    assert s["seed"]["restart"] == "no" and "healthcheck" not in s["seed"]
    assert s["scoring"]["depends_on"]["seed"] == {"condition":
                                                  "service_completed_successfully"}
    assert "redis://features:6379/0" in s["seed"]["command"]


@pytest.mark.parametrize("name", ["queue-replicas-2", "starlette-gunicorn"])
def test_manifests_pass_the_offline_check(name: str) -> None:
    v = exp().variant(name)
    docs = export.manifests(v, IMAGE, MODEL_DIR, "m.keras")
    assert export.check_manifests(docs) == []
    back = export.parse_manifests(export.render("k8s", docs))
    assert back == docs
    kinds = [(d["kind"], d["metadata"]["name"]) for d in back]
    assert kinds == [(k, s.name) for s in config.start_order(name, v)
                     for k in ("Deployment", "Service")]
    deployments = {d["metadata"]["name"]: d for d in back if d["kind"] == "Deployment"}
    for s in v.services:
        c = deployments[s.name]["spec"]["template"]["spec"]["containers"][0]
        assert deployments[s.name]["spec"]["replicas"] == s.replicas
        assert "readinessProbe" in c
        assert deployments[s.name]["spec"]["template"]["spec"]["enableServiceLinks"] is False


def test_the_check_is_not_vacuous() -> None:
    docs = export.manifests(exp().variant("queue-replicas-2"), IMAGE, MODEL_DIR, "m.keras")
    docs[1]["spec"]["selector"] = {"app.kubernetes.io/name": "nobody"}
    docs[2]["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"][
        "port"] = "nope"
    problems = export.check_manifests(docs)
    assert any("matches no Deployment" in p for p in problems)
    assert any("names no container port" in p for p in problems)


@pytest.mark.parametrize(("name", "fmt", "why"), [
    ("alloc-jemalloc", "compose", "LD_PRELOAD"),
    ("scoring-async", "k8s", "setup task"),
    ("queue-replicas-2", "swarm", "FORMAT"),
])
def test_what_cannot_be_exported_is_refused_in_one_line(name: str, fmt: str, why: str) -> None:
    with pytest.raises(export.ExportError) as e:
        export.check_exportable(exp().variant(name), fmt)
    assert why in str(e.value) and "\n" not in str(e.value)


def test_the_command_writes_and_says_where(tmp_path: Path) -> None:
    for fmt in ("compose", "k8s"):
        res = subprocess.run([sys.executable, "-m", "infbench", "export", "queue-fastapi",
                              "--format", fmt, "--out", str(tmp_path), "--image", IMAGE],
                             capture_output=True, text=True, cwd=ROOT, timeout=120)
        assert res.returncode == 0, res.stderr
        path = tmp_path / export.FILE_NAMES[fmt]
        assert f"{fmt}: {path}" in res.stdout and path.stat().st_size > 0
    res = subprocess.run([sys.executable, "-m", "infbench", "export", "alloc-jemalloc",
                          "--out", str(tmp_path / "no"), "--image", IMAGE],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert res.returncode == 1 and not (tmp_path / "no").exists()
