"""The ``chainkit`` command line (toolkit/cli.py), driven with click's CliRunner.

Each test works on a copy of the example project (chains/ and cassettes/) in a temporary
directory. Replays run fully offline; recording goes to the fake OpenAI server on 127.0.0.1
through $CHAINKIT_RECORD_VIA. Every test runs inside a network guard that lets only loopback
through, so that a broken replay can never reach api.openai.com.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from conftest import CANARY_KEY, ROOT
from openai_server import OpenAIServer

from toolkit.cassette import Cassette
from toolkit.cli import cli
from toolkit.network import NetworkGuard

QA_QUESTION = "What is MLflow?"
STORY_TOPIC = "a robot learning to paint"
SUMMARIZE_TEXT = (
    "MLflow is an open-source platform to manage the machine learning lifecycle, including "
    "experimentation, reproducibility, deployment, and a central model registry."
)
ROW_SPLIT = re.compile(r"\s{2,}")


@pytest.fixture(autouse=True)
def loopback_only() -> Iterator[None]:
    """Safety net: whatever a test does, only 127.0.0.1 can be reached."""
    with NetworkGuard(["127.0.0.1"]):
        yield


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    (root / "chains").mkdir(parents=True)
    (root / "cassettes").mkdir()
    for name in ("qa", "stream_story", "summarize"):
        shutil.copy(ROOT / "chains" / f"{name}.py", root / "chains")
        shutil.copy(ROOT / "cassettes" / f"{name}.json", root / "cassettes")
    return root


def invoke(project: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--project", str(project), *args])


def run_qa(project: Path, question: str = QA_QUESTION, *extra: str) -> Result:
    return invoke(project, "run", "qa", "--input", json.dumps({"question": question}), *extra)


def document(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.read_text()))


def qa_answer(cassette: Path, index: int = 0) -> str:
    response = document(cassette)["interactions"][index]["response"]
    return str(response["json"]["choices"][0]["message"]["content"])


def story_text(cassette: Path) -> str:
    events = document(cassette)["interactions"][0]["response"]["events"]
    return "".join(
        choice["delta"].get("content") or ""
        for event in events
        if isinstance(event["data"], dict)
        for choice in event["data"]["choices"]
    )


def summary_text(cassette: Path) -> str:
    return str(document(cassette)["interactions"][0]["response"]["json"]["output"][0]["content"][0]["text"])


def table_rows(stdout: str) -> list[list[str]]:
    return [ROW_SPLIT.split(line.strip()) for line in stdout.splitlines() if line.strip()]


# ------------------------------------------------------------------------------------ list


def test_list_table(project: Path) -> None:
    (project / "cassettes" / "summarize.json").unlink()
    result = invoke(project, "list")
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    header, *rows = table_rows(result.stdout)
    assert header == ["chain", "flavor", "recorded", "description"]
    assert [row[:3] for row in rows] == [
        ["qa", "langchain", "yes"],
        ["stream_story", "langchain", "yes"],
        ["summarize", "langchain", "no"],
    ]
    assert rows[0][3].startswith("Answers a question about MLflow")


def test_list_json(project: Path) -> None:
    (project / "cassettes" / "stream_story.json").unlink()
    result = invoke(project, "list", "--json")
    assert result.exit_code == 0, result.output
    found = json.loads(result.stdout)  # the whole of stdout is one JSON document
    assert found["problems"] == []
    chains = {chain["name"]: chain for chain in found["chains"]}
    assert sorted(chains) == ["qa", "stream_story", "summarize"]
    assert chains["qa"]["input_example"] == {"question": QA_QUESTION}
    assert chains["qa"]["flavor"] == "langchain"
    assert Path(chains["qa"]["path"]) == (project / "chains" / "qa.py").resolve()
    assert Path(chains["qa"]["cassette"]) == (project / "cassettes" / "qa.json").resolve()
    assert [chains[name]["recorded"] for name in sorted(chains)] == [True, False, True]


def test_list_warns_about_a_chain_named_like_an_installed_package(project: Path) -> None:
    """MLflow's own sample is chains/langgraph.py; here chains/yaml.py (PyYAML is installed)."""
    shutil.copy(project / "chains" / "qa.py", project / "chains" / "yaml.py")
    result = invoke(project, "list")
    assert result.exit_code == 0, result.output  # a warning, not a problem: every chain works
    assert "yaml" in result.stdout.split()
    assert (
        "warning: " in result.stderr
        and "'yaml' is also the name of a module in an installed package" in result.stderr
    )
    found = json.loads(invoke(project, "list", "--json").stdout)
    assert [Path(w["path"]).name for w in found["warnings"]] == ["yaml.py"]


