"""Loopback traffic never goes through a user's proxy.

Everything the harness, its load and our servers send is to a loopback address (health
checks, the keep-alive check, probes, Locust's users, a scoring API calling its model APIs).
With http_proxy / https_proxy / ALL_PROXY set and no no_proxy, urllib, requests, httpx and gRPC
send even 127.0.0.1 to the proxy (urllib's proxy_bypass('127.0.0.1:8000') is False): a proxy
in the path of every request measures the proxy, or fails every request.

So, in one place:
  child_env   every child the harness starts (proc.Group: Locust, servers, the model alone,
              Docker's CLI; a health command) gets no_proxy and NO_PROXY (and no_grpc_proxy,
              which gRPC reads first, where the user set one) naming the loopback hosts,
              merged with the user's own entries. Their proxy still serves everything else
              (pip in an image build, a server of theirs that calls out).
  urlopen     the harness's own HTTP client ignores proxies altogether.
http.client (the keep-alive check, request profiling) connects where it is told: no proxy.
"""

from __future__ import annotations

import os
import urllib.request
from collections.abc import Mapping
from typing import Any

# Not "[::1]" as well: httpx cannot parse it in no_proxy (every client fails), and urllib,
# which would need it, is our own client only without proxies (urlopen). Servers bind
# 127.0.0.1 (infbench.paths.HOST).
LOOPBACK = ("127.0.0.1", "localhost", "::1")
# The variables that say which hosts bypass a proxy. gRPC reads no_grpc_proxy before no_proxy
# (and only lower case); urllib, requests and httpx read both cases, lower case first.
NO_PROXY = ("no_proxy", "NO_PROXY")
NO_GRPC_PROXY = "no_grpc_proxy"

_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def merged(*lists: str) -> str:
    """Comma-separated host lists as one, the loopback hosts included, each name once."""
    out: list[str] = []
    for text in (*lists, ",".join(LOOPBACK)):
        for name in text.split(","):
            name = name.strip()
            if name and name not in out:
                out.append(name)
    return ",".join(out)


def no_proxy_vars(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """no_proxy and NO_PROXY (and no_grpc_proxy where `base` sets it) with the loopback hosts
    added to what `base` (default: our environment) says."""
    base = os.environ if base is None else base
    value = merged(*(base.get(k, "") for k in NO_PROXY))
    out = dict.fromkeys(NO_PROXY, value)
    if base.get(NO_GRPC_PROXY):
        out[NO_GRPC_PROXY] = merged(base[NO_GRPC_PROXY])
    return out


def child_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """`env` (default: ours) for a child process, its loopback traffic off any proxy."""
    out = dict(os.environ if env is None else env)
    out.update(no_proxy_vars(out))
    return out


def urlopen(request: str | urllib.request.Request, timeout: float) -> Any:
    """urllib.request.urlopen without proxies (an HTTPResponse; HTTPError as urlopen raises)."""
    return _DIRECT.open(request, timeout=timeout)
