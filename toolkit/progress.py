"""The progress line of an evaluation, on a terminal only: click's progress bar (rows done,
percentage, ETA) followed by the rate, errors, tokens and cost.

Nothing is written unless enabled (the CLI: not ``--json``) and the stream is a terminal, so
logs and pipes stay clean. click computes the bar, the percentage and the ETA; the line is
written here with a plain carriage return (click's own rendering hides the cursor until its
bar is finished, which a Ctrl-C or a failing row would leave hidden).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from typing import Any, TextIO

import click


class Progress:
    """One line on ``stream`` (stderr), rewritten at most 10 times a second."""

    def __init__(self, total: int, enabled: bool, done: int = 0, stream: TextIO | None = None) -> None:
        self.total, self.done = total, done
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled and _isatty(self.stream)
        self.errors, self.tokens, self.cost = 0, 0, 0.0
        self.started, self.shown = time.monotonic(), 0.0
        self._first, self._pending, self._width = done, 0, 0
        self._bar: Any = None
        if self.enabled:
            self._bar = click.progressbar(
                length=max(total, 1),
                show_pos=True,
                show_percent=True,
                show_eta=False,  # shown by _details, named: a bare 00:00:07 reads as a time of day
                bar_template="[%(bar)s]  %(info)s",
                width=24,
                file=self.stream,
                item_show_func=lambda _: self._details(),
            )
            self._bar.pos = done  # a resumed run starts where the last one stopped

    def update(self, result: Mapping[str, Any]) -> None:
        self.done += 1
        self._pending += 1
        self.errors += result["error"] is not None
        self.tokens += int(result["token_usage"])
        self.cost += float(result["cost_usd"])
        now = time.monotonic()
        if self._bar is not None and (now - self.shown >= 0.1 or self.done == self.total):
            self.shown = now
            self._show(now)

    def _show(self, now: float) -> None:
        bar = self._bar
        # click's ETA divides the time since its start by the rows done; rows of an earlier
        # (resumed) run took none of this run's time: move the start so the division is right.
        elapsed = now - self.started
        bar.start = time.time() - elapsed * self.done / max(self.done - self._first, 1)
        bar.make_step(self._pending)
        self._pending = 0
        line = bar.format_progress_line()
        self.stream.write("\r" + line + " " * max(self._width - len(line), 0))
        self.stream.flush()
        self._width = len(line)

    def _details(self) -> str:
        rate = (self.done - self._first) / max(time.monotonic() - self.started, 1e-9)
        bar = self._bar
        eta = f"eta {bar.format_eta()}  " if bar.eta_known and not bar.finished else ""
        return f"{eta}{rate:.1f} rows/s  errors {self.errors}  tokens {self.tokens}  ~${self.cost:.4f}"

    def finish(self) -> None:
        if self._bar is not None:
            if self._pending:
                self._show(time.monotonic())
            self.stream.write("\n")
            self.stream.flush()
            self._bar = None


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or closed
        return False


__all__ = ["Progress"]
