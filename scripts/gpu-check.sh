#!/usr/bin/env bash
# The GPU-vs-CPU comparison, prepared here and run in one call where a GPU is lent.
#
#   scripts/gpu-check.sh pack [DIR] [--models tiny,small]
#                                                 here, where TensorFlow is: convert the models
#                                                 (default tiny and small) to .onnx and .pt and
#                                                 copy them with the sample images into DIR
#                                                 (default build/gpu-check; `infbench gpu-pack`)
#   scripts/gpu-check.sh run [--pack DIR] [--out DIR] [--cpu-only] [args...]
#                                                 anywhere with Python 3 and torch and/or
#                                                 onnxruntime (no TensorFlow, no network):
#                                                 torch and ONNX Runtime, cpu and cuda, 1 and 4
#                                                 replicas, batch 1 and 10, 5 s a figure (a few
#                                                 minutes); figures as gpu_check.json and
#                                                 gpu_check.md in --out (default $OUT when set,
#                                                 else build/gpu-check/results)
#
# Other args go to `python -m servers.image.gpu_check` (--model, --runtimes, --replicas,
# --batches, --seconds). Without a GPU, `run` fails in one line unless --cpu-only: the CPU half
# runs here unchanged (tests/torch/test_gpu_check.py runs it on the tiny model).
# Settings (environment): PYTHON (default: this checkout's .venv/bin/python when it exists,
# else python3).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x "$ROOT/.venv/bin/python" ]]; then PYTHON=$ROOT/.venv/bin/python; else PYTHON=python3; fi
fi

die() { echo "gpu-check: error: $*" >&2; exit 1; }

cmd=${1:-}
[[ -n "$cmd" ]] || die "usage: scripts/gpu-check.sh pack [DIR] | run [--pack DIR] [--out DIR] [--cpu-only] [...]"
shift
cd "$ROOT"
case "$cmd" in
    pack)
        dir=$ROOT/build/gpu-check
        if [[ $# -gt 0 && "$1" != -* ]]; then dir=$1; shift; fi
        exec "$PYTHON" -m infbench gpu-pack --out "$dir" "$@"
        ;;
    run)
        pack=$ROOT/build/gpu-check
        out=${OUT:-$ROOT/build/gpu-check/results}
        rest=()
        while [[ $# -gt 0 ]]; do
            case "$1" in
                --pack) [[ $# -ge 2 ]] || die "--pack needs a folder"; pack=$2; shift 2 ;;
                --out) [[ $# -ge 2 ]] || die "--out needs a folder"; out=$2; shift 2 ;;
                *) rest+=("$1"); shift ;;
            esac
        done
        [[ -f "$pack/manifest.json" ]] || die "no pack at $pack (make one where TensorFlow is: scripts/gpu-check.sh pack)"
        export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
        exec "$PYTHON" -m servers.image.gpu_check --pack "$pack" --out "$out" "${rest[@]}"
        ;;
    *)
        die "unknown command '$cmd' (pack or run)"
        ;;
esac
