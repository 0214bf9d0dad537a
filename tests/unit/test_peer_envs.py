"""The peer environments as config (venv = "<peer>": one lock per peer under servers/peers/) and
the build's bookkeeping (the stamp keyed by the lock's hash); the builds themselves run in
tests/peers/."""

from __future__ import annotations

from pathlib import Path

import pytest

from infbench import config
from infbench.config import envs as config_envs
from infbench.launch import LaunchError, envs
from infbench.launch.contract import ReplicaSpec
from infbench.launch.native import native_where
from infbench.paths import ROOT
from tests.fixtures.synth import load_experiments as load

GOOD = """
[models.m]
arch = "tiny_cnn"
input_size = 32

[profiles.p]
users = 2
spawn_rate = 2
steps = [{ batch = 1, seconds = 2 }]

[variants.a]
server = "command"
venv = "mlserver"
command = ["{python}", "-m", "mlserver.cli.main", "start", "{out}"]
"""


def test_each_peer_has_a_lock_of_exact_pins_with_our_tensorflow() -> None:
    assert config_envs.known() == ("bentoml", "mlserver", "ray")
    ours = {line.split("==")[0].lower().replace("_", "-"): line.split("==")[1]
            for line in (ROOT / "requirements.lock").read_text().splitlines()
            if "==" in line and not line.startswith("#")}
    for name in config_envs.known():
        pins = [line for line in config_envs.lock_file(name).read_text().splitlines()
                if line and not line.startswith("#")]
        assert pins and all("==" in line for line in pins), name
        found = {p.split("==")[0].lower().replace("_", "-"): p.split("==")[1] for p in pins}
        for same in ("tensorflow-cpu", "keras", "numpy", "pillow"):
            assert found[same] == ours[same], (name, same)


def test_a_service_names_a_peer_environment(tmp_path: Path) -> None:
    v = load(tmp_path, GOOD).variant("a")
    assert v.venv == "mlserver" and v.entry_service.uses_python  # the probes can be injected
    spec = ReplicaSpec(variant=v, service=v.entry_service, replica=0, ports={"port": 1},
                       out_dir=tmp_path, model_path=None, sample_interval=0.1, run_id="r")
    assert native_where(spec).python == str(config_envs.env_dir("mlserver") / "bin" / "python")


@pytest.mark.parametrize(("old", "new", "message"), [
    ('venv = "mlserver"', 'venv = "triton"', r"variants\.a\.venv: unknown peer environment "
                                              r"'triton' \(known: bentoml, mlserver, ray"),
    ('server = "command"', 'server = "uvicorn"', r"variants\.a\.venv: only used with server = "
                                                  r"'module' or 'command'"),
    ('venv = "mlserver"', 'venv = 1', r"variants\.a\.venv: expected str, got int"),
])
def test_a_wrong_environment_is_one_line(tmp_path: Path, old: str, new: str,
                                         message: str) -> None:
    text = GOOD.replace(old, new)
    if new.startswith("server = "):
        text = text.replace('command = ["{python}", "-m", "mlserver.cli.main", "start", "{out}"]',
                            "")
    with pytest.raises(config.ConfigError, match=message) as e:
        load(tmp_path, text)
    assert "\n" not in str(e.value)


def test_the_stamp_is_the_locks_hash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(config_envs.ENVS_VAR, str(tmp_path))
    assert config_envs.env_dir("ray") == tmp_path / "ray"
    assert not envs.ready("ray")
    (tmp_path / "ray" / "bin").mkdir(parents=True)
    (tmp_path / "ray" / "bin" / "python").touch()
    (tmp_path / "ray" / envs.STAMP).write_text(envs.lock_hash("ray") + "\n")
    assert envs.ready("ray")
    (tmp_path / "ray" / envs.STAMP).write_text("0" * 16 + "\n")  # built from another lock
    assert not envs.ready("ray")
    assert envs.lock_hash("ray") != envs.lock_hash("mlserver")
    with pytest.raises(LaunchError, match="unknown peer environment 'nope'"):
        envs.ensure("nope", print)


def test_a_peer_environment_is_native_only(tmp_path: Path) -> None:
    from infbench.launch.export import ExportError, check_exportable

    v = load(tmp_path, GOOD).variant("a")
    with pytest.raises(ExportError, match="peer environment 'mlserver'"):
        check_exportable(v, "compose")
