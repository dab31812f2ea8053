#!/usr/bin/env bash
# Set up .venv/, then run the main job offline: every example chain replayed from its
# committed cassette (no key, no network).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
ck=.venv/bin/chainkit
$ck list
echo
echo "== qa"
$ck run qa --input '{"question": "What is MLflow?"}'
echo "== stream_story (streamed)"
$ck run stream_story --input '{"topic": "a robot learning to paint"}' --stream
echo "== summarize (Responses API)"
$ck run summarize --input '{"text": "MLflow is an open-source platform to manage the machine learning lifecycle, including experimentation, reproducibility, deployment, and a central model registry."}'
