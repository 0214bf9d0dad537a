#!/usr/bin/env bash
# The Debian packages infbench uses, in one place. `make system` runs this; `make run` and
# `make test` run it too, so a fresh machine needs nothing set up by hand.
#
#   scripts/system-packages.sh check|install [run|test]
#
#   run   what a study reaches for: redis-server (the topologies' Redis service), the three
#         allocators the allocator hypotheses preload, gdb (outside reads of a running server:
#         malloc_info, malloc_trim), tini (a static init for the outside-read tests), heaptrack
#         (the native stacks of a leak, attached to a running server: measure/native_stacks.py),
#         tcpdump (the packet capture of each step with capture = true: measure/capture.py).
#         wrk, hey and nghttp2-client's h2load (the second opinions of `make crosscheck_<v>`
#         and `make bench-loadgen`: measure/tools.py).
#   test  all of `run`, plus chromium (report.html rendered headless, as a person sees it).
#
# check:   prints the missing packages (one a line), exits 0 when none are missing, 1 otherwise.
# install: installs what is missing with apt-get when root; otherwise prints one line naming
#          the command to run and why, and exits 0 (the tests then skip, saying so, outside CI;
#          under CI=true they fail naming the package). Exit 1 only when an install failed.
#
# Nothing happens when everything is installed (a dpkg query per package, well under a second).
# tests/conftest.py reads the same list (`scripts/system-packages.sh list test`), so the set-up
# and the tests' own checks cannot drift.
set -euo pipefail

RUN_PACKAGES=(redis-server libjemalloc2 libmimalloc2.0 libgoogle-perftools4 gdb tini heaptrack
              tcpdump wrk hey nghttp2-client)
TEST_PACKAGES=("${RUN_PACKAGES[@]}" chromium docker-compose)

action=${1:-install}
set_name=${2:-test}
case $set_name in
    run) packages=("${RUN_PACKAGES[@]}") ;;
    test) packages=("${TEST_PACKAGES[@]}") ;;
    *) echo "system-packages: error: unknown set '$set_name' (run|test)" >&2; exit 2 ;;
esac

missing() {
    local p
    for p in "${packages[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" \
            || echo "$p"
    done
}

case $action in
    list) printf '%s\n' "${packages[@]}"; exit 0 ;;
    check)
        out=$(missing)
        [[ -z $out ]] && exit 0
        echo "$out"
        exit 1 ;;
    install) ;;
    *) echo "usage: $0 check|install|list [run|test]" >&2; exit 2 ;;
esac

if ! command -v dpkg-query >/dev/null || ! command -v apt-get >/dev/null; then
    echo "system-packages: not a Debian-like system: install by hand the equivalents of" \
         "${packages[*]} (the tests that need one skip and say which)" >&2
    exit 0
fi
mapfile -t todo < <(missing)
((${#todo[@]} == 0)) && exit 0
if [[ $(id -u) != 0 ]]; then
    echo "system-packages: missing ${todo[*]} (Redis, the allocators, gdb, tini, heaptrack," \
         "chromium for the studies and tests); install them once with: sudo make system" >&2
    exit 0
fi
started=$SECONDS
echo "system-packages: installing ${todo[*]} (once; about a minute) ..."
log=$(mktemp)
trap 'rm -f "$log"' EXIT
if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        --no-install-recommends "${todo[@]}"; } >"$log" 2>&1; then
    tail -n 15 "$log" >&2
    echo "system-packages: error: apt-get install ${todo[*]} failed" >&2
    exit 1
fi
# The redis-server package starts a system service where an init runs; infbench starts its own
# redis-server per run on a loopback port, so the package's service is not needed.
if [[ " ${todo[*]} " == *" redis-server "* ]] && command -v systemctl >/dev/null \
        && systemctl is-active --quiet redis-server 2>/dev/null; then
    systemctl stop redis-server || true
fi
mapfile -t still < <(missing)
if ((${#still[@]} > 0)); then
    echo "system-packages: error: still missing after the install: ${still[*]}" >&2
    exit 1
fi
echo "system-packages: installed ${todo[*]} in $((SECONDS - started)) s"
