"""MLflow's LLM judges in `chainkit eval`: their calls (sent by MLflow with requests) recorded
once into their own cassette, replayed offline with the same verdicts row by row at any
concurrency, and accounted apart from the chain's. The judge model is the fake OpenAI server
on loopback, answering in the judge's structured format."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT
from mlflow import MlflowClient
from openai_server import OpenAIServer, default_responder
from test_evaluation import LIVE_CHAIN, journal_rows, store

from toolkit.cassette import Cassette, file_sha256
from toolkit.evaluation import EvalOptions, evaluate, judges_cassette
from toolkit.project import Project


class JudgeResponder:
    """The chain's calls get the default answer; a judge's (structured output) a verdict that
    alternates for identical requests, so a row replayed with another row's verdict shows."""

    def __init__(self) -> None:
        self.seen: Counter[str] = Counter()
        self.lock = threading.Lock()

    def __call__(self, endpoint: str, body: dict[str, Any]) -> str:
        if "response_format" not in body:
            return default_responder(endpoint, body)
        key = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
        with self.lock:
            self.seen[key] += 1
            turn = self.seen[key]
        verdict = "yes" if (int(key, 16) + turn) % 2 else "no"
        return json.dumps({"rationale": f"turn {turn}", "result": verdict})


@pytest.fixture
def project(tmp_path: Path) -> Project:
    shutil.copytree(ROOT / "chains", tmp_path / "chains", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "chains" / "live.py").write_text(LIVE_CHAIN)
    (tmp_path / "cassettes").mkdir()
    return Project.at(tmp_path)


def write_rows(path: Path, questions: list[str]) -> Path:
    with path.open("w") as out:
        for question in questions:
            row = {
                "inputs": {"question": question},
                "expectations": {"expected_response": f"Answer to: {question}"},
            }
            out.write(json.dumps(row) + "\n")
    return path


def run(project: Project, data: Path, **options: Any) -> Any:
    return evaluate(
        project,
        EvalOptions(data=data, tracking_uri=store(project), scorers=["Correctness"], **options),
        chain="live",
    )


