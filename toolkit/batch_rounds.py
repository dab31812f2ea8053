"""The Batch API as an evaluation engine: rows run in rounds, their requests answered in batches.

In each round every unfinished row runs with the cassette replaying what it holds; a request it
does not hold (to a Batch API endpoint on api.openai.com) is not sent but *deferred*: the
session's ``defer`` hook raises :class:`RequestDeferred` and the row stops, pending (its
attempt is not journaled). The round's deferred requests, deduplicated by their matching key
(identical requests across rows are one line), become one batch per endpoint
(:mod:`toolkit.batch_api`); once the batches are final their answers are recorded into the
cassette, and the next round replays them and goes one call further. A row with k dependent
calls finishes in round k (+1 to replay the last answer); a row that needs nothing more
finishes like any replayed row: scored, accounted and journaled by the ordinary
:class:`~toolkit.evaluation.RowRunner`, so MLflow sees an ordinary evaluation run, tagged
``chainkit.mode = batch``.

Streaming: a request with ``stream: true`` is refused with an error naming the chain (the Batch
API answers whole bodies; synthesising the stream's events is not built).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from toolkit.attempt import Attempt, Invoke, RowTask, attempt_row
from toolkit.batch_api import (
    API_HOST,
    MAX_LINES,
    BatchClient,
    BatchLedger,
    BatchRecord,
    answer_of,
    batch_endpoint,
    custom_id,
    poll,
    results,
)
from toolkit.cassette import (
    Cassette,
    Interaction,
    RecordedRequest,
    RecordedResponse,
    encode_body,
    recorder_versions,
)
from toolkit.datasets import Row, read_rows
from toolkit.errors import RequestRefusedError, UsageError
from toolkit.exchanges import Exchange
from toolkit.journal import Journal
from toolkit.matching import current_scope, ignoring, parse_json_path, request_key
from toolkit.progress import Progress
from toolkit.project import Project
from toolkit.ratelimit import AdaptiveLimit
from toolkit.recording_log import folder_lock, merge, open_cassette
from toolkit.redaction import kept_response_headers

if TYPE_CHECKING:
    from toolkit.evaluation import EvalOptions, RowRunner
    from toolkit.targets import Target

FALLBACKS = ("next-round", "live")


@dataclass(frozen=True)
class BatchOptions:
    """How ``chainkit eval --batch-api`` submits and waits."""

    #: What happens to requests a batch did not answer (expired, failed): sent again in the
    #: next round's batch, or sent live at once (live prices).
    fallback: str = "next-round"
    base_url: str | None = None  # the Batch API's (default: see toolkit.batch_api.base_url)
    poll_interval: float = 5.0  # seconds before the first retrieve; then x1.5 up to the max
    max_poll_interval: float = 120.0
    #: Rounds before the job gives up on rows still pending (a request that changes every
    #: round: time or randomness in it).
    max_rounds: int = 20
    #: Batches a request may fail in (next-round) before its rows fail with the reason.
    max_submissions: int = 3
    hosts: tuple[str, ...] = (API_HOST,)
    #: Progress lines (batch states, counts); None: silent.
    report: Callable[[str], None] | None = None

    def __post_init__(self) -> None:
        if self.fallback not in FALLBACKS:
            raise UsageError(f"unknown --batch-fallback {self.fallback!r}: use {' or '.join(FALLBACKS)}")


# ------------------------------------------------------------------- deferring in the session


class RequestDeferred(RequestRefusedError):  # noqa: N818 - a deferral, not a failure
    """A request no recording answers, left for the next batch: the row stops, pending.

    A :class:`RequestRefusedError`, so that the OpenAI client passes it through unretried."""

    def __init__(self, message: str, *, request: RecordedRequest | None = None, key: str = "") -> None:
        super().__init__(message)
        self.request, self.key = request, key


class BatchRequestError(RequestRefusedError):
    """A request the Batch API failed to answer too often: the rows that need it fail."""


class Deferrals:
    """A round's ``defer`` hook for the cassette session: what it deferred, and for which rows."""

    def __init__(self, hosts: Iterable[str], given_up: Mapping[str, str]) -> None:
        self.hosts, self.given_up = tuple(hosts), given_up
        self.requests: dict[str, RecordedRequest] = {}
        self.scopes: set[str] = set()
        self.outside_rows = 0  # deferred while no row ran (loading the chain)
        self.streamed: RecordedRequest | None = None
        self._lock = threading.Lock()

    def __call__(self, key: str, sent: RecordedRequest) -> BaseException | None:
        if batch_endpoint(sent, self.hosts) is None:
            return None  # not the Batch API's: the record mode decides, as without --batch-api
        line = custom_id(key)
        if line in self.given_up:
            return BatchRequestError(
                f"the Batch API did not answer {sent.method} {sent.url} (custom_id {line}): "
                f"{self.given_up[line]}; run again with --batch-fallback live, or without --batch-api"
            )
        body = sent.body.get("json")
        scope = current_scope()
        with self._lock:
            if isinstance(body, dict) and body.get("stream"):
                self.streamed = self.streamed or sent
            else:
                self.requests.setdefault(key, sent)
            if scope is not None:
                self.scopes.add(scope.name)
            else:
                self.outside_rows += 1
        return RequestDeferred(
            f"{sent.method} {sent.url} is deferred to the Batch API (custom_id {line})", request=sent, key=key
        )


