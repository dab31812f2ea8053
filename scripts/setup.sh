#!/usr/bin/env bash
# Create a virtual environment in the repo root (once) and install chainkit with its test extras.
#
#   bash scripts/setup.sh           .venv/          the newest clients: openai 3.x, which sends through httpx2
#   bash scripts/setup.sh openai2   .venv-openai2/  the other client family: openai 2.x (httpx) with
#                                                   langchain-openai 1.7.4, which accepts it
#
# Idempotent: an existing venv is reused, and pip (with its cache) only tops up what changed.
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
  "") venv=.venv; pins=() ;;
  openai2) venv=.venv-openai2; pins=("openai>=2.45,<3" "langchain-openai==1.7.4") ;;
  *) echo "usage: bash scripts/setup.sh [openai2]" >&2; exit 2 ;;
esac
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --upgrade pip
fi
# .venv also gets the spark extra (tests/test_spark_engine.py; Spark itself needs Java 17 or 21).
extras=test
[ "$venv" = .venv ] && extras=test,spark
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e ".[$extras]" ${pins[@]+"${pins[@]}"}
