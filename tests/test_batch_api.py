"""``chainkit eval --batch-api``: rows in rounds, their requests answered by a loopback fake of
OpenAI's Files and Batches API (tests/batch_server.py), recorded, replayed; kill -9 and resume;
expired batches; streaming refused; --dry-run."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from batch_server import BatchServer
from click.testing import CliRunner
from conftest import RECORDED, ROOT
from mlflow import MlflowClient

from toolkit.batch_api import BatchLedger, custom_id, parse_line
from toolkit.batch_plan import DEFAULT_BATCH_PRICES, batch_prices
from toolkit.batch_rounds import BatchOptions
from toolkit.cassette import Cassette
from toolkit.cli import cli
from toolkit.evaluation import DEFAULT_PRICES, EvalOptions, evaluate
from toolkit.journal import Journal
from toolkit.project import Project

KEY = "sk-batch-test-0123456789abcdefghij"
FAST = {"poll_interval": 0.01, "max_poll_interval": 0.05}


@pytest.fixture
def project(tmp_path: Path) -> Project:
    shutil.copytree(ROOT / "chains", tmp_path / "chains", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "cassettes", tmp_path / "cassettes")
    shutil.copytree(ROOT / "datasets", tmp_path / "datasets")
    return Project.at(tmp_path)


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Any:
    with BatchServer() as fake:
        monkeypatch.setenv("CHAINKIT_RECORD_VIA", fake.base_url.removesuffix("/v1"))
        monkeypatch.setenv("OPENAI_API_KEY", KEY)
        yield fake


def store(project: Project) -> str:
    return f"sqlite:///{project.root / 'mlflow.db'}"


def write_dataset(path: Path, questions: list[str]) -> Path:
    path.write_text("".join(json.dumps({"inputs": {"question": q}}) + "\n" for q in questions))
    return path


def journal_rows(project: Project, run_id: str) -> list[dict[str, Any]]:
    with Journal(project.root / ".chainkit" / "runs" / f"{run_id}.sqlite") as journal:
        return list(journal.results())


def batch_eval(project: Project, data: Path, chain: str = "qa", **batch: Any) -> Any:
    options = EvalOptions(
        data=data, tracking_uri=store(project), concurrency=4, batch=BatchOptions(**(FAST | batch))
    )
    return evaluate(project, options, chain=chain)


# ------------------------------------------------------------------------------ the fake


def test_the_fake_batch_api_through_the_real_openai_client(server: BatchServer) -> None:
    import openai

    client = openai.OpenAI(base_url=server.base_url, api_key=KEY, max_retries=0)
    lines = [
        {
            "custom_id": "a",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
        },
        {
            "custom_id": "b",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "there"}]},
        },
    ]
    content = "".join(json.dumps(line) + "\n" for line in lines).encode()
    upload = client.files.create(file=("in.jsonl", content), purpose="batch")
    server.fail_lines = {"b"}
    batch = client.batches.create(
        input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    seen = [batch.status]
    while batch.status not in ("completed", "failed", "expired", "cancelled"):
        batch = client.batches.retrieve(batch.id)
        seen.append(batch.status)
    assert seen == ["validating", "in_progress", "finalizing", "completed"]
    assert batch.request_counts is not None and (
        batch.request_counts.completed,
        batch.request_counts.failed,
    ) == (1, 1)
    assert batch.output_file_id and batch.error_file_id
    output = [parse_line(json.loads(x)) for x in client.files.content(batch.output_file_id).text.splitlines()]
    assert output[0].custom_id == "a" and output[0].status == 200
    assert output[0].body["choices"][0]["message"]["content"] == "Answer to: hi"
    errors = [parse_line(json.loads(x)) for x in client.files.content(batch.error_file_id).text.splitlines()]
    assert errors[0].custom_id == "b" and errors[0].error is not None and "500" in errors[0].error
    # A batch with a duplicated custom_id fails validation, as the real API's does.
    twice = client.files.create(
        file=("in.jsonl", content.splitlines()[0] * 1 + b"\n" + content), purpose="batch"
    )
    failed = client.batches.create(
        input_file_id=twice.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    for _ in range(3):
        failed = client.batches.retrieve(failed.id)
    assert failed.status == "failed" and failed.errors is not None
    # Cancel, and the counts.
    other = client.batches.create(
        input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    assert client.batches.cancel(other.id).status == "cancelling"
    assert client.batches.retrieve(other.id).status == "cancelled"
    assert len(server.created) == 3 and server.submitted_requests == 2 + 3 + 2


def test_the_fake_answers_batch_lines_with_the_real_recorded_bodies(monkeypatch: pytest.MonkeyPatch) -> None:
    import openai

    recorded = json.loads((RECORDED / "chat-completion-0.json").read_text())
    with BatchServer(recorded_dir=RECORDED) as fake:
        client = openai.OpenAI(base_url=fake.base_url, api_key=KEY, max_retries=0)
        line = {
            "custom_id": "x",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": recorded["request"]["body"],
        }
        upload = client.files.create(file=("in.jsonl", json.dumps(line).encode()), purpose="batch")
        batch = client.batches.create(
            input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        while batch.status != "completed":
            batch = client.batches.retrieve(batch.id)
        assert batch.output_file_id is not None
        answer = json.loads(client.files.content(batch.output_file_id).text)["response"]["body"]
    assert answer == json.loads(recorded["response"]["body"])


# ------------------------------------------------------------------------------ the rounds


def test_single_call_chain_one_round_recorded_then_replayed_offline(
    project: Project, server: BatchServer
) -> None:
    data = write_dataset(project.root / "d.jsonl", [f"batched question {n}" for n in range(6)])
    summary = batch_eval(project, data)
    assert (summary.rows, summary.errors) == (6, 0)
    assert len(server.created) == 1 and server.submitted_requests == 6
    assert all(r.path.startswith(("/v1/files", "/v1/batches")) for r in server.requests)  # nothing live
    rows = journal_rows(project, summary.run_id)
    assert [row["output"] for row in rows] == [f"Answer to: batched question {n}" for n in range(6)]
    assert all(row["replayed"] is True for row in rows)
    # Priced at batch rates; the run says so, with the batch ids, rounds and the live estimate.
    run = MlflowClient(tracking_uri=store(project)).get_run(summary.run_id)
    assert run.data.tags["chainkit.mode"] == "batch"
    assert run.data.tags["chainkit.batch_ids"] == server.created[0].id
    assert run.data.tags["chainkit.batch_rounds"] == "2"  # round 1 defers, round 2 replays
    metrics = run.data.metrics
    assert metrics["batch/requests_submitted"] == metrics["batch/requests_distinct"] == 6
    assert metrics["batch/cost_usd"] == pytest.approx(summary.cost_usd, abs=1e-6) and summary.cost_usd > 0
    assert metrics["batch/cost_usd_live_estimate"] == pytest.approx(2 * metrics["batch/cost_usd"], abs=2e-6)
    # The answers are in the cassette: an ordinary replayed evaluation needs no server.
    server.stop()
    replayed = evaluate(project, EvalOptions(data=data, tracking_uri=store(project)), chain="qa")
    assert (replayed.rows, replayed.errors, replayed.replayed_rows) == (6, 0, 6)


def test_two_call_chain_embeddings_then_chat_in_two_batches(project: Project, server: BatchServer) -> None:
    data = write_dataset(project.root / "d.jsonl", ["How do I batch?", "What is a run?", "How do I batch?"])
    summary = batch_eval(project, data, chain="rag")
    assert (summary.rows, summary.errors) == (3, 0)
    endpoints = [batch.endpoint for batch in server.created]
    assert endpoints == ["/v1/embeddings", "/v1/chat/completions"]  # round 1, then round 2
    # Identical rows (the first and the third) are one line in each batch.
    assert [len(batch.lines) for batch in server.created] == [2, 2]
    rows = journal_rows(project, summary.run_id)
    assert rows[0]["output"] == rows[2]["output"] and rows[0]["output"].startswith("Answer to:")
    run = MlflowClient(tracking_uri=store(project)).get_run(summary.run_id)
    assert run.data.tags["chainkit.batch_rounds"] == "3"


def test_responses_api_chain(project: Project, server: BatchServer) -> None:
    data = project.root / "d.jsonl"
    data.write_text("".join(json.dumps({"inputs": {"text": f"Text number {n}."}}) + "\n" for n in range(3)))
    summary = batch_eval(project, data, chain="summarize")
    assert (summary.rows, summary.errors) == (3, 0)
    assert [batch.endpoint for batch in server.created] == ["/v1/responses"]
    outputs = [row["output"] for row in journal_rows(project, summary.run_id)]
    assert outputs == [f"Answer to: Text number {n}." for n in range(3)]


def test_requests_already_recorded_are_not_submitted(project: Project, server: BatchServer) -> None:
    recorded = [json.loads(line)["inputs"]["question"] for line in (project.datasets_dir / "qa.jsonl").open()]
    data = write_dataset(project.root / "d.jsonl", [*recorded, "new one", "new one"])
    summary = batch_eval(project, data)
    assert (summary.rows, summary.errors) == (4, 0)
    assert server.submitted_requests == 1  # the new question once; the recorded ones replayed


def test_an_expired_batch_falls_back_live(project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    with BatchServer(outcome="expired", expire_after=2) as fake:
        monkeypatch.setenv("CHAINKIT_RECORD_VIA", fake.base_url.removesuffix("/v1"))
        monkeypatch.setenv("OPENAI_API_KEY", KEY)
        data = write_dataset(project.root / "d.jsonl", [f"expiring {n}" for n in range(5)])
        summary = batch_eval(project, data, fallback="live")
        live = [r for r in fake.requests if r.path == "/v1/chat/completions"]
    assert (summary.rows, summary.errors) == (5, 0)
    assert len(fake.created) == 1 and len(live) == 3  # 2 answered by the batch, 3 expired and sent live
    run = MlflowClient(tracking_uri=store(project)).get_run(summary.run_id)
    assert run.data.metrics["batch/live_fallback_requests"] == 3


def test_an_expired_batch_is_submitted_again_next_round_then_rows_fail_clearly(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    with BatchServer(outcome="expired", expire_after=0) as fake:
        monkeypatch.setenv("CHAINKIT_RECORD_VIA", fake.base_url.removesuffix("/v1"))
        monkeypatch.setenv("OPENAI_API_KEY", KEY)
        data = write_dataset(project.root / "d.jsonl", ["never answered"])
        summary = batch_eval(project, data, max_submissions=2)
        assert len(fake.created) == 2  # tried in two rounds, then given up
        assert not [r for r in fake.requests if r.path == "/v1/chat/completions"]  # never live
    assert (summary.rows, summary.errors) == (1, 1)
    error = journal_rows(project, summary.run_id)[0]["error"]
    assert "BatchRequestError" in error and "batch_expired" in error and "--batch-fallback live" in error


def test_a_streaming_chain_is_refused_naming_it(project: Project, server: BatchServer) -> None:
    data = project.root / "d.jsonl"
    data.write_text(json.dumps({"inputs": {"topic": "batches"}}) + "\n")
    with pytest.raises(Exception, match=r"chain stream_story streams its calls.*without --batch-api"):
        batch_eval(project, data, chain="stream_story")
    assert not server.created


def test_prices_per_model_and_mode() -> None:
    prices = batch_prices({**DEFAULT_PRICES, "my-model": (1.0, 3.0)})
    assert prices["gpt-4o-mini"] == DEFAULT_BATCH_PRICES["gpt-4o-mini"] == (0.075, 0.30)
    assert prices["my-model"] == (0.5, 1.5)
    assert all(prices[m] == (i / 2, o / 2) for m, (i, o) in DEFAULT_PRICES.items())


def test_custom_ids_are_digests_of_the_matching_key() -> None:
    assert custom_id("POST\nhost\n/v1\n[]\njson:{}") == custom_id("POST\nhost\n/v1\n[]\njson:{}")
    assert custom_id("a") != custom_id("b") and len(custom_id("a")) <= 64


# ------------------------------------------------------------------------ kill and resume


def test_a_batch_created_by_a_job_killed_before_noting_it_is_adopted_not_created_again(
    project: Project, server: BatchServer
) -> None:
    from toolkit.batch_api import BatchClient
    from toolkit.batch_rounds import RoundsJob, settle
    from toolkit.cassette import RecordedRequest

    request = RecordedRequest(
        "POST",
        "https://api.openai.com/v1/chat/completions",
        {"json": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "adopted"}]}},
    )
    journal = Journal(project.root / ".chainkit" / "runs" / "run1.sqlite")
    job = RoundsJob.__new__(RoundsJob)  # only what settling needs: ledger, client, cassette
    job.batch, job.project, job.journal = BatchOptions(**FAST), project, journal
    job.ledger, job.client = BatchLedger(journal), BatchClient()
    job.target = type("Target", (), {"cassette": project.root / "cassettes" / "new.json"})()  # type: ignore[assignment]
    record = job.ledger.prepare(1, "/v1/chat/completions", {"k": request})
    # The killed job got as far as creating the batch (the API has it), not as noting its id.
    record.input_file_id = job.api().upload("x.jsonl", job.ledger.input_file(record))
    job.api().create(record.input_file_id, record.endpoint, {"chainkit_batch": f"run1/{record.name}"})
    record.status = "creating"
    settle(job, [record])
    assert len(server.created) == 1 and record.id == server.created[0].id and record.status == "recorded"
    recorded = Cassette.load(project.root / "cassettes" / "new.json")
    assert [i.request for i in recorded] == [request]
    assert (
        recorded.interactions[0].response.body["json"]["choices"][0]["message"]["content"]
        == "Answer to: adopted"
    )
    journal.close()


def _spawn(project: Project, data: Path, server: BatchServer, *extra: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "CHAINKIT_RECORD_VIA": server.base_url.removesuffix("/v1"), "OPENAI_API_KEY": KEY}
    command = [
        sys.executable,
        "-m",
        "toolkit",
        "--project",
        str(project.root),
        "eval",
        "qa",
        "--data",
        str(data),
    ]
    command += ["--batch-api", "--tracking-uri", store(project), "--json", *extra]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_kill_while_polling_then_resume_submits_nothing_twice(project: Project) -> None:
    data = write_dataset(project.root / "d.jsonl", [f"resumed question {n}" for n in range(8)])
    with BatchServer(hold=True) as fake:
        process = _spawn(project, data, fake)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not any(b.retrieves >= 2 for b in fake.created):
            assert process.poll() is None, process.stderr.read().decode() if process.stderr else ""
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
        process.wait()
        assert len(fake.created) == 1 and fake.created[0].status == "in_progress"
        journal = next((project.root / ".chainkit" / "runs").glob("*.sqlite"))
        with Journal(journal) as opened:
            ledger = BatchLedger(opened)
            assert [record.id for record in ledger.records] == [fake.created[0].id]
        fake.release()
        # A batch run resumes only as one: its submitted batches are in its journal.
        command = [sys.executable, "-m", "toolkit", "--project", str(project.root), "eval", "qa"]
        command += ["--data", str(data), "--tracking-uri", store(project), "--resume", journal.stem]
        direct = subprocess.run(command, capture_output=True, text=True)
        assert direct.returncode == 2 and "it sent its requests batch" in direct.stderr, direct.stderr
        resumed = _spawn(project, data, fake, "--resume", journal.stem)
        out, err = resumed.communicate(timeout=120)
        assert resumed.returncode == 0, err.decode()
        summary = json.loads(out)["runs"][0]
        assert len(fake.created) == 1 and fake.submitted_requests == 8  # polled, not submitted again
    assert (summary["run_id"], summary["rows"], summary["errors"]) == (journal.stem, 8, 0)
    assert len(Cassette.load(project.cassette_for("qa"))) >= 8


# ---------------------------------------------------------------------------- the command


def test_cli_batch_api_and_dry_run(project: Project, server: BatchServer) -> None:
    data = write_dataset(project.root / "d.jsonl", ["cli one", "cli two", "cli one"])
    runner = CliRunner()
    base = [
        "--project",
        str(project.root),
        "eval",
        "qa",
        "--data",
        str(data),
        "--tracking-uri",
        store(project),
    ]
    dry = runner.invoke(cli, [*base, "--batch-api", "--dry-run", "--json"])
    assert dry.exit_code == 0, dry.output
    plan = json.loads(dry.stdout)["plans"][0]
    assert (plan["rows"], plan["pending_rows"], plan["requests"]) == (3, 3, 2)
    assert (
        plan["by_model"][0]["endpoint"] == "/v1/chat/completions"
        and plan["by_model"][0]["model"] == "gpt-4o-mini"
    )
    assert plan["cost_usd_batch"] == pytest.approx(plan["cost_usd_live"] / 2) and plan["cost_usd_live"] > 0
    assert not server.created and not server.requests  # nothing sent
    assert not MlflowClient(tracking_uri=store(project)).search_runs(
        [e.experiment_id for e in MlflowClient(tracking_uri=store(project)).search_experiments()]
    )
    done = runner.invoke(cli, [*base, "--batch-api", "--batch-fallback", "live", "--json"])
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout)["runs"][0]["rows"] == 3 and server.submitted_requests == 2
    refused = runner.invoke(cli, [*base, "--batch-fallback", "live"])
    assert refused.exit_code == 2 and "--batch-fallback needs --batch-api" in refused.output
    processes = runner.invoke(cli, [*base, "--batch-api", "--engine", "processes"])
    assert processes.exit_code == 2 and "leave out --engine" in processes.output


def test_a_chain_whose_loading_needs_a_batch_waits_a_round() -> None:
    from toolkit.batch_rounds import Deferrals, _load
    from toolkit.cassette import RecordedRequest

    deferrals = Deferrals(["api.openai.com"], {})
    corpus = RecordedRequest("POST", "https://api.openai.com/v1/embeddings", {"json": {"input": ["a"]}})

    def load_embedding_a_corpus() -> Any:
        raise deferrals("key", corpus) or AssertionError("not deferred")

    def load_broken() -> Any:
        raise SyntaxError("broken chain")

    assert _load(type("T", (), {"load": staticmethod(load_embedding_a_corpus)})(), deferrals) is None  # type: ignore[arg-type]
    assert deferrals.requests == {"key": corpus} and deferrals.outside_rows == 1
    with pytest.raises(SyntaxError):
        _load(type("T", (), {"load": staticmethod(load_broken)})(), deferrals)  # type: ignore[arg-type]
