"""Evaluation engines carry attempts; the thread engine gives what attempt_row gives."""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT
from openai_server import OpenAIServer
from test_evaluation import LIVE_CHAIN, _kill_after_rows, _spawn_eval, journal_rows, store, write_dataset

from toolkit.attempt import RowTask
from toolkit.cassette import Cassette
from toolkit.engines import Engine, ThreadEngine
from toolkit.errors import UsageError
from toolkit.evaluation import EvalOptions, evaluate
from toolkit.journal import Journal
from toolkit.project import Project


def test_the_thread_engine_attempts_in_a_worker_thread_or_inline() -> None:
    seen: list[str] = []

    def invoke(inputs: dict[str, int]) -> int:
        seen.append(threading.current_thread().name)
        return inputs["n"] * 2

    task = RowTask(3, {"n": 21}, scope="row-3")
    threaded: Engine = ThreadEngine(invoke)
    inline: Engine = ThreadEngine(invoke, inline=True)
    here, there = asyncio.run(inline.attempt(task)), asyncio.run(threaded.attempt(task))
    assert here.output == there.output == 42 and here.ok and there.ok
    assert seen[0] == "MainThread" and seen[1] != "MainThread"
    assert threaded.name == "threads"


def test_an_error_comes_back_as_data() -> None:
    def invoke(inputs: object) -> object:
        raise KeyError("question")

    attempt = asyncio.run(ThreadEngine(invoke).attempt(RowTask(0, {}, scope="row-0")))
    assert attempt.error == "KeyError: 'question'" and not attempt.retryable


# ------------------------------------------------------------- the same answers on every engine


@pytest.fixture
def project(tmp_path: Path) -> Project:
    shutil.copytree(ROOT / "chains", tmp_path / "chains", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "cassettes", tmp_path / "cassettes")
    (tmp_path / "chains" / "live.py").write_text(LIVE_CHAIN)
    return Project.at(tmp_path)


def per_row(project: Project, run_id: str) -> list[tuple[Any, ...]]:
    return [
        (row["index"], row["output"], row["scores"], row["error"], row["token_usage"], row["replayed"])
        for row in journal_rows(project, run_id)
    ]


def test_threads_and_processes_give_the_same_rows_scores_and_metrics(project: Project) -> None:
    questions = ["What is MLflow?", "What is a registered model?"] * 4  # both recorded in qa.json
    data = write_dataset(project.root / "d.jsonl", questions, expected="MLflow")
    runs = {
        engine: evaluate(
            project, EvalOptions(data=data, tracking_uri=store(project), engine=engine, workers=2), chain="qa"
        )
        for engine in ("threads", "processes")
    }
    threads, processes = runs["threads"], runs["processes"]
    assert per_row(project, processes.run_id) == per_row(project, threads.run_id)
    assert (processes.replayed_rows, processes.errors) == (8, 0)
    measured = {"latency/mean"}  # wall-clock: the one figure that differs by nature
    assert {k: v for k, v in processes.metrics.items() if k not in measured} == {
        k: v for k, v in threads.metrics.items() if k not in measured
    }


