"""The httpx and httpx2 door: patch their default transports so that every request goes
through the active cassette session.

openai 3.x sends through ``httpx2``, which respx does not patch; openai 2.x and most other
SDKs send through ``httpx``. While a cassette is in use, ``handle_request`` /
``handle_async_request`` of both (sync and async) are patched: each request is converted to an
``httpx.Request`` and resolved by the session's respx router; what it cannot answer is sent live
(when the record mode allows) and recorded, streams passed through as they arrive.

This bridge was chosen over ``respx.mock(using="httpcore2")`` (pytest-httpx2's mocker)
because one code path then serves httpx and httpx2 alike, with no extra dependency and no
reliance on a private mocker registry, at the same measured cost.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Callable, Iterator
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

import httpx

from toolkit.cassette import Interaction, RecordedRequest, RecordedResponse
from toolkit.redaction import kept_response_headers
from toolkit.session import _STREAM_BASES, CassetteSession, ChunkStream, active_session, live_response

try:  # openai 3.x's HTTP client; optional so that httpx-only projects work too
    import httpx2
except ImportError:  # pragma: no cover - httpx2 is a dependency of openai 3.x
    httpx2 = None  # type: ignore[assignment]


def handle(session: CassetteSession, request: Any, send: Callable[[Any], Any]) -> Any:
    """Answer a native (httpx or httpx2) request; ``send`` is the real transport."""
    if session.passes(request.url.host):
        return send(request)
    module = _module_of(request)
    found = session.lookup(_to_httpx(request, request.read()))
    if isinstance(found, httpx.Response):
        return _native_response(module, found)
    live = send(_upstream(session, request))
    if _is_event_stream(live):
        return _tee(session, module, live, found)
    interaction = Interaction(found, live_response(live.status_code, live.headers, live.read()))
    live.close()
    session.commit(interaction)
    return _to_client(session, module, interaction.response)


async def ahandle(session: CassetteSession, request: Any, send: Callable[[Any], Any]) -> Any:
    if session.passes(request.url.host):
        return await send(request)
    module = _module_of(request)
    found = session.lookup(_to_httpx(request, await request.aread()))
    if isinstance(found, httpx.Response):
        return _native_response(module, found)
    live = await send(_upstream(session, request))
    if _is_event_stream(live):
        return _tee(session, module, live, found)
    interaction = Interaction(found, live_response(live.status_code, live.headers, await live.aread()))
    await live.aclose()
    session.commit(interaction)
    return _to_client(session, module, interaction.response)


def _to_client(session: CassetteSession, module: ModuleType, recorded: RecordedResponse) -> Any:
    stream = ChunkStream(recorded.chunks())
    response = module.Response(recorded.status, headers=recorded.headers, stream=stream)
    if session.no_client_retry(recorded.status):
        # One retry policy, not two stacked: the openai SDKs honour this header.
        response.headers["x-should-retry"] = "false"
    return response


def _upstream(session: CassetteSession, request: Any) -> Any:
    """The request to send live: as is, or redirected to $CHAINKIT_RECORD_VIA."""
    if not session.record_via:
        return request
    via = urlsplit(session.record_via)
    # In place: rebuilding the request cost ~0.2 ms a call, in a path that is CPU-bound.
    request.url = request.url.copy_with(scheme=via.scheme, host=via.hostname, port=via.port)
    request.headers["host"] = via.netloc
    return request


def _tee(session: CassetteSession, module: ModuleType, live: Any, sent: RecordedRequest) -> Any:
    """Pass a live stream through as it arrives; record its events once it has ended."""

    def finish(body: bytes) -> None:
        session.commit(Interaction(sent, live_response(live.status_code, live.headers, body, streamed=True)))

    headers = kept_response_headers(live.headers)
    if session.no_client_retry(live.status_code):
        headers["x-should-retry"] = "false"
    return module.Response(live.status_code, headers=headers, stream=_TeeStream(live, finish))


def _is_event_stream(response: Any) -> bool:
    return "text/event-stream" in response.headers.get("content-type", "")


def _module_of(request: Any) -> ModuleType:
    return httpx if isinstance(request, httpx.Request) else httpx2


def _to_httpx(request: Any, content: bytes) -> httpx.Request:
    if isinstance(request, httpx.Request):
        return request
    # Headers take no part in matching: leaving them out saves most of the conversion's cost.
    # The URL is parsed once per URL, not per request; a stream instead of content= spares
    # the content headers nobody reads (~35 us a call before, ~5 us now).
    converted = httpx.Request(request.method, _httpx_url(str(request.url)), stream=httpx.ByteStream(content))
    converted.read()
    return converted


_URLS: dict[str, httpx.URL] = {}  # httpx URLs are immutable: one per URL a client sends to
_MAX_URLS = 1024


def _httpx_url(text: str) -> httpx.URL:
    url = _URLS.get(text)
    if url is None:
        if len(_URLS) >= _MAX_URLS:
            _URLS.clear()
        url = _URLS[text] = httpx.URL(text)
    return url


def _native_response(module: ModuleType, response: httpx.Response) -> Any:
    if module is httpx:
        return response
    # Raw (bytes) headers: httpx2 takes them without encoding each name and value again.
    return module.Response(response.status_code, headers=response.headers.raw, stream=response.stream)


class _TeeStream(*_STREAM_BASES):  # type: ignore[misc]
    """A live response stream passed through chunk by chunk; ``finish`` gets the whole body.

    Clients stop reading at the last event they need (openai at ``[DONE]``) and close the
    response: closing drains what is left, so the recording is always the whole stream.
    """

    def __init__(self, live: Any, finish: Callable[[bytes], None]) -> None:
        self.live, self.finish, self.parts, self.done = live, finish, list[bytes](), False
        # The live iterator, kept: httpx refuses a second one once reading began.
        self.chunks: Iterator[bytes] | None = None
        self.achunks: AsyncIterator[bytes] | None = None

    def __iter__(self) -> Iterator[bytes]:
        self.chunks = self.live.iter_bytes()
        for chunk in self.chunks:
            self.parts.append(chunk)
            yield chunk
        self._finish()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        self.achunks = self.live.aiter_bytes()
        async for chunk in self.achunks:
            self.parts.append(chunk)
            yield chunk
        self._finish()

    def _finish(self) -> None:
        if not self.done:
            self.done = True
            self.finish(b"".join(self.parts))

    def close(self) -> None:
        if not self.done:
            self.parts.extend(self.chunks if self.chunks is not None else self.live.iter_bytes())
        self._finish()
        self.live.close()

    async def aclose(self) -> None:
        if not self.done:
            chunks = self.achunks if self.achunks is not None else self.live.aiter_bytes()
            self.parts.extend([chunk async for chunk in chunks])
        self._finish()
        await self.live.aclose()


# ------------------------------------------------------------------------ patching transports


def patches() -> list[tuple[type, str, Callable[[Any], Any]]]:
    """(class, method name, wrap) for each transport method to patch while a cassette is active."""
    targets: list[tuple[type, str, Callable[[Any], Any]]] = [
        (httpx.HTTPTransport, "handle_request", _patched_sync),
        (httpx.AsyncHTTPTransport, "handle_async_request", _patched_async),
    ]
    if httpx2 is not None:
        targets += [
            (httpx2.HTTPTransport, "handle_request", _patched_sync),
            (httpx2.AsyncHTTPTransport, "handle_async_request", _patched_async),
        ]
    return targets


def _patched_sync(original: Any) -> Any:
    @functools.wraps(original)
    def handle_request(transport: Any, request: Any) -> Any:
        session = active_session()
        if session is None:
            return original(transport, request)
        return handle(session, request, lambda r: original(transport, r))

    return handle_request


def _patched_async(original: Any) -> Any:
    @functools.wraps(original)
    async def handle_async_request(transport: Any, request: Any) -> Any:
        session = active_session()
        if session is None:
            return await original(transport, request)
        return await ahandle(session, request, lambda r: original(transport, r))

    return handle_async_request
