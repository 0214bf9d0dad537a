#!/usr/bin/env bash
# The malloc implementations the allocator hypotheses preload (experiments.toml: allocator =
# jemalloc | mimalloc | tcmalloc), from Debian's packages. Root needed; `make allocators` runs it.
set -euo pipefail
PACKAGES=(libjemalloc2 libmimalloc2.0 libgoogle-perftools4)
missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]} == 0)); then
    echo "allocators: ${PACKAGES[*]} already installed"
    exit 0
fi
[[ $(id -u) == 0 ]] || { echo "allocators: error: installing ${missing[*]} needs root (sudo make allocators)" >&2; exit 1; }
echo "allocators: installing ${missing[*]} ..."
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
for lib in /usr/lib/x86_64-linux-gnu/libjemalloc.so.2 /usr/lib/x86_64-linux-gnu/libmimalloc.so.2 \
           /usr/lib/x86_64-linux-gnu/libtcmalloc.so.4; do
    [[ -e $lib ]] || { echo "allocators: error: $lib missing after the install" >&2; exit 1; }
done
echo "allocators: installed ${missing[*]}"
