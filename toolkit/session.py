"""One active cassette: the replay core that every door (transport patch, proxy) goes through.

A :class:`CassetteSession` answers a request (as an ``httpx.Request``, whatever client sent it)
from the cassette through a respx router built from it, one route per recorded endpoint, whose
side effect looks the request's canonical key up in a dict (O(1), whatever the cassette's
size). A request the cassette does not hold is handed back to the door to send live when the
record mode allows it, and the door commits what came back; otherwise it fails with the
closest recorded request and the fields that differ. The door converts between its client's
request and response types and ``httpx``'s; the session holds no client-specific code.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import threading
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import respx

from toolkit.cassette import (
    Cassette,
    Interaction,
    RecordedRequest,
    RecordedResponse,
    add_usage,
    encode_body,
    parse_events,
    recorder_versions,
)
from toolkit.errors import ReplayMissError, UsageError
from toolkit.exchanges import note_exchange
from toolkit.matching import (
    InteractionIndex,
    current_scope,
    describe_miss,
    endpoint,
    ignoring,
    parse_json_path,
    request_key,
)
from toolkit.record_mode import RECORD_ERRORS_VARIABLE, RECORD_VIA_VARIABLE, RecordMode
from toolkit.recording_log import RecordingLog, folder_lock, merge, open_cassette
from toolkit.redaction import kept_response_headers, redact_url

try:  # openai 3.x's HTTP client; optional so that httpx-only projects work too
    import httpx2
except ImportError:  # pragma: no cover - httpx2 is a dependency of openai 3.x
    httpx2 = None  # type: ignore[assignment]

#: What a session calls on a request it cannot answer (see ``CassetteSession.defer``).
Deferral = Callable[[str, RecordedRequest], BaseException | None]

#: Statuses the OpenAI SDKs retry on their own (and chainkit's evaluation runner retries).
CLIENT_RETRIED_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})


class _UnrecordedError(Exception):
    """Raised by a route's answer: the cassette has no (replayable) answer."""


class _CassetteRouter(respx.Router):
    def record(self, *args: Any, **kwargs: Any) -> None:
        # respx keeps every call for assertions; a long batch job would keep them all.
        pass


class _AnsweringRoute(respx.Route):
    """A respx route that hands the request it matched straight to the session.

    respx's generic side-effect path costs more than the answer it wraps: at every call it
    runs ``inspect.getfullargspec`` on the side effect (~12 us for a bound method), checks
    whether it is an iterator, validates what it returned, and copies a response made without
    its request. Routing (the patterns, the order of the routes) stays respx's.
    """

    def __init__(self, answer: Callable[[httpx.Request], httpx.Response], *patterns: Any) -> None:
        super().__init__(*patterns)
        self.answer = answer

    def resolve(self, request: httpx.Request, **kwargs: Any) -> httpx.Response:
        return self.answer(request)


class _Endpoint(respx.patterns.Pattern):
    """A respx pattern on (METHOD, host, raw path) at once: one comparison where respx's
    ``method & host & path`` makes three patterns and two combinations (~5 us a call).

    The path is compared as sent (percent-encoded), as :func:`toolkit.matching.endpoint`
    takes it from the recorded URL: respx's ``path`` pattern compares the decoded path
    with a re-encoded value, which never matched a recorded ``%20``.
    """

    # No ``key``: respx would register the class under it, and a second import would clash.

    def clean(self, value: tuple[str, str, str]) -> tuple[str, str, str]:
        method, host, path = value
        return method.upper(), host, path

    def parse(self, request: httpx.Request) -> tuple[str, str, str]:
        url = request.url
        return request.method, url.host, url.raw_path.partition(b"?")[0].decode("ascii") or "/"


