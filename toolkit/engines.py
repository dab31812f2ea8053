"""Evaluation engines: what carries each row's attempt to where the chain runs, and back.

The seam (DESIGN, evaluation engines): an engine's ``attempt(task)`` runs
:func:`toolkit.attempt.attempt_row` somewhere and returns its picklable
:class:`~toolkit.attempt.Attempt`; the parent (:class:`toolkit.evaluation.RowRunner`) does the
rest (rate limit and retries, scoring, accounting, journal, progress, MLflow), the same for
every engine. Spark or the Batch API is another class with these two methods.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import multiprocessing.util
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from toolkit.attempt import Attempt, Invoke, RowTask, attempt_row

ENGINES = ("threads", "processes")


class Engine(Protocol):
    """Carries one attempt at a row to where the chain runs; returns what it left."""

    name: str

    async def attempt(self, task: RowTask) -> Attempt: ...

    def close(self) -> None:
        """Wait for the workers to end (their recordings saved); nothing to do for threads."""


class ThreadEngine:
    """Rows attempted in this process, each in a worker thread (asyncio's default executor), or
    inline when rows run one at a time (no thread hop: concurrency 1 measures the chain alone)."""

    name = "threads"

    def __init__(self, invoke: Invoke, *, inline: bool = False) -> None:
        self.invoke, self.inline = invoke, inline

    async def attempt(self, task: RowTask) -> Attempt:
        if self.inline:
            return attempt_row(self.invoke, task)
        return await asyncio.to_thread(attempt_row, self.invoke, task)

    def close(self) -> None:
        pass


@dataclass(frozen=True)
class WorkerSetup:
    """What a worker process needs to attempt rows: picklable, nothing of the parent's state."""

    load: Callable[[], Invoke]  # a picklable loader (toolkit.evaluation.ChainLoader/ModelLoader)
    cassette: Path
    record_mode: str
    allow_hosts: Sequence[str]
    ignore_json_paths: Sequence[str]
    tracking_uri: str
    trace: bool
    model_id: str | None


class ProcessEngine:
    """Rows attempted across worker processes (a fresh interpreter each, ``spawn``): all cores,
    no GIL shared. Each worker loads the chain once and replays (or records) through its own
    session on the job's cassette; recordings from every worker merge into that one cassette,
    durable as they are made. Each worker attempts one row at a time, so at most ``workers`` rows
    are in flight; the job's one rate limit stays in the parent, which hands out the rows."""

    name = "processes"

    def __init__(self, setup: WorkerSetup, workers: int | None = None) -> None:
        self.workers = workers or os.cpu_count() or 1
        self.pool = ProcessPoolExecutor(
            self.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_start_worker,
            initargs=(setup,),
        )

    async def attempt(self, task: RowTask) -> Attempt:
        return await asyncio.wrap_future(self.pool.submit(_attempt, task))

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


# ------------------------------------------------------------------ in each worker process

_invoke: Invoke | None = None


def _start_worker(setup: WorkerSetup) -> None:
    global _invoke
    import mlflow

    from toolkit.evaluation import tracing
    from toolkit.replay import use_cassette

    mlflow.set_tracking_uri(setup.tracking_uri)
    cassette = use_cassette(
        setup.cassette,
        setup.record_mode,
        allow_hosts=setup.allow_hosts,
        client_retries=False,  # the parent's retry policy is the one
        ignore_json_paths=setup.ignore_json_paths,
    )
    cassette.__enter__()
    traced = tracing(setup.trace, setup.model_id)
    traced.__enter__()

    def close() -> None:  # at the worker's normal exit: the session saves what it recorded
        traced.__exit__(None, None, None)
        cassette.__exit__(None, None, None)

    multiprocessing.util.Finalize(None, close, exitpriority=10)
    _leave_with_the_parent()
    _invoke = setup.load()


def _leave_with_the_parent() -> None:
    """A worker whose parent died (kill -9 of the job) exits instead of waiting forever: what it
    recorded is already durable in its recording log, which the next session folds in (a live
    worker's log would stay locked, and its rows would miss at the next replay)."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.2)
        os._exit(1)

    threading.Thread(target=watch, name="chainkit-parent-watch", daemon=True).start()


def _attempt(task: RowTask) -> Attempt:
    assert _invoke is not None, "the worker was not started"
    return attempt_row(_invoke, task)


__all__ = ["ENGINES", "Engine", "ProcessEngine", "ThreadEngine", "WorkerSetup"]
