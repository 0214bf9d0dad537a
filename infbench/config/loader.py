"""experiments.toml loaded: every table checked, inheritance (`extends`) resolved, into the
dataclasses of infbench/config/model.py.

Every problem is a `ConfigError` with one line that names the file, the table and the key, so
the CLI can print it and exit 1 before anything starts.
"""

from __future__ import annotations

import math
import re
import tomllib
import urllib.parse
from pathlib import Path
from typing import Any

from infbench.config import envs
from infbench.config.graph import (
    check_topology,
)
from infbench.config.model import (
    ALLOCATORS,
    APP_MAX_BATCH,
    APPS,
    B64_MARK,
    BODIES,
    CALL_STYLES,
    CULPRIT_MODES,
    DEVICES,
    ENDPOINTS,
    HEALTH_KINDS,
    IMAGE_MARKS,
    IMAGES_MARK,
    MAX_IMAGES_ENV,
    METHODS,
    MODEL_FORMATS,
    SERVERS,
    THREADED_FORMATS,
    ConfigError,
    Experiments,
    Model,
    Profile,
    Request,
    Service,
    Step,
    Study,
    Variant,
    no_cuda,
)
from infbench.config.schedule import ARRIVALS
from infbench.config.servers import APP_MODULES, SERVER_KINDS


def _type_name(expected: Any) -> str:
    if isinstance(expected, tuple):
        return " or ".join(t.__name__ for t in expected)
    return str(expected.__name__)


def _check(where: str, key: str, value: Any, expected: Any) -> Any:
    # bool is an int in Python; a TOML `true` where a number belongs is still a mistake.
    bad_bool = isinstance(value, bool) and bool not in (
        expected if isinstance(expected, tuple) else (expected,)
    )
    if bad_bool or not isinstance(value, expected):
        raise ConfigError(
            f"{where}.{key}: expected {_type_name(expected)}, got {type(value).__name__} "
            f"{value!r}"
        )
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{where}.{key}: expected a finite number, got {value!r}")
    return value


