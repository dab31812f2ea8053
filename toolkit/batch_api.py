"""OpenAI's Batch API as chainkit uses it: input files, submitted batches, their ledger.

:class:`BatchClient` speaks to the Files and Batches endpoints through the real ``openai``
client (upload, create, retrieve, download, cancel), plus a plain live POST for the
``--batch-fallback live`` path. :class:`BatchLedger` keeps every batch a job submitted, and its
state, in the job's journal (``meta`` key ``batches``), written before and after each step, so
that a job killed at any moment resumes by polling what it already submitted instead of
submitting it again. The rounds that decide what to submit are in :mod:`toolkit.batch_rounds`.

Requests are identified by their matching key (:func:`toolkit.matching.request_key`): the
``custom_id`` of a batch line is a digest of that key, so identical requests from different
rows are one line, and an answer is recorded against exactly the request the rows will replay.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit

from toolkit.cassette import RecordedRequest, RecordedResponse, decode_body, encode_body
from toolkit.errors import ChainkitError, UsageError
from toolkit.journal import Journal
from toolkit.record_mode import RECORD_VIA_VARIABLE
from toolkit.redaction import check_no_secrets

#: The endpoints the Batch API accepts that chainkit batches (their path on the API host).
BATCH_ENDPOINTS = ("/v1/chat/completions", "/v1/responses", "/v1/embeddings", "/v1/completions")
#: Where requests are batched when their URL names this host (cassettes keep the real URLs).
API_HOST = "api.openai.com"
DEFAULT_BASE_URL = "https://api.openai.com/v1"
#: The Batch API's limit of lines per input file.
MAX_LINES = 50_000
#: States after which a batch changes no more.
FINAL_STATES = frozenset({"completed", "expired", "failed", "cancelled"})


class BatchError(ChainkitError):
    """The Batch API refused or lost a batch in a way the job cannot go on from."""


def custom_id(key: str) -> str:
    """A batch line's id: a digest of the request's matching key (identical requests share it)."""
    return "ck-" + hashlib.sha256(key.encode("utf-8")).hexdigest()[:40]


def batch_endpoint(request: RecordedRequest, hosts: Iterable[str] = (API_HOST,)) -> str | None:
    """The Batch API endpoint that can answer ``request``, or None (another host, or a method
    or path the Batch API does not take)."""
    parts = urlsplit(request.url)
    if (
        request.method.upper() != "POST"
        or (parts.hostname or "") not in set(hosts)
        or "json" not in request.body
    ):
        return None
    path = parts.path.rstrip("/")
    return path if path in BATCH_ENDPOINTS else None


def base_url(explicit: str | None = None) -> str:
    """The Batch API's base URL: ``explicit``, else $CHAINKIT_RECORD_VIA (where chainkit sends
    live traffic: a gateway, or a loopback fake in tests) + /v1, else $OPENAI_BASE_URL, else
    api.openai.com."""
    if explicit:
        return explicit.rstrip("/")
    via = os.environ.get(RECORD_VIA_VARIABLE)
    if via:
        return via.rstrip("/") + "/v1"
    return (os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")


# ------------------------------------------------------------------------------ the client


@dataclass(frozen=True)
class LineResult:
    """One answered (or failed) line of a batch's output or error file."""

    custom_id: str
    status: int | None  # the HTTP status the endpoint answered; None: never executed
    body: Any  # the endpoint's JSON answer
    request_id: str | None
    error: str | None  # why there is no answer (expired, the endpoint's error message)


