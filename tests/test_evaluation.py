"""Batch evaluation end to end: real chains, a real MLflow store, a fake OpenAI server on
loopback injecting latency, 429 storms and 500s, and SIGKILL in the middle of a job."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import mlflow
import pytest
from click.testing import CliRunner
from conftest import ROOT
from mlflow import MlflowClient
from openai_server import Fault, OpenAIServer

from toolkit.cassette import Cassette, file_sha256
from toolkit.cli import cli
from toolkit.evaluation import EvalOptions, evaluate
from toolkit.journal import Journal
from toolkit.project import Project

LIVE_CHAIN = '''"""Answers with a live model: no client retries, so the evaluation runner's own are tested."""

import mlflow
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_openai import ChatOpenAI

INPUT_EXAMPLE = {"question": "warm up"}

prompt = ChatPromptTemplate.from_messages([("user", "{question}")])
llm = ChatOpenAI(model="gpt-4o-mini", base_url="https://api.openai.com/v1", max_retries=0)
chain = prompt | llm | StrOutputParser()

mlflow.models.set_model(chain)
'''


@pytest.fixture
def project(tmp_path: Path) -> Project:
    shutil.copytree(ROOT / "chains", tmp_path / "chains", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "cassettes", tmp_path / "cassettes")
    shutil.copytree(ROOT / "datasets", tmp_path / "datasets")
    (tmp_path / "chains" / "live.py").write_text(LIVE_CHAIN)
    return Project.at(tmp_path)


def store(project: Project) -> str:
    return f"sqlite:///{project.root / 'mlflow.db'}"


def write_dataset(path: Path, questions: list[str], expected: str | None = None) -> Path:
    with path.open("w") as out:
        for question in questions:
            row: dict[str, Any] = {"inputs": {"question": question}}
            if expected:
                row["expectations"] = {"expected_contains": expected}
            out.write(json.dumps(row) + "\n")
    return path


def journal_rows(project: Project, run_id: str) -> list[dict[str, Any]]:
    with Journal(project.root / ".chainkit" / "runs" / f"{run_id}.sqlite") as journal:
        return list(journal.results())


# ------------------------------------------------------------------------ replayed, offline


def test_replayed_evaluation_lands_where_mlflow_users_look(project: Project) -> None:
    summary = evaluate(
        project,
        EvalOptions(
            data=project.datasets_dir / "qa.jsonl", tracking_uri=store(project), aggregations=["mean", "min"]
        ),
        chain="qa",
    )
    assert (summary.rows, summary.errors, summary.replayed_rows, summary.live_rows) == (2, 0, 2, 0)
    client = MlflowClient(tracking_uri=store(project))
    run = client.get_run(summary.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["contains/mean"] == 1.0 and run.data.metrics["contains/min"] == 1.0
    assert run.data.metrics["regex/mean"] == 1.0 and run.data.metrics["rows"] == 2
    assert run.data.metrics["token_usage/mean"] > 0 and "latency/mean" in run.data.metrics
    assert run.data.tags["chainkit.cassette_sha256"] == file_sha256(project.cassette_for("qa"))
    assert run.data.tags["chainkit.model_id"] == summary.model_id
    # The metrics are attached to the evaluated LoggedModel too.
    model = mlflow.get_logged_model(summary.model_id)
    assert {m.key for m in model.metrics} >= {"contains/mean", "regex/mean"}
    table = json.loads(Path(client.download_artifacts(summary.run_id, "eval_results_table.json")).read_text())
    frame = dict(zip(table["columns"], zip(*table["data"], strict=True), strict=True))
    assert list(frame["index"]) == [0, 1]
    assert list(frame["replayed"]) == [True, True]
    assert list(frame["score/contains"]) == [True, True]
    assert "MLflow" in frame["output"][0]
    every_row = Path(client.download_artifacts(summary.run_id, "eval_results.jsonl")).read_text().splitlines()
    assert [json.loads(line)["index"] for line in every_row] == [0, 1]


def test_failed_expectations_score_false_not_error(project: Project) -> None:
    data = write_dataset(project.root / "d.jsonl", ["What is MLflow?"], expected="kubernetes")
    summary = evaluate(project, EvalOptions(data=data, tracking_uri=store(project)), chain="qa")
    assert summary.errors == 0 and summary.metrics["contains/mean"] == 0.0


def test_replay_miss_is_a_row_error_and_the_rest_go_on(project: Project) -> None:
    data = write_dataset(
        project.root / "d.jsonl", ["What is MLflow?", "Not recorded?", "What is a registered model?"]
    )
    summary = evaluate(project, EvalOptions(data=data, tracking_uri=store(project)), chain="qa")
    rows = journal_rows(project, summary.run_id)
    assert summary.errors == 1 and summary.rows == 3
    assert rows[1]["error"].startswith("ReplayMissError: no recorded response") and rows[0]["error"] is None
    result = CliRunner().invoke(
        cli,
        ["--project", str(project.root), "eval", "qa", "--data", str(data), "--tracking-uri", store(project)],
    )
    assert result.exit_code == 1


def test_model_uri_and_custom_scorer(
    project: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "myscorers.py").write_text(
        "from mlflow.genai.scorers import scorer\n\n"
        "@scorer\ndef short(outputs):\n    return len(outputs) < 500\n\n"
        "def words(outputs, expectations):\n    return len(outputs.split())\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    runner = CliRunner()
    logged = runner.invoke(
        cli,
        [
            "--project",
            str(project.root),
            "log",
            "qa",
            "--register",
            "--alias",
            "candidate",
            "--tracking-uri",
            store(project),
        ],
    )
    assert logged.exit_code == 0, logged.output
    result = runner.invoke(
        cli,
        [
            "--project",
            str(project.root),
            "eval",
            "--model-uri",
            "models:/qa@candidate",
            "--data",
            str(project.datasets_dir / "qa.jsonl"),
            "--scorer",
            "myscorers:short",
            "--scorer",
            "myscorers:words",
            "--aggregate",
            "mean,max",
            "--tracking-uri",
            store(project),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    run = json.loads(result.stdout)["runs"][0]
    assert run["chain"] == "qa" and run["replayed_rows"] == 2
    assert run["metrics"]["short/mean"] == 1.0 and run["metrics"]["words/max"] > 10


def test_an_unrecorded_llm_judge_is_the_usual_miss_offline_not_skipped(project: Project) -> None:
    """The judge is not refused up front: its first call is a replay miss naming its cassette."""
    data = project.root / "d.jsonl"
    row = {"inputs": {"question": "What is MLflow?"}, "expectations": {"expected_response": "A platform."}}
    data.write_text(json.dumps(row) + "\n")
    result = eval_cli(project, "qa", "--data", str(data), "--scorer", "Correctness")
    assert result.exit_code == 1
    assert f"cassette {project.cassettes_dir / 'qa.judges.json'} does not exist" in result.stderr
    assert "POST https://api.openai.com/v1/chat/completions" in result.stderr


def test_all_evaluates_every_chain_with_a_dataset(project: Project) -> None:
    result = CliRunner().invoke(
        cli, ["--project", str(project.root), "eval", "--all", "--tracking-uri", store(project), "--json"]
    )
    assert result.exit_code == 0, result.output
    runs = {run["chain"]: run for run in json.loads(result.stdout)["runs"]}
    assert sorted(runs) == sorted(p.stem for p in (ROOT / "datasets").glob("*.jsonl"))
    assert all(run["errors"] == 0 for run in runs.values())
    assert runs["triage"]["metrics"]["exact_match/mean"] == 1.0
    assert runs["extract"]["metrics"]["json_schema/mean"] == 1.0
    assert "rows/s" not in result.stderr  # no progress bar off a terminal


def test_resume_refuses_a_changed_dataset(project: Project) -> None:
    data = write_dataset(project.root / "d.jsonl", ["What is MLflow?"])
    summary = evaluate(project, EvalOptions(data=data, tracking_uri=store(project)), chain="qa")
    write_dataset(data, ["What is MLflow?", "What is a registered model?"])
    with pytest.raises(Exception, match="changed since run"):
        evaluate(
            project, EvalOptions(data=data, tracking_uri=store(project), resume=summary.run_id), chain="qa"
        )


# ------------------------------------------------------------------------------------ live


def test_live_rows_are_recorded_and_accounted(project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    questions = [f"question {n}" for n in range(12)]
    data = write_dataset(project.root / "d.jsonl", questions, expected="Answer to")
    with OpenAIServer() as server:
        monkeypatch.setenv("CHAINKIT_RECORD_VIA", server.base_url.removesuffix("/v1"))
        summary = evaluate(
            project,
            EvalOptions(data=data, record_mode="new_episodes", concurrency=4, tracking_uri=store(project)),
            chain="live",
        )
    assert (summary.live_rows, summary.replayed_rows, summary.errors) == (12, 0, 0)
    assert summary.tokens > 0 and summary.cost_usd > 0
    rows = journal_rows(project, summary.run_id)
    assert [row["index"] for row in rows] == list(range(12))
    assert all(row["live_calls"] == 1 and row["replayed"] is False for row in rows)
    assert summary.cassette_sha256 == file_sha256(project.cassette_for("live"))
    assert len(Cassette.load(project.cassette_for("live"))) >= 12
    replayed = evaluate(project, EvalOptions(data=data, tracking_uri=store(project)), chain="live")
    assert (replayed.replayed_rows, replayed.live_rows, replayed.errors) == (12, 0, 0)


def test_results_in_row_order_and_a_slow_row_stalls_nothing(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    arrivals: dict[str, float] = {}

    def responder(endpoint: str, body: dict[str, Any]) -> str:
        question = body["messages"][-1]["content"]
        arrivals[question] = time.monotonic()
        if question == "slow":
            time.sleep(1.5)
        return f"Answer to: {question}"

    questions = ["slow"] + [f"fast {n}" for n in range(30)]
    data = write_dataset(project.root / "d.jsonl", questions)
    with OpenAIServer(responder=responder) as server:
        monkeypatch.setenv("CHAINKIT_RECORD_VIA", server.base_url.removesuffix("/v1"))
        started = time.monotonic()
        summary = evaluate(
            project,
            EvalOptions(data=data, record_mode="all", concurrency=4, tracking_uri=store(project)),
            chain="live",
        )
    assert summary.errors == 0
    # Every fast row reached the server while the slow one was still being answered.
    assert max(arrivals[q] for q in questions[1:]) < arrivals["slow"] + 1.5
    rows = journal_rows(project, summary.run_id)
    assert [row["output"] for row in rows] == [f"Answer to: {q}" for q in questions]
    assert rows[0]["latency"] >= 1.5 and time.monotonic() - started < 30


def test_429_storm_backs_off_and_recovers(project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    in_flight, peaks, lock = [0], [], threading.Lock()

    def responder(endpoint: str, body: dict[str, Any]) -> str:
        with lock:
            in_flight[0] += 1
            peaks.append(in_flight[0])
        time.sleep(0.02)
        with lock:
            in_flight[0] -= 1
        return "ok"

    data = write_dataset(project.root / "d.jsonl", [f"q{n}" for n in range(60)])
    storm = [Fault(429, retry_after=0.05)] * 12
    with OpenAIServer(responder=responder) as server:
        monkeypatch.setenv("CHAINKIT_RECORD_VIA", server.base_url.removesuffix("/v1"))
        # Logging the chain first records its input example live; the storm starts after that.
        evaluate(
            project,
            EvalOptions(
                data=write_dataset(project.root / "warm.jsonl", ["warm up"]),
                record_mode="new_episodes",
                tracking_uri=store(project),
            ),
            chain="live",
        )
        server.add_faults(storm)
        summary = evaluate(
            project,
            EvalOptions(data=data, record_mode="new_episodes", concurrency=8, tracking_uri=store(project)),
            chain="live",
        )
    assert summary.errors == 0 and summary.rows == 60
    history = summary.limit_history
    assert history[0] == 8 and min(history) < 8  # backed off under the storm ...
    assert history[-1] == 8  # ... and recovered
    rows = journal_rows(project, summary.run_id)
    assert sum(row["attempts"] > 1 for row in rows) >= 1


def test_a_row_that_keeps_failing_is_recorded_and_the_job_exits_1(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    def responder(endpoint: str, body: dict[str, Any]) -> str:
        if body["messages"][-1]["content"] == "broken":
            raise RuntimeError("upstream exploded")
        return "fine"

    data = write_dataset(project.root / "d.jsonl", ["a", "broken", "b"])
    with OpenAIServer(responder=responder) as server:
        monkeypatch.setenv("CHAINKIT_RECORD_VIA", server.base_url.removesuffix("/v1"))
        result = CliRunner().invoke(
            cli,
            [
                "--project",
                str(project.root),
                "eval",
                "live",
                "--data",
                str(data),
                "--record-mode",
                "all",
                "--tracking-uri",
                store(project),
                "--json",
            ],
        )
    assert result.exit_code == 1
    run = json.loads(result.stdout)["runs"][0]
    rows = journal_rows(project, run["run_id"])
    assert [row["error"] is None for row in rows] == [True, False, True]
    assert "Error code: 500" in rows[1]["error"] and rows[1]["attempts"] == 6  # retried, then recorded


# ----------------------------------------------------------------------- kill and resume


def _spawn_eval(project: Project, data: Path, server: OpenAIServer, *extra: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "CHAINKIT_RECORD_VIA": server.base_url.removesuffix("/v1")}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "toolkit",
            "--project",
            str(project.root),
            "eval",
            "live",
            "--data",
            str(data),
            "--record-mode",
            "new_episodes",
            "--concurrency",
            "4",
            "--tracking-uri",
            store(project),
            "--json",
            *extra,
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _finished_rows(journal: Path) -> int:
    try:
        with sqlite3.connect(journal) as db:
            return int(db.execute("SELECT COUNT(*) FROM rows").fetchone()[0])
    except sqlite3.Error:
        return 0


def _kill_after_rows(process: subprocess.Popen[bytes], runs: Path, rows: int, wait: float = 120) -> Path:
    """SIGKILL the evaluation once its journal holds ``rows`` finished rows (waiting at most
    ``wait`` seconds, less if it ends first); its journal."""
    deadline = time.monotonic() + wait
    journals: list[Path] = []
    while time.monotonic() < deadline and process.poll() is None:
        journals = list(runs.glob("*.sqlite")) if runs.exists() else []
        if journals and _finished_rows(journals[0]) >= rows:
            break
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert journals, "the evaluation never started its journal"
    return journals[0]


@pytest.mark.parametrize("kill_after", [1, 13])
def test_sigkill_then_resume_completes_every_row_exactly_once(project: Project, kill_after: int) -> None:
    questions = [f"question {n}" for n in range(30)]
    data = write_dataset(project.root / "d.jsonl", questions)
    runs = project.root / ".chainkit" / "runs"
    with OpenAIServer(latency=0.05) as server:
        journal = _kill_after_rows(_spawn_eval(project, data, server), runs, kill_after)
        run_id = journal.stem
        finished = {row["inputs"]["question"] for row in Journal(journal).results()}
        assert kill_after <= len(finished) < len(questions)
        sent_before = len(server.requests)
        resumed = _spawn_eval(project, data, server, "--resume", run_id)
        out, err = resumed.communicate(timeout=120)
        assert resumed.returncode == 0, err.decode()
        summary = json.loads(out)["runs"][0]
    assert summary["run_id"] == run_id and summary["rows"] == 30 and summary["skipped_rows"] == len(finished)
    rows = journal_rows(project, run_id)
    assert [row["index"] for row in rows] == list(range(30))  # every row exactly once
    asked_again = [r.body["messages"][-1]["content"] for r in server.requests[sent_before:]]
    assert not finished & set(asked_again)  # no API call repeated for a finished row
    assert MlflowClient(tracking_uri=store(project)).get_run(run_id).info.status == "FINISHED"


def test_trace_per_row_with_scores_attached(project: Project) -> None:
    summary = evaluate(
        project,
        EvalOptions(data=project.datasets_dir / "qa.jsonl", tracking_uri=store(project), trace=True),
        chain="qa",
    )
    rows = journal_rows(project, summary.run_id)
    for row in rows:
        trace = mlflow.get_trace(row["trace_id"])
        scores = {a.name: a.value for a in trace.info.assessments if a.feedback is not None}
        assert scores == row["scores"] and scores["contains"] is True
        # The row's expectations too, as MLflow's evaluation logs them (columns in the UI).
        expectations = {a.name: a.value for a in trace.info.assessments if a.expectation is not None}
        assert expectations == row["expectations"] and expectations
        assert trace.info.request_metadata["mlflow.sourceRun"] == summary.run_id
        assert len(trace.data.spans) > 1  # the chain's own spans nest under the row's
    untraced = evaluate(
        project, EvalOptions(data=project.datasets_dir / "qa.jsonl", tracking_uri=store(project)), chain="qa"
    )
    assert all(row["trace_id"] is None for row in journal_rows(project, untraced.run_id))


def test_experiment_run_name_and_dataset_input_land_where_the_mlflow_ui_shows_them(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = project.datasets_dir / "qa.jsonl"
    named = json.loads(
        eval_cli(project, "qa", "--experiment", "nightly", "--run-name", "before-release", "--json").stdout
    )["runs"][0]
    client = MlflowClient(tracking_uri=store(project))
    run = client.get_run(named["run_id"])
    assert run.info.run_name == "before-release"
    assert client.get_experiment(run.info.experiment_id).name == "nightly"
    [dataset_input] = run.inputs.dataset_inputs
    assert dataset_input.dataset.name == "qa.jsonl"
    assert dataset_input.dataset.digest == file_sha256(data)[:16]
    assert json.loads(dataset_input.dataset.source)["uri"] == str(data.resolve())
    assert [tag.value for tag in dataset_input.tags] == ["evaluation"]

    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "from-the-environment")
    default = json.loads(eval_cli(project, "qa", "--json").stdout)["runs"][0]
    run = client.get_run(default["run_id"])
    assert client.get_experiment(run.info.experiment_id).name == "from-the-environment"
    assert re.fullmatch(r"qa-qa-\d{8}-\d{6}", run.info.run_name)  # not "eval-qa" for every run


# ------------------------------------------- durable recordings, one retry policy, same answers


def test_two_sigkills_then_resume_and_the_whole_dataset_replays_offline(project: Project) -> None:
    """Every live answer is durable once read: killed twice while recording (mode all), resumed
    each time, the dataset then replays offline with zero errors, and no row finished before a
    kill was asked again."""
    questions = [f"question {n}" for n in range(30)]
    data = write_dataset(project.root / "d.jsonl", questions)
    runs = project.root / ".chainkit" / "runs"
    finished_before_kills: set[str] = set()
    with OpenAIServer(latency=0.05) as server:
        run_id = None
        for kill_after in (4, 14):
            extra = ["--record-mode", "all"] + (["--resume", run_id] if run_id else [])
            journal = _kill_after_rows(_spawn_eval(project, data, server, *extra), runs, kill_after)
            run_id = journal.stem
            finished_before_kills = {row["inputs"]["question"] for row in Journal(journal).results()}
            assert kill_after <= len(finished_before_kills) < len(questions)
        sent_before = len(server.requests)
        resumed = _spawn_eval(project, data, server, "--record-mode", "all", "--resume", str(run_id))
        _out, err = resumed.communicate(timeout=120)
        assert resumed.returncode == 0, err.decode()
        asked_again = [r.body["messages"][-1]["content"] for r in server.requests[sent_before:]]
        assert not finished_before_kills & set(asked_again)
        sent_live = len(server.requests)
        offline = evaluate(project, EvalOptions(data=data, tracking_uri=store(project)), chain="live")
        assert len(server.requests) == sent_live  # offline: nothing reached the server
    assert (offline.rows, offline.errors, offline.replayed_rows) == (30, 0, 30)


RETRYING_CHAIN = LIVE_CHAIN.replace(", max_retries=0", "")  # the client's default: 2 retries


def test_client_and_runner_retries_do_not_stack_and_errors_are_not_recorded(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    (project.chains_dir / "retrying.py").write_text(RETRYING_CHAIN)
    data = write_dataset(project.root / "d.jsonl", [f"q{n}" for n in range(4)])
    with OpenAIServer() as server:
        monkeypatch.setenv("CHAINKIT_RECORD_VIA", server.base_url.removesuffix("/v1"))
        warm = write_dataset(project.root / "warm.jsonl", ["warm up"])
        evaluate(
            project, EvalOptions(data=warm, record_mode="all", tracking_uri=store(project)), chain="retrying"
        )
        server.add_faults([Fault(429, retry_after=0.01)] * 1000)  # a server that always says 429
        sent_before = len(server.requests)
        summary = evaluate(
            project,
            EvalOptions(data=data, record_mode="new_episodes", concurrency=2, tracking_uri=store(project)),
            chain="retrying",
        )
        sent = len(server.requests) - sent_before
    assert summary.errors == 4
    assert sent == 4 * 6  # chainkit's 6 attempts a row, each one request: not 6 x 3
    statuses = [i.response.status for i in Cassette.load(project.cassette_for("retrying"))]
    assert statuses and all(status == 200 for status in statuses)  # no 429 became a recording


def test_identical_rows_replay_their_own_answers_at_any_concurrency(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    answered = [0]
    lock = threading.Lock()

    def responder(endpoint: str, body: dict[str, Any]) -> str:
        with lock:  # the same question, a different answer each time (a sampling model)
            answered[0] += 1
            return f"answer {answered[0]}"

    data = write_dataset(project.root / "d.jsonl", ["same question"] * 6)
    with OpenAIServer(responder=responder) as server:
        monkeypatch.setenv("CHAINKIT_RECORD_VIA", server.base_url.removesuffix("/v1"))
        recorded = evaluate(
            project,
            EvalOptions(data=data, record_mode="all", concurrency=1, tracking_uri=store(project)),
            chain="live",
        )
    expected = [row["output"] for row in journal_rows(project, recorded.run_id)]
    assert len(set(expected)) == 6
    for _ in range(4):
        replayed = evaluate(
            project, EvalOptions(data=data, concurrency=8, tracking_uri=store(project)), chain="live"
        )
        assert [row["output"] for row in journal_rows(project, replayed.run_id)] == expected


# ------------------------------------------------------------- no secret through a side door

CANARIES = {
    "OPENAI_API_KEY": "sk-canary-0123456789abcdefghijklmnopqrstuv",
    "MY_SERVICE_TOKEN": "tok-canary-service-0123456789",
    "DATABASE_URL": "postgres://user:dbpasscanary0123456789@db.internal/app",  # secret by its value
    "SLACK_WEBHOOK_URL": "https://hooks.slack.com/services/T0/B0/webhookcanary0123456789",
}
#: Each value, and the parts of the URLs that no encoding of them would change.
FORBIDDEN = [*CANARIES.values(), "dbpasscanary0123456789", "webhookcanary0123456789"]
MARKERS = [f"[REDACTED:{name}]" for name in CANARIES]
CANARY_SCORERS = """
def echo(outputs):
    return outputs  # a string score: the table's score/echo column, an assessment on the trace


def strict(outputs):
    if "fail" in outputs:
        raise ValueError("refusing " + outputs)  # the row's error message holds the secrets
    return True
"""


def leaked_files(root: Path, skip: tuple[Path, ...] = ()) -> list[str]:
    """Every file under ``root`` (sqlite databases, their -wal and -shm files, artifacts,
    cassettes, recording logs) whose bytes hold a canary."""
    return [
        f"{path.relative_to(root)}: {[v for v in FORBIDDEN if v.encode() in data]}"
        for path in sorted(root.rglob("*"))
        if path.is_file() and path not in skip
        for data in [path.read_bytes()]
        if any(value.encode() in data for value in FORBIDDEN)
    ]


def test_no_secret_reaches_the_journal_mlflow_or_traces_and_resume_writes_none(
    project: Project, monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The value of every secret variable (by name, and a URL with a password) echoed by the
    API in the answers, a prompt and an error message: the cassette refuses the recording (eval
    exits 1, naming the variables), and the journal, the MLflow store (run, artifacts, traces,
    assessments) hold ``[REDACTED:NAME]`` where it was, before and after ``--resume``."""
    from mlflow.tracing.config import get_config

    for name, value in CANARIES.items():
        monkeypatch.setenv(name, value)
    outside = tmp_path_factory.mktemp("canary-data")  # the user's own files, not chainkit's
    (outside / "canary_scorers.py").write_text(CANARY_SCORERS)
    monkeypatch.syspath_prepend(str(outside))
    questions = ["leak 0", f"my token is {CANARIES['MY_SERVICE_TOKEN']}", "leak 2 fail", "plain question"]
    data = write_dataset(outside / "d.jsonl", questions)

    def responder(endpoint: str, body: dict[str, Any]) -> str:
        question = body["messages"][-1]["content"]
        if question.startswith("leak"):
            return f"{question}: {' '.join(CANARIES.values())} password dbpasscanary0123456789"
        return f"Answer to: {question}"

    processors = list(get_config().span_processors)
    args = ["--project", str(project.root), "eval", "live", "--data", str(data), "--record-mode", "all"]
    args += ["--scorer", "canary_scorers:echo", "--scorer", "canary_scorers:strict", "--trace"]
    args += ["--concurrency", "2", "--tracking-uri", store(project)]
    with OpenAIServer(responder=responder) as server:
        monkeypatch.setenv("CHAINKIT_RECORD_VIA", server.base_url.removesuffix("/v1"))
        refused = CliRunner().invoke(cli, args)
        # The rows ran and are journaled; the cassette refused them: the job fails, clearly.
        assert refused.exit_code == 1, refused.output
        assert "refused to write" in refused.stderr and "MY_SERVICE_TOKEN" in refused.stderr
        assert not [value for value in FORBIDDEN if value in refused.output]
        assert get_config().span_processors == processors  # the redaction processor is removed
        mlflow.flush_trace_async_logging()
        assert leaked_files(project.root) == []
        (journal,) = (project.root / ".chainkit" / "runs").glob("*.sqlite")
        rows = journal_rows(project, journal.stem)
        assert len(rows) == 4 and all(marker in rows[0]["output"] for marker in MARKERS)
        assert rows[0]["scores"]["echo"] == rows[0]["output"]
        assert rows[1]["inputs"]["question"] == "my token is [REDACTED:MY_SERVICE_TOKEN]"
        # The scorer's error (only its score is lost), as scrubbed as the rest.
        assert rows[2]["error"] is None and "echo" in rows[2]["scores"]
        assert rows[2]["scorer_errors"]["strict"].startswith(
            "ValueError: refusing leak 2 fail: [REDACTED:OPENAI_API_KEY]"
        )

        # A journal written before the scrub holds the raw value: --resume must not copy it.
        with sqlite3.connect(journal) as db:
            raw = {**rows[3], "output": f"raw {CANARIES['MY_SERVICE_TOKEN']}"}
            db.execute("UPDATE rows SET result = ? WHERE idx = 3", (json.dumps(raw),))
        db.close()
        resumed = CliRunner().invoke(cli, [*args, "--resume", journal.stem, "--json"])
        assert resumed.exit_code == 1, resumed.output  # the scorer that raised on a row
        summary = json.loads(resumed.stdout)["runs"][0]
        assert (summary["run_id"], summary["rows"], summary["errors"]) == (journal.stem, 4, 0)
        assert summary["scorer_errors"] == 1
        assert not [value for value in FORBIDDEN if value in resumed.output]
    assert leaked_files(project.root, skip=(journal,)) == []
    client = MlflowClient(tracking_uri=store(project))
    assert client.get_run(journal.stem).info.status == "FINISHED"
    every_row = Path(client.download_artifacts(journal.stem, "eval_results.jsonl")).read_text()
    assert all(marker in every_row for marker in MARKERS) and "raw [REDACTED:MY_SERVICE_TOKEN]" in every_row
    table = json.loads(Path(client.download_artifacts(journal.stem, "eval_results_table.json")).read_text())
    frame = dict(zip(table["columns"], zip(*table["data"], strict=True), strict=True))
    assert all(marker in frame["output"][0] and marker in frame["score/echo"][0] for marker in MARKERS)
    trace = client.get_trace(rows[0]["trace_id"])
    spans = json.dumps([span.to_dict() for span in trace.data.spans])
    assert all(marker in spans for marker in MARKERS) and len(trace.data.spans) > 1
    assessments = {a.name: a.value for a in trace.info.assessments}
    assert assessments["echo"] == rows[0]["output"]


def test_tags_and_params_eval_sets_are_scrubbed(
    project: Project, monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The dataset's path and name become a tag and a param of the run: scrubbed like the rest."""
    token = "tok-canary-service-0123456789"
    monkeypatch.setenv("MY_SERVICE_TOKEN", token)
    folder = tmp_path_factory.mktemp("data") / token
    folder.mkdir()
    data = folder / f"{token}.jsonl"
    shutil.copy(project.datasets_dir / "qa.jsonl", data)
    summary = evaluate(project, EvalOptions(data=data, tracking_uri=store(project)), chain="qa")
    assert summary.errors == 0
    run = MlflowClient(tracking_uri=store(project)).get_run(summary.run_id)
    marker = "[REDACTED:MY_SERVICE_TOKEN]"
    assert run.data.tags["chainkit.dataset"].endswith(f"{marker}/{marker}.jsonl")
    assert run.data.params["dataset"] == f"{marker}.jsonl"
    assert leaked_files(project.root) == []


# ------------------------------------------------------- resume: the same run, nothing else


def eval_cli(project: Project, *args: str) -> Any:
    return CliRunner().invoke(
        cli, ["--project", str(project.root), "eval", *args, "--tracking-uri", store(project)]
    )


def test_resume_refuses_another_chain_model_or_options(
    project: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`eval rag --resume <a qa run>` used to exit 0, log a rag model and attach qa's metrics."""
    data = str(project.datasets_dir / "qa.jsonl")
    qa = evaluate(project, EvalOptions(data=Path(data), tracking_uri=store(project)), chain="qa")
    (tmp_path / "resume_scorers.py").write_text("def short(outputs):\n    return len(outputs) < 500\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    other = write_dataset(project.root / "other.jsonl", ["What is MLflow?"])
    model = f"models:/{qa.model_id}"
    refused = {
        "it evaluated chain qa, not chain rag": ["rag", "--data", data],
        f"it evaluated chain qa, not {model}": ["--model-uri", model, "--data", data],
        f"{other} changed since run {qa.run_id} started (its sha256 differs)": ["qa", "--data", str(other)],
        "it ran in record mode none, not once": ["qa", "--data", data, "--record-mode", "once"],
        'its extra scorers were [], not ["resume_scorers:short"]': [
            *("qa", "--data", data),
            *("--scorer", "resume_scorers:short"),
        ],
        'its aggregations were ["mean"], not ["max", "mean"]': [
            *("qa", "--data", data),
            *("--aggregate", "mean,max"),
        ],
    }
    for reason, args in refused.items():
        result = eval_cli(project, *args, "--resume", qa.run_id)
        assert result.exit_code == 2, (reason, result.output)
        assert f"error: --resume {qa.run_id} does not match that run: {reason}; " in result.stderr
    chain = project.chains_dir / "qa.py"
    chain.write_text(chain.read_text() + "\n# edited after the run started\n")
    result = eval_cli(project, "qa", "--data", data, "--resume", qa.run_id)
    assert result.exit_code == 2 and "the chain's code changed since run" in result.stderr
    # Nothing was logged or scored by the refused resumes.
    logged = mlflow.search_logged_models(output_format="list")
    assert [model.model_id for model in logged] == [qa.model_id]
    run = MlflowClient(tracking_uri=store(project)).get_run(qa.run_id)
    assert run.info.status == "FINISHED" and run.data.metrics["rows"] == 2


def test_resume_keeps_the_run_model_and_may_change_concurrency(project: Project) -> None:
    data = project.datasets_dir / "qa.jsonl"
    first = evaluate(project, EvalOptions(data=data, tracking_uri=store(project), concurrency=1), chain="qa")
    # Between a kill and a resume in a record mode the cassette changes, and with it the chain's
    # fingerprint: the resume must not log a new model and give it the run's metrics.
    cassette = project.cassette_for("qa")
    document = json.loads(cassette.read_text())
    extra = json.loads(json.dumps(document["interactions"][0]))
    extra["request"]["json"]["messages"][-1]["content"] = "Recorded after the kill?"
    document["interactions"].append(extra)
    cassette.write_text(json.dumps(document))
    again = EvalOptions(data=data, tracking_uri=store(project), concurrency=4, resume=first.run_id)
    resumed = evaluate(project, again, chain="qa")
    assert (resumed.run_id, resumed.model_id, resumed.skipped_rows) == (first.run_id, first.model_id, 2)
    assert [model.model_id for model in mlflow.search_logged_models(output_format="list")] == [first.model_id]
    assert {m.key for m in mlflow.get_logged_model(first.model_id).metrics} >= {"contains/mean", "rows"}


# ------------------------------------------------------------- a malformed dataset, up front


def test_a_malformed_line_fails_before_any_row_runs(project: Project) -> None:
    """Line 80 of 100 broken: 68 rows used to run before the error, and the FAILED run could not
    be resumed after the fix (the file's hash had changed). Now: no row, no run."""
    lines = [json.dumps({"inputs": {"question": "What is MLflow?"}}) for _ in range(100)]
    lines[79] = '{"inputs": {"question": "What is MLflow?"'
    data = project.root / "broken.jsonl"
    data.write_text("\n".join(lines) + "\n")
    result = eval_cli(project, "qa", "--data", str(data))
    assert result.exit_code == 1
    assert result.stderr.startswith(f"error: {data}:80: not valid JSON")
    assert not (project.root / ".chainkit" / "runs").exists()  # no row ran
    if (project.root / "mlflow.db").exists():
        client = MlflowClient(tracking_uri=store(project))
        assert client.search_runs([e.experiment_id for e in client.search_experiments()]) == []


# ---------------------------------------------------------- a chain's sys.exit() in a row


EXITS = '''"""Calls sys.exit(4) on one question, at call time."""

