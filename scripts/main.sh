#!/usr/bin/env bash
# Set up .venv/, then run the main job offline (no key, no network): every example chain replayed
# from its committed cassette, logged to MLflow (registered, alias candidate), and evaluated.
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
echo "== agent (a LangGraph tool loop: tool call, tool result, answer)"
agent_input='{"messages": [{"role": "user", "content": "What'"'"'s the weather in Paris?"}]}'
$ck run agent --input "$agent_input" --json \
  | .venv/bin/python -c 'import json, sys; print(json.load(sys.stdin)["output"]["messages"][-1]["content"])'
echo "== responses_agent (an MLflow ResponsesAgent, streamed)"
$ck run responses_agent --input '{"input": [{"role": "user", "content": "What is MLflow?"}]}' --stream
echo
echo "== log every example chain to MLflow (offline; the embedded store ./mlflow.db)"
$ck log --register --alias candidate
echo
echo "== evaluate every chain that has a dataset under datasets/ (replayed, offline)"
$ck eval --all
echo
echo "Browse the models and evaluation runs: .venv/bin/mlflow ui --backend-store-uri sqlite:///$(pwd)/mlflow.db"