class RowPending(Exception):  # noqa: N818 - control flow: the row runs again
    """A row stopped at a deferred request: it runs again next round."""


@dataclass
class Costs:
    """What the finished rows cost at batch rates, and would have cost live."""

    live_prices: Mapping[str, tuple[float, float]]
    prices: Mapping[str, tuple[float, float]]
    live: float = 0.0
    batch: float = 0.0

    def add(self, exchanges: Sequence[Exchange]) -> None:
        from toolkit.evaluation import cost_of

        self.live += cost_of(exchanges, self.live_prices)
        self.batch += cost_of(exchanges, self.prices)


class DeferringEngine:
    """The threads engine, except that a row which deferred a request raises
    :class:`RowPending` instead of returning its attempt (so the runner neither scores nor
    journals it). Known by its scope, not by the error: a chain that catches the deferral
    (a fallback, a tool loop) still counts as pending."""

    name = "batch"

    def __init__(self, invoke: Invoke, deferrals: Deferrals, costs: Costs, *, inline: bool) -> None:
        self.chain, self.deferrals, self.costs, self.inline = invoke, deferrals, costs, inline

    def invoke(self, inputs: Any) -> Any:
        """The chain's invoke; a row that deferred ends with a bare :class:`RowPending` instead
        of the chain's error: its deep traceback (through the client and LangChain) is not
        formatted for a row that will run again (that made round 1 cost 2-3 replayed rows)."""
        try:
            return self.chain(inputs)
        except Exception:
            scope = current_scope()
            if scope is None or scope.name not in self.deferrals.scopes:
                raise
        raise RowPending(inputs)  # outside the except block: no context chained to it

    async def attempt(self, task: RowTask) -> Attempt:
        if self.inline:
            attempt = attempt_row(self.invoke, task)
        else:
            attempt = await asyncio.to_thread(attempt_row, self.invoke, task)
        if task.scope in self.deferrals.scopes or self.deferrals.streamed is not None:
            raise RowPending(task.index)
        self.costs.add(attempt.exchanges)
        return attempt

    def close(self) -> None:
        pass


async def run_round(rows: Iterable[Row], runner: RowRunner, journal: Journal) -> tuple[int, int]:
    """Run every row not journaled yet: (finished, pending)."""
    from toolkit.evaluation import row_scopes

    async def one(row: Row, scope: str) -> bool:
        try:
            await runner.run(row, scope)
        except RowPending:
            return True
        return False

    tasks: set[asyncio.Task[bool]] = set()
    finished = pending = 0

    def count(done: Iterable[asyncio.Task[bool]]) -> None:
        nonlocal finished, pending
        for task in done:
            if task.result():
                pending += 1
            else:
                finished += 1

    finished_rows = journal.done()
    try:
        for row, scope in row_scopes(rows):
            if row.index in finished_rows:
                continue
            while len(tasks) >= 2 * runner.limit.ceiling:
                done, tasks = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                count(done)
            tasks.add(asyncio.create_task(one(row, scope)))
        if tasks:
            done, tasks = await asyncio.wait(tasks)
            count(done)
    finally:
        for task in tasks:
            task.cancel()
    return finished, pending


