#!/usr/bin/env bash
# Installs what trolleyfs needs on a fresh Debian machine (run as root): system packages when
# missing, a .venv next to this checkout, and the package itself (editable, with test extras).
set -euo pipefail
cd "$(dirname "$0")/.."

apt_packages=(fuse3 iproute2 util-linux libfuse3-dev pkg-config orthanc orthanc-dicomweb dcmtk)
missing=()
for pkg in "${apt_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    echo "setup: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test]'
