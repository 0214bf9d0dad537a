"""Experiments as data: experiments.toml loaded into frozen dataclasses.

Every problem is a `ConfigError` with one line that names the file, the table and the key, so
the CLI can print it and exit 1 before anything starts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from infbench.schedule import ARRIVALS

# What a service runs (infbench/launch/argv.py turns each into a command line):
#   uvicorn | gunicorn | hypercorn   one of our apps (`app`) on that server
#   module                           `{python} -m <module> <args>` (a worker, the TF-Serving server)
#   redis                            Debian's redis-server, bound to loopback on the harness's port
#   command                          any command of yours (`command`, with placeholders)
SERVERS = ("uvicorn", "gunicorn", "hypercorn", "module", "redis", "command")
APP_SERVERS = ("uvicorn", "gunicorn", "hypercorn")  # the servers that run an `app`
# Our apps: name -> (import path, interface). WSGI apps run on Gunicorn's sync workers only.
APP_MODULES: dict[str, tuple[str, str]] = {
    "starlette": ("servers.image.app_starlette:app", "asgi"),
    "fastapi": ("servers.image.app_fastapi:app", "asgi"),
    "batching": ("servers.image.app_batching:app", "asgi"),
    "queue-fastapi": ("servers.queue.api_fastapi:app", "asgi"),
    "queue-flask": ("servers.queue.api_flask:app", "wsgi"),
    "scoring-fastapi": ("servers.scoring.scoring_fastapi:app", "asgi"),
    "scoring-flask": ("servers.scoring.scoring_flask:app", "wsgi"),
    "model-api-fastapi": ("servers.scoring.model_api_fastapi:app", "asgi"),
    "model-api-flask": ("servers.scoring.model_api_flask:app", "wsgi"),
}
APPS = tuple(APP_MODULES)
# Our apps that take a fixed number of items per request, whatever the profile's `batch` says
# (a step of 3 would fail every request): the most a request carries, and what it is. The image
# apps take up to INFBENCH_MAX_IMAGES (MAX_IMAGES_ENV), which the harness sets to the profile's
# largest batch unless the service's env fixes it (see Service.batch_limit).
APP_MAX_BATCH: dict[str, tuple[int, str]] = {
    "queue-fastapi": (1, "one image per request"),
    "queue-flask": (1, "one image per request"),
    "scoring-fastapi": (1, "one entity per request"),
    "scoring-flask": (1, "one entity per request"),
    "model-api-fastapi": (1, "one feature vector per request"),
    "model-api-flask": (1, "one feature vector per request"),
}
# Our servers' cap on images per request (servers/shared/settings.py); the launch contract sets it.
MAX_IMAGES_ENV = "INFBENCH_MAX_IMAGES"
HEALTH_KINDS = ("http", "tcp", "redis", "command", "none")
# The placeholders a service's command, args and env may use (see Service).
PLACEHOLDER = re.compile(r"\{([a-z_][a-z0-9_.-]*)\}")
ENDPOINTS = ("sync", "async")
CALL_STYLES = ("predict", "predict_on_batch", "call")
# How the load can carry a batch of sample images (see Request).
BODIES = ("multipart", "json", "binary", "npy")
METHODS = ("POST", "PUT", "PATCH")
# Placeholders a request template understands (the locustfile fills them in).
BATCH_MARK = "{batch}"
IMAGES_MARK = "{images}"
B64_MARK, NAME_MARK, PIXELS_MARK = "{b64}", "{name}", "{pixels}"
IMAGE_MARKS = (B64_MARK, NAME_MARK, PIXELS_MARK)
# Pixels per side for bodies that carry decoded pixels (npy, "{pixels}") when neither the
# request nor the model says.
DEFAULT_IMAGE_SIZE = 224
# malloc implementations a variant can preload (Debian's packages; `make system`).
ALLOCATORS = {
    "glibc": "",
    "jemalloc": "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2",
    "mimalloc": "/usr/lib/x86_64-linux-gnu/libmimalloc.so.2",
    "tcmalloc": "/usr/lib/x86_64-linux-gnu/libtcmalloc.so.4",
}


class ConfigError(Exception):
    """A one-line, user-facing configuration problem."""


@dataclass(frozen=True)
class Model:
    name: str
    description: str = ""
    arch: str = ""
    input_size: int = 0
    classes: int = 1000
    seed: int = 0
    alpha: float = 1.0
    path: str = ""

    @property
    def is_file(self) -> bool:
        """A user's own model file, rather than one we build."""
        return bool(self.path)