# ------------------------------------------------------------------------------ the rounds


@dataclass
class RoundsJob:
    """One chain's evaluation through the Batch API (what ``evaluate`` hands over)."""

    batch: BatchOptions
    project: Project
    options: EvalOptions
    target: Target
    scorers: Sequence[Any]
    limit: AdaptiveLimit
    journal: Journal
    progress: Progress
    ledger: BatchLedger = field(init=False)
    client: BatchClient | None = None

    def __post_init__(self) -> None:
        self.ledger = BatchLedger(self.journal)

    def report(self, line: str) -> None:
        if self.batch.report is not None:
            self.batch.report(line)

    def api(self) -> BatchClient:
        if self.client is None:  # only when something is to be sent: a replayable job needs no key
            self.client = BatchClient(self.batch.base_url)
        return self.client


def run_rounds(job: RoundsJob) -> int:
    """Evaluate every row through rounds of batches (see the module docstring); the number of
    rows already finished when it started (a resumed run's)."""

    from toolkit.evaluation import _judge_session, run_to_end, tracing
    from toolkit.replay import use_cassette

    options, target, ledger = job.options, job.target, job.ledger
    skipped = job.journal.count()
    from toolkit.batch_plan import batch_prices

    costs = Costs(options.prices, batch_prices(options.prices))
    costs.live, costs.batch = ledger.stats.get("cost_live", 0.0), ledger.stats.get("cost_batch", 0.0)
    # A resumed job first finishes what it submitted (polling, never submitting again).
    settle(job, [record for record in ledger.records if not record.settled])
    invoke: Invoke | None = None
    number = ledger.rounds
    while True:
        number += 1
        if number > ledger.rounds + job.batch.max_rounds:
            raise UsageError(
                f"chain {target.name}: rows still wait for new requests after {job.batch.max_rounds} rounds "
                "(a request that changes each time: time or randomness in the prompt?); evaluate it "
                "without --batch-api"
            )
        deferrals = Deferrals(job.batch.hosts, given_up(ledger, job.batch.max_submissions))
        finished = pending = 0
        with (
            use_cassette(
                target.cassette,
                "none",
                allow_hosts=options.allow_hosts,
                client_retries=False,
                ignore_json_paths=job.project.ignore_json_paths,
                defer=deferrals,
            ),
            tracing(options.trace, target.model_id),
            _judge_session(job.scorers, target.cassette, options, job.project) as judges,
        ):
            if invoke is None:
                invoke = _load(target, deferrals)
            if invoke is not None:
                from toolkit.evaluation import RowRunner

                engine = DeferringEngine(invoke, deferrals, costs, inline=job.limit.ceiling == 1)
                runner = RowRunner(
                    engine,
                    job.scorers,
                    job.limit,
                    job.journal,
                    costs.prices,
                    job.progress,
                    options.trace,
                    judges,
                )
                before = job.journal.count()
                pending = run_to_end(_round(read_rows(options.data), runner, job.journal))
                finished = job.journal.count() - before
        ledger.stats |= {"cost_live": costs.live, "cost_batch": costs.batch}
        ledger.save()
        if deferrals.streamed is not None:
            sent = deferrals.streamed
            raise UsageError(
                f"chain {target.name} streams its calls ({sent.method} {sent.url} has stream: true); the "
                "Batch API answers whole bodies, not streams: evaluate it without --batch-api, or turn "
                "streaming off in the chain"
            )
        if not deferrals.requests:
            break
        job.report(
            f"round {number}: {finished} rows finished, {pending} pending"
            + (" (the chain's loading waits too)" if invoke is None else "")
            + f"; {len(deferrals.requests)} distinct requests to submit"
        )
        records = submit(job, number, deferrals.requests)
        settle(job, records)
    _log_batch_run(job, costs, number)
    return skipped


async def _round(rows: Iterable[Row], runner: RowRunner, journal: Journal) -> int:
    loop = asyncio.get_running_loop()
    loop.set_default_executor(ThreadPoolExecutor(max_workers=runner.limit.ceiling))
    return (await run_round(rows, runner, journal))[1]  # pending rows (finished: in the journal)


