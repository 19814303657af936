#!/usr/bin/env bash
# Sets up (scripts/setup.sh), then mounts the embedded sample PACS; Ctrl-C unmounts and stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/trolleyfs demo "$@"
