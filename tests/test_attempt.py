"""The worker half of the evaluation engine seam: one attempt at a row, as picklable data that
comes back the same from a thread, another process, or this one."""

from __future__ import annotations

import multiprocessing
import pickle
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import openai
import pytest
from conftest import OPENAI_BASE, ROOT
from openai_server import Fault, OpenAIServer

from toolkit import use_cassette
from toolkit.attempt import Attempt, RowTask, attempt_row
from toolkit.loading import load_chain

QA_INPUTS = {"question": "What is MLflow?"}


def attempt_qa_replayed(task: RowTask) -> Attempt:
    """What a worker process does: load the chain under its cassette, attempt the row."""
    with use_cassette(ROOT / "cassettes" / "qa.json", "none"):
        chain = load_chain(ROOT / "chains" / "qa.py")
        return attempt_row(chain.invoke, task)


def comparable(attempt: Attempt) -> tuple[Any, ...]:
    return (attempt.output, attempt.error, attempt.retryable, attempt.exchanges)


def test_an_attempt_is_picklable_data_and_the_same_from_another_process() -> None:
    task = RowTask(0, QA_INPUTS, scope="row-0")
    here = attempt_qa_replayed(task)
    assert here.ok and "MLflow" in here.output and here.latency > 0
    [exchange] = here.exchanges
    assert exchange.replayed and exchange.model.startswith("gpt-") and exchange.prompt_tokens > 0
    assert pickle.loads(pickle.dumps(here)) == here
    spawn = multiprocessing.get_context("spawn")  # a fresh interpreter: nothing shared with this one
    with ProcessPoolExecutor(max_workers=1, mp_context=spawn) as pool:
        there = pool.submit(attempt_qa_replayed, task).result(timeout=180)
    assert comparable(there) == comparable(here)


def test_a_miss_is_the_attempt_s_error_as_text_and_not_worth_retrying() -> None:
    attempt = attempt_qa_replayed(RowTask(1, {"question": "Never recorded?"}, scope="row-1"))
    assert not attempt.ok and attempt.output is None
    assert attempt.error is not None and attempt.error.startswith("ReplayMissError: no recorded response")
    assert attempt.traceback is not None and "ReplayMissError" in attempt.traceback
    assert (attempt.retryable, attempt.status) == (False, None)


def test_a_rate_limited_attempt_carries_what_the_retry_policy_needs(tmp_path: Path) -> None:
    with OpenAIServer(faults=[Fault(429, retry_after=2.5)]) as server:
        client = openai.OpenAI(base_url=OPENAI_BASE, api_key="sk-test", max_retries=0)

        def ask(inputs: dict[str, str]) -> str:
            reply = client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": inputs["question"]}]
            )
            return str(reply.choices[0].message.content)

        via = server.base_url.removesuffix("/v1")
        with use_cassette(tmp_path / "c.json", "new_episodes", record_via=via, client_retries=False):
            limited = attempt_row(ask, RowTask(0, {"question": "hi"}, scope="row-0"))
            answered = attempt_row(ask, RowTask(0, {"question": "hi"}, scope="row-0"))
    assert (limited.retryable, limited.status, limited.retry_after) == (True, 429, 2.5)
    assert limited.error is not None and "RateLimitError" in limited.error
    assert answered.ok and answered.output == "Answer to: hi"
    assert [e.replayed for e in answered.exchanges] == [False]


@pytest.mark.parametrize("trace", [False, True])
def test_the_row_span_is_opened_where_the_row_runs(trace: bool, tmp_path: Path) -> None:
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_experiment("attempts")  # not an experiment id left by an earlier test's store
    attempt = attempt_qa_replayed(RowTask(0, QA_INPUTS, scope="row-0", trace=trace))
    assert (attempt.trace_id is not None) is trace
    if trace:
        mlflow.flush_trace_async_logging()
        assert mlflow.get_trace(attempt.trace_id).data.spans[0].name == "eval row 0"
