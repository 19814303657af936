#!/usr/bin/env bash
# The long fuzz of every parser that reads bytes from a PACS or a user (issue 11): 100,000 cases
# a parser by default, printing cases, failures and seconds per parser and a minimal input for
# each failure; exit status 1 if any. Options go to the runner (tests/fuzz/run.py):
#   scripts/fuzz.sh                                   # everything, 100,000 cases each
#   scripts/fuzz.sh --cases 5000 --parser rad69       # one parser, fewer cases
#   scripts/fuzz.sh --list                            # the parser names
# CI runs a short, derandomized version with the tests (tests/fuzz/test_fuzz_short.py).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
    scripts/setup.sh
fi
exec .venv/bin/python -m tests.fuzz.run "$@"
