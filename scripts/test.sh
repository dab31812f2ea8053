#!/usr/bin/env bash
# Set up .venv/, then lint, type-check and run the whole test suite offline.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check toolkit tests benchmarks scripts chains
.venv/bin/mypy
.venv/bin/pytest "$@"
