"""Errors raised by chainkit.

Every error is a :class:`ChainkitError`, so callers can catch one class. Each message is one
sentence that names the file, chain or request it is about and says what to do next.

    ChainkitError
    ├── UsageError               bad arguments: an unknown record mode, a malformed --input
    ├── ChainNotFoundError       no chain of that name under chains/
    ├── ChainLoadError           a chain file that will not load (syntax, import, no set_model)
    ├── CassetteError            a cassette that is missing, truncated or hand-broken
    ├── ReplayMissError          a request that the cassette does not hold (record mode forbids recording)
    ├── NetworkBlockedError      a connection attempted outside the cassette in record mode none
    ├── SecretLeakError          a file about to be written contains a secret from the environment
    ├── PackagingError           a chain that could not be logged to MLflow
    └── DatasetError             an evaluation dataset that cannot be read (file, line, what to fix)
"""

from __future__ import annotations

from typing import Any


class ChainkitError(Exception):
    """Base class of every error chainkit raises on purpose."""


class UsageError(ChainkitError, ValueError):
    """The caller passed something chainkit cannot use."""


class ChainNotFoundError(ChainkitError, LookupError):
    """No chain of that name was discovered."""


class ChainLoadError(ChainkitError):
    """A chain module failed to load."""


class CassetteError(ChainkitError):
    """A cassette file is missing, unreadable, or not a chainkit cassette."""


class ReplayMissError(ChainkitError):
    """A request has no recorded response and the record mode forbids recording it."""

    def __init__(self, message: str, *, request: Any = None) -> None:
        super().__init__(message)
        self.request = request


class NetworkBlockedError(ChainkitError):
    """A connection was attempted while the network is closed (record mode none).

    Deliberately not an ``OSError``: HTTP libraries catch ``OSError`` to retry or to wrap it
    in their own vaguer errors, and this one must reach the user as it is.
    """

    def __init__(self, host: str) -> None:
        super().__init__(
            f"chainkit blocked a connection to {host}: record mode 'none' lets no request leave "
            f"the process; record it (--record-mode once) or allow the host (--allow-host {host})"
        )
        self.host = host


class SecretLeakError(ChainkitError):
    """A file about to be written holds the value of a secret from the environment."""


class PackagingError(ChainkitError):
    """A chain could not be logged or registered in MLflow."""


class DatasetError(ChainkitError):
    """An evaluation dataset is missing, malformed, or not in MLflow's evaluation shape."""
