"""A user's proxy never sees our loopback traffic: a real run (Redis, a setup task, two model
APIs and a scoring API calling them with requests, health checks, the keep-alive check, Locust's
users) with http_proxy, https_proxy and ALL_PROXY pointing at a proxy that records what it gets,
and no no_proxy."""

from __future__ import annotations

import http.server
import json
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from infbench.launch import loopback
from infbench.paths import HOST, ROOT
from tests.fixtures.helpers import child_env, the_run
from tests.fixtures.proxy import NO_PROXY_VARS, RecordingProxy

pytestmark = pytest.mark.integration


def proxied_env(proxy: RecordingProxy) -> dict[str, str]:
    env = {k: v for k, v in child_env().items() if k not in NO_PROXY_VARS}
    return {**env, **proxy.env()}


def test_the_harness_client_ignores_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    class Ok(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer((HOST, 0), Ok)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://{HOST}:{server.server_address[1]}/health"
    try:
        with RecordingProxy() as proxy:
            for k in NO_PROXY_VARS:
                monkeypatch.delenv(k, raising=False)
            for k, v in proxy.env().items():
                monkeypatch.setenv(k, v)
            # A default opener built now (urlopen's own is cached from whatever test ran
            # first in this process, before the proxy was set): it goes to the proxy.
            with pytest.raises(urllib.error.HTTPError, match="502"):
                urllib.request.build_opener().open(url, timeout=5)
            assert len(proxy.seen) == 1 and url in proxy.seen[0]
            with loopback.urlopen(url, timeout=5) as r:
                assert (r.status, r.read()) == (200, b"ok")
            assert len(proxy.seen) == 1
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.requires("redis-server")
def test_a_run_sends_nothing_through_the_users_proxy(tmp_path: Path) -> None:
    with RecordingProxy() as proxy:
        env = proxied_env(proxy)
        # The premise: in this environment a client that trusts it (requests, as the Flask
        # scoring API uses; Locust's users are on geventhttpclient, which reads no proxy
        # variables) sends loopback requests to the proxy.
        probe = subprocess.run(
            [sys.executable, "-c", "import requests\ntry:\n    requests.get("
             f"'http://{HOST}:9/x', timeout=5)\nexcept Exception:\n    pass"],
            env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert probe.returncode == 0, probe.stderr
        assert proxy.seen == [f"GET http://{HOST}:9/x HTTP/1.1"], proxy.seen
        proxy.seen.clear()

        res = subprocess.run(
            [sys.executable, "-m", "infbench", "--results", str(tmp_path / "r"), "run",
             "scoring-sync", "--profile", "scoring-smoke", "--model", "tiny-onnx"],
            env=env, cwd=ROOT, capture_output=True, text=True, timeout=400)
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        assert proxy.seen == [], proxy.seen
    summary = json.loads((the_run(tmp_path / "r") / "scoring-sync" / "summary.json")
                         .read_text())
    assert summary["totals"]["requests"] > 0 and summary["totals"]["failures"] == 0
