"""A miss stays a miss on every OpenAI client family, whichever is installed.

openai 3.x sends through httpx2 and retries only httpx2's own errors; openai 2.x sends through
httpx and retries *any* exception its transport raises (twice, with sleeps), then rewords it as
``APIConnectionError("Connection error.")``. ``scripts/test.sh`` runs this file in ``.venv/``
(openai 3.x) and in ``.venv-openai2/`` (openai 2.x, langchain-openai 1.7.4): in both, the
caller gets chainkit's own error after exactly one attempt.

Attempts are counted where they reach chainkit (the replay layer, or the network guard), not
timed: each retry the client made would be one more.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from conftest import OPENAI_BASE
from langchain_core.runnables import RunnableParallel
from langchain_openai import ChatOpenAI

from toolkit import httpx_bridge, use_cassette
from toolkit.errors import NetworkBlockedError, ReplayMissError, refusal_in
from toolkit.network import NetworkGuard
from toolkit.replay import CassetteSession

RECORDED_PROMPT, SENT_PROMPT = "What is MLflow?", "What is mlflow?"
DIFF = f'messages[0].content: recorded "{RECORDED_PROMPT}", sent "{SENT_PROMPT}"'
#: Attempts a client makes when it retries: its default max_retries (2), plus one.
RETRYING_ATTEMPTS = openai.DEFAULT_MAX_RETRIES + 1


def messages(prompt: str) -> list[Any]:
    return [{"role": "user", "content": prompt}]


# Clients built as users build them: default retries (max_retries is never passed).


def openai_sync(prompt: str) -> Any:
    return openai.OpenAI(base_url=OPENAI_BASE).chat.completions.create(
        model="gpt-4o-mini", messages=messages(prompt)
    )


def openai_async(prompt: str) -> Any:
    async def call() -> Any:
        async with openai.AsyncOpenAI(base_url=OPENAI_BASE) as client:
            return await client.chat.completions.create(model="gpt-4o-mini", messages=messages(prompt))

    return asyncio.run(call())


def openai_stream(prompt: str) -> Any:
    stream = openai.OpenAI(base_url=OPENAI_BASE).chat.completions.create(
        model="gpt-4o-mini", messages=messages(prompt), stream=True
    )
    return list(stream)


def chat() -> ChatOpenAI:
    return ChatOpenAI(model="gpt-4o-mini", base_url=OPENAI_BASE)


def langchain_invoke(prompt: str) -> Any:
    return chat().invoke(prompt)


def langchain_ainvoke(prompt: str) -> Any:
    return asyncio.run(chat().ainvoke(prompt))


def langchain_stream(prompt: str) -> Any:
    return list(chat().stream(prompt))


CALLERS: dict[str, Callable[[str], Any]] = {
    "openai": openai_sync,
    "openai-async": openai_async,
    "openai-stream": openai_stream,
    "ChatOpenAI.invoke": langchain_invoke,
    "ChatOpenAI.ainvoke": langchain_ainvoke,
    "ChatOpenAI.stream": langchain_stream,
}


@pytest.fixture
def recorded(tmp_path: Path, record_via: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A cassette holding one chat completion, for RECORDED_PROMPT."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    path = tmp_path / "c.json"
    with use_cassette(path, "once", record_via=record_via):
        openai_sync(RECORDED_PROMPT)
    return path


@pytest.fixture
def attempts(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The URL of every request that reached chainkit's replay layer, retries included."""
    seen: list[str] = []
    lookup = CassetteSession.lookup

    def counted(self: CassetteSession, request: Any) -> Any:
        seen.append(str(request.url))
        return lookup(self, request)

    monkeypatch.setattr(CassetteSession, "lookup", counted)
    return seen


@pytest.mark.parametrize("caller", CALLERS.values(), ids=CALLERS.keys())
def test_a_miss_reaches_the_caller_after_one_attempt(
    recorded: Path, attempts: list[str], caller: Callable[[str], Any]
) -> None:
    with use_cassette(recorded, "none"), pytest.raises(ReplayMissError) as raised:
        caller(SENT_PROMPT)
    assert type(raised.value).__name__ == "ReplayMissError"
    assert not isinstance(raised.value, openai.APIError)  # not "Connection error."
    message = str(raised.value)
    assert f"no recorded response in {recorded} for POST {OPENAI_BASE}/chat/completions" in message
    assert "Closest recorded request: #0" in message and DIFF in message
    assert attempts == [f"{OPENAI_BASE}/chat/completions"]  # the client retried nothing


