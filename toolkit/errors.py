"""Errors raised by chainkit.

Every error is a :class:`ChainkitError`, so callers can catch one class. Each message is one
sentence that names the file, chain or request it is about and says what to do next.

    ChainkitError
    ├── UsageError               bad arguments: an unknown record mode, a malformed --input
    ├── ChainNotFoundError       no chain of that name under chains/
    ├── ChainLoadError           a chain file that will not load (syntax, import, no set_model)
    ├── ChainExitError           a chain's own code called sys.exit(): that chain fails, not chainkit
    ├── CassetteError            a cassette that is missing, truncated or hand-broken
    ├── RequestRefusedError      a request chainkit would not let through; never retried by the client
    │   ├── ReplayMissError      a request that the cassette does not hold (record mode forbids recording)
    │   └── NetworkBlockedError  a connection attempted outside the cassette in record mode none
    ├── SecretLeakError          a file about to be written contains a secret from the environment
    ├── PackagingError           a chain that could not be logged to MLflow
    └── DatasetError             an evaluation dataset that cannot be read (file, line, what to fix)

A refused request must reach the user as chainkit's own error, wherever it is raised. HTTP
clients stand in between: openai 2.x retries *any* exception its transport raises (twice, with
sleeps) and then rewords it as ``APIConnectionError("Connection error.")``. Each such client
passes one error type through untouched (openai: "Propagate OpenAIErrors as-is, without
retrying or wrapping", in 2.x and 3.x alike), so a :class:`RequestRefusedError` created inside a
client's retry loop is also an instance of that type (see :data:`RETRYING_CLIENTS`): one
attempt, no sleep, and the caller gets the :class:`ReplayMissError` itself.

Why not a ``BaseException``, as pytest's ``Failed`` is, to get past every ``except Exception``:
MLflow's pyfunc ``predict`` of a LangChain model runs rows in a thread pool whose bookkeeping
catches ``Exception`` only, and then waits forever for a row that raised anything else (measured
with mlflow 3.17). A miss that hangs the job is worse than one that a caller can catch.
:func:`refusal_in` finds a refusal that another library wrapped, for reports.
"""

from __future__ import annotations

import sys
from types import FrameType
from typing import Any, Self, cast

#: HTTP clients whose retry loop catches any exception raised by their transport: the module that
#: runs the loop, and the error type (module, name) that the loop lets through untouched.
RETRYING_CLIENTS: dict[str, tuple[str, str]] = {
    "openai._base_client": ("openai", "OpenAIError"),
}


class ChainkitError(Exception):
    """Base class of every error chainkit raises on purpose."""


class UsageError(ChainkitError, ValueError):
    """The caller passed something chainkit cannot use."""


class ChainNotFoundError(ChainkitError, LookupError):
    """No chain of that name was discovered."""


class ChainLoadError(ChainkitError):
    """A chain module failed to load."""


class ChainExitError(ChainkitError):
    """A chain's code raised SystemExit (``sys.exit()``, ``exit()``) while loading or running."""


class CassetteError(ChainkitError):
    """A cassette file is missing, unreadable, or not a chainkit cassette."""


class RequestRefusedError(ChainkitError):
    """chainkit would not let a request through: no recording answers it, or the network is closed.

    Created inside the retry loop of one of :data:`RETRYING_CLIENTS`, the error is an instance
    of a subclass that also derives from that client's pass-through error (same name, same
    module, so tracebacks and ``except ReplayMissError`` read as before): the client raises it
    at once, as it is, instead of retrying it and wrapping it.
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> Self:
        variant = _passing_through_client(cls, sys._getframe(1))
        return cast(Self, super().__new__(variant, *args, **kwargs))

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled as the public class: the client's variant exists only in this process.
        public = next(c for c in type(self).__mro__ if "_client_error" not in c.__dict__)
        return (_restore, (public, self.args, dict(self.__dict__)))


def _client_error_on_stack(frame: FrameType | None) -> type[Exception] | None:
    """The pass-through error of the retrying client whose loop ``frame`` runs in, if any."""
    if not any(name in sys.modules for name in RETRYING_CLIENTS):
        return None
    while frame is not None:
        client = RETRYING_CLIENTS.get(frame.f_globals.get("__name__", ""))
        if client is not None:
            error = getattr(sys.modules.get(client[0]), client[1], None)
            return error if isinstance(error, type) and issubclass(error, Exception) else None
        frame = frame.f_back
    return None


_variants: dict[tuple[type[Any], type[Exception]], type[Any]] = {}


def _client_variant(cls: type[Any], client_error: type[Exception]) -> type[Any]:
    variant = _variants.get((cls, client_error))
    if variant is None:
        variant = _variants[cls, client_error] = type(
            cls.__name__,
            (cls, client_error),
            {"__module__": cls.__module__, "__qualname__": cls.__qualname__, "_client_error": client_error},
        )
    return variant


def _passing_through_client(cls: type[Any], frame: FrameType | None) -> type[Any]:
    if "_client_error" in cls.__dict__:  # already a client's variant
        return cls
    client_error = _client_error_on_stack(frame)
    if client_error is None or issubclass(cls, client_error):
        return cls
    return _client_variant(cls, client_error)


def _restore(cls: type[BaseException], args: tuple[Any, ...], state: dict[str, Any]) -> BaseException:
    error = BaseException.__new__(cls)  # not cls(*args): __init__ builds the message from its parts
    error.args = args
    error.__dict__.update(state)
    return error


def refusal_in(error: BaseException | None) -> RequestRefusedError | None:
    """``error`` if it is a refused request, else the first one it was raised from (``__cause__``,
    ``__context__``) or groups (an ``ExceptionGroup``'s members): a refusal that a client, a task
    group or a chain's own code wrapped in its own error."""
    pending, seen = [error], set[int]()
    while pending:
        current = pending.pop(0)
        if current is None or id(current) in seen:
            continue
        if isinstance(current, RequestRefusedError):
            return current
        seen.add(id(current))
        if isinstance(current, BaseExceptionGroup):
            pending += current.exceptions
        pending += [current.__cause__, current.__context__]
    return None


class ReplayMissError(RequestRefusedError):
    """A request has no recorded response and the record mode forbids recording it."""

    def __init__(self, message: str, *, request: Any = None) -> None:
        super().__init__(message)
        self.request = request


class NetworkBlockedError(RequestRefusedError):
    """A connection was attempted while the network is closed (record mode none).

    Deliberately not an ``OSError``: HTTP libraries catch ``OSError`` to retry or to wrap it
    in their own vaguer errors, and this one must reach the user as it is (see
    :class:`RequestRefusedError` for the clients that catch everything).
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
