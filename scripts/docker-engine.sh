#!/usr/bin/env bash
# A Docker engine for RUNTIME=docker on a machine without one (root needed for start/stop).
#
#   scripts/docker-engine.sh start    use the running engine, or install Debian's docker.io
#                                      (if dockerd is missing) and start dockerd in the background
#   scripts/docker-engine.sh stop     stop the daemon this script started (never another one)
#   scripts/docker-engine.sh status   does an engine answer, and did this script start it
#
# The daemon runs with --bridge=none --iptables=false (it touches no firewall; builds and
# containers use --network host) and the overlay2 storage driver where the kernel mounts an
# overlay on the data root's file system (tried first, once), else vfs (no kernel support
# needed, e.g. inside another container; every layer and every container is then a full copy
# of the image, about 1.7 GB: minutes more for a build and each `docker run`).
# Settings (environment): INFBENCH_DOCKERD_PIDFILE, INFBENCH_DOCKERD_LOG (default
# build/docker/dockerd.log in this checkout: no fixed name in /tmp is written as root),
# INFBENCH_DOCKERD_DATA (data root, default dockerd's /var/lib/docker),
# INFBENCH_DOCKERD_WAIT (seconds to wait for it to answer, default 60),
# INFBENCH_DOCKERD_STORAGE (a storage driver, instead of the overlay2-else-vfs choice).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PIDFILE=${INFBENCH_DOCKERD_PIDFILE:-/run/infbench-dockerd.pid}
LOG=${INFBENCH_DOCKERD_LOG:-$ROOT/build/docker/dockerd.log}
DATA=${INFBENCH_DOCKERD_DATA:-}
WAIT=${INFBENCH_DOCKERD_WAIT:-60}
STORAGE=${INFBENCH_DOCKERD_STORAGE:-}

say() { echo "docker-engine: $*"; }
die() { echo "docker-engine: error: $*" >&2; exit 1; }

answers() { docker info --format '{{.ServerVersion}}' >/dev/null 2>&1; }

