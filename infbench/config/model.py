"""Experiments as data: the frozen dataclasses experiments.toml is loaded into (a model, a
load profile and its steps, a request, a service, a variant, a study), and the names they
may take."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from infbench.config.servers import APP_MODULES, SERVER_KINDS

# What a service runs, and our apps: one registration each (infbench/config/servers.py).
SERVERS = tuple(SERVER_KINDS)
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
# Our servers' cap on images per request (servers/shared/settings.py); the launch contract
# sets it.
MAX_IMAGES_ENV = "INFBENCH_MAX_IMAGES"
HEALTH_KINDS = ("http", "tcp", "redis", "command", "none")
# Where a service runs its model. "cuda" is checked before anything starts (no_cuda).
DEVICES = ("cpu", "cuda")


def has_gpu() -> bool:
    """An NVIDIA GPU on this machine: nvidia-smi on PATH or /dev/nvidia0 (nothing imported)."""
    return bool(shutil.which("nvidia-smi")) or Path("/dev/nvidia0").exists()


def no_cuda() -> str | None:
    """Why device = "cuda" cannot run here, as the end of a one-line error (no GPU: no
    nvidia-smi on PATH, no /dev/nvidia0), or None where there is one: then the servers run an
    .onnx model on ONNX Runtime's CUDA provider and a .pt model on torch's CUDA device
    (Variant.check_model refuses a Keras model on cuda)."""
    if not has_gpu():
        return "needs a GPU, and this machine has none (no nvidia-smi, no /dev/nvidia0)"
    return None
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


# What a model runs on (docs/servers.md#runtimes): the Keras file, or the same weights converted
# at build time to ONNX (ONNX Runtime) or to a torch state dict (PyTorch):
# servers/shared/runtimes.py.
MODEL_FORMATS = ("keras", "onnx", "torch")
# The formats whose runtime takes thread settings (intra_op_threads, inter_op_threads), and the
# one with an arena setting (cpu_mem_arena).
THREADED_FORMATS = ("onnx", "torch")


# Why RUNTIME=docker refuses a torch model (Variant.check_model).
TORCH_NOT_IN_IMAGE = (
    "RUNTIME=docker cannot serve a PyTorch model: the servers' image has no torch (PyPI's "
    "torch==2.13.0 for Linux is the multi-GB CUDA build, and even the CPU build adds ~870 MB "
    "to the image); run it with RUNTIME=native")


# Why a torch model cannot run natively here: torch is an optional environment
# (requirements-torch.lock, `make torch`), never installed by `make venv`.
TORCH_NOT_INSTALLED = (
    "PyTorch is not installed in this environment (it is optional: `make torch` installs "
    "requirements-torch.lock, the CPU build)")


def torch_installed() -> bool:
    """torch importable by this interpreter, which the native servers run on (nothing is
    imported: a search of the path)."""
    try:
        return importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):  # a broken or half-removed install
        return False


def model_runtime(model: Model) -> str:
    """What runs `model`: its format, or for a file of the user's, what its suffix says."""
    if model.is_file:
        suffix = Path(model.path).suffix
        return {".onnx": "onnx", ".pt": "torch"}.get(suffix, "keras")
    return model.format


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
    format: str = "keras"
    # The runtime's thread pools (format "onnx" or "torch"; 0: its default) and ONNX Runtime's
    # CPU arena (format "onnx" only).
    intra_op_threads: int = 0
    inter_op_threads: int = 0
    cpu_mem_arena: bool = True

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