def _load(target: Target, deferrals: Deferrals) -> Invoke | None:
    """The chain's invoke, or None when loading it needs an answer still to batch (an
    embedded corpus): it loads again next round."""
    before = deferrals.outside_rows
    try:
        return target.load()
    except Exception:
        if deferrals.outside_rows > before:
            return None
        raise


def given_up(ledger: BatchLedger, limit: int) -> dict[str, str]:
    return {
        line: str(failure.get("reason"))
        for line, failure in ledger.failures.items()
        if isinstance(failure, dict) and int(failure.get("count", 0)) >= limit
    }


def submit(job: RoundsJob, number: int, requests: Mapping[str, RecordedRequest]) -> list[BatchRecord]:
    """Write, then upload and create, one batch per endpoint (per 50,000 lines)."""
    by_endpoint: dict[str, dict[str, RecordedRequest]] = {}
    for key, request in requests.items():
        endpoint = batch_endpoint(request, job.batch.hosts)
        assert endpoint is not None  # only batchable requests are deferred
        by_endpoint.setdefault(endpoint, {})[key] = request
    records = []
    for endpoint, group in sorted(by_endpoint.items()):
        keys = list(group)
        for start in range(0, len(keys), MAX_LINES):
            chunk = {key: group[key] for key in keys[start : start + MAX_LINES]}
            records.append(job.ledger.prepare(number, endpoint, chunk))
    return records


def settle(job: RoundsJob, records: list[BatchRecord]) -> None:
    """Bring each batch to its end: upload and create what is not yet (a batch a killed job
    may have created is looked up first), poll, record the answers, deal with the failures."""
    if not records:
        return
    ledger, client = job.ledger, job.api()
    run_id = job.journal.path.stem
    for record in records:
        if record.status == "prepared":
            record.input_file_id = client.upload(f"{record.name}.jsonl", ledger.input_file(record))
            record.status = "uploaded"
            ledger.save()
        metadata = {"chainkit_batch": f"{run_id}/{record.name}"}
        if record.status == "creating":  # killed between create and its note: did it happen?
            found = client.find(metadata)
            if found is not None:
                record.id, record.status = str(found["id"]), str(found["status"])
                ledger.save()
            else:
                record.status = "uploaded"
        if record.status == "uploaded":
            assert record.input_file_id is not None
            record.status = "creating"
            ledger.save()
            created = client.create(record.input_file_id, record.endpoint, metadata)
            record.id, record.status = str(created["id"]), str(created["status"])
            ledger.save()
            job.report(f"batch {record.id} submitted: {record.requests} requests to {record.endpoint}")
    poll(
        client,
        records,
        ledger,
        interval=job.batch.poll_interval,
        max_interval=job.batch.max_poll_interval,
        report=job.report,
    )
    _record(job, records)


def _record(job: RoundsJob, records: list[BatchRecord]) -> None:
    """The final batches' answers into the cassette; the requests they did not answer counted
    as failures (submitted again next round), or sent live (``--batch-fallback live``)."""
    ledger, client = job.ledger, job.api()
    answers: list[Interaction] = []
    failed: dict[str, tuple[RecordedRequest, str]] = {}
    for record in records:
        requests = ledger.requests(record)
        answered: set[str] = set()
        for line in results(client, record):
            request = requests.get(line.custom_id)
            if request is None:
                continue
            if line.error is not None or line.status is None:
                failed[line.custom_id] = (request, line.error or "no answer")
                continue
            answered.add(line.custom_id)
            answers.append(Interaction(request, answer_of(line)))
        reason = f"batch {record.id} ended {record.why or record.status}"
        for line_id, request in requests.items():
            if line_id not in answered and line_id not in failed:
                failed[line_id] = (request, reason)
        record.failed = len(requests) - len(answered)
    for line_id, (request, reason) in failed.items():
        if job.batch.fallback == "live":
            status, content, headers = client.send_live(request)
            if status < 400:
                answers.append(Interaction(request, answer_of_live(status, content, headers)))
                ledger.stats["live_fallback"] = ledger.stats.get("live_fallback", 0) + 1
                continue
            reason = f"{reason}; sent live: HTTP {status}"
        entry = ledger.failures.get(line_id) or {"count": 0}
        ledger.failures[line_id] = {"count": int(entry["count"]) + 1, "reason": reason}
    save_answers(job.target.cassette, answers, job.project.ignore_json_paths)
    if failed:
        job.report(
            f"{len(failed)} requests unanswered by the batch"
            + (
                " sent live"
                if job.batch.fallback == "live"
                else f": submitted again next round (in at most {job.batch.max_submissions} batches)"
            )
        )
    for record in records:
        record.status = "recorded"
    ledger.save()


