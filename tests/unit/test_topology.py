"""Topologies as data: services, dependency order, placeholders, nested inheritance, and each
config error in one line; the launch contract that both runtimes share."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from infbench import config
from infbench.config import ConfigError, start_order
from infbench.launch.argv import server_argv
from infbench.launch.contract import ReplicaSpec, Where, peer_values, replica_env
from tests.fixtures.synth import load_experiments as load

MODEL = """
[models.tiny]
arch = "tiny_cnn"
input_size = 32
classes = 10

[profiles.smoke]
users = 1
spawn_rate = 1
steps = [{ batch = 1, seconds = 1 }]
"""

QUEUE = MODEL + """
[variants.q]
entry = "api"

[variants.q.services.redis]
server = "redis"

[variants.q.services.model]
server = "module"
module = "servers.queue.worker"
replicas = 2
depends_on = ["redis"]
env = { INFBENCH_QUEUE_BATCH = "1" }

[variants.q.services.api]
server = "uvicorn"
app = "queue-fastapi"
depends_on = ["redis", "model"]
env = { WHERE = "{services.redis.url}", P = "{port}" }

[variants.q-batch]
base = "q"
[variants.q-batch.services.model]
env = { INFBENCH_QUEUE_BATCH = "10" }
replicas = 4
"""


def error(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as e:
        load(tmp_path, text)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_services_start_in_dependency_order(tmp_path: Path) -> None:
    v = load(tmp_path, QUEUE).variant("q")
    assert [s.name for s in start_order("q", v)] == ["redis", "model", "api"]
    assert v.entry == "api" and not v.single
    assert v.service("model").replicas == 2 and v.service("redis").health == "redis"
    assert v.service("redis").gets_model is False


def test_nested_service_tables_inherit_one_by_one(tmp_path: Path) -> None:
    v = load(tmp_path, QUEUE).variant("q-batch")
    model = v.service("model")
    assert model.replicas == 4 and model.env == {"INFBENCH_QUEUE_BATCH": "10"}
    assert model.depends_on == ("redis",) and model.module == "servers.queue.worker"
    assert v.service("api").app == "queue-fastapi" and v.entry == "api"


def test_the_flat_form_is_a_one_service_topology(tmp_path: Path) -> None:
    exp = config.load(Path(__file__).resolve().parents[2] / "experiments.toml")
    v = exp.variant("starlette-gunicorn")
    assert v.single and v.entry == "server" and [s.name for s in v.services] == ["server"]
    assert v.server == "gunicorn" and v.workers == 2  # the entry service's settings


@pytest.mark.parametrize(("snippet", "expected"), [
    ('depends_on2 = ["nope"]', "depends_on: no service 'nope'"),
    ('env = { X = "{services.nope.port}" }', "{services.nope.port}: no service 'nope'"),
    ('env = { X = "{services.redis.ports.admin}" }', "has no port 'admin'"),
    ('env = { X = "{services.model.port}" }', "has 2 replicas"),
    ('env = { X = "{what}" }', "unknown placeholder {what}"),
    ('health_path = "health"', "must start with '/'"),
    ('startup_timeout = nan', "expected a finite number"),
    ('startup_timeout = inf', "expected a finite number"),
    ('replicas = 2', "the entry service takes the load on one port"),
    ('app2 = "queue-flask"', "is a WSGI app; run it with server = 'gunicorn'"),
])
def test_each_topology_error_is_one_line(tmp_path: Path, snippet: str, expected: str) -> None:
    text = QUEUE.replace('env = { WHERE = "{services.redis.url}", P = "{port}" }', snippet)
    if snippet.startswith("depends_on2"):  # replace the key the api already has
        text = text.replace('depends_on = ["redis", "model"]\n', "").replace("depends_on2",
                                                                           "depends_on")
    if snippet.startswith("app2"):
        text = text.replace('app = "queue-fastapi"\n', "").replace("app2", "app")
    assert expected in error(tmp_path, text)


def test_a_dependency_cycle_is_named(tmp_path: Path) -> None:
    text = QUEUE.replace('depends_on = ["redis"]\n', 'depends_on = ["redis", "api"]\n')
    assert "in a circle (model -> api -> model)" in error(tmp_path, text) or \
        "in a circle (api -> model -> api)" in error(tmp_path, text)


def test_entry_must_name_a_service(tmp_path: Path) -> None:
    assert "no service 'web'" in error(tmp_path, QUEUE.replace('entry = "api"', 'entry = "web"'))
    assert "name the service the load is sent to" in error(
        tmp_path, QUEUE.replace('entry = "api"\n', ""))


@pytest.mark.parametrize("bad", ["nan", "inf", "-inf"])
def test_profiles_refuse_non_finite_numbers(tmp_path: Path, bad: str) -> None:
    text = MODEL + f"""