CULPRIT_MODES = ("auto", "always", "never")


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
    # Open loop (infbench/config/schedule.py): `rate` requests/s sent on schedule whether or not the
    # earlier ones finished, latency from the intended send time; `arrival` constant | poisson
    # (seeded by `arrival_seed`); at most `max_in_flight` requests in flight, a request over it
    # waits for a free slot (counted, and its wait is in its latency).
    rate: float = 0.0
    arrival: str = "poisson"
    arrival_seed: int = 0
    max_in_flight: int = 512
    # Measure the model alone (no HTTP) before the load: serving efficiency per step.
    model_alone: bool = False
    # The culprit window after the judged cycles (infbench/measure/window.py): "auto" when the
    # heap census climbed in every cycle, "always", "never".
    culprit: str = "auto"
    # `cycles` is the most a cycled profile runs: with `settle` it stops once the verdict is
    # settled (infbench/analysis/verdict.py `settled`), never before MIN_CYCLES.
    settle: bool = True
    # A packet capture of each step (infbench/measure/capture.py): tcpdump's snap length
    # (bytes kept of each packet) and the most one step's file may hold (millions of bytes).
    capture: bool = False
    capture_snaplen: int = 1024
    capture_max_mb: int = 200
    # Locust's distributed engine (infbench/measure/distributed.py): above 1 local worker
    # processes, or external workers (started by hand, anywhere), make a step one master and
    # its workers; the master listens on `load_master_bind`:`load_master_port` (0: a free port)
    # and waits `load_worker_wait` s for every worker before the step fails.
    load_processes: int = 1
    load_external_workers: int = 0
    load_master_bind: str = "127.0.0.1"
    load_master_port: int = 0
    load_worker_wait: float = 60.0

    @property
    def distributed(self) -> bool:
        return self.load_processes > 1 or self.load_external_workers > 0

    @property
    def load_workers(self) -> int:
        """Workers a distributed step's master waits for: `load_processes` local ones and the
        external ones."""
        return self.load_processes + self.load_external_workers

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
    url: str = ""  # server = "url": where it answers (http(s)://host[:port][/prefix])
    pid: int = 0  # server = "url": its process, for memory and CPU (0: none given)
    pid_file: str = ""  # server = "url": a file holding that pid, read when the run starts
    metrics: str = ""  # server = "url": its Prometheus /metrics url, scraped on the run's clock
    cgroup: str = ""  # server = "url": its cgroup's folder (/sys/fs/cgroup/...), for memory/CPU
    device: str = "cpu"  # cpu | cuda (DEVICES; cuda: an error without a GPU or with Keras)
    # A peer environment of its own (infbench/config/envs.py): {python} is its interpreter.
    venv: str = ""

    def __hash__(self) -> int:
        return hash(self.name)

    def batch_limit(self) -> tuple[int, str] | None:
        """The most items a request to this service may carry, and why (None: no limit known):
        the tightest of its own `max_batch`, what its app takes (APP_MAX_BATCH) and an
        INFBENCH_MAX_IMAGES its env fixes (the harness's own value follows the profile)."""
        limits = []
        if self.max_batch:
            limits.append((self.max_batch, f"declares max_batch = {self.max_batch}"))
        if SERVER_KINDS[self.server].runs_app and self.app in APP_MAX_BATCH:
            n, what = APP_MAX_BATCH[self.app]
            limits.append((n, f"runs app {self.app!r}, which takes {what}"))
        if self.env.get(MAX_IMAGES_ENV):
            n = int(self.env[MAX_IMAGES_ENV])  # checked when loaded
            limits.append((n, f"sets env {MAX_IMAGES_ENV} = {n}"))
        return min(limits, key=lambda x: x[0]) if limits else None

    @property
    def uses_python(self) -> bool:
        """Started with the harness's (or the image's) Python, so the probes can run in it."""
        return SERVER_KINDS[self.server].our_python or (
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

    def check_model(self, model: Model, runtime: str) -> None:
        """The model this variant serves, on `runtime`, as a one-line error before anything
        starts: a service on device cuda needs a runtime that honours it (an .onnx or .pt
        model; TensorFlow is installed as tensorflow-cpu) and runs natively (containers get
        no GPU), the servers' Docker image has no PyTorch (see TORCH_NOT_IN_IMAGE), and
        natively a torch model needs torch installed (`make torch`)."""
        kind = model_runtime(model)
        if runtime == "docker" and kind == "torch":
            raise ConfigError(f"model {model.name!r}: {TORCH_NOT_IN_IMAGE}")
        if kind == "torch" and not torch_installed():
            raise ConfigError(f"model {model.name!r} runs on PyTorch: {TORCH_NOT_INSTALLED}")
        for s in self.services:
            if s.gets_model and s.device == "cuda" and runtime == "docker":
                raise ConfigError(
                    f"variants.{self.name}: service {s.name!r} has device = 'cuda', but "
                    "RUNTIME=docker starts containers without a GPU (no --gpus) from an image "
                    "with the CPU onnxruntime; run it natively (RUNTIME=native)")
            if s.gets_model and s.device == "cuda" and kind not in THREADED_FORMATS:
                raise ConfigError(
                    f"variants.{self.name}: service {s.name!r} has device = 'cuda', but model "
                    f"{model.name!r} is a Keras model (TensorFlow here is tensorflow-cpu); use "
                    "an onnx or torch model (format = 'onnx' | 'torch')")

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
