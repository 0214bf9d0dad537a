"""The Docker runtime: each hypothesis in its own container; everything above the launcher is
unchanged.

`DockerLauncher` builds an image per hypothesis from docker/Dockerfile and runs the server in a
container exactly as the native launcher runs it: under `mprof run --include-children
--multiprocess`, bound to 127.0.0.1 (host network), with the variant's results folder mounted at
/out so that `mprofile.dat` and `server.log` land where a native run puts them. Beside them it
records the container's cgroup memory (`cgroup_memory.csv`), the figure `docker stats` shows, so
the two can be compared.

Images: tagged `infbench-<variant>:<hash>`, the hash covering the Dockerfile, the pinned server
requirements, servers/, the base image and the variant fields that shape the container (server,
app, command, env). The dependencies are downloaded on the host (with the host's pip settings)
into a wheelhouse and served to the build on loopback, so the build needs neither an index nor
a CA bundle inside. When the default base (python:3.11-slim) cannot be had, the offline base
from docker/base.sh is used, and the build says so.

Cleanup: the container's `docker run` client is a `proc.Group` whose `stop()` also stops and
removes the container, so the one cleanup path (`proc.stop_all()`, and every server's `stop()`)
leaves no container behind; the container name and the `infbench.run` label identify ours.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import hashlib
import http.server
import importlib.metadata
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, TextIO

import psutil

from infbench import proc
from infbench.config import Variant
from infbench.launch import (
    GRACE_S,
    HOST,
    ROOT,
    LaunchError,
    ServerSpec,
    WatchedServer,
    mprof_argv,
    server_argv,
)

DOCKERFILE = ROOT / "docker" / "Dockerfile"
BASE_SCRIPT = ROOT / "docker" / "base.sh"
LOCK = ROOT / "requirements.lock"
SERVERS = ROOT / "servers"
WORK = ROOT / "build" / "docker"
DEFAULT_BASE = "python:3.11-slim"
OFFLINE_BASE = "infbench-base:bookworm"
CONTAINER_PYTHON = "/opt/venv/bin/python"
OUT = "/out"
MODELS = "/models"
CGROUP_FILE = "cgroup_memory.csv"
RUN_LABEL = "infbench.run"
WHEELHOUSE_PORT = 47811  # a fixed port keeps the build argument, and so the layer cache, stable
PULL_TIMEOUT_S = 30.0
ENGINE_HINT = "start one with `make docker-engine` (scripts/docker-engine.sh start)"

# What the servers import, and mprof; their dependencies follow from the installed metadata.
SERVER_PACKAGES = ("tensorflow-cpu", "keras", "numpy", "pillow", "fastapi", "starlette",
                   "anyio", "python-multipart", "uvicorn", "uvicorn-worker", "gunicorn",
                   "hypercorn", "memory-profiler", "psutil")

Say = Callable[[str], None]


# -- the engine ------------------------------------------------------------------------------
def docker_exe() -> str | None:
    return shutil.which("docker")


def engine_problem(timeout: float = 15.0) -> str | None:
    """None if a Docker engine answers, else one line saying what is wrong."""
    exe = docker_exe()
    if exe is None:
        return "no `docker` command on PATH"
    try:
        res = subprocess.run([exe, "info", "--format", "{{.ServerVersion}}"],
                             capture_output=True, text=True, timeout=timeout,
                             stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return f"`docker info` did not answer within {timeout:.0f} s"
    except OSError as e:
        return f"cannot run {exe}: {e.strerror}"
    if res.returncode == 0 and res.stdout.strip():
        return None
    lines = [ln.strip() for ln in (res.stderr + "\n" + res.stdout).splitlines() if ln.strip()]
    return (lines[0][:200] if lines else f"`docker info` exited {res.returncode}")


def docker(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """A short docker CLI call; a hung engine is an error, not a hang."""
    try:
        return subprocess.run(["docker", *args], capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(["docker", *args], 124, "",
                                           f"docker {args[0]}: timed out after {timeout:.0f} s")


def image_id(ref: str) -> str | None:
    res = docker("image", "inspect", "--format", "{{.Id}}", ref)
    return (res.stdout.strip() or None) if res.returncode == 0 else None


# -- what goes into an image -----------------------------------------------------------------
def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(text: str) -> dict[str, str]:
    """requirements.lock (`name==version` lines) as {normalized name: version}."""
    pins = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[_norm(name)] = version.strip()
    return pins


def installed_requires(name: str) -> list[str]:
    """The dependencies of an installed distribution that apply here (no extras)."""
    from packaging.requirements import Requirement

    try:
        dist = importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        raise LaunchError(f"{name} is not installed in this environment (run `make venv`); "
                          "the image's requirements are derived from it") from None
    out = []
    for raw in dist.requires or []:
        req = Requirement(raw)
        if req.marker is None or req.marker.evaluate({"extra": ""}):
            out.append(req.name)
    return out


def closure(roots: tuple[str, ...], requires: Callable[[str], list[str]]) -> list[str]:
    """Every distribution the roots need, transitively (normalized names, sorted)."""
    seen: set[str] = set()
    todo = [_norm(r) for r in roots]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo += [_norm(r) for r in requires(name)]
    return sorted(seen)


def server_requirements(lock_text: str, requires: Callable[[str], list[str]] = installed_requires,
                        version: Callable[[str], str] = importlib.metadata.version) -> str:
    """The servers' share of requirements.lock, pinned: the lock's version where it has one,
    else the installed one (setuptools and wheel, which `pip freeze` leaves out)."""
    pins = read_lock(lock_text)
    lines = ["# Generated by infbench/docker.py from requirements.lock: what the servers and "
             "mprof need."]
    for name in closure(SERVER_PACKAGES, requires):
        lines.append(f"{name}=={pins.get(name) or version(name)}")
    return "\n".join(lines) + "\n"


def context_files(requirements: str) -> dict[str, bytes]:
    """The build context, as {relative path: content}: what the image hash covers."""
    files = {"Dockerfile": DOCKERFILE.read_bytes(),
             "requirements-server.txt": requirements.encode()}
    for p in sorted(SERVERS.rglob("*")):
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc":
            files[f"servers/{p.relative_to(SERVERS).as_posix()}"] = p.read_bytes()
    return files


def image_fields(variant: Variant) -> dict[str, Any]:
    """The variant fields that shape its container (the rest are runtime settings)."""
    return {"server": variant.server, "app": variant.app, "command": list(variant.command),
            "env": dict(sorted(variant.env.items()))}


def image_hash(files: dict[str, bytes], variant: Variant, base: str, base_id: str) -> str:
    h = hashlib.sha256()
    for rel in sorted(files):
        h.update(rel.encode() + b"\0" + hashlib.sha256(files[rel]).digest())
    h.update(json.dumps({"variant": image_fields(variant), "base": base, "base_id": base_id},
                        sort_keys=True).encode())
    return h.hexdigest()[:12]


def slug(name: str) -> str:
    s = re.sub(r"[^a-z0-9_.-]+", "-", name.lower()).strip("-._")
    return s or "variant"


def image_tag(variant: Variant, digest: str) -> str:
    return f"infbench-{slug(variant.name)}:{digest}"


def container_name(run_id: str, variant: Variant) -> str:
    return f"infbench-{slug(run_id)}-{slug(variant.name)}"


def build_argv(tag: str, context: Path, base: str, wheelhouse: str) -> list[str]:
    return ["docker", "build", "--network", "host", "--file", str(context / "Dockerfile"),
            "--tag", tag, "--build-arg", f"BASE_IMAGE={base}",
            "--build-arg", f"WHEELHOUSE={wheelhouse}", str(context)]


# -- the container ---------------------------------------------------------------------------
def container_env(spec: ServerSpec, model_path: str) -> dict[str, str]:
    """What the server is told (as the native launcher tells it), and nothing of the host's."""
    v = spec.variant
    env = {"PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "2",
           "INFBENCH_MODEL_PATH": model_path, "INFBENCH_ENDPOINT": v.endpoint,
           "INFBENCH_CALL": v.call, "INFBENCH_MAX_IMAGES": str(spec.max_images)}
    if v.thread_limit:
        env["INFBENCH_THREAD_LIMIT"] = str(v.thread_limit)
    if v.probes:  # the probes write into the mounted variant folder, as natively
        env["INFBENCH_PROBE_DIR"] = OUT
        if v.tracemalloc:
            env["INFBENCH_TRACEMALLOC"] = "1"
    env.update(v.env)
    return env


