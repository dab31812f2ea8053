"""Evaluation engines: what carries each row's attempt to where the chain runs, and back.

The seam (DESIGN, evaluation engines): an engine's ``attempt(task)`` runs
:func:`toolkit.attempt.attempt_row` somewhere and returns its picklable
:class:`~toolkit.attempt.Attempt`; the parent (:class:`toolkit.evaluation.RowRunner`) does the
rest (rate limit and retries, scoring, accounting, journal, progress, MLflow), the same for
every engine. Spark or the Batch API is another class with these two methods.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import multiprocessing
import multiprocessing.util
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, InvalidStateError, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from toolkit.attempt import Attempt, Invoke, RowTask, attempt_row

ENGINES = ("threads", "processes", "spark")


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

    load: Callable[[], Invoke]  # a picklable loader (toolkit.targets.ChainLoader/ModelLoader)
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
    durable as they are made. A worker runs several attempts at once in threads (a live chain
    mostly waits), so ``concurrency`` rows can be in flight on ``workers`` processes; the job's
    one rate limit stays in the parent, which hands out the rows to the least busy worker."""

    name = "processes"

    def __init__(self, setup: WorkerSetup, workers: int | None = None, threads: int = 1) -> None:
        context = multiprocessing.get_context("spawn")
        count = workers or os.cpu_count() or 1
        self.workers = [_Worker(context, setup, max(1, -(-threads // count))) for _ in range(count)]

    async def attempt(self, task: RowTask) -> Attempt:
        worker = min(self.workers, key=lambda w: len(w.pending))
        return await asyncio.wrap_future(worker.submit(task))

    def close(self) -> None:
        for worker in self.workers:
            worker.stop()
        for worker in self.workers:
            worker.join()


class _Worker:
    """One worker process and the parent's end of its pipe: tasks out, attempts back (by id)."""

    def __init__(self, context: Any, setup: WorkerSetup, threads: int) -> None:
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_serve, args=(child, setup, threads), name="chainkit-worker")
        self.process.start()
        child.close()
        self.pending: dict[int, Future[Attempt]] = {}
        self.lock = threading.Lock()
        self.ids = itertools.count()
        self.reader = threading.Thread(target=self._read, name="chainkit-worker-reader", daemon=True)
        self.reader.start()

    def submit(self, task: RowTask) -> Future[Attempt]:
        future: Future[Attempt] = Future()
        with self.lock:
            number = next(self.ids)
            self.pending[number] = future
            self.conn.send((number, task))
        return future

    def _read(self) -> None:
        while True:
            try:
                number, attempt = self.conn.recv()
            except (EOFError, OSError):
                break
            with self.lock:
                future = self.pending.pop(number)
            with contextlib.suppress(InvalidStateError):  # cancelled: the job was interrupted
                future.set_result(attempt)
        with self.lock:  # the worker is gone: what it still owed fails, clearly
            owed, self.pending = list(self.pending.values()), {}
        gone = RuntimeError(f"worker process {self.process.pid} ended with rows in flight")
        for future in owed:
            with contextlib.suppress(InvalidStateError):
                future.set_exception(gone)

    def stop(self) -> None:
        with self.lock, contextlib.suppress(OSError):
            self.conn.send(None)

    def join(self) -> None:
        self.process.join()
        self.reader.join(timeout=5)
        self.conn.close()


# ------------------------------------------------------------------ in each worker process


def _serve(conn: Any, setup: WorkerSetup, threads: int) -> None:
    """A worker's life: start, then attempt each task received in one of ``threads`` threads and
    send the attempt back; on ``None`` (or the parent gone), save the session and leave."""
    invoke = _start_worker(setup)
    sending = threading.Lock()

    def run(number: int, task: RowTask) -> None:
        attempt = attempt_row(invoke, task)
        with sending:
            conn.send((number, attempt))

    with ThreadPoolExecutor(threads, thread_name_prefix="chainkit-attempt") as pool:
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):
                break
            if message is None:
                break
            pool.submit(run, *message)


def _start_worker(setup: WorkerSetup) -> Invoke:
    # Ctrl-C reaches the whole process group: the parent alone handles it (it stops the job and
    # tells each worker to finish what it holds and leave), so a worker never dies mid-row.
    # (Python sets handlers from the main thread only; a Spark worker may load from another.)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
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
    return setup.load()


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


__all__ = ["ENGINES", "Engine", "ProcessEngine", "ThreadEngine", "WorkerSetup"]
