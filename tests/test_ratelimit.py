"""toolkit.ratelimit: statuses and retry-after hints through wrapped errors, backoff, AIMD limit."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import httpx2
import openai
import pytest

from toolkit.ratelimit import MAX_BACKOFF, AdaptiveLimit, backoff, is_retryable, retry_after, status_of

URL = "https://api.openai.com/v1/chat/completions"


def response(status: int, headers: dict[str, str] | None = None) -> httpx2.Response:
    return httpx2.Response(status, headers=headers or {}, request=httpx2.Request("POST", URL))


def rate_limited(headers: dict[str, str] | None = None) -> openai.RateLimitError:
    return openai.RateLimitError("rate limited", response=response(429, headers), body=None)


def wrapped(error: BaseException, *, explicit: bool = True, layers: int = 1) -> BaseException:
    """``error`` raised and wrapped ``layers`` times (``raise X from e``, or implicitly)."""
    current = error
    for layer in range(layers):
        try:
            try:
                raise current
            except BaseException as inner:
                if explicit:
                    raise RuntimeError(f"wrapper {layer}") from inner
                raise ValueError(f"while handling: wrapper {layer}")  # noqa: B904 - implicit context
        except (RuntimeError, ValueError) as outer:
            current = outer
    return current


# --------------------------------------------------------------------------- status_of


def test_status_of_a_real_openai_error() -> None:
    assert status_of(rate_limited()) == 429
    bad = openai.BadRequestError("bad", response=response(400), body=None)
    assert status_of(bad) == 400


@pytest.mark.parametrize("explicit", [True, False], ids=["raise-from", "implicit-context"])
def test_status_of_looks_through_wrappers(explicit: bool) -> None:
    error = wrapped(rate_limited(), explicit=explicit, layers=3)

    assert not isinstance(error, openai.RateLimitError)
    assert status_of(error) == 429
    assert is_retryable(error)


def test_status_of_without_http_error_is_none() -> None:
    assert status_of(wrapped(KeyError("x"), layers=2)) is None
    assert not is_retryable(wrapped(KeyError("x")))


def test_status_of_ignores_non_integer_status_attributes() -> None:
    class OddError(Exception):
        status_code = "429"

    try:
        try:
            raise rate_limited()
        except openai.RateLimitError as inner:
            raise OddError("odd") from inner
    except OddError as outer:
        assert status_of(outer) == 429  # skipped the string, found the real one underneath


@pytest.mark.parametrize(
    ("status", "retryable"),
    [(429, True), (500, True), (503, True), (408, True), (400, False), (401, False), (404, False)],
)
def test_is_retryable_by_status(status: int, retryable: bool) -> None:
    error = openai.APIStatusError("status", response=response(status), body=None)

    assert is_retryable(wrapped(error)) is retryable


# --------------------------------------------------------------------------- retry_after


def test_retry_after_ms() -> None:
    assert retry_after(rate_limited({"retry-after-ms": "250"})) == pytest.approx(0.25)


def test_retry_after_ms_takes_precedence_over_seconds() -> None:
    error = rate_limited({"retry-after": "2", "retry-after-ms": "1500"})

    assert retry_after(error) == pytest.approx(1.5)
    assert retry_after(wrapped(error, layers=2)) == pytest.approx(1.5)


def test_malformed_retry_after_ms_falls_back_to_seconds() -> None:
    assert retry_after(rate_limited({"retry-after-ms": "soon", "retry-after": "3"})) == pytest.approx(3.0)


@pytest.mark.parametrize("layers", [0, 2])
def test_retry_after_seconds(layers: int) -> None:
    error = rate_limited({"retry-after": "2"})

    assert retry_after(wrapped(error, layers=layers)) == pytest.approx(2.0)


def test_retry_after_without_a_hint_is_none() -> None:
    assert retry_after(rate_limited()) is None
    assert retry_after(wrapped(KeyError("x"))) is None
    assert retry_after(rate_limited({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"})) is None  # no crash


# --------------------------------------------------------------------------- backoff


def test_backoff_honours_the_hint() -> None:
    assert backoff(1, 2.0) == 2.0
    assert backoff(7, 0.5) == 0.5  # the hint, not the exponential
    assert backoff(1, 0.0) == 0.0


def test_backoff_caps_the_hint() -> None:
    assert MAX_BACKOFF == 30.0
    assert backoff(1, 120.0) == 30.0


@pytest.mark.parametrize(("attempt", "base"), [(1, 0.25), (2, 0.5), (4, 2.0), (8, 30.0), (40, 30.0)])
def test_backoff_without_hint_is_jittered_exponential(attempt: int, base: float) -> None:
    waits = [backoff(attempt, None) for _ in range(200)]

    assert all(base * 0.5 <= wait <= base for wait in waits)
    assert len(set(waits)) > 100  # jittered: retries spread out instead of stampeding together


# --------------------------------------------------------------------------- AdaptiveLimit


async def test_never_more_than_the_limit_in_flight() -> None:
    limit = AdaptiveLimit(4)
    inside = 0
    most = 0

    async def work() -> None:
        nonlocal inside, most
        async with limit.slot():
            inside += 1
            most = max(most, inside)
            await asyncio.sleep(0.002)
            inside -= 1

    await asyncio.gather(*(work() for _ in range(60)))

    assert most == 4  # the limit is used, and never exceeded
    assert limit.peak_in_flight == 4
    assert limit.in_flight == 0


async def test_a_failing_body_releases_its_slot() -> None:
    limit = AdaptiveLimit(1)

    with pytest.raises(KeyError):
        async with limit.slot():
            raise KeyError("boom")

    assert limit.in_flight == 0
    async with asyncio.timeout(1):
        async with limit.slot():
            pass


async def test_throttled_halves_and_never_goes_below_one() -> None:
    limit = AdaptiveLimit(8)

    for expected in (4, 2, 1, 1):
        await limit.throttled(0)
        assert limit.limit == expected

    assert limit.history == [8, 4, 2, 1, 1]
    assert AdaptiveLimit(0).limit == 1
    assert AdaptiveLimit(-3).ceiling == 1


async def test_throttled_pauses_new_slots() -> None:
    limit = AdaptiveLimit(4)
    release = asyncio.Event()
    granted: list[float] = []
    inside = 0
    most_after = 0

    async def holder() -> None:
        async with limit.slot():
            await release.wait()

    async def newcomer() -> None:
        nonlocal inside, most_after
        async with limit.slot():
            granted.append(time.monotonic())
            inside += 1
            most_after = max(most_after, inside)
            await asyncio.sleep(0.01)
            inside -= 1

    holders = [asyncio.create_task(holder()) for _ in range(4)]
    await asyncio.sleep(0.01)
    waiting = [asyncio.create_task(newcomer()) for _ in range(6)]  # queued behind the holders
    await asyncio.sleep(0.01)
    assert granted == []

    before = time.monotonic()
    await limit.throttled(0.3)
    release.set()  # slots free up during the pause: still nobody may start
    await asyncio.gather(*holders)
    await asyncio.sleep(0.1)
    assert granted == [], "a slot was granted during the pause"

    async with asyncio.timeout(2):
        await asyncio.gather(*waiting)

    assert len(granted) == 6
    assert min(granted) >= before + 0.3
    assert min(granted) < before + 1.0  # and work resumes promptly when the pause ends
    assert most_after == 2  # at the halved limit
    assert limit.limit == 2


async def test_a_shorter_pause_does_not_cut_a_longer_one() -> None:
    limit = AdaptiveLimit(8)
    before = time.monotonic()
    await limit.throttled(0.2)
    await limit.throttled(0.0)

    async with limit.slot():
        assert time.monotonic() >= before + 0.2


async def test_recovers_additively_to_the_ceiling() -> None:
    limit = AdaptiveLimit(8)
    await limit.throttled(0)
    assert limit.limit == 4

    for _ in range(3):
        await limit.succeeded()
    assert limit.limit == 4  # it takes `limit` successes in a row to add one
    await limit.succeeded()
    assert limit.limit == 5

    for _ in range(5 + 6 + 7):
        await limit.succeeded()
    assert limit.history == [8, 4, 5, 6, 7, 8]

    for _ in range(50):
        await limit.succeeded()
    assert limit.limit == 8  # never above the ceiling
    assert limit.history == [8, 4, 5, 6, 7, 8]


async def test_throttle_resets_the_success_streak() -> None:
    limit = AdaptiveLimit(8)
    await limit.throttled(0)  # 4
    for _ in range(3):
        await limit.succeeded()
    await limit.throttled(0)  # 2, streak back to zero
    await limit.succeeded()
    assert limit.limit == 2
    await limit.succeeded()
    assert limit.limit == 3
    assert limit.history == [8, 4, 2, 3]


async def test_raising_the_limit_wakes_a_waiter() -> None:
    limit = AdaptiveLimit(2)
    await limit.throttled(0)  # 1
    release = asyncio.Event()
    second_in = asyncio.Event()

    async def first() -> None:
        async with limit.slot():
            await release.wait()

    async def second() -> None:
        async with limit.slot():
            second_in.set()

    tasks = [asyncio.create_task(first())]
    await asyncio.sleep(0.01)
    tasks.append(asyncio.create_task(second()))
    await asyncio.sleep(0.02)
    assert not second_in.is_set()

    await limit.succeeded()  # 1 success at limit 1: back to 2

    async with asyncio.timeout(1):
        await second_in.wait()  # granted while the first still holds its slot
    assert limit.in_flight == 1
    release.set()
    await asyncio.gather(*tasks)


# ---------------------------------------------- what the runner does with it (the docstring)

LIVE_CHAIN = '''"""A live model with no client retries: the runner's own retries are what is tested."""