def save_answers(path: Path, answers: Sequence[Interaction], ignore_json_paths: Sequence[str]) -> None:
    """Add ``answers`` to the cassette at ``path`` in one atomic save, leaving out requests it
    already answers (a resumed job downloads a batch's output again). No per-answer fsync'd
    log as a live recording gets: the batch's output stays on the API until it is saved here."""
    if not answers:
        return
    ignored = tuple(parse_json_path(json_path) for json_path in ignore_json_paths)
    open_cassette(path)  # what killed sessions left beside it, folded in first (its own lock)
    with folder_lock(path):
        cassette = Cassette.load(path)
        known = {request_key(ignoring(i.request, ignored)) for i in cassette.interactions}
        new = []
        for interaction in answers:
            key = request_key(ignoring(interaction.request, ignored))
            if key not in known:
                known.add(key)
                new.append(interaction)
        cassette.interactions, _ = merge(cassette.interactions, new, replace=False)
        cassette.recorded_with = recorder_versions()
        cassette.save()


def answer_of_live(status: int, content: bytes, headers: Mapping[str, str]) -> RecordedResponse:
    return RecordedResponse(status, kept_response_headers(headers), encode_body(content))


def _log_batch_run(job: RoundsJob, costs: Costs, rounds: int) -> None:
    """What the MLflow run records of the Batch API: mode, batch ids, rounds, cost vs live."""
    import mlflow

    records = job.ledger.records
    submitted = sum(record.requests for record in records)
    distinct = len({line for record in records for line in job.ledger.requests(record)})
    ids = [record.id for record in records if record.id]
    job.ledger.stats |= {"submitted": submitted, "distinct": distinct}
    job.ledger.save()
    # The cost at batch rates is the journal's (every row, a resumed run's too); the live
    # estimate scales it by what the rows this process finished cost both ways.
    batch_cost = sum(float(row.get("cost_usd") or 0.0) for row in job.journal.results())
    live_cost = batch_cost * (costs.live / costs.batch) if costs.batch else costs.live
    mlflow.set_tags(
        {
            "chainkit.batch_ids": ",".join(ids)[:5000],
            "chainkit.batch_rounds": str(rounds),
            "chainkit.batch_fallback": job.batch.fallback,
        }
    )
    mlflow.log_metrics(
        {
            "batch/rounds": rounds,
            "batch/batches": len(ids),
            "batch/requests_submitted": submitted,
            "batch/requests_distinct": distinct,
            "batch/live_fallback_requests": job.ledger.stats.get("live_fallback", 0),
            "batch/cost_usd": round(batch_cost, 6),
            "batch/cost_usd_live_estimate": round(live_cost, 6),
        }
    )
    mlflow.log_dict({"batches": [vars(record) for record in records]}, "batches.json")
    job.report(
        f"batch: {rounds} round(s), {len(ids)} batch(es), {submitted} requests submitted "
        f"({distinct} distinct); ~${batch_cost:.4f} at batch rates vs ~${live_cost:.4f} live"
    )


def batch_options(
    batch_api: bool, fallback: str | None, dry_run: bool, report: Callable[[str], None] | None = None
) -> BatchOptions | None:
    """The command line's batch flags as options (None: not through the Batch API)."""
    if not batch_api:
        for flag, given in (("--batch-fallback", fallback is not None), ("--dry-run", dry_run)):
            if given:
                raise UsageError(f"{flag} needs --batch-api")
        return None
    return BatchOptions(fallback=fallback or "next-round", report=report)


__all__ = [
    "FALLBACKS",
    "BatchOptions",
    "BatchRequestError",
    "Deferrals",
    "DeferringEngine",
    "RequestDeferred",
    "RoundsJob",
    "batch_options",
    "run_rounds",
]
