#!/usr/bin/env bash
# Sets up like the tests, adds the peers (rclone from Debian, dicomtrolley 4.1 from PyPI in its own
# venv, so that it cannot change trolleyfs's dependencies), then runs the benchmark suite in a
# private network namespace. Arguments go to benchmarks/run.py (--rounds N, --json FILE);
# with --memory first, the memory benchmark runs instead (benchmarks/memory.py, --instances N);
# with --protocols first, the protocol pairs against the embedded PACS (benchmarks/protocols.py);
# with --soak first, a million reads through a mount of the embedded PACS (benchmarks/soak.py, --reads N);
# with --cluster first, 4 daemons over one shared cache against one alone (benchmarks/cluster.py, --daemons N);
# with --derived first, /nifti, preview.png and /deid against the direct routes (benchmarks/derived.py).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
command -v rclone >/dev/null || { apt-get update -q && apt-get install -y -q rclone; }
if [ ! -x .venv-peers/bin/python ]; then
    python3 -m venv .venv-peers
fi
.venv-peers/bin/python -c 'import dicomtrolley' 2>/dev/null || .venv-peers/bin/pip install -q 'dicomtrolley==4.1.0'
script=benchmarks/run.py
case "${1:-}" in
    --memory) script=benchmarks/memory.py; shift ;;
    --protocols) script=benchmarks/protocols.py; shift ;;
    --soak) script=benchmarks/soak.py; shift ;;
    --cluster) script=benchmarks/cluster.py; shift ;;
    --derived) script=benchmarks/derived.py; shift ;;
esac
exec unshare --net -- sh -c 'ip link set lo up && exec .venv/bin/python "$0" "$@"' "$script" "$@"
