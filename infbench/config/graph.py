"""A variant's services as a graph: every placeholder and dependency resolves, the entry takes
HTTP load, and the order the services start in."""

from __future__ import annotations

from infbench.config.model import (
    ConfigError,
    Service,
    Variant,
)
from infbench.config.servers import PLACEHOLDER, SERVER_KINDS


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
    if SERVER_KINDS[entry.server].store or entry.health not in ("http", "none", "tcp", "command"):
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
