"""Closing the network: in record mode ``none`` no byte leaves the process.

HTTP sent through httpx, httpx2, requests or aiohttp is answered from the cassette before it
reaches a socket.
Everything else is refused while a guard is active, unless its host was allowed explicitly (the
MLflow tracking server, hosts given with ``--allow-host``, loopback when a test opts in):

- An audit hook (:func:`sys.addaudithook`) sees what CPython's C socket module does, whoever
  calls it (requests, urllib3, aiohttp, tiktoken's download, ``_socket`` used directly): the
  events ``socket.connect``, ``socket.sendto``, ``socket.sendmsg`` (UDP needs no connect),
  ``socket.getaddrinfo``, ``socket.gethostbyname``, ``socket.gethostbyaddr`` and
  ``socket.getnameinfo`` are raised before the operation, and raising from the hook aborts it:
  the caller gets :class:`~toolkit.errors.NetworkBlockedError` as it is. A hook cannot be
  removed: it is added once, at the first guard, and returns at once while no guard is active.
- :meth:`socket.socket.connect` (``connect_ex``, ``sendto``, ``sendmsg``) is checked in Python
  too, because C resolves a host *name* in the address before it raises the event: checking
  first sends no DNS query. :func:`socket.getaddrinfo` is wrapped to learn the addresses of an
  allowed name, which ``connect()`` then lets through.

Unix-domain sockets (event-loop wake-up pipes, local IPC) are not network and stay open. Not
covered: child processes (they have their own sockets), code that reaches the C library's
sockets without CPython's socket module (a C extension, ctypes), and the DNS query of a name
given straight to ``_socket.socket.connect`` (the connection itself is refused).
"""

from __future__ import annotations

import ipaddress
import os
import socket
import sys
import threading
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urlsplit

from toolkit.errors import NetworkBlockedError

_real_getaddrinfo = socket.getaddrinfo
_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex
_real_sendto = socket.socket.sendto
_real_sendmsg = socket.socket.sendmsg

_INET = (socket.AF_INET, socket.AF_INET6)
#: Audit events whose arguments start with (socket, address): refused by the address's host.
_ADDRESS_EVENTS = frozenset({"socket.connect", "socket.sendto", "socket.sendmsg"})
#: Audit events whose first argument is a host name or address (getnameinfo's: an address).
_HOST_EVENTS = frozenset(
    {"socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyaddr", "socket.getnameinfo"}
)
_EVENTS = _ADDRESS_EVENTS | _HOST_EVENTS


def _mlflow_uris() -> list[str]:
    # mlflow.set_tracking_uri/set_registry_uri set these variables too; an unset registry is
    # the tracking server. (get_registry_uri() would cost ~140 us a request.)
    uris = [os.environ.get("MLFLOW_TRACKING_URI", ""), os.environ.get("MLFLOW_REGISTRY_URI", "")]
    if "mlflow" in sys.modules:
        import mlflow

        uris.append(mlflow.get_tracking_uri())
    return [uri for uri in uris if uri.startswith(("http://", "https://"))]


def mlflow_hosts() -> set[str]:
    """Hosts of the MLflow tracking and registry servers in use: they stay reachable."""
    return {urlsplit(uri).hostname or "" for uri in _mlflow_uris()} - {""}


def is_mlflow_server(url: str) -> bool:
    """Is ``url`` on the MLflow tracking or registry server in use (same host and port)? Its
    traffic is MLflow's own: never recorded, never answered from a cassette."""
    netloc = urlsplit(url).netloc.lower()
    return any(urlsplit(uri).netloc.lower() == netloc for uri in _mlflow_uris())


_lock = threading.Lock()
_guards: list[NetworkGuard] = []
_hook_added = False