def test_recordings_made_in_worker_processes_land_in_the_one_cassette(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    questions = [f"question {n}" for n in range(10)]
    data = write_dataset(project.root / "d.jsonl", questions, expected="Answer to")
    with OpenAIServer() as server:
        monkeypatch.setenv("CHAINKIT_RECORD_VIA", server.base_url.removesuffix("/v1"))
        recorded = evaluate(
            project,
            EvalOptions(
                data=data,
                record_mode="new_episodes",
                tracking_uri=store(project),
                engine="processes",
                workers=2,
            ),
            chain="live",
        )
        asked = [r.body["messages"][-1]["content"] for r in server.requests]
    monkeypatch.delenv("CHAINKIT_RECORD_VIA")
    assert (recorded.live_rows, recorded.errors) == (10, 0) and recorded.tokens > 0
    sent = {
        i.request.body["json"]["messages"][-1]["content"] for i in Cassette.load(project.cassette_for("live"))
    }
    assert set(questions) <= sent  # every worker's recordings, merged
    assert sorted(q for q in asked if q in questions) == sorted(questions)  # each row asked once
    replayed = evaluate(
        project,
        EvalOptions(data=data, tracking_uri=store(project), engine="processes", workers=2),
        chain="live",
    )
    assert (replayed.replayed_rows, replayed.live_rows, replayed.errors) == (10, 0, 0)
    assert replayed.tokens == recorded.tokens  # the accounting comes back from the workers


def test_an_unknown_engine_is_a_usage_error(project: Project) -> None:
    data = write_dataset(project.root / "d.jsonl", ["q"])
    with pytest.raises(UsageError, match="unknown engine 'ray': use threads, processes, spark"):
        evaluate(project, EvalOptions(data=data, tracking_uri=store(project), engine="ray"), chain="qa")


def test_a_process_pool_job_killed_with_sigkill_resumes_without_redoing_a_row(project: Project) -> None:
    """The parent journals each finished row; recordings are durable in every worker. Killed
    mid-run (kill -9 of the parent), the job resumes on the process engine: every row exactly
    once, no API call repeated for a finished row, and the whole dataset then replays offline."""
    questions = [f"question {n}" for n in range(20)]
    data = write_dataset(project.root / "d.jsonl", questions)
    runs = project.root / ".chainkit" / "runs"
    engine = ("--engine", "processes", "--workers", "2")
    with OpenAIServer(latency=0.05) as server:
        journal = _kill_after_rows(_spawn_eval(project, data, server, *engine), runs, 5)
        run_id = journal.stem
        finished = {row["inputs"]["question"] for row in Journal(journal).results()}
        assert 5 <= len(finished) < len(questions)
        sent_before = len(server.requests)
        resumed = _spawn_eval(project, data, server, *engine, "--resume", run_id)
        out, err = resumed.communicate(timeout=180)
        assert resumed.returncode == 0, err.decode()
        asked_again = [r.body["messages"][-1]["content"] for r in server.requests[sent_before:]]
    summary = json.loads(out)["runs"][0]
    assert summary["run_id"] == run_id and summary["rows"] == 20 and summary["skipped_rows"] == len(finished)
    assert [row["index"] for row in journal_rows(project, run_id)] == list(range(20))
    assert not finished & set(asked_again)
    # Offline, every row replays (on threads: the workers' recordings are all in the cassette).
    offline = evaluate(project, EvalOptions(data=data, tracking_uri=store(project)), chain="live")
    assert (offline.replayed_rows, offline.errors) == (20, 0)


def test_ctrl_c_of_a_process_pool_job_ends_cleanly_and_resumes(project: Project) -> None:
    """Ctrl-C in a terminal signals the whole foreground process group: the parent and every
    worker. The job ends as on threads (exit 130, one line naming the run, no traceback from
    any process), no worker outlives it, and `--resume` finishes the rest."""
    import os
    import signal
    import subprocess
    import time

    from test_evaluation import _finished_rows

    data = write_dataset(project.root / "d.jsonl", [f"question {n}" for n in range(40)])
    runs = project.root / ".chainkit" / "runs"
    with OpenAIServer(latency=0.2) as server:
        env = {**os.environ, "CHAINKIT_RECORD_VIA": server.base_url.removesuffix("/v1")}
        command = [
            *("-m", "toolkit", "--project", str(project.root), "eval", "live", "--data", str(data)),
            *("--record-mode", "new_episodes", "--concurrency", "4", "--tracking-uri", store(project)),
            *("--engine", "processes", "--workers", "2"),
        ]
        process = subprocess.Popen(
            [os.sys.executable, *command], env=env, stderr=subprocess.PIPE, start_new_session=True
        )
        deadline = time.monotonic() + 120
        journals: list[Path] = []
        while time.monotonic() < deadline and not (journals and _finished_rows(journals[0]) >= 4):
            journals = list(runs.glob("*.sqlite")) if runs.exists() else []
            time.sleep(0.01)
        os.killpg(process.pid, signal.SIGINT)  # what the terminal sends on Ctrl-C
        _, stderr = process.communicate(timeout=60)
        text = stderr.decode()
        assert process.returncode == 130, text
        assert "Traceback" not in text and "KeyboardInterrupt" not in text, text
        run_id = journals[0].stem
        assert text.strip().splitlines()[-1] == (
            f"interrupted: every finished row is saved; finish it with: chainkit eval live --resume {run_id}"
        )
        group = ["ps", "-o", "stat=,args=", "-g", str(process.pid)]
        left = subprocess.run(group, capture_output=True, text=True).stdout.splitlines()
        assert [line for line in left if not line.startswith("Z")] == []  # no worker left running
        engine = ("--engine", "processes", "--workers", "2")
        resumed = _spawn_eval(project, data, server, *engine, "--resume", run_id)
        out, err = resumed.communicate(timeout=180)
    assert resumed.returncode == 0, err.decode()
    assert json.loads(out)["runs"][0]["rows"] == 40
    assert [row["index"] for row in journal_rows(project, run_id)] == list(range(40))
