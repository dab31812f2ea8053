#!/usr/bin/env bash
# The other OpenAI client family: set up .venv-openai2/ (openai 2.x, which sends through httpx,
# with langchain-openai 1.7.4, which accepts it), then run the tests whose outcome depends on the
# client: replay, the pytest plugin, the CLI and evaluation. openai 2.x retries any exception its
# transport raises and rewords it as "Connection error."; these tests prove a replay miss still
# reaches the user as chainkit's own error, after one attempt.
#
#   bash scripts/test_openai2.sh [PYTEST ARGS]     (scripts/test.sh runs it after the main suite)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh openai2
venv=.venv-openai2
"$venv/bin/python" - <<'PY'
from importlib.metadata import version

openai = version("openai")
assert openai.startswith("2."), f".venv-openai2 has openai {openai}, not 2.x: rerun scripts/setup.sh openai2"
print(f"== openai {openai}, langchain-openai {version('langchain-openai')} (httpx): the client-dependent tests")
PY
# Run once, in .venv/, what no OpenAI client takes part in: the SIGKILL tests (recordings survive
# a kill: chainkit's own journal, a minute and a half) and the MLflow-chatter test (clv is plain
# Python: three `chainkit eval` processes, ~50 s).
"$venv/bin/pytest" -q \
  tests/test_client_families.py tests/test_replay.py tests/test_pytest_plugin.py tests/test_cli.py \
  tests/test_evaluation.py tests/test_vcr_import.py \
  -k "not sigkill and not test_mlflow_chatter_only_with_verbose" "$@"