import sys

import mlflow
from langchain_core.runnables import RunnableLambda

INPUT_EXAMPLE = {"question": "fine"}


def answer(inputs):
    if inputs["question"] == "exit":
        sys.exit(4)
    return "fine"


mlflow.models.set_model(RunnableLambda(answer))
'''


def test_a_chain_that_calls_sys_exit_fails_its_row_or_its_job_with_the_reason(project: Project) -> None:
    (project.chains_dir / "exits.py").write_text(EXITS)
    Cassette(project.cassette_for("exits")).save()
    data = write_dataset(project.root / "d.jsonl", ["fine", "exit", "fine too"])
    result = eval_cli(project, "exits", "--data", str(data), "--json")
    assert result.exit_code == 1, result.output
    run = json.loads(result.stdout)["runs"][0]
    rows = journal_rows(project, run["run_id"])
    assert [row["error"] is None for row in rows] == [True, False, True]
    assert rows[1]["error"].startswith("ChainExitError: chain exits called sys.exit(4)")
    (project.chains_dir / "exits_at_import.py").write_text(
        "import sys\nimport mlflow\nsys.exit(3)\nmlflow.models.set_model(None)\n"
    )
    Cassette(project.cassette_for("exits_at_import")).save()
    result = eval_cli(project, "exits_at_import", "--data", str(data))
    assert result.exit_code == 1
    assert "exits_at_import.py: loading it called sys.exit(3)" in result.stderr


# ----------------------------------------------------------------- issue 9: say what happened


def test_a_raising_scorer_marks_only_its_score_and_the_cli_prints_row_errors(
    project: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "badscorers.py").write_text("def boom(outputs):\n    raise ValueError('scorer broke')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    data = write_dataset(project.root / "d.jsonl", ["What is MLflow?", "Not recorded?"], expected="mlflow")
    result = eval_cli(project, "qa", "--data", str(data), "--scorer", "badscorers:boom")
    assert result.exit_code == 1
    assert "1 error, 1 scorer error" in result.stdout
    assert "contains/mean     1" in result.stdout  # the built-in kept its score on row 0
    assert "error: qa: row 0, scorer boom: ValueError: scorer broke" in result.stderr
    assert "error: qa: row 1: ReplayMissError: no recorded response" in result.stderr
    assert "Traceback" not in result.stderr
    debug = CliRunner().invoke(
        cli,
        ["--project", str(project.root), "--debug", "eval", "qa", "--data", str(data), "--scorer",
         "badscorers:boom", "--tracking-uri", store(project), "--json"],
    )
    assert "Traceback" in debug.stderr and "raise ValueError('scorer broke')" in debug.stderr
    run = json.loads(debug.stdout)["runs"][0]
    assert [(f["index"], f["scorer"]) for f in run["failures"]] == [(0, "boom"), (1, None)]


def test_an_empty_dataset_is_an_error_naming_the_file(project: Project) -> None:
    data = project.root / "empty.jsonl"
    data.write_text("\n")
    result = eval_cli(project, "qa", "--data", str(data))
    assert result.exit_code == 1
    assert f"dataset {data} has no rows" in result.stderr


@pytest.mark.parametrize("value", ["0", "-3"])
def test_concurrency_below_one_is_bad_usage(project: Project, value: str) -> None:
    result = eval_cli(project, "qa", "--concurrency", value)
    assert result.exit_code == 2 and "--concurrency" in result.stderr


def test_metric_table_numbers_are_fixed_and_one_row_is_singular(project: Project) -> None:
    data = write_dataset(project.root / "d.jsonl", ["What is MLflow?"], expected="mlflow")
    result = eval_cli(project, "qa", "--data", str(data), "--prices", str(_prices(project)))
    assert result.exit_code == 0, result.output
    assert ": 1 row, 0 errors," in result.stdout
    assert "e-0" not in result.stdout and "e+0" not in result.stdout
    assert re.search(r"^rows\s+1$", result.stdout, re.MULTILINE)
    assert re.search(r"^cost_usd\s+0\.0\d+$", result.stdout, re.MULTILINE), result.stdout


def _prices(project: Project) -> Path:
    path = project.root / "prices.json"
    path.write_text(json.dumps({"gpt-4o-mini": [0.15, 0.6]}))
    return path


def test_cassette_option_is_honoured_for_a_chain(project: Project) -> None:
    """`eval CHAIN --cassette X` replays X (and logs the chain with it), not cassettes/CHAIN.json."""
    elsewhere = project.root / "recordings" / "qa-v2.json"
    elsewhere.parent.mkdir()
    project.cassette_for("qa").rename(elsewhere)
    result = eval_cli(project, "qa", "--cassette", str(elsewhere), "--json")
    assert result.exit_code == 0, result.output
    run = json.loads(result.stdout)["runs"][0]
    assert run["replayed_rows"] == 2 and run["errors"] == 0
    assert not project.cassette_for("qa").exists()


def test_a_scorer_module_in_the_project_root_is_found(project: Project) -> None:
    (project.root / "projscorers.py").write_text("def short(outputs):\n    return len(outputs) < 500\n")
    result = eval_cli(project, "qa", "--scorer", "projscorers:short", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["runs"][0]["metrics"]["short/mean"] == 1.0


def test_ctrl_c_ends_with_one_line_naming_the_run_and_resume_needs_no_id(project: Project) -> None:
    """SIGINT mid-run: the run id was printed when the run started, the interruption is one
    line with the command that finishes it (no tracebacks), and `--resume` alone picks it up."""
    data = write_dataset(project.root / "d.jsonl", [f"question {n}" for n in range(120)])
    runs = project.root / ".chainkit" / "runs"
    with OpenAIServer(latency=0.2) as server:
        process = _spawn_eval(project, data, server)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            journals = list(runs.glob("*.sqlite")) if runs.exists() else []
            if journals and _finished_rows(journals[0]) >= 4:
                break
            time.sleep(0.01)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
        assert process.returncode == 130, stderr.decode()
        run_id = journals[0].stem
        lines = stderr.decode().strip().splitlines()
        assert "Traceback" not in stderr.decode() and "Event loop is closed" not in stderr.decode()
        assert lines[0] == f"live: run {run_id} started"
        assert [line for line in lines[1:] if line] == [
            f"interrupted: every finished row is saved; finish it with: chainkit eval live --resume {run_id}"
        ]
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("CHAINKIT_RECORD_VIA", server.base_url.removesuffix("/v1"))
            resumed = eval_cli(
                project, "live", "--data", str(data), "--record-mode", "new_episodes", "--resume", "--json"
            )
    assert resumed.exit_code == 0, resumed.output
    assert f"live: run {run_id} resumed" in resumed.stderr
    summary = json.loads(resumed.stdout)["runs"][0]
    assert (summary["run_id"], summary["rows"], summary["errors"]) == (run_id, 120, 0)
    again = eval_cli(project, "live", "--data", str(data), "--resume")
    assert again.exit_code == 2 and "no unfinished run of chain live" in again.stderr
