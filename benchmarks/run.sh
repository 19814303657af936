#!/usr/bin/env bash
# Sets up like the tests, then runs the series-read benchmark in a private network namespace.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec unshare --net -- sh -c 'ip link set lo up && exec .venv/bin/python benchmarks/series_read.py "$@"' bench "$@"
