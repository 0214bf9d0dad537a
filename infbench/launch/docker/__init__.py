"""The Docker runtime: engine, the servers' image, containers, cgroup memory."""

from infbench.launch.docker.container import DockerLauncher

__all__ = ["DockerLauncher"]