def inner_argv(spec: ServerSpec) -> list[str]:
    """The command inside the container: the native one, with the image's Python and /out."""
    program = server_argv(spec.variant, spec.port, python=CONTAINER_PYTHON)
    return mprof_argv(Path(OUT) / "mprofile.dat", spec.sample_interval, program,
                      python=CONTAINER_PYTHON)


def run_argv(spec: ServerSpec, image: str, run_id: str, user: str | None = None) -> list[str]:
    """`docker run` in the foreground: its output is the server's log, its exit the container's.

    --sig-proxy=false: stopping is ours to do (server first, so mprof writes its last samples);
    --init: a real PID 1 that reaps Gunicorn's exited workers.
    """
    user = user or f"{os.getuid()}:{os.getgid()}"
    model = spec.model_path.resolve()
    argv = ["docker", "run", "--name", container_name(run_id, spec.variant),
            "--label", f"{RUN_LABEL}={run_id}", "--label", f"infbench.variant={spec.variant.name}",
            "--network", "host", "--init", "--sig-proxy=false", "--user", user,
            "--workdir", "/app",
            "--mount", f"type=bind,source={spec.out_dir.resolve()},target={OUT}",
            "--mount", f"type=bind,source={model.parent},target={MODELS},readonly"]
    for k, v in sorted(container_env(spec, f"{MODELS}/{model.name}").items()):
        argv += ["--env", f"{k}={v}"]
    return [*argv, image, *inner_argv(spec)]


