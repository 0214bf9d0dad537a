"""Replicas in containers: the same command and contract as natively, in the servers' image.

Each replica runs `docker-init` -> `mprof run --include-children --multiprocess --exit-code` ->
the server, on the host network (the harness chose its ports, so replicas never clash: compose's
`--scale` cannot work with host networking), as the host user, with its results folder mounted
at /out and the model file read-only at /models. The environment is contract.replica_env's,
built for the container's paths. Beside mprof's file it records the container's cgroup memory.

Cleanup: the `docker run` client is a `proc.Group` whose `stop()` also stops and removes the
container, and every container is registered with the watchdog, so no exit path (Ctrl-C, an
error, the harness killed) leaves one behind; the name and the `infbench.run` label mark ours.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from infbench.config import Variant
from infbench.launch import loopback, proc
from infbench.launch.argv import GRACE_S, mprof_argv, server_argv
from infbench.launch.base import LaunchError, WatchedProcess, check_allocators
from infbench.launch.contract import ReplicaSpec, Where, replica_env
from infbench.launch.docker.cgroup import CGROUP_FILE, CgroupMonitor
from infbench.launch.docker.engine import ENGINE_HINT, docker, engine_problem, image_id
from infbench.launch.docker.image import Images, Say, slug

CONTAINER_PYTHON = "/opt/venv/bin/python"
OUT = "/out"
MODELS = "/models"
RUN_LABEL = "infbench.run"


def container_name(spec: ReplicaSpec) -> str:
    return f"infbench-{slug(spec.run_id)}-{slug(spec.variant.name)}-{slug(spec.label)}"


def container_where(spec: ReplicaSpec) -> Where:
    model = f"{MODELS}/{spec.model_path.name}" if spec.model_path else ""
    return Where(python=CONTAINER_PYTHON, out=OUT, model=model, root="/app")


def container_env(spec: ReplicaSpec) -> dict[str, str]:
    """What the server is told: the native contract with the container's paths, and nothing
    of the host's environment but which hosts bypass a proxy (Docker's own client config can
    hand a container proxies; loopback traffic stays off them, as natively)."""
    return {**replica_env(spec, container_where(spec)), **loopback.no_proxy_vars()}


def inner_argv(spec: ReplicaSpec) -> list[str]:
    """The command inside the container: the native one, with the image's Python and /out."""
    where = container_where(spec)
    program = server_argv(spec.service, spec.values(where), CONTAINER_PYTHON, OUT)
    return mprof_argv(Path(OUT) / "mprofile.dat", spec.sample_interval, program,
                      python=CONTAINER_PYTHON)


def run_argv(spec: ReplicaSpec, image: str, user: str | None = None) -> list[str]:
    """`docker run` in the foreground: its output is the server's log, its exit the container's.

    --sig-proxy=false: stopping is ours to do (server first, so mprof writes its last samples);
    --init: a real PID 1 that reaps Gunicorn's exited workers.
    """
    user = user or f"{os.getuid()}:{os.getgid()}"
    argv = ["docker", "run", "--name", container_name(spec),
            "--label", f"{RUN_LABEL}={spec.run_id}",
            "--label", f"infbench.variant={spec.variant.name}",
            "--label", f"infbench.replica={spec.label}",
            "--network", "host", "--init", "--sig-proxy=false", "--user", user,
            "--workdir", "/app",
            "--mount", f"type=bind,source={spec.out_dir.resolve()},target={OUT}"]
    if spec.model_path is not None:
        model = spec.model_path.resolve()
        argv += ["--mount", f"type=bind,source={model.parent},target={MODELS},readonly"]
    for k, v in sorted(container_env(spec).items()):
        argv += ["--env", f"{k}={v}"]
    return [*argv, image, *inner_argv(spec)]


REMOVE_TIMEOUT_S = 180.0


def remove_container(name: str, grace: float = GRACE_S) -> None:
    """Stop (TERM, `grace`, KILL) and remove our container, and wait until it is gone: with
    the vfs storage driver removing a container's copy of the image takes a while, and a busy
    machine can make it longer than one CLI call's timeout ("Removal In Progress")."""
    if docker("container", "inspect", "--format", "{{.Id}}", name, timeout=30).returncode != 0:
        return
    docker("stop", "--time", str(int(grace)), name, timeout=grace + 30)
    deadline = time.monotonic() + REMOVE_TIMEOUT_S
    while time.monotonic() < deadline:
        docker("rm", "--force", "--volumes", name, timeout=REMOVE_TIMEOUT_S)
        if docker("container", "inspect", "--format", "{{.Id}}", name,
                  timeout=30).returncode != 0:
            return
        time.sleep(1.0)


class ContainerGroup(proc.Group):
    """The `docker run` client as a registered process group whose stop() also ends the
    container, so `proc.stop_all()` (every exit path) leaves none behind."""

    def __init__(self, argv: list[str], *, name: str, log_path: Path,
                 on_stop: Callable[[], None]) -> None:
        self.container = name
        self._on_stop = on_stop
        self._removed = False
        proc.watch_container(name)
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
            proc.watch_container(self.container, on=False)
        return code


class DockerReplica(WatchedProcess):
    """A replica in a container; the same interface as the native one."""

    def __init__(self, spec: ReplicaSpec, image: str) -> None:
        self.spec = spec
        self.url = spec.url
        self.image = image
        self.name = container_name(spec)
        self.log_path = spec.out_dir / "server.log"
        self.argv = run_argv(spec, image)
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
            return proc.descendants(mprof.pid)
        except psutil.Error:
            return []

    # alive(), exit_code(), processes(): as natively (WatchedProcess). The foreground client
    # ends with the container; the server and its workers are host pids under mprof.

    def info(self) -> dict[str, object]:
        return {"launcher": "docker", "image": self.image, "image_id": image_id(self.image),
                "container": self.name, "container_id": self._id, "argv": self.argv,
                "inner_argv": inner_argv(self.spec), "service": self.spec.service.name,
                "replica": self.spec.replica, "ports": self.spec.ports, "url": self.url,
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


class DockerLauncher:
    name = "docker"

    def __init__(self) -> None:
        self._checked = False
        self.images = Images()
        self._image: str | None = None

    def check(self) -> None:
        if self._checked:
            return
        problem = engine_problem()
        if problem:
            raise LaunchError(f"RUNTIME=docker needs a Docker engine: {problem}; {ENGINE_HINT}")
        self._checked = True

    def prepare(self, variants: list[Variant], say: Say) -> None:
        """Build (or find) the servers' image before anything runs."""
        check_allocators(variants)
        for v in variants:
            for s in v.services:
                if s.server == "url":
                    raise LaunchError(f"variant {v.name}: service {s.name} is server = 'url', "
                                      "which the harness does not start: RUNTIME=native only")
                if s.allocator != "glibc":
                    raise LaunchError(f"variant {v.name}: allocator {s.allocator} runs natively "
                                      "only for now (the image has no allocator packages)")
                if s.venv:
                    raise LaunchError(f"variant {v.name}: service {s.name} runs in the peer "
                                      f"environment {s.venv!r}, which is built on this host: "
                                      "RUNTIME=native only for now")
                if s.server == "module" and s.module == "servers.tfserving":
                    raise LaunchError(f"variant {v.name}: the TF-Serving-compatible server "
                                      "runs natively only for now (its gRPC stubs are not in "
                                      "the image)")
        self._image = self.images.ensure_image(say)
        say(f"image {self._image}")

    def start(self, spec: ReplicaSpec) -> DockerReplica:
        if self._image is None:
            self._image = self.images.ensure_image(print)
        return DockerReplica(spec, self._image)
