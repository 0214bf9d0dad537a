#!/usr/bin/env bash
# Install Debian packages the project needs, once: `apt-install.sh <label> <package>...`.
# Nothing happens when all are installed; otherwise root is needed (apt-get).
set -euo pipefail
label=$1; shift
missing=()
for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]} == 0)); then
    echo "$label: $* already installed"
    exit 0
fi
[[ $(id -u) == 0 ]] || { echo "$label: error: installing ${missing[*]} needs root (sudo make $label)" >&2; exit 1; }
echo "$label: installing ${missing[*]} ..."
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "$label: installed ${missing[*]}"