def remove_container(name: str, grace: float = GRACE_S) -> None:
    """Stop (TERM, `grace`, KILL) and remove our container; nothing if it is gone already."""
    if docker("container", "inspect", "--format", "{{.Id}}", name, timeout=30).returncode != 0:
        return
    docker("stop", "--time", str(int(grace)), name, timeout=grace + 30)
    docker("rm", "--force", "--volumes", name, timeout=30)


class ContainerGroup(proc.Group):
    """The `docker run` client as a registered process group whose stop() also ends the
    container, so `proc.stop_all()` (every exit path) leaves none behind."""

    def __init__(self, argv: list[str], *, name: str, log_path: Path,
                 on_stop: Callable[[], None]) -> None:
        self.container = name
        self._on_stop = on_stop
        self._removed = False
        super().__init__(argv, log_path=log_path)

    def stop(self, grace: float = 5.0) -> int | None:
        first = not self._removed
        self._removed = True
        if first:
            remove_container(self.container, grace)
            self._on_stop()
        code = super().stop(grace)
        if first:  # a client ended mid-create may still have made it: remove that too
            remove_container(self.container, grace)
        return code


class DockerServer(WatchedServer):
    """A variant's server in a container; the same interface as the native one."""

    def __init__(self, spec: ServerSpec, image: str) -> None:
        self.variant = spec.variant
        self.spec = spec
        self.url = f"http://{HOST}:{spec.port}"
        self.image = image
        self.run_id = spec.out_dir.resolve().parent.name
        self.name = container_name(self.run_id, spec.variant)
        self.log_path = spec.out_dir / "server.log"
        self.argv = run_argv(spec, image, self.run_id)
        self.started_at = time.time()
        self._seen_server = False
        self._pid: int | None = None
        self._id = ""
        self.monitor = CgroupMonitor(self.name, spec.out_dir / CGROUP_FILE, spec.sample_interval)
        self.group = ContainerGroup(self.argv, name=self.name, log_path=self.log_path,
                                    on_stop=self.monitor.stop)
        self.monitor.start()

    def _container_pid(self) -> int | None:
        """The host pid of the container's PID 1 (docker-init), once it runs."""
        if self._pid is None and self.group.alive():
            res = docker("container", "inspect", "--format", "{{.State.Pid}} {{.Id}}",
                         self.name, timeout=10)
            parts = res.stdout.split()
            if res.returncode == 0 and len(parts) == 2 and parts[0] != "0":
                self._pid, self._id = int(parts[0]), parts[1]
        return self._pid

    def _mprof(self) -> psutil.Process | None:
        pid = self._container_pid()
        if pid is None:
            return None
        try:
            root = psutil.Process(pid)  # docker-init, whose command line names mprof too
            for p in [*root.children(), root]:
                if "mprof" in " ".join(p.cmdline()):
                    return p
        except psutil.Error:
            pass
        return None

    def _server_processes(self) -> list[psutil.Process]:
        mprof = self._mprof()
        if mprof is None:
            return []
        try:
            return list(mprof.children(recursive=True))
        except psutil.Error:
            return []

    # alive(), exit_code(), processes(): as natively (WatchedServer). The foreground client
    # ends with the container; the server and its workers are host pids under mprof.

    def info(self) -> dict[str, object]:
        return {"launcher": "docker", "image": self.image, "image_id": image_id(self.image),
                "container": self.name, "container_id": self._id, "argv": self.argv,
                "inner_argv": inner_argv(self.spec), "url": self.url,
                "init_pid": self._pid, "mprof_pid": (m.pid if (m := self._mprof()) else None),
                "server_pids": [p.pid for p in self._server_processes()],
                "cgroup": str(self.monitor.source), "started_at": self.started_at}

    def stop(self) -> None:
        # As natively: TERM the server so mprof sees its child exit, writes its last samples
        # and ends, which ends the container; only then stop and remove what is left.
        mprof = self._mprof()
        direct: list[psutil.Process] = []
        if mprof is not None:
            with contextlib.suppress(psutil.Error):
                direct = mprof.children()
        for p in direct:
            with contextlib.suppress(psutil.Error):
                p.send_signal(signal.SIGTERM)
        if direct:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.group.popen.wait(timeout=GRACE_S + 3)
        self.group.stop(GRACE_S)


