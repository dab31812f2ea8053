"""The outcome of an evaluation run: the journal's rows read back once, in dataset order, into
MLflow (metrics, the per-row table and artifact, assessments on the rows' traces) and into the
summary the command line prints, with the first row failures spelled out.

The parent-side half of an evaluation (DESIGN: evaluation engines): however the rows ran, what
they left in the journal is all this needs.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from toolkit.cassette import file_sha256
from toolkit.journal import Journal
from toolkit.redaction import scrub, secret_values
from toolkit.scorers import MEASURES, Aggregate

TABLE_ROW_LIMIT = 10_000
#: Row failures spelled out in a summary; the rest are counted.
FAILURES_SHOWN = 5
#: What is totalled per LLM judge (metrics ``judge/<scorer>/<total>``).
JUDGE_TOTALS = ("tokens", "cost_usd", "calls", "live_calls")


@dataclass(frozen=True)
class RowFailure:
    """A row that failed, or a scorer that raised on a row (``scorer`` names it)."""

    index: int
    message: str
    scorer: str | None = None
    traceback: str | None = None

    def __str__(self) -> str:
        what = f"row {self.index}" + (f", scorer {self.scorer}" if self.scorer else "")
        return f"{what}: {self.message}"


@dataclass
class EvalSummary:
    chain: str
    run_id: str
    model_id: str | None
    rows: int
    errors: int
    replayed_rows: int
    live_rows: int
    skipped_rows: int  # finished before a resume
    metrics: dict[str, float]
    tokens: int
    cost_usd: float
    cassette_sha256: str | None
    seconds: float
    limit_history: list[int]
    scorer_errors: int = 0  # (row, scorer) pairs whose scorer raised: those scores are missing
    failures: list[RowFailure] = field(default_factory=list)  # the first FAILURES_SHOWN
    failures_not_shown: int = 0

    @property
    def ok(self) -> bool:
        return self.errors == 0 and self.scorer_errors == 0

    def to_json(self) -> dict[str, Any]:
        document = dict(self.__dict__)
        document["failures"] = [failure.__dict__ for failure in self.failures]
        return document


def failures_of(result: Mapping[str, Any]) -> list[RowFailure]:
    """The row's own error, or the errors of the scorers that raised on it."""
    index, trace = int(result["index"]), result.get("traceback")
    if result["error"] is not None:
        return [RowFailure(index, str(result["error"]), traceback=trace)]
    return [
        RowFailure(index, str(message), scorer=name, traceback=trace)
        for name, message in (result.get("scorer_errors") or {}).items()
    ]


@dataclass
class Totals:
    """Running totals over the journal's rows."""

    aggregates: dict[str, Aggregate]
    aggregations: Sequence[str]
    rows: int = 0
    errors: int = 0
    scorer_errors: int = 0
    replayed: int = 0
    live: int = 0
    tokens: int = 0
    cost: float = 0.0
    failures: list[RowFailure] = field(default_factory=list)
    failures_not_shown: int = 0
    #: Per LLM-judge scorer: its own tokens, cost and calls, apart from the chain's.
    judges: dict[str, dict[str, float]] = field(default_factory=dict)

    def add(self, result: Mapping[str, Any]) -> None:
        self.rows += 1
        self.errors += result["error"] is not None
        self.scorer_errors += len(result.get("scorer_errors") or {})
        self.replayed += result["replayed"] is True
        self.live += result["live_calls"] > 0
        self.tokens += result["token_usage"]
        self.cost += result["cost_usd"]
        for name in MEASURES:
            self.aggregates[name].add(result[name])
        for name, value in result["scores"].items():
            self.aggregates.setdefault(name, Aggregate(self.aggregations)).add(value)
        for name, calls in (result.get("judges") or {}).items():
            judge = self.judges.setdefault(name, dict.fromkeys(JUDGE_TOTALS, 0.0))
            judge["tokens"] += calls["prompt_tokens"] + calls["completion_tokens"]
            judge["cost_usd"] += calls["cost_usd"]
            judge["calls"] += calls["calls"]
            judge["live_calls"] += calls["live_calls"]
        for failure in failures_of(result):
            if len(self.failures) < FAILURES_SHOWN:
                self.failures.append(failure)
            else:
                self.failures_not_shown += 1

    def metrics(self) -> dict[str, float]:
        metrics = {
            f"{name}/{agg}": value for name, a in self.aggregates.items() for agg, value in a.result().items()
        }
        metrics.update(
            {
                "rows": self.rows,
                "errors": self.errors,
                "scorer_errors": self.scorer_errors,
                "replayed_rows": self.replayed,
                "live_rows": self.live,
                "tokens": self.tokens,
                "cost_usd": round(self.cost, 6),
            }
        )
        for name, judge in self.judges.items():
            metrics.update({f"judge/{name}/{total}": round(judge[total], 6) for total in JUDGE_TOTALS})
        return metrics


