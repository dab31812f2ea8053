"""A fake OpenAI-compatible HTTP server on 127.0.0.1, standard library only.

The real API cannot be reached from here, so tests, benchmarks and cassette recording talk to this.
Field names, ids, usage objects, headers and SSE framing follow the real api.openai.com responses
recorded in tests/data/openai-recorded. Bodies are a pure function of the request (ids are
hashes of it, "created" is fixed), so recordings made against this server are reproducible.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import re
import socket
import struct
import sys
import threading
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self

Responder = Callable[[str, dict[str, Any]], str]
Body = dict[str, Any]

CREATED = 1760395822  # fixed timestamp (taken from a recording) keeps bodies deterministic
EMBEDDING_DIM = 8
JSON_TYPE = "application/json"
SSE_TYPE = "text/event-stream; charset=utf-8"
HOP_BY_HOP = {"connection", "content-length", "transfer-encoding", "content-encoding", "keep-alive"}
STANDARD_HEADERS = {
    "openai-version": "2020-10-01",
    "x-ratelimit-limit-requests": "10000",
    "x-ratelimit-limit-tokens": "30000000",
    "x-ratelimit-remaining-requests": "9999",
    "x-ratelimit-remaining-tokens": "29999798",
    "x-ratelimit-reset-requests": "6ms",
    "x-ratelimit-reset-tokens": "0s",
}
ERRORS: dict[int, tuple[str, str, str | None]] = {  # status -> (message, type, code), modelled on the API
    401: ("Incorrect API key provided.", "invalid_request_error", "invalid_api_key"),
    429: ("Rate limit reached for requests.", "requests", "rate_limit_exceeded"),
    500: ("The server had an error while processing your request. Sorry about that!", "server_error", None),
    503: ("The engine is currently overloaded, please try again later.", "server_error", None),
}


@dataclass(frozen=True)
class Fault:
    """An error answer, served (in order, one per request) before normal answers."""

    status: int
    retry_after: float | None = None
    body: dict[str, Any] | None = None  # replaces the default OpenAI error JSON


@dataclass(frozen=True)
class ReceivedRequest:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    body: Any  # parsed JSON, or None
    raw: bytes = b""  # the body as sent (a multipart upload is not JSON)


@dataclass
class _Answer:
    """What the handler sends: `body` with a Content-Length, or `events` as a chunked stream."""

    status: int
    content_type: str
    body: bytes = b""
    events: Iterable[bytes] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    recorded: bool = False  # recorded answers carry their own headers

    @classmethod
    def json(cls, data: Body, status: int = 200, headers: dict[str, str] | None = None) -> _Answer:
        return cls(status, JSON_TYPE, json.dumps(data, indent=2).encode() + b"\n", headers=headers or {})


def error_body(status: int, message: str | None = None) -> Body:
    kind = "server_error" if status >= 500 else "invalid_request_error"
    default, kind, code = ERRORS.get(status, (f"HTTP {status}", kind, None))
    return {"error": {"message": message or default, "type": kind, "param": None, "code": code}}


def _last_user_text(messages: Any) -> str:
    """Content of the last user message; a content may be a string or parts with a "text"."""
    for message in reversed(messages) if isinstance(messages, list) else []:
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):
                return " ".join(str(p["text"]) for p in content if isinstance(p, dict) and "text" in p)
            return content if isinstance(content, str) else ""
    return messages if isinstance(messages, str) else ""


def default_responder(endpoint: str, body: Body) -> str:
    """Deterministic answer from the last user message (chat), input (responses) or prompt."""
    if "messages" in body or "input" in body:
        return f"Answer to: {_last_user_text(body.get('messages', body.get('input')))}"
    prompt = body.get("prompt", "")
    return f"Answer to: {prompt if isinstance(prompt, str) else json.dumps(prompt)}"


def count_tokens(value: Any) -> int:
    """Deterministic stand-in for a tokenizer: words in the text (token lists count their length)."""
    if isinstance(value, str):
        return len(value.split())
    if isinstance(value, list):
        return len(value) if all(isinstance(v, int) for v in value) else sum(count_tokens(v) for v in value)
    if isinstance(value, dict):
        return sum(count_tokens(v) for k, v in value.items() if k in ("content", "text"))
    return 0


def _words(text: str) -> list[str]:
    """Stream pieces whose concatenation is the text: "a b c" -> ["a", " b", " c"]."""
    return re.findall(r"\s*\S+|\s+", text)


def _make_id(prefix: str, kind: str, body: Body, length: int) -> str:
    return prefix + hashlib.sha256(json.dumps([kind, body], sort_keys=True).encode()).hexdigest()[:length]


def embedding(key: str, dim: int = EMBEDDING_DIM) -> list[float]:
    """A unit-length vector (float32 values) derived from a hash of key."""
    raw = b"".join(hashlib.sha256(f"{key}:{i}".encode()).digest() for i in range(dim // 32 + 1))
    values = [(b - 127.5) / 127.5 for b in raw[:dim]]
    norm = sum(v * v for v in values) ** 0.5 or 1.0
    return list(struct.unpack(f"<{dim}f", struct.pack(f"<{dim}f", *(v / norm for v in values))))


def _sse(data: Body | str, event: str | None = None) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return ((f"event: {event}\n" if event else "") + f"data: {payload}\n\n").encode()


def _as_list(value: Any) -> list[Any]:
    """Embedding inputs or completion prompts: one string or token list, or a list of them."""
    if isinstance(value, str) or (isinstance(value, list) and value and isinstance(value[0], int)):
        return [value]
    return list(value) if isinstance(value, list) else [value]


class OpenAIServer:
    """`with OpenAIServer() as server: openai.OpenAI(base_url=server.base_url, api_key="test")`.

    Serves POST /v1/chat/completions, /v1/responses, /v1/embeddings and /v1/completions (streamed
    too); anything else is a 404. `responder(endpoint, body)` gives the answer text; `latency` is
    slept before each answer, `event_gap` between the events of a stream; `faults` are served
    first, one per request; with `recorded_dir`, matching real recordings are served byte for
    byte. `requests` lists what was received.
    """

    def __init__(
        self,
        *,
        responder: Responder | None = None,
        latency: float = 0.0,
        event_gap: float = 0.0,
        faults: Iterable[Fault] = (),
        recorded_dir: Path | None = None,
    ) -> None:
        self.responder: Responder = responder or default_responder
        self.latency = latency
        self.event_gap = event_gap
        self.requests: list[ReceivedRequest] = []
        self._faults: deque[Fault] = deque(faults)
        self._recorded: list[Body] = []
        for path in sorted(Path(recorded_dir).glob("*.json")) if recorded_dir is not None else []:
            data = json.loads(path.read_text())
            if isinstance(data, dict) and "endpoint" in data and "response" in data:
                self._recorded.append(data)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._connections: set[socket.socket] = set()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        if self._httpd is None:
            raise RuntimeError("OpenAIServer is not started")
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def start(self) -> Self:
        if self._httpd is None:
            self._stopping.clear()
            self._httpd = _HTTPServer(("127.0.0.1", 0), _make_handler(self))
            self._thread = threading.Thread(
                target=self._httpd.serve_forever,
                kwargs={"poll_interval": 0.05},
                name="OpenAIServer",
                daemon=True,
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        self._stopping.set()  # cuts latency sleeps short
        httpd.shutdown()
        httpd.server_close()
        with self._lock:  # wake handler threads waiting on idle keep-alive connections
            for conn in self._connections:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=5)

    def add_faults(self, faults: Iterable[Fault]) -> None:
        """Serve these errors next (after any still queued), one per request."""
        with self._lock:
            self._faults.extend(faults)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _respond(self, request: ReceivedRequest) -> _Answer:
        """What the handler sends back (a subclass may serve more endpoints from the raw body)."""
        return self._answer(request.method, request.path, request.body)

    def _answer(self, method: str, path: str, body: Any) -> _Answer:
        with self._lock:
            fault = self._faults.popleft() if self._faults else None
        if self.latency > 0:
            self._stopping.wait(self.latency)
        if fault is not None:
            headers = {} if fault.retry_after is None else {"retry-after": f"{fault.retry_after:g}"}
            return _Answer.json(fault.body or error_body(fault.status), fault.status, headers)
        endpoint = path.split("?", 1)[0].removeprefix("/v1/")
        handlers: dict[str, Callable[[Body], _Answer]] = {
            "chat/completions": self._chat,
            "responses": self._responses,
            "embeddings": self._embeddings,
            "completions": self._completions,
        }
        if method != "POST" or endpoint not in handlers:
            return _Answer.json(error_body(404, f"Invalid URL ({method} {path})"), 404)
        if not isinstance(body, dict):
            return _Answer.json(error_body(400, "We could not parse the JSON body of your request."), 400)
        try:
            return self._find_recorded(endpoint, body) or handlers[endpoint](body)
        except Exception as exc:  # a failing responder must reach the client, not hang it
            return _Answer.json(error_body(500, f"fake server error: {exc!r}"), 500)

    def _find_recorded(self, endpoint: str, body: Body) -> _Answer | None:
        """The recording of this exact request, else the first of this endpoint and stream flag."""
        stream = bool(body.get("stream", False))
        candidates = [
            r
            for r in self._recorded
            if r["endpoint"] == endpoint and bool(r["request"]["body"].get("stream", False)) == stream
        ]
        if not candidates:
            return None
        response = next((r for r in candidates if r["request"]["body"] == body), candidates[0])["response"]
        headers = {k: v for k, v in response["headers"].items() if k.lower() not in HOP_BY_HOP}
        content_type = headers.pop("content-type", JSON_TYPE)
        data: bytes = response["body"].encode()
        if stream:
            events = [event + b"\n\n" for event in data.split(b"\n\n") if event]
            return _Answer(response["status"], content_type, events=events, headers=headers, recorded=True)
        return _Answer(response["status"], content_type, data, headers=headers, recorded=True)

    def _chat(self, body: Body) -> _Answer:
        text = self.responder("chat/completions", body)
        head = {
            "id": _make_id("chatcmpl-", "chat", body, 29),
            "object": "chat.completion",
            "created": CREATED,
            "model": str(body.get("model", "gpt-4o-mini")),
        }
        tail = {"service_tier": "default", "system_fingerprint": "fp_fakeserver"}
        prompt, completion = count_tokens(body.get("messages")), count_tokens(text)
        usage = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }
        if not body.get("stream"):
            message: Body = {"role": "assistant", "content": text, "refusal": None, "annotations": []}
            choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": "stop"}
            return _Answer.json({**head, "choices": [choice], "usage": usage, **tail})
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        head["object"] = "chat.completion.chunk"

        def chunk(delta: Body, finish: str | None) -> bytes:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            return _sse({**head, **tail, "choices": [choice], **({"usage": None} if include_usage else {})})

        def events() -> Iterator[bytes]:
            yield chunk({"role": "assistant", "content": "", "refusal": None}, None)
            for word in _words(text):
                yield chunk({"content": word}, None)
            yield chunk({}, "stop")
            if include_usage:
                yield _sse({**head, **tail, "choices": [], "usage": usage})
            yield _sse("[DONE]")

        return _Answer(200, SSE_TYPE, events=events())

    def _responses(self, body: Body) -> _Answer:
        text = self.responder("responses", body)
        msg_id = _make_id("msg_", "message", body, 50)
        part = {"type": "output_text", "annotations": [], "logprobs": [], "text": text}
        message = {
            "id": msg_id,
            "type": "message",
            "status": "completed",
            "content": [part],
            "role": "assistant",
        }
        prompt, completion = count_tokens(body.get("input")), count_tokens(text)
        usage = {
            "input_tokens": prompt,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": completion,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": prompt + completion,
        }

        def response(done: bool) -> Body:
            return {
                "id": _make_id("resp_", "response", body, 50),
                "object": "response",
                "created_at": CREATED,
                "status": "completed" if done else "in_progress",
                "background": False,
                **({"billing": {"payer": "developer"}} if done and not body.get("stream") else {}),
                "completed_at": CREATED if done else None,
                "error": None,
                "frequency_penalty": 0.0,
                "incomplete_details": None,
                "instructions": body.get("instructions"),
                "max_output_tokens": body.get("max_output_tokens"),
                "max_tool_calls": None,
                "model": str(body.get("model", "gpt-4o-mini")),
                "output": [message] if done else [],
                "parallel_tool_calls": True,
                "presence_penalty": 0.0,
                "previous_response_id": body.get("previous_response_id"),
                "prompt_cache_key": None,
                "prompt_cache_retention": None,
                "reasoning": {"effort": None, "summary": None},
                "safety_identifier": None,
                "service_tier": "default" if done else "auto",
                "store": body.get("store", True),
                "temperature": body.get("temperature", 1.0),
                "text": {"format": {"type": "text"}, "verbosity": "medium", **(body.get("text") or {})},
                "tool_choice": body.get("tool_choice", "auto"),
                "tools": body.get("tools", []),
                "top_logprobs": 0,
                "top_p": body.get("top_p", 1.0),
                "truncation": "disabled",
                "usage": usage if done else None,
                "user": None,
                "metadata": body.get("metadata") or {},
            }

        if not body.get("stream"):
            return _Answer.json(response(done=True))
        at = {"content_index": 0, "item_id": msg_id, "output_index": 0}
        steps: list[Body] = [
            {"type": "response.created", "response": response(done=False)},
            {"type": "response.in_progress", "response": response(done=False)},
            {
                "type": "response.output_item.added",
                "output_index": 0,
                "item": {**message, "status": "in_progress", "content": []},
            },
            {"type": "response.content_part.added", **at, "part": {**part, "text": ""}},
            *(
                {"type": "response.output_text.delta", **at, "delta": word, "logprobs": []}
                for word in _words(text)
            ),
            {"type": "response.output_text.done", **at, "logprobs": [], "text": text},
            {"type": "response.content_part.done", **at, "part": part},
            {"type": "response.output_item.done", "output_index": 0, "item": message},
            {"type": "response.completed", "response": response(done=True)},
        ]
        events = (_sse({**step, "sequence_number": n}, step["type"]) for n, step in enumerate(steps))
        return _Answer(200, SSE_TYPE, events=events)

    def _embeddings(self, body: Body) -> _Answer:
        dim = int(body.get("dimensions", EMBEDDING_DIM))
        data: list[Body] = []
        for index, item in enumerate(_as_list(body.get("input", []))):
            vector = embedding(item if isinstance(item, str) else json.dumps(item), dim)
            value: Any = vector
            if body.get("encoding_format") == "base64":  # little-endian float32, as the API sends
                value = base64.b64encode(struct.pack(f"<{dim}f", *vector)).decode()
            data.append({"object": "embedding", "index": index, "embedding": value})
        tokens = count_tokens(_as_list(body.get("input", [])))
        return _Answer.json(
            {
                "object": "list",
                "data": data,
                "model": str(body.get("model", "")),
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )

    def _completions(self, body: Body) -> _Answer:
        prompts = _as_list(body.get("prompt", ""))
        texts = [self.responder("completions", {**body, "prompt": p}) for p in prompts]
        cmpl_id = _make_id("cmpl-", "completion", body, 29)
        head = {"id": cmpl_id, "object": "text_completion", "created": CREATED}
        model = str(body.get("model", "gpt-3.5-turbo-instruct"))
        prompt, completion = count_tokens(prompts), count_tokens(texts)
        usage = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }
        if not body.get("stream"):
            choices = [
                {"text": t, "index": i, "logprobs": None, "finish_reason": "stop"}
                for i, t in enumerate(texts)
            ]
            return _Answer.json({**head, "model": model, "choices": choices, "usage": usage})

        def chunk(text: str, index: int, finish: str | None) -> bytes:
            choice = {"text": text, "index": index, "logprobs": None, "finish_reason": finish}
            return _sse({**head, "choices": [choice], "model": model})

        def events() -> Iterator[bytes]:
            for index, text in enumerate(texts):
                yield from (chunk(word, index, None) for word in _words(text))
                yield chunk("", index, "stop")
            if (body.get("stream_options") or {}).get("include_usage"):
                yield _sse({**head, "model": model, "usage": usage, "choices": []})
            yield _sse("[DONE]")

        return _Answer(200, SSE_TYPE, events=events())


class _HTTPServer(ThreadingHTTPServer):
    request_queue_size = 256  # tests open 100 connections at once
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], OSError):  # clients hanging up mid-stream are normal
            super().handle_error(request, client_address)


def _make_handler(server: OpenAIServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive
        # Small writes (headers, then body) would otherwise wait ~40 ms for the client's
        # delayed ACK: every "100 ms" answer took ~150 ms.
        disable_nagle_algorithm = True

        def setup(self) -> None:
            super().setup()
            with server._lock:
                server._connections.add(self.connection)

        def finish(self) -> None:
            with server._lock:
                server._connections.discard(self.connection)
            super().finish()

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def handle_request(self) -> None:
            raw = self.rfile.read(int(self.headers.get("content-length") or 0))
            try:
                body: Any = json.loads(raw) if raw else None
            except ValueError:
                body = None
            headers = {k.lower(): v for k, v in self.headers.items()}
            request = ReceivedRequest(self.command, self.path, headers, body, raw)
            with server._lock:
                server.requests.append(request)
            answer = server._respond(request)
            self.send_response(answer.status)
            headers = {"content-type": answer.content_type, "x-request-id": f"req_{uuid.uuid4().hex}"}
            if not answer.recorded:
                headers |= {**STANDARD_HEADERS, "openai-processing-ms": str(round(server.latency * 1000))}
            for name, value in (headers | answer.headers).items():
                self.send_header(name, value)
            if answer.events is None:
                self.send_header("content-length", str(len(answer.body)))
                self.end_headers()
                self.wfile.write(answer.body)
                return
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            for event in answer.events:  # one HTTP chunk per SSE event, flushed: clients see a real stream
                self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
                self.wfile.flush()
                if server.event_gap > 0:
                    server._stopping.wait(server.event_gap)
            self.wfile.write(b"0\r\n\r\n")

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = handle_request  # noqa: N815 (http.server names)

    return Handler
