"""Record and replay HTTP traffic sent through httpx and httpx2, with respx as the router.

openai 3.x sends through ``httpx2``, which respx does not patch; openai 2.x and most other
SDKs send through ``httpx``. While a cassette is in use, the default transports of both
(sync and async) are patched at ``handle_request`` / ``handle_async_request``: each request
is converted to an ``httpx.Request`` and resolved by a respx router built from the cassette,
one route per recorded endpoint, whose side effect looks the request's canonical key up in a
dict (O(1), whatever the cassette's size). A request the cassette does not hold goes to the
network when the record mode allows it, and is recorded; otherwise it fails with the closest
recorded request and the fields that differ.

This bridge was chosen over ``respx.mock(using="httpcore2")`` (pytest-httpx2's mocker)
because one code path then serves httpx and httpx2 alike, with no extra dependency and no
reliance on a private mocker registry, at the same measured cost.

    with use_cassette("cassettes/qa.json", record_mode="none"):
        chain.invoke({"question": "What is MLflow?"})
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import inspect
import os
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from enum import Enum, StrEnum
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar
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
from toolkit.matching import InteractionIndex, current_scope, describe_miss, endpoint, request_key
from toolkit.network import NetworkGuard
from toolkit.recording_log import RecordingLog, folder_lock, merge, open_cassette
from toolkit.redaction import kept_response_headers, redact_url

try:  # openai 3.x's HTTP client; optional so that httpx-only projects work too
    import httpx2
except ImportError:  # pragma: no cover - httpx2 is a dependency of openai 3.x
    httpx2 = None  # type: ignore[assignment]

RECORD_MODE_VARIABLE = "CHAINKIT_RECORD_MODE"
RECORD_VIA_VARIABLE = "CHAINKIT_RECORD_VIA"
ALLOW_HOSTS_VARIABLE = "CHAINKIT_ALLOW_HOSTS"
RECORD_ERRORS_VARIABLE = "CHAINKIT_RECORD_ERRORS"
#: Statuses the OpenAI SDKs retry on their own (and chainkit's evaluation runner retries).
CLIENT_RETRIED_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})
#: Set as OPENAI_API_KEY while replaying without a key: clients refuse to start without one.
PLACEHOLDER_API_KEY = "chainkit-replay-placeholder"

F = TypeVar("F", bound=Callable[..., Any])


class RecordMode(StrEnum):
    """The vcrpy record modes (see the table in the README)."""

    NONE = "none"
    ONCE = "once"
    NEW_EPISODES = "new_episodes"
    ALL = "all"

    @classmethod
    def parse(cls, value: str | RecordMode | None) -> RecordMode:
        """``value``, else $CHAINKIT_RECORD_MODE, else ``none``; an error lists the choices."""
        if value is None or value == "":
            value = os.environ.get(RECORD_MODE_VARIABLE) or cls.NONE.value
        try:
            return cls(str(value.value if isinstance(value, Enum) else value).lower())
        except ValueError:
            choices = ", ".join(mode.value for mode in cls)
            raise UsageError(f"unknown record mode {value!r}: use one of {choices}") from None


class _UnrecordedError(Exception):
    """Raised by the router's side effect: the cassette has no (replayable) answer."""


class _CassetteRouter(respx.Router):
    def record(self, *args: Any, **kwargs: Any) -> None:
        # respx keeps every call for assertions; a long batch job would keep them all.
        pass