def test_the_clients_here_do_retry_what_their_loop_catches(
    recorded: Path, attempts: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The control: these clients, as built above, retry a connection error (so one attempt
    for a miss is chainkit's doing, not a client that never retries)."""
    monkeypatch.setattr(openai._base_client.BaseClient, "_calculate_retry_timeout", lambda *a, **k: 0.0)

    def refuse(session: CassetteSession, request: Any, send: Any) -> Any:
        attempts.append(str(request.url))
        family = sys.modules[type(request).__module__.split(".")[0]]  # httpx (2.x) or httpx2 (3.x)
        raise family.ConnectError("connection refused", request=request)

    monkeypatch.setattr(httpx_bridge, "handle", refuse)  # the httpx/httpx2 door, sync
    with use_cassette(recorded, "none"), pytest.raises(openai.APIConnectionError):
        openai_sync(SENT_PROMPT)
    assert len(attempts) == RETRYING_ATTEMPTS


@pytest.fixture
def closed_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[NetworkGuard]:
    """No cassette, the network closed: a request reaches a socket and the guard refuses it
    there (as in a pytest session closed in mode none, for a test without a cassette)."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setitem(globals(), "OPENAI_BASE", "http://192.0.2.1/v1")  # the callers' base URL
    with NetworkGuard() as guard:
        yield guard


@pytest.mark.parametrize("caller", [openai_sync, langchain_invoke], ids=["openai", "ChatOpenAI.invoke"])
def test_a_blocked_connection_reaches_the_caller_after_one_attempt(
    closed_network: NetworkGuard, caller: Callable[[str], Any]
) -> None:
    with pytest.raises(NetworkBlockedError) as raised:
        caller(SENT_PROMPT)
    assert not isinstance(raised.value, openai.APIError)
    assert "chainkit blocked a connection to 192.0.2.1" in str(raised.value)
    assert closed_network.blocked == ["192.0.2.1"]  # one attempt: each retry would be refused again


@pytest.mark.parametrize(
    "caller", [openai_async, langchain_ainvoke], ids=["openai-async", "ChatOpenAI.ainvoke"]
)
def test_a_blocked_async_connection_is_named_in_what_reaches_the_caller(
    closed_network: NetworkGuard, caller: Callable[[str], Any]
) -> None:
    """Async clients connect in a task of their own (anyio's happy eyeballs), where no frame says
    which client asked, and the task group wraps the refusal in an ExceptionGroup: openai 3.x
    raises that group, openai 2.x retries it and raises "Connection error." from it. What chainkit
    reports (CLI, log, eval, the pytest plugin) still finds the refusal and names the host."""
    with pytest.raises(Exception) as raised:  # which wrapper depends on the client family
        caller(SENT_PROMPT)
    refusal = refusal_in(raised.value)
    assert isinstance(refusal, NetworkBlockedError) and refusal.host == "192.0.2.1"


# ------------------------------------------------- the miss, through what runs the chain


def test_a_miss_in_a_thread_or_a_parallel_branch_is_the_miss(recorded: Path, attempts: list[str]) -> None:
    with use_cassette(recorded, "none"):
        with pytest.raises(ReplayMissError, match="Closest recorded request"):
            asyncio.run(asyncio.to_thread(langchain_invoke, SENT_PROMPT))
        with pytest.raises(ReplayMissError, match="Closest recorded request"):
            RunnableParallel(answer=chat()).invoke(SENT_PROMPT)
    assert len(attempts) == 2


def test_a_miss_under_mlflow_pyfunc_predict_fails_the_call_with_the_miss(
    tmp_path: Path, recorded: Path, attempts: list[str]
) -> None:
    """MLflow's pyfunc predict of a LangChain model runs rows in its own thread pool, catches each
    row's ``Exception`` and raises one MlflowException quoting them. The miss stays an
    ``Exception`` for that reason: anything else escapes that bookkeeping and the pool waits
    forever. So: the call fails (and promptly), naming the miss and its diff."""
    import mlflow

    chain = tmp_path / "chat.py"
    chain.write_text(
        "import mlflow\nfrom langchain_openai import ChatOpenAI\n\n"
        f"mlflow.models.set_model(ChatOpenAI(model='gpt-4o-mini', base_url={OPENAI_BASE!r}))\n"
    )
    mlflow.langchain.save_model(
        lc_model=str(chain), path=str(tmp_path / "model"), pip_requirements=["langchain"]
    )
    model = mlflow.pyfunc.load_model(str(tmp_path / "model"))
    outcome: list[BaseException] = []

    def predict() -> None:
        try:
            model.predict([SENT_PROMPT])
        except BaseException as exc:
            outcome.append(exc)

    with use_cassette(recorded, "none"):
        worker = threading.Thread(target=predict, daemon=True)
        worker.start()
        worker.join(timeout=60)
    assert not worker.is_alive(), "pyfunc predict hung on a miss"
    assert type(outcome[0]).__name__ == "MlflowException"
    quoted = str(outcome[0])  # MLflow quotes each row's error as a repr
    assert "ReplayMissError" in quoted and "Closest recorded request" in quoted and SENT_PROMPT in quoted
    assert len(attempts) == 1


def test_the_clients_variant_pickles_as_the_public_error(recorded: Path) -> None:
    """The error a client let through is pickled (process pools, Spark) as the plain class."""
    import pickle

    with use_cassette(recorded, "none"), pytest.raises(ReplayMissError) as raised:
        openai_sync(SENT_PROMPT)
    copy = pickle.loads(pickle.dumps(raised.value))
    assert type(copy) is ReplayMissError and str(copy) == str(raised.value)
    assert copy.request == raised.value.request
    blocked = pickle.loads(pickle.dumps(NetworkBlockedError("example.com")))
    assert blocked.host == "example.com" and str(blocked) == str(NetworkBlockedError("example.com"))


WRAPPING_TEST = """
import pytest
from langchain_openai import ChatOpenAI


@pytest.mark.cassette
def test_wrapped():
    try:
        ChatOpenAI(model="gpt-4o-mini").invoke("What is mlflow?")
    except Exception as exc:  # a library's own vaguer error
        raise RuntimeError("Connection error.") from exc
"""


def test_the_pytest_plugin_names_a_miss_that_was_wrapped(pytester: pytest.Pytester) -> None:
    pytester.makepyprojecttoml('[tool.pytest.ini_options]\nasyncio_default_fixture_loop_scope = "function"\n')
    pytester.makepyfile(test_wrapping=WRAPPING_TEST)
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*- chainkit: refused request -*",
            "ReplayMissError: cassette */cassettes/test_wrapping/test_wrapped.json does not exist and record "
            "mode is 'none', so POST https://api.openai.com/v1/chat/completions has no answer*",
        ]
    )