class NetworkGuard:
    """While entered, connections go only to the allowed hosts (names or IP addresses).

    ``allow_all``: open the network while entered (the innermost guard decides): a test that
    records inside a session that is otherwise closed. ``also_allowed``: more hosts, asked
    only when a host is not in ``allowed`` (e.g. the MLflow tracking server of the moment).
    """

    def __init__(
        self,
        allowed_hosts: Iterable[str] = (),
        *,
        allow_all: bool = False,
        also_allowed: Callable[[], Iterable[str]] | None = None,
    ) -> None:
        self.allowed = {_normalize(host) for host in allowed_hosts if host}
        self.allow_all = allow_all
        self.also_allowed = also_allowed
        self.blocked: list[str] = []  # hosts refused, in order: for reports
        self._names: dict[str, set[str]] = {}  # address -> the names it was resolved from

    def allows(self, host: str) -> bool:
        if self.allow_all:
            return True
        host = _normalize(host)
        # An address resolved from a name is allowed as long as that name is.
        hosts = {host, *self._names.get(host, ())}
        if hosts & self.allowed:
            return True
        return self.also_allowed is not None and bool(hosts & {_normalize(h) for h in self.also_allowed()})

    def __enter__(self) -> NetworkGuard:
        global _hook_added
        with _lock:
            if not _hook_added:
                sys.addaudithook(_audit)
                _hook_added = True
            _guards.append(self)
            if len(_guards) == 1:
                socket.getaddrinfo = _guarded_getaddrinfo
                socket.socket.connect = _guarded_connect  # type: ignore[method-assign, assignment]
                socket.socket.connect_ex = _guarded_connect_ex  # type: ignore[method-assign, assignment]
                socket.socket.sendto = _guarded_sendto  # type: ignore[method-assign, assignment]
                socket.socket.sendmsg = _guarded_sendmsg  # type: ignore[method-assign, assignment]
        return self

    def __exit__(self, *exc_info: object) -> None:
        with _lock:
            _guards.remove(self)
            if not _guards:
                socket.getaddrinfo = _real_getaddrinfo
                socket.socket.connect = _real_connect  # type: ignore[method-assign]
                socket.socket.connect_ex = _real_connect_ex  # type: ignore[method-assign]
                socket.socket.sendto = _real_sendto  # type: ignore[method-assign]
                socket.socket.sendmsg = _real_sendmsg  # type: ignore[method-assign]

    def _check(self, host: str) -> None:
        if not self.allows(host):
            self.blocked.append(host)
            raise NetworkBlockedError(host)

    def _learn(self, host: str, results: list[Any]) -> None:
        # Called once getaddrinfo was let through: connect() must let its addresses through too.
        for result in results:
            self._names.setdefault(_normalize(str(result[4][0])), set()).add(_normalize(host))


def _normalize(host: str) -> str:
    host = host.strip().lower().strip("[]")
    try:
        return str(ipaddress.ip_address(host.split("%")[0]))
    except ValueError:
        return host


def _innermost() -> NetworkGuard | None:
    return _guards[-1] if _guards else None


def _text(host: Any) -> str:
    return host.decode() if isinstance(host, bytes) else str(host)


def _audit(event: str, args: tuple[Any, ...]) -> None:
    # Called for every audited event of the process (open, id(), imports...): keep this cheap.
    if not _guards or event not in _EVENTS:
        return
    if event in _ADDRESS_EVENTS:
        sock, address = args
        if address is None or sock.family not in _INET:  # sendmsg without one; Unix sockets
            return
        host = address[0]
    else:
        host = args[0][0] if event == "socket.getnameinfo" else args[0]
    guard = _innermost()
    if guard is not None and host is not None:
        guard._check(_text(host))


def _guarded_getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
    results = _real_getaddrinfo(host, *args, **kwargs)  # the audit hook refuses a closed host
    guard = _innermost()
    if guard is not None and host is not None:
        guard._learn(_text(host), results)
    return results


def _check_address(sock: socket.socket, address: Any) -> None:
    guard = _innermost()
    if guard is None or sock.family not in _INET:
        return
    guard._check(_text(address[0] if isinstance(address, tuple) else address))


def _guarded_connect(self: socket.socket, address: Any) -> None:
    _check_address(self, address)
    _real_connect(self, address)


def _guarded_connect_ex(self: socket.socket, address: Any) -> int:
    _check_address(self, address)
    return _real_connect_ex(self, address)


def _guarded_sendto(self: socket.socket, data: Any, *args: Any) -> int:
    # sendto(data, address) or sendto(data, flags, address)
    _check_address(self, args[-1])
    return _real_sendto(self, data, *args)


def _guarded_sendmsg(self: socket.socket, buffers: Any, *args: Any) -> int:
    if len(args) >= 3 and args[2] is not None:  # (ancdata, flags, address)
        _check_address(self, args[2])
    return _real_sendmsg(self, buffers, *args)
