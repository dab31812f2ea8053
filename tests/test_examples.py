"""The example chains run offline from their committed cassettes, as CI runs them."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import mlflow
import pytest
from click.testing import CliRunner
from conftest import AGENTS, RECORDED, ROOT, copy_project

from toolkit import use_cassette
from toolkit.cassette import Cassette
from toolkit.cli import cli
from toolkit.evaluation import EvalOptions, evaluate
from toolkit.packaging import LogResult, log_chains
from toolkit.project import Project
from toolkit.tool_calls import called_tools


def recorded_answer(name: str, index: int = 0) -> str:
    """The answer text in the committed cassette, to compare the chain's output with."""
    response = Cassette.load(ROOT / "cassettes" / f"{name}.json").interactions[index].response
    if response.events is not None:
        return "".join(
            choice["delta"].get("content") or ""
            for event in response.events
            if isinstance(event.data, dict)
            for choice in event.data.get("choices", [])
        )
    body = response.body["json"]
    if "choices" in body:
        return str(body["choices"][0]["message"]["content"])
    return "".join(part["text"] for item in body["output"] for part in item.get("content", []))


def test_qa(chain_runner: Callable[[str], Any]) -> None:
    answer = chain_runner("qa").invoke({"question": "What is MLflow?"})
    assert "MLflow" in answer
    assert answer == recorded_answer("qa")


def test_qa_second_question_and_batch(chain_runner: Callable[[str], Any]) -> None:
    chain = chain_runner("qa")
    answers = chain.batch([{"question": "What is a registered model?"}, {"question": "What is MLflow?"}])
    assert answers == [recorded_answer("qa", 1), recorded_answer("qa", 0)]


def test_stream_story_streams_the_recorded_chunks(chain_runner: Callable[[str], Any]) -> None:
    chunks = list(chain_runner("stream_story").stream({"topic": "a robot learning to paint"}))
    assert len(chunks) > 5
    assert "".join(chunks) == recorded_answer("stream_story")


def test_summarize_uses_the_responses_api(chain_runner: Callable[[str], Any]) -> None:
    cassette = json.loads((ROOT / "cassettes" / "summarize.json").read_text())
    assert cassette["interactions"][0]["request"]["url"] == "https://api.openai.com/v1/responses"
    text = cassette["interactions"][0]["request"]["json"]["input"][-1]["content"]
    assert chain_runner("summarize").invoke({"text": text}) == recorded_answer("summarize")


def test_chat_as_code_replays_a_real_legacy_completion(chain_runner: Callable[[str], Any]) -> None:
    """MLflow's chain_as_code example (/v1/completions): its cassette holds a real API answer
    (tests/data/openai-recorded/completions-0.json), and the chain returns that answer's text."""
    real = json.loads(json.loads((RECORDED / "completions-0.json").read_text())["response"]["body"])
    chat = {"messages": [{"role": "user", "content": "What is MLflow?"}]}
    assert chain_runner("chat_as_code").invoke(chat) == real["choices"][0]["text"]
    recorded = Cassette.load(ROOT / "cassettes" / "chat_as_code.json").interactions[0]
    assert recorded.request.url == "https://api.openai.com/v1/completions"
    assert recorded.response.body["json"]["id"] == real["id"]


# ------------------------------------------------------------------------------ the agents

TOKYO = {"messages": [{"role": "user", "content": "What's the weather in Tokyo?"}]}
PARIS = {"messages": [{"role": "user", "content": "What's the weather in Paris?"}]}
ASK = {"input": [{"role": "user", "content": "What is MLflow?"}]}
#: The real final answer the agent's cassette holds for Tokyo (tests/data/openai-recorded).
TOKYO_ANSWER = json.loads(json.loads((RECORDED / "chat-completion-0.json").read_text())["response"]["body"])[
    "choices"
][0]["message"]["content"]


def cli_json(project: Project, *args: str) -> Any:
    result = CliRunner().invoke(cli, ["--project", str(project.root), *args, "--json"])
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def responses_text(name: str) -> str:
    """The answer text of the first recorded Responses API answer in ``name``'s cassette."""
    return recorded_answer(name, 0)


