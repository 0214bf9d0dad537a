#!/usr/bin/env bash
# PyTorch, the optional environment: requirements-torch.lock into the venv. `make torch` runs
# this (and only it: `make venv` and `make test` never install torch).
#
#   scripts/torch.sh install|check PYTHON
#
# install: installs the lock with PYTHON's pip, constrained by requirements.lock (nothing that
#          the main lock pins may change); a progress line first. Where PYTHON already has the
#          pinned torch, pip only confirms the pins (no index is asked for torch).
# check:   asks the package index whether it has the pinned CPU build, installing nothing
#          (pip --dry-run, torch alone).
#
# Either exits 1 with one line when the index has no CPU build of the pinned torch: PyPI's
# Linux torch is the CUDA build, which this script never installs (see requirements-torch.lock
# for the sizes). TORCH_INDEX_URL (environment; `make torch TORCH_INDEX_URL=...`) adds an index
# that has it, e.g. PyTorch's own https://download.pytorch.org/whl/cpu.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LOCK=$ROOT/requirements-torch.lock
CPU_INDEX=https://download.pytorch.org/whl/cpu

die() { echo "make torch: error: $*" >&2; exit 1; }

action=${1:-}
PY=${2:-}
[[ "$action" == install || "$action" == check ]] && [[ -n "$PY" ]] \
    || die "usage: scripts/torch.sh install|check PYTHON"
[[ -x "$PY" ]] || die "no Python at $PY (make venv first)"

pin=$(grep -E '^torch==' "$LOCK" | head -n 1)
[[ -n "$pin" ]] || die "no torch== line in $LOCK"
want=${pin#torch==}
pip=("$PY" -m pip --disable-pip-version-check)
index=()
where="this machine's package index"
if [[ -n "${TORCH_INDEX_URL:-}" ]]; then
    index=(--extra-index-url "$TORCH_INDEX_URL")
    where="$where and $TORCH_INDEX_URL"
fi

# One line for pip's failure: the CPU build missing from the index, or pip's own last line.
explain() {
    local log=$1
    if grep -q "No matching distribution found for torch==" "$log"; then
        die "no CPU build of $pin on $where: PyPI's Linux torch is the CUDA build (a ~530 MB" \
            "wheel plus ~2.2 GB of nvidia-* and triton wheels), which make torch does not" \
            "install; name an index with the CPU build: make torch TORCH_INDEX_URL=$CPU_INDEX"
    fi
    die "pip could not install $LOCK: $(grep -v '^\s*$' "$log" | tail -n 1)"
}

log=$(mktemp)
trap 'rm -f "$log"' EXIT

if [[ "$action" == check ]]; then
    "${pip[@]}" install --dry-run --quiet --no-deps --ignore-installed "${index[@]}" "$pin" \
        >"$log" 2>&1 || explain "$log"
    echo "torch: $pin is on $where"
    exit 0
fi

have=$("$PY" -c 'import importlib.metadata as m; print(m.version("torch"))' 2>/dev/null || true)
if [[ "$have" == "$want" ]]; then
    echo "torch $want is installed; checking the other pins of requirements-torch.lock ..."
else
    echo "installing PyTorch ($pin, the CPU build, ~190 MB; ~750 MB installed) from" \
         "requirements-torch.lock into $(dirname "$(dirname "$PY")") (a minute or two) ..."
fi
started=$SECONDS
"${pip[@]}" install --quiet "${index[@]}" -r "$LOCK" -c "$ROOT/requirements.lock" \
    >"$log" 2>&1 || explain "$log"
got=$("$PY" -c 'import torch; print(torch.__version__, torch.version.cuda or "none")' 2>&1) \
    || die "torch does not import after the install: $(tail -n 1 <<<"$got")"
echo "torch: ${got% *} (CUDA ${got##* }) in $((SECONDS - started)) s"