# -- cgroup memory ---------------------------------------------------------------------------
def parse_memory_stat(text: str) -> dict[str, int]:
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            out[parts[0]] = int(parts[1])
    return out


def docker_stats_bytes(usage: int, stat: dict[str, int]) -> int:
    """Memory as `docker stats` shows it: usage minus inactive file cache.

    docker/cli calculateMemUsageUnixNoCache: cgroup v1 subtracts total_inactive_file,
    cgroup v2 inactive_file, each only when smaller than the usage.
    """
    v1 = stat.get("total_inactive_file")
    if v1 is not None and v1 < usage:
        return usage - v1
    v2 = stat.get("inactive_file", 0)
    if v2 < usage:
        return usage - v2
    return usage


def cgroup_memory_dir(proc_cgroup: str, mountinfo: str) -> tuple[Path, int] | None:
    """The host directory of a process's memory cgroup and the cgroup version (1 or 2), from
    /proc/<pid>/cgroup and /proc/self/mountinfo. The v1 memory controller wins on hybrid hosts
    (that is where its accounting is)."""
    mounts: dict[int, tuple[str, str]] = {}  # version -> (mount root, mount point)
    for line in mountinfo.splitlines():
        left, _, right = line.partition(" - ")
        f, r = left.split(), right.split()
        if len(f) < 5 or len(r) < 3:
            continue
        if r[0] == "cgroup" and "memory" in r[2].split(","):
            mounts.setdefault(1, (f[3], f[4]))
        elif r[0] == "cgroup2":
            mounts.setdefault(2, (f[3], f[4]))
    paths: dict[int, str] = {}
    for line in proc_cgroup.splitlines():
        parts = line.strip().split(":", 2)
        if len(parts) != 3:
            continue
        if parts[0] == "0" and parts[1] == "":
            paths[2] = parts[2]
        elif "memory" in parts[1].split(","):
            paths[1] = parts[2]
    for version in (1, 2):
        if version in mounts and version in paths:
            root, point = mounts[version]
            rel = paths[version]
            if root != "/" and rel.startswith(root):
                rel = rel[len(root):]
            return Path(point) / rel.lstrip("/"), version
    return None


