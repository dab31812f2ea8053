"""Batch evaluation: a chain over a dataset, live or replayed, scored, with the results in MLflow.

Built on what measures well here (DESIGN field note 10): each row is attempted through an
engine (:mod:`toolkit.engines`: today threads, each attempt calling the chain's synchronous
``invoke`` in a worker thread; :mod:`toolkit.attempt` is the picklable seam a process pool or
Spark plugs into), scheduled by asyncio, at most ``concurrency`` at a time (an AIMD limit that
halves under 429s and climbs back), instead of ``mlflow.genai.evaluate``, whose cost per row
grows with the run. Retries, scoring, accounting and the journal stay here, in the parent.
Each finished row goes to a SQLite journal at once; ``--resume RUN_ID`` skips those rows, so a
job killed at any moment loses no finished row and repeats no API call for one.

At the end, one MLflow run per chain holds: metrics ``<scorer>/<aggregation>`` (also attached
to the evaluated LoggedModel), the per-row table (``eval_results_table.json``, the artifact
MLflow's UI shows, up to 10,000 rows; every row in ``eval_results.jsonl``), and tags tying the
result to the dataset's and the cassette's sha256.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import hashlib
import json
import os
import time
import traceback
import warnings
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from toolkit.attempt import RowTask, described
from toolkit.cassette import file_sha256
from toolkit.datasets import Row, count_rows, file_digest, read_rows
from toolkit.discovery import discover
from toolkit.engines import ENGINES, Engine, ProcessEngine, ThreadEngine, WorkerSetup
from toolkit.errors import DatasetError, UsageError
from toolkit.eval_results import EvalSummary, Totals, finish_run
from toolkit.exchanges import Exchange
from toolkit.journal import Journal
from toolkit.loading import on_sys_path
from toolkit.matching import replay_scope
from toolkit.packaging import EXPERIMENT, quiet_mlflow, use_tracking
from toolkit.progress import Progress
from toolkit.project import Project
from toolkit.ratelimit import AdaptiveLimit, backoff
from toolkit.record_mode import allowed_hosts_from_environment
from toolkit.redaction import redact_span, scrub
from toolkit.replay import RecordMode, use_cassette
from toolkit.resume import (
    LATEST_RUN,
    check_resume,
    latest_unfinished_run,
    pin_dataset,
    resumed_run,
    run_settings,
)
from toolkit.scorers import MEASURES, Aggregate, ScorerCalls, calls_an_llm, resolve, score
from toolkit.session import CassetteSession, answering
from toolkit.targets import Target, chain_target, model_target

if TYPE_CHECKING:
    from toolkit.batch_rounds import BatchOptions

DEFAULT_CONCURRENCY = 8  # polite for a hosted API's default rate limits
MAX_ATTEMPTS = 6
#: USD per million tokens (input, output); override with --prices FILE.json.
DEFAULT_PRICES: dict[str, tuple[float, float]] = {
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4o": (2.50, 10.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1": (2.00, 8.00),
    "gpt-3.5-turbo-instruct": (1.50, 2.00),
    "text-embedding-3-small": (0.02, 0.0),
    "text-embedding-3-large": (0.13, 0.0),
}

@dataclass
class EvalOptions:
    data: Path
    concurrency: int = DEFAULT_CONCURRENCY
    record_mode: str | None = None
    resume: str | None = None
    scorers: Sequence[str] = ()
    aggregations: Sequence[str] = ("mean",)
    prices: Mapping[str, tuple[float, float]] = field(default_factory=lambda: dict(DEFAULT_PRICES))
    tracking_uri: str | None = None
    allow_hosts: Sequence[str] = ()
    progress: bool = False
    trace: bool = False  # a trace per row (LangChain autologged inside), scores attached
    #: Where rows run: "threads" (this process) or "processes" (``workers`` of them, default:
    #: the CPU count), see toolkit.engines.
    engine: str = "threads"
    workers: int | None = None
    #: Where --engine spark runs (default: local[*]; $SPARK_REMOTE, where set, wins).
    spark_master: str = "local[*]"
    #: The MLflow experiment (default: $MLFLOW_EXPERIMENT_NAME, else "chainkit").
    experiment: str | None = None
    #: The run's name (default: ``<chain>-<dataset>-<time>``, one name per run).
    run_name: str | None = None
    #: Called with the run id as soon as the run exists (the CLI prints it: a Ctrl-C or a
    #: kill later leaves the user the id that ``--resume`` needs).
    on_start: Callable[[str], None] | None = None
    #: Through OpenAI's Batch API (``--batch-api``): rows run in rounds, their requests
    #: answered in batches at batch prices (toolkit.batch_rounds); None: the engine above.
    batch: BatchOptions | None = None


# ------------------------------------------------------------------------------ one row


def cost_of(exchanges: Iterable[Exchange], prices: Mapping[str, tuple[float, float]]) -> float:
    total = 0.0
    for exchange in exchanges:
        model = next(
            (name for name in sorted(prices, key=len, reverse=True) if exchange.model.startswith(name)), None
        )
        if model is not None:
            price_in, price_out = prices[model]
            total += (exchange.prompt_tokens * price_in + exchange.completion_tokens * price_out) / 1e6
    return total


class RowRunner:
    """Runs one row: its attempts (through the engine) under the adaptive limit, with retries;
    then scores it, accounts for it and journals it. The parent half of the engine seam."""

    def __init__(
        self,
        engine: Engine,
        scorers: Sequence[Any],
        limit: AdaptiveLimit,
        journal: Journal,
        prices: Mapping[str, tuple[float, float]],
        progress: Progress,
        trace: bool = False,
        judges: CassetteSession | None = None,
    ) -> None:
        self.engine, self.trace = engine, trace
        #: Where the LLM judges' calls are recorded and replayed (apart from the chain's).
        self.judges = judges
        self.scorers, self.limit = scorers, limit
        self.journal, self.prices, self.progress = journal, prices, progress

    async def run(self, row: Row, scope: str | None = None) -> None:
        """``scope`` names the row for replay (see ``row_scopes``): its calls are matched to
        its own recordings, in its own order, whatever runs beside it."""
        task = RowTask(row.index, row.inputs, scope or f"row-{row.index}", self.trace)
        exchanges: list[Exchange] = []
        for number in range(1, MAX_ATTEMPTS + 1):
            async with self.limit.slot():
                attempt = await self.engine.attempt(task)
            exchanges += attempt.exchanges
            if attempt.ok or not attempt.retryable or number == MAX_ATTEMPTS:
                break
            pause = backoff(number, attempt.retry_after)
            if attempt.status == 429:
                await self.limit.throttled(pause)
            await asyncio.sleep(pause)
        if attempt.ok:
            await self.limit.succeeded()
        scores: dict[str, Any] = {}
        scorer_errors: dict[str, BaseException] = {}  # a scorer that raised: only its score is lost
        judges: dict[str, ScorerCalls] = {}  # the requests each judge made, apart from the chain's
        if attempt.ok:  # a judge call the cassette does not hold raises: the job stops, clearly
            scores = await self._score(row, attempt.output, task.scope, scorer_errors, judges)
        prompt = sum(e.prompt_tokens for e in exchanges)
        completion = sum(e.completion_tokens for e in exchanges)
        tracebacks = [attempt.traceback or ""]
        tracebacks += ["".join(traceback.format_exception(exc)) for exc in scorer_errors.values()]
        result = {
            "index": row.index,
            "inputs": row.inputs,
            "output": attempt.output,
            "expectations": row.expectations,
            "scores": scores,
            "latency": round(attempt.latency, 6),
            "token_usage": prompt + completion,
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "cost_usd": cost_of(exchanges, self.prices),
            "replayed": None if not exchanges else all(e.replayed for e in exchanges),
            "live_calls": sum(not e.replayed for e in exchanges),
            "attempts": number,
            "error": attempt.error,
            "scorer_errors": {name: described(exc) for name, exc in scorer_errors.items()},
            "traceback": "".join(tracebacks) or None,
            "trace_id": attempt.trace_id,
        }
        if judges:
            result["judges"] = {name: self._judge_summary(calls) for name, calls in judges.items()}
        self.journal.write(row.index, result)
        self.progress.update(result)

    async def _score(
        self,
        row: Row,
        output: Any,
        scope: str,
        errors: dict[str, BaseException],
        judges: dict[str, ScorerCalls],
    ) -> dict[str, Any]:
        def run() -> dict[str, Any]:
            # In the row's replay scope: a judge's identical calls on identical rows get their
            # own row's recorded answers, whatever the concurrency.
            with (
                answering(self.judges) if self.judges is not None else contextlib.nullcontext(),
                replay_scope(scope),
            ):
                return score(self.scorers, row.inputs, output, row.expectations, errors=errors, calls=judges)

        if self.judges is None or self.limit.ceiling == 1:  # no LLM judge: no thread hop
            return run()
        return await asyncio.to_thread(run)

    def _judge_summary(self, calls: ScorerCalls) -> dict[str, Any]:
        exchanges = calls.exchanges
        return {
            "model": calls.judge or next((e.model for e in exchanges if e.model), None),
            "calls": len(exchanges),
            "prompt_tokens": sum(e.prompt_tokens for e in exchanges),
            "completion_tokens": sum(e.completion_tokens for e in exchanges),
            "cost_usd": cost_of(exchanges, self.prices),
            "live_calls": sum(not e.replayed for e in exchanges),
        }


def _engine(
    options: EvalOptions, target: Target, mode: RecordMode, limit: AdaptiveLimit, project: Project
) -> Engine:
    if options.engine in ("processes", "spark"):
        import mlflow

        setup = WorkerSetup(
            load=target.load,
            cassette=target.cassette,
            record_mode=mode.value,
            allow_hosts=tuple(options.allow_hosts),
            ignore_json_paths=tuple(project.ignore_json_paths),
            tracking_uri=mlflow.get_tracking_uri(),
            trace=options.trace,
            model_id=target.model_id,
        )
        if options.engine == "spark":
            from toolkit.spark_engine import SparkEngine

            return SparkEngine(setup, options.concurrency, master=options.spark_master)
        return ProcessEngine(setup, options.workers, threads=options.concurrency)
    return ThreadEngine(target.load(), inline=limit.ceiling == 1)


def judges_cassette(cassette: Path) -> Path:
    """Where an evaluation's LLM judges' calls are kept: beside the chain's, apart from them
    (re-recording the chain keeps the verdicts; ``--record-mode once`` records a new judge)."""
    return cassette.with_name(f"{cassette.stem}.judges{cassette.suffix}")


@contextlib.contextmanager
def _judge_session(
    scorers: Sequence[Any], cassette: Path, options: EvalOptions, project: Project
) -> Iterator[CassetteSession | None]:
    """The judges' own cassette session, in the job's record mode, if a scorer is an LLM judge."""
    if not any(calls_an_llm(candidate) for candidate in scorers):
        yield None
        return
    session = CassetteSession(  # a session of its own: use_cassette's environment is read here
        judges_cassette(cassette),
        options.record_mode,
        allow_hosts=[*options.allow_hosts, *allowed_hosts_from_environment()],
        client_retries=False,
        ignore_json_paths=project.ignore_json_paths,
    )
    try:
        yield session
    finally:
        session.close()


@contextlib.contextmanager
def tracing(enabled: bool, model_id: str | None) -> Iterator[None]:
    """Every span scrubbed before export while the job runs (a chain may trace on its own);
    with --trace: LangChain autologging on, traces linked to the evaluated model."""
    import mlflow
    from mlflow.tracing.config import get_config

    # As a context manager, configure() restores the processors it found on exit.
    with mlflow.tracing.configure(span_processors=[*get_config().span_processors, redact_span]):
        if not enabled:
            yield
            return
        mlflow.langchain.autolog()
        if model_id:
            mlflow.set_active_model(model_id=model_id)
        try:
            yield
        finally:
            mlflow.langchain.autolog(disable=True)


def row_scopes(rows: Iterable[Row]) -> Iterator[tuple[Row, str]]:
    """Each row with its replay scope: a digest of its inputs and which occurrence of those
    inputs it is in the dataset. Identical rows then each keep their own recordings (the
    server may have answered them differently), and adding other rows changes no scope."""
    seen: dict[str, int] = {}
    for row in rows:
        text = json.dumps(row.inputs, sort_keys=True, ensure_ascii=False, default=str)
        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
        occurrence = seen.get(digest, 0)
        seen[digest] = occurrence + 1
        yield row, f"{digest}#{occurrence}"


async def run_rows(rows: Iterable[Row], runner: RowRunner, journal: Journal, resume: bool) -> int:
    """Run every row not yet journaled; rows stream in, at most 2 x the limit are pending."""
    loop = asyncio.get_running_loop()
    loop.set_default_executor(ThreadPoolExecutor(max_workers=runner.limit.ceiling))
    pending: set[asyncio.Task[None]] = set()
    skipped = 0
    try:
        for row, scope in row_scopes(rows):
            if resume and journal.is_done(row.index):
                skipped += 1
                continue
            while len(pending) >= 2 * runner.limit.ceiling:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    task.result()  # a fatal error (a scorer needing the network) stops the job
            pending.add(asyncio.create_task(runner.run(row, scope)))
        for finished in asyncio.as_completed(pending):
            await finished
    finally:
        for task in pending:
            task.cancel()
    return skipped


_loop: asyncio.AbstractEventLoop | None = None


def event_loop() -> asyncio.AbstractEventLoop:
    """One event loop for every evaluation in the process. langchain-openai caches one async
    HTTP client per base URL for the whole process, and its pooled connections belong to the
    loop that opened them: a second ``asyncio.run`` would reuse them from a closed loop."""
    global _loop
    if _loop is None or _loop.is_closed():
        _loop = asyncio.new_event_loop()
        atexit.register(_loop.close)
    return _loop


def run_to_end(job: Coroutine[Any, Any, int]) -> int:
    """Run ``job`` on the evaluation loop. On Ctrl-C, the rows in flight are cancelled and their
    worker threads let finish while the loop is still open, so that nothing is left to fail
    noisily at exit ("Event loop is closed", coroutines never awaited); then it propagates."""
    loop = event_loop()
    task = loop.create_task(job)
    try:
        return loop.run_until_complete(task)
    except KeyboardInterrupt:
        pending = [other for other in asyncio.all_tasks(loop) if not other.done()]
        for other in pending:
            other.cancel()
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_default_executor())
        raise


# ---------------------------------------------------------------------------- the job


def evaluate(
    project: Project,
    options: EvalOptions,
    *,
    chain: str | None = None,
    model_uri: str | None = None,
    cassette: Path | None = None,
) -> EvalSummary:
    """Evaluate ``chain`` (or the model at ``model_uri``) over ``options.data``."""
    import mlflow

    if options.concurrency < 1:
        raise UsageError("--concurrency must be at least 1")
    if options.engine not in ENGINES:
        raise UsageError(f"unknown engine {options.engine!r}: use {', '.join(ENGINES)}")
    if options.workers is not None and options.workers < 1:
        raise UsageError("--workers must be at least 1")
    if options.batch is not None and options.engine != "threads":
        raise UsageError("--batch-api runs rows in this process's threads: leave out --engine")
    mode = RecordMode.parse(options.record_mode)
    if options.engine == "spark":  # before any run exists: replay only, pyspark and Java present
        from toolkit.spark_engine import check_spark

        check_spark(mode.value)
    with on_sys_path(project.root):  # `--scorer pkg.mod:fn` from the project root, as for chains
        scorers = resolve(options.scorers)
    aggregates = {name: Aggregate(options.aggregations) for name in MEASURES}  # also validates names
    total = count_rows(options.data)  # reads every row: a malformed file fails before any run exists
    if total == 0:
        raise DatasetError(
            f"dataset {options.data} has no rows: add one per line, e.g. "
            '{"inputs": {"question": "..."}, "expectations": {"expected_contains": "..."}}'
        )
    dataset_sha = file_digest(options.data)
    settings = run_settings(mode, dataset_sha, options.scorers, options.aggregations)
    # Batch or direct requests: a batch run's submitted batches are in its journal, so it resumes
    # only as a batch run (and a direct run never as one).
    settings["chainkit.mode"] = "batch" if options.batch is not None else "direct"
    started = time.perf_counter()
    with quiet_mlflow():
        experiment = options.experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or EXPERIMENT
        experiment_id = use_tracking(project, options.tracking_uri, experiment)
        if options.resume == LATEST_RUN:  # `--resume` with no id: the latest unfinished one
            evaluated = f"chain {chain}" if chain is not None else str(model_uri)
            latest = latest_unfinished_run(experiment_id, evaluated, dataset_sha, options.data)
            options = replace(options, resume=latest)
        resumed = resumed_run(options.resume) if options.resume else None
        if chain is not None:
            spec = discover(project.chains_dir).get(chain)
            chain_cassette = cassette or project.cassette_for(chain)  # --cassette is honoured
            if mode is RecordMode.ONCE and not chain_cassette.exists():
                # Logging the chain (below) records its input example into the new cassette;
                # in mode once the whole job still records: the cassette is new to this job.
                mode = RecordMode.NEW_EPISODES
            settings |= {
                "chainkit.evaluated": f"chain {chain}",
                "chainkit.chain_sha256": file_sha256(spec.path) or "",
                "chainkit.cassette": str(chain_cassette),
            }
            check_resume(resumed, settings, options.data)  # before logging: a refused resume logs nothing
            model_id = resumed.data.tags.get("chainkit.model_id") if resumed else None
            target = chain_target(
                project, spec, experiment_id, options.record_mode, model_id, chain_cassette
            )
        elif model_uri is not None:
            target = model_target(project, model_uri, cassette)
            settings |= {"chainkit.evaluated": model_uri, "chainkit.cassette": str(target.cassette)}
            settings |= {"chainkit.model_id": target.model_id} if target.model_id else {}
            check_resume(resumed, settings, options.data)
        else:
            raise UsageError("name a CHAIN or pass --model-uri")
        run = _start_run(mlflow, target, options, mode, dataset_sha, settings)
        run_id = run.info.run_id
        if options.on_start is not None:
            options.on_start(run_id)
        journal = Journal(project.root / ".chainkit" / "runs" / f"{run_id}.sqlite")
        status = "FAILED"
        try:
            pin_dataset(journal, options.data, options.resume, dataset_sha)
            progress = Progress(total, options.progress, done=journal.count())
            limit = AdaptiveLimit(options.concurrency)
            if options.batch is not None:  # rounds, each with its own cassette session
                from toolkit.batch_rounds import RoundsJob, run_rounds

                job = RoundsJob(options.batch, project, options, target, scorers, limit, journal, progress)
                skipped = run_rounds(job)
            else:
                with (
                    # client_retries=False: the row runner's retries are the one policy (AIMD,
                    # retry-after); the client's own would multiply them (3 x 6 attempts a row).
                    use_cassette(
                        target.cassette,
                        mode,
                        allow_hosts=options.allow_hosts,
                        client_retries=False,
                        ignore_json_paths=project.ignore_json_paths,
                    ),
                    tracing(options.trace, target.model_id),
                    _judge_session(scorers, target.cassette, options, project) as judges,
                ):
                    engine = _engine(options, target, mode, limit, project)
                    try:
                        runner = RowRunner(
                            engine, scorers, limit, journal, options.prices, progress, options.trace, judges
                        )
                        rows = read_rows(options.data)
                        skipped = run_to_end(run_rows(rows, runner, journal, options.resume is not None))
                    finally:
                        engine.close()  # the workers' recordings are saved before the run is finished
            progress.finish()
            summary = _finish(mlflow, journal, target, run_id, aggregates, options, skipped, limit, started)
            status = "FINISHED"
            return summary
        except KeyboardInterrupt:
            status = "KILLED"
            raise
        finally:
            journal.close()
            mlflow.end_run(status=status)


def _start_run(
    mlflow: Any,
    target: Target,
    options: EvalOptions,
    mode: RecordMode,
    dataset_sha: str,
    settings: Mapping[str, str],
) -> Any:
    if options.resume:
        return mlflow.start_run(run_id=options.resume)
    from toolkit import __version__

    tags = {
        "chainkit.chain": target.name,
        "chainkit.dataset": str(options.data),
        "chainkit.dataset_sha256": dataset_sha,
        "chainkit.cassette": str(target.cassette),
        "chainkit.record_mode": mode.value,
        "chainkit.version": __version__,
    }
    if target.model_id:
        tags["chainkit.model_id"] = target.model_id
    tags |= settings  # what a --resume of this run must match
    name = scrub(options.run_name or default_run_name(target.name, options.data))[0]
    run = mlflow.start_run(run_name=name, tags=scrub(tags)[0])
    mlflow.log_params(scrub({"concurrency": options.concurrency, "dataset": options.data.name})[0])
    log_dataset(mlflow, options.data, dataset_sha)
    return run


def default_run_name(evaluated: str, data: Path) -> str:
    """``qa-qa-20261202-111502``: what was evaluated, on which dataset, when (runs of one chain
    on one dataset stay apart in the MLflow UI)."""
    name = evaluated.rsplit("/", 1)[-1].replace(":", "-").replace("@", "-")
    return f"{name}-{data.stem}-{time.strftime('%Y%m%d-%H%M%S')}"


def log_dataset(mlflow: Any, data: Path, digest: str) -> None:
    """The dataset as the run's MLflow dataset input (name, digest, source), as
    ``mlflow.genai.evaluate`` logs it: "Datasets" in the UI names it, not a tag alone."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    path: str = scrub(str(data.resolve()))[0]  # a secret in a folder name stays out of MLflow
    with warnings.catch_warnings():  # "can be interpreted in multiple ways": both are local files
        warnings.simplefilter("ignore")
        source = resolve_dataset_source(path)
    dataset = MetaDataset(source, name=Path(path).name, digest=digest[:16])  # type: ignore[abstract]
    mlflow.log_input(dataset, context="evaluation")


