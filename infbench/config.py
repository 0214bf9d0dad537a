"""Experiments as data: experiments.toml loaded into frozen dataclasses.

Every problem is a `ConfigError` with one line that names the file, the table and the key, so
the CLI can print it and exit 1 before anything starts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SERVERS = ("uvicorn", "gunicorn", "hypercorn", "command")
APPS = ("fastapi", "starlette")
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
# malloc implementations a variant can preload (Debian's packages; `make allocators`).
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
    batch: int
    seconds: float


@dataclass(frozen=True)
class Profile:
    name: str
    steps: tuple[Step, ...]
    users: int
    spawn_rate: float
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
            batches = sorted({s.batch for s in steps if s.batch != 1})
            raise ConfigError(
                f"{where}: request.body = 'binary' sends one image per request, but the profile "
                f"has steps with batch {', '.join(map(str, batches))}; use a profile with "
                "batch 1, or body = 'npy', 'json' or 'multipart'")


@dataclass(frozen=True)
class Variant:
    name: str
    server: str
    description: str = ""
    app: str = "starlette"
    endpoint: str = "sync"
    thread_limit: int = 0
    workers: int = 1
    call: str = "predict"
    model: str = ""
    env: dict[str, str] = field(default_factory=dict)
    command: tuple[str, ...] = ()
    health_path: str = "/health"
    startup_timeout: float = 180.0
    probes: bool = False
    tracemalloc: bool = False
    allocator: str = "glibc"
    trim_each_request: bool = False
    base: str = ""
    request: Request = field(default_factory=Request)

    def __hash__(self) -> int:  # env is a dict; hash what identifies the variant
        return hash(self.name)


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
            "rest": NUM}
    values = _fields(where, table, spec, required=("users", "spawn_rate", "steps"))
    steps: list[Step] = []
    if not values["steps"]:
        raise ConfigError(f"{where}.steps: needs at least one step")
    for i, raw in enumerate(values["steps"]):
        s = _fields(f"{where}.steps[{i}]", raw, {"batch": int, "seconds": NUM},
                    required=("batch", "seconds"))
        _positive(f"{where}.steps[{i}]", "batch", s["batch"])
        _positive(f"{where}.steps[{i}]", "seconds", s["seconds"])
        steps.append(Step(batch=s["batch"], seconds=float(s["seconds"])))
    values["steps"] = tuple(steps)
    _positive(where, "users", values["users"])
    _positive(where, "spawn_rate", values["spawn_rate"])
    for key in ("baseline", "pause", "cooldown", "drain_timeout", "rest"):
        if key in values:
            _positive(where, key, values[key], allow_zero=True)
    _positive(where, "cycles", values.get("cycles", 1))
    for key in ("request_timeout", "sample_interval"):
        if key in values:
            _positive(where, key, values[key])
    if "wait" in values:
        w = values["wait"]
        if len(w) != 2 or not all(isinstance(x, NUM) and not isinstance(x, bool) for x in w) \
                or not 0 <= w[0] <= w[1]:
            raise ConfigError(f"{where}.wait: expected [min, max] seconds with 0 <= min <= max, "
                              f"got {w!r}")
        values["wait"] = (float(w[0]), float(w[1]))
    for key in ("spawn_rate", "baseline", "pause", "cooldown", "drain_timeout",
                "request_timeout", "sample_interval", "rest"):
        if key in values:
            values[key] = float(values[key])
    return Profile(name=name, **values)


def _load_variant(name: str, table: Any, models: dict[str, Model]) -> Variant:
    where = f"variants.{name}"
    spec = {"description": str, "server": str, "app": str, "endpoint": str,
            "thread_limit": int, "workers": int, "call": str, "model": str, "env": dict,
            "command": list, "health_path": str, "startup_timeout": NUM, "probes": bool,
            "tracemalloc": bool, "allocator": str, "trim_each_request": bool, "base": str,
            "request": dict}
    values = _fields(where, table, spec, required=("server",))
    if "request" in values:
        values["request"] = _load_request(f"{where}.request", values["request"])
    _one_of(where, "server", values["server"], SERVERS)
    _one_of(where, "app", values.get("app", "starlette"), APPS)
    _one_of(where, "endpoint", values.get("endpoint", "sync"), ENDPOINTS)
    _one_of(where, "call", values.get("call", "predict"), CALL_STYLES)
    _one_of(where, "allocator", values.get("allocator", "glibc"), tuple(ALLOCATORS))
    _positive(where, "thread_limit", values.get("thread_limit", 0), allow_zero=True)
    _positive(where, "workers", values.get("workers", 1))
    if "startup_timeout" in values:
        _positive(where, "startup_timeout", values["startup_timeout"])
        values["startup_timeout"] = float(values["startup_timeout"])
    env = values.get("env", {})
    for k, v in env.items():
        _check(f"{where}.env", k, v, str)
    if values["server"] == "command":
        cmd = values.get("command", [])
        if not cmd:
            raise ConfigError(f"{where}.command: server = 'command' needs a command list")
        for i, part in enumerate(cmd):
            _check(f"{where}.command", f"[{i}]", part, str)
        values["command"] = tuple(cmd)
    elif "command" in values:
        raise ConfigError(f"{where}.command: only used with server = 'command'")
    if values.get("model") and values["model"] not in models:
        raise ConfigError(f"{where}.model: unknown model {values['model']!r} "
                          f"(known: {', '.join(sorted(models))})")
    return Variant(name=name, **values)


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
    top = _fields("(top level)", raw, {"study": dict, "studies": dict, "models": dict,
                                       "profiles": dict, "variants": dict},
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
