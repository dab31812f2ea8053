"""toolkit/eval_results.py: totals over journaled rows and the failures spelled out."""

from __future__ import annotations

from typing import Any

from toolkit.eval_results import FAILURES_SHOWN, Totals, describe_failures
from toolkit.scorers import MEASURES, Aggregate


def result(
    index: int, error: str | None = None, scorer_errors: dict[str, str] | None = None
) -> dict[str, Any]:
    return {
        "index": index,
        "error": error,
        "scorer_errors": scorer_errors or {},
        "scores": {} if error else {"contains": True},
        "replayed": True,
        "live_calls": 0,
        "token_usage": 10,
        "cost_usd": 0.0,
        "latency": 0.1,
        "traceback": "Traceback ..." if error or scorer_errors else None,
    }


def test_first_failures_are_kept_with_their_message_and_the_rest_counted() -> None:
    totals = Totals({name: Aggregate(["mean"]) for name in MEASURES}, ["mean"])
    totals.add(result(0))
    totals.add(result(1, scorer_errors={"mine": "ValueError: bad scorer"}))
    for index in range(2, 9):
        totals.add(result(index, error=f"KeyError: 'question' (row {index})"))
    assert (totals.rows, totals.errors, totals.scorer_errors) == (9, 7, 1)
    assert len(totals.failures) == FAILURES_SHOWN and totals.failures_not_shown == 3
    lines = describe_failures(totals.failures, totals.failures_not_shown)
    assert lines[0] == "row 1, scorer mine: ValueError: bad scorer"
    assert lines[1] == "row 2: KeyError: 'question' (row 2)"
    assert lines[-1].startswith("... and 3 more")
    assert totals.failures[1].traceback == "Traceback ..."
    metrics = totals.metrics()
    assert metrics["contains/mean"] == 1.0 and metrics["scorer_errors"] == 1  # row 1 kept its contains


def test_a_journal_from_before_scorer_errors_reads() -> None:
    totals = Totals({name: Aggregate(["mean"]) for name in MEASURES}, ["mean"])
    old = result(0)
    del old["scorer_errors"], old["traceback"]
    totals.add(old)
    assert totals.failures == [] and totals.scorer_errors == 0
