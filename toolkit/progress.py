"""The progress line of an evaluation: rows done, rate, errors, tokens and cost, on stderr."""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from typing import Any


class Progress:
    """One line on stderr, rewritten at most 10 times a second; silent when not enabled."""

    def __init__(self, total: int, enabled: bool, done: int = 0) -> None:
        self.total, self.enabled, self.done = total, enabled, done
        self.errors, self.tokens, self.cost = 0, 0, 0.0
        self.started, self.shown = time.monotonic(), 0.0
        self._first = done

    def update(self, result: Mapping[str, Any]) -> None:
        self.done += 1
        self.errors += result["error"] is not None
        self.tokens += int(result["token_usage"])
        self.cost += float(result["cost_usd"])
        now = time.monotonic()
        if self.enabled and (now - self.shown >= 0.1 or self.done == self.total):
            self.shown = now
            rate = (self.done - self._first) / max(now - self.started, 1e-9)
            sys.stderr.write(
                f"\r{self.done}/{self.total} rows  {rate:.1f} rows/s  errors {self.errors}  "
                f"tokens {self.tokens}  ~${self.cost:.4f} "
            )
            sys.stderr.flush()

    def finish(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")


__all__ = ["Progress"]
