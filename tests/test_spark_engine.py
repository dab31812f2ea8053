"""``--engine spark``: rows replayed on Spark executors (local[2]), the same answers as threads
and processes, one failing row failing alone, and a killed job resumed without repeating a row."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT
from openai_server import OpenAIServer
from test_engines import per_row
from test_evaluation import LIVE_CHAIN, _kill_after_rows, journal_rows, store, write_dataset

from toolkit.errors import UsageError
from toolkit.evaluation import EvalOptions, evaluate
from toolkit.journal import Journal
from toolkit.project import Project
from toolkit.spark_engine import find_java, spark_session

#: A chain with no HTTP that notes every call in a file (which rows ran, how often: the Spark
#: workers cannot see a test's monkeypatched environment, so the path is in the code), slow
#: enough for a kill to land mid-job, and that fails on one question.
COUNTING_CHAIN = '''"""Notes each call; fails on "boom"."""

import time

import mlflow
from langchain_core.runnables import RunnableLambda

INPUT_EXAMPLE = {{"question": "warm up"}}


def answer(inputs):
    with open({calls!r}, "a") as calls:
        calls.write(inputs["question"] + "\\n")
    if inputs["question"] == "boom":
        raise ValueError("boom is not a question")
    time.sleep({pause})
    return "Answer: " + inputs["question"]


mlflow.models.set_model(RunnableLambda(answer))
'''


@pytest.fixture(scope="module")
def spark() -> Iterator[Any]:
    """One local[2] session for the module (starting one costs seconds); the engines find it."""
    session = spark_session("local[2]")
    yield session
    session.stop()


@pytest.fixture
def project(tmp_path: Path) -> Project:
    shutil.copytree(ROOT / "chains", tmp_path / "chains", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "cassettes").mkdir()
    (tmp_path / "chains" / "live.py").write_text(LIVE_CHAIN)
    return Project.at(tmp_path)


def counting_chain(project: Project, pause: float = 0.0) -> Path:
    calls = project.root / "calls.txt"
    code = COUNTING_CHAIN.format(calls=str(calls), pause=pause)
    (project.chains_dir / "counting.py").write_text(code)
    return calls


def called(calls: Path) -> list[str]:
    return [line for line in calls.read_text().splitlines() if line != "warm up"]


def test_spark_gives_the_same_rows_scores_and_metrics_as_threads_and_processes(
    spark: Any, project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    questions = [f"question {n}" for n in range(6)]
    recorded = write_dataset(project.root / "recorded.jsonl", questions, expected="Answer to")
    with OpenAIServer() as server:  # the cassette, recorded here against the loopback server
        monkeypatch.setenv("CHAINKIT_RECORD_VIA", server.base_url.removesuffix("/v1"))
        options = EvalOptions(data=recorded, record_mode="new_episodes", tracking_uri=store(project))
        assert evaluate(project, options, chain="live").errors == 0
    monkeypatch.delenv("CHAINKIT_RECORD_VIA")
    # One more row the cassette does not hold: a replay miss, the same error on every engine.
    data = write_dataset(project.root / "d.jsonl", [*questions, "never recorded"], expected="Answer to")
    runs = {
        engine: evaluate(
            project,
            EvalOptions(data=data, tracking_uri=store(project), engine=engine, workers=2, concurrency=4),
            chain="live",
        )
        for engine in ("threads", "processes", "spark")
    }
    rows = {engine: per_row(project, summary.run_id) for engine, summary in runs.items()}
    assert rows["spark"] == rows["threads"] == rows["processes"]
    assert rows["spark"][-1][3].startswith("ReplayMissError: no recorded response")
    assert (runs["spark"].rows, runs["spark"].errors, runs["spark"].replayed_rows) == (7, 1, 6)
    assert runs["spark"].tokens == runs["threads"].tokens > 0  # the accounting comes back
    measured = {"latency/mean"}  # wall-clock: the one figure that differs by nature
    metrics = {
        engine: {k: v for k, v in summary.metrics.items() if k not in measured}
        for engine, summary in runs.items()
    }
    assert metrics["spark"] == metrics["threads"] == metrics["processes"]
    assert metrics["spark"]["contains/mean"] == 1.0


def test_a_failing_row_fails_alone_and_no_row_runs_twice(spark: Any, project: Project) -> None:
    calls = counting_chain(project)
    questions = ["one", "boom", "two", "three"]  # two partitions of two rows: "boom" shares one
    data = write_dataset(project.root / "d.jsonl", questions)
    summary = evaluate(
        project, EvalOptions(data=data, tracking_uri=store(project), engine="spark"), chain="counting"
    )
    rows = journal_rows(project, summary.run_id)
    assert [row["error"] for row in rows] == [None, "ValueError: boom is not a question", None, None]
    assert [row["output"] for row in rows] == ["Answer: one", None, "Answer: two", "Answer: three"]
    assert sorted(called(calls)) == sorted(questions)  # no partition re-ran for the failing row
    assert summary.errors == 1


def test_a_killed_spark_job_resumes_without_repeating_a_journaled_row(spark: Any, project: Project) -> None:
    """kill -9 of a job on Spark mid-run, then ``--resume`` on Spark: every row journaled once,
    and no journaled row reaches a Spark executor again."""
    calls = counting_chain(project, pause=0.3)
    questions = [f"q{n}" for n in range(12)]
    data = write_dataset(project.root / "d.jsonl", questions)
    runs = project.root / ".chainkit" / "runs"
    command = [sys.executable, "-m", "toolkit", "--project", str(project.root), "eval", "counting"]
    command += ["--data", str(data), "--concurrency", "2", "--tracking-uri", store(project), "--json"]
    command += ["--engine", "spark", "--spark-master", "local[2]"]
    with (project.root / "killed.log").open("wb") as log:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log)
    # A Spark job's first rows come after the session and its Python workers start: tens of
    # seconds, minutes on a loaded machine.
    journal = _kill_after_rows(process, runs, 2, wait=600)
    finished = {row["inputs"]["question"] for row in Journal(journal).results()}
    assert 2 <= len(finished) < len(questions)
    before = len(called(calls))
    resumed = evaluate(
        project,
        EvalOptions(
            data=data, tracking_uri=store(project), engine="spark", resume=journal.stem, concurrency=4
        ),
        chain="counting",
    )
    again = called(calls)[before:]
    assert not finished & set(again)
    assert sorted(again) == sorted(set(questions) - finished)
    assert resumed.rows == 12 and resumed.skipped_rows == len(finished) and resumed.errors == 0
    assert [row["index"] for row in journal_rows(project, journal.stem)] == list(range(12))


def test_spark_replays_only(project: Project) -> None:
    data = write_dataset(project.root / "d.jsonl", ["q"])
    options = EvalOptions(data=data, tracking_uri=store(project), engine="spark", record_mode="new_episodes")
    with pytest.raises(UsageError, match=r"--engine spark replays .* record first with --engine threads"):
        evaluate(project, options, chain="live")
    assert not (project.root / ".chainkit").exists()  # refused before any run existed


def test_no_java_says_how_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="needs Java, and none was found: install Java 17"):
        find_java({"PATH": str(tmp_path)})
    with pytest.raises(UsageError, match=f"JAVA_HOME={tmp_path} has no bin/java"):
        find_java({"JAVA_HOME": str(tmp_path), "PATH": os.environ["PATH"]})
    assert find_java(dict(os.environ)).endswith("java")
