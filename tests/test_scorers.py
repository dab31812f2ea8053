"""toolkit.scorers: the deterministic built-ins, custom scorers, MLflow judges, aggregation."""

from __future__ import annotations

import itertools
import math
import statistics
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from toolkit.errors import UsageError
from toolkit.scorers import AGGREGATIONS, Aggregate, ScorerCalls, builtin_scorers, load_scorer, resolve, score

_module_names = itertools.count()


@pytest.fixture(scope="module")
def builtins() -> list[Any]:
    return builtin_scorers()


def run(builtins: list[Any], outputs: Any, expectations: dict[str, Any]) -> dict[str, Any]:
    return score(builtins, {"question": "q"}, outputs, expectations)


@pytest.fixture
def scorer_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Writes ``source`` as a fresh importable module and returns its name."""

    def make(source: str) -> str:
        name = f"chainkit_test_scorers_{next(_module_names)}"
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source), encoding="utf-8")
        monkeypatch.syspath_prepend(str(tmp_path))
        monkeypatch.delitem(sys.modules, name, raising=False)
        return name

    return make


# --------------------------------------------------------------------------- built-ins


def test_builtin_names(builtins: list[Any]) -> None:
    assert [s.name for s in builtins] == ["exact_match", "contains", "regex", "json_valid", "json_schema"]


def test_no_expectations_no_scores(builtins: list[Any]) -> None:
    assert run(builtins, "anything at all", {}) == {}


@pytest.mark.parametrize(
    ("outputs", "expected", "verdict"),
    [
        ("  Paris\n", "Paris", True),  # whitespace-trimmed on both sides
        ("Paris", " Paris ", True),
        ("paris", "Paris", False),  # exact: case matters
        ("Paris, France", "Paris", False),
        ({"city": "Paris"}, '{"city": "Paris"}', True),  # non-string output compared as its JSON text
        ({"city": "Paris"}, {"city": "Paris"}, True),  # dict expectation: compared as data
        ({"city": "Lyon"}, {"city": "Paris"}, False),
        ([1, 2], [1, 2], True),
    ],
)
def test_exact_match(builtins: list[Any], outputs: Any, expected: Any, verdict: bool) -> None:
    assert run(builtins, outputs, {"expected_response": expected}) == {"exact_match": verdict}


@pytest.mark.parametrize(
    ("outputs", "wanted", "verdict"),
    [
        ("The capital is PARIS.", "paris", True),  # any case, str
        ("The capital is Paris.", "Lyon", False),
        ("Paris is in France", ["france", "PARIS"], True),  # list: all present
        ("Paris is in France", ["paris", "germany"], False),
        ({"answer": "Paris"}, ["paris"], True),  # non-string output searched as JSON text
    ],
)
def test_contains(builtins: list[Any], outputs: Any, wanted: Any, verdict: bool) -> None:
    assert run(builtins, outputs, {"expected_contains": wanted}) == {"contains": verdict}


def test_regex(builtins: list[Any]) -> None:
    assert run(builtins, "order #12345 shipped", {"expected_regex": r"#\d{5}\b"}) == {"regex": True}
    assert run(builtins, "order shipped", {"expected_regex": r"#\d{5}\b"}) == {"regex": False}
    assert run(builtins, "abc", {"expected_regex": "^b"}) == {"regex": False}  # search, anchors honoured


def test_json_valid(builtins: list[Any]) -> None:
    assert run(builtins, '{"a": [1, 2]}', {"expected_json": True}) == {"json_valid": True}
    assert run(builtins, "{'a': 1}", {"expected_json": True}) == {"json_valid": False}
    assert run(builtins, "not json", {"expected_json": True}) == {"json_valid": False}
    assert run(builtins, {"already": "data"}, {"expected_json": True}) == {"json_valid": True}
    assert run(builtins, "not json", {"expected_json": False}) == {}  # false: the scorer does not apply


SCHEMA = {"type": "object", "required": ["city"], "properties": {"city": {"type": "string"}}}


@pytest.mark.parametrize(
    ("outputs", "verdict"),
    [
        ('{"city": "Paris"}', True),
        ({"city": "Paris"}, True),
        ('{"town": "Paris"}', False),  # missing required key
        ('{"city": 7}', False),  # wrong type
        ("not json at all", False),
    ],
)
def test_json_schema(builtins: list[Any], outputs: Any, verdict: bool) -> None:
    assert run(builtins, outputs, {"expected_schema": SCHEMA}) == {"json_schema": verdict}


def test_only_the_scorers_whose_expectation_is_present_apply(builtins: list[Any]) -> None:
    scores = run(builtins, "Paris", {"expected_response": "Paris", "expected_regex": "^P", "other": 1})

    assert scores == {"exact_match": True, "regex": True}


# --------------------------------------------------------------------------- custom scorers


def test_plain_function_is_wrapped_and_called_with_only_what_it_declares(scorer_module: Any) -> None:
    module = scorer_module(
        """
        CALLS = []

        def short(outputs):
            return len(outputs) < 10

        def sees(inputs, expectations):
            CALLS.append((inputs, expectations))
            return 0.5
        """
    )
    from mlflow.genai.scorers import Scorer

    short = load_scorer(f"{module}:short")
    sees = load_scorer(f"{module}:sees")

    assert isinstance(short, Scorer)
    assert short.name == "short"
    assert score([short, sees], {"q": 1}, "tiny", {"expected_response": "x"}) == {"short": True, "sees": 0.5}
    assert score([short], {"q": 1}, "far too long an answer", {}) == {"short": False}
    assert sys.modules[module].CALLS == [({"q": 1}, {"expected_response": "x"})]


def test_decorated_scorer_returning_feedback_is_unwrapped(scorer_module: Any) -> None:
    module = scorer_module(
        """
        from mlflow.entities import Feedback
        from mlflow.genai.scorers import scorer

        @scorer
        def judged(outputs):
            return Feedback(value=0.75, rationale="three quarters")

        @scorer
        def several(outputs):
            return [Feedback(name="tone", value="yes"), Feedback(name="length", value=3)]
        """
    )

    judged = load_scorer(f"{module}:judged")
    several = load_scorer(f"{module}:several")

    assert judged is sys.modules[module].judged  # an @scorer is used as is
    assert score([judged, several], {}, "out", {}) == {
        "judged": 0.75,
        "several/tone": "yes",
        "several/length": 3,
    }


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("chainkit_no_such_module_xyz:func", "cannot import"),
        ("json:no_such_function", "cannot import"),
        ("json:__doc__", "not a scorer or a function"),
    ],
)
def test_bad_custom_spec_is_a_usage_error(spec: str, fragment: str) -> None:
    with pytest.raises(UsageError, match=fragment) as caught:
        load_scorer(spec)

    assert spec.partition(":")[0] in str(caught.value)


def test_unknown_judge_is_a_usage_error() -> None:
    with pytest.raises(UsageError) as caught:
        load_scorer("NoSuchJudge")

    assert "'NoSuchJudge'" in str(caught.value)
    assert "module:function" in str(caught.value)


def test_unknown_judge_message_lists_mlflow_judges() -> None:
    with pytest.raises(UsageError) as caught:
        load_scorer("NoSuchJudge")

    assert "Correctness" in str(caught.value)
    assert "Safety" in str(caught.value)


def test_judge_needing_arguments_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="Guidelines needs arguments") as caught:
        load_scorer("Guidelines")

    assert "module:name" in str(caught.value)


def test_judge_live_is_accepted() -> None:
    from mlflow.genai.scorers import Correctness

    chosen = resolve(["Correctness"])

    assert len(chosen) == 6
    assert isinstance(chosen[-1], Correctness)


def test_custom_scorer_is_resolved_after_the_builtins(scorer_module: Any) -> None:
    module = scorer_module("def fine(outputs):\n    return True\n")

    chosen = resolve([f"{module}:fine"])

    assert [s.name for s in chosen][-1] == "fine"
    assert len(chosen) == 6


# --------------------------------------------------------------------------- aggregation

MIXED = [0.5, 1, True, False, "yes", "no", "maybe", None, {"x": 1}, [1], 3.25, 7, -2.5]
NUMBERS = [0.5, 1.0, 1.0, 0.0, 1.0, 0.0, 3.25, 7.0, -2.5]


def aggregate(names: list[str], values: list[Any]) -> Aggregate:
    result = Aggregate(names)
    for value in values:
        result.add(value)
    return result


def test_aggregations_match_the_statistics_module() -> None:
    result = aggregate(["mean", "min", "max", "sum", "variance", "median"], MIXED).result()

    assert result["mean"] == pytest.approx(statistics.fmean(NUMBERS))
    assert result["min"] == -2.5
    assert result["max"] == 7.0
    assert result["sum"] == pytest.approx(sum(NUMBERS))
    assert result["variance"] == pytest.approx(statistics.pvariance(NUMBERS))
    assert result["median"] == statistics.median(NUMBERS)
    assert list(result) == ["mean", "min", "max", "sum", "variance", "median"]  # only what was asked


def test_bools_and_yes_no_count_as_one_and_zero() -> None:
    agg = aggregate(["mean", "sum"], [True, True, False, "yes", "no", "no"])

    assert agg.count == 6
    assert agg.result() == {"mean": pytest.approx(0.5), "sum": 3.0}


def test_non_numeric_values_are_ignored() -> None:
    agg = aggregate(["mean", "max"], ["maybe", None, {"a": 1}, [2], "YES", 4])

    assert agg.count == 1
    assert agg.result() == {"mean": 4.0, "max": 4.0}


def test_nothing_numeric_gives_no_result() -> None:
    assert aggregate(["mean"], ["maybe", None]).result() == {}


def test_variance_is_numerically_stable_over_a_large_offset() -> None:
    values = [1e9 + v for v in (4.0, 7.0, 13.0, 16.0)] * 250

    result = aggregate(["mean", "variance"], values).result()

    assert result["variance"] == pytest.approx(statistics.pvariance(values), rel=1e-6)
    assert result["mean"] == pytest.approx(1e9 + 10.0)


def test_p90_is_within_the_values() -> None:
    values = [float(v) for v in range(1, 101)]

    result = aggregate(["median", "p90"], reversed(values)).result()  # type: ignore[arg-type]

    assert result["median"] == statistics.median(values)
    assert 89.0 <= result["p90"] <= 92.0
    assert aggregate(["p90"], [5]).result() == {"p90": 5.0}


def test_p90_matches_the_statistics_module() -> None:
    values = [float(v) for v in range(1, 11)]

    p90 = aggregate(["p90"], values).result()["p90"]

    inclusive = statistics.quantiles(values, n=10, method="inclusive")[-1]  # numpy's default, 9.1
    nearest_rank = sorted(values)[math.ceil(0.9 * len(values)) - 1]  # 9.0
    assert p90 in (pytest.approx(inclusive), nearest_rank)


def test_unknown_aggregation_is_a_usage_error() -> None:
    with pytest.raises(UsageError) as caught:
        Aggregate(["mean", "average", "p99"])

    message = str(caught.value)
    assert "average" in message
    assert "p99" in message
    assert all(name in message for name in AGGREGATIONS)  # says what is allowed


def test_constant_memory_without_median_or_p90() -> None:
    agg = aggregate(["mean", "min", "max", "sum", "variance"], range(10_000))

    assert agg.values is None
    assert agg.result()["sum"] == sum(range(10_000))


@pytest.mark.parametrize("names", [["median"], ["p90"], ["mean", "p90"]])
def test_values_kept_only_for_median_or_p90(names: list[str]) -> None:
    agg = aggregate(names, [3, 1, 2])

    assert agg.values == [3.0, 1.0, 2.0]


def test_a_raising_scorer_loses_only_its_own_score(scorer_module: Any, builtins: list[Any]) -> None:
    module = scorer_module("def boom(outputs):\n    raise ValueError('bad scorer')\n")
    boom = load_scorer(f"{module}:boom")
    errors: dict[str, BaseException] = {}
    values = score([*builtins, boom], {}, "Paris", {"expected_contains": "paris"}, errors=errors)
    assert values == {"contains": True}
    assert list(errors) == ["boom"] and str(errors["boom"]) == "bad scorer"
    with pytest.raises(ValueError, match="bad scorer"):  # without `errors`, it propagates
        score([boom], {}, "Paris", {})


def test_a_refusal_a_judge_wrapped_stops_the_job_unwrapped(scorer_module: Any) -> None:
    """MLflow wraps a judge's failed call in "Failed to invoke the judge model": a replay miss
    inside must reach the user as the miss, not become one row's scorer error."""
    module = scorer_module(
        "from toolkit.errors import ReplayMissError\n"
        "def judge(outputs):\n"
        "    try:\n"
        "        raise ReplayMissError('no recorded response for POST /v1/chat/completions')\n"
        "    except ReplayMissError as miss:\n"
        "        raise RuntimeError('Failed to invoke the judge model') from miss\n"
    )
    from toolkit.errors import ReplayMissError

    errors: dict[str, BaseException] = {}
    with pytest.raises(ReplayMissError, match="no recorded response"):
        score([load_scorer(f"{module}:judge")], {}, "out", {}, errors=errors)
    assert errors == {}