BROKEN = '"""A chain with a syntax error on line 3."""\nimport mlflow\nchain = (1,\n'


def test_list_reports_a_broken_chain_and_fails(project: Path) -> None:
    (project / "chains" / "broken.py").write_text(BROKEN)
    result = invoke(project, "list")
    assert result.exit_code == 1
    assert [row[0] for row in table_rows(result.stdout)[1:]] == ["qa", "stream_story", "summarize"]
    broken = (project / "chains" / "broken.py").resolve()
    assert re.search(rf"problem: {re.escape(str(broken))}:3: syntax error", result.stderr), result.stderr
    assert "broken" not in result.stdout


def test_list_json_reports_a_broken_chain_and_fails(project: Path) -> None:
    (project / "chains" / "broken.py").write_text(BROKEN)
    result = invoke(project, "list", "--json")
    assert result.exit_code == 1
    found = json.loads(result.stdout)
    assert [chain["name"] for chain in found["chains"]] == ["qa", "stream_story", "summarize"]
    (problem,) = found["problems"]
    assert Path(problem["path"]).name == "broken.py" and problem["line"] == 3
    assert "syntax error" in problem["message"]
    assert result.stderr == ""


def test_missing_project_directory_is_bad_usage(tmp_path: Path) -> None:
    result = invoke(tmp_path / "nowhere", "list")
    assert result.exit_code == 2
    assert "nowhere" in result.stderr and "does not exist" in result.stderr


# ------------------------------------------------------------------------------------- run


def test_run_replays_offline(
    project: Path, openai_server: OpenAIServer, record_via: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # If replay went live, it would go to the fake server: it must see nothing.
    monkeypatch.setenv("CHAINKIT_RECORD_VIA", record_via)
    result = run_qa(project)
    assert result.exit_code == 0, result.output
    assert result.stdout == qa_answer(project / "cassettes" / "qa.json") + "\n"
    assert result.stderr == ""
    assert openai_server.requests == []


def test_run_responses_api_chain_replays(project: Path) -> None:
    result = invoke(project, "run", "summarize", "--input", json.dumps({"text": SUMMARIZE_TEXT}))
    assert result.exit_code == 0, result.output
    assert result.stdout == summary_text(project / "cassettes" / "summarize.json") + "\n"


def test_run_stream_prints_the_streamed_text(project: Path, openai_server: OpenAIServer) -> None:
    story = story_text(project / "cassettes" / "stream_story.json")
    assert len(story.split()) > 10
    result = invoke(project, "run", "stream_story", "--stream", "--input", json.dumps({"topic": STORY_TOPIC}))
    assert result.exit_code == 0, result.output
    assert result.stdout == story + "\n"
    assert openai_server.requests == []


def test_run_stream_json_has_the_chunks(project: Path) -> None:
    story = story_text(project / "cassettes" / "stream_story.json")
    result = invoke(
        project, "run", "stream_story", "--stream", "--json", "--input", json.dumps({"topic": STORY_TOPIC})
    )
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)  # chunks are not printed as they come with --json
    assert out["output"] == story
    assert len(out["chunks"]) > 10 and "".join(out["chunks"]) == story


