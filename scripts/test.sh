#!/usr/bin/env bash
# Sets up (scripts/setup.sh) and runs the whole test suite. The tests start their own Orthanc and
# embedded PACS; they run in a private network namespace so that every server is reachable from
# 127.0.0.1 only (Orthanc 1.10 cannot be told to listen on loopback alone).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec unshare --net -- sh -c 'ip link set lo up && exec .venv/bin/python -m pytest "$@"' pytest -q "$@"