@pytest.fixture(scope="module")
def agents(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Project, dict[str, LogResult]]]:
    """The two agents logged once (offline, mode none), registered with the alias candidate."""
    project = copy_project(tmp_path_factory.mktemp("agents"))
    (project.root / "datasets").mkdir()
    for name in AGENTS:
        shutil.copy(ROOT / "datasets" / f"{name}.jsonl", project.root / "datasets")
    store = f"sqlite:///{project.root / 'mlflow.db'}"
    results = {
        r.name: r for r in log_chains(project, AGENTS, register=True, alias="candidate", tracking_uri=store)
    }
    yield project, results
    mlflow.set_tracking_uri(None)


@pytest.fixture
def logged_agents(agents: tuple[Project, dict[str, LogResult]]) -> tuple[Project, dict[str, LogResult]]:
    mlflow.set_tracking_uri(f"sqlite:///{agents[0].root / 'mlflow.db'}")
    return agents


def test_the_agents_are_listed(tmp_path: Path) -> None:
    found = {chain["name"]: chain for chain in cli_json(copy_project(tmp_path), "list")["chains"]}
    assert {name: found[name]["flavor"] for name in AGENTS} == {
        "agent": "langchain",
        "responses_agent": "pyfunc",
    }
    assert all(found[name]["recorded"] for name in AGENTS)


def test_agent_runs_its_tool_loop_offline(tmp_path: Path) -> None:
    """A tool call (a real recorded one), the tool's result, then the final answer (real too)."""
    project = copy_project(tmp_path)
    messages = cli_json(project, "run", "agent", "--input", json.dumps(TOKYO))["output"]["messages"]
    assert [m["type"] for m in messages] == ["human", "ai", "tool", "ai"]
    assert [(c["name"], c["args"]) for c in messages[1]["tool_calls"]] == [
        ("get_weather", {"location": "Tokyo"})
    ]
    assert messages[2]["content"] == "18°C, light rain"
    assert messages[2]["tool_call_id"] == messages[1]["tool_calls"][0]["id"]
    assert messages[3]["content"] == TOKYO_ANSWER
    assert called_tools({"messages": messages}) == [
        {"name": "get_weather", "arguments": {"location": "Tokyo"}}
    ]


def test_agent_streams_its_steps(tmp_path: Path) -> None:
    """``run --stream`` on a LangGraph agent: one event per step (model, tools, model)."""
    result = cli_json(copy_project(tmp_path), "run", "agent", "--input", json.dumps(PARIS), "--stream")
    steps = [next(iter(chunk)) for chunk in result["chunks"]]
    assert steps == ["model", "tools", "model"]
    assert (
        result["chunks"][-1]["model"]["messages"][-1]["content"] == "It is 21°C and sunny in Paris right now."
    )


def test_responses_agent_runs_and_streams_offline(tmp_path: Path) -> None:
    project = copy_project(tmp_path)
    output = cli_json(project, "run", "responses_agent", "--input", json.dumps(ASK))["output"]
    text = output["output"][0]["content"][0]["text"]
    assert text == responses_text("responses_agent") and text.startswith("MLflow is")
    streamed = cli_json(project, "run", "responses_agent", "--input", json.dumps(ASK), "--stream")
    deltas = [c for c in streamed["chunks"] if c["type"] == "response.output_text.delta"]
    assert len(deltas) > 5 and streamed["output"] == text
    assert streamed["chunks"][-1]["type"] == "response.output_item.done"