def test_run_json(project: Path) -> None:
    result = run_qa(project, QA_QUESTION, "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["chain"] == "qa"
    assert out["output"] == qa_answer(project / "cassettes" / "qa.json")
    assert (out["record_mode"], out["replayed"], out["recorded"]) == ("none", 1, 0)
    assert Path(out["cassette"]).resolve() == (project / "cassettes" / "qa.json").resolve()


STATE_CHAIN = """import mlflow
import pandas as pd
from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.runnables import RunnableLambda


def answer(inputs):
    return {
        "messages": [HumanMessage(inputs["question"], id="1"), AIMessage("An answer.", id="2")],
        "table": pd.DataFrame({"n": [1, 2]}),
    }


mlflow.models.set_model(RunnableLambda(answer))
"""


def test_run_json_prints_messages_and_frames_as_json_not_reprs(project: Path) -> None:
    """A LangGraph-like state (messages) and a DataFrame used to come out as Python reprs."""
    (project / "chains" / "state.py").write_text(STATE_CHAIN)
    result = invoke(project, "run", "state", "--input", '{"question": "Why?"}', "--json")
    assert result.exit_code == 0, result.output
    output = json.loads(result.stdout)["output"]
    assert [(m["type"], m["content"]) for m in output["messages"]] == [
        ("human", "Why?"),
        ("ai", "An answer."),
    ]
    assert output["table"] == [{"n": 1}, {"n": 2}]


ECHO_AGENT = """import mlflow
from mlflow.pyfunc import ResponsesAgent
from mlflow.types.responses import ResponsesAgentRequest, ResponsesAgentResponse, ResponsesAgentStreamEvent


class Echo(ResponsesAgent):
    def predict(self, request: ResponsesAgentRequest) -> ResponsesAgentResponse:
        text = f"echo: {request.input[-1].content}"
        return ResponsesAgentResponse(output=[self.create_text_output_item(text=text, id="1")])

    def predict_stream(self, request: ResponsesAgentRequest):
        for word in ["echo: ", request.input[-1].content]:
            yield ResponsesAgentStreamEvent(**self.create_text_delta(delta=word, item_id="1"))
        text = f"echo: {request.input[-1].content}"
        yield ResponsesAgentStreamEvent(
            type="response.output_item.done", item=self.create_text_output_item(text=text, id="1")
        )


mlflow.models.set_model(Echo())
"""
AGENT_INPUT = '{"input": [{"role": "user", "content": "hi"}]}'


def test_run_stream_streams_a_pyfunc_agent(project: Path) -> None:
    """ResponsesAgent (and any pyfunc with predict_stream) streams: its text deltas as text."""
    (project / "chains" / "echo.py").write_text(ECHO_AGENT)
    result = invoke(project, "run", "echo", "--input", AGENT_INPUT, "--stream")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "echo: hi"
    streamed = json.loads(invoke(project, "run", "echo", "--input", AGENT_INPUT, "--stream", "--json").stdout)
    assert streamed["output"] == "echo: hi"
    assert [chunk["type"] for chunk in streamed["chunks"]] == [
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_item.done",
    ]


def test_run_stream_of_a_pyfunc_without_predict_stream_says_so(project: Path) -> None:
    shutil.copy(ROOT / "chains" / "circle_area.py", project / "chains")
    result = invoke(project, "run", "circle_area", "--input", '{"radius": 1}', "--stream")
    assert result.exit_code == 2
    assert "chain circle_area is an mlflow.pyfunc model without predict_stream" in result.stderr


def test_run_json_stdout_stays_one_document_when_the_chain_prints(project: Path) -> None:
    source = (project / "chains" / "qa.py").read_text()
    noisy = source.replace("chain = prompt", 'print("building the chain")\nchain = prompt')
    assert noisy != source
    (project / "chains" / "noisy.py").write_text(noisy)
    shutil.copy(project / "cassettes" / "qa.json", project / "cassettes" / "noisy.json")
    result = invoke(project, "run", "noisy", "--json", "--input", json.dumps({"question": QA_QUESTION}))
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["output"] == qa_answer(project / "cassettes" / "qa.json")


def test_run_miss_names_the_cassette_and_the_closest_request(
    project: Path, openai_server: OpenAIServer, record_via: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHAINKIT_RECORD_VIA", record_via)
    result = run_qa(project, "What is MLflow??")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert str(project / "cassettes" / "qa.json") in result.stderr
    assert "Closest recorded request: #0 POST https://api.openai.com/v1/chat/completions" in result.stderr
    assert 'messages[1].content: recorded "What is MLflow?", sent "What is MLflow??"' in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("error: ")
    assert openai_server.requests == []


def test_run_miss_with_json_keeps_stdout_empty(project: Path) -> None:
    result = run_qa(project, "Something else entirely", "--json")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert "messages[1].content" in result.stderr


def test_debug_shows_the_traceback(project: Path) -> None:
    result = invoke(project, "--debug", "run", "qa", "--input", json.dumps({"question": "other"}))
    assert result.exit_code == 1
    assert "Traceback (most recent call last)" in result.stderr
    assert "ReplayMissError" in result.stderr


def test_run_without_its_cassette_in_none_mode(project: Path) -> None:
    (project / "cassettes" / "qa.json").unlink()
    result = run_qa(project)
    assert result.exit_code == 1
    assert str(project / "cassettes" / "qa.json") in result.stderr
    assert "--record-mode once" in result.stderr
    assert not (project / "cassettes" / "qa.json").exists()


def test_run_bad_input_json_is_bad_usage(project: Path) -> None:
    result = invoke(project, "run", "qa", "--input", "{question: 1")
    assert result.exit_code == 2
    assert "--input is not valid JSON" in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_run_a_chain_failure_is_one_line(project: Path) -> None:
    result = invoke(project, "run", "qa", "--input", "{}")  # the prompt needs {question}
    assert result.exit_code == 1
    assert result.stderr.startswith("error: KeyError:") and "question" in result.stderr
    assert "Traceback" not in result.stderr


def test_run_unknown_chain_suggests_the_closest_name(project: Path) -> None:
    result = invoke(project, "run", "qaa", "--input", "{}")
    assert result.exit_code == 1
    assert "no chain named 'qaa'" in result.stderr
    assert "did you mean 'qa'?" in result.stderr
    assert "stream_story" in result.stderr  # lists what is available


def test_run_unknown_record_mode_lists_the_choices(project: Path) -> None:
    result = run_qa(project, QA_QUESTION, "--record-mode", "sometimes")
    assert result.exit_code == 2
    for mode in ("none", "once", "new_episodes", "all"):
        assert f"'{mode}'" in result.stderr


def test_unknown_record_mode_from_the_environment(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHAINKIT_RECORD_MODE", "sometimes")
    result = run_qa(project)
    assert result.exit_code == 2
    assert "sometimes" in result.stderr and "none, once, new_episodes, all" in result.stderr


def test_record_once_then_replay_offline(
    project: Path, openai_server: OpenAIServer, record_via: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    cassette = project / "cassettes" / "qa.json"
    cassette.unlink()
    monkeypatch.setenv("CHAINKIT_RECORD_VIA", record_via)
    question = "What is chainkit?"

    recorded = run_qa(project, question, "--record-mode", "once", "--json")
    assert recorded.exit_code == 0, recorded.output
    out = json.loads(recorded.stdout)
    assert (out["output"], out["recorded"], out["replayed"]) == (f"Answer to: {question}", 1, 0)
    (received,) = openai_server.requests
    assert received.path == "/v1/chat/completions"
    assert received.body["messages"][-1] == {"role": "user", "content": question}

    (interaction,) = Cassette.load(cassette).interactions
    assert interaction.request.url == "https://api.openai.com/v1/chat/completions"  # not the server's
    assert "authorization" not in cassette.read_text().lower()

    openai_server.stop()
    replayed = run_qa(project, question)
    assert replayed.exit_code == 0, replayed.output
    assert replayed.stdout == f"Answer to: {question}\n"
    assert len(openai_server.requests) == 1

    # `once` records only a new cassette: a new request against an existing one is a miss.
    again = run_qa(project, "Another question?", "--record-mode", "once")
    assert again.exit_code == 1
    assert "record mode 'once' records only a new cassette" in again.stderr
    assert len(Cassette.load(cassette)) == 1


def test_cassette_option_overrides_the_default(project: Path, tmp_path: Path) -> None:
    custom = tmp_path / "elsewhere" / "custom.json"
    custom.parent.mkdir()
    data = document(project / "cassettes" / "qa.json")
    message = data["interactions"][0]["response"]["json"]["choices"][0]["message"]
    message["content"] = "From the custom cassette."
    custom.write_text(json.dumps(data))

    result = run_qa(project, QA_QUESTION, "--cassette", str(custom), "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["output"] == "From the custom cassette."
    assert Path(out["cassette"]) == custom
    assert (custom.parent / ".custom.json.usage").exists()
    assert not (project / "cassettes" / ".qa.json.usage").exists()

    missing = run_qa(project, QA_QUESTION, "--cassette", str(tmp_path / "missing.json"))
    assert missing.exit_code == 1
    assert str(tmp_path / "missing.json") in missing.stderr


# -------------------------------------------------------------------------------- cassette


def test_cassette_show(project: Path) -> None:
    result = invoke(project, "cassette", "show", str(project / "cassettes" / "qa.json"))
    assert result.exit_code == 0, result.output
    header, first, second, footer = table_rows(result.stdout)
    assert header == ["#", "endpoint", "model", "prompt", "status", "streamed", "used"]
    assert first == ["0", "POST /v1/chat/completions", "gpt-4o-mini", "What is MLflow?", "200", "no", "?"]
    assert second == [
        "1",
        "POST /v1/chat/completions",
        "gpt-4o-mini",
        "What is a registered model?",
        "200",
        "no",
        "?",
    ]
    assert footer[0].startswith("2 interactions in ") and "openai 3." in result.stdout

    streamed = invoke(project, "cassette", "show", str(project / "cassettes" / "stream_story.json"))
    (row,) = table_rows(streamed.stdout)[1:-1]
    assert row[1] == "POST /v1/chat/completions" and row[3].startswith("Tell a three-sentence story")
    assert row[5] == "yes"

    responses = invoke(project, "cassette", "show", str(project / "cassettes" / "summarize.json"))
    row = table_rows(responses.stdout)[1]
    assert row[1] == "POST /v1/responses" and row[3].startswith("MLflow is an open-source platform")


def test_cassette_show_used_column_after_a_replay(project: Path) -> None:
    assert run_qa(project).exit_code == 0
    result = invoke(project, "cassette", "show", "--json", str(project / "cassettes" / "qa.json"))
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert [(row["index"], row["prompt"], row["used"]) for row in out["interactions"]] == [
        (0, "What is MLflow?", True),
        (1, "What is a registered model?", False),
    ]
    assert out["recorded_with"]["openai"].startswith("3.")


def test_cassette_show_missing_file(project: Path) -> None:
    result = invoke(project, "cassette", "show", str(project / "cassettes" / "nope.json"))
    assert result.exit_code == 1
    assert "nope.json" in result.stderr and "no such cassette" in result.stderr


def test_cassette_check_ok(project: Path) -> None:
    paths = [str(project / "cassettes" / f"{name}.json") for name in ("qa", "stream_story")]
    result = invoke(project, "cassette", "check", *paths)
    assert result.exit_code == 0, result.output
    assert f"ok: {paths[0]}: 2 interactions; unused: unknown" in result.stdout
    assert f"ok: {paths[1]}: 1 interactions; unused: unknown" in result.stdout
    assert run_qa(project).exit_code == 0
    after = invoke(project, "cassette", "check", paths[0])
    assert after.exit_code == 0
    assert after.stdout.strip() == f"ok: {paths[0]}: 2 interactions; unused: 1 (#1)"


def leaky_copy(project: Path, secret: str) -> Path:
    data = document(project / "cassettes" / "qa.json")
    data["interactions"][1]["request"]["json"]["messages"][1]["content"] = f"My key is {secret}, keep it"
    path = project / "cassettes" / "leaky.json"
    path.write_text(json.dumps(data, indent=1))
    return path


def test_cassette_check_flags_a_secret_shaped_string_without_printing_it(project: Path) -> None:
    secret = "sk-proj-" + "Zq7" * 10
    path = leaky_copy(project, secret)
    result = invoke(project, "cassette", "check", str(path))
    assert result.exit_code == 1
    assert "credential" in result.stderr and str(path) in result.stderr
    assert secret[8:20] not in result.output


def test_cassette_check_names_the_environment_variable_never_the_value(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", CANARY_KEY)
    path = leaky_copy(project, CANARY_KEY)
    clean = str(project / "cassettes" / "summarize.json")
    for args in (["cassette", "check", str(path), clean], ["cassette", "check", "--json", str(path), clean]):
        result = invoke(project, *args)
        assert result.exit_code == 1
        assert "OPENAI_API_KEY" in result.output
        assert CANARY_KEY not in result.output and CANARY_KEY[10:] not in result.output
    reports = json.loads(result.stdout)
    assert [report["ok"] for report in reports] == [False, True]


def test_cassette_check_names_any_secret_variable(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    value = "plain-looking-value-4711"  # not credential-shaped: only the environment check finds it
    monkeypatch.setenv("BILLING_SERVICE_TOKEN", value)
    path = leaky_copy(project, value)
    result = invoke(project, "cassette", "check", str(path))
    assert result.exit_code == 1
    assert "BILLING_SERVICE_TOKEN" in result.stderr
    assert value not in result.output


def test_cassette_check_a_broken_file(project: Path) -> None:
    path = project / "cassettes" / "qa.json"
    path.write_text(path.read_text()[:200])
    result = invoke(project, "cassette", "check", str(path))
    assert result.exit_code == 1
    assert re.search(rf"problem: {re.escape(str(path))}:\d+:\d+: not valid JSON", result.stderr)


def test_cassette_prune_drops_exactly_the_unused_interaction(project: Path) -> None:
    path = project / "cassettes" / "qa.json"
    assert run_qa(project).exit_code == 0  # replays #0 only
    result = invoke(project, "cassette", "prune", str(path))
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"{path}: kept 1, dropped 1 unused interactions"
    (kept,) = Cassette.load(path).interactions
    assert kept.request.body["json"]["messages"][1]["content"] == QA_QUESTION
    # the pruned cassette still replays what was used, and no longer what was not
    assert run_qa(project).exit_code == 0
    assert run_qa(project, "What is a registered model?").exit_code == 1


def test_cassette_prune_refuses_before_any_replay(project: Path) -> None:
    path = project / "cassettes" / "qa.json"
    before = path.read_bytes()
    result = invoke(project, "cassette", "prune", str(path))
    assert result.exit_code == 1
    assert str(path) in result.stderr
    assert "no replay has used this cassette since it last changed" in result.stderr
    assert path.read_bytes() == before


# ------------------------------------------------------------------------- entry points


def test_python_m_toolkit_help() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "toolkit", "--help"], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("Usage: chainkit ")
    for command in ("list", "run", "cassette"):
        assert re.search(rf"^\s+{command}\s", done.stdout, re.MULTILINE)


HELP_PROBE = """
import json, sys
from toolkit import cli
for args in (["--help"], ["run", "--help"], ["list", "--help"], ["cassette", "--help"]):
    try:
        cli.main(args)
    except SystemExit as exc:
        assert exc.code == 0, (args, exc.code)
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("mlflow", "langchain", "langchain_core",
                                                            "langchain_openai", "openai"))
print(json.dumps(heavy))
"""


def test_help_imports_neither_mlflow_nor_langchain() -> None:
    done = subprocess.run(
        [sys.executable, "-c", HELP_PROBE], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr
    assert "Usage: chainkit run" in done.stdout
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


# ------------------------------------------------ a miss stays a miss on every client family


def test_run_miss_is_chainkits_error_after_one_attempt(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """chains/qa.py builds ChatOpenAI with the client's default retries: on openai 2.x its retry
    loop catches any transport error. The miss still reaches the user as chainkit's, at once."""
    from toolkit.replay import CassetteSession

    attempts: list[str] = []
    lookup = CassetteSession.lookup

    def counted(self: CassetteSession, request: Any) -> Any:
        attempts.append(str(request.url))
        return lookup(self, request)

    monkeypatch.setattr(CassetteSession, "lookup", counted)
    result = run_qa(project, "What is MLflow??")
    assert result.exit_code == 1
    assert "Connection error" not in result.stderr
    assert result.stderr.startswith(f"error: no recorded response in {project / 'cassettes' / 'qa.json'}")
    assert 'messages[1].content: recorded "What is MLflow?", sent "What is MLflow??"' in result.stderr
    assert attempts == ["https://api.openai.com/v1/chat/completions"]


WRAPPING_CHAIN = """
import mlflow
from langchain_core.runnables import RunnableLambda
from langchain_openai import ChatOpenAI

INPUT_EXAMPLE = {"question": "What is MLflow?"}
llm = ChatOpenAI(model="gpt-4o-mini", temperature=0)


def ask(inputs):
    try:
        return llm.invoke(inputs["question"]).content
    except Exception as exc:  # the chain's own vaguer error, as a client might raise it
        raise RuntimeError("Connection error.") from exc


mlflow.models.set_model(RunnableLambda(ask))
"""


def test_run_names_the_miss_that_the_chain_wrapped(project: Path) -> None:
    (project / "chains" / "wrapping.py").write_text(WRAPPING_CHAIN)
    shutil.copy(project / "cassettes" / "qa.json", project / "cassettes" / "wrapping.json")
    result = invoke(project, "run", "wrapping", "--input", json.dumps({"question": "Not recorded"}))
    assert result.exit_code == 1
    assert "Connection error" not in result.stderr
    assert result.stderr.startswith(
        f"error: no recorded response in {project / 'cassettes' / 'wrapping.json'}"
    )
    assert "Closest recorded request: #0 POST https://api.openai.com/v1/chat/completions" in result.stderr
    assert "Traceback" not in result.stderr


# ------------------------------------------------------------------ issue 9: errors that say why


def test_run_a_chain_with_a_syntax_error_says_the_error(project: Path) -> None:
    (project / "chains" / "broken.py").write_text(BROKEN)
    result = run_qa(project)  # the others still run
    assert result.exit_code == 0, result.output
    result = invoke(project, "run", "broken", "--input", "{}")
    assert result.exit_code == 1
    assert "syntax error" in result.stderr and "broken.py:3" in result.stderr, result.stderr
    assert "no chain named" not in result.stderr


def test_project_that_is_a_file_says_so(tmp_path: Path) -> None:
    file = tmp_path / "pyproject.toml"
    file.write_text("")
    result = invoke(file, "list")
    assert result.exit_code == 2
    assert "is a file, not a directory" in result.stderr, result.stderr


def test_dotenv_in_the_project_root_is_read_and_the_real_environment_wins(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHAINKIT_RECORD_MODE", "x")
    monkeypatch.delenv("CHAINKIT_RECORD_MODE")  # restored (absent) after the test, whatever .env set
    (project / ".env").write_text("CHAINKIT_RECORD_MODE=bogus\n")
    result = run_qa(project)
    assert result.exit_code == 2 and "unknown record mode 'bogus'" in result.stderr, result.output
    monkeypatch.setenv("CHAINKIT_RECORD_MODE", "none")
    result = run_qa(project)
    assert result.exit_code == 0, result.output


def test_run_applies_the_projects_ignored_json_paths(project: Path) -> None:
    """`[tool.chainkit] ignore_json_paths` reaches `chainkit run`: a question that differs only
    in an ignored path replays; without the setting it is a miss."""
    changed = "What is MLflow, really?"
    assert run_qa(project, changed).exit_code == 1
    (project / "pyproject.toml").write_text('[tool.chainkit]\nignore_json_paths = ["messages"]\n')
    result = run_qa(project, changed)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip() == run_qa(project).stdout.strip()


def test_log_debug_shows_the_traceback_of_a_failed_chain(project: Path) -> None:
    (project / "chains" / "broken.py").write_text(
        "import mlflow\n\ndef helper():\n    raise RuntimeError('broken at import')\n\n"
        "helper()\nmlflow.models.set_model(lambda x: x)\n"
    )
    store = ["--tracking-uri", f"sqlite:///{project / 'mlflow.db'}"]
    quiet = invoke(project, "log", "broken", *store)
    assert quiet.exit_code == 1 and "broken at import" in quiet.stderr
    assert "Traceback" not in quiet.stderr
    debug = CliRunner().invoke(cli, ["--project", str(project), "--debug", "log", "broken", *store])
    assert debug.exit_code == 1
    assert "Traceback (most recent call last)" in debug.stderr and "in helper" in debug.stderr
    assert '"traceback"' not in invoke(project, "log", "broken", *store, "--json").stdout


def test_project_and_debug_are_accepted_after_the_command_too(project: Path, tmp_path: Path) -> None:
    """`chainkit list --project X` (as users type it) works like `chainkit --project X list`."""
    before = CliRunner().invoke(cli, ["--project", str(project), "list", "--json"])
    after = CliRunner().invoke(cli, ["list", "--json", "--project", str(project)])
    assert after.exit_code == 0, after.output
    assert json.loads(after.stdout) == json.loads(before.stdout)
    assert "qa" in {chain["name"] for chain in json.loads(after.stdout)["chains"]}
    show = CliRunner().invoke(cli, ["cassette", "show", str(project / "cassettes" / "qa.json"), "--debug"])
    assert show.exit_code == 0, show.output
    missing = CliRunner().invoke(cli, ["run", "qa", "--input", "{}", "--project", str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "nope" in missing.stderr


def test_log_register_prints_no_mlflow_registration_chatter(project: Path) -> None:
    store = f"sqlite:///{project / 'mlflow.db'}"
    result = invoke(project, "log", "qa", "--register", "--tracking-uri", store)
    assert result.exit_code == 0, result.output
    assert "Successfully registered model" not in result.stderr and "Created version" not in result.stderr
    assert re.search(r"^qa\s+logged\s+1\s", result.stdout, re.MULTILINE), result.stdout


def test_mlflow_chatter_only_with_verbose(tmp_path: Path) -> None:
    """The integer-schema hint (clv has integer inputs) and the exit note of a traced run are
    MLflow's, not the user's: gone from `eval` by default, back with --verbose (before or after
    the command)."""
    chatter = ("Inferred schema contains integer column", "Flushing the async trace logging queue")

    def start(name: str, *verbose: str, after: bool = False) -> subprocess.Popen[str]:
        # Each run in its own copy with its own fresh store (logged afresh: the hint again).
        root = tmp_path / name
        for folder in ("chains", "cassettes", "datasets"):
            shutil.copytree(ROOT / folder, root / folder, ignore=shutil.ignore_patterns("__pycache__"))
        command = [sys.executable, "-m", "toolkit", "--project", str(root), *([] if after else verbose)]
        evaluate = ["eval", "clv", "--data", str(root / "datasets" / "clv.jsonl"), "--trace"]
        return subprocess.Popen(
            [*command, *evaluate, *(verbose if after else [])],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )

    def stderr_of(process: subprocess.Popen[str]) -> str:
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr
        assert re.search(r"clv: run \w+ started", stderr), stderr
        return stderr

    # Real processes (the exit note is printed at exit), side by side: each spends much of its
    # time waiting on its own new sqlite store, not on the CPU.
    runs = [start("quiet"), start("before", "--verbose"), start("after", "--verbose", after=True)]
    try:
        quiet, *verbose = [stderr_of(process) for process in runs]
    finally:
        for process in runs:  # a failed run leaves none of the others behind
            if process.poll() is None:
                process.kill()
                process.wait()
    assert not [line for line in chatter if line in quiet], quiet
    for stderr in verbose:
        assert [line for line in chatter if line in stderr] == list(chatter), stderr
