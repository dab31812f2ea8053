"""Logging the example chains to a real MLflow store, offline, and loading them back."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx
import mlflow
import pytest
from click.testing import CliRunner
from conftest import AGENTS, EXAMPLES, ROOT, copy_project
from mlflow import MlflowClient
from openai_server import OpenAIServer

from toolkit import use_cassette
from toolkit.cassette import Cassette, file_sha256
from toolkit.cli import cli
from toolkit.discovery import discover
from toolkit.packaging import LogResult, log_chains
from toolkit.project import Project
from toolkit.requirements import chain_dependencies


def store_of(project: Project) -> str:
    return f"sqlite:///{project.root / 'mlflow.db'}"


@pytest.fixture(scope="module")
def logged_once(tmp_path_factory: pytest.TempPathFactory) -> tuple[Project, dict[str, LogResult]]:
    project = copy_project(tmp_path_factory.mktemp("project"))
    results = log_chains(project, register=True, alias="candidate", tracking_uri=store_of(project))
    return project, {result.name: result for result in results}


@pytest.fixture
def logged(logged_once: tuple[Project, dict[str, LogResult]]) -> tuple[Project, dict[str, LogResult]]:
    mlflow.set_tracking_uri(store_of(logged_once[0]))
    return logged_once


def test_every_example_chain_logs_offline_and_registers(logged: tuple[Project, dict[str, LogResult]]) -> None:
    project, results = logged
    assert sorted(results) == sorted(EXAMPLES + AGENTS)
    assert [r.error for r in results.values() if not r.ok] == []
    assert {r.status for r in results.values()} == {"logged"}
    client = MlflowClient()
    for name, result in results.items():
        version = client.get_model_version_by_alias(name, "candidate")
        assert int(version.version) == result.version == 1
        assert version.source == f"models:/{result.model_id}"
    assert mlflow.get_tracking_uri() == f"sqlite:///{project.root / 'mlflow.db'}"
    assert (project.root / "mlruns").is_dir()  # artifacts stay in the project


def test_tags_trace_each_model_to_its_sources(logged: tuple[Project, dict[str, LogResult]]) -> None:
    project, results = logged
    model = mlflow.get_logged_model(results["qa"].model_id)
    assert model.tags["chainkit.chain"] == "qa"
    assert model.tags["chainkit.chain_sha256"] == file_sha256(project.chains_dir / "qa.py")
    assert model.tags["chainkit.cassette_sha256"] == file_sha256(project.cassette_for("qa"))
    assert model.tags["chainkit.version"] == metadata.version("chainkit")
    circle = mlflow.get_logged_model(results["circle_area"].model_id)
    assert circle.tags["chainkit.cassette_sha256"] == "none"  # needs no recording at all


EXPECTED_SIGNATURES: dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]]]] = {
    "qa": (
        [{"type": "string", "name": "question", "required": True}],
        [{"type": "string", "required": True}],
    ),
    "rag": (
        [{"type": "string", "name": "question", "required": True}],
        [{"type": "string", "required": True}],
    ),
    "stream_story": (
        [{"type": "string", "name": "topic", "required": True}],
        [{"type": "string", "required": True}],
    ),
    "summarize": (
        [{"type": "string", "name": "text", "required": True}],
        [{"type": "string", "required": True}],
    ),
    "circle_area": ([{"type": "double", "required": True}], [{"type": "double", "required": True}]),
    "triage": (
        [
            {"type": "string", "name": "subject", "required": True},
            {"type": "string", "name": "body", "required": True},
        ],
        [
            {"type": "string", "name": "queue", "required": True},
            {"type": "string", "name": "priority", "required": True},
        ],
    ),
    "clv": (
        [
            {"type": "long", "name": "tenure_months", "required": True},
            {"type": "long", "name": "orders_last_year", "required": True},
            {"type": "double", "name": "spend_last_year", "required": True},
            {"type": "long", "name": "support_tickets", "required": True},
        ],
        [
            {"type": "double", "name": n, "required": True}
            for n in ("retention", "purchase_frequency", "average_order_value", "clv")
        ],
    ),
    # One example, so the optional fields are seen filled in: they are inferred as required.
    "extract": (
        [{"type": "string", "name": "text", "required": True}],
        [{"type": "string", "name": n, "required": True} for n in ("name", "email", "company")],
    ),
    "chat_as_code": (
        [
            {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "content": {"type": "string", "required": True},
                        "role": {"type": "string", "required": True},
                    },
                },
                "name": "messages",
                "required": True,
            }
        ],
        [{"type": "string", "required": True}],
    ),
}


@pytest.mark.parametrize("name", EXAMPLES)
def test_signature_is_the_one_a_person_would_write(
    logged: tuple[Project, dict[str, LogResult]], name: str
) -> None:
    _, results = logged
    signature = mlflow.models.get_model_info(results[name].model_uri).signature
    inputs, outputs = EXPECTED_SIGNATURES[name]
    assert signature.inputs.to_dict() == inputs
    assert signature.outputs.to_dict() == outputs


@pytest.mark.parametrize("name", EXAMPLES)
def test_requirements_are_exactly_the_computed_ones(
    logged: tuple[Project, dict[str, LogResult]], name: str
) -> None:
    project, results = logged
    local = Path(mlflow.artifacts.download_artifacts(results[name].model_uri)) / "requirements.txt"
    written = [line for line in local.read_text().splitlines() if line and not line.startswith("#")]
    expected = chain_dependencies(
        project.chains_dir / f"{name}.py",
        project.chains_dir,
        Cassette.load(project.cassette_for(name)).recorded_with,
    )
    assert written == list(expected.requirements)
    assert not {"aiohttp", "cloudpickle", "pygments"} & {line.split("==")[0].lower() for line in written}


def test_qa_pins_the_libraries_that_shape_its_requests(logged: tuple[Project, dict[str, LogResult]]) -> None:
    _, results = logged
    local = Path(mlflow.artifacts.download_artifacts(results["qa"].model_uri)) / "requirements.txt"
    names = {line.split("==")[0] for line in local.read_text().split()}
    assert names == {"langchain-core", "langchain-openai", "mlflow", "openai"}


EXPECTED_OUTPUTS = {
    "circle_area": [3.141592653589793, 12.566370614359172, 28.274333882308138],
    "triage": [{"queue": "billing", "priority": "high"}],
    "clv": [{"retention": 0.64, "purchase_frequency": 6.6, "average_order_value": 70.0, "clv": 606.03}],
    "extract": [{"name": "Ada Lovelace", "email": "ada@example.com", "company": "Analytical Engines Ltd"}],
}


@pytest.mark.parametrize("name", EXAMPLES)
def test_logged_model_loads_and_predicts_offline(
    logged: tuple[Project, dict[str, LogResult]], name: str
) -> None:
    """Through mlflow.pyfunc.load_model, the way users consume the model; the helper code
    (rag's corpus) and the model config (clv.yaml) come from the logged artifacts."""
    project, _ = logged
    spec = discover(project.chains_dir).get(name)
    with use_cassette(project.cassette_for(name), "none"):
        model = mlflow.pyfunc.load_model(f"models:/{name}@candidate")
        prediction = model.predict(spec.input_example)
    if name in EXPECTED_OUTPUTS:
        assert prediction == EXPECTED_OUTPUTS[name]
    else:  # LLM chains: the answer recorded in the cassette
        assert isinstance(prediction, list) and len(prediction) == 1 and len(prediction[0]) > 20
        assert prediction[0].split()[0] in project.cassette_for(name).read_text()


def test_logged_code_is_a_copy_with_helpers_and_config(logged: tuple[Project, dict[str, LogResult]]) -> None:
    _, results = logged
    rag = Path(mlflow.artifacts.download_artifacts(results["rag"].model_uri))
    assert (rag / "code" / "_shared" / "corpus.md").is_file()
    clv = Path(mlflow.artifacts.download_artifacts(results["clv"].model_uri))
    assert "horizon_years" in (clv / "MLmodel").read_text()  # clv.yaml, logged as its model_config


def test_unchanged_chain_is_reused_and_changed_one_is_a_new_version(
    logged: tuple[Project, dict[str, LogResult]],
) -> None:
    project, results = logged
    again = {r.name: r for r in log_chains(project, ["qa", "triage"], register=True)}
    assert again["qa"].status == "reused" and again["qa"].model_id == results["qa"].model_id
    assert again["qa"].version == 1
    path = project.chains_dir / "triage.py"
    path.write_text(path.read_text().replace('"general"', '"other"'))
    changed = log_chains(project, ["triage"], register=True, alias="candidate")[0]
    assert changed.status == "logged" and changed.model_id != results["triage"].model_id
    assert changed.version == 2
    assert int(MlflowClient().get_model_version_by_alias("triage", "candidate").version) == 2
    forced = log_chains(project, ["qa"], force=True)[0]
    assert forced.status == "logged" and forced.model_id != results["qa"].model_id


def test_logging_spawns_no_python_child(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project = copy_project(tmp_path)
    spawned: list[Any] = []
    real_popen = subprocess.Popen

    class SpyPopen(real_popen):  # type: ignore[misc, valid-type]
        def __init__(self, args: Any, *rest: Any, **kwargs: Any) -> None:
            spawned.append(args)
            super().__init__(args, *rest, **kwargs)

    monkeypatch.setattr(subprocess, "Popen", SpyPopen)
    result = log_chains(project, ["qa"])[0]
    assert result.ok, result.error
    assert [args for args in spawned if "git" not in str(args)] == []


def test_one_broken_chain_fails_alone(tmp_path: Path) -> None:
    project = copy_project(tmp_path)
    for name in (
        "chat_as_code",
        "circle_area",
        "clv",
        "extract",
        "rag",
        "stream_story",
        "summarize",
        "triage",
        *AGENTS,
    ):
        (project.chains_dir / f"{name}.py").unlink()
    chains = project.chains_dir
    (chains / "syntax.py").write_text("import mlflow\nchain = (\nmlflow.models.set_model(chain)\n")
    (chains / "notinstalled.py").write_text(
        "import mlflow\nimport nosuchpackage\nmlflow.models.set_model(None)\n"
    )
    (chains / "notrunnable.py").write_text("import mlflow\nmlflow.models.set_model(len)\n")
    (chains / "unrecorded.py").write_text(
        (chains / "qa.py").read_text().replace("What is MLflow?", "Who are you?")
    )
    results = {r.name: r for r in log_chains(project)}
    assert results["qa"].ok
    errors = {name: r.error or "" for name, r in results.items() if not r.ok}
    assert sorted(errors) == ["notinstalled", "notrunnable", "syntax", "unrecorded"]
    assert "syntax.py:2" in errors["syntax"]
    assert "notinstalled.py:2: imports 'nosuchpackage'" in errors["notinstalled"]
    assert "not a LangChain Runnable or an mlflow.pyfunc.PythonModel" in errors["notrunnable"]
    assert "cassette" in errors["unrecorded"] and "does not exist" in errors["unrecorded"]
    # The stale-model guard: nothing was logged under the names of the failed chains.
    logged_names = {m.tags.get("chainkit.chain") for m in mlflow.search_logged_models(output_format="list")}
    assert logged_names == {"qa"}


def test_cli_log_json_and_exit_code(tmp_path: Path) -> None:
    project = copy_project(tmp_path)
    (project.chains_dir / "broken.py").write_text("import mlflow\nmlflow.models.set_model(len)\n")
    result = CliRunner().invoke(
        cli,
        [
            "--project",
            str(project.root),
            "log",
            "qa",
            "triage",
            "broken",
            "--register",
            "--alias",
            "candidate",
            "--json",
        ],
    )
    assert result.exit_code == 1, result.output
    import json

    document = json.loads(result.stdout)
    by_name = {m["name"]: m for m in document["models"]}
    assert by_name["qa"]["status"] == "logged" and by_name["qa"]["version"] == 1
    assert by_name["qa"]["model_uri"].startswith("models:/m-")
    assert by_name["broken"]["status"] == "failed" and "broken" in by_name["broken"]["error"]
    usage = CliRunner().invoke(cli, ["--project", str(project.root), "log", "--alias", "x"])
    assert usage.exit_code == 2 and "--alias needs --register" in usage.stderr


def test_registered_names_come_from_valid_chain_names(tmp_path: Path) -> None:
    project = copy_project(tmp_path)
    shutil.copy(project.chains_dir / "triage.py", project.chains_dir / "bad name.py")
    results = {r.name: r for r in log_chains(project, ["triage", "bad name"], register=True)}
    assert results["triage"].ok
    assert not results["bad name"].ok and "rename" in (results["bad name"].error or "")


# ------------------------------------------------------------------ a real tracking server


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            f"sqlite:///{tmp_path / 'server.db'}",
            "--artifacts-destination",
            str(tmp_path / "artifacts"),
            "--workers",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        else:
            pytest.fail("mlflow server did not start within 90 s")
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=3)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def test_logs_to_a_real_tracking_server_over_http(tmp_path: Path, mlflow_server: str) -> None:
    project = copy_project(tmp_path)
    results = log_chains(
        project, ["qa", "circle_area"], register=True, alias="candidate", tracking_uri=mlflow_server
    )
    assert [r.error for r in results] == [None, None]
    client = MlflowClient(tracking_uri=mlflow_server)
    assert int(client.get_model_version_by_alias("qa", "candidate").version) == 1
    assert {m.tags["chainkit.chain"] for m in mlflow.search_logged_models(output_format="list")} == {
        "qa",
        "circle_area",
    }
    with use_cassette(project.cassette_for("qa"), "none"):  # the server stays reachable in mode none
        model = mlflow.pyfunc.load_model("models:/qa@candidate")
        assert "MLflow" in model.predict({"question": "What is MLflow?"})[0]


def test_two_processes_on_a_fresh_project_both_create_the_store(tmp_path: Path) -> None:
    """MLflow creates and migrates a sqlite store when it first opens it: two `chainkit log` at
    once on a fresh project used to break the migration (`duplicate column name: step`). The race
    is in opening the store, so a project without chains shows it at a fraction of the cost."""
    for attempt in range(2):
        root = tmp_path / f"p{attempt}"
        (root / "chains").mkdir(parents=True)
        command = [sys.executable, "-m", "toolkit", "--project", str(root), "log", "--json"]
        both = [
            subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            for _ in range(2)
        ]
        for process in both:
            _, err = process.communicate(timeout=180)
            assert process.returncode == 0, f"attempt {attempt}: {err.decode()}"
        experiments = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}").search_experiments()
        assert [e.name for e in experiments if e.name == "chainkit"] == ["chainkit"]
        assert (root / "mlflow.db.lock").is_file()  # the lock lives beside the store