_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_size(text: str) -> int | None:
    """'123.4MiB' (docker stats' MemUsage, before the ' / limit') -> bytes."""
    m = re.match(r"\s*([0-9.]+)\s*([a-zA-Z]+)", text)
    if not m or m.group(2).lower() not in _UNITS:
        return None
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


class CgroupMonitor:
    """Samples the container's memory at the mprof interval into cgroup_memory.csv, on the
    clock of phases.json (time.time()). Reads the cgroup files on the host; where it cannot
    find them, it falls back to `docker stats` (about one sample a second)."""

    HEADER = ("time", "mem_mb", "usage_bytes", "inactive_file_bytes", "source")

    def __init__(self, container: str, out: Path, interval: float) -> None:
        self.container = container
        self.out = out
        self.interval = interval
        self.source: str | Path = "(not found yet)"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"cgroup {container}",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def _pid(self) -> int | None:
        res = docker("container", "inspect", "--format", "{{.State.Pid}}", self.container,
                     timeout=10)
        text = res.stdout.strip()
        return int(text) if res.returncode == 0 and text.isdigit() and text != "0" else None

    def _run(self) -> None:
        with self.out.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(self.HEADER)
            f.flush()
            pid = None
            while pid is None and not self._stop.wait(0.1):
                pid = self._pid()
            if pid is None:
                return
            found = None
            with contextlib.suppress(OSError):
                found = cgroup_memory_dir(Path(f"/proc/{pid}/cgroup").read_text(),
                                          Path("/proc/self/mountinfo").read_text())
            if found is not None and self._usage_file(*found).exists():
                self.source = found[0]
                self._sample_files(w, f, *found)
            else:
                self.source = "docker stats"
                self._sample_stats(w, f)

    @staticmethod
    def _usage_file(directory: Path, version: int) -> Path:
        return directory / ("memory.usage_in_bytes" if version == 1 else "memory.current")

    def _sample_files(self, w: Any, f: IO[str], directory: Path, version: int) -> None:
        usage_file, stat_file = self._usage_file(directory, version), directory / "memory.stat"
        source = f"cgroup-v{version}"
        next_t = time.monotonic()
        while not self._stop.is_set():
            try:
                t = time.time()
                usage = int(usage_file.read_text())
                stat = parse_memory_stat(stat_file.read_text())
            except (OSError, ValueError):
                return  # the container (and its cgroup) is gone
            inactive = stat.get("total_inactive_file", stat.get("inactive_file", 0))
            w.writerow([f"{t:.4f}", f"{docker_stats_bytes(usage, stat) / 2**20:.3f}", usage,
                        inactive, source])
            f.flush()
            next_t += self.interval
            self._stop.wait(max(0.0, next_t - time.monotonic()))

    def _sample_stats(self, w: Any, f: IO[str]) -> None:
        while not self._stop.is_set():
            res = docker("stats", "--no-stream", "--format", "{{.MemUsage}}", self.container,
                         timeout=15)
            t = time.time()
            size = parse_size(res.stdout.split("/")[0]) if res.returncode == 0 else None
            if size is None:
                if self._pid() is None:
                    return
                self._stop.wait(self.interval)
                continue
            w.writerow([f"{t:.4f}", f"{size / 2**20:.3f}", "", "", "docker-stats"])
            f.flush()
            self._stop.wait(self.interval)


# -- building --------------------------------------------------------------------------------
def _fmt(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 60}:{s % 60:02d}"