@dataclass(frozen=True)
class Step:
    """One load step: `batch` images per request for up to `seconds`; `users` and `spawn_rate`
    (0: the profile's) let a profile ramp users from step to step; with `until_stable` the
    step ends early once throughput and median latency have held within the profile's
    tolerance for `stable_windows` windows in a row (never before the first full set).
    `rate` makes the step open-loop: requests sent on a schedule, not by users."""

    batch: int
    seconds: float
    users: int = 0
    spawn_rate: float = 0.0
    until_stable: bool = False
    rate: float = 0.0  # requests/s: an open-loop step (0: the profile's rate, or users)


DEFAULT_WINDOW_S = 10.0  # a stability window when neither the profile nor the step says


def auto_window(seconds: float, windows: int) -> float:
    """The stability window of a step of `seconds` when the profile sets none (window_of)."""
    return max(1.0, min(DEFAULT_WINDOW_S, seconds / (windows + 1)))


@dataclass(frozen=True)
class Profile:
    name: str
    steps: tuple[Step, ...]
    users: int = 0
    spawn_rate: float = 0.0
    description: str = ""
    baseline: float = 10.0
    pause: float = 15.0
    cooldown: float = 30.0
    drain_timeout: float = 20.0
    request_timeout: float = 60.0
    wait: tuple[float, float] = (0.0, 1.0)
    sample_interval: float = 0.1
    cycles: int = 1
    rest: float = 0.0
    # The mix of tasks each user runs: predict (the request template) and, with a weight
    # above 0, POST /feedback on its last prediction; `on_start` is a path each user GETs once.
    feedback_weight: int = 0
    predict_weight: int = 1
    on_start: str = ""
    stable_window_s: float = 0.0  # 0: per step, see window_of
    stable_windows: int = 3
    stable_tolerance: float = 0.10
    # A step "breaks" when its p95 passes this bound (0: no bound) or failures pass 1%.
    p95_bound_ms: float = 0.0
    # Open loop (infbench/schedule.py): `rate` requests/s sent on schedule whether or not the
    # earlier ones finished, latency from the intended send time; `arrival` constant | poisson
    # (seeded by `arrival_seed`); at most `max_in_flight` requests in flight, a request over it
    # waits for a free slot (counted, and its wait is in its latency).
    rate: float = 0.0
    arrival: str = "poisson"
    arrival_seed: int = 0
    max_in_flight: int = 512
    # Measure the model alone (no HTTP) before the load: serving efficiency per step.
    model_alone: bool = False

    def users_of(self, step: Step) -> int:
        return step.users or self.users

    def window_of(self, step: Step) -> float:
        """The stability window of `step`: the profile's `stable_window_s` when it sets one,
        else 10 s, shortened so that the step holds its `stable_windows` full windows with one
        window to spare for the users' start (a 15 s step gets 3.75 s windows rather than one of
        10 s that the rule could never judge), 1 s at least."""
        if self.stable_window_s > 0:
            return self.stable_window_s
        return auto_window(step.seconds, self.stable_windows)

    def rate_of(self, step: Step) -> float:
        """Requests/s of an open-loop step; 0 for a closed-loop one (users)."""
        if step.users:
            return 0.0
        return step.rate or self.rate

    def spawn_rate_of(self, step: Step) -> float:
        return step.spawn_rate or self.spawn_rate

    def planned_seconds(self) -> float:
        """Upper bound of load + pauses for one variant (drains at their timeout)."""
        per_step = sum(s.seconds + self.drain_timeout + self.pause for s in self.steps)
        rests = self.rest * self.cycles if self.cycles > 1 else 0.0
        return self.baseline + per_step * self.cycles + rests + self.cooldown


