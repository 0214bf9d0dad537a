#!/usr/bin/env bash
# Debian's redis-server (7.x), for the topologies with a Redis service (server = "redis").
# infbench starts its own redis-server per run on a loopback port; the package's system service
# is not needed, so it is stopped if the install started it. Root needed; `make redis` runs it.
set -euo pipefail
"$(dirname "$0")/apt-install.sh" redis redis-server
command -v redis-server >/dev/null || { echo "redis: error: redis-server missing after the install" >&2; exit 1; }
if command -v systemctl >/dev/null && systemctl is-active --quiet redis-server 2>/dev/null; then
    systemctl stop redis-server || true
fi
redis-server --version
