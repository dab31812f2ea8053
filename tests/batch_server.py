"""A fake of OpenAI's Files and Batches API on 127.0.0.1, beside the chat/embeddings fake.

:class:`BatchServer` is an :class:`~openai_server.OpenAIServer` (the live endpoints keep
answering: a ``--batch-fallback live`` request reaches them) that also serves:

- ``POST /v1/files`` (multipart upload, purpose ``batch``), ``GET /v1/files/{id}/content``;
- ``POST /v1/batches``, ``GET /v1/batches/{id}``, ``GET /v1/batches`` (list, newest first),
  ``POST /v1/batches/{id}/cancel``.

A batch moves one step per retrieve through validating -> in_progress -> finalizing ->
completed (``steps`` retrieves per state; ``hold`` keeps every batch in_progress until
released). Each line is answered as the live endpoint answers it (the same handlers and the
same recorded bodies, no latency, no faults). Scenarios: ``outcome="expired"`` (the first
``expire_after`` lines are answered, the rest expire into the error file), ``"failed"``
(validation fails: no output), ``fail_lines`` (custom ids answered with a 500 in the error
file). Invalid input (a line for another endpoint, a duplicate custom_id, ``stream: true``)
fails the batch at validation, as the real API does. ``created`` and ``submitted_requests``
count what was submitted.
"""

from __future__ import annotations

import email.parser
import email.policy
import json
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from openai_server import CREATED, JSON_TYPE, Body, OpenAIServer, ReceivedRequest, _Answer, error_body

STATES = ("validating", "in_progress", "finalizing", "completed")
ENDPOINTS = {
    "/v1/chat/completions": "chat/completions",
    "/v1/responses": "responses",
    "/v1/embeddings": "embeddings",
    "/v1/completions": "completions",
}


@dataclass
class FakeBatch:
    id: str
    endpoint: str
    input_file_id: str
    metadata: dict[str, str]
    lines: list[Body]
    state: int = 0  # index into STATES
    retrieves: int = 0
    status: str = "validating"
    output_file_id: str | None = None
    error_file_id: str | None = None
    errors: Body | None = None
    counts: dict[str, int] = field(default_factory=lambda: {"total": 0, "completed": 0, "failed": 0})