def test_a_chain_that_calls_sys_exit_fails_alone(tmp_path: Path) -> None:
    """sys.exit() in a chain's code, at import or while MLflow logs it, fails that chain with its
    reason; the chains after it still log (it used to end `chainkit log` silently with exit 3)."""
    import json

    project = Project.at(tmp_path)
    project.chains_dir.mkdir()
    shutil.copy(ROOT / "chains" / "qa.py", project.chains_dir)
    shutil.copytree(ROOT / "cassettes", project.cassettes_dir)
    (project.chains_dir / "exits.py").write_text(
        "import sys\nimport mlflow\nsys.exit(3)\nmlflow.models.set_model(None)\n"
    )
    (project.chains_dir / "exits_late.py").write_text(
        "import sys\nimport mlflow\nfrom langchain_core.runnables import RunnableLambda\n\n"
        'INPUT_EXAMPLE = {"question": "exit"}\n\n'
        "mlflow.models.set_model(RunnableLambda(lambda inputs: sys.exit(4)))\n"
    )
    Cassette(project.cassette_for("exits")).save()
    Cassette(project.cassette_for("exits_late")).save()
    result = CliRunner().invoke(cli, ["--project", str(project.root), "log", "--json"])
    assert result.exit_code == 1, result.output
    by_name = {m["name"]: m for m in json.loads(result.stdout)["models"]}
    assert by_name["qa"]["status"] == "logged"
    assert by_name["exits"]["status"] == "failed"
    assert "exits.py: loading it called sys.exit(3)" in by_name["exits"]["error"]
    assert by_name["exits_late"]["error"] == (
        "chain exits_late: its code called sys.exit(4); a chain must raise an exception, not exit "
        "the process: fix the chain's code"
    )


