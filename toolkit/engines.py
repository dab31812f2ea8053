"""Evaluation engines: what carries each row's attempt to where the chain runs, and back.

The seam (DESIGN, evaluation engines): an engine's ``attempt(task)`` runs
:func:`toolkit.attempt.attempt_row` somewhere and returns its picklable
:class:`~toolkit.attempt.Attempt`; the parent (:class:`toolkit.evaluation.RowRunner`) does the
rest (rate limit and retries, scoring, accounting, journal, progress, MLflow), the same for
every engine. A process pool or Spark is another class with this one method.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from toolkit.attempt import Attempt, Invoke, RowTask, attempt_row


class Engine(Protocol):
    """Carries one attempt at a row to where the chain runs; returns what it left."""

    name: str

    async def attempt(self, task: RowTask) -> Attempt: ...


class ThreadEngine:
    """Rows attempted in this process, each in a worker thread (asyncio's default executor), or
    inline when rows run one at a time (no thread hop: concurrency 1 measures the chain alone)."""

    name = "threads"

    def __init__(self, invoke: Invoke, *, inline: bool = False) -> None:
        self.invoke, self.inline = invoke, inline

    async def attempt(self, task: RowTask) -> Attempt:
        if self.inline:
            return attempt_row(self.invoke, task)
        return await asyncio.to_thread(attempt_row, self.invoke, task)


__all__ = ["Engine", "ThreadEngine"]
