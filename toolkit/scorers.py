"""Scorers: the deterministic built-ins, custom ones, and MLflow's LLM judges.

Custom scorers are MLflow scorers (``mlflow.genai.scorers.scorer``), called the way
``mlflow.genai.evaluate`` calls them: with the ``inputs``, ``outputs`` and ``expectations`` they
declare. A built-in applies to a row only when the row carries its expectation, and returns
None otherwise (so it does not count in the mean):

=================  =============================================================
``exact_match``    ``expected_response``: the output equals it (whitespace-trimmed)
``contains``       ``expected_contains``: a string or list, all present (any case)
``regex``          ``expected_regex``: the pattern is found in the output
``json_valid``     ``expected_json: true``: the output is (or parses as) JSON
``json_schema``    ``expected_schema``: the output validates against the JSON schema
=================  =============================================================

``latency`` (seconds) and ``token_usage`` (total tokens) are measured by the runner for every
row and aggregated the same way.

Custom scorers: ``--scorer module:function`` (a function decorated with ``@scorer``, or a plain
function taking some of inputs/outputs/expectations, or a judge built with ``make_judge``).
MLflow's built-in judges by class name (``--scorer Correctness``) call an LLM: their calls are
recorded and replayed like the chain's (MLflow sends them with requests or aiohttp), kept apart
in the accounting (:class:`ScorerCalls`), and a judge call the cassette does not hold is the
usual replay miss in mode none.
"""

from __future__ import annotations

import importlib
import json
import re
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from toolkit.errors import UsageError, refusal_in
from toolkit.exchanges import Exchange, collect_exchanges

MEASURES = ("latency", "token_usage")
AGGREGATIONS = ("mean", "min", "max", "median", "variance", "p90", "sum")


def _text(outputs: Any) -> str:
    return outputs if isinstance(outputs, str) else json.dumps(outputs, ensure_ascii=False, default=str)


def _as_json(outputs: Any) -> Any:
    return json.loads(outputs) if isinstance(outputs, str) else outputs


def _exact_match(outputs: Any, expectations: dict[str, Any]) -> bool | None:
    if "expected_response" not in expectations:
        return None
    expected = expectations["expected_response"]
    if isinstance(expected, str):
        return _text(outputs).strip() == expected.strip()
    return bool(outputs == expected)


def _contains(outputs: Any, expectations: dict[str, Any]) -> bool | None:
    wanted = expectations.get("expected_contains")
    if wanted is None:
        return None
    text = _text(outputs).lower()
    return all(str(part).lower() in text for part in ([wanted] if isinstance(wanted, str) else wanted))


def _regex(outputs: Any, expectations: dict[str, Any]) -> bool | None:
    pattern = expectations.get("expected_regex")
    return None if pattern is None else re.search(pattern, _text(outputs)) is not None


def _json_valid(outputs: Any, expectations: dict[str, Any]) -> bool | None:
    if not expectations.get("expected_json"):
        return None
    try:
        _as_json(outputs)
    except ValueError:
        return False
    return True


def _json_schema(outputs: Any, expectations: dict[str, Any]) -> bool | None:
    schema = expectations.get("expected_schema")
    if schema is None:
        return None
    import jsonschema

    try:
        jsonschema.validate(_as_json(outputs), schema)
    except (ValueError, jsonschema.ValidationError):
        return False
    return True


@dataclass(frozen=True)
class Builtin:
    """A built-in scorer, called directly: going through ``mlflow.genai.scorers.Scorer.run``
    (a thread per call for its timeout, telemetry, signature inspection) cost more than the
    scorers themselves (measured: 0.5 ms per row for five of them)."""

    name: str
    function: Callable[[Any, dict[str, Any]], Any]

    def run(self, *, inputs: Any = None, outputs: Any = None, expectations: Any = None) -> Any:
        return self.function(outputs, expectations or {})


def builtin_scorers() -> list[Any]:
    """The deterministic built-ins."""
    functions = [_exact_match, _contains, _regex, _json_valid, _json_schema]
    return [Builtin(function.__name__.lstrip("_"), function) for function in functions]


def _mlflow_judges() -> dict[str, type]:
    from mlflow.genai import scorers

    found = {}
    for name in dir(scorers):  # the judges are loaded lazily: not in vars() until asked for
        value = getattr(scorers, name, None)
        if isinstance(value, type) and issubclass(value, scorers.Scorer) and value is not scorers.Scorer:
            found[name] = value
    return found