def finish_run(
    mlflow: Any,
    journal: Journal,
    totals: Totals,
    *,
    model_id: str | None,
    cassette: Path,
    trace: bool,
) -> tuple[dict[str, float], str | None]:
    """Read the journal into ``totals`` and MLflow's active run; the metrics and the cassette's
    sha256 (it may have grown while the run recorded)."""
    table: dict[str, list[Any]] | None = {} if journal.count() <= TABLE_ROW_LIMIT else None
    if trace:
        mlflow.flush_trace_async_logging()  # the rows' traces must exist before feedback on them
    with tempfile.TemporaryDirectory() as folder:
        every_row = Path(folder) / "eval_results.jsonl"
        secrets = secret_values()
        with every_row.open("w", encoding="utf-8") as out:
            for result in journal.results():
                result, _ = scrub(result, secrets)  # a journal from before the scrub, resumed
                totals.add(result)
                out.write(json.dumps(result, ensure_ascii=False, default=str) + "\n")
                if result.get("trace_id"):
                    _attach_assessments(result, result.get("judges") or {})
                if table is not None:
                    _table_row(table, result)
        mlflow.log_artifact(str(every_row))
    if table is not None:
        mlflow.log_table(data=table, artifact_file="eval_results_table.json")
    metrics = totals.metrics()
    mlflow.log_metrics(metrics, model_id=model_id)
    cassette_sha = file_sha256(cassette)
    mlflow.set_tag("chainkit.cassette_sha256", cassette_sha or "none")
    return metrics, cassette_sha


def _attach_assessments(result: Mapping[str, Any], judges: Mapping[str, Any]) -> None:
    """The row's expectations and scores on its trace, as MLflow's evaluation attaches them (the
    UI shows them as columns): a judge's score with the judge's model as its source."""
    import mlflow
    from mlflow.entities import AssessmentSource

    trace_id = result["trace_id"]
    code = AssessmentSource(source_type="CODE", source_id="chainkit")
    expectations, _ = scrub(dict(result.get("expectations") or {}))
    dataset = AssessmentSource(source_type="HUMAN", source_id="dataset")
    for name, value in expectations.items():
        mlflow.log_expectation(trace_id=trace_id, name=name, value=value, source=dataset)
    scores, _ = scrub(dict(result["scores"]))
    for name, value in scores.items():
        model = (judges.get(name) or {}).get("model")
        source = AssessmentSource(source_type="LLM_JUDGE", source_id=model) if model else code
        mlflow.log_feedback(trace_id=trace_id, name=name, value=value, source=source)


def _table_row(table: dict[str, list[Any]], result: Mapping[str, Any]) -> None:
    columns = {
        "index": result["index"],
        "inputs": json.dumps(result["inputs"], ensure_ascii=False, default=str),
        "output": result["output"]
        if isinstance(result["output"], str)
        else json.dumps(result["output"], default=str),
        "expectations": json.dumps(result["expectations"], ensure_ascii=False, default=str),
        "latency": result["latency"],
        "token_usage": result["token_usage"],
        "replayed": result["replayed"],
        "error": result["error"],
        **{f"score/{name}": value for name, value in result["scores"].items()},
        **{f"score/{name}/error": value for name, value in (result.get("scorer_errors") or {}).items()},
    }
    count = len(table.get("index", []))
    for name, value in columns.items():
        table.setdefault(name, [None] * count).append(value)
    for values in table.values():
        if len(values) == count:  # a score this row does not have
            values.append(None)


def describe_failures(failures: Iterable[RowFailure], not_shown: int) -> list[str]:
    """The lines a person reads: one per failure shown, and how many more there are."""
    lines = [str(failure) for failure in failures]
    if not_shown:
        lines.append(f"... and {not_shown} more (every row's error is in eval_results.jsonl)")
    return lines


__all__ = ["EvalSummary", "RowFailure", "Totals", "describe_failures", "failures_of", "finish_run"]