# ------------------------------------------------------------------------------- sessions


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
    ) -> None:
        self.mode = RecordMode.parse(record_mode)
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
        self.index = InteractionIndex(self.cassette.interactions if self.replays else ())
        self._bodies: dict[int, list[bytes]] = {}  # response bytes, built on first replay
        self.used: set[int] = set()
        self.new: list[Interaction] = []
        self.replayed = 0
        self._lock = threading.Lock()
        self.router = self._build_router()
        self.log = RecordingLog(self.path, replace=self.mode is RecordMode.ALL) if self.records else None

    def _build_router(self) -> respx.Router:
        router = _CassetteRouter(assert_all_mocked=True, assert_all_called=False)
        endpoints = {endpoint(i.request.method, i.request.url) for i in self.cassette}
        for method, host, path in sorted(endpoints):
            router.route(method=method, host=host.split(":")[0], path=path).side_effect = self._answer
        router.route().side_effect = self._unrecorded  # any other endpoint
        return router

    # The respx side effects -------------------------------------------------------------

    def _answer(self, request: httpx.Request) -> httpx.Response:
        sent = recorded_request(request)
        position = self.index.take(request_key(sent)) if self.replays else None
        if position is None:
            raise _UnrecordedError(sent)
        with self._lock:
            self.used.add(position)
            self.replayed += 1
        interaction = self.cassette.interactions[position]
        note_exchange(interaction, replayed=True)
        chunks = self._bodies.get(position)
        if chunks is None:
            chunks = self._bodies[position] = interaction.response.chunks()
        response = interaction.response
        return httpx.Response(response.status, headers=response.headers, stream=_ChunkStream(chunks))

    def _unrecorded(self, request: httpx.Request) -> httpx.Response:
        raise _UnrecordedError(recorded_request(request))

    # Recording ------------------------------------------------------------------------------

    def _commit(self, interaction: Interaction) -> None:
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
            "with --record-mode new_episodes, or change the request back.\n" + describe_miss(sent, recorded),
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

    # Handling one request -----------------------------------------------------------------------

    def _replays_anything(self) -> bool:
        return self.replays or len(_sessions) > 1

    def _replay(self, request: httpx.Request) -> httpx.Response:
        """This cassette's answer, else that of an enclosing cassette still active."""
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

    def handle(self, request: Any, send: Callable[[Any], Any]) -> Any:
        """Answer a native (httpx or httpx2) request; ``send`` is the real transport."""
        module = _module_of(request)
        if request.url.host.lower() in self.allow_hosts:
            return send(request)
        if not self._replays_anything():  # record mode all: nothing to look up
            sent = recorded_request(_to_httpx(request, request.read()))
        else:
            try:
                return _native_response(module, self._replay(_to_httpx(request, request.read())))
            except _UnrecordedError as unrecorded:
                sent = unrecorded.args[0]
        if not self.records:
            raise self.miss(sent) from None
        live = send(self._upstream(module, request))
        if _is_event_stream(live):
            return self._tee(module, live, sent)
        interaction = Interaction(sent, _recorded_response(live, live.read()))
        live.close()
        self._commit(interaction)
        return self._to_client(module, interaction.response)

    async def ahandle(self, request: Any, send: Callable[[Any], Any]) -> Any:
        module = _module_of(request)
        if request.url.host.lower() in self.allow_hosts:
            return await send(request)
        content = await request.aread()
        if not self._replays_anything():  # record mode all: nothing to look up
            sent = recorded_request(_to_httpx(request, content))
        else:
            try:
                return _native_response(module, self._replay(_to_httpx(request, content)))
            except _UnrecordedError as unrecorded:
                sent = unrecorded.args[0]
        if not self.records:
            raise self.miss(sent) from None
        live = await send(self._upstream(module, request))
        if _is_event_stream(live):
            return self._tee(module, live, sent)
        interaction = Interaction(sent, _recorded_response(live, await live.aread()))
        await live.aclose()
        self._commit(interaction)
        return self._to_client(module, interaction.response)

    def _to_client(self, module: ModuleType, recorded: RecordedResponse) -> Any:
        response = _native_response(module, _httpx_response(recorded))
        if not self.client_retries and recorded.status in CLIENT_RETRIED_STATUSES:
            # One retry policy, not two stacked: the openai SDKs honour this header.
            response.headers["x-should-retry"] = "false"
        return response

    def _upstream(self, module: ModuleType, request: Any) -> Any:
        """The request to send live: as is, or redirected to $CHAINKIT_RECORD_VIA."""
        if not self.record_via:
            return request
        via = urlsplit(self.record_via)
        # In place: rebuilding the request cost ~0.2 ms a call, in a path that is CPU-bound.
        request.url = request.url.copy_with(scheme=via.scheme, host=via.hostname, port=via.port)
        request.headers["host"] = via.netloc
        return request

    def _tee(self, module: ModuleType, live: Any, sent: RecordedRequest) -> Any:
        """Pass a live stream through as it arrives; record its events once it has ended."""

        def finish(body: bytes) -> None:
            response = _recorded_response(live, b"")
            events = tuple(parse_events(body.decode("utf-8", errors="replace")))
            self._commit(
                Interaction(sent, RecordedResponse(response.status, response.headers, events=events))
            )

        headers = kept_response_headers(live.headers)
        if not self.client_retries and live.status_code in CLIENT_RETRIED_STATUSES:
            headers["x-should-retry"] = "false"
        return module.Response(live.status_code, headers=headers, stream=_TeeStream(live, finish))


def recorded_request(request: httpx.Request) -> RecordedRequest:
    return RecordedRequest(request.method, redact_url(str(request.url)), encode_body(request.content))