def run_logged(argv: list[str], log: Path, label: str, stream: TextIO | None = None,
               env: dict[str, str] | None = None, every: float = 10.0,
               detail: Callable[[Path], str] | None = None) -> int:
    """Run a long command with its output in `log`, showing one live line (label, elapsed,
    detail); on a terminal the line rewrites itself, in a log it repeats every `every` s."""
    stream = stream or sys.stdout
    tty = bool(getattr(stream, "isatty", lambda: False)())
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_bytes(b"")
    started = time.monotonic()
    last = started
    width = 0
    group = proc.Group(argv, log_path=log, env=env, cwd=ROOT)
    try:
        while group.poll() is None:
            time.sleep(0.5)
            now = time.monotonic()
            if tty or now - last >= every:
                last = now
                extra = detail(log) if detail else ""
                line = f"  {label} ... {_fmt(now - started)}" + (f" ({extra})" if extra else "")
                if tty:
                    stream.write("\r" + line.ljust(width))
                    width = len(line)
                else:
                    stream.write(line + "\n")
                stream.flush()
    finally:
        code = group.stop(grace=10.0)
        if tty and width:
            stream.write("\r" + " " * width + "\r")
            stream.flush()
    return code if code is not None else 1


def _build_step(log: Path) -> str:
    steps = re.findall(r"^Step (\d+/\d+)", log.read_text(errors="replace"), re.M)
    return f"step {steps[-1]}" if steps else ""


