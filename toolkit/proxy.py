"""A replay proxy: an OpenAI-compatible HTTP server that answers from cassettes.

For what chainkit cannot patch: a clean environment without chainkit, a container, a client in
another language, a remote Spark executor. Point the client's base URL at the proxy
(``OPENAI_BASE_URL=http://127.0.0.1:8765/v1``); the proxy re-sends each request, as if to
``https://api.openai.com`` + its path, through an ``httpx.AsyncClient`` inside
:func:`~toolkit.replay.use_cassette`. So the proxy is one more door of the replay core, not a
second core: the same transport patch answers it, with the same matching, the same miss
message, the same recording (durable log, redaction: request headers such as Authorization go
upstream but are never recorded) and the same ``CHAINKIT_RECORD_VIA`` redirection, which
``--upstream`` sets. Cassettes recorded through the proxy and in process are interchangeable.

Server: uvicorn (ASGI server: HTTP/1.1 keep-alive, concurrent connections on one event loop,
graceful shutdown that drains requests in flight) with starlette (request parsing, streamed
responses); both come with MLflow, so they add no dependency. One process, one worker: the
cassettes' state (the n-th identical call, recordings) lives in it.

A miss is an HTTP 404 (WireMock's choice for an unmatched request; not a status the OpenAI SDKs
retry, and ``x-should-retry: false`` says so to those that read it) with an OpenAI-shaped error
body carrying chainkit's whole miss message, so the client's exception shows it.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from types import FrameType

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from toolkit.errors import ChainkitError, ReplayMissError, UsageError
from toolkit.replay import CassetteSession, RecordMode, use_cassette

#: What clients mean: requests are matched (and recorded) as if sent here.
API_BASE = "https://api.openai.com"
DEFAULT_PORT = 8765
#: Not 408/409/429/5xx, which the OpenAI SDKs retry: a miss answers the same every time.
MISS_STATUS = 404
#: Seconds the requests in flight get to finish after SIGINT/SIGTERM (Docker waits 10 before KILL).
GRACEFUL_SECONDS = 8
#: Longer than clients keep idle connections (httpx: 5 s, uvicorn's default too): a connection
#: the server closed just as the client reused it would fail that request.
KEEP_ALIVE_SECONDS = 75
#: A live call may generate for minutes; the client's own timeout (openai: 600 s) decides.
UPSTREAM_TIMEOUT = httpx.Timeout(600.0, connect=15.0)
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
# Per connection, or recomputed by whoever sends next. accept-encoding too: httpx asks the
# upstream for what it can decode, not what the client could.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "content-encoding",
        "accept-encoding",
    }
)

logger = logging.getLogger(__name__)


def error_response(status: int, message: str, code: str, *, retry: bool) -> JSONResponse:
    """An error the OpenAI SDKs parse: ``{"error": {"message", "type", "param", "code"}}``."""
    body = {"error": {"message": message, "type": "chainkit_error", "param": None, "code": code}}
    return JSONResponse(body, status, headers={"x-should-retry": "true" if retry else "false"})


class ReplayProxy:
    """The ASGI application (``.app``): every request is re-sent to ``api_base`` + its path
    through the transport that the active cassettes answer."""

    def __init__(self, api_base: str = API_BASE) -> None:
        self.api_base = api_base.rstrip("/")
        self.client: httpx.AsyncClient | None = None
        route = Route("/{path:path}", self.forward, methods=METHODS)
        self.app = Starlette(routes=[route], lifespan=self._lifespan)

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        # The default transport: the one use_cassette patches.
        async with httpx.AsyncClient(timeout=UPSTREAM_TIMEOUT) as client:
            self.client = client
            yield

    async def forward(self, request: Request) -> Response:
        assert self.client is not None, "the lifespan opens the client"
        url = self.api_base + request.url.path + (f"?{request.url.query}" if request.url.query else "")
        headers = [(k, v) for k, v in request.headers.raw if k.decode("latin-1") not in _HOP_BY_HOP]
        body = await request.body()
        outgoing = self.client.build_request(request.method, url, headers=headers, content=body)
        try:
            answer = await self.client.send(outgoing, stream=True)
        except ReplayMissError as miss:
            logger.warning("chainkit proxy: %s", str(miss).split("\n", 1)[0])
            return error_response(MISS_STATUS, str(miss), "replay_miss", retry=False)
        except ChainkitError as exc:  # a recording refused (a secret in it), a cassette unreadable
            return error_response(500, str(exc), "chainkit_error", retry=False)
        except httpx.HTTPError as exc:  # the upstream failed (record modes): a gateway error, retried
            message = f"chainkit proxy could not complete {request.method} {url} upstream: {exc!r}"
            return error_response(502, message, "upstream_unreachable", retry=True)
        kept = {k: v for k, v in answer.headers.items() if k.lower() not in _HOP_BY_HOP}
        if "text/event-stream" in answer.headers.get("content-type", ""):
            # One HTTP chunk per recorded event, sent as soon as it is yielded.
            return StreamingResponse(_relay(answer), answer.status_code, kept)
        try:
            content = b"".join([chunk async for chunk in answer.aiter_raw()])
        finally:
            await answer.aclose()
        return Response(content, answer.status_code, kept)


async def _relay(answer: httpx.Response) -> AsyncIterator[bytes]:
    try:
        async for chunk in answer.aiter_raw():
            yield chunk
    finally:  # also when the client hangs up: a live stream is then drained and recorded whole
        await answer.aclose()


def listen(host: str, port: int) -> socket.socket:
    """A listening socket (``port`` 0: a free one), bound before anything is loaded."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP spelled out: asyncio sets TCP_NODELAY only on sockets that say so, and without
    # it every answer (head, then body: two writes) waited ~40 ms for the client's delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise UsageError(
            f"chainkit proxy cannot listen on {host}:{port} ({exc.strerror}); pick another --port "
            "(0 picks a free one) or --host"
        ) from exc
    return sock