def test_a_feedback_that_carries_an_error_is_that_scorer_s_error() -> None:
    from mlflow.entities import Feedback
    from mlflow.genai.scorers import scorer

    @scorer
    def failing(outputs: Any) -> Feedback:
        return Feedback(name="failing", error=ValueError("the judge answered no JSON"))

    errors: dict[str, BaseException] = {}
    values = score([failing, *builtin_scorers()], {}, "out", {"expected_response": "out"}, errors=errors)
    assert values == {"exact_match": True}
    assert "the judge answered no JSON" in str(errors["failing"])


def test_the_requests_a_scorer_makes_are_collected_under_its_name(tmp_path: Any, record_via: str) -> None:
    import httpx
    from mlflow.genai.scorers import scorer

    from toolkit import use_cassette

    @scorer
    def asks(outputs: Any) -> bool:
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": str(outputs)}]}
        return httpx.post("https://api.openai.com/v1/chat/completions", json=body).status_code == 200

    calls: dict[str, ScorerCalls] = {}
    with use_cassette(tmp_path / "c.json", "once", record_via=record_via):
        assert score([asks, *builtin_scorers()], {}, "out", {}, calls=calls) == {"asks": True}
    assert list(calls) == ["asks"]  # the built-ins made no call
    [exchange] = calls["asks"].exchanges
    assert exchange.model == "gpt-4o-mini" and exchange.prompt_tokens > 0 and not exchange.replayed
    assert calls["asks"].judge is None  # a plain scorer, not an LLM judge's feedback
