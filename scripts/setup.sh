#!/usr/bin/env bash
# Installs what trolleyfs needs on a fresh Debian machine (run as root): system packages when
# missing, a .venv next to this checkout, and the package itself (editable, with test extras).
#   scripts/setup.sh            everything, for the demo and the tests (Orthanc, dcmtk too)
#   scripts/setup.sh runtime    only what a mount needs (the Dockerfile uses this)
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-all}

apt_packages=(fuse3 iproute2 util-linux libfuse3-dev pkg-config)
extras='.[test]'
if [ "$mode" = runtime ]; then
    extras='.'
else
    apt_packages+=(orthanc orthanc-dicomweb dcmtk attr pcmanfm xvfb xdotool glusterfs-server glusterfs-client)
fi
missing=()
for pkg in "${apt_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    echo "setup: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    # no service a package brings (orthanc, glusterd) may start: the tests run their own, on loopback
    guard=/usr/sbin/policy-rc.d
    if [ ! -e "$guard" ]; then
        printf '#!/bin/sh\nexit 101\n' > "$guard" && chmod +x "$guard"
        trap 'rm -f "$guard"' EXIT
    fi
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e "$extras"

# Where mount(8) and systemd find trolleyfs: `mount -t trolleyfs`, `mount -t fuse.trolleyfs`, fstab.
if [ -w /usr/sbin ] && [ -w /usr/local/bin ]; then
    for helper in mount.trolleyfs mount.fuse.trolleyfs; do
        ln -sf "$PWD/.venv/bin/$helper" "/usr/sbin/$helper"
    done
    ln -sf "$PWD/.venv/bin/trolleyfs" /usr/local/bin/trolleyfs
fi