@dataclass(frozen=True)
class Request:
    """How the load sends one batch of sample images: what a server of your own expects.

    body = multipart: one file part per image in the form field `field` (our servers' contract).
    body = json: the `json` template with the string "{images}" replaced by the list of the
    batch's images, each rendered through the `image` template ("{b64}" base64 of the JPEG,
    "{name}" its file name, "{pixels}" its RGB pixels as nested lists of 0-255 at `image_size`);
    "{batch}" anywhere becomes the batch size.
    body = binary: one JPEG as the raw body (batch 1 only).
    body = npy: a NumPy .npy array of uint8 RGB pixels, shape (batch, image_size, image_size, 3).
    "{batch}" in `path` becomes the batch size too. `image_size` 0 means the model's input size.
    """

    method: str = "POST"
    path: str = "/predict"
    body: str = "multipart"
    form_field: str = "images"
    json_template: Any = None
    image: Any = B64_MARK
    content_type: str = ""
    image_size: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    ok_status: tuple[int, ...] = (200,)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Request:
        """The inverse of as_dict (how the harness hands a request to the locustfile)."""
        return cls(**{**data, "ok_status": tuple(data.get("ok_status", (200,)))})

    def check_steps(self, where: str, steps: tuple[Step, ...]) -> None:
        """A profile this request cannot carry is a one-line error before anything starts."""
        if self.body == "binary" and any(s.batch != 1 for s in steps):
            raise ConfigError(
                f"{where}: request.body = 'binary' sends one image per request, but the profile "
                f"has steps with batch {_over(steps, 1)}; use a profile with "
                "batch 1, or body = 'npy', 'json' or 'multipart'")


def _over(steps: tuple[Step, ...], limit: int) -> str:
    """The batch sizes of `steps` above `limit`, as a list for a message."""
    return ", ".join(map(str, sorted({s.batch for s in steps if s.batch > limit})))


@dataclass(frozen=True)
class Service:
    """One thing that runs in a variant: one of our servers, Redis, a worker, your command.

    `ports` are named; every replica gets its own port for each name, chosen by the harness.
    `command`, `args` and `env` values may use placeholders, filled in per replica:
    {port} (the first port), {ports.<name>}, {host}, {python}, {replica}, {out} (the replica's
    results folder) and {services.<other>.port|url|ports.<name>} of another service. Each
    service it `depends_on` is also handed over as INFBENCH_<NAME>_URL and INFBENCH_<NAME>_PORT
    (name upper-cased, '-' as '_').
    """

    name: str
    server: str
    app: str = "starlette"
    module: str = ""
    endpoint: str = "sync"
    thread_limit: int = 0
    workers: int = 1
    call: str = "predict"
    env: dict[str, str] = field(default_factory=dict)
    command: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    replicas: int = 1
    depends_on: tuple[str, ...] = ()
    ports: tuple[str, ...] = ("port",)
    health: str = "http"
    health_path: str = "/health"
    health_command: tuple[str, ...] = ()
    startup_timeout: float = 180.0
    probes: bool = False
    tracemalloc: bool = False
    allocator: str = "glibc"
    trim_each_request: bool = False
    once: bool = False  # a setup task (seed a store): runs to exit 0 before its dependants
    gets_model: bool = True  # INFBENCH_MODEL_PATH in its environment (not Redis)
    max_batch: int = 0  # the most items one request may carry (0: none declared)

    def __hash__(self) -> int:
        return hash(self.name)

    def batch_limit(self) -> tuple[int, str] | None:
        """The most items a request to this service may carry, and why (None: no limit known):
        the tightest of its own `max_batch`, what its app takes (APP_MAX_BATCH) and an
        INFBENCH_MAX_IMAGES its env fixes (the harness's own value follows the profile)."""
        limits = []
        if self.max_batch:
            limits.append((self.max_batch, f"declares max_batch = {self.max_batch}"))
        if self.server in APP_SERVERS and self.app in APP_MAX_BATCH:
            n, what = APP_MAX_BATCH[self.app]
            limits.append((n, f"runs app {self.app!r}, which takes {what}"))
        if self.env.get(MAX_IMAGES_ENV):
            n = int(self.env[MAX_IMAGES_ENV])  # checked when loaded
            limits.append((n, f"sets env {MAX_IMAGES_ENV} = {n}"))
        return min(limits, key=lambda x: x[0]) if limits else None

    @property
    def uses_python(self) -> bool:
        """Started with the harness's (or the image's) Python, so the probes can run in it."""
        return self.server in ("uvicorn", "gunicorn", "hypercorn", "module") or (
            self.server == "command" and bool(self.command) and self.command[0] == "{python}")