class CassetteSession:
    """One active cassette: answers requests, records new ones, saves on close.

    Every recording is durable the moment its response has been read (an fsync'd log beside
    the cassette, see :mod:`toolkit.recording_log`): a session killed before ``close`` loses
    nothing; the next session to open the cassette folds the log in.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        record_mode: str | RecordMode | None = None,
        *,
        allow_hosts: Iterable[str] = (),
        record_via: str | None = None,
        record_errors: bool | None = None,
        client_retries: bool = True,
        ignore_json_paths: Iterable[str] = (),
        defer: Deferral | None = None,
    ) -> None:
        self.mode = RecordMode.parse(record_mode)
        #: Called with the key and the request that no recording answers, before it would be
        #: sent live or refused: an error it returns is raised instead (the Batch API's rounds
        #: defer the request to a batch); None lets the record mode decide as usual.
        self.defer = defer
        #: JSON body fields that take no part in matching (they change from run to run).
        self.ignore_json_paths = tuple(ignore_json_paths)
        try:
            self._ignored = tuple(parse_json_path(path) for path in self.ignore_json_paths)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        self.cassette, self.recovered = open_cassette(Path(path))
        self.path = self.cassette.path
        if record_errors is None:
            record_errors = os.environ.get(RECORD_ERRORS_VARIABLE, "").lower() in {"1", "true", "yes"}
        #: Record error answers (status >= 400) too; by default they are passed on, not kept.
        self.record_errors = record_errors
        #: False: the client is told not to retry (``x-should-retry: false``) a live error
        #: answer, because the caller (chainkit's evaluation runner) has its own retry policy.
        self.client_retries = client_retries
        self.record_via = record_via if record_via is not None else os.environ.get(RECORD_VIA_VARIABLE)
        self.allow_hosts = {host.strip().lower() for host in allow_hosts}
        mode, exists = self.mode, self.cassette.exists
        self.replays = (
            mode is RecordMode.NONE or mode is RecordMode.NEW_EPISODES or (mode is RecordMode.ONCE and exists)
        )
        self.records = (
            mode is RecordMode.NEW_EPISODES
            or mode is RecordMode.ALL
            or (mode is RecordMode.ONCE and not exists)
        )
        self.index = InteractionIndex(self._matched(self.cassette.interactions) if self.replays else ())
        self.used: set[int] = set()
        self.new: list[Interaction] = []
        #: new_episodes on an existing cassette: what this session recorded, by (scope, key): an
        #: identical later call replays it instead of being sent and recorded again. (A missing
        #: cassette records everything: the n-th identical call gets the n-th recording.)
        self._recorded_now: dict[tuple[str | None, str], Interaction] = {}
        self._replays_new = mode is RecordMode.NEW_EPISODES and exists
        self.replayed = 0
        self._lock = threading.Lock()
        self.router = self._build_router()
        self.log = RecordingLog(self.path, replace=self.mode is RecordMode.ALL) if self.records else None

    def _build_router(self) -> respx.Router:
        router = _CassetteRouter(assert_all_mocked=True, assert_all_called=False)
        endpoints = {endpoint(i.request.method, i.request.url) for i in self.cassette}
        for method, host, path in sorted(endpoints):
            router.add(_AnsweringRoute(self._answer, _Endpoint((method, host.split(":")[0], path))))
        router.add(_AnsweringRoute(self._unrecorded))  # any other endpoint
        return router

    # What the respx routes answer -------------------------------------------------------

    def _answer(self, request: httpx.Request) -> httpx.Response:
        sent = recorded_request(request)
        key = self._key(sent)
        position = self.index.take(key) if self.replays else None
        if position is None:
            return self._answer_recorded_now(request, sent, key)
        with self._lock:
            self.used.add(position)
            self.replayed += 1
        interaction = self.cassette.interactions[position]
        return self._replayed(request, interaction)

    def _answer_recorded_now(self, request: httpx.Request, sent: RecordedRequest, key: str) -> httpx.Response:
        """An identical request this session recorded earlier, replayed; else unrecorded."""
        scope = current_scope()
        interaction = self._recorded_now.get((scope.name if scope else None, key))
        if interaction is None:
            raise _UnrecordedError(sent)
        with self._lock:
            self.replayed += 1
        return self._replayed(request, interaction)

    def _replayed(self, request: httpx.Request, interaction: Interaction) -> httpx.Response:
        note_exchange(interaction, replayed=True)
        response = interaction.response
        # The body is built at each call, not kept per recording: a cache would make a call
        # cheaper on a small cassette (whose recordings repeat) than on a large one, and grow
        # with the job.
        stream = ChunkStream(response.chunks())
        return httpx.Response(response.status, headers=response.headers, stream=stream, request=request)

    def _matched(self, interactions: list[Interaction]) -> list[Interaction]:
        """The interactions as matching sees them: ignored JSON paths left out."""
        if not self._ignored:
            return interactions
        return [dataclasses.replace(i, request=ignoring(i.request, self._ignored)) for i in interactions]

    def _unrecorded(self, request: httpx.Request) -> httpx.Response:
        sent = recorded_request(request)
        if not self._recorded_now:
            raise _UnrecordedError(sent)
        return self._answer_recorded_now(request, sent, self._key(sent))

    def _key(self, sent: RecordedRequest) -> str:
        return request_key(ignoring(sent, self._ignored) if self._ignored else sent)

    # Recording ------------------------------------------------------------------------------

    def commit(self, interaction: Interaction) -> None:
        """Keep a live interaction: durable at once in the recording log, saved on close."""
        note_exchange(interaction, replayed=False)
        if interaction.response.status >= 400 and not self.record_errors:
            return  # an error answer is not a recording (a retry may follow; a 404 is a wrong URL)
        scope = current_scope()
        if scope is not None:
            interaction = dataclasses.replace(interaction, scope=scope.name)
        if self.log is not None:
            self.log.append(interaction)
        with self._lock:
            self.new.append(interaction)
            if self._replays_new:
                self._recorded_now[(interaction.scope, self._key(interaction.request))] = interaction

    def miss(self, sent: RecordedRequest) -> ReplayMissError:
        if not self.cassette.exists:
            return ReplayMissError(
                f"cassette {self.path} does not exist and record mode is {self.mode.value!r}, so "
                f"{sent.method} {sent.url} has no answer; record it first (--record-mode once) or "
                "check the path",
                request=sent,
            )
        why = {
            RecordMode.NONE: "record mode is 'none'",
            RecordMode.ONCE: "record mode 'once' records only a new cassette",
        }.get(self.mode, f"record mode is {self.mode.value!r}")
        recorded = [interaction.request for interaction in self.cassette]
        host = urlsplit(sent.url).hostname or ""
        if all(urlsplit(r.url).hostname != host for r in recorded):
            why += f"; nothing was ever recorded for {host}: to reach it live, pass --allow-host {host}"
        return ReplayMissError(
            f"no recorded response in {self.path} for {sent.method} {sent.url} ({why}); re-record "
            "with --record-mode new_episodes, or change the request back.\n"
            + describe_miss(ignoring(sent, self._ignored), [ignoring(r, self._ignored) for r in recorded])
            + (f"\nIgnored when matching: {', '.join(self.ignore_json_paths)}" if self._ignored else ""),
            request=sent,
        )

    def close(self) -> None:
        """Save what was recorded (atomically) and note which recordings were replayed. The
        recording log is deleted only once the cassette holding its recordings is saved."""
        with self._lock:
            new, used = list(self.new), set(self.used)
        saved = False
        try:
            if new:
                with folder_lock(self.path):
                    base = self.cassette
                    on_disk = self.cassette.sha256()
                    if on_disk is not None and on_disk != self.cassette.content_sha256:
                        # Another session saved this file since we loaded it: add to its content.
                        base, used = Cassette.load(self.path), set()
                    base.interactions, moved = merge(
                        base.interactions, new, replace=self.mode is RecordMode.ALL
                    )
                    base.recorded_with = recorder_versions()
                    base.save()
                used = {moved[position] for position in used if position in moved}
            saved = True
        finally:
            if self.log is not None:
                self.log.close(delete=saved)
        if used:
            add_usage(self.path, used)

    # What doors call ----------------------------------------------------------------------

    def passes(self, host: str) -> bool:
        """Is ``host`` allowed live, untouched and unrecorded (``allow_hosts``)?"""
        return host.lower() in self.allow_hosts

    def lookup(self, request: httpx.Request) -> httpx.Response | RecordedRequest:
        """The recorded answer to ``request`` (this cassette's, else an enclosing one's), or,
        when this session records, the redacted request for the door to send live and
        :meth:`commit`. Raises :class:`ReplayMissError` when neither is possible."""
        if self.replays or len(_sessions) > 1:
            try:
                return self._replay(request)
            except _UnrecordedError as unrecorded:
                sent: RecordedRequest = unrecorded.args[0]
        else:  # record mode all: nothing to look up
            sent = recorded_request(request)
        if self.defer is not None:
            deferred = self.defer(self._key(sent), sent)
            if deferred is not None:
                raise deferred
        if not self.records:
            raise self.miss(sent) from None
        return sent

    def no_client_retry(self, status: int) -> bool:
        """Should the answer tell the client not to retry (``x-should-retry: false``)?"""
        return not self.client_retries and status in CLIENT_RETRIED_STATUSES

    def _replay(self, request: httpx.Request) -> httpx.Response:
        try:
            return self.router.handler(request)
        except _UnrecordedError:
            for outer in reversed(_sessions[:-1]):
                if outer is not self:
                    try:
                        return outer.router.handler(request)
                    except _UnrecordedError:
                        continue
            raise


def live_response(status: int, headers: Any, content: bytes, *, streamed: bool = False) -> RecordedResponse:
    """What a live answer is recorded as, by every door: the kept headers, the body parsed (a
    stream: its events)."""
    kept = kept_response_headers(headers)
    if streamed:
        return RecordedResponse(status, kept, events=tuple(parse_events(content.decode("utf-8", "replace"))))
    return RecordedResponse(status, kept, encode_body(content))


def recorded_request(request: httpx.Request) -> RecordedRequest:
    return RecordedRequest(request.method, _redacted(str(request.url)), encode_body(request.content))


#: A client sends to a handful of URLs: each is parsed for redaction once.
_redacted = functools.lru_cache(maxsize=1024)(redact_url)


_STREAM_BASES: tuple[type, ...] = (httpx.SyncByteStream, httpx.AsyncByteStream)
if httpx2 is not None:
    _STREAM_BASES += (httpx2.SyncByteStream, httpx2.AsyncByteStream)


class ChunkStream(*_STREAM_BASES):  # type: ignore[misc]
    """A recorded body, yielded chunk by chunk (one chunk per server-sent event), sync or async."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks

    def __iter__(self) -> Iterator[bytes]:
        yield from self.chunks

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            yield chunk


# ------------------------------------------------------------------------- the session stack

#: Active sessions, innermost last, shared by all threads of the process.
_sessions: list[CassetteSession] = []


#: A session that answers in one context only (a thread, an asyncio task), before the stack:
#: an evaluation's LLM judges record into and replay from their own cassette.
_context_session: ContextVar[CassetteSession | None] = ContextVar("chainkit_context_session", default=None)


def active_session() -> CassetteSession | None:
    """The session answering here: this context's own (:func:`answering`), else the innermost
    cassette in use (shared by all threads of the process), if any."""
    own = _context_session.get()
    if own is not None:
        return own
    return _sessions[-1] if _sessions else None


@contextmanager
def answering(session: CassetteSession) -> Iterator[CassetteSession]:
    """Let ``session`` answer the requests made in this context (and what it starts), while the
    process-wide cassette keeps answering everywhere else. The doors must be patched in: use it
    inside a ``use_cassette``."""
    token = _context_session.set(session)
    try:
        yield session
    finally:
        _context_session.reset(token)


__all__ = [
    "CLIENT_RETRIED_STATUSES",
    "CassetteSession",
    "ChunkStream",
    "Deferral",
    "active_session",
    "answering",
    "live_response",
    "recorded_request",
]
