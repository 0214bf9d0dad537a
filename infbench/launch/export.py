"""A variant's topology for a cluster engine: a docker-compose file or Kubernetes manifests.

Everything comes from the contract the runtimes use (contract.replica_env, the server kinds'
argv, the ports' names, the health check, replicas, depends_on); only the addresses differ. Here
a replica binds 127.0.0.1 on a port the harness chose and reaches a peer on 127.0.0.1:<its
port>; on a bridge network (compose) or in a cluster (Kubernetes) each replica has its own
network namespace, so it binds every interface (0.0.0.0) on a fixed port per port name
(`cluster_ports`), and a peer is `<service>:<port>`: {services.redis.url} becomes
redis://redis:6379/0, {services.model.port} 8000. The replicas of one service share
one definition (compose `scale:`, a Deployment's `replicas`), so all of them are replica 0.

What cannot run there is refused in one line (`check_exportable`): an allocator preloaded from
a host path, the TF-Serving-compatible server (not in the image), `{replica}` in a service
with several replicas, a setup task (`once`) in Kubernetes. The files are JSON, which is YAML:
docker-compose and kubectl read them as they are, and the harness needs no YAML library.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from infbench.config import Service, Variant, start_order
from infbench.config.servers import PLACEHOLDER
from infbench.launch.argv import fill, server_argv
from infbench.launch.base import LaunchError
from infbench.launch.contract import (
    MAX_BODY_DEFAULT,
    MAX_IMAGES_DEFAULT,
    ReplicaSpec,
    Where,
    peer_values,
    replica_env,
)
from infbench.launch.docker.container import CONTAINER_PYTHON, MODELS
from infbench.paths import HOST

FORMATS = ("compose", "k8s")
FILE_NAMES = {"compose": "docker-compose.yml", "k8s": "k8s.yaml"}
COMPOSE_VERSION = "2.4"  # the last file format with `scale:` and depends_on conditions (1.29)
BIND = "0.0.0.0"  # inside the container's own namespace; the host maps loopback
PORT_BASE = 8000
REDIS_PORT = 6379
OUT = "/tmp"  # the server's own folder ({out}): the container's, nothing mounted
NETWORK = "infbench"
DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
PORT_NAME = re.compile(r"^(?=.*[a-z])[a-z0-9]([-a-z0-9]{0,13}[a-z0-9])?$")
PROBE_PERIOD_S = 2


class ExportError(LaunchError):
    """What cannot be taken to a cluster engine, in one line."""


@dataclass(frozen=True)
class Unit:
    """One service as a cluster engine runs it: every replica the same."""

    service: Service
    ports: dict[str, int]
    argv: list[str]
    env: dict[str, str]
    health: list[str]  # a command run in the container ([] for none)


def cluster_ports(s: Service) -> dict[str, int]:
    """Fixed ports per name: 6379 up for Redis, 8000 up for the rest (each replica is alone in
    its network namespace, so replicas and services never clash)."""
    first = REDIS_PORT if s.server == "redis" else PORT_BASE
    return {name: first + i for i, name in enumerate(s.ports)}


def _uses(s: Service, ref: str) -> bool:
    texts = [*s.command, *s.args, *s.env.values(), *s.health_command]
    return any(ref in PLACEHOLDER.findall(t) for t in texts)


def check_exportable(v: Variant, fmt: str) -> None:
    """One line for the first thing of the variant a cluster engine cannot run as we do."""
    if fmt not in FORMATS:
        raise ExportError(f"export: FORMAT must be one of {', '.join(FORMATS)}, got {fmt!r}")
    for s in v.services:
        where = f"variant {v.name}, service {s.name}"
        if s.allocator != "glibc":
            raise ExportError(f"{where}: allocator {s.allocator} is preloaded from a host path "
                              "(LD_PRELOAD); the image has no allocator packages")
        if s.venv:
            raise ExportError(f"{where}: it runs in the peer environment {s.venv!r}, which is "
                              "built on the host, not in the servers' image")
        if s.server == "module" and s.module == "servers.tfserving":
            raise ExportError(f"{where}: the TF-Serving-compatible server is not in the image "
                              "(its gRPC stubs are not)")
        if s.replicas > 1 and (_uses(s, "replica")):
            raise ExportError(f"{where}: {{replica}} differs per replica, but the {s.replicas} "
                              "replicas share one definition in a cluster engine")
        if fmt == "k8s" and s.once:
            raise ExportError(f"{where}: a setup task (once = true) runs before its "
                              "dependants; Kubernetes has no such order between Deployments")
        if fmt == "k8s" and not DNS_LABEL.match(s.name):
            raise ExportError(f"{where}: {s.name!r} is not a Kubernetes name (lower-case "
                              "letters, digits, '-', at most 63)")
        if fmt == "k8s":
            for p in s.ports:
                if not PORT_NAME.match(p):
                    raise ExportError(f"{where}: port name {p!r} is not a Kubernetes port name "
                                      "(lower-case letters, digits, '-', at most 15)")


def rebind(argv: list[str]) -> list[str]:
    """The server kinds bind loopback; in its own namespace a replica binds every interface.
    Redis's protected mode (no password) refuses other hosts, so it is off there."""
    out = []
    for a in argv:
        if a == HOST:
            a = BIND
        elif a.startswith(f"{HOST}:"):
            a = BIND + a[len(HOST):]
        out.append(a)
    for i in range(len(out) - 1):
        if out[i] == "--protected-mode":
            out[i + 1] = "no"
    return out