def _finish(
    mlflow: Any,
    journal: Journal,
    target: Target,
    run_id: str,
    aggregates: dict[str, Aggregate],
    options: EvalOptions,
    skipped: int,
    limit: AdaptiveLimit,
    started: float,
) -> EvalSummary:
    totals = Totals(aggregates, options.aggregations)
    metrics, cassette_sha = finish_run(
        mlflow, journal, totals, model_id=target.model_id, cassette=target.cassette, trace=options.trace
    )
    return EvalSummary(
        target.name,
        run_id,
        target.model_id,
        totals.rows,
        totals.errors,
        totals.replayed,
        totals.live,
        skipped,
        metrics,
        totals.tokens,
        round(totals.cost, 6),
        cassette_sha,
        round(time.perf_counter() - started, 3),
        limit.history,
        totals.scorer_errors,
        totals.failures,
        totals.failures_not_shown,
    )


def datasets_for(project: Project) -> dict[str, Path]:
    """Chains that have a dataset: ``datasets/<chain>.jsonl`` (or .csv, .parquet)."""
    found = {}
    for spec in discover(project.chains_dir).chains:
        for suffix in (".jsonl", ".csv", ".parquet"):
            path = project.datasets_dir / f"{spec.name}{suffix}"
            if path.is_file():
                found[spec.name] = path
                break
    return found


__all__ = ["EvalOptions", "EvalSummary", "datasets_for", "evaluate"]