def load_scorer(spec: str) -> Any:
    """``module:function`` -> that scorer; ``Correctness`` -> MLflow's judge of that name."""
    from mlflow.genai.scorers import Scorer, scorer

    if ":" not in spec:
        judges = _mlflow_judges()
        if spec not in judges:
            raise UsageError(
                f"unknown scorer {spec!r}: pass module:function, or one of MLflow's judges "
                f"({', '.join(sorted(judges))})"
            )
        try:
            # timeout=0: no thread per call; the judge's HTTP call has its own timeout.
            return judges[spec](timeout=0)
        except Exception as exc:
            raise UsageError(
                f"scorer {spec} needs arguments ({str(exc).splitlines()[0]}); build it in a module "
                "of yours and pass module:name"
            ) from exc
    module_name, _, attribute = spec.partition(":")
    try:
        found = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise UsageError(f"--scorer {spec}: cannot import it ({exc}); check the module path") from exc
    if isinstance(found, Scorer):
        return found
    if callable(found):
        # timeout=0: no thread per call (MLflow's default timeout runs each call in a new thread).
        return scorer(found, name=attribute, timeout=0)
    raise UsageError(f"--scorer {spec}: {type(found).__name__} is not a scorer or a function")


def calls_an_llm(candidate: Any) -> bool:
    """MLflow's LLM judges carry the ``model`` they call (None: MLflow's default judge model)."""
    return hasattr(candidate, "model")


def resolve(specs: Sequence[str]) -> list[Any]:
    """The built-ins plus ``specs``."""
    return builtin_scorers() + [load_scorer(spec) for spec in specs]


@dataclass
class ScorerCalls:
    """The requests a scorer made on one row (an LLM judge's), and the model that judged."""

    exchanges: list[Exchange]
    judge: str | None = None  # the judge's model URI, from its feedback's source


def score(
    scorers: Sequence[Any],
    inputs: Any,
    outputs: Any,
    expectations: dict[str, Any],
    errors: dict[str, BaseException] | None = None,
    calls: dict[str, ScorerCalls] | None = None,
) -> dict[str, Any]:
    """Each applicable scorer's value (bool, number, string); Feedback objects unwrapped.

    With ``errors``, a scorer that raises (or whose feedback carries an error) is recorded there
    under its name and the others still score the row; without it, the exception propagates.
    A refused request (a judge call the cassette does not hold) always propagates, unwrapped
    from MLflow's error: it stops the whole job with the miss message. With ``calls``, the
    requests each scorer made are collected there under its name."""
    values: dict[str, Any] = {}
    for candidate in scorers:
        name = str(candidate.name)
        value: Any = None
        with collect_exchanges() as made:
            try:
                value = candidate.run(inputs=inputs, outputs=outputs, expectations=expectations)
                failed = getattr(value, "error", None)
                if failed is not None:
                    raise RuntimeError(getattr(failed, "error_message", None) or str(failed))
            except Exception as exc:
                refusal = refusal_in(exc)
                if refusal is not None:
                    raise refusal from None
                if errors is None:
                    raise
                errors[name], value = exc, None
        if calls is not None and made:
            calls[name] = ScorerCalls(made, _judge_of(value))
        if isinstance(value, list):  # several Feedbacks
            for feedback in value:
                values[f"{name}/{feedback.name}"] = feedback.value
            continue
        value = getattr(value, "value", value)
        if value is not None:
            values[name] = value
    return values


def _judge_of(feedback: Any) -> str | None:
    source = getattr(feedback, "source", None)
    if source is not None and str(getattr(source, "source_type", "")) == "LLM_JUDGE":
        return str(source.source_id)
    return None


def _p90(ordered: list[float]) -> float:
    if len(ordered) < 2:
        return ordered[0] if ordered else 0.0
    return statistics.quantiles(ordered, n=10, method="inclusive")[-1]


class Aggregate:
    """Running aggregation of one score: mean, min, max, sum and variance in constant memory;
    the median and p90 keep the values, and only when asked for."""

    def __init__(self, names: Sequence[str]) -> None:
        unknown = sorted(set(names) - set(AGGREGATIONS))
        if unknown:
            raise UsageError(f"unknown aggregation {', '.join(unknown)}: use {', '.join(AGGREGATIONS)}")
        self.names = list(names)
        self.count, self.total, self._mean, self._m2 = 0, 0.0, 0.0, 0.0
        self.low, self.high = float("inf"), float("-inf")
        self.values: list[float] | None = [] if {"median", "p90"} & set(names) else None

    def add(self, value: Any) -> None:
        if isinstance(value, bool | int | float):
            number = float(value)
        elif value in ("yes", "no"):  # MLflow judges answer yes/no
            number = 1.0 if value == "yes" else 0.0
        else:
            return
        self.count += 1
        self.total += number
        delta = number - self._mean  # Welford's online variance
        self._mean += delta / self.count
        self._m2 += delta * (number - self._mean)
        self.low, self.high = min(self.low, number), max(self.high, number)
        if self.values is not None:
            self.values.append(number)

    def result(self) -> dict[str, float]:
        if not self.count:
            return {}
        ordered = sorted(self.values) if self.values is not None else []
        computed = {
            "mean": self._mean,
            "min": self.low,
            "max": self.high,
            "sum": self.total,
            "variance": self._m2 / self.count,
            "median": statistics.median(ordered) if ordered else 0.0,
            "p90": _p90(ordered),
        }
        return {name: float(computed[name]) for name in self.names}
