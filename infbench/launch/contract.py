"""What a service replica is told: its command line's placeholders and its environment.

One function builds the environment for both runtimes (`replica_env`); the runtimes differ
only in `Where` the server finds things (its Python, its results folder, the model file), so a
setting can no longer reach native servers and silently miss containers (as INFBENCH_TRIM_EACH
once did). tests/unit/test_topology.py compares the two outputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from infbench.config import ALLOCATORS, MAX_IMAGES_ENV, Service, Variant
from infbench.launch.argv import fill
from infbench.paths import HOST

MAX_IMAGES_DEFAULT = 128
PROBE_HOOK = "servers/inject"  # under the code root, natively and in the image (/app)
MAX_BODY_DEFAULT = 64 * 1024 * 1024


@dataclass(frozen=True)
class Where:
    """Where the server sees things: its interpreter, its folder, the model, the code."""

    python: str
    out: str
    model: str
    root: str
    bind: str = HOST  # the {host} it listens on: loopback here, every interface in an export


@dataclass(frozen=True)
class ReplicaSpec:
    """One replica of one service of a variant, with its ports chosen."""

    variant: Variant
    service: Service
    replica: int
    ports: dict[str, int]
    out_dir: Path
    model_path: Path | None
    sample_interval: float
    run_id: str
    max_images: int = MAX_IMAGES_DEFAULT
    max_body_bytes: int = MAX_BODY_DEFAULT
    # Other services' placeholders ({services.<name>.port|url|ports.<p>}) and hand-over env.
    peers: dict[str, str] = field(default_factory=dict)
    peer_env: dict[str, str] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """`server` for a one-service variant, else `<service>-<replica>`."""
        return "server" if self.variant.single else f"{self.service.name}-{self.replica}"

    @property
    def port(self) -> int:
        return self.ports[self.service.ports[0]]

    @property
    def url(self) -> str:
        return service_url(self.service, self.port)

    def values(self, where: Where) -> dict[str, str]:
        """Every placeholder of this replica, as the server will see it."""
        out = {"port": str(self.port), "host": where.bind, "replica": str(self.replica),
               "python": where.python, "out": where.out}
        out.update({f"ports.{name}": str(p) for name, p in self.ports.items()})
        out.update(self.peers)
        return out


def service_url(service: Service, port: int, host: str = HOST) -> str:
    """How others reach it: on loopback here, by service name on a cluster engine (export);
    a `server = "url"` service where it already runs."""
    if service.url:
        return service.url
    scheme = "redis" if service.server == "redis" else "http"
    return f"{scheme}://{host}:{port}" + ("/0" if scheme == "redis" else "")


def env_name(service: str) -> str:
    return service.upper().replace("-", "_")


def peer_values(service: Service, ports: dict[str, int], host: str = HOST
                ) -> tuple[dict[str, str], dict[str, str]]:
    """A started service as others see it: placeholders and the INFBENCH_<NAME>_* env (`host`:
    where it is reached, loopback here, its service name in an export)."""
    first = ports[service.ports[0]]
    url = service_url(service, first, host)
    values = {f"services.{service.name}.port": str(first), f"services.{service.name}.url": url}
    values.update({f"services.{service.name}.ports.{n}": str(p) for n, p in ports.items()})
    key = env_name(service.name)
    env = {f"INFBENCH_{key}_URL": url, f"INFBENCH_{key}_PORT": str(first)}
    env.update({f"INFBENCH_{key}_{n.upper()}_PORT": str(p) for n, p in ports.items()})
    return values, env


def replica_env(spec: ReplicaSpec, where: Where) -> dict[str, str]:
    """The environment a replica's server gets from us (the launcher adds the host's, natively)."""
    s = spec.service
    env = {"PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "2",
           "INFBENCH_SERVICE": s.name, "INFBENCH_REPLICA": str(spec.replica),
           "INFBENCH_PORT": str(spec.port), "INFBENCH_TIMING_DIR": where.out,
           "PYTHONPATH": where.root}
    if s.gets_model:
        env.update({"INFBENCH_MODEL_PATH": where.model, "INFBENCH_ENDPOINT": s.endpoint,
                    "INFBENCH_CALL": s.call, MAX_IMAGES_ENV: str(spec.max_images),
                    "INFBENCH_MAX_BODY_BYTES": str(spec.max_body_bytes),
                    "INFBENCH_DEVICE": s.device})
    if s.thread_limit:
        env["INFBENCH_THREAD_LIMIT"] = str(s.thread_limit)
    if s.allocator != "glibc":
        env["LD_PRELOAD"] = ALLOCATORS[s.allocator]
    if s.trim_each_request:
        env["INFBENCH_TRIM_EACH"] = "1"
    if s.probes:  # servers/shared/probes.py: one JSON line a second per process, in its folder
        env["INFBENCH_PROBE_DIR"] = where.out
        # Every Python process of the service starts them, its code untouched: a
        # sitecustomize first on the path.
        env["PYTHONPATH"] = f"{where.root}/{PROBE_HOOK}:{where.root}"
        if s.tracemalloc:  # opt-in, from start-up (the census gives the heap's bytes without it)
            env["INFBENCH_TRACEMALLOC"] = "1"
    # Services it depends on, handed over by name (INFBENCH_REDIS_URL, INFBENCH_MODEL_A_URL...).
    env.update({k: v for k, v in spec.peer_env.items()
                if any(k.startswith(f"INFBENCH_{env_name(d)}_") for d in s.depends_on)})
    values = spec.values(where)
    env.update({k: fill(v, values) for k, v in s.env.items()})
    return env


# Variables of ours that must not leak from the harness's own environment into a server
# whose variant did not set them (e.g. a user's INFBENCH_PROBE_DIR in their shell).
SCRUBBED = ("INFBENCH_PROBE_DIR", "INFBENCH_TRACEMALLOC", "INFBENCH_TRIM_EACH",
            "INFBENCH_THREAD_LIMIT", "INFBENCH_TIMING_DIR", "INFBENCH_PAD_BATCH",
            "INFBENCH_PROFILER", "INFBENCH_PROFILE_DIR", "INFBENCH_PROFILE_PATH",
            "INFBENCH_TCP_NODELAY", "INFBENCH_REDIS_MAX_CONNECTIONS", "INFBENCH_DEVICE",
            "INFBENCH_MODEL_CALLS")