def health_command(s: Service, port: int, values: Mapping[str, str]) -> list[str]:
    """The health check as a command in the container (the image may have no curl)."""
    if s.health == "http":
        url = f"http://127.0.0.1:{port}{s.health_path}"
        return [CONTAINER_PYTHON, "-c",
                f"import urllib.request; urllib.request.urlopen({url!r}, timeout=5)"]
    if s.health in ("tcp", "redis"):
        return [CONTAINER_PYTHON, "-c",
                f"import socket; socket.create_connection(('127.0.0.1', {port}), 5).close()"]
    if s.health == "command":
        return [fill(a, values) for a in s.health_command]
    return []


def units(v: Variant, model_name: str) -> list[Unit]:
    """The variant's services in start order, each as the cluster engine runs it."""
    where = Where(python=CONTAINER_PYTHON, out=OUT,
                  model=f"{MODELS}/{model_name}" if model_name else "", root="/app", bind=BIND)
    peers: dict[str, str] = {}
    peer_env: dict[str, str] = {}
    out = []
    for s in start_order(f"variants.{v.name}", v):
        ports = cluster_ports(s)
        spec = ReplicaSpec(variant=v, service=s, replica=0, ports=ports, out_dir=Path(OUT),
                           model_path=Path(where.model) if s.gets_model and model_name else None,
                           sample_interval=1.0, run_id="export", max_images=MAX_IMAGES_DEFAULT,
                           max_body_bytes=MAX_BODY_DEFAULT, peers=dict(peers),
                           peer_env=dict(peer_env))
        values = spec.values(where)
        argv = rebind(server_argv(s, values, CONTAINER_PYTHON, OUT))
        out.append(Unit(service=s, ports=ports, argv=argv, env=replica_env(spec, where),
                        health=health_command(s, spec.port, values)))
        if s.replicas == 1:
            pv, pe = peer_values(s, ports, host=s.name)
            peers.update(pv)
            peer_env.update(pe)
    return out


def _labels(v: Variant, s: Service) -> dict[str, str]:
    return {"app.kubernetes.io/name": s.name, "app.kubernetes.io/part-of": f"infbench-{v.name}"}


def compose(v: Variant, image: str, model_dir: Path | None, model_name: str,
            host_port: int) -> dict[str, Any]:
    """A docker-compose file (format 2.4): a bridge network with the services' names as hosts,
    `scale:` for replicas, health checks, depends_on conditions, the entry on 127.0.0.1."""
    services: dict[str, Any] = {}
    by_name = {s.name: s for s in v.services}
    for u in units(v, model_name):
        s = u.service
        d: dict[str, Any] = {"image": image, "command": u.argv, "working_dir": "/app",
                             "init": True, "environment": dict(sorted(u.env.items())),
                             "networks": [NETWORK],
                             "labels": {"infbench.variant": v.name, "infbench.service": s.name}}
        if s.replicas != 1:
            d["scale"] = s.replicas
        if s.gets_model and model_dir is not None:
            d["volumes"] = [f"{model_dir}:{MODELS}:ro"]
        if s.name == v.entry:
            d["ports"] = [f"127.0.0.1:{host_port}:{u.ports[s.ports[0]]}"]
        if u.health and not s.once:
            d["healthcheck"] = {"test": ["CMD", *u.health], "interval": f"{PROBE_PERIOD_S}s",
                                "timeout": "6s", "retries": 3,
                                "start_period": f"{s.startup_timeout:g}s"}
        if s.once:
            d["restart"] = "no"
        if s.depends_on:
            d["depends_on"] = {dep: {"condition": _condition(by_name[dep])}
                               for dep in s.depends_on}
        services[s.name] = d
    return {"version": COMPOSE_VERSION, "services": services,
            "networks": {NETWORK: {"driver": "bridge"}}}


