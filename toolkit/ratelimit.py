"""Concurrency that backs off under rate limits and recovers: additive increase,
multiplicative decrease (AIMD), the way TCP shares a link.

The runner asks :meth:`AdaptiveLimit.slot` before each row. A 429 halves the limit (once
per burst) and pauses new work for the server's ``retry-after`` (else the backoff); every
``limit`` successes in a row raise it by one, back up to the ceiling the user asked for. The
other retried statuses (408, 409, 500, 502, 503, 504) retry the row after its backoff and leave
the limit as it is: an error of the server is not a sign of too many requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

RETRIED_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})
MAX_BACKOFF = 30.0


def status_of(error: BaseException) -> int | None:
    """The HTTP status behind an error, looking through wrappers (langchain wraps openai's)."""
    seen: BaseException | None = error
    while seen is not None:
        status = getattr(seen, "status_code", None)
        if isinstance(status, int):
            return status
        seen = seen.__cause__ or seen.__context__
    return None


def retry_after(error: BaseException) -> float | None:
    """The server's retry-after (seconds), if the error carries its response."""
    seen: BaseException | None = error
    while seen is not None:
        response = getattr(seen, "response", None)
        headers = getattr(response, "headers", None)
        if headers is not None:
            for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
                value = headers.get(name)
                if value is None:
                    continue
                try:
                    return float(value) * scale
                except ValueError:
                    continue
        seen = seen.__cause__ or seen.__context__
    return None


def backoff(attempt: int, hinted: float | None) -> float:
    """Seconds to wait before retry ``attempt`` (1-based): the hint, else jittered exponential."""
    if hinted is not None:
        return min(hinted, MAX_BACKOFF)
    return min(0.25 * 2.0 ** (attempt - 1), MAX_BACKOFF) * random.uniform(0.5, 1.0)


class AdaptiveLimit:
    def __init__(self, ceiling: int) -> None:
        self.ceiling = max(1, ceiling)
        self.limit = self.ceiling
        self.in_flight = 0
        self.peak_in_flight = 0
        self.history: list[int] = [self.limit]  # every limit it took, for reports and tests
        self._streak = 0
        self._paused_until = 0.0
        self._changed = asyncio.Condition()

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        async with self._changed:
            while self.in_flight >= self.limit or time.monotonic() < self._paused_until:
                pause = self._paused_until - time.monotonic()
                if pause > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._changed.wait(), pause)
                else:
                    await self._changed.wait()
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            yield
        finally:
            async with self._changed:
                self.in_flight -= 1
                self._changed.notify_all()

    async def succeeded(self) -> None:
        async with self._changed:
            self._streak += 1
            if self._streak >= self.limit and self.limit < self.ceiling:
                self._set(self.limit + 1)

    async def throttled(self, pause: float) -> None:
        async with self._changed:
            self._streak = 0
            now = time.monotonic()
            # One burst of 429s (every request in flight hit at once) is one signal: halve once,
            # not once per request; while paused, only the pause grows.
            if now >= self._paused_until:
                self._set(max(1, self.limit // 2))
            self._paused_until = max(self._paused_until, now + pause)

    def _set(self, limit: int) -> None:
        self._streak = 0
        self.limit = limit
        self.history.append(limit)
        self._changed.notify_all()


def is_retryable(error: BaseException) -> bool:
    status = status_of(error)
    return status in RETRIED_STATUSES