def test_a_judge_records_once_then_scores_offline_the_same_row_by_row(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    questions = ["same", "same", "same", *[f"question {n}" for n in range(9)]]
    data = write_rows(project.root / "d.jsonl", questions)
    with OpenAIServer(responder=JudgeResponder()) as server:
        monkeypatch.setenv("CHAINKIT_RECORD_VIA", server.base_url.removesuffix("/v1"))
        recorded = run(project, data, record_mode="once", concurrency=4)
        judge_calls = [r for r in server.requests if "response_format" in (r.body or {})]
        assert len(judge_calls) == len(questions)
        assert all(r.headers["user-agent"].startswith("python-requests") for r in judge_calls)
    monkeypatch.delenv("CHAINKIT_RECORD_VIA")
    assert recorded.errors == 0 and recorded.scorer_errors == 0
    judges = judges_cassette(project.cassette_for("live"))
    assert len(Cassette.load(judges)) == len(questions)  # the judge's calls, in their own cassette
    chain_calls = [i.request.body["json"] for i in Cassette.load(project.cassette_for("live"))]
    assert len(chain_calls) >= len(questions)  # and the input example, recorded while logging
    assert not any("response_format" in body for body in chain_calls)  # the chain's alone
    verdicts = {row["index"]: row["scores"]["correctness"] for row in journal_rows(project, recorded.run_id)}
    assert set(verdicts.values()) == {"yes", "no"}
    assert len({verdicts[0], verdicts[1], verdicts[2]}) == 2  # identical rows, alternating verdicts

    # Offline (the server is gone), twice as concurrent: each row gets its own recorded verdict.
    cassettes = (file_sha256(judges), file_sha256(project.cassette_for("live")))
    replayed = run(project, data, concurrency=8)
    rows = journal_rows(project, replayed.run_id)
    assert {row["index"]: row["scores"]["correctness"] for row in rows} == verdicts
    assert replayed.metrics["judge/correctness/live_calls"] == 0
    assert replayed.metrics["judge/correctness/calls"] == len(questions)
    assert (file_sha256(judges), file_sha256(project.cassette_for("live"))) == cassettes

    # Accounting: the judge's tokens and cost apart from the chain's.
    row = rows[3]
    assert row["judges"]["correctness"]["model"] == "openai:/gpt-4.1-mini"
    assert row["judges"]["correctness"]["prompt_tokens"] > row["prompt_tokens"]  # the judge's long prompt
    assert replayed.metrics["judge/correctness/tokens"] == recorded.metrics["judge/correctness/tokens"] > 0
    assert replayed.metrics["judge/correctness/cost_usd"] > 0
    assert replayed.tokens == sum(r["token_usage"] for r in rows)  # the chain's only
    assert replayed.metrics["correctness/mean"] == recorded.metrics["correctness/mean"]
    client = MlflowClient(tracking_uri=store(project))
    assert client.get_run(replayed.run_id).data.metrics["judge/correctness/calls"] == len(questions)


def test_a_judge_call_not_recorded_is_the_usual_miss_offline(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = write_rows(project.root / "d.jsonl", ["one"])
    with OpenAIServer(responder=JudgeResponder()) as server:
        monkeypatch.setenv("CHAINKIT_RECORD_VIA", server.base_url.removesuffix("/v1"))
        evaluate(
            project, EvalOptions(data=data, tracking_uri=store(project), record_mode="once"), chain="live"
        )
    monkeypatch.delenv("CHAINKIT_RECORD_VIA")
    # The chain is recorded, its judge never was: not refused up front, but at its first call.
    from toolkit.errors import ReplayMissError

    with pytest.raises(ReplayMissError) as raised:
        run(project, data)
    message = str(raised.value)
    assert f"cassette {judges_cassette(project.cassette_for('live'))} does not exist" in message
    assert "POST https://api.openai.com/v1/chat/completions" in message
    assert "--record-mode once" in message


def test_no_judge_no_judge_cassette(project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    data = write_rows(project.root / "d.jsonl", ["one"])
    with OpenAIServer() as server:
        monkeypatch.setenv("CHAINKIT_RECORD_VIA", server.base_url.removesuffix("/v1"))
        evaluate(
            project, EvalOptions(data=data, tracking_uri=store(project), record_mode="once"), chain="live"
        )
    assert project.cassette_for("live").exists()
    assert not judges_cassette(project.cassette_for("live")).exists()
    assert sorted(os.listdir(project.cassettes_dir)) == [".gitignore", "live.json"]


def test_a_judged_score_on_a_trace_names_the_judge_model_as_its_source(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow

    data = write_rows(project.root / "d.jsonl", ["one", "two"])
    with OpenAIServer(responder=JudgeResponder()) as server:
        monkeypatch.setenv("CHAINKIT_RECORD_VIA", server.base_url.removesuffix("/v1"))
        run(project, data, record_mode="once")
    monkeypatch.delenv("CHAINKIT_RECORD_VIA")
    traced = run(project, data, trace=True)
    [row, _] = journal_rows(project, traced.run_id)
    mlflow.set_tracking_uri(store(project))
    assessments = {a.name: a for a in mlflow.get_trace(row["trace_id"]).info.assessments}
    assert assessments["correctness"].source.source_type == "LLM_JUDGE"
    assert assessments["correctness"].source.source_id == "openai:/gpt-4.1-mini"
    assert assessments["correctness"].feedback.value == row["scores"]["correctness"]
    assert assessments["exact_match"].source.source_type == "CODE"  # a built-in: chainkit's code


MADE_JUDGE = '''from mlflow.genai.judges import make_judge

polite = make_judge(
    name="polite",
    instructions="Is the answer in {{ outputs }} polite?",
    model="openai:/gpt-4o-mini",
    feedback_value_type=str,
)
'''


def test_a_make_judge_judge_records_and_replays_through_the_cli(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from toolkit.cli import cli

    (project.root / "my_judges.py").write_text(MADE_JUDGE)
    data = write_rows(project.root / "d.jsonl", ["one", "two", "three"])
    command = ["--project", str(project.root), "eval", "live", "--data", str(data)]
    command += ["--scorer", "my_judges:polite", "--tracking-uri", store(project), "--json"]
    with OpenAIServer(responder=JudgeResponder()) as server:
        monkeypatch.setenv("CHAINKIT_RECORD_VIA", server.base_url.removesuffix("/v1"))
        recorded = CliRunner().invoke(cli, [*command, "--record-mode", "once"])
        assert recorded.exit_code == 0, recorded.output
        assert sum("response_format" in (r.body or {}) for r in server.requests) == 3
    monkeypatch.delenv("CHAINKIT_RECORD_VIA")
    replayed = CliRunner().invoke(cli, command)
    assert replayed.exit_code == 0, replayed.output
    [before], [after] = json.loads(recorded.stdout)["runs"], json.loads(replayed.stdout)["runs"]
    rows = {r["index"]: r["scores"]["polite"] for r in journal_rows(project, after["run_id"])}
    assert rows == {r["index"]: r["scores"]["polite"] for r in journal_rows(project, before["run_id"])}
    assert after["metrics"]["judge/polite/calls"] == 3 and after["metrics"]["judge/polite/live_calls"] == 0
    assert before["metrics"]["judge/polite/live_calls"] == 3


def test_the_judges_session_lets_through_the_hosts_the_environment_allows(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    """$CHAINKIT_ALLOW_HOSTS is honoured by the judges' session as by the chain's (use_cassette)."""
    from toolkit.evaluation import _judge_session
    from toolkit.scorers import resolve

    monkeypatch.setenv("CHAINKIT_ALLOW_HOSTS", "judge.example.org, other.example.org")
    options = EvalOptions(data=project.root / "d.jsonl", allow_hosts=["cli.example.org"])
    with _judge_session(resolve(["Correctness"]), project.cassette_for("live"), options, project) as session:
        assert session is not None
        allowed = ("judge.example.org", "other.example.org", "cli.example.org")
        assert all(session.passes(host) for host in allowed)
        assert not session.passes("api.openai.com")
