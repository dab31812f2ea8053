#!/usr/bin/env bash
# Set up .venv/, then lint, type-check and run the whole test suite offline (pytest arguments go
# to this run); then the client-dependent tests again with openai 2.x, in .venv-openai2/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check toolkit tests benchmarks scripts chains
.venv/bin/mypy
.venv/bin/pytest "$@"
bash scripts/test_openai2.sh