import mlflow
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_openai import ChatOpenAI

INPUT_EXAMPLE = {"question": "warm up"}

prompt = ChatPromptTemplate.from_messages([("user", "{question}")])
llm = ChatOpenAI(model="gpt-4o-mini", base_url="https://api.openai.com/v1", max_retries=0)
chain = prompt | llm | StrOutputParser()

mlflow.models.set_model(chain)
'''


@pytest.mark.parametrize(("status", "halves"), [(503, False), (429, True)])
def test_only_a_429_halves_the_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, status: int, halves: bool
) -> None:
    """As the module says: 5xx answers are retried at the same limit, 429s halve it."""
    from openai_server import Fault, OpenAIServer

    from toolkit.evaluation import EvalOptions, evaluate
    from toolkit.project import Project

    (tmp_path / "chains").mkdir()
    (tmp_path / "chains" / "live.py").write_text(LIVE_CHAIN)
    project = Project.at(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"

    def dataset(name: str, questions: list[str]) -> Path:
        path = tmp_path / name
        path.write_text("".join(json.dumps({"inputs": {"question": q}}) + "\n" for q in questions))
        return path

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    with OpenAIServer() as server:
        monkeypatch.setenv("CHAINKIT_RECORD_VIA", server.base_url.removesuffix("/v1"))
        warm = EvalOptions(
            data=dataset("warm.jsonl", ["warm up"]), record_mode="new_episodes", tracking_uri=uri
        )
        evaluate(project, warm, chain="live")  # logs the chain (its example recorded) first
        server.add_faults([Fault(status, retry_after=0.01)] * 4)
        options = EvalOptions(
            data=dataset("d.jsonl", [f"q{n}" for n in range(8)]),
            record_mode="new_episodes",
            concurrency=4,
            tracking_uri=uri,
        )
        summary = evaluate(project, options, chain="live")
    assert (summary.rows, summary.errors) == (8, 0)
    assert (min(summary.limit_history) < 4) is halves, summary.limit_history
