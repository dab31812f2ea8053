"""Record and replay HTTP traffic: ``use_cassette``, the one entry point every door builds on.

While a cassette is in use, each client library's door is patched in (:mod:`toolkit.httpx_bridge`
for httpx and httpx2, :mod:`toolkit.requests_bridge`, :mod:`toolkit.aiohttp_bridge`), and every
request it sends goes through the innermost active :class:`~toolkit.session.CassetteSession`
(or the one :func:`~toolkit.session.answering` names in its context): answered from the
cassette, or sent live and recorded when the record mode allows it, or refused with the closest
recorded request and the fields that differ.

    with use_cassette("cassettes/qa.json", record_mode="none"):
        chain.invoke({"question": "What is MLflow?"})
"""

from __future__ import annotations

import functools
import gc
import inspect
import os
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from toolkit import aiohttp_bridge, httpx_bridge, requests_bridge
from toolkit.network import NetworkGuard, mlflow_hosts
from toolkit.record_mode import (
    ALLOW_HOSTS_VARIABLE,
    RECORD_ERRORS_VARIABLE,
    RECORD_MODE_VARIABLE,
    RECORD_VIA_VARIABLE,
    RecordMode,
    allowed_hosts_from_environment,
)
from toolkit.session import CLIENT_RETRIED_STATUSES, CassetteSession, Deferral, _sessions, active_session

#: Set as OPENAI_API_KEY while replaying without a key: clients refuse to start without one.
PLACEHOLDER_API_KEY = "chainkit-replay-placeholder"
#: MLflow's model catalog location (judges read context sizes and prices from it).
CATALOG_VARIABLE = "MLFLOW_MODEL_CATALOG_URI"
#: The doors whose client methods are patched while a cassette is active.
DOORS = (httpx_bridge, requests_bridge, aiohttp_bridge)

F = TypeVar("F", bound=Callable[..., Any])

_patch_lock = threading.Lock()
_originals: list[tuple[type, str, Any]] = []


def _push(session: CassetteSession) -> None:
    # A loaded cassette is millions of long-lived objects; without this, every full collection
    # the chain's own allocations trigger would walk them all (a 10,000-entry cassette made each
    # replayed call ~10% slower). Frozen objects are skipped by the collector until unfrozen.
    gc.freeze()
    with _patch_lock:
        if not _sessions:
            for door in DOORS:
                for cls, name, wrap in door.patches():
                    original = cls.__dict__[name]
                    _originals.append((cls, name, original))
                    setattr(cls, name, wrap(original))
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
    ``ignore_json_paths``: JSON body fields left out of matching (``user``, ``metadata``,
    ``messages[*].name``): fields that change from run to run; a miss names them.
    ``defer``: called with a request no recording answers (its key and body) before it would
    be sent or refused; an error it returns is raised instead (the Batch API's rounds).
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
        ignore_json_paths: Iterable[str] = (),
        defer: Deferral | None = None,
    ) -> None:
        self.path = Path(path)
        self.defer = defer
        self.ignore_json_paths = list(ignore_json_paths)
        self.record_mode = RecordMode.parse(record_mode)
        self.allow_hosts = [*allow_hosts, *allowed_hosts_from_environment()]
        self.record_via = record_via
        self.record_errors = record_errors
        self.client_retries = client_retries
        self.network_allows = list(network_allows)
        self._entered: list[tuple[CassetteSession, NetworkGuard | None, dict[str, str]]] = []

    def __enter__(self) -> CassetteSession:
        session = CassetteSession(
            self.path,
            self.record_mode,
            allow_hosts=self.allow_hosts,
            record_via=self.record_via,
            record_errors=self.record_errors,
            client_retries=self.client_retries,
            ignore_json_paths=self.ignore_json_paths,
            defer=self.defer,
        )
        guard = None
        if session.mode is RecordMode.NONE:
            guard = NetworkGuard([*session.allow_hosts, *mlflow_hosts(), *self.network_allows])
            guard.__enter__()
        placed = {}  # variables set while the cassette is in use, removed on exit
        if "OPENAI_API_KEY" not in os.environ and (session.mode is RecordMode.NONE or session.record_via):
            placed["OPENAI_API_KEY"] = PLACEHOLDER_API_KEY
        if CATALOG_VARIABLE not in os.environ:
            # MLflow's judges fetch a model catalog from GitHub at their first call (7 s of
            # retries offline); the copy bundled with MLflow answers the same, deterministically.
            placed[CATALOG_VARIABLE] = ""
        os.environ.update(placed)
        _push(session)
        self._entered.append((session, guard, placed))
        return session

    def __exit__(self, *exc_info: object) -> None:
        session, guard, placed = self._entered.pop()
        _pop(session)
        for name, value in placed.items():
            if os.environ.get(name) == value:
                del os.environ[name]
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


__all__ = [
    "ALLOW_HOSTS_VARIABLE",
    "CLIENT_RETRIED_STATUSES",
    "PLACEHOLDER_API_KEY",
    "RECORD_ERRORS_VARIABLE",
    "RECORD_MODE_VARIABLE",
    "RECORD_VIA_VARIABLE",
    "CassetteSession",
    "RecordMode",
    "active_session",
    "mlflow_hosts",
    "use_cassette",
]
