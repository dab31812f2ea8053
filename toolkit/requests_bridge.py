"""The requests door: ``HTTPAdapter.send`` answered by the active cassette session.

MLflow's LLM judges (``Correctness``, ``make_judge`` on ``openai:/...``), MLflow's REST clients
and many SDKs send with requests, which the httpx door does not see. While a cassette is in use,
``requests.adapters.HTTPAdapter.send`` (where every ``Session`` request ends, whatever its
mounts) is patched: the request is converted to an ``httpx.Request`` and resolved by the same
session as httpx's, with the same matching, recording, redaction and miss message. The MLflow
tracking server's own traffic passes untouched and unrecorded, as does MLflow's usage telemetry
(in mode none the network guard then refuses its sockets, which MLflow shrugs off).

A live event stream is passed through as it arrives (``stream=True``, ``iter_lines``) and
recorded once it has ended, as for httpx.
"""

from __future__ import annotations

import functools
import io
import sys
from collections.abc import Callable, Iterator
from http import HTTPStatus
from typing import Any
from urllib.parse import urlsplit

import httpx

from toolkit.cassette import Interaction, RecordedRequest
from toolkit.network import is_mlflow_server
from toolkit.redaction import kept_response_headers
from toolkit.session import CassetteSession, active_session, live_response


def handle(
    session: CassetteSession, adapter: Any, request: Any, send: Callable[..., Any], **kwargs: Any
) -> Any:
    """Answer a ``requests.PreparedRequest``; ``send`` is the real ``HTTPAdapter.send``."""
    url = request.url.decode() if isinstance(request.url, bytes) else request.url
    if session.passes(urlsplit(url).hostname or "") or is_mlflow_server(url) or _mlflow_telemetry():
        return send(adapter, request, **kwargs)
    found = session.lookup(httpx.Request(request.method, url, content=_body(request)))
    if isinstance(found, httpx.Response):
        return _response(adapter, request, found.status_code, found.headers, list(found.iter_raw()))
    live = send(adapter, _upstream(session, request.copy()), **{**kwargs, "stream": True})
    if "text/event-stream" in live.headers.get("content-type", ""):
        return _tee(session, adapter, request, live, found)
    recorded = live_response(live.status_code, live.headers, live.content)
    live.close()
    session.commit(Interaction(found, recorded))
    return _response(adapter, request, recorded.status, recorded.headers, recorded.chunks(), session)


def _mlflow_telemetry() -> bool:
    """Is the request MLflow's usage telemetry (its own business, not the chain's)? Known by the
    code that called requests: the first frame outside requests and this door."""
    frame = sys._getframe(2)
    while frame is not None and frame.f_globals.get("__name__", "").startswith(("requests.", __name__)):
        frame = frame.f_back  # type: ignore[assignment]
    return frame is not None and str(frame.f_globals.get("__name__", "")).startswith("mlflow.telemetry.")


def _body(request: Any) -> bytes:
    body = request.body
    if body is None:
        return b""
    if isinstance(body, str):
        return body.encode("utf-8")
    if isinstance(body, bytes):
        return body
    # A file or generator body (an upload): read it once, send the bytes on.
    content = body.read() if hasattr(body, "read") else b"".join(body)
    request.body = content
    return content if isinstance(content, bytes) else content.encode("utf-8")


def _upstream(session: CassetteSession, request: Any) -> Any:
    """The request to send live: as is, or redirected to $CHAINKIT_RECORD_VIA."""
    if session.record_via:
        via, parts = urlsplit(session.record_via), urlsplit(request.url)
        request.url = parts._replace(scheme=via.scheme, netloc=via.netloc).geturl()
        request.headers["Host"] = via.netloc
    return request


def _response(
    adapter: Any,
    request: Any,
    status: int,
    headers: Any,
    chunks: list[bytes],
    session: CassetteSession | None = None,
) -> Any:
    """The answer as a ``requests.Response``. A stream's events come from a urllib3 response,
    one chunk per event as they were sent. A body in one piece is built directly, as requests'
    adapter would after reading it: no urllib3 response to make and read back (that round trip
    was ~40% of the door's cost per call); ``raw`` is then a file over the same bytes."""
    if len(chunks) != 1:
        headers = dict(headers.items())  # httpx.Headers: items() is ~10x cheaper than dict() of it
        if session is not None and session.no_client_retry(status):
            headers["x-should-retry"] = "false"
        return adapter.build_response(request, _raw(status, headers, iter(chunks)))
    from requests import Response
    from requests.structures import CaseInsensitiveDict
    from requests.utils import get_encoding_from_headers

    body = chunks[0]
    response = Response()
    response.status_code, response.reason = status, _reason(status)
    response.headers = CaseInsensitiveDict(headers.items())
    if session is not None and session.no_client_retry(status):
        response.headers["x-should-retry"] = "false"
    response.encoding = get_encoding_from_headers(response.headers)
    response.url = request.url.decode() if isinstance(request.url, bytes) else request.url
    response.request, response.connection = request, adapter
    response.raw = io.BytesIO(body)
    response._content, response._content_consumed = body, True
    return response


def _tee(session: CassetteSession, adapter: Any, request: Any, live: Any, sent: RecordedRequest) -> Any:
    """Pass a live stream through as it arrives; record its events once it has ended."""
    parts: list[bytes] = []

    def finish() -> None:
        live.close()
        recorded = live_response(live.status_code, live.headers, b"".join(parts), streamed=True)
        session.commit(Interaction(sent, recorded))

    def chunks() -> Iterator[bytes]:
        source = live.iter_content(chunk_size=None)
        try:
            for chunk in source:
                parts.append(chunk)
                yield chunk
        except GeneratorExit:  # the client closed early: what it did not read is still recorded
            parts.extend(source)
            finish()
            raise
        finish()

    headers = kept_response_headers(live.headers)
    if session.no_client_retry(live.status_code):
        headers["x-should-retry"] = "false"
    return adapter.build_response(request, _raw(live.status_code, headers, chunks()))


def _raw(status: int, headers: dict[str, str], chunks: Iterator[bytes]) -> Any:
    """The urllib3 response requests builds its ``Response`` from, its body read from ``chunks``."""
    from urllib3 import HTTPResponse

    return HTTPResponse(
        body=_ChunkReader(chunks),
        headers=headers,
        status=status,
        reason=_reason(status),
        preload_content=False,
        decode_content=False,
    )


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


class _ChunkReader(io.RawIOBase):
    """A file over an iterator of chunks: what urllib3 reads a response body from."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks, self._pending = chunks, b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._pending:
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._pending = chunk
        size = min(len(buffer), len(self._pending))
        buffer[:size], self._pending = self._pending[:size], self._pending[size:]
        return size

    def close(self) -> None:
        if not self.closed:
            close = getattr(self._chunks, "close", None)
            if close is not None:
                close()  # a generator's finally runs: a tee records what is left
        super().close()


# ------------------------------------------------------------------------ patching requests


def patches() -> list[tuple[type, str, Callable[[Any], Any]]]:
    """(class, method name, wrap) to patch while a cassette is active: none without requests."""
    try:
        from requests.adapters import HTTPAdapter
    except ImportError:  # pragma: no cover - requests comes with mlflow
        return []
    return [(HTTPAdapter, "send", _patched)]


def _patched(original: Any) -> Any:
    @functools.wraps(original)
    def send(adapter: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
        session = active_session()
        if session is None:
            return original(adapter, request, *args, **kwargs)
        for name, value in zip(("stream", "timeout", "verify", "cert", "proxies"), args, strict=False):
            kwargs[name] = value
        return handle(session, adapter, request, original, **kwargs)

    return send
