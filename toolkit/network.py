"""Closing the network: in record mode ``none`` no byte leaves the process.

HTTP sent through httpx or httpx2 is answered from the cassette before it reaches a socket.
Everything else (requests, urllib3, aiohttp, raw sockets; tiktoken downloading its encoding
files) reaches :func:`socket.getaddrinfo` or :meth:`socket.socket.connect`, which are patched
while the guard is active to refuse any host that was not allowed explicitly: the MLflow
tracking server, hosts given with ``--allow-host``, and loopback when a test opts in. UDP
(``sendto``/``sendmsg``) and the older resolvers (``gethostbyname``...) are guarded alike.
Unix-domain sockets (event-loop wake-up pipes, local IPC) are not network and stay open.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
from collections.abc import Iterable
from typing import Any

from toolkit.errors import NetworkBlockedError

_real_getaddrinfo = socket.getaddrinfo
_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex
_real_sendto = socket.socket.sendto
_real_sendmsg = socket.socket.sendmsg
#: Older resolver entry points: each would send a DNS query for any name.
_RESOLVERS = ("gethostbyname", "gethostbyname_ex", "gethostbyaddr", "getnameinfo")
_real_resolvers = {name: getattr(socket, name) for name in _RESOLVERS}

_lock = threading.Lock()
_guards: list[NetworkGuard] = []


class NetworkGuard:
    """While entered, connections go only to the allowed hosts (names or IP addresses)."""

    def __init__(self, allowed_hosts: Iterable[str] = ()) -> None:
        self.allowed = {_normalize(host) for host in allowed_hosts if host}
        self.blocked: list[str] = []  # hosts refused, in order: for reports

    def allows(self, host: str) -> bool:
        return _normalize(host) in self.allowed

    def __enter__(self) -> NetworkGuard:
        with _lock:
            _guards.append(self)
            if len(_guards) == 1:
                socket.getaddrinfo = _guarded_getaddrinfo
                socket.socket.connect = _guarded_connect  # type: ignore[method-assign, assignment]
                socket.socket.connect_ex = _guarded_connect_ex  # type: ignore[method-assign, assignment]
                socket.socket.sendto = _guarded_sendto  # type: ignore[method-assign, assignment]
                socket.socket.sendmsg = _guarded_sendmsg  # type: ignore[method-assign, assignment]
                for name in _RESOLVERS:
                    setattr(socket, name, _guarded_resolver(name))
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
                for name, real in _real_resolvers.items():
                    setattr(socket, name, real)

    def _check(self, host: str) -> None:
        if not self.allows(host):
            self.blocked.append(host)
            raise NetworkBlockedError(host)

    def _learn(self, host: str, results: list[Any]) -> None:
        # An allowed name resolves to addresses that connect() must then let through.
        if self.allows(host):
            self.allowed.update(_normalize(str(result[4][0])) for result in results)


def _normalize(host: str) -> str:
    host = host.strip().lower().strip("[]")
    try:
        return str(ipaddress.ip_address(host.split("%")[0]))
    except ValueError:
        return host


def _innermost() -> NetworkGuard | None:
    return _guards[-1] if _guards else None


def _guarded_getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
    guard = _innermost()
    name = host.decode() if isinstance(host, bytes) else str(host)
    if guard is not None and host is not None:
        guard._check(name)
    results = _real_getaddrinfo(host, *args, **kwargs)
    if guard is not None:
        guard._learn(name, results)
    return results


def _check_address(sock: socket.socket, address: Any) -> None:
    guard = _innermost()
    if guard is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    host = address[0] if isinstance(address, tuple) else str(address)
    guard._check(host.decode() if isinstance(host, bytes) else str(host))


def _guarded_connect(self: socket.socket, address: Any) -> None:
    _check_address(self, address)
    _real_connect(self, address)


def _guarded_connect_ex(self: socket.socket, address: Any) -> int:
    _check_address(self, address)
    return _real_connect_ex(self, address)


def _guarded_sendto(self: socket.socket, data: Any, *args: Any) -> int:
    # sendto(data, address) or sendto(data, flags, address): UDP needs no connect().
    _check_address(self, args[-1])
    return _real_sendto(self, data, *args)


def _guarded_sendmsg(self: socket.socket, buffers: Any, *args: Any) -> int:
    if len(args) >= 3 and args[2] is not None:  # (ancdata, flags, address)
        _check_address(self, args[2])
    return _real_sendmsg(self, buffers, *args)


def _guarded_resolver(name: str) -> Any:
    real = _real_resolvers[name]

    def resolve(host: Any, *args: Any) -> Any:
        guard = _innermost()
        if guard is not None:
            # getnameinfo takes a (host, port) address; the others take a host name.
            guard._check(str(host[0] if isinstance(host, tuple) else host))
        return real(host, *args)

    return resolve