class BatchClient:
    """The Files and Batches endpoints through the ``openai`` client (its own retries on 429/5xx).

    Called between rounds, with no cassette active: these calls are the job's own, never
    recorded."""

    def __init__(self, url: str | None = None, api_key: str | None = None) -> None:
        import openai

        key = api_key or os.environ.get("OPENAI_API_KEY")
        if not key:
            raise UsageError(
                "--batch-api submits batches to the OpenAI API: set OPENAI_API_KEY (it is never written "
                "to a file), or evaluate without --batch-api"
            )
        self.base_url = base_url(url)
        self._key = key
        self.client = openai.OpenAI(base_url=self.base_url, api_key=key, max_retries=5)

    @contextlib.contextmanager
    def _calling(self, what: str) -> Iterator[None]:
        """An API error as one sentence naming the call and what to do (the job can resume)."""
        import openai

        try:
            yield
        except openai.APIError as exc:
            raise BatchError(
                f"the Batch API at {self.base_url} failed to {what}: {exc}; check OPENAI_API_KEY and the "
                "account's batch limits, then finish the run with --resume (nothing is submitted twice)"
            ) from exc

    def upload(self, name: str, content: bytes) -> str:
        with self._calling(f"upload {name}"):
            return str(
                self.client.files.create(file=(name, content, "application/jsonl"), purpose="batch").id
            )

    def create(self, input_file_id: str, endpoint: str, metadata: Mapping[str, str]) -> dict[str, Any]:
        with self._calling(f"create a batch of {input_file_id} for {endpoint}"):
            batch = self.client.batches.create(
                completion_window="24h",
                endpoint=endpoint,  # type: ignore[arg-type]
                input_file_id=input_file_id,
                metadata=dict(metadata),
            )
        return dict(batch.model_dump())

    def retrieve(self, batch_id: str) -> dict[str, Any]:
        with self._calling(f"retrieve batch {batch_id}"):
            return dict(self.client.batches.retrieve(batch_id).model_dump())

    def cancel(self, batch_id: str) -> dict[str, Any]:
        with self._calling(f"cancel batch {batch_id}"):
            return dict(self.client.batches.cancel(batch_id).model_dump())

    def find(self, metadata: Mapping[str, str]) -> dict[str, Any] | None:
        """A batch created with this metadata (newest first, the last 100): one a killed job
        created but did not live to note."""
        with self._calling("list batches"):
            listed = self.client.batches.list(limit=100).data
        for batch in listed:
            found = dict(batch.model_dump())
            if all((found.get("metadata") or {}).get(k) == v for k, v in metadata.items()):
                return found
        return None

    def lines(self, file_id: str) -> Iterator[LineResult]:
        """The lines of a batch's output or error file."""
        with self._calling(f"download {file_id}"):
            content = self.client.files.content(file_id).content
        for text in content.decode("utf-8").splitlines():
            if text.strip():
                yield parse_line(json.loads(text))

    def send_live(self, request: RecordedRequest, attempts: int = 3) -> tuple[int, bytes, dict[str, str]]:
        """POST ``request`` to the API now (the live fallback): status, body and headers."""
        import httpx

        path = urlsplit(request.url).path
        target = urlsplit(self.base_url)
        url = f"{target.scheme}://{target.netloc}{path}"
        headers = {"authorization": f"Bearer {self._key}", "content-type": "application/json"}
        with httpx.Client(timeout=600) as client:
            for attempt in range(1, attempts + 1):
                response = client.post(url, content=decode_body(request.body), headers=headers)
                if response.status_code not in (429, 500, 502, 503, 504) or attempt == attempts:
                    return response.status_code, response.content, dict(response.headers)
                time.sleep(min(2.0**attempt, 30.0))
        raise AssertionError("unreachable")  # pragma: no cover


def parse_line(data: Mapping[str, Any]) -> LineResult:
    response = data.get("response") or None
    error = data.get("error") or None
    status = int(response["status_code"]) if response else None
    body = response.get("body") if response else None
    reason = None
    if error:
        reason = f"{error.get('code')}: {error.get('message')}"
    elif status is not None and status >= 400:
        message = body.get("error", {}).get("message") if isinstance(body, dict) else None
        reason = f"HTTP {status}: {message or body}"
    return LineResult(
        str(data.get("custom_id")), status, body, response.get("request_id") if response else None, reason
    )


def answer_of(line: LineResult) -> RecordedResponse:
    """A line's answer as a cassette keeps a live one (the body parsed; JSON content type)."""
    headers = {"content-type": "application/json"}
    if line.request_id:
        headers["x-request-id"] = line.request_id
    content = json.dumps(line.body, separators=(",", ":")).encode("utf-8")
    return RecordedResponse(int(line.status or 0), headers, encode_body(content))


# ------------------------------------------------------------------------------ the ledger


@dataclass
class BatchRecord:
    """One batch a job submitted (or was about to): what the ledger keeps of it."""

    name: str  # the local input file's name, unique in the job: r<round>-<endpoint>-<n>
    round: int
    endpoint: str
    requests: int
    input_file_id: str | None = None
    id: str | None = None
    status: str = "prepared"  # prepared -> uploaded -> submitted (API states) -> recorded
    counts: dict[str, int] = field(default_factory=dict)
    failed: int = 0  # lines without an answer (errors, expired)
    output_file_id: str | None = None
    error_file_id: str | None = None
    why: str | None = None  # how it ended: its final state, or why validation failed it

    @property
    def settled(self) -> bool:
        return self.status == "recorded"