def _recorded_response(live: Any, content: bytes) -> RecordedResponse:
    return RecordedResponse(live.status_code, kept_response_headers(live.headers), encode_body(content))


def _is_event_stream(response: Any) -> bool:
    return "text/event-stream" in response.headers.get("content-type", "")


def _httpx_response(response: RecordedResponse) -> httpx.Response:
    return httpx.Response(response.status, headers=response.headers, stream=_ChunkStream(response.chunks()))


# ------------------------------------------------------------------ httpx <-> httpx2 bridge


def _module_of(request: Any) -> ModuleType:
    return httpx if isinstance(request, httpx.Request) else httpx2


def _to_httpx(request: Any, content: bytes) -> httpx.Request:
    if isinstance(request, httpx.Request):
        return request
    # Headers take no part in matching: leaving them out saves most of the conversion's cost.
    return httpx.Request(request.method, str(request.url), content=content)


def _native_response(module: ModuleType, response: httpx.Response) -> Any:
    if module is httpx:
        return response
    return module.Response(
        response.status_code, headers=response.headers.multi_items(), stream=response.stream
    )


_STREAM_BASES: tuple[type, ...] = (httpx.SyncByteStream, httpx.AsyncByteStream)
if httpx2 is not None:
    _STREAM_BASES += (httpx2.SyncByteStream, httpx2.AsyncByteStream)