def base_url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{f'[{host}]' if ':' in host else host}:{port}/v1"


@contextlib.contextmanager
def _stop_on_signals(stop: Callable[[], None]) -> Iterator[None]:
    """SIGINT/SIGTERM ask the server to stop, also before it runs and while the cassettes are
    saved after it. uvicorn installs its own handlers while it serves and, once shut down,
    re-raises the signal to the handler it found: this one, so the process ends normally."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        stop()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def serve(
    cassettes: Sequence[str | Path],
    *,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    record_mode: str | RecordMode | None = None,
    upstream: str | None = None,
    on_ready: Callable[[str], None] | None = None,
) -> list[CassetteSession]:
    """Serve ``cassettes`` until SIGINT/SIGTERM; returns their closed (saved) sessions.

    Several cassettes are stacked as nested ``use_cassette`` blocks, first outermost: each
    answers what it holds, and new recordings go into the last. ``upstream``: where live
    requests go in record modes (default: $CHAINKIT_RECORD_VIA, else the API itself); the
    cassettes keep ``https://api.openai.com`` URLs either way. ``on_ready`` gets the base URL
    for clients once the socket listens and the cassettes are loaded.
    """
    if not cassettes:
        raise UsageError("chainkit proxy needs at least one CASSETTE to answer from")
    sock = listen(host, port)
    proxy = ReplayProxy()
    config = uvicorn.Config(
        proxy.app,
        log_level="warning",
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=GRACEFUL_SECONDS,
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
    )
    server = uvicorn.Server(config)
    entered: list[CassetteSession] = []

    def stop() -> None:
        server.should_exit = True

    with sock, _stop_on_signals(stop), contextlib.ExitStack() as stack:
        for path in cassettes:
            entered.append(stack.enter_context(use_cassette(path, record_mode, record_via=upstream)))
        if on_ready is not None:
            on_ready(base_url(sock))  # connections made from now on wait in the listen backlog
        server.run(sockets=[sock])
    return entered


__all__ = ["API_BASE", "MISS_STATUS", "ReplayProxy", "error_response", "serve"]