def test_logging_that_records_tags_the_cassette_it_leaves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`log --record-mode new_episodes` records the input example's call; the model is tagged
    with the cassette as recorded, so the next unchanged `log` says "reused", not a new version."""
    project = copy_project(tmp_path)
    project.cassette_for("qa").unlink()
    uri = store_of(project)
    with OpenAIServer() as server:
        monkeypatch.setenv("CHAINKIT_RECORD_VIA", server.base_url.removesuffix("/v1"))
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
        first = log_chains(project, ["qa"], register=True, record_mode="new_episodes", tracking_uri=uri)[0]
        assert first.status == "logged", first.error
        assert server.requests, "logging the input example should have called the server"
    model = mlflow.get_logged_model(first.model_id)
    assert model.tags["chainkit.cassette_sha256"] == file_sha256(project.cassette_for("qa"))
    again = log_chains(project, ["qa"], register=True, tracking_uri=uri)[0]
    assert (again.status, again.model_id, again.version) == ("reused", first.model_id, 1)


def test_a_changed_cassette_is_a_new_version(tmp_path: Path) -> None:
    """The cassette is part of what is logged (its answers shape the model's example and are
    carried in it): re-recording it, with the chain unchanged, makes `log --register` log a new
    version instead of saying "reused"."""
    project = copy_project(tmp_path)
    uri = store_of(project)
    first = log_chains(project, ["qa"], register=True, tracking_uri=uri)[0]
    assert (first.status, first.version) == ("logged", 1), first.error
    assert log_chains(project, ["qa"], register=True, tracking_uri=uri)[0].status == "reused"

    path = project.cassette_for("qa")
    document = json.loads(path.read_text())
    for item in document["interactions"]:
        item["response"]["json"]["choices"][0]["message"]["content"] += " (re-recorded)"
    path.write_text(json.dumps(document, indent=1))
    changed = log_chains(project, ["qa"], register=True, tracking_uri=uri)[0]
    assert (changed.status, changed.version) == ("logged", 2), changed.error
    assert changed.model_id != first.model_id
    model = mlflow.get_logged_model(changed.model_id)
    assert model.tags["chainkit.cassette_sha256"] == file_sha256(path)


# ------------------------------------------------------------------------ agents (issue 10)


def test_agent_signature_is_no_worse_than_mlflows_own(logged: tuple[Project, dict[str, LogResult]]) -> None:
    """The LangGraph agent (its state of LangChain messages as output) logs with a full messages
    signature: the same input schema ``mlflow.langchain.log_model`` infers on the same file and
    example, and the messages as output (chainkit's signature step once failed on the messages)."""
    project, results = logged
    ours = mlflow.models.get_model_info(results["agent"].model_uri).signature
    spec = discover(project.chains_dir).get("agent")
    with use_cassette(project.cassette_for("agent"), "none"):
        theirs = mlflow.langchain.log_model(
            lc_model=str(spec.path),
            name="plain",
            input_example=spec.input_example,
            pip_requirements=["mlflow"],
        ).signature
    assert ours.inputs.to_dict() == theirs.inputs.to_dict()
    [messages] = ours.outputs.to_dict()
    assert messages["name"] == "messages" and messages["type"] == "array"
    assert {"content", "type", "tool_calls", "tool_call_id"} <= set(messages["items"]["properties"])


def _keep_interactions(path: Path, keep: Any) -> None:
    document = json.loads(path.read_text())
    document["interactions"] = [i for i in document["interactions"] if keep(i["request"]["json"])]
    path.write_text(json.dumps(document, indent=1))


def test_an_agent_without_input_example_logs_on_its_recorded_input(tmp_path: Path) -> None:
    """MLflow calls a ResponsesAgent that declares no example on its own default input at log
    time. chainkit logs it with its first recorded (unstreamed) input as the example instead, so
    a cassette recorded with `chainkit run` is enough; the input is taken from the cassette."""
    project = copy_project(tmp_path)
    path = project.cassette_for("responses_agent")
    assert "Hello!" not in path.read_text()
    _keep_interactions(path, lambda body: "load a logged model" in json.dumps(body) or body.get("stream"))
    result = log_chains(project, ["responses_agent"], tracking_uri=store_of(project))[0]
    assert result.status == "logged", result.error
    example = Path(mlflow.artifacts.download_artifacts(result.model_uri)) / "input_example.json"
    assert json.loads(example.read_text()) == {
        "input": [{"role": "user", "content": "How do I load a logged model?"}]
    }


def test_an_agent_whose_log_time_calls_are_not_recorded_says_how_to_record_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With only a streamed recording, nothing answers MLflow's log-time `predict` on its default
    input: the miss says why and names the command that records it; that command works."""
    project = copy_project(tmp_path)
    path = project.cassette_for("responses_agent")
    _keep_interactions(path, lambda body: body.get("stream"))
    uri = store_of(project)
    failed = log_chains(project, ["responses_agent"], tracking_uri=uri)[0]
    assert failed.status == "failed"
    assert "Hello!" in (failed.error or "")  # the miss itself: MLflow's default input
    assert "chain responses_agent declares no INPUT_EXAMPLE, so MLflow calls it at log time on " in (
        failed.error or ""
    )
    assert "`chainkit log responses_agent --record-mode new_episodes`" in (failed.error or "")
    with OpenAIServer() as server:
        monkeypatch.setenv("CHAINKIT_RECORD_VIA", server.base_url.removesuffix("/v1"))
        recorded = log_chains(project, ["responses_agent"], record_mode="new_episodes", tracking_uri=uri)[0]
    assert recorded.status == "logged", recorded.error
    # MLflow called it twice on its default input: recorded once, replayed the second time.
    assert [i.request.body["json"]["input"][0]["content"] for i in Cassette.load(path).interactions] == [
        "What is MLflow?",
        "Hello!",
    ]
    monkeypatch.delenv("CHAINKIT_RECORD_VIA")
    again = log_chains(project, ["responses_agent"], force=True, tracking_uri=uri)[0]
    assert again.status == "logged", again.error


CHAT_AGENT = '''
"""Answers through chat completions: an MLflow ChatAgent."""
import uuid

import mlflow
from mlflow.pyfunc import ChatAgent
from mlflow.types.agent import ChatAgentMessage, ChatAgentResponse
from openai import OpenAI


class HelpAgent(ChatAgent):
    def predict(self, messages, context=None, custom_inputs=None):
        client = OpenAI(base_url="https://api.openai.com/v1")
        turns = [{"role": m.role, "content": m.content} for m in messages]
        answer = client.chat.completions.create(model="gpt-4o-mini", messages=turns)
        text = answer.choices[0].message.content
        message = ChatAgentMessage(role="assistant", content=text, id=str(uuid.uuid4()))
        return ChatAgentResponse(messages=[message])


mlflow.models.set_model(HelpAgent())
'''


def test_a_chat_agent_logs_with_mlflows_signature_and_its_recorded_input(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ChatAgent: MLflow fixes its signature (passing one is an error), and without an
    INPUT_EXAMPLE its first recorded input is the example, as for a ResponsesAgent."""
    from toolkit.runner import run_chain

    project = Project.at(tmp_path)
    project.chains_dir.mkdir()
    (project.chains_dir / "help_agent.py").write_text(CHAT_AGENT)
    asked = {"messages": [{"role": "user", "content": "What is MLflow?"}]}
    with OpenAIServer() as server:
        monkeypatch.setenv("CHAINKIT_RECORD_VIA", server.base_url.removesuffix("/v1"))
        run_chain(project, "help_agent", asked, record_mode="once")
    monkeypatch.delenv("CHAINKIT_RECORD_VIA")
    uri = store_of(project)
    result = log_chains(project, ["help_agent"], tracking_uri=uri)[0]
    assert result.status == "logged", result.error
    example = Path(mlflow.artifacts.download_artifacts(result.model_uri)) / "input_example.json"
    assert json.loads(example.read_text()) == asked
    (project.chains_dir / "help_agent.py").write_text(
        CHAT_AGENT.replace("class HelpAgent", f"INPUT_EXAMPLE = {asked!r}\n\n\nclass HelpAgent")
    )
    declared = log_chains(project, ["help_agent"], tracking_uri=uri)[0]
    assert declared.status == "logged", declared.error
    signature = mlflow.models.get_model_info(declared.model_uri).signature
    assert [c.get("name") for c in signature.inputs.to_dict()][:2] == ["messages", "context"]


def test_new_episodes_replays_what_it_recorded_earlier_in_the_session(tmp_path: Path) -> None:
    """On an existing cassette, an identical later call in the same `new_episodes` session
    replays the first one's recording (MLflow calls an agent twice at log time): one request
    sent, one recorded. (A missing cassette still records every call: tests/test_replay.py.)"""
    import openai

    path = tmp_path / "cassette.json"
    shutil.copy(ROOT / "cassettes" / "qa.json", path)
    before = len(Cassette.load(path).interactions)
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello!"}]}
    with (
        OpenAIServer() as server,
        use_cassette(path, "new_episodes", record_via=server.base_url.removesuffix("/v1")) as session,
    ):
        client = openai.OpenAI(base_url="https://api.openai.com/v1", api_key="sk-test", max_retries=0)
        answers = [client.chat.completions.create(**body).choices[0].message.content for _ in range(3)]
        assert len(server.requests) == 1
    assert answers == [answers[0]] * 3 and session.replayed == 2
    assert len(Cassette.load(path).interactions) == before + 1
