"""Loopback traffic is kept off a user's proxy: the no_proxy lists every child gets, as the
clients that read them (urllib, requests, httpx) understand them."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import httpx
import pytest
import requests.utils

from infbench.config import one_service
from infbench.launch import loopback
from infbench.launch.contract import ReplicaSpec
from infbench.launch.docker.container import container_env
from infbench.launch.native import native_env

PROXY = "http://127.0.0.1:3128"


def test_the_loopback_hosts_join_the_users_own_list() -> None:
    assert loopback.merged("") == "127.0.0.1,localhost,::1"
    assert loopback.merged("corp.example, localhost", "corp.example") == \
        "corp.example,localhost,127.0.0.1,::1"
    env = loopback.child_env({"NO_PROXY": "a.example", "http_proxy": PROXY, "PATH": "/bin"})
    assert env["no_proxy"] == env["NO_PROXY"] == "a.example,127.0.0.1,localhost,::1"
    assert (env["http_proxy"], env["PATH"]) == (PROXY, "/bin")  # their proxy serves the rest
    assert "no_grpc_proxy" not in env
    # gRPC reads no_grpc_proxy before no_proxy: where the user set one, it gets ours too.
    assert loopback.child_env({"no_grpc_proxy": "g.example"})["no_grpc_proxy"] == \
        "g.example,127.0.0.1,localhost,::1"
    assert loopback.child_env(env) == env  # applying it twice changes nothing


@pytest.mark.parametrize("url", ["http://127.0.0.1:8000/health", "http://localhost:8000/",
                                 "http://[::1]:8000/"])
def test_every_client_reads_it_as_a_bypass(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    for k in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(k, raising=False)
    for k in ("http_proxy", "https_proxy", "ALL_PROXY"):
        monkeypatch.setenv(k, PROXY)
    host = url.split("//", 1)[1].split("/", 1)[0]
    # Without it, the proxy would get loopback traffic: the premise of the fix.
    assert not urllib.request.proxy_bypass_environment(host)
    assert not requests.utils.should_bypass_proxies(url, no_proxy=None)
    for k, v in loopback.no_proxy_vars().items():
        monkeypatch.setenv(k, v)
    if "[" not in host:  # urllib compares "[::1]" as written: it is ours without proxies
        assert urllib.request.proxy_bypass_environment(host)
    assert requests.utils.should_bypass_proxies(url, no_proxy=None)
    with httpx.Client() as client:  # trust_env: the proxies of the environment, less no_proxy
        assert client._transport_for_url(httpx.URL(url)) is client._transport


def test_both_runtimes_tell_a_server_the_same(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("no_proxy", "corp.example")
    monkeypatch.setenv("http_proxy", PROXY)
    v = one_service("v", server="uvicorn", app="starlette")
    spec = ReplicaSpec(variant=v, service=v.services[0], replica=0, ports={"port": 40000},
                       out_dir=tmp_path, model_path=tmp_path / "m.keras",
                       sample_interval=0.1, run_id="r")
    want = "corp.example,127.0.0.1,localhost,::1"
    native, docker = native_env(spec), container_env(spec)
    assert native["no_proxy"] == native["NO_PROXY"] == want
    assert docker["no_proxy"] == docker["NO_PROXY"] == want
    assert "http_proxy" not in docker  # a container gets nothing else of the host's