class _ChunkStream(*_STREAM_BASES):  # type: ignore[misc]
    """A recorded body, yielded chunk by chunk (one chunk per server-sent event), sync or async."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks

    def __iter__(self) -> Iterator[bytes]:
        yield from self.chunks

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            yield chunk


class _TeeStream(*_STREAM_BASES):  # type: ignore[misc]
    """A live response stream passed through chunk by chunk; ``finish`` gets the whole body.

    Clients stop reading at the last event they need (openai at ``[DONE]``) and close the
    response: closing drains what is left, so the recording is always the whole stream.
    """

    def __init__(self, live: Any, finish: Callable[[bytes], None]) -> None:
        self.live, self.finish, self.parts, self.done = live, finish, list[bytes](), False

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self.live.iter_bytes():
            self.parts.append(chunk)
            yield chunk
        self._finish()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self.live.aiter_bytes():
            self.parts.append(chunk)
            yield chunk
        self._finish()

    def _finish(self) -> None:
        if not self.done:
            self.done = True
            self.finish(b"".join(self.parts))

    def close(self) -> None:
        if not self.done and not self.live.is_stream_consumed:
            self.parts.extend(self.live.iter_bytes())
        self._finish()
        self.live.close()

    async def aclose(self) -> None:
        if not self.done and not self.live.is_stream_consumed:
            self.parts.extend([chunk async for chunk in self.live.aiter_bytes()])
        self._finish()
        await self.live.aclose()


# ------------------------------------------------------------------------ patching transports

_sessions: list[CassetteSession] = []
_patch_lock = threading.Lock()
_originals: list[tuple[type, str, Any]] = []


def active_session() -> CassetteSession | None:
    """The innermost cassette in use, if any (shared by all threads of the process)."""
    return _sessions[-1] if _sessions else None


def _transport_targets() -> list[tuple[type, str, bool]]:
    targets: list[tuple[type, str, bool]] = [
        (httpx.HTTPTransport, "handle_request", False),
        (httpx.AsyncHTTPTransport, "handle_async_request", True),
    ]
    if httpx2 is not None:
        targets += [
            (httpx2.HTTPTransport, "handle_request", False),
            (httpx2.AsyncHTTPTransport, "handle_async_request", True),
        ]
    return targets


def _patched(original: Any, is_async: bool) -> Any:
    if is_async:

        @functools.wraps(original)
        async def handle_async_request(transport: Any, request: Any) -> Any:
            session = active_session()
            if session is None:
                return await original(transport, request)
            return await session.ahandle(request, lambda r: original(transport, r))

        return handle_async_request

    @functools.wraps(original)
    def handle_request(transport: Any, request: Any) -> Any:
        session = active_session()
        if session is None:
            return original(transport, request)
        return session.handle(request, lambda r: original(transport, r))

    return handle_request


def _push(session: CassetteSession) -> None:
    # A loaded cassette is millions of long-lived objects; without this, every full collection
    # the chain's own allocations trigger would walk them all (a 10,000-entry cassette made each
    # replayed call ~10% slower). Frozen objects are skipped by the collector until unfrozen.
    gc.freeze()
    with _patch_lock:
        if not _sessions:
            for cls, name, is_async in _transport_targets():
                original = cls.__dict__[name]
                _originals.append((cls, name, original))
                setattr(cls, name, _patched(original, is_async))
        _sessions.append(session)


def _pop(session: CassetteSession) -> None:
    with _patch_lock:
        _sessions.remove(session)
        if not _sessions:
            gc.unfreeze()
            while _originals:
                cls, name, original = _originals.pop()
                setattr(cls, name, original)


# ---------------------------------------------------------------------------- use_cassette


def mlflow_hosts() -> set[str]:
    """Hosts of the MLflow tracking and registry servers in use: they stay reachable."""
    uris = [os.environ.get("MLFLOW_TRACKING_URI", ""), os.environ.get("MLFLOW_REGISTRY_URI", "")]
    if "mlflow" in sys.modules:
        import mlflow

        uris += [mlflow.get_tracking_uri(), mlflow.get_registry_uri()]
    return {urlsplit(uri).hostname or "" for uri in uris if uri.startswith(("http://", "https://"))} - {""}


class use_cassette:  # noqa: N801 - a context manager named like a function, as in vcrpy
    """Replay (and, if the record mode allows, record) HTTP traffic from a cassette file.

    A context manager and a decorator (of sync and async functions alike)::

        with use_cassette("cassettes/qa.json", record_mode="once") as session:
            chain.invoke(...)

    ``record_mode``: none (default; or $CHAINKIT_RECORD_MODE), once, new_episodes, all.
    ``allow_hosts``: hosts that may be reached live in every mode (their traffic is not
    recorded). The MLflow tracking server of $MLFLOW_TRACKING_URI is always allowed.
    ``record_via``: send live traffic to this base URL instead (an OpenAI-compatible gateway
    or a local server); the cassette keeps the original URLs.
    ``record_errors``: also record error answers (status >= 400; default: $CHAINKIT_RECORD_ERRORS,
    else no). An error answer the client retried is never kept.
    ``client_retries``: False tells the client not to retry live error answers (for a caller
    with its own retry policy, as ``chainkit eval``).
    ``network_allows``: hosts the network guard lets other clients' sockets reach in mode none
    (HTTP sent through httpx/httpx2 to them is still answered from the cassette).
    In record mode none a missing cassette is an error at the first request it cannot answer,
    not before: a block that sends nothing needs no cassette.
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
        network_allows: Iterable[str] = (),
    ) -> None:
        self.path = Path(path)
        self.record_mode = RecordMode.parse(record_mode)
        env_hosts = [h.strip() for h in os.environ.get(ALLOW_HOSTS_VARIABLE, "").split(",") if h.strip()]
        self.allow_hosts = [*allow_hosts, *env_hosts]
        self.record_via = record_via
        self.record_errors = record_errors
        self.client_retries = client_retries
        self.network_allows = list(network_allows)
        self._entered: list[tuple[CassetteSession, NetworkGuard | None, str | None]] = []

    def __enter__(self) -> CassetteSession:
        session = CassetteSession(
            self.path,
            self.record_mode,
            allow_hosts=self.allow_hosts,
            record_via=self.record_via,
            record_errors=self.record_errors,
            client_retries=self.client_retries,
        )
        guard = None
        if session.mode is RecordMode.NONE:
            guard = NetworkGuard([*session.allow_hosts, *mlflow_hosts(), *self.network_allows])
            guard.__enter__()
        previous_key = os.environ.get("OPENAI_API_KEY")
        if previous_key is None and (session.mode is RecordMode.NONE or session.record_via):
            os.environ["OPENAI_API_KEY"] = PLACEHOLDER_API_KEY
        _push(session)
        self._entered.append((session, guard, previous_key))
        return session

    def __exit__(self, *exc_info: object) -> None:
        session, guard, previous_key = self._entered.pop()
        _pop(session)
        if previous_key is None and os.environ.get("OPENAI_API_KEY") == PLACEHOLDER_API_KEY:
            del os.environ["OPENAI_API_KEY"]
        if guard is not None:
            guard.__exit__(*exc_info)
        session.close()

    def __call__(self, func: F) -> F:
        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                with self:
                    return await func(*args, **kwargs)

            return async_wrapper  # type: ignore[return-value]

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with self:
                return func(*args, **kwargs)

        return wrapper  # type: ignore[return-value]


__all__ = ["CassetteSession", "RecordMode", "active_session", "use_cassette"]
