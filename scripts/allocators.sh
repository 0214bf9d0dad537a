#!/usr/bin/env bash
# The malloc implementations the allocator hypotheses preload (experiments.toml: allocator =
# jemalloc | mimalloc | tcmalloc), from Debian's packages. Root needed; `make allocators` runs it.
set -euo pipefail
"$(dirname "$0")/apt-install.sh" allocators libjemalloc2 libmimalloc2.0 libgoogle-perftools4
for lib in /usr/lib/x86_64-linux-gnu/libjemalloc.so.2 /usr/lib/x86_64-linux-gnu/libmimalloc.so.2 \
           /usr/lib/x86_64-linux-gnu/libtcmalloc.so.4; do
    [[ -e $lib ]] || { echo "allocators: error: $lib missing after the install" >&2; exit 1; }
done