class BatchLedger:
    """Every batch of a job and its state, in the job's journal; the input files beside it
    (``.chainkit/runs/<run_id>.batches/``), each line carrying the request it stands for."""

    KEY = "batches"
    FAILURES = "batch_failures"
    STATS = "batch_stats"

    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self.folder = journal.path.with_name(f"{journal.path.stem}.batches")
        raw = journal.get_meta(self.KEY)
        self.records = [BatchRecord(**entry) for entry in json.loads(raw)] if raw else []
        #: custom_id -> {count: batches that failed to answer it, reason: the last one}.
        self.failures: dict[str, dict[str, Any]] = json.loads(journal.get_meta(self.FAILURES) or "{}")
        self.stats: dict[str, float] = json.loads(journal.get_meta(self.STATS) or "{}")

    @property
    def rounds(self) -> int:
        return max((record.round for record in self.records), default=0)

    def save(self) -> None:
        self.journal.set_meta(self.KEY, json.dumps([asdict(record) for record in self.records]))
        self.journal.set_meta(self.FAILURES, json.dumps(self.failures))
        self.journal.set_meta(self.STATS, json.dumps(self.stats))

    def prepare(
        self, round_number: int, endpoint: str, requests: Mapping[str, RecordedRequest]
    ) -> BatchRecord:
        """Write the input file of one batch (atomically) and note it, before anything is sent."""
        self.folder.mkdir(parents=True, exist_ok=True)
        count = sum(
            1 for record in self.records if record.round == round_number and record.endpoint == endpoint
        )
        name = f"r{round_number}-{endpoint.strip('/').replace('/', '-')}-{count}"
        path = self.folder / f"{name}.jsonl"
        text = "".join(
            json.dumps(
                {"custom_id": custom_id(key), "method": r.method, "url": r.url, "body": dict(r.body)},
                ensure_ascii=False,
            )
            + "\n"
            for key, r in requests.items()
        )
        check_no_secrets(text, path)  # the requests, as a cassette would hold them: no secret
        temporary = path.with_name(f"{name}.jsonl.tmp")
        temporary.write_text(text, encoding="utf-8")
        temporary.replace(path)
        record = BatchRecord(name, round_number, endpoint, len(requests))
        self.records.append(record)
        self.save()
        return record

    def requests(self, record: BatchRecord) -> dict[str, RecordedRequest]:
        """custom_id -> the request of each line of ``record``'s input file."""
        out = {}
        with (self.folder / f"{record.name}.jsonl").open(encoding="utf-8") as lines:
            for text in lines:
                entry = json.loads(text)
                out[entry["custom_id"]] = RecordedRequest(entry["method"], entry["url"], entry["body"])
        return out

    def input_file(self, record: BatchRecord) -> bytes:
        """The Batch API's input file for ``record``: one line per request."""
        return b"".join(
            json.dumps(
                {
                    "custom_id": cid,
                    "method": "POST",
                    "url": record.endpoint,
                    "body": request.body.get("json"),
                },
                separators=(",", ":"),
            ).encode("utf-8")
            + b"\n"
            for cid, request in self.requests(record).items()
        )


def poll(
    client: BatchClient,
    records: list[BatchRecord],
    ledger: BatchLedger,
    *,
    interval: float,
    max_interval: float,
    report: Callable[[str], None],
) -> None:
    """Retrieve each unsettled batch until it reaches a final state, backing off from
    ``interval`` to ``max_interval``; every change is noted in the ledger and reported."""
    waiting = [record for record in records if record.status not in FINAL_STATES]
    pause = interval
    while waiting:
        for record in list(waiting):
            assert record.id is not None
            batch = client.retrieve(record.id)
            counts = dict(batch.get("request_counts") or {})
            if batch["status"] != record.status or counts != record.counts:
                record.status, record.counts = str(batch["status"]), counts
                record.input_file_id = record.input_file_id or batch.get("input_file_id")
                ledger.save()
                done = counts.get("completed", 0) + counts.get("failed", 0)
                report(
                    f"batch {record.id} ({record.endpoint}, round {record.round}): {record.status}, "
                    f"{done}/{counts.get('total', record.requests)} requests"
                    + (f", {counts['failed']} failed" if counts.get("failed") else "")
                )
            if record.status in FINAL_STATES:
                waiting.remove(record)
                record.output_file_id = batch.get("output_file_id")
                record.error_file_id = batch.get("error_file_id")
                record.why = _why(batch.get("errors")) or record.status
                ledger.save()
        if waiting:
            time.sleep(pause)
            pause = min(pause * 1.5, max_interval)


def results(client: BatchClient, record: BatchRecord) -> Iterator[LineResult]:
    """Every answered or failed line of a final batch (its output, then its error file)."""
    for file_id in (record.output_file_id, record.error_file_id):
        if file_id:
            yield from client.lines(file_id)


def _why(errors: Any) -> str | None:
    """A failed batch's validation errors, in one line."""
    data = errors.get("data") if isinstance(errors, dict) else None
    found = [f"{e.get('code')}: {e.get('message')}" for e in data or [] if isinstance(e, dict)]
    return "; ".join(found) or None


__all__ = [
    "API_HOST",
    "BATCH_ENDPOINTS",
    "FINAL_STATES",
    "MAX_LINES",
    "BatchClient",
    "BatchError",
    "BatchLedger",
    "BatchRecord",
    "LineResult",
    "answer_of",
    "base_url",
    "batch_endpoint",
    "custom_id",
    "parse_line",
    "poll",
    "results",
]