[profiles.p2]
users = 1
spawn_rate = 1
baseline = {bad}
steps = [{{ batch = 1, seconds = 1 }}]
[variants.v]
server = "uvicorn"
"""
    assert "expected a finite number" in error(tmp_path, text)
    assert "finite" in error(tmp_path, text.replace(f"baseline = {bad}", "").replace(
        "seconds = 1", f"seconds = {bad}"))


def test_per_step_users_and_the_ramp(tmp_path: Path) -> None:
    text = MODEL + """
[profiles.ramp]
users = 10
spawn_rate = 1
feedback_weight = 1
predict_weight = 10
on_start = "/"
steps = [{ batch = 1, seconds = 60, users = 50, spawn_rate = 10, until_stable = true },
         { batch = 1, seconds = 60 }]
[variants.v]
server = "uvicorn"
"""
    p = load(tmp_path, text).profile("ramp")
    assert [p.users_of(s) for s in p.steps] == [50, 10]
    assert [p.spawn_rate_of(s) for s in p.steps] == [10.0, 1.0]
    assert p.steps[0].until_stable and not p.steps[1].until_stable
    assert "on_start" in error(tmp_path, text.replace('on_start = "/"', 'on_start = "x"'))


def spec_of(v: config.Variant, service: str, tmp_path: Path, replica: int = 0,
            peers: dict[str, str] | None = None, env: dict[str, str] | None = None
            ) -> ReplicaSpec:
    s = v.service(service)
    ports = {name: 40000 + i for i, name in enumerate(s.ports)}
    return ReplicaSpec(variant=v, service=s, replica=replica, ports=ports,
                       out_dir=tmp_path / service, model_path=tmp_path / "m.keras",
                       sample_interval=0.1, run_id="r", peers=peers or {},
                       peer_env=env or {})


def test_placeholders_and_dependencies_reach_the_replica(tmp_path: Path) -> None:
    v = load(tmp_path, QUEUE).variant("q")
    redis_values, redis_env = peer_values(v.service("redis"), {"port": 6399})
    assert redis_env["INFBENCH_REDIS_URL"] == "redis://127.0.0.1:6399/0"
    spec = spec_of(v, "api", tmp_path, peers=redis_values, env=redis_env)
    where = Where(python="/py", out="/o", model="/m", root="/r")
    env = replica_env(spec, where)
    assert env["WHERE"] == "redis://127.0.0.1:6399/0" and env["P"] == "40000"
    assert env["INFBENCH_REDIS_URL"] == "redis://127.0.0.1:6399/0"
    assert env["INFBENCH_SERVICE"] == "api" and env["INFBENCH_TIMING_DIR"] == "/o"
    worker = spec_of(v, "model", tmp_path, replica=1, peers=redis_values, env=redis_env)
    assert server_argv(worker.service, worker.values(where), "/py") == [
        "/py", "-m", "servers.queue.worker", "--port", "40000"]
    redis = spec_of(v, "redis", tmp_path)
    argv = server_argv(redis.service, redis.values(where), "/py", "/o")
    assert argv[0] == "redis-server" and argv[argv.index("--bind") + 1] == "127.0.0.1"
    assert argv[argv.index("--dir") + 1] == "/o" and "--save" not in argv  # default snapshots
    assert "INFBENCH_MODEL_PATH" not in replica_env(redis, where)


def test_redis_snapshots_off_is_an_argument(tmp_path: Path) -> None:
    text = QUEUE.replace('server = "redis"\n', 'server = "redis"\nargs = ["--save", ""]\n', 1)
    v = load(tmp_path, text).variant("q")
    redis = spec_of(v, "redis", tmp_path)
    where = Where(python="/py", out="/o", model="", root="/r")
    argv = server_argv(redis.service, redis.values(where), "/py", "/o")
    assert argv[-2:] == ["--save", ""]


def test_probes_flag_reaches_only_python_services(tmp_path: Path) -> None:
    v = load(tmp_path, QUEUE).variant("q").with_probes()
    assert v.service("api").probes and v.service("model").probes
    assert not v.service("redis").probes


def test_finite_check_is_on_every_number() -> None:
    with pytest.raises(ConfigError):
        config._check("x", "y", math.nan, (int, float))