class BatchServer(OpenAIServer):
    def __init__(
        self,
        *,
        steps: int = 1,
        hold: bool = False,
        outcome: str = "completed",
        expire_after: int = 0,
        fail_lines: Iterable[str] = (),
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.steps, self.outcome, self.expire_after = steps, outcome, expire_after
        self.fail_lines = set(fail_lines)
        self.files: dict[str, tuple[str, bytes]] = {}  # id -> (purpose, content)
        self.batches: dict[str, FakeBatch] = {}
        self.released = threading.Event()
        if not hold:
            self.released.set()
        #: Called with each batch as it reaches a final state (tests change the scenario there).
        self.on_final: Callable[[FakeBatch], None] | None = None

    # What was submitted ------------------------------------------------------------------

    @property
    def created(self) -> list[FakeBatch]:
        with self._lock:
            return list(self.batches.values())

    @property
    def submitted_requests(self) -> int:
        return sum(len(batch.lines) for batch in self.created)

    def release(self) -> None:
        """Let held batches go on to their outcome."""
        self.released.set()

    # Routing -----------------------------------------------------------------------------

    def _respond(self, request: ReceivedRequest) -> _Answer:
        path = request.path.split("?", 1)[0]
        parts = path.strip("/").split("/")  # ["v1", "files", ...]
        if parts[:2] == ["v1", "files"]:
            if request.method == "POST" and len(parts) == 2:
                return self._upload(request)
            if request.method == "GET" and len(parts) == 4 and parts[3] == "content":
                found = self.files.get(parts[2])
                if found is None:
                    return _Answer.json(error_body(404, f"No such File object: {parts[2]}"), 404)
                return _Answer(200, "application/octet-stream", found[1])
        if parts[:2] == ["v1", "batches"]:
            if request.method == "POST" and len(parts) == 2:
                return self._create(request.body)
            if request.method == "GET" and len(parts) == 2:
                data = [self._view(batch) for batch in reversed(self.created)]
                return _Answer.json({"object": "list", "data": data, "has_more": False})
            batch = self.batches.get(parts[2]) if len(parts) >= 3 else None
            if batch is None:
                return _Answer.json(error_body(404, f"No such Batch object: {path}"), 404)
            if request.method == "GET" and len(parts) == 3:
                return _Answer.json(self._advance(batch))
            if request.method == "POST" and parts[3:] == ["cancel"]:
                with self._lock:
                    if batch.status not in ("completed", "failed", "expired", "cancelled"):
                        batch.status = "cancelling"
                return _Answer.json(self._view(batch))
        return super()._respond(request)

    def _upload(self, request: ReceivedRequest) -> _Answer:
        head = f"Content-Type: {request.headers.get('content-type', '')}\r\n\r\n".encode()
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + request.raw)
        fields: dict[str, tuple[str | None, bytes]] = {}
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            payload = part.get_payload(decode=True)
            fields[str(name)] = (part.get_filename(), payload if isinstance(payload, bytes) else b"")
        if "file" not in fields:
            return _Answer.json(error_body(400, "Missing file"), 400)
        filename, content = fields["file"]
        purpose = fields.get("purpose", (None, b""))[1].decode()
        return _Answer.json(self._store(purpose, content, filename or "upload.jsonl"))

    def _store(self, purpose: str, content: bytes, filename: str) -> Body:
        with self._lock:
            file_id = f"file-{len(self.files) + 1:06d}"
            self.files[file_id] = (purpose, content)
        return {
            "id": file_id,
            "object": "file",
            "bytes": len(content),
            "created_at": CREATED,
            "filename": filename,
            "purpose": purpose,
            "status": "processed",
            "expires_at": None,
            "status_details": None,
        }

    def _create(self, body: Any) -> _Answer:
        if not isinstance(body, dict) or body.get("input_file_id") not in self.files:
            return _Answer.json(error_body(400, "Invalid input_file_id"), 400)
        if body.get("endpoint") not in ENDPOINTS or body.get("completion_window") != "24h":
            return _Answer.json(error_body(400, f"Invalid endpoint or window: {body}"), 400)
        content = self.files[body["input_file_id"]][1]
        lines = [json.loads(line) for line in content.decode().splitlines() if line.strip()]
        with self._lock:
            batch_id = f"batch_{len(self.batches) + 1:06d}"
            batch = FakeBatch(
                batch_id, body["endpoint"], body["input_file_id"], body.get("metadata") or {}, lines
            )
            batch.counts["total"] = len(lines)
            self.batches[batch_id] = batch
        return _Answer.json(self._view(batch))

    # A batch's life ------------------------------------------------------------------------

    def _advance(self, batch: FakeBatch) -> Body:
        with self._lock:
            batch.retrieves += 1
            if batch.status == "cancelling":
                batch.status = "cancelled"
            elif batch.status in STATES[:-1] and batch.retrieves % self.steps == 0:
                if batch.status == "validating":
                    problem = self._invalid(batch)
                    if problem is not None or self.outcome == "failed":
                        batch.status = "failed"
                        message = problem or "the fake was told to fail this batch"
                        batch.errors = {
                            "object": "list",
                            "data": [{"code": "invalid_request", "message": message}],
                        }
                    else:
                        batch.status = "in_progress"
                elif batch.status == "in_progress" and self.released.is_set():
                    batch.status = "finalizing"
                elif batch.status == "finalizing":
                    self._finish(batch)
            final = batch.status in ("completed", "expired", "failed", "cancelled")
        if final and self.on_final is not None:
            self.on_final(batch)
        return self._view(batch)

    def _invalid(self, batch: FakeBatch) -> str | None:
        seen: set[str] = set()
        for number, line in enumerate(batch.lines, 1):
            custom_id = line.get("custom_id")
            if not isinstance(custom_id, str) or custom_id in seen:
                return f"line {number}: custom_id missing or duplicated ({custom_id!r})"
            seen.add(custom_id)
            if line.get("method") != "POST" or line.get("url") != batch.endpoint:
                return f"line {number}: url {line.get('url')!r} is not the batch's endpoint {batch.endpoint}"
            if not isinstance(line.get("body"), dict) or line["body"].get("stream"):
                return f"line {number}: body missing, or stream requested (not supported in batches)"
        return None

    def _finish(self, batch: FakeBatch) -> None:
        """Answer the lines (called with the lock held): output and error files."""
        outputs: list[bytes] = []
        errors: list[bytes] = []
        for number, line in enumerate(batch.lines):
            request_id = f"req_{batch.id}_{number}"
            out: Body = {"id": f"batch_req_{batch.id}_{number}", "custom_id": line["custom_id"]}
            if self.outcome == "expired" and number >= self.expire_after:
                out |= {
                    "response": None,
                    "error": {
                        "code": "batch_expired",
                        "message": "This request could not be executed before the completion window expired.",
                    },
                }
                errors.append(json.dumps(out).encode())
                continue
            if line["custom_id"] in self.fail_lines:
                response = {"status_code": 500, "request_id": request_id, "body": error_body(500)}
                errors.append(json.dumps(out | {"response": response, "error": None}).encode())
                continue
            answer = self._answer_line(ENDPOINTS[batch.endpoint], line["body"])
            response = {"status_code": answer[0], "request_id": request_id, "body": answer[1]}
            (outputs if answer[0] < 400 else errors).append(
                json.dumps(out | {"response": response, "error": None}).encode()
            )
        batch.counts["completed"], batch.counts["failed"] = len(outputs), len(errors)
        if outputs:
            batch.output_file_id = self._store_locked("batch_output", b"\n".join(outputs) + b"\n")
        if errors:
            batch.error_file_id = self._store_locked("batch_output", b"\n".join(errors) + b"\n")
        batch.status = "expired" if self.outcome == "expired" else "completed"

    def _store_locked(self, purpose: str, content: bytes) -> str:
        file_id = f"file-{len(self.files) + 1:06d}"
        self.files[file_id] = (purpose, content)
        return file_id

    def _answer_line(self, endpoint: str, body: Body) -> tuple[int, Body]:
        """What the live endpoint answers (its handlers, its recorded bodies): status and JSON."""
        handlers = {
            "chat/completions": self._chat,
            "responses": self._responses,
            "embeddings": self._embeddings,
            "completions": self._completions,
        }
        answer = self._find_recorded(endpoint, body) or handlers[endpoint](body)
        return answer.status, json.loads(answer.body)

    def _view(self, batch: FakeBatch) -> Body:
        at = {state: CREATED + i for i, state in enumerate(STATES)}
        return {
            "id": batch.id,
            "object": "batch",
            "endpoint": batch.endpoint,
            "errors": batch.errors,
            "input_file_id": batch.input_file_id,
            "completion_window": "24h",
            "status": batch.status,
            "output_file_id": batch.output_file_id,
            "error_file_id": batch.error_file_id,
            "created_at": CREATED,
            "in_progress_at": at["in_progress"] if batch.status != "validating" else None,
            "expires_at": CREATED + 86400,
            "finalizing_at": None,
            "completed_at": at["completed"] if batch.status == "completed" else None,
            "failed_at": at["completed"] if batch.status == "failed" else None,
            "expired_at": at["completed"] if batch.status == "expired" else None,
            "cancelling_at": None,
            "cancelled_at": at["completed"] if batch.status == "cancelled" else None,
            "request_counts": dict(batch.counts),
            "metadata": batch.metadata,
        }


__all__ = ["JSON_TYPE", "BatchServer", "FakeBatch"]