@dataclass(frozen=True)
class Variant:
    """A hypothesis: a topology of services, one of them the `entry` the load is sent to.

    The flat form of experiments.toml (server, app, endpoint, ... at the variant's top level) is
    a topology of one service, named "server", whose files stay at the variant folder's top.
    """

    name: str
    services: tuple[Service, ...]
    entry: str = "server"
    description: str = ""
    model: str = ""
    base: str = ""
    request: Request = field(default_factory=Request)
    # Another Locust file for this variant's load (e.g. the gRPC users of the TF-Serving study),
    # and environment for it; values may use {services.<name>.port|url|ports.<p>}.
    locustfile: str = ""
    load_env: dict[str, str] = field(default_factory=dict)

    def __hash__(self) -> int:  # services hold dicts; hash what identifies the variant
        return hash(self.name)

    @property
    def single(self) -> bool:
        """A one-service topology (the flat form): its files stay where they always were."""
        return len(self.services) == 1 and self.services[0].replicas == 1

    def service(self, name: str) -> Service:
        for s in self.services:
            if s.name == name:
                return s
        raise KeyError(name)

    @property
    def entry_service(self) -> Service:
        return self.service(self.entry)

    def __getattr__(self, name: str) -> Any:
        """The entry service's settings (v.server, v.app, ...), for code and tests that read a
        one-service variant as the flat form wrote it."""
        if name in _SERVICE_FIELDS:
            return getattr(self.entry_service, name)
        raise AttributeError(name)

    @property
    def probes(self) -> bool:
        return any(s.probes for s in self.services)

    @property
    def allocators(self) -> set[str]:
        return {s.allocator for s in self.services}

    def check_profile(self, profile: Profile) -> None:
        """A profile this variant's entry cannot take is a one-line error before anything
        starts: a binary body with batches over one, or steps over the entry's batch_limit."""
        where = f"variants.{self.name}"
        self.request.check_steps(where, profile.steps)
        limit = self.entry_service.batch_limit()
        if limit is None or all(s.batch <= limit[0] for s in profile.steps):
            return
        n, why = limit
        who = "it" if self.single else f"its entry service {self.entry!r}"
        raise ConfigError(
            f"{where}: {who} {why}, but profile {profile.name!r} has steps with batch "
            f"{_over(profile.steps, n)}; use a profile whose steps send at most {n}")

    def with_probes(self) -> Variant:
        """Every Python service with the probes on (PROBES=1, --probes)."""
        return dataclasses.replace(self, services=tuple(
            dataclasses.replace(s, probes=True) if s.uses_python else s for s in self.services))


_SERVICE_FIELDS = frozenset(f.name for f in dataclasses.fields(Service)) - {"name"}


def one_service(name: str, *, request: Request | None = None, model: str = "",
                description: str = "", **fields: Any) -> Variant:
    """A variant of one service, as the flat form of experiments.toml makes (tests, tools)."""
    return Variant(name=name, services=(Service(name="server", **fields),),
                   request=request or Request(), model=model, description=description)


def with_server(v: Variant, **fields: Any) -> Variant:
    """The variant with its entry service changed (e.g. another allocator)."""
    return dataclasses.replace(v, services=tuple(
        dataclasses.replace(s, **fields) if s.name == v.entry else s for s in v.services))


@dataclass(frozen=True)
class Study:
    """A named set of variants under one profile: `make run_study STUDY=<name>`."""

    name: str
    variants: tuple[str, ...]
    profile: str
    description: str = ""


@dataclass(frozen=True)
class Experiments:
    path: Path
    models: dict[str, Model]
    profiles: dict[str, Profile]
    variants: dict[str, Variant]
    study_variants: tuple[str, ...]
    study_profile: str
    study_model: str
    studies: dict[str, Study] = field(default_factory=dict)

    def variant(self, name: str) -> Variant:
        if name not in self.variants:
            raise ConfigError(
                f"unknown variant {name!r} (known: {', '.join(sorted(self.variants))})"
            )
        return self.variants[name]

    def profile(self, name: str) -> Profile:
        if name not in self.profiles:
            raise ConfigError(
                f"unknown profile {name!r} (known: {', '.join(sorted(self.profiles))})"
            )
        return self.profiles[name]

    def study(self, name: str) -> Study:
        if name not in self.studies:
            raise ConfigError(f"unknown study {name!r} (known: {', '.join(sorted(self.studies))})")
        return self.studies[name]

    def model(self, name: str) -> Model:
        if name not in self.models:
            raise ConfigError(f"unknown model {name!r} (known: {', '.join(sorted(self.models))})")
        return self.models[name]

    def model_for(self, variant: Variant, override: str = "") -> Model:
        """The command line's MODEL= wins, then the variant's own model, then the study's."""
        return self.model(override or variant.model or self.study_model)


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
            "alpha": NUM, "path": str}
    values = _fields(where, table, spec)
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
            "max_in_flight": int, "model_alone": bool}
    values = _fields(where, table, spec, required=("steps",))
    _open_loop_fields(where, values)
    for key in ("feedback_weight",):
        _positive(where, key, values.get(key, 0), allow_zero=True)
    for key in ("predict_weight", "stable_windows"):
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
    "allocator": str, "trim_each_request": bool, "once": bool, "max_batch": int}
