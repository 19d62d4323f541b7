#!/usr/bin/env bash
# test.sh - the whole test suite, as CI runs it: setup (idempotent), lint, types, then every
# tier of tests: pure Python, root (BPF/XDP, netns on this kernel), and the real-kernel VM tier
# (one qemu boot for the whole session when this kernel has no ESP).
#
#   scripts/test.sh                 everything
#   scripts/test.sh -m 'not vm'     extra arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
PY=.venv/bin/python
echo "== ruff"; .venv/bin/ruff check . && .venv/bin/ruff format --check .
echo "== mypy"; .venv/bin/mypy
echo "== pytest"
set +e
"$PY" -m pytest "$@"
rc=$?
set -e
[ "$rc" = 5 ] && { echo "test.sh: pytest collected no tests" >&2; exit 1; }
exit "$rc"