# mkdir -p, the folders it creates inside the checkout owned by the checkout's owner rather
# than root (a later `make` as that user still writes build/).
make_dirs() {
    local dir=$1 missing=()
    while [[ ! -d $dir ]]; do missing=("$dir" "${missing[@]}"); dir=$(dirname "$dir"); done
    ((${#missing[@]})) || return 0
    mkdir -p "${missing[-1]}"
    local owner d
    owner=$(stat -c '%u:%g' "$ROOT")
    for d in "${missing[@]}"; do
        if [[ $d == "$ROOT"/* ]]; then chown "$owner" "$d"; fi
    done
}

# overlay2 if an overlay mounts on the data root's file system, else vfs; the reason goes to
# stderr. (An overlay cannot sit on an overlay: the data root inside a container is on one.)
storage_driver() {
    local root=${DATA:-/var/lib/docker} probe
    make_dirs "$root"
    probe=$(mktemp -d "$root/.infbench-overlay-probe.XXXXXX") || { echo vfs; return; }
    mkdir -p "$probe"/{lower,upper,work,merged}
    if mount -t overlay overlay \
        -o "lowerdir=$probe/lower,upperdir=$probe/upper,workdir=$probe/work" "$probe/merged" \
        2>"$probe/error"; then
        umount "$probe/merged"
        echo overlay2
    else
        echo "the kernel mounts no overlay on $root ($(tr -d '\n' <"$probe/error")): vfs, full copies" >&2
        echo vfs
    fi
    rm -rf "$probe"
}

# The pid in our pidfile, if that process is alive and is a dockerd.
our_pid() {
    [[ -s $PIDFILE ]] || return 1
    local pid
    pid=$(<"$PIDFILE")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    [[ -r /proc/$pid/comm && $(</proc/"$pid"/comm) == dockerd ]] || return 1
    echo "$pid"
}

install_engine() {
    [[ $(id -u) == 0 ]] || die "dockerd is not installed; run as root (or: sudo apt-get install docker.io)"
    command -v apt-get >/dev/null || die "dockerd is not installed and this is not a Debian-like system; install Docker"
    say "installing Debian's docker.io (dockerd is missing) ..."
    local started=$SECONDS policy=/usr/sbin/policy-rc.d made_policy=0
    # Keep the package's init scripts from starting a daemon with default (overlay) settings.
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && made_policy=1
    fi
    local rc=0
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        --no-install-recommends docker.io >/dev/null; } || rc=$?
    if [[ $made_policy == 1 ]]; then rm -f "$policy"; fi
    [[ $rc == 0 ]] || die "apt-get install docker.io failed (exit $rc)"
    say "installed docker.io $(dpkg-query -W -f='${Version}' docker.io) in $((SECONDS - started)) s"
}

start() {
    if answers; then
        if pid=$(our_pid); then
            say "engine already running (dockerd pid $pid, started by this script)"
        else
            say "engine already running (not started by this script; leaving it as it is)"
        fi
        return 0
    fi
    if pid=$(our_pid); then
        die "our dockerd (pid $pid) is running but does not answer; see $LOG, or: $0 stop"
    fi
    local started=$SECONDS
    if ! command -v dockerd >/dev/null || ! command -v docker >/dev/null; then
        install_engine
    fi
    [[ $(id -u) == 0 ]] || die "starting dockerd needs root"
    # dockerd writes its own pid into our pidfile (and removes it on a clean exit): that file
    # is how `stop` knows which daemon is ours.
    local driver=${STORAGE:-$(storage_driver)}
    local args=(--storage-driver="$driver" --bridge=none --iptables=false --pidfile "$PIDFILE")
    if [[ -n $DATA ]]; then args+=(--data-root "$DATA"); fi
    mkdir -p "$(dirname "$PIDFILE")"
    make_dirs "$(dirname "$LOG")"
    say "starting dockerd ${args[*]} (log: $LOG)"
    # setsid: its own session, so neither this shell's end nor a Ctrl-C in it reaches the daemon.
    setsid dockerd "${args[@]}" >>"$LOG" 2>&1 </dev/null &
    local pid=$! deadline=$((SECONDS + WAIT))
    until answers; do
        if ! kill -0 "$pid" 2>/dev/null && ! our_pid >/dev/null; then
            die "dockerd exited at start; last lines of $LOG:"$'\n'"$(tail -n 15 "$LOG")"
        fi
        if ((SECONDS > deadline)); then
            die "dockerd (pid $pid) did not answer within ${WAIT} s; see $LOG ($0 stop ends it)"
        fi
        sleep 0.5
    done
    pid=$(our_pid || echo "$pid")
    say "engine up: dockerd pid $pid, server $(docker info --format '{{.ServerVersion}}'), storage $(docker info --format '{{.Driver}}'), $((SECONDS - started)) s"
}

stop() {
    local pid
    if ! pid=$(our_pid); then
        rm -f "$PIDFILE"
        if answers; then
            say "the running engine was not started by this script; leaving it"
        else
            say "no engine started by this script is running"
        fi
        return 0
    fi
    say "stopping dockerd (pid $pid) ..."
    kill -TERM "$pid"
    # dockerd stops its containers first (up to its own 15 s shutdown timeout).
    local deadline=$((SECONDS + 40))
    while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.5; done
    if kill -0 "$pid" 2>/dev/null; then
        say "dockerd (pid $pid) still running after 40 s; killing it"
        kill -KILL "$pid" 2>/dev/null || true
        sleep 1
    fi
    rm -f "$PIDFILE"
    say "stopped"
}

status() {
    local pid ours="not started by this script"
    if pid=$(our_pid); then ours="started by this script: dockerd pid $pid"; fi
    if answers; then
        say "running (server $(docker info --format '{{.ServerVersion}}'), storage $(docker info --format '{{.Driver}}'); $ours)"
    else
        say "no engine answers 'docker info' ($ours)"
        return 1
    fi
}

case ${1:-} in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
