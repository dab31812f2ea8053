"""One attempt at one evaluation row: the worker half of the evaluation engine seam.

DESIGN (evaluation engines): an engine only moves rows and outcomes. :func:`attempt_row` is
the one thing that runs where the chain is: synchronous, in any thread or process, given the
chain's ``invoke`` and a :class:`RowTask`. It calls the chain once under the row's replay scope
(and its trace span), and returns an :class:`Attempt`: plain, picklable data (the output, the
error as text with what the retry policy needs to know about it, the requests it made, the
latency). Everything else (the rate limit and retries, scoring, accounting, the journal,
progress, MLflow) happens in the parent, from the attempt, whatever engine carried it.
"""

from __future__ import annotations

import contextlib
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from toolkit.errors import refusal_in
from toolkit.exchanges import Exchange, collect_exchanges
from toolkit.matching import replay_scope
from toolkit.outputs import plain_output
from toolkit.ratelimit import is_retryable, retry_after, status_of

Invoke = Callable[[Any], Any]


@dataclass(frozen=True)
class RowTask:
    """A row to attempt: what a worker needs, nothing of the parent's."""

    index: int
    inputs: Any
    #: The row's replay scope (its calls matched to its own recordings, in their order).
    scope: str
    #: Open a trace span for the row (the chain's own spans nest under it).
    trace: bool = False


@dataclass(frozen=True)
class Attempt:
    """What one attempt left: picklable, so that any engine can carry it back."""

    output: Any
    error: str | None  # "Type: message"; a replay miss a client wrapped is named as the miss
    traceback: str | None
    retryable: bool  # a 429, a 5xx, a connection error: worth another attempt
    status: int | None  # the HTTP status of the error, if it had one
    retry_after: float | None  # the server's hint, in seconds
    exchanges: tuple[Exchange, ...]
    latency: float
    trace_id: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def described(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def attempt_row(invoke: Invoke, task: RowTask) -> Attempt:
    """Call the chain once on the row: synchronous, in whatever thread or process runs it."""
    output: Any = None
    error: BaseException | None = None
    trace_id: str | None = None
    with collect_exchanges() as made, replay_scope(task.scope), _span(task) as span:
        started = time.perf_counter()
        try:
            output = plain_output(invoke(task.inputs))
        except Exception as exc:  # a miss is the row's error, even one a client wrapped
            error = refusal_in(exc) or exc
        latency = time.perf_counter() - started
        if span is not None:
            span.set_outputs(output)
            trace_id = span.trace_id
    return Attempt(
        output=output,
        error=None if error is None else described(error),
        traceback=None if error is None else "".join(traceback.format_exception(error)),
        retryable=error is not None and is_retryable(error),
        status=None if error is None else status_of(error),
        retry_after=None if error is None else retry_after(error),
        exchanges=tuple(made),
        latency=latency,
        trace_id=trace_id,
    )


@contextlib.contextmanager
def _span(task: RowTask) -> Iterator[Any]:
    """A trace per row (with --trace): the chain's own spans nest under it."""
    if not task.trace:
        yield None
        return
    import mlflow

    with mlflow.start_span(name=f"eval row {task.index}", span_type="CHAIN") as span:
        span.set_inputs(task.inputs)
        yield span


__all__ = ["Attempt", "Invoke", "RowTask", "attempt_row", "described"]