def _condition(dep: Service) -> str:
    if dep.once:
        return "service_completed_successfully"
    return "service_started" if dep.health == "none" else "service_healthy"


def manifests(v: Variant, image: str, model_dir: Path | None, model_name: str
              ) -> list[dict[str, Any]]:
    """Per service a Deployment (replicas, command/args/env, a readiness probe) and a ClusterIP
    Service with the named ports. The model is a hostPath volume (a one-node cluster's)."""
    out: list[dict[str, Any]] = []
    for u in units(v, model_name):
        s = u.service
        labels = _labels(v, s)
        container: dict[str, Any] = {
            "name": s.name, "image": image, "imagePullPolicy": "IfNotPresent",
            "workingDir": "/app", "command": u.argv[:1], "args": u.argv[1:],
            "env": [{"name": k, "value": val} for k, val in sorted(u.env.items())],
            "ports": [{"name": n, "containerPort": p, "protocol": "TCP"}
                      for n, p in u.ports.items()]}
        probe = _probe(s, u)
        if probe:
            container["readinessProbe"] = probe
        pod: dict[str, Any] = {"enableServiceLinks": False, "containers": [container]}
        if s.gets_model and model_dir is not None:
            container["volumeMounts"] = [{"name": "model", "mountPath": MODELS,
                                          "readOnly": True}]
            pod["volumes"] = [{"name": "model", "hostPath": {"path": str(model_dir),
                                                             "type": "Directory"}}]
        out.append({"apiVersion": "apps/v1", "kind": "Deployment",
                    "metadata": {"name": s.name, "labels": labels},
                    "spec": {"replicas": s.replicas, "selector": {"matchLabels": labels},
                             "template": {"metadata": {"labels": labels}, "spec": pod}}})
        out.append({"apiVersion": "v1", "kind": "Service",
                    "metadata": {"name": s.name, "labels": labels},
                    "spec": {"type": "ClusterIP", "selector": labels,
                             "ports": [{"name": n, "port": p, "targetPort": n,
                                        "protocol": "TCP"} for n, p in u.ports.items()]}})
    return out


def _probe(s: Service, u: Unit) -> dict[str, Any]:
    timing = {"periodSeconds": PROBE_PERIOD_S, "timeoutSeconds": 5, "failureThreshold": 3}
    first = s.ports[0]
    if s.health == "http":
        return {"httpGet": {"path": s.health_path, "port": first}, **timing}
    if s.health in ("tcp", "redis"):
        return {"tcpSocket": {"port": first}, **timing}
    if s.health == "command":
        return {"exec": {"command": u.health}, **timing}
    return {}


def render(fmt: str, doc: dict[str, Any] | list[dict[str, Any]]) -> str:
    """JSON (valid YAML); Kubernetes objects as one YAML document each."""
    if fmt == "k8s":
        assert isinstance(doc, list)
        return "".join(f"---\n{json.dumps(d, indent=2)}\n" for d in doc)
    return json.dumps(doc, indent=2) + "\n"


def parse_manifests(text: str) -> list[dict[str, Any]]:
    """What `render` wrote for Kubernetes, read back (JSON documents between `---` lines)."""
    docs = []
    for part in re.split(r"^---$", text, flags=re.MULTILINE):
        if part.strip():
            d = json.loads(part)
            if not isinstance(d, dict):
                raise ValueError("a manifest document is not an object")
            docs.append(d)
    return docs


def _port_names(c: Mapping[str, Any]) -> set[str]:
    return {p.get("name", "") for p in c.get("ports", [])}


def check_manifests(docs: list[dict[str, Any]]) -> list[str]:
    """Kubernetes' rules for what we write, offline (kubectl 1.20's --dry-run=client still asks
    a server for its API groups): required fields of apps/v1 Deployment and v1 Service, names,
    selectors that match their pods' labels, probes and Services naming container ports."""
    problems: list[str] = []
    deployments: dict[str, dict[str, Any]] = {}
    seen: set[tuple[str, str]] = set()
    for d in docs:
        kind, name = d.get("kind", ""), str(d.get("metadata", {}).get("name", ""))
        what = f"{kind} {name!r}"
        if (kind, name) in seen:
            problems.append(f"{what}: defined twice")
        seen.add((kind, name))
        if not DNS_LABEL.match(name):
            problems.append(f"{what}: metadata.name is not a DNS-1123 label")
        if kind == "Deployment":
            problems += _check_deployment(what, d)
            deployments[name] = d
        elif kind == "Service":
            if d.get("apiVersion") != "v1":
                problems.append(f"{what}: apiVersion must be v1")
        else:
            problems.append(f"{what}: not a kind the export writes")
    for d in docs:
        if d.get("kind") == "Service":
            problems += _check_service(d, list(deployments.values()))
    return problems


