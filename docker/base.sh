#!/usr/bin/env bash
# The offline base image: Debian bookworm with python3 (3.11), venv and pip, made with
# debootstrap and `docker import` -- no image registry needed. `make docker-base` runs this.
#
# The image carries this machine's CA bundle, so pip works inside it behind a TLS-inspecting
# proxy as it does on the host. The root filesystem tarball is cached under build/docker/ (its
# name carries a hash of what went into it), so a second run only re-imports it, and a run that
# finds the image already made from the same tarball does nothing.
#
# Settings (environment): INFBENCH_BASE_TAG (default infbench-base:bookworm),
# DEBIAN_MIRROR (default http://deb.debian.org/debian), INFBENCH_HOST_CA (default
# /etc/ssl/certs/ca-certificates.crt). Needs root (debootstrap) the first time.
set -euo pipefail
cd "$(dirname "$0")/.."

TAG=${INFBENCH_BASE_TAG:-infbench-base:bookworm}
SUITE=bookworm
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
HOST_CA=${INFBENCH_HOST_CA:-/etc/ssl/certs/ca-certificates.crt}
PACKAGES=python3,python3-venv,python3-pip,ca-certificates
CACHE_DIR=build/docker

say() { echo "docker-base: $*"; }
die() { echo "docker-base: error: $*" >&2; exit 1; }

started=$SECONDS
command -v docker >/dev/null || die "no docker command; start an engine: scripts/docker-engine.sh start"
docker info >/dev/null 2>&1 || die "no Docker engine answers; start one: scripts/docker-engine.sh start"
[[ -r $HOST_CA ]] || die "no CA bundle at $HOST_CA (set INFBENCH_HOST_CA)"

# Everything that makes the root filesystem what it is; a change makes a new tarball.
key=$( { echo "$SUITE $MIRROR $PACKAGES minbase v1"; cat "$HOST_CA"; } | sha256sum | cut -c1-12)
tarball=$CACHE_DIR/$SUITE-rootfs-$key.tar

if [[ $(docker image inspect --format '{{index .Config.Labels "infbench.base.key"}}' "$TAG" 2>/dev/null) == "$key" ]]; then
    say "$TAG is up to date (rootfs $key); nothing to do"
    exit 0
fi

if [[ -s $tarball ]]; then
    say "using the cached root filesystem $tarball"
else
    [[ $(id -u) == 0 ]] || die "debootstrap needs root (run: sudo make docker-base)"
    if ! command -v debootstrap >/dev/null; then
        say "installing debootstrap ..."
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
            --no-install-recommends debootstrap >/dev/null
    fi
    mkdir -p "$CACHE_DIR"
    rootfs=$(mktemp -d "$CACHE_DIR/rootfs.XXXXXX")
    trap 'rm -rf "$rootfs" "$tarball.part"' EXIT
    t0=$SECONDS
    say "debootstrap $SUITE (minbase + $PACKAGES) from $MIRROR ..."
    if ! debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$rootfs" "$MIRROR" \
            >"$CACHE_DIR/debootstrap.log" 2>&1; then
        tail -n 15 "$CACHE_DIR/debootstrap.log" >&2
        die "debootstrap failed (log: $CACHE_DIR/debootstrap.log)"
    fi
    say "debootstrap done in $((SECONDS - t0)) s"
    # The host's CA bundle, as the bundle and as a local CA (so update-ca-certificates keeps it).
    cp -L "$HOST_CA" "$rootfs/etc/ssl/certs/ca-certificates.crt"
    mkdir -p "$rootfs/usr/local/share/ca-certificates"
    cp -L "$HOST_CA" "$rootfs/usr/local/share/ca-certificates/infbench-host-bundle.crt"
    # What an image does not need: package caches, lists, docs, man pages, translations.
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
        "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
        "$rootfs"/usr/share/locale/* "$rootfs"/var/log/*.log "$rootfs"/debootstrap
    echo "deb $MIRROR $SUITE main" >"$rootfs/etc/apt/sources.list"
    tar --numeric-owner -C "$rootfs" -cf "$tarball.part" .
    mv "$tarball.part" "$tarball"
    rm -rf "$rootfs"
    trap - EXIT
    say "cached the root filesystem: $tarball ($(du -m "$tarball" | cut -f1) MB)"
fi

t0=$SECONDS
docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
    --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
    --change 'ENV REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt' \
    --change "LABEL infbench.base.key=$key" \
    --change "LABEL org.opencontainers.image.description=\"Debian $SUITE with python3, venv and pip (infbench offline base)\"" \
    --change 'CMD ["python3"]' \
    --message "infbench docker/base.sh: debootstrap $SUITE + $PACKAGES" \
    "$tarball" "$TAG" >/dev/null
python=$(docker run --rm --network host "$TAG" python3 -c 'import sys, ssl, venv, ensurepip; print(sys.version.split()[0])')
size=$(docker image inspect --format '{{.Size}}' "$TAG")
say "built $TAG: Debian $SUITE, python $python, $((size / 1048576)) MB (import $((SECONDS - t0)) s, total $((SECONDS - started)) s)"
