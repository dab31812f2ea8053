"""The aiohttp door: every ``ClientSession`` request answered by the active cassette session.

MLflow's gateway providers (``mlflow/gateway/providers/utils.py``) and many async SDKs send with
aiohttp, which the httpx door does not see. While a cassette is in use, each request gets a
client middleware (aiohttp >= 3.12), placed after the session's own so that it sees the request
as it would be sent: the request is converted to an ``httpx.Request`` and resolved by the same
session as httpx's (one matching, one recording, one miss message). A recorded answer is handed
back as an aiohttp ``ClientResponse`` without opening a connection; an unrecorded one is sent
live by aiohttp itself and recorded. A live event stream is passed on as it arrives and
recorded once it has ended, also when the client stops reading early. The MLflow tracking
server's own traffic passes untouched and unrecorded.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from types import SimpleNamespace
from typing import Any

import httpx

from toolkit.cassette import Interaction, RecordedRequest
from toolkit.network import is_mlflow_server
from toolkit.redaction import kept_response_headers
from toolkit.session import CassetteSession, active_session, live_response

Handler = Callable[[Any], Awaitable[Any]]


async def handle(session: CassetteSession, request: Any, send: Handler) -> Any:
    """Answer an ``aiohttp.ClientRequest``; ``send`` is the rest of aiohttp's handler chain."""
    url = str(request.url)
    if session.passes(request.url.host or "") or is_mlflow_server(url):
        return await send(request)
    found = session.lookup(httpx.Request(request.method, url, content=await _body(request)))
    if isinstance(found, httpx.Response):
        return _response(request, found.status_code, found.headers, list(found.iter_raw()))
    _upstream(session, request)
    live = await send(request)
    if "text/event-stream" in live.headers.get("content-type", ""):
        return _tee(session, request, live, found)
    try:
        recorded = live_response(live.status, live.headers, await live.read())
    finally:
        live.release()
    session.commit(Interaction(found, recorded))
    headers = dict(recorded.headers)
    if session.no_client_retry(recorded.status):
        headers["x-should-retry"] = "false"
    return _response(request, recorded.status, headers, recorded.chunks())


async def _body(request: Any) -> bytes:
    body = request.body
    if body is None or not hasattr(body, "as_bytes"):
        return b""
    content: bytes = await body.as_bytes()
    return content


def _upstream(session: CassetteSession, request: Any) -> None:
    """Redirect the request to $CHAINKIT_RECORD_VIA, if set (the cassette keeps the original URL)."""
    if session.record_via:
        from yarl import URL

        via = URL(session.record_via)
        request.url = request.url.with_scheme(via.scheme).with_host(via.host or "").with_port(via.port)
        request.headers["Host"] = via.raw_authority


def _response(request: Any, status: int, headers: Any, chunks: list[bytes]) -> Any:
    """A ``ClientResponse`` whose body is ``chunks``, known up front: no connection behind it."""
    response = _new_response(request, status, headers)
    for chunk in chunks:
        response.content.feed_data(chunk)
    response.content.feed_eof()
    return response


def _tee(session: CassetteSession, request: Any, live: Any, sent: RecordedRequest) -> Any:
    """Pass a live stream on as it arrives; record the whole of it once it has ended."""
    headers = kept_response_headers(live.headers)
    if session.no_client_retry(live.status):
        headers["x-should-retry"] = "false"
    response = _new_response(request, live.status, headers, streaming=True)
    parts: list[bytes] = []

    async def pump() -> None:
        try:
            async for chunk in live.content.iter_any():
                parts.append(chunk)
                response.content.feed_data(chunk)
        except Exception as exc:  # the client sees the failure; a broken stream is not recorded
            response.content.set_exception(exc)
            return
        finally:
            live.release()
        response.content.feed_eof()
        session.commit(
            Interaction(sent, live_response(live.status, live.headers, b"".join(parts), streamed=True))
        )

    task = asyncio.get_running_loop().create_task(pump())
    _pumps.add(task)
    task.add_done_callback(_pumps.discard)

    async def drained() -> None:
        # Leaving ``async with response`` waits for the rest of the stream: the recording is
        # the whole stream also when the client stopped reading early.
        await asyncio.wait([task])

    response.wait_for_close = drained
    return response


#: Streams being recorded: a task with no reference could be collected before it ends.
_pumps: set[asyncio.Task[None]] = set()


class _NoConnection:
    """Stands in for the protocol an aiohttp ``StreamReader`` pauses and resumes. ``connected``:
    a reader waits for more data only while its protocol is connected (a tee's is, until the
    live stream has ended); a body known up front needs no waiting."""

    _reading_paused = False

    def __init__(self, connected: bool) -> None:
        self.connected = connected

    def pause_reading(self) -> None:
        pass

    def resume_reading(self, resume_parser: bool = True) -> None:
        pass


def _new_response(request: Any, status: int, headers: Any, *, streaming: bool = False) -> Any:
    from aiohttp import ClientResponse, streams
    from multidict import CIMultiDict, CIMultiDictProxy

    loop = asyncio.get_running_loop()
    response = ClientResponse(
        request.method,
        request.url,
        writer=None,
        continue100=None,
        timer=None,  # type: ignore[arg-type]
        request_info=request.request_info,
        traces=[],
        loop=loop,
        session=None,  # type: ignore[arg-type]
        stream_writer=SimpleNamespace(output_size=0),  # type: ignore[arg-type]
    )
    response.status = status
    try:
        response.reason = HTTPStatus(status).phrase
    except ValueError:
        response.reason = ""
    pairs = CIMultiDict((str(name), str(value)) for name, value in headers.items())
    response._headers = CIMultiDictProxy(pairs)
    response._raw_headers = tuple((k.encode(), v.encode()) for k, v in pairs.items())
    # The whole body may be one chunk: size the reader's line limit so no line in it is refused.
    protocol = _NoConnection(connected=streaming)
    response.content = streams.StreamReader(protocol, 2**20, loop=loop)  # type: ignore[arg-type]
    return response


async def _middleware(request: Any, handler: Handler) -> Any:
    session = active_session()
    if session is None:
        return await handler(request)
    return await handle(session, request, handler)


# ------------------------------------------------------------------------- patching aiohttp


def patches() -> list[tuple[type, str, Callable[[Any], Any]]]:
    """(class, method name, wrap) to patch while a cassette is active: none without aiohttp,
    or with an aiohttp older than 3.12 (no client middlewares; its sockets are still refused
    in mode none by the network guard)."""
    try:
        from aiohttp import ClientSession
    except ImportError:
        return []
    if "middlewares" not in inspect.signature(ClientSession._request).parameters:
        return []  # pragma: no cover - aiohttp < 3.12
    return [(ClientSession, "_request", _patched)]


def _patched(original: Any) -> Any:
    @functools.wraps(original)
    def _request(client: Any, *args: Any, middlewares: Any = None, **kwargs: Any) -> Any:
        own = client._middlewares if middlewares is None else middlewares
        return original(client, *args, middlewares=(*own, _middleware), **kwargs)

    return _request
