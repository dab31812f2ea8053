"""Evaluation engines carry attempts; the thread engine gives what attempt_row gives."""

from __future__ import annotations

import asyncio
import threading

from toolkit.attempt import RowTask
from toolkit.engines import Engine, ThreadEngine


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