# Keys of a variant in the topology form; the flat form has these and SERVICE_SPEC's.
VARIANT_SPEC: dict[str, Any] = {"description": str, "base": str, "request": dict,
                                "model": str, "entry": str, "services": dict, "load": dict}
NAME = re.compile(r"^[a-z][a-z0-9_-]*$")


def _strings(where: str, key: str, values: list[Any]) -> tuple[str, ...]:
    for i, part in enumerate(values):
        _check(f"{where}.{key}", f"[{i}]", part, str)
    return tuple(values)


def _load_service(where: str, name: str, table: Any) -> Service:
    values = _fields(where, table, SERVICE_SPEC, required=("server",))
    server = values["server"]
    _one_of(where, "server", server, SERVERS)
    if not NAME.match(name):
        raise ConfigError(f"{where}: a service name is lower-case letters, digits, '-' and '_', "
                          f"starting with a letter; got {name!r}")
    _one_of(where, "app", values.get("app", "starlette"), APPS)
    _one_of(where, "endpoint", values.get("endpoint", "sync"), ENDPOINTS)
    _one_of(where, "call", values.get("call", "predict"), CALL_STYLES)
    _one_of(where, "allocator", values.get("allocator", "glibc"), tuple(ALLOCATORS))
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
    if server in APP_SERVERS and app_cap and values.get("max_batch", 0) > app_cap[0]:
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
    if server in ("uvicorn", "hypercorn") and APP_MODULES[app][1] == "wsgi":
        raise ConfigError(f"{where}.app: {app!r} is a WSGI app; run it with server = 'gunicorn'")
    ports = values.get("ports", ("port",))
    if not ports:
        raise ConfigError(f"{where}.ports: needs at least one port name")
    for p in ports:
        if not re.match(r"^[a-z][a-z0-9_]*$", p):
            raise ConfigError(f"{where}.ports: {p!r} is not a port name (letters, digits, _)")
    if len(set(ports)) != len(ports):
        raise ConfigError(f"{where}.ports: a port name is given twice")
    health = values.get("health", "redis" if server == "redis" else
                        "none" if values.get("once") else "http")
    _one_of(where, "health", health, HEALTH_KINDS)
    values["health"] = health
    if health == "command" and not values.get("health_command"):
        raise ConfigError(f"{where}.health_command: health = 'command' needs a command list")
    path = values.get("health_path", "/health")
    if not path.startswith("/"):
        raise ConfigError(f"{where}.health_path: must start with '/', got {path!r}")
    if server == "redis":
        for key in ("probes", "tracemalloc", "trim_each_request"):
            if values.get(key):
                raise ConfigError(f"{where}.{key}: not for Redis (a C program): probes run in "
                                  "Python servers")
        values["gets_model"] = False
    if values.get("once"):
        if server in ("redis", "uvicorn", "gunicorn", "hypercorn"):
            raise ConfigError(f"{where}.once: a setup task is a module or a command that "
                              "exits, not a server")
        if values["health"] != "none":
            raise ConfigError(f"{where}.health: a setup task (once = true) has no health check")
    if values.get("tracemalloc") and not values.get("probes"):
        raise ConfigError(f"{where}.tracemalloc: needs probes = true (the probes read it)")
    return Service(name=name, **values)


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


def _placeholders(text: str) -> list[str]:
    return PLACEHOLDER.findall(text)