@contextlib.contextmanager
def serve_directory(directory: Path, port: int = WHEELHOUSE_PORT) -> Iterator[str]:
    """Serve a folder on 127.0.0.1 for the length of a build; yields its URL."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(directory))
    try:
        server = http.server.ThreadingHTTPServer((HOST, port), handler)
    except OSError:  # the fixed port is taken: any port (the dependency layer is rebuilt)
        server = http.server.ThreadingHTTPServer((HOST, 0), handler)
    thread = threading.Thread(target=server.serve_forever, name="wheelhouse", daemon=True)
    thread.start()
    try:
        yield f"http://{HOST}:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


class DockerLauncher:
    name = "docker"

    def __init__(self) -> None:
        self._checked = False
        self._files: dict[str, bytes] | None = None
        self._images: dict[str, str] = {}

    def check(self) -> None:
        if self._checked:
            return
        problem = engine_problem()
        if problem:
            raise LaunchError(f"RUNTIME=docker needs a Docker engine: {problem}; {ENGINE_HINT}")
        self._checked = True

    # -- images ------------------------------------------------------------------------
    def files(self) -> dict[str, bytes]:
        if self._files is None:
            self._files = context_files(server_requirements(LOCK.read_text()))
        return self._files

    def tag_for(self, variant: Variant, base: str) -> str | None:
        base_id = image_id(base)
        if base_id is None:
            return None
        return image_tag(variant, image_hash(self.files(), variant, base, base_id))

    def find_image(self, variant: Variant) -> str | None:
        """An image already built for this variant as it is now, on any usable base."""
        explicit = os.environ.get("INFBENCH_BASE_IMAGE", "")
        for base in [explicit] if explicit else [DEFAULT_BASE, OFFLINE_BASE]:
            tag = self.tag_for(variant, base)
            if tag and image_id(tag):
                return tag
        return None

    def resolve_base(self, say: Say) -> str:
        explicit = os.environ.get("INFBENCH_BASE_IMAGE", "")
        if explicit:
            if image_id(explicit) is None and docker("pull", explicit,
                                                     timeout=600).returncode != 0:
                raise LaunchError(f"base image {explicit!r} (INFBENCH_BASE_IMAGE) is neither "
                                  "here nor pullable")
            return explicit
        if image_id(DEFAULT_BASE):
            return DEFAULT_BASE
        pulled = docker("pull", "--quiet", DEFAULT_BASE, timeout=PULL_TIMEOUT_S)
        if pulled.returncode == 0:
            return DEFAULT_BASE
        # The end of docker's message says why ("no such host", "timed out after 30 s").
        why = (pulled.stderr.strip().splitlines() or ["?"])[-1].rsplit(": ", 1)[-1][:80]
        if image_id(OFFLINE_BASE):
            say(f"base image: {DEFAULT_BASE} cannot be pulled ({why}); using the offline base "
                f"{OFFLINE_BASE}")
            return OFFLINE_BASE
        say(f"base image: {DEFAULT_BASE} cannot be pulled ({why}); building the offline base "
            f"{OFFLINE_BASE} with docker/base.sh (`make docker-base`)")
        log = WORK / "logs" / "docker-base.log"
        code = run_logged(["bash", str(BASE_SCRIPT)], log, f"building {OFFLINE_BASE}")
        if code != 0 or image_id(OFFLINE_BASE) is None:
            sys.stderr.write(proc.tail(log, 15) + "\n")
            raise LaunchError(f"building the offline base image failed (log: {log}); "
                              "run `make docker-base` (as root) and try again")
        return OFFLINE_BASE

    def wheelhouse(self, say: Say) -> Path:
        """Every wheel of the pinned server requirements, downloaded once on the host."""
        req = self.files()["requirements-server.txt"]
        key = hashlib.sha256(req + sys.version.encode()).hexdigest()[:12]
        folder = WORK / "wheels" / key
        if (folder / ".complete").exists():
            return folder
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "requirements-server.txt").write_bytes(req)
        log = WORK / "logs" / f"wheels-{key}.log"
        say(f"downloading the pinned server wheels into {folder.relative_to(ROOT)} "
            "(host pip settings; once per lock)")
        started = time.monotonic()
        code = run_logged([sys.executable, "-m", "pip", "download", "--disable-pip-version-check",
                           "--progress-bar", "off", "--only-binary", ":all:",
                           "-r", str(folder / "requirements-server.txt"), "-d", str(folder)],
                          log, "pip download")
        if code != 0:
            sys.stderr.write(proc.tail(log, 15) + "\n")
            raise LaunchError(f"downloading the server wheels failed (log: {log})")
        (folder / ".complete").write_text(time.strftime("%Y-%m-%dT%H:%M:%S\n"))
        wheels = list(folder.glob("*.whl"))
        say(f"  {len(wheels)} wheels, {sum(w.stat().st_size for w in wheels) / 2**20:,.0f} MB "
            f"in {_fmt(time.monotonic() - started)}")
        return folder

    def ensure_image(self, variant: Variant, say: Say) -> str:
        found = self.find_image(variant)
        if found:
            return found
        base = self.resolve_base(say)
        tag = self.tag_for(variant, base)
        assert tag is not None  # resolve_base returns a base that is here
        if image_id(tag):
            return tag
        wheels = self.wheelhouse(say)
        context = WORK / "context"
        shutil.rmtree(context, ignore_errors=True)
        for rel, data in self.files().items():
            (context / rel).parent.mkdir(parents=True, exist_ok=True)
            (context / rel).write_bytes(data)
        log = WORK / "logs" / f"build-{tag.replace(':', '-')}.log"
        say(f"building image {tag} on {base} (log: {log.relative_to(ROOT)})")
        started = time.monotonic()
        with serve_directory(wheels) as url:
            if f":{WHEELHOUSE_PORT}/" not in url:
                say(f"  port {WHEELHOUSE_PORT} is taken: serving the wheels on {url}, so the "
                    "dependency layer is rebuilt rather than taken from the cache")
            code = run_logged(build_argv(tag, context, base, url), log, f"docker build {tag}",
                              detail=_build_step)
        if code != 0 or image_id(tag) is None:
            sys.stderr.write(f"--- tail of {log} ---\n{proc.tail(log, 25)}\n")
            raise LaunchError(f"docker build of {tag} failed (exit {code}; log: {log})")
        say(f"built {tag} in {_fmt(time.monotonic() - started)}")
        return tag

    def prepare(self, variants: list[Variant], say: Say) -> None:
        """Build (or find) the image of every variant before anything runs."""
        for v in variants:
            if v.allocator != "glibc":
                raise LaunchError(f"variant {v.name}: allocator {v.allocator} runs natively "
                                  "only for now (the image has no allocator packages)")
        for v in variants:
            tag = self.ensure_image(v, say)
            self._images[v.name] = tag
            say(f"variant {v.name}: image {tag}")

    # -- running -----------------------------------------------------------------------
    def start(self, spec: ServerSpec) -> DockerServer:
        image = self._images.get(spec.variant.name) or self.ensure_image(spec.variant, print)
        self._images[spec.variant.name] = image
        return DockerServer(spec, image)
