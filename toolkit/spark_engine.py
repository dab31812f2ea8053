"""The Spark engine: rows attempted on Spark executors, replayed from the job's recordings.

Behind the same seam as threads and processes (DESIGN, evaluation engines): ``attempt(task)``
hands a :class:`~toolkit.attempt.RowTask` over and gets its :class:`~toolkit.attempt.Attempt`
back; the parent's :class:`~toolkit.evaluation.RowRunner` keeps the rate limit, retries,
scoring, accounting, journal, progress and MLflow, so a Spark run lands in the same MLflow run
shape as any other. Here the tasks waiting at a moment go out together as one Spark job (a
micro-batch): ``spark.range(n)`` split into partitions, ``mapInArrow`` over
:func:`_attempt_partition`, which loads the chain once per Python worker (the
:class:`~toolkit.engines.WorkerSetup` loader, as a worker process does), enters the replay and
calls :func:`~toolkit.attempt.attempt_row` per row, in threads. Each row's error comes back as
data (``attempt_row`` catches it), so a failing row never fails its partition.

Why ``mapInArrow`` over ``attempt_row`` rather than MLflow's ``mlflow.pyfunc.spark_udf``: a UDF
returns the prediction and nothing else. A failing row fails the whole task (partition) instead
of coming back as that row's error; the requests a row made (tokens, cost, replayed or live),
its latency and whether its error is worth a retry (a 429 and its retry-after) are lost, so the
parent could neither account for the row nor apply the one retry policy; and with
``result_type="string"`` over a dict-returning model it keeps only the first field (DESIGN
field note 13). The loaders still load models through MLflow (``mlflow.pyfunc.load_model`` for
``--model-uri``), so what runs on the executors is what ``spark_udf`` would run.

The rate: the parent holds a slot of the job's one limit for every row in flight, so at most
``--concurrency`` rows run across the whole cluster whatever its size; a partition runs its
share (``ceil(limit / partitions)``) at once, in threads.

Replay only: record mode ``none``. Executors on a cluster cannot write into the driver's
cassette, and a recording session left open in a long-lived Spark Python worker would keep its
recording log locked; record with ``--engine threads`` or ``processes`` first. In local mode
the executors read the job's cassette from the shared filesystem; on a cluster, the cassette's
path must be readable on every executor (a shared volume). (Not built or tested yet: for
``--model-uri``, ``spark.executorEnv.CHAINKIT_CASSETTE=model`` should let each executor replay
the recordings the model carries, :mod:`toolkit.process_replay`.)

The network: in the Python workers the chain runs under the replay's network guard (record mode
none: nothing leaves; Spark's worker-to-JVM traffic uses connections opened before the guard).
On the driver, Spark's Python talks to its JVM over 127.0.0.1 (py4j, result sockets), so while
the engine lives, loopback is let through beside what the job's own guard allows (DESIGN field
note 13); the chain does not run on the driver, and HTTP sent through httpx/httpx2 is still
answered from the cassette.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import pickle
import shutil
import sys
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from toolkit.attempt import Attempt, Invoke, RowTask, attempt_row
from toolkit.engines import WorkerSetup, _start_worker
from toolkit.errors import UsageError
from toolkit.network import NetworkGuard, _innermost

DEFAULT_MASTER = "local[*]"
#: Spark Connect: where set, the session is a Spark Connect client of this server.
REMOTE_VARIABLE = "SPARK_REMOTE"
LOOPBACK = ("127.0.0.1", "::1", "localhost")
#: How long the dispatcher waits for more rows before sending a job: rows freed by one job's
#: results come back within a few milliseconds, and one job of 64 costs far less than 64 of 1.
LINGER = 0.005
#: Jobs in flight at once: one running while the next one is planned and shipped.
JOBS_IN_FLIGHT = 2
INSTALL_JAVA = (
    "install Java 17 or 21 (Debian/Ubuntu: apt-get install openjdk-17-jre-headless; macOS: "
    "brew install openjdk@17) and put it on PATH or set JAVA_HOME"
)


# ------------------------------------------------------------------------- the session


def find_java(environ: dict[str, str] | None = None) -> str:
    """The ``java`` Spark will start: $JAVA_HOME/bin/java, else the one on PATH."""
    environ = dict(os.environ) if environ is None else environ
    home = environ.get("JAVA_HOME", "").strip()
    if home:
        java = Path(home) / "bin" / "java"
        if java.is_file():
            return str(java)
        raise UsageError(f"--engine spark: JAVA_HOME={home} has no bin/java; {INSTALL_JAVA}")
    found = shutil.which("java", path=environ.get("PATH"))
    if found is None:
        raise UsageError(f"--engine spark needs Java, and none was found: {INSTALL_JAVA}")
    return found


def check_spark(record_mode: str) -> None:
    """Refuse, before any run exists, what the Spark engine cannot do."""
    if record_mode != "none":
        raise UsageError(
            f"--engine spark replays (record mode none), it does not record: record first with "
            f"--engine threads or processes (--record-mode {record_mode}), then evaluate on Spark"
        )
    require_spark()


def require_spark() -> None:
    """pyspark installed, and Java found unless the session is a Spark Connect client."""
    try:
        import pyspark  # noqa: F401
    except ImportError as exc:
        raise UsageError("--engine spark needs pyspark: pip install 'chainkit[spark]'") from exc
    if not os.environ.get(REMOTE_VARIABLE):  # a Spark Connect client starts no JVM
        find_java()


def spark_session(master: str = DEFAULT_MASTER) -> Any:
    """The active Spark session, else one on ``master`` (Spark Connect where $SPARK_REMOTE is
    set). It stays up for the process's life: starting one costs seconds to tens of seconds."""
    require_spark()
    from pyspark.sql import SparkSession

    # pyspark 4.x warns at every pandas-based call that it does not support pandas 3 yet;
    # chainkit passes Arrow batches, not pandas frames.
    warnings.filterwarnings("ignore", "PySpark does not yet fully support pandas", FutureWarning)

    remote = os.environ.get(REMOTE_VARIABLE)
    if remote:
        return SparkSession.builder.remote(remote).appName("chainkit eval").getOrCreate()
    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    # The workers run this interpreter (the one with chainkit installed), not python3 on PATH.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    if master.startswith("local"):  # keep a local Spark on loopback (not the host's address)
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    session = (
        SparkSession.builder.master(master)
        .appName("chainkit eval")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")  # stderr stays chainkit's
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    return session


def parallelism(session: Any, fallback: int) -> int:
    """How many partitions run at once: the default parallelism (local[2]: 2); a Spark Connect
    client cannot see it, and gets ``fallback``."""
    try:
        return max(1, int(session.sparkContext.defaultParallelism))
    except Exception:  # Spark Connect: no SparkContext on the client
        configured = session.conf.get("spark.default.parallelism", None)
        return max(1, int(configured)) if configured else max(1, fallback)


# ------------------------------------------------------------------------- the engine


class SparkEngine:
    """Rows attempted on Spark executors, in micro-batches of whatever rows wait."""

    name = "spark"

    def __init__(
        self, setup: WorkerSetup, concurrency: int, session: Any = None, master: str = DEFAULT_MASTER
    ) -> None:
        check_spark(setup.record_mode)
        self.setup, self.limit = setup, max(1, concurrency)
        # Spark's Python on the driver talks to its JVM over loopback: let it through while
        # the engine lives, beside whatever the job's own guard allows.
        self._guard: NetworkGuard | None = None
        outer = _innermost()
        if outer is not None:
            self._guard = NetworkGuard(LOOPBACK, also_allowed=_also(outer))
            self._guard.__enter__()
        try:
            self.session = session if session is not None else spark_session(master)
            self.slots = parallelism(self.session, self.limit)
        except BaseException:
            self.close()
            raise
        self.jobs = itertools.count()
        self._waiting: list[tuple[RowTask, Future[Attempt]]] = []
        self._changed = threading.Condition()
        self._running = 0
        self._closed = False
        self._pool = ThreadPoolExecutor(JOBS_IN_FLIGHT, thread_name_prefix="chainkit-spark-job")
        self._dispatcher = threading.Thread(
            target=self._dispatch, name="chainkit-spark-dispatch", daemon=True
        )
        self._dispatcher.start()

    async def attempt(self, task: RowTask) -> Attempt:
        future: Future[Attempt] = Future()
        with self._changed:
            if self._closed:
                raise RuntimeError("the Spark engine is closed")
            self._waiting.append((task, future))
            self._changed.notify_all()
        return await asyncio.wrap_future(future)

    def close(self) -> None:
        """Rows not yet sent are cancelled (Ctrl-C); a job already running is let finish."""
        if hasattr(self, "_changed"):
            with self._changed:
                self._closed = True
                for _, future in self._waiting:
                    future.cancel()
                self._waiting = []
                self._changed.notify_all()
            self._dispatcher.join()
            self._pool.shutdown(wait=True)
        if self._guard is not None:
            self._guard.__exit__(None, None, None)
            self._guard = None

    # ----------------------------------------------------------------- driver side

    def _dispatch(self) -> None:
        """Send what waits as one job, as soon as a job slot is free (``JOBS_IN_FLIGHT``)."""
        while True:
            with self._changed:
                while not self._closed and (not self._waiting or self._running >= JOBS_IN_FLIGHT):
                    self._changed.wait()
                if self._closed:
                    return
                # Linger a moment: rows freed by the last job's results join this one.
                self._changed.wait_for(lambda: len(self._waiting) >= self.limit or self._closed, LINGER)
                # A row whose caller was cancelled (Ctrl-C) is not sent; the others cannot be
                # cancelled any more, so their results can always be set.
                batch = [(t, f) for t, f in self._waiting if f.set_running_or_notify_cancel()]
                self._waiting = []
                if not batch:
                    continue
                self._running += 1
            self._pool.submit(self._run, batch)

    def _run(self, batch: list[tuple[RowTask, Future[Attempt]]]) -> None:
        try:
            attempts = self.run_job([task for task, _ in batch])
        except BaseException as exc:  # the job failed as a whole (not a row): say so for each
            error = RuntimeError(f"Spark job failed (rows {[t.index for t, _ in batch]}): {exc}")
            for _, future in batch:
                future.set_exception(error)
        else:
            for (_, future), attempt in zip(batch, attempts, strict=True):
                future.set_result(attempt)
        finally:
            with self._changed:
                self._running -= 1
                self._changed.notify_all()

    def run_job(self, tasks: Sequence[RowTask]) -> list[Attempt]:
        """One Spark job over ``tasks``: their attempts, in order."""
        partitions = min(self.slots, len(tasks))
        threads = -(-self.limit // partitions)  # the job's limit shared by the partitions
        run = _PartitionRun(self.setup, pickle.dumps(list(tasks)), threads)
        frame = self.session.range(0, len(tasks), 1, numPartitions=partitions)
        rows = frame.mapInArrow(run, "id long, attempt binary").collect()
        attempts: dict[int, Attempt] = {row["id"]: pickle.loads(row["attempt"]) for row in rows}
        return [attempts[number] for number in range(len(tasks))]


def _also(outer: NetworkGuard) -> Callable[[], list[str]]:
    # A host the job's guard lets through stays allowed: the Spark guard only adds loopback.
    def hosts() -> list[str]:
        return [*outer.allowed, *(outer.also_allowed() if outer.also_allowed else ())]

    return hosts


# ------------------------------------------------------------- on the executors


class _PartitionRun:
    """What each partition runs (pickled to the executors with the job): the batch's tasks,
    the worker recipe and how many rows a partition runs at once."""

    def __init__(self, setup: WorkerSetup, tasks: bytes, threads: int) -> None:
        self.setup, self.tasks, self.threads = setup, tasks, threads

    def __call__(self, batches: Iterator[Any]) -> Iterator[Any]:
        import pyarrow as pa

        numbers = [number for batch in batches for number in batch.column(0).to_pylist()]
        if not numbers:
            return
        invoke = _worker(self.setup)
        tasks: list[RowTask] = pickle.loads(self.tasks)
        threads = min(self.threads, len(numbers))
        with ThreadPoolExecutor(threads, thread_name_prefix="chainkit-attempt") as pool:
            attempts = list(pool.map(lambda number: attempt_row(invoke, tasks[number]), numbers))
        yield pa.RecordBatch.from_pydict(
            {"id": numbers, "attempt": [pickle.dumps(attempt) for attempt in attempts]},
            schema=pa.schema([("id", pa.int64()), ("attempt", pa.binary())]),
        )


_workers: dict[Any, Invoke] = {}
_workers_lock = threading.Lock()


def _worker(setup: WorkerSetup) -> Invoke:
    """The chain, loaded once per Python worker (Spark reuses them from task to task and job
    to job) under its replay, as a worker process of the process engine starts. A cassette
    changed since (re-recorded) is entered anew."""
    try:
        stat = setup.cassette.stat()
        version: tuple[int, int] | None = (stat.st_mtime_ns, stat.st_size)
    except OSError:
        version = None
    key = (setup, version)
    with _workers_lock:
        if key not in _workers:
            _workers[key] = _start_worker(setup)
        return _workers[key]


__all__ = ["DEFAULT_MASTER", "SparkEngine", "check_spark", "find_java", "spark_session"]