def check_topology(where: str, v: Variant) -> None:
    """Every reference resolves, dependencies have no cycle, the entry can take the load."""
    names = [s.name for s in v.services]
    by_name = {s.name: s for s in v.services}
    if v.entry not in by_name:
        raise ConfigError(f"{where}.entry: no service {v.entry!r} (services: {', '.join(names)})")
    entry = by_name[v.entry]
    if entry.replicas != 1:
        raise ConfigError(f"{where}.services.{v.entry}.replicas: the entry service takes the "
                          "load on one port, so it has one replica (scale its `workers`, or "
                          "the services behind it)")
    if entry.server == "redis" or entry.health not in ("http", "none", "tcp", "command"):
        raise ConfigError(f"{where}.entry: {v.entry!r} is not an HTTP service the load can target")
    for s in v.services:
        sw = f"{where}.services.{s.name}" if not v.single or s.name != "server" else where
        for dep in s.depends_on:
            if dep not in by_name:
                raise ConfigError(f"{sw}.depends_on: no service {dep!r} (services: "
                                  f"{', '.join(names)})")
            if dep == s.name:
                raise ConfigError(f"{sw}.depends_on: a service cannot depend on itself")
        texts = [*s.command, *s.args, *s.env.values(), *s.health_command]
        for text in texts:
            for ref in _placeholders(text):
                _check_ref(sw, ref, s, by_name)
    for text in v.load_env.values():
        for ref in _placeholders(text):
            if not ref.startswith("services."):
                raise ConfigError(f"{where}.load.env: {{{ref}}}: the load knows only "
                                  "{services.<name>.port|url|ports.<p>}")
            _check_ref(f"{where}.load.env", ref, entry, by_name)
    if v.locustfile and not v.locustfile.endswith(".py"):
        raise ConfigError(f"{where}.load.locustfile: a Python file, got {v.locustfile!r}")
    start_order(where, v)


def _check_ref(where: str, ref: str, s: Service, by_name: dict[str, Service]) -> None:
    parts = ref.split(".")
    if ref in ("port", "host", "python", "replica", "out"):
        return
    if parts[0] == "ports" and len(parts) == 2:
        if parts[1] not in s.ports:
            raise ConfigError(f"{where}: {{{ref}}}: service {s.name!r} has no port {parts[1]!r} "
                              f"(its ports: {', '.join(s.ports)})")
        return
    if parts[0] == "services" and len(parts) >= 3:
        other = by_name.get(parts[1])
        if other is None:
            raise ConfigError(f"{where}: {{{ref}}}: no service {parts[1]!r}")
        if other.replicas != 1:
            raise ConfigError(f"{where}: {{{ref}}}: service {parts[1]!r} has {other.replicas} "
                              "replicas; a port of one of them means nothing")
        if parts[2:] in (["port"], ["url"]):
            return
        if len(parts) == 4 and parts[2] == "ports":
            if parts[3] not in other.ports:
                raise ConfigError(f"{where}: {{{ref}}}: service {parts[1]!r} has no port "
                                  f"{parts[3]!r} (its ports: {', '.join(other.ports)})")
            return
    raise ConfigError(f"{where}: unknown placeholder {{{ref}}} (known: {{port}}, {{ports.<name>}}"
                      ", {host}, {python}, {replica}, {out}, {services.<name>.port|url|ports."
                      "<name>})")


def start_order(where: str, v: Variant) -> list[Service]:
    """Services in dependency order (a dependency before its dependants; ties in file order)."""
    by_name = {s.name: s for s in v.services}
    done: list[Service] = []
    state: dict[str, int] = {}  # 1 visiting, 2 done

    def visit(name: str, path: tuple[str, ...]) -> None:
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            cycle = " -> ".join((*path[path.index(name):], name))
            raise ConfigError(f"{where}: services depend on each other in a circle ({cycle})")
        state[name] = 1
        for dep in by_name[name].depends_on:
            visit(dep, (*path, name))
        state[name] = 2
        done.append(by_name[name])

    for s in v.services:
        visit(s.name, ())
    return done


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
    # [thresholds] is read by `infbench check` (infbench/thresholds.py), not by a run.
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


def as_dict(obj: Any) -> Any:
    """A dataclass (or tuple of them) as plain JSON-able data, for manifests."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: as_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, tuple | list):
        return [as_dict(x) for x in obj]
    if isinstance(obj, dict):
        return {k: as_dict(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def fingerprint(*parts: Any) -> str:
    """A short hash of what would make two runs incomparable (profile, model, machine)."""
    blob = json.dumps([as_dict(p) for p in parts], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:6]