def _fields(
    where: str, table: Any, spec: dict[str, Any], required: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Check a TOML table against {key: type}; reject unknown keys and missing required ones."""
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: expected a table, got {type(table).__name__}")
    unknown = sorted(set(table) - set(spec))
    if unknown:
        raise ConfigError(
            f"{where}: unknown key {unknown[0]!r} (known: {', '.join(sorted(spec))})"
        )
    missing = [k for k in required if k not in table]
    if missing:
        raise ConfigError(f"{where}: missing required key {missing[0]!r}")
    return {k: _check(where, k, v, spec[k]) for k, v in table.items()}


def _positive(where: str, key: str, value: float, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{where}.{key}: must be {bound}, got {value!r}")


def _one_of(where: str, key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{where}.{key}: {value!r} is not one of {', '.join(choices)}")


NUM = (int, float)


def _load_model(name: str, table: Any, base: Path) -> Model:
    where = f"models.{name}"
    spec = {"description": str, "arch": str, "input_size": int, "classes": int, "seed": int,
            "alpha": NUM, "path": str, "format": str, "intra_op_threads": int,
            "inter_op_threads": int, "cpu_mem_arena": bool}
    values = _fields(where, table, spec)
    fmt = values.get("format", "keras")
    _one_of(where, "format", fmt, MODEL_FORMATS)
    for key in ("intra_op_threads", "inter_op_threads"):
        if key in values and fmt not in THREADED_FORMATS:
            raise ConfigError(f"{where}.{key}: a setting of ONNX Runtime and PyTorch, but the "
                              f"model's format is {fmt!r}; set format = 'onnx' or 'torch', or "
                              "drop it")
        if values.get(key, 0) < 0:
            raise ConfigError(f"{where}.{key}: must be 0 (the runtime's default) or more")
    if "cpu_mem_arena" in values and fmt != "onnx":
        raise ConfigError(f"{where}.cpu_mem_arena: an ONNX Runtime setting, but the model's "
                          f"format is {fmt!r}; set format = 'onnx' or drop it")
    if fmt != "keras" and "path" in values:
        raise ConfigError(f"{where}: format = {fmt!r} converts a model we build (arch, "
                          "input_size); a file of yours ('path') is loaded as it is")
    if "path" in values:
        p = Path(values["path"]).expanduser()
        values["path"] = str(p if p.is_absolute() else (base / p))
    elif "arch" not in values or "input_size" not in values:
        raise ConfigError(f"{where}: needs either 'path' (your model file) or 'arch' and "
                          "'input_size' (a model we build)")
    else:
        _positive(where, "input_size", values["input_size"])
        _positive(where, "classes", values.get("classes", 1000))
    if "alpha" in values:
        values["alpha"] = float(values["alpha"])
    return Model(name=name, **values)


def _load_profile(name: str, table: Any) -> Profile:
    where = f"profiles.{name}"
    spec = {"description": str, "users": int, "spawn_rate": NUM, "steps": list,
            "baseline": NUM, "pause": NUM, "cooldown": NUM, "drain_timeout": NUM,
            "request_timeout": NUM, "wait": list, "sample_interval": NUM, "cycles": int,
            "rest": NUM, "feedback_weight": int, "predict_weight": int, "on_start": str,
            "stable_window_s": NUM, "stable_windows": int, "stable_tolerance": NUM,
            "p95_bound_ms": NUM, "rate": NUM, "arrival": str, "arrival_seed": int,
            "max_in_flight": int, "model_alone": bool, "culprit": str,
            "settle": bool, "capture": bool, "capture_snaplen": int, "capture_max_mb": int,
            "load_processes": int, "load_external_workers": int, "load_master_bind": str,
            "load_master_port": int, "load_worker_wait": NUM}
    values = _fields(where, table, spec, required=("steps",))
    _load_engine_fields(where, values)
    _open_loop_fields(where, values)
    _one_of(where, "culprit", values.get("culprit", "auto"), CULPRIT_MODES)
    for key in ("feedback_weight",):
        _positive(where, key, values.get(key, 0), allow_zero=True)
    if values.get("capture_snaplen", 1024) < 96:
        raise ConfigError(f"{where}.capture_snaplen: at least 96 bytes (the Ethernet, IP and "
                          f"TCP headers of a packet), got {values['capture_snaplen']}")
    for key in ("predict_weight", "stable_windows", "capture_max_mb"):
        _positive(where, key, values.get(key, 1))
    for key in ("stable_window_s", "stable_tolerance", "p95_bound_ms"):
        if key in values:
            _positive(where, key, values[key])
            values[key] = float(values[key])
    if values.get("on_start") and not values["on_start"].startswith("/"):
        raise ConfigError(f"{where}.on_start: must be a path starting with '/', got "
                          f"{values['on_start']!r}")
    for key in ("users", "spawn_rate"):
        if key in values:
            _positive(where, key, values[key])
    steps: list[Step] = []
    if not values["steps"]:
        raise ConfigError(f"{where}.steps: needs at least one step")
    for i, raw in enumerate(values["steps"]):
        sw = f"{where}.steps[{i}]"
        s = _fields(sw, raw, {"batch": int, "seconds": NUM, "users": int, "spawn_rate": NUM,
                              "until_stable": bool, "rate": NUM}, required=("batch", "seconds"))
        _positive(sw, "batch", s["batch"])
        _positive(sw, "seconds", s["seconds"])
        for key in ("users", "spawn_rate", "rate"):
            if key in s:
                _positive(sw, key, s[key])
        if "rate" in s and "users" in s:
            raise ConfigError(f"{sw}: a step is open-loop (rate) or closed-loop (users), "
                              "not both")
        step = Step(batch=s["batch"], seconds=float(s["seconds"]), users=s.get("users", 0),
                    spawn_rate=float(s.get("spawn_rate", 0)),
                    until_stable=s.get("until_stable", False), rate=float(s.get("rate", 0)))
        if not (step.users or step.rate or values.get("rate")):
            # A closed-loop step: users and a spawn rate, its own or the profile's.
            for key in ("users", "spawn_rate"):
                if not (getattr(step, key) or values.get(key)):
                    raise ConfigError(f"{where}: missing required key {key!r} (or a request "
                                      f"`rate` for an open-loop load), needed by steps[{i}]")
        steps.append(step)
    values["steps"] = tuple(steps)
    for key in ("baseline", "pause", "cooldown", "drain_timeout", "rest"):
        if key in values:
            _positive(where, key, values[key], allow_zero=True)
    _positive(where, "cycles", values.get("cycles", 1))
    for key in ("request_timeout", "sample_interval"):
        if key in values:
            _positive(where, key, values[key])
    if "wait" in values:
        w = values["wait"]
        if len(w) != 2 or not all(isinstance(x, NUM) and not isinstance(x, bool)
                                  and math.isfinite(x) for x in w) or not 0 <= w[0] <= w[1]:
            raise ConfigError(f"{where}.wait: expected [min, max] seconds with 0 <= min <= max, "
                              f"got {w!r}")
        values["wait"] = (float(w[0]), float(w[1]))
    for key in ("spawn_rate", "baseline", "pause", "cooldown", "drain_timeout",
                "request_timeout", "sample_interval", "rest", "rate"):
        if key in values:
            values[key] = float(values[key])
    return Profile(name=name, **values)


def _load_engine_fields(where: str, values: dict[str, Any]) -> None:
    """Locust's distributed engine: worker counts, the master's port and how long it waits."""
    _positive(where, "load_processes", values.get("load_processes", 1))
    _positive(where, "load_external_workers", values.get("load_external_workers", 0),
              allow_zero=True)
    port = values.get("load_master_port", 0)
    if not 0 <= port <= 65535:
        raise ConfigError(f"{where}.load_master_port: a TCP port (0: a free one), got {port}")
    _positive(where, "load_worker_wait", values.get("load_worker_wait", 60))
    if "load_worker_wait" in values:
        values["load_worker_wait"] = float(values["load_worker_wait"])
    if not values.get("load_master_bind", "x").strip():
        raise ConfigError(f"{where}.load_master_bind: an address to listen on, got ''")


def _open_loop_fields(where: str, values: dict[str, Any]) -> None:
    """rate > 0, a known arrival process, a positive in-flight cap."""
    if "rate" in values:
        _positive(where, "rate", values["rate"])
    _one_of(where, "arrival", values.get("arrival", "poisson"), ARRIVALS)
    _positive(where, "max_in_flight", values.get("max_in_flight", 1))
    _positive(where, "arrival_seed", values.get("arrival_seed", 0), allow_zero=True)


SERVICE_SPEC: dict[str, Any] = {
    "server": str, "app": str, "module": str, "endpoint": str, "thread_limit": int,
    "workers": int, "call": str, "env": dict, "command": list, "args": list, "replicas": int,
    "depends_on": list, "ports": list, "health": str, "health_path": str,
    "health_command": list, "startup_timeout": NUM, "probes": bool, "tracemalloc": bool,
    "allocator": str, "trim_each_request": bool, "once": bool, "max_batch": int,
    "url": str, "pid": int, "pid_file": str, "metrics": str,
    "cgroup": str, "device": str, "venv": str}
# What makes no sense for a server the harness does not start (server = "url"), and why.
NOT_EXTERNAL: dict[str, str] = {
    "probes": "the probes are injected into a process the harness starts",
    "tracemalloc": "the probes read it, and they cannot be injected",
    "trim_each_request": "it is told to a server the harness starts",
    "allocator": "an allocator is preloaded into a process the harness starts",
    "replicas": "the harness starts no replicas of it; give one url per service",
    "once": "a setup task is a process the harness starts and waits for",
    "command": "the harness starts nothing", "module": "the harness starts nothing",
    "args": "the harness starts nothing", "env": "the harness starts nothing",
    "workers": "the harness starts nothing", "ports": "its port is the url's",
    "health_command": "use health = 'http' (health_path) or 'none'",
    "venv": "the harness starts nothing in it"}
# Keys of a variant in the topology form; the flat form has these and SERVICE_SPEC's.
VARIANT_SPEC: dict[str, Any] = {"description": str, "base": str, "request": dict,
                                "model": str, "entry": str, "services": dict, "load": dict}
NAME = re.compile(r"^[a-z][a-z0-9_-]*$")
# Server kinds that run `{python}`, so a peer environment's interpreter can stand in for ours.
VENV_SERVERS = ("module", "command")


def _strings(where: str, key: str, values: list[Any]) -> tuple[str, ...]:
    for i, part in enumerate(values):
        _check(f"{where}.{key}", f"[{i}]", part, str)
    return tuple(values)


def _check_external(where: str, values: dict[str, Any]) -> None:
    """server = "url": a url, nothing the harness would need to start it, a usable pid."""
    url = external_url(f"{where}.url", values.get("url", ""))
    for key, why in NOT_EXTERNAL.items():
        harmless = ((key == "allocator" and values[key] == "glibc")
                    or (key == "replicas" and values[key] == 1) or values[key] is False) \
            if key in values else True
        if not harmless:
            raise ConfigError(f"{where}.{key}: not for server = 'url' ({why})")
    if values.get("health", "http") not in ("http", "none"):
        raise ConfigError(f"{where}.health: server = 'url' takes health = 'http' or 'none'")
    if "pid" in values and "pid_file" in values:
        raise ConfigError(f"{where}.pid_file: give pid or pid_file, not both")
    if "pid" in values:
        _positive(where, "pid", values["pid"])
    values["url"] = url
    if "metrics" in values:
        values["metrics"] = external_url(f"{where}.metrics", values["metrics"])
    if "cgroup" in values and not values["cgroup"].startswith("/"):
        raise ConfigError(f"{where}.cgroup: a cgroup's folder, an absolute path such as "
                          f"'/sys/fs/cgroup/system.slice/my.service', got {values['cgroup']!r}")
    values["gets_model"] = False


def external_url(where: str, url: str) -> str:
    """A server = "url" service's url, checked (any http(s) host: it is the user's server),
    without its trailing '/'; a one-line ConfigError naming `where` otherwise."""
    if not url:
        raise ConfigError(f"{where}: server = 'url' needs a url, e.g. 'http://127.0.0.1:8000'")
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError as e:
        raise ConfigError(f"{where}: {e}: {url!r}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query \
            or parts.fragment:
        raise ConfigError(f"{where}: expected http(s)://host[:port][/prefix], got {url!r}")
    return url.rstrip("/")


def _load_service(where: str, name: str, table: Any) -> Service:
    values = _fields(where, table, SERVICE_SPEC, required=("server",))
    server = values["server"]
    _one_of(where, "server", server, SERVERS)
    kind = SERVER_KINDS[server]
    if not NAME.match(name):
        raise ConfigError(f"{where}: a service name is lower-case letters, digits, '-' and '_', "
                          f"starting with a letter; got {name!r}")
    if kind.external:
        _check_external(where, values)
    else:
        for key in ("url", "pid", "pid_file", "metrics", "cgroup"):
            if key in values:
                raise ConfigError(f"{where}.{key}: only used with server = 'url'")
    _one_of(where, "app", values.get("app", "starlette"), APPS)
    _one_of(where, "endpoint", values.get("endpoint", "sync"), ENDPOINTS)
    _one_of(where, "call", values.get("call", "predict"), CALL_STYLES)
    _one_of(where, "allocator", values.get("allocator", "glibc"), tuple(ALLOCATORS))
    _one_of(where, "device", values.get("device", "cpu"), DEVICES)
    if values.get("device") == "cuda" and (why := no_cuda()):
        raise ConfigError(f"{where}.device: 'cuda' {why}")
    _positive(where, "thread_limit", values.get("thread_limit", 0), allow_zero=True)
    _positive(where, "workers", values.get("workers", 1))
    _positive(where, "replicas", values.get("replicas", 1))
    if "startup_timeout" in values:
        _positive(where, "startup_timeout", values["startup_timeout"])
        values["startup_timeout"] = float(values["startup_timeout"])
    for k, v in values.get("env", {}).items():
        _check(f"{where}.env", k, v, str)
    cap = values.get("env", {}).get(MAX_IMAGES_ENV, "").strip()
    if cap and not (cap.isdigit() and int(cap) > 0):
        raise ConfigError(f"{where}.env.{MAX_IMAGES_ENV}: expected a positive integer, got "
                          f"{cap!r}")
    _positive(where, "max_batch", values.get("max_batch", 1))
    app_cap = APP_MAX_BATCH.get(values.get("app", "starlette"))
    if kind.runs_app and app_cap and values.get("max_batch", 0) > app_cap[0]:
        raise ConfigError(f"{where}.max_batch: app {values.get('app')!r} takes {app_cap[1]} "
                          f"(max_batch {app_cap[0]} at most), got {values['max_batch']}")
    for key in ("command", "args", "depends_on", "ports", "health_command"):
        if key in values:
            values[key] = _strings(where, key, values[key])
    if server == "command":
        if not values.get("command"):
            raise ConfigError(f"{where}.command: server = 'command' needs a command list")
    elif "command" in values:
        raise ConfigError(f"{where}.command: only used with server = 'command'")
    if server == "module" and not values.get("module"):
        raise ConfigError(f"{where}.module: server = 'module' needs a module, e.g. "
                          "'servers.queue.worker'")
    if "module" in values and server != "module":
        raise ConfigError(f"{where}.module: only used with server = 'module'")
    app = values.get("app", "starlette")
    if kind.runs_app and not kind.runs_wsgi and APP_MODULES[app][1] == "wsgi":
        raise ConfigError(f"{where}.app: {app!r} is a WSGI app; run it with server = 'gunicorn'")
    ports = values.get("ports", ("port",))
    if not ports:
        raise ConfigError(f"{where}.ports: needs at least one port name")
    for p in ports:
        if not re.match(r"^[a-z][a-z0-9_]*$", p):
            raise ConfigError(f"{where}.ports: {p!r} is not a port name (letters, digits, _)")
    if len(set(ports)) != len(ports):
        raise ConfigError(f"{where}.ports: a port name is given twice")
    health = values.get("health", kind.health if kind.health != "http" else
                        "none" if values.get("once") else "http")
    _one_of(where, "health", health, HEALTH_KINDS)
    values["health"] = health
    if health == "command" and not values.get("health_command"):
        raise ConfigError(f"{where}.health_command: health = 'command' needs a command list")
    path = values.get("health_path", "/health")
    if not path.startswith("/"):
        raise ConfigError(f"{where}.health_path: must start with '/', got {path!r}")
    if kind.store:
        for key in ("probes", "tracemalloc", "trim_each_request"):
            if values.get(key):
                raise ConfigError(f"{where}.{key}: not for Redis (a C program): probes run in "
                                  "Python servers")
        values["gets_model"] = False
    if values.get("once"):
        if not kind.can_be_task:
            raise ConfigError(f"{where}.once: a setup task is a module or a command that "
                              "exits, not a server")
        if values["health"] != "none":
            raise ConfigError(f"{where}.health: a setup task (once = true) has no health check")
    if "venv" in values:
        _check_venv(where, server, values["venv"])
    if values.get("tracemalloc") and not values.get("probes"):
        raise ConfigError(f"{where}.tracemalloc: needs probes = true (the probes read it)")
    return Service(name=name, **values)


def _check_venv(where: str, server: str, name: str) -> None:
    """venv = "<peer>": a peer environment this checkout has a lock for, on a server kind whose
    interpreter is `{python}` (module, command)."""
    if server not in VENV_SERVERS:
        raise ConfigError(f"{where}.venv: only used with server = "
                          f"{' or '.join(repr(s) for s in VENV_SERVERS)} (its {{python}} is "
                          f"the environment's), not {server!r}")
    if name not in envs.known():
        raise ConfigError(f"{where}.venv: unknown peer environment {name!r} (known: "
                          f"{', '.join(envs.known()) or 'none'}; one per "
                          f"servers/peers/<name>/{envs.LOCK_NAME})")


def _load_variant(name: str, table: Any, models: dict[str, Model]) -> Variant:
    where = f"variants.{name}"
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: expected a table, got {type(table).__name__}")
    topology = "services" in table
    spec = VARIANT_SPEC if topology else {**VARIANT_SPEC, **SERVICE_SPEC}
    values = _fields(where, table, spec, required=() if topology else ("server",))
    own = {k: values.pop(k) for k in list(values) if k in VARIANT_SPEC}
    request = _load_request(f"{where}.request", own["request"]) if "request" in own \
        else Request()
    if own.get("model") and own["model"] not in models:
        raise ConfigError(f"{where}.model: unknown model {own['model']!r} "
                          f"(known: {', '.join(sorted(models))})")
    if topology:
        raw = own.pop("services")
        if not raw:
            raise ConfigError(f"{where}.services: needs at least one service")
        services = tuple(_load_service(f"{where}.services.{n}", n, t) for n, t in raw.items())
        entry = own.pop("entry", "")
        if not entry:
            http = [s.name for s in services if s.health == "http"]
            if len(services) == 1:
                entry = services[0].name
            else:
                raise ConfigError(f"{where}.entry: name the service the load is sent to (one of "
                                  f"{', '.join(http or [s.name for s in services])})")
    else:
        if "entry" in own:
            raise ConfigError(f"{where}.entry: only used with [{where}.services.<name>] tables")
        services = (_load_service(where, "server", values),)
        entry = "server"
    load = _fields(f"{where}.load", own.get("load", {}), {"locustfile": str, "env": dict})
    for k, v in load.get("env", {}).items():
        _check(f"{where}.load.env", k, v, str)
    variant = Variant(name=name, services=services, entry=entry,
                      description=own.get("description", ""), model=own.get("model", ""),
                      base=own.get("base", ""), request=request,
                      locustfile=load.get("locustfile", ""), load_env=load.get("env", {}))
    check_topology(where, variant)
    return variant


def _has_mark(template: Any, mark: str) -> bool:
    if isinstance(template, str):
        return mark in template
    if isinstance(template, dict):
        return any(_has_mark(v, mark) for v in template.values())
    if isinstance(template, list):
        return any(_has_mark(v, mark) for v in template)
    return False


def _load_request(where: str, table: Any) -> Request:
    spec = {"method": str, "path": str, "body": str, "field": str, "json": (dict, list),
            "image": (str, dict, list), "content_type": str, "image_size": int,
            "headers": dict, "ok_status": (int, list)}
    values = _fields(where, table, spec)
    values["method"] = values.get("method", "POST").upper()
    _one_of(where, "method", values["method"], METHODS)
    _one_of(where, "body", values.get("body", "multipart"), BODIES)
    if not values.get("path", "/").startswith("/"):
        raise ConfigError(f"{where}.path: must start with '/', got {values['path']!r}")
    if "image_size" in values:
        _positive(where, "image_size", values["image_size"])
    for k, v in values.get("headers", {}).items():
        _check(f"{where}.headers", k, v, str)
    status = values.get("ok_status", [200])
    status = [status] if isinstance(status, int) else status
    for i, code in enumerate(status):
        _check(f"{where}.ok_status", f"[{i}]", code, int)
        if not 100 <= code <= 599:
            raise ConfigError(f"{where}.ok_status: {code} is not an HTTP status")
    values["ok_status"] = tuple(status)
    body = values.get("body", "multipart")
    if "json" in values:
        if body != "json":
            raise ConfigError(f"{where}.json: only used with body = 'json'")
        values["json_template"] = values.pop("json")
    if body == "json":
        if not _has_mark(values.get("json_template"), IMAGES_MARK):
            raise ConfigError(f"{where}.json: body = 'json' needs a json template with "
                              f"\"{IMAGES_MARK}\" where the batch's images go, e.g. "
                              f"{{ instances = \"{IMAGES_MARK}\" }}")
        if not any(_has_mark(values.get("image", B64_MARK), m) for m in IMAGE_MARKS):
            raise ConfigError(f"{where}.image: the per-image template needs one of "
                              f"{', '.join(IMAGE_MARKS)}")
    elif "image" in values:
        raise ConfigError(f"{where}.image: only used with body = 'json'")
    if "field" in values:
        if body != "multipart":
            raise ConfigError(f"{where}.field: only used with body = 'multipart'")
        values["form_field"] = values.pop("field")
    return Request(**values)


def _inherit(name: str, tables: dict[str, Any], seen: tuple[str, ...] = ()) -> Any:
    """A variant's table with its `base` variant's keys underneath (env merged, base's env
    first), so a hypothesis can be "that server, plus this environment"."""
    table = tables[name]
    if not isinstance(table, dict) or "base" not in table:
        return table
    where = f"variants.{name}.base"
    base = _check(f"variants.{name}", "base", table["base"], str)
    if base not in tables:
        raise ConfigError(f"{where}: unknown variant {base!r}")
    if base in seen or base == name:
        chain = " -> ".join((*seen, name, base))
        raise ConfigError(f"{where}: variants inherit in a circle ({chain})")
    parent = _inherit(base, tables, (*seen, name))
    if not isinstance(parent, dict):
        return table  # the parent's own error is reported when it is loaded
    merged = {k: v for k, v in parent.items() if k != "description"}
    merged.update(table)
    if isinstance(parent.get("env"), dict) and isinstance(table.get("env"), dict):
        merged["env"] = {**parent["env"], **table["env"]}
    ps, ts = parent.get("services"), table.get("services")
    if isinstance(ps, dict) and isinstance(ts, dict):
        # Nested service tables merge one by one: a child names only what it changes.
        services = dict(ps)
        for svc, t in ts.items():
            p = ps.get(svc)
            if isinstance(p, dict) and isinstance(t, dict):
                m = {**p, **t}
                if isinstance(p.get("env"), dict) and isinstance(t.get("env"), dict):
                    m["env"] = {**p["env"], **t["env"]}
                services[svc] = m
            else:
                services[svc] = t
        merged["services"] = services
    return merged


def load(path: Path | str) -> Experiments:
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    try:
        return _build(path, raw)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def _build(path: Path, raw: dict[str, Any]) -> Experiments:
    # [thresholds] is read by `infbench check` (infbench/report/thresholds.py), not by a run.
    top = _fields("(top level)", raw, {"study": dict, "studies": dict, "models": dict,
                                       "profiles": dict, "variants": dict, "thresholds": dict},
                  required=("variants",))
    models = {n: _load_model(n, t, path.parent) for n, t in top.get("models", {}).items()}
    profiles = {n: _load_profile(n, t) for n, t in top.get("profiles", {}).items()}
    raw_variants = top["variants"]
    variants = {n: _load_variant(n, _inherit(n, raw_variants), models) for n in raw_variants}
    study = _fields("study", top.get("study", {}),
                    {"variants": list, "profile": str, "model": str})
    study_variants = tuple(study.get("variants", list(variants)))
    for v in study_variants:
        if v not in variants:
            raise ConfigError(f"study.variants: unknown variant {v!r}")
    profile = study.get("profile", next(iter(profiles), ""))
    model = study.get("model", next(iter(models), ""))
    if profile not in profiles:
        raise ConfigError(f"study.profile: unknown profile {profile!r}")
    if model not in models:
        raise ConfigError(f"study.model: unknown model {model!r}")
    studies = {}
    for name, table in top.get("studies", {}).items():
        where = f"studies.{name}"
        st = _fields(where, table, {"description": str, "variants": list, "profile": str},
                     required=("variants",))
        for i, v in enumerate(st["variants"]):
            _check(f"{where}.variants", f"[{i}]", v, str)
            if v not in variants:
                raise ConfigError(f"{where}.variants: unknown variant {v!r}")
        st_profile = st.get("profile", profile)
        if st_profile not in profiles:
            raise ConfigError(f"{where}.profile: unknown profile {st_profile!r}")
        for v in st["variants"]:  # a study pairs these: each must fit, before anything starts
            try:
                variants[v].check_profile(profiles[st_profile])
            except ConfigError as e:
                raise ConfigError(f"{where}: {e}") from None
        studies[name] = Study(name=name, variants=tuple(st["variants"]), profile=st_profile,
                              description=st.get("description", ""))
    return Experiments(path=path, models=models, profiles=profiles, variants=variants,
                       study_variants=study_variants, study_profile=profile, study_model=model,
                       studies=studies)