def _check_deployment(what: str, d: Mapping[str, Any]) -> list[str]:
    out = []
    if d.get("apiVersion") != "apps/v1":
        out.append(f"{what}: apiVersion must be apps/v1")
    spec = d.get("spec", {})
    if not isinstance(spec.get("replicas"), int) or spec["replicas"] < 0:
        out.append(f"{what}: spec.replicas must be a whole number >= 0")
    match = spec.get("selector", {}).get("matchLabels", {})
    labels = spec.get("template", {}).get("metadata", {}).get("labels", {})
    if not match or any(labels.get(k) != val for k, val in match.items()):
        out.append(f"{what}: spec.selector.matchLabels must be non-empty and match the "
                   "template's labels")
    containers = spec.get("template", {}).get("spec", {}).get("containers", [])
    if not containers:
        out.append(f"{what}: no containers")
    volumes = {vol.get("name") for vol in spec.get("template", {}).get("spec", {})
               .get("volumes", [])}
    for c in containers:
        cw = f"{what} container {c.get('name')!r}"
        if not c.get("name") or not DNS_LABEL.match(str(c["name"])) or not c.get("image"):
            out.append(f"{cw}: needs a DNS-1123 name and an image")
        names = [p.get("name", "") for p in c.get("ports", [])]
        if len(set(names)) != len(names):
            out.append(f"{cw}: port names repeat")
        for p in c.get("ports", []):
            if not PORT_NAME.match(str(p.get("name", ""))):
                out.append(f"{cw}: port name {p.get('name')!r} is not an IANA service name")
            if not isinstance(p.get("containerPort"), int) or not 0 < p["containerPort"] < 65536:
                out.append(f"{cw}: containerPort must be 1..65535")
        for e in c.get("env", []):
            if not isinstance(e.get("name"), str) or not isinstance(e.get("value"), str):
                out.append(f"{cw}: env entries need a string name and value")
        if not all(isinstance(a, str) for a in [*c.get("command", []), *c.get("args", [])]):
            out.append(f"{cw}: command and args must be strings")
        probe = c.get("readinessProbe", {})
        for key in ("httpGet", "tcpSocket"):
            port = probe.get(key, {}).get("port") if key in probe else None
            if key in probe and port not in _port_names(c):
                out.append(f"{cw}: readinessProbe.{key}.port {port!r} names no container port")
        for m in c.get("volumeMounts", []):
            if m.get("name") not in volumes:
                out.append(f"{cw}: volumeMount {m.get('name')!r} names no volume")
    return out


def _check_service(d: Mapping[str, Any], deployments: list[dict[str, Any]]) -> list[str]:
    what = f"Service {d.get('metadata', {}).get('name')!r}"
    spec = d.get("spec", {})
    selector = spec.get("selector", {})
    pods = [dep for dep in deployments
            if selector and all(dep["spec"]["template"]["metadata"]["labels"].get(k) == val
                                for k, val in selector.items())]
    if not pods:
        return [f"{what}: its selector matches no Deployment's pods"]
    names: set[str] = set()
    for dep in pods:
        for c in dep["spec"]["template"]["spec"]["containers"]:
            names |= _port_names(c)
    out = []
    if not spec.get("ports"):
        out.append(f"{what}: no ports")
    for p in spec.get("ports", []):
        if not isinstance(p.get("port"), int) or not 0 < p["port"] < 65536:
            out.append(f"{what}: port must be 1..65535")
        if p.get("targetPort") not in names:
            out.append(f"{what}: targetPort {p.get('targetPort')!r} names no container port of "
                       "its pods")
    return out


def check_compose(doc: Mapping[str, Any]) -> list[str]:
    """The compose file's own consistency (docker-compose config checks the schema)."""
    out = []
    services = doc.get("services", {})
    if doc.get("version") != COMPOSE_VERSION or not services:
        out.append(f"compose: version {COMPOSE_VERSION} and at least one service")
    for name, s in services.items():
        for dep in s.get("depends_on", {}):
            if dep not in services:
                out.append(f"compose service {name}: depends_on {dep!r}, no such service")
        for net in s.get("networks", []):
            if net not in doc.get("networks", {}):
                out.append(f"compose service {name}: network {net!r} is not declared")
        for p in s.get("ports", []):
            if not str(p).startswith("127.0.0.1:"):
                out.append(f"compose service {name}: port {p!r} is not mapped on loopback")
        if not s.get("image") or not s.get("command"):
            out.append(f"compose service {name}: needs an image and a command")
    return out
