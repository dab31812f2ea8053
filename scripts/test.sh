#!/usr/bin/env bash
# Set up .venv/, then lint, type-check and run the whole test suite offline (pytest arguments go
# to this run); then the client-dependent tests again with openai 2.x, in .venv-openai2/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The tests' temporary files (each test's MLflow store, journal and cassettes) on tmpfs where the
# machine has one and TMPDIR is not set: an sqlite commit costs ~17 ms on this machine's disk and
# ~0.1 ms in memory (tests/test_evaluation.py + test_resume.py side by side: 824 s -> 662 s).
# uv's cache beside them, so that verify's environments hard-link from it instead of copying.
if [ -z "${TMPDIR:-}" ] && [ -d /dev/shm ] && [ -w /dev/shm ]; then
  export TMPDIR=/dev/shm/chainkit-tests
  export UV_CACHE_DIR="${UV_CACHE_DIR:-$TMPDIR/uv-cache}"
  mkdir -p "$TMPDIR"
fi
.venv/bin/ruff check toolkit tests benchmarks scripts chains
.venv/bin/mypy
.venv/bin/pytest "$@"
bash scripts/test_openai2.sh