def test_agents_log_and_register_offline(logged_agents: tuple[Project, dict[str, LogResult]]) -> None:
    _, results = logged_agents
    assert {name: (r.status, r.version, r.error) for name, r in results.items()} == {
        name: ("logged", 1, None) for name in AGENTS
    }
    agent = mlflow.models.get_model_info("models:/agent@candidate").signature
    assert [c["name"] for c in agent.inputs.to_dict()] == ["messages"]
    assert [c["name"] for c in agent.outputs.to_dict()] == ["messages"]
    # The ResponsesAgent keeps MLflow's own signature; its example is its first recorded input.
    info = mlflow.models.get_model_info("models:/responses_agent@candidate")
    assert info.metadata == {"task": "agent/v1/responses"}
    assert "input" in [c["name"] for c in info.signature.inputs.to_dict()]
    example = (
        Path(mlflow.artifacts.download_artifacts("models:/responses_agent@candidate")) / "input_example.json"
    )
    assert json.loads(example.read_text()) == ASK


def test_logged_agent_loads_and_predicts_offline(logged_agents: tuple[Project, dict[str, LogResult]]) -> None:
    project, _ = logged_agents
    with use_cassette(project.cassette_for("agent"), "none"):
        model = mlflow.pyfunc.load_model("models:/agent@candidate")
        [state] = model.predict(TOKYO)
        steps = list(model.predict_stream(PARIS))
    assert state["messages"][-1]["content"] == TOKYO_ANSWER
    assert called_tools(state) == [{"name": "get_weather", "arguments": {"location": "Tokyo"}}]
    assert [next(iter(step)) for step in steps] == ["model", "tools", "model"]


def test_logged_responses_agent_loads_and_predicts_offline(
    logged_agents: tuple[Project, dict[str, LogResult]],
) -> None:
    project, _ = logged_agents
    with use_cassette(project.cassette_for("responses_agent"), "none"):
        model = mlflow.pyfunc.load_model("models:/responses_agent@candidate")
        answer = model.predict(ASK)
        events = list(model.predict_stream(ASK))
    text = answer["output"][0]["content"][0]["text"]
    assert text == responses_text("responses_agent")
    assert "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta") == text


def test_agents_evaluate_with_the_tool_call_scorer(
    logged_agents: tuple[Project, dict[str, LogResult]],
) -> None:
    project, _ = logged_agents
    store = f"sqlite:///{project.root / 'mlflow.db'}"
    scored = {}
    for name in AGENTS:
        options = EvalOptions(
            data=project.root / "datasets" / f"{name}.jsonl",
            scorers=["toolkit.tool_calls:tool_calls"],
            tracking_uri=store,
        )
        scored[name] = evaluate(project, options, chain=name)
    agent, responses = scored["agent"], scored["responses_agent"]
    assert (agent.rows, agent.errors, agent.live_rows) == (2, 0, 0)
    assert agent.metrics["tool_calls/mean"] == 1.0 and agent.metrics["contains/mean"] == 1.0
    assert (responses.rows, responses.errors, responses.live_rows) == (2, 0, 0)
    assert responses.metrics["contains/mean"] == 1.0 and "tool_calls/mean" not in responses.metrics


def test_the_agents_tool_loops_replay_call_for_call_at_any_concurrency(
    logged_agents: tuple[Project, dict[str, LogResult]],
) -> None:
    """Rows repeated and interleaved, all in flight at once: each turn of each loop gets its own
    recorded answer (the tool result it sends names its own call id), none goes live."""
    project, results = logged_agents
    rows = (project.root / "datasets" / "agent.jsonl").read_text().splitlines() * 4
    data = project.root / "agent-x4.jsonl"
    data.write_text("\n".join(rows) + "\n")
    options = EvalOptions(
        data=data,
        scorers=["toolkit.tool_calls:tool_calls"],
        concurrency=8,
        tracking_uri=mlflow.get_tracking_uri(),
    )
    summary = evaluate(project, options, chain="agent")
    assert (summary.rows, summary.errors, summary.live_rows) == (8, 0, 0)
    assert summary.metrics["tool_calls/mean"] == 1.0 and summary.metrics["contains/mean"] == 1.0
    with use_cassette(project.cassette_for("agent"), "none"):
        states = mlflow.pyfunc.load_model(results["agent"].model_uri).predict([TOKYO, PARIS, TOKYO])
    assert [called_tools(state)[0]["arguments"]["location"] for state in states] == [
        "Tokyo",
        "Paris",
        "Tokyo",
    ]
