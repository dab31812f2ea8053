"""Tests for toolkit.pytest_plugin, run the way pytest-recording tests its plugin: with pytester.

Each test writes a small inner project (pyproject.toml, so the inner rootdir is pytester.path)
and runs pytest on it. Inner tests record from the fake OpenAI server of the outer test through
$CHAINKIT_RECORD_VIA, with real clients that believe they talk to https://api.openai.com/v1.
Runs are in-process (the plugin restores every patch on exit) except where noted.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from openai_server import OpenAIServer

ROOT = Path(__file__).resolve().parent.parent
OPENAI_BASE = "https://api.openai.com/v1"

# Header of the inner test modules: a real client pointed at the real API URL.
CLIENT = """\
import pytest
from langchain_openai import ChatOpenAI


def ask(question):
    llm = ChatOpenAI(model="gpt-4o-mini", base_url="https://api.openai.com/v1", api_key="sk-test",
                     max_retries=0)
    return llm.invoke(question).content
"""

ONE_TEST = (
    CLIENT
    + """

@pytest.mark.cassette
def test_ask():
    assert ask("What is a cassette?") == "Answer to: What is a cassette?"
"""
)


@pytest.fixture(scope="session", autouse=True)
def _preload_heavy_modules() -> None:
    """Import what inner runs import, once, before any ``pytester`` exists.

    pytester unloads every module first imported while it lives. Re-importing langchain on every
    test would be slow, and numpy (through MLflow) cannot be imported twice in one process.
    """
    import langchain_openai  # noqa: F401
    import mlflow.models.utils  # noqa: F401

    import toolkit.runner  # noqa: F401


@pytest.fixture
def inner(pytester: pytest.Pytester) -> pytest.Pytester:
    """An inner project whose rootdir is pytester.path."""
    pytester.makepyprojecttoml('[tool.pytest.ini_options]\nasyncio_default_fixture_loop_scope = "function"\n')
    return pytester


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[OpenAIServer]:
    """The fake OpenAI server; inner tests that record send their traffic to it."""
    with OpenAIServer() as running:
        monkeypatch.setenv("CHAINKIT_RECORD_VIA", running.base_url.removesuffix("/v1"))
        yield running


def write_test(pytester: pytest.Pytester, relpath: str, source: str) -> Path:
    path = pytester.path / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(source, encoding="utf-8")
    return path


def load(path: Path) -> dict[str, object]:
    assert path.is_file(), f"no cassette at {path}"
    document: dict[str, object] = json.loads(path.read_text(encoding="utf-8"))
    return document


def sent_questions(path: Path) -> list[str]:
    """The last user message of each recorded request of the cassette at ``path``."""
    interactions = load(path)["interactions"]
    assert isinstance(interactions, list)
    out = []
    for interaction in interactions:
        assert interaction["request"]["url"] == f"{OPENAI_BASE}/chat/completions"
        out.append(interaction["request"]["json"]["messages"][-1]["content"])
    return out


# --- options, help and markers ----------------------------------------------------------------


def test_help_lists_the_chainkit_group(inner: pytest.Pytester) -> None:
    result = inner.runpytest("--help")
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(
        [
            "chainkit: record and replay chain traffic:",
            "*--allow-host*",
            "*--no-block-network*",
        ]
    )
    # chainkit's own --record-mode, or pytest-recording's (shared) when that is installed.
    result.stdout.fnmatch_lines(["*--record-mode={*}*"])
    alone = inner.runpytest("--help", "-p", "no:recording")
    alone.stdout.fnmatch_lines(
        ["chainkit: record and replay chain traffic:", "*--record-mode={none,once,new_episodes,all}*"]
    )


def test_invalid_record_mode_is_a_usage_error_listing_the_choices(inner: pytest.Pytester) -> None:
    result = inner.runpytest("--record-mode=sometimes")
    assert result.ret in (pytest.ExitCode.USAGE_ERROR, 2)
    stderr = result.stderr.str()
    assert "--record-mode" in stderr
    assert "sometimes" in stderr
    for choice in ("none", "once", "new_episodes", "all"):
        assert f"'{choice}'" in stderr


def test_invalid_record_mode_in_the_environment_is_a_usage_error(
    inner: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    inner.makepyfile(test_any="def test_any():\n    pass\n")
    monkeypatch.setenv("CHAINKIT_RECORD_MODE", "sometimes")
    result = inner.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    output = result.stdout.str() + result.stderr.str()
    assert "CHAINKIT_RECORD_MODE" in output
    assert "sometimes" in output
    assert "none, once, new_episodes, all" in output
    assert "test_any" not in result.stdout.str()  # stopped at configure time: nothing collected
    # Control: a valid value (in any case) runs the tests.
    monkeypatch.setenv("CHAINKIT_RECORD_MODE", "ONCE")
    inner.runpytest().assert_outcomes(passed=1)


def test_cassette_marker_is_registered(inner: pytest.Pytester) -> None:
    result = inner.runpytest("--markers")
    assert result.ret == pytest.ExitCode.OK
    marker = "@pytest.mark.cassette(path=None, record_mode=None, allow_hosts=(), ignore_json_paths=()):*"
    result.stdout.fnmatch_lines([marker])


def test_cassette_marker_passes_strict_markers(inner: pytest.Pytester) -> None:
    inner.makepyfile(
        test_strict="""
        import pytest

        @pytest.mark.cassette(record_mode="once")
        def test_marked():
            pass
        """,
        test_control="""
        import pytest

        @pytest.mark.not_registered_anywhere
        def test_unknown():
            pass
        """,
    )
    result = inner.runpytest("--strict-markers", "test_strict.py")
    result.assert_outcomes(passed=1)
    # Control: --strict-markers does reject a marker that nobody registered.
    control = inner.runpytest("--strict-markers", "test_control.py")
    control.stdout.fnmatch_lines(["*'not_registered_anywhere' not found in `markers`*"])
    assert control.ret != pytest.ExitCode.OK


# --- record, then replay ----------------------------------------------------------------------


def test_marker_records_once_then_replays_with_the_server_stopped(inner: pytest.Pytester) -> None:
    write_test(inner, "tests/test_rec.py", ONE_TEST)
    cassette = inner.path / "tests" / "cassettes" / "test_rec" / "test_ask.json"
    with OpenAIServer() as server:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("CHAINKIT_RECORD_VIA", server.base_url.removesuffix("/v1"))
            # A fresh interpreter: the plugin comes from the pytest11 entry point alone.
            result = inner.runpytest_subprocess("--record-mode=once")
        result.assert_outcomes(passed=1)
        assert [r.path for r in server.requests] == ["/v1/chat/completions"]
    assert sent_questions(cassette) == ["What is a cassette?"]
    assert "sk-test" not in cassette.read_text()  # request headers (the API key) are not kept
    assert load(cassette)["interactions"][0]["response"]["json"]["choices"][0]["message"]["content"] == (
        "Answer to: What is a cassette?"
    )

    # The server is gone and no --record-mode is given: the default, none, replays.
    result = inner.runpytest()
    result.assert_outcomes(passed=1)
    assert len(server.requests) == 1


def test_default_mode_none_fails_naming_the_missing_cassette(inner: pytest.Pytester) -> None:
    write_test(inner, "tests/test_rec.py", ONE_TEST)
    missing = inner.path / "tests" / "cassettes" / "test_rec" / "test_ask.json"
    result = inner.runpytest()
    # Not an error on entering the cassette: the test runs, and its first request fails.
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            f"*ReplayMissError: cassette {missing} does not exist and record mode is 'none', so "
            f"POST {OPENAI_BASE}/chat/completions has no answer; record it first (--record-mode once)*"
        ]
    )
    assert not missing.exists()


def test_mode_none_needs_no_cassette_for_a_test_that_sends_nothing(inner: pytest.Pytester) -> None:
    write_test(
        inner,
        "tests/test_quiet.py",
        """
import pytest

from toolkit.replay import active_session


@pytest.mark.cassette
def test_sends_nothing(cassette):
    assert active_session() is cassette
    assert cassette.mode.value == "none"
    assert not cassette.path.exists()
""",
    )
    result = inner.runpytest()
    result.assert_outcomes(passed=1)
    assert not (inner.path / "tests" / "cassettes").exists()  # nothing written either


def test_record_mode_from_the_environment(
    inner: pytest.Pytester, server: OpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_test(inner, "tests/test_rec.py", ONE_TEST)
    monkeypatch.setenv("CHAINKIT_RECORD_MODE", "once")
    result = inner.runpytest()
    result.assert_outcomes(passed=1)
    assert len(server.requests) == 1
    assert sent_questions(inner.path / "tests/cassettes/test_rec/test_ask.json") == ["What is a cassette?"]


def test_command_line_record_mode_wins_over_the_environment(
    inner: pytest.Pytester, server: OpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_test(inner, "tests/test_rec.py", ONE_TEST)
    cassette = inner.path / "tests/cassettes/test_rec/test_ask.json"
    monkeypatch.setenv("CHAINKIT_RECORD_MODE", "once")
    result = inner.runpytest("--record-mode=none")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*does not exist and record mode is 'none'*"])
    assert server.requests == []
    assert not cassette.exists()

    monkeypatch.setenv("CHAINKIT_RECORD_MODE", "none")
    result = inner.runpytest("--record-mode", "once")
    result.assert_outcomes(passed=1)
    assert len(server.requests) == 1
    assert cassette.is_file()


def test_new_episodes_appends_to_an_existing_cassette(inner: pytest.Pytester, server: OpenAIServer) -> None:
    test_file = write_test(inner, "tests/test_rec.py", ONE_TEST)
    cassette = inner.path / "tests/cassettes/test_rec/test_ask.json"
    inner.runpytest("--record-mode=once").assert_outcomes(passed=1)
    test_file.write_text(ONE_TEST + '    assert ask("And a new one?") == "Answer to: And a new one?"\n')

    once = inner.runpytest("--record-mode=once")  # once never adds to an existing cassette
    once.assert_outcomes(failed=1)
    once.stdout.fnmatch_lines(["*record mode 'once' records only a new cassette*"])
    assert sent_questions(cassette) == ["What is a cassette?"]

    inner.runpytest("--record-mode=new_episodes").assert_outcomes(passed=1)
    assert sent_questions(cassette) == ["What is a cassette?", "And a new one?"]
    assert [r.body["messages"][-1]["content"] for r in server.requests] == [
        "What is a cassette?",
        "And a new one?",
    ]
    inner.runpytest().assert_outcomes(passed=1)


def test_async_test_records_and_replays(inner: pytest.Pytester, server: OpenAIServer) -> None:
    write_test(
        inner,
        "tests/test_async.py",
        CLIENT
        + """

@pytest.mark.asyncio
@pytest.mark.cassette
async def test_ainvoke():
    llm = ChatOpenAI(model="gpt-4o-mini", base_url="https://api.openai.com/v1", api_key="sk-test",
                     max_retries=0)
    assert (await llm.ainvoke("async?")).content == "Answer to: async?"
""",
    )
    inner.runpytest("--record-mode=once").assert_outcomes(passed=1)
    assert sent_questions(inner.path / "tests/cassettes/test_async/test_ainvoke.json") == ["async?"]
    inner.runpytest().assert_outcomes(passed=1)
    assert len(server.requests) == 1


# --- marker arguments -------------------------------------------------------------------------


def test_marker_path_is_relative_to_the_test_file(inner: pytest.Pytester, server: OpenAIServer) -> None:
    write_test(
        inner,
        "tests/unit/test_paths.py",
        CLIENT
        + """

@pytest.mark.cassette("recordings/positional.json")
def test_positional():
    assert ask("positional") == "Answer to: positional"


@pytest.mark.cassette(path="../elsewhere/keyword.json")
def test_keyword():
    assert ask("keyword") == "Answer to: keyword"
""",
    )
    result = inner.runpytest("--record-mode=once")
    result.assert_outcomes(passed=2)
    assert sent_questions(inner.path / "tests/unit/recordings/positional.json") == ["positional"]
    assert sent_questions(inner.path / "tests/elsewhere/keyword.json") == ["keyword"]
    assert not (inner.path / "tests/unit/cassettes").exists()  # the default path was not used

    result = inner.runpytest()  # replay from the explicit paths
    result.assert_outcomes(passed=2)
    assert len(server.requests) == 2


def test_command_line_record_mode_wins_over_the_marker_and_the_marker_over_the_environment(
    inner: pytest.Pytester, server: OpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    test_file = write_test(
        inner,
        "tests/test_modes.py",
        CLIENT
        + """

@pytest.mark.cassette(record_mode="once")
def test_marked():
    assert ask("marked") == "Answer to: marked"
""",
    )
    cassette = inner.path / "tests/cassettes/test_modes/test_marked.json"

    # --record-mode=none (as in CI) beats the marker's once: nothing reaches the network.
    result = inner.runpytest("--record-mode=none")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [f"*ReplayMissError: cassette {cassette} does not exist and record mode is 'none'*"]
    )
    assert server.requests == []
    assert not cassette.exists()

    # No option: the marker's once applies, and beats $CHAINKIT_RECORD_MODE=none.
    monkeypatch.setenv("CHAINKIT_RECORD_MODE", "none")
    result = inner.runpytest()
    result.assert_outcomes(passed=1)
    assert sent_questions(cassette) == ["marked"]
    assert len(server.requests) == 1

    # record_mode="all" in the marker: --record-mode=none still only replays.
    test_file.write_text(test_file.read_text().replace('record_mode="once"', 'record_mode="all"'))
    before = cassette.read_bytes()
    result = inner.runpytest("--record-mode=none")
    result.assert_outcomes(passed=1)
    assert len(server.requests) == 1
    assert cassette.read_bytes() == before

    # ...and without the option the marker's all re-records, $CHAINKIT_RECORD_MODE=none or not.
    result = inner.runpytest()
    result.assert_outcomes(passed=1)
    assert len(server.requests) == 2
    assert sent_questions(cassette) == ["marked"]


# --- fixtures ---------------------------------------------------------------------------------


def test_cassette_fixture_yields_the_active_session(
    inner: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_test(
        inner,
        "tests/test_fixture.py",
        """
from pathlib import Path

import pytest

from toolkit.replay import CassetteSession, active_session

HERE = Path(__file__).parent


def test_session(cassette, chainkit_record_mode):
    assert isinstance(cassette, CassetteSession)
    assert cassette.mode.value == "once" == chainkit_record_mode
    assert cassette.path == HERE / "cassettes" / "test_fixture" / "test_session.json"
    assert active_session() is cassette


@pytest.mark.cassette("elsewhere.json", record_mode="all")
def test_marked_session(cassette, cassette_path, chainkit_record_mode):
    assert cassette.mode.value == "all" == chainkit_record_mode
    assert cassette.path == cassette_path == HERE / "elsewhere.json"
    assert active_session() is cassette


def test_no_marker_no_cassette():
    assert active_session() is None
""",
    )
    monkeypatch.setenv("CHAINKIT_RECORD_MODE", "once")  # the marker's all wins over it
    result = inner.runpytest("-v")
    result.assert_outcomes(passed=3)


def test_parametrized_ids_get_distinct_cassettes(inner: pytest.Pytester, server: OpenAIServer) -> None:
    write_test(
        inner,
        "tests/test_params.py",
        CLIENT
        + """

@pytest.mark.cassette
@pytest.mark.parametrize("question", ["alpha", "beta/gamma", "delta epsilon"])
def test_ask(question):
    assert ask(question) == "Answer to: " + question
""",
    )
    result = inner.runpytest("--record-mode=once")
    result.assert_outcomes(passed=3)
    folder = inner.path / "tests/cassettes/test_params"
    files = sorted(p.name for p in folder.iterdir() if p.suffix == ".json")
    assert len(files) == 3, files
    # The id is kept as is when it is safe, else made safe with a hash of the original added.
    assert files[0] == "test_ask[alpha].json"
    assert re.fullmatch(r"test_ask\[beta-gamma\]-[0-9a-f]{8}\.json", files[1]), files
    assert re.fullmatch(r"test_ask\[delta-epsilon\]-[0-9a-f]{8}\.json", files[2]), files
    assert sent_questions(folder / files[0]) == ["alpha"]
    assert sent_questions(folder / files[1]) == ["beta/gamma"]
    assert sent_questions(folder / files[2]) == ["delta epsilon"]

    result = inner.runpytest()
    result.assert_outcomes(passed=3)
    assert len(server.requests) == 3


def test_same_test_name_in_two_classes_gets_distinct_cassettes(
    inner: pytest.Pytester, server: OpenAIServer
) -> None:
    write_test(
        inner,
        "tests/test_classes.py",
        CLIENT
        + """

@pytest.mark.cassette
class TestFirst:
    def test_ask(self):
        assert ask("first") == "Answer to: first"


@pytest.mark.cassette
class TestSecond:
    def test_ask(self):
        assert ask("second") == "Answer to: second"
""",
    )
    result = inner.runpytest("--record-mode=once")
    result.assert_outcomes(passed=2)
    folder = inner.path / "tests/cassettes/test_classes"
    assert sorted(p.name for p in folder.glob("*.json")) == [
        "TestFirst.test_ask.json",
        "TestSecond.test_ask.json",
    ]
    assert sent_questions(folder / "TestFirst.test_ask.json") == ["first"]
    assert sent_questions(folder / "TestSecond.test_ask.json") == ["second"]

    result = inner.runpytest()  # each replays from its own cassette
    result.assert_outcomes(passed=2)
    assert len(server.requests) == 2


def test_distinct_ids_never_share_a_cassette(inner: pytest.Pytester) -> None:
    inner.makepyfile(
        test_ids="""
        import pytest

        @pytest.mark.parametrize("x", ["a/b", "a-b"])
        def test_id(x, cassette_path):
            print("CASSETTE", cassette_path.name)
        """
    )
    result = inner.runpytest("-s")
    result.assert_outcomes(passed=2)
    names = [line.split()[-1] for line in result.stdout.lines if "CASSETTE" in line]
    assert len(names) == 2
    assert len(set(names)) == 2, names
    assert "test_id[a-b].json" in names  # the safe id keeps its plain name


# --- chain_runner -----------------------------------------------------------------------------


@pytest.fixture
def qa_project(inner: pytest.Pytester) -> pytest.Pytester:
    """An inner project holding the example chain qa and its cassette (copied from this repo)."""
    (inner.path / "chains").mkdir()
    (inner.path / "cassettes").mkdir()
    shutil.copy(ROOT / "chains" / "qa.py", inner.path / "chains" / "qa.py")
    shutil.copy(ROOT / "cassettes" / "qa.json", inner.path / "cassettes" / "qa.json")
    inner.makepyfile(
        test_qa="""
        def test_qa(chain_runner):
            assert "MLflow" in chain_runner("qa").invoke({"question": "What is MLflow?"})

        def test_unrecorded_question(chain_runner):
            chain_runner("qa").invoke({"question": "What is a cassette?"})
        """
    )
    return inner


def test_chain_runner_replays_the_chain_cassette_without_a_server(qa_project: pytest.Pytester) -> None:
    before = (qa_project.path / "cassettes" / "qa.json").read_bytes()
    result = qa_project.runpytest("--record-mode=none", "test_qa.py::test_qa")
    result.assert_outcomes(passed=1)
    assert (qa_project.path / "cassettes" / "qa.json").read_bytes() == before


def test_chain_runner_reports_an_unrecorded_question(qa_project: pytest.Pytester) -> None:
    result = qa_project.runpytest("--record-mode=none", "test_qa.py::test_unrecorded_question")
    result.assert_outcomes(failed=1)
    cassette = qa_project.path / "cassettes" / "qa.json"
    result.stdout.fnmatch_lines(
        [
            f"*ReplayMissError: no recorded response in {cassette} for POST {OPENAI_BASE}/chat/completions"
            " (record mode is 'none')*",
            f"*Closest recorded request: #0 POST {OPENAI_BASE}/chat/completions, which differs in:",
        ]
    )
    difference = 'messages[1].content: recorded "What is MLflow?", sent "What is a cassette?"'
    assert difference in result.stdout.str()


def test_chain_runner_keeps_each_chain_on_its_own_cassette(qa_project: pytest.Pytester) -> None:
    shutil.copy(ROOT / "chains" / "summarize.py", qa_project.path / "chains" / "summarize.py")
    shutil.copy(ROOT / "cassettes" / "summarize.json", qa_project.path / "cassettes" / "summarize.json")
    qa_project.makepyfile(
        test_two="""
        TEXT = (
            "MLflow is an open-source platform to manage the machine learning lifecycle, "
            "including experimentation, reproducibility, deployment, and a central model registry."
        )

        def test_two_chains(chain_runner):
            qa = chain_runner("qa")
            summarize = chain_runner("summarize")
            # qa's request is answered by qa.json although summarize.json is the innermost.
            assert "MLflow" in qa.invoke({"question": "What is MLflow?"})
            assert "MLflow" in summarize.invoke({"text": TEXT})

        def test_a_miss_is_reported_by_the_innermost(chain_runner):
            qa = chain_runner("qa")
            chain_runner("summarize")
            qa.invoke({"question": "What is a cassette?"})
        """
    )
    cassettes = qa_project.path / "cassettes"
    before = {name: (cassettes / name).read_bytes() for name in ("qa.json", "summarize.json")}
    result = qa_project.runpytest("--record-mode=none", "test_two.py::test_two_chains")
    result.assert_outcomes(passed=1)
    assert {name: (cassettes / name).read_bytes() for name in before} == before

    result = qa_project.runpytest(
        "--record-mode=none", "test_two.py::test_a_miss_is_reported_by_the_innermost"
    )
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [f"*ReplayMissError: no recorded response in {cassettes / 'summarize.json'} for POST {OPENAI_BASE}/*"]
    )


# --- allowed hosts ----------------------------------------------------------------------------


def test_allow_host_option_reaches_the_allow_hosts_fixture(inner: pytest.Pytester) -> None:
    inner.makepyfile(
        test_hosts="""
        import pytest

        def test_option_hosts(chainkit_allow_hosts):
            assert chainkit_allow_hosts == ["example.com", "models.internal"]

        @pytest.mark.cassette(record_mode="once", allow_hosts=["marked.test"])
        def test_marker_hosts_are_added(chainkit_allow_hosts, cassette):
            assert chainkit_allow_hosts == ["example.com", "models.internal", "marked.test"]
            assert {"example.com", "models.internal", "marked.test"} <= cassette.allow_hosts
        """
    )
    result = inner.runpytest("--allow-host", "example.com", "--allow-host=models.internal")
    result.assert_outcomes(passed=2)
    assert inner.runpytest("test_hosts.py::test_option_hosts").ret == pytest.ExitCode.TESTS_FAILED


def test_marker_allow_hosts_string_is_one_host(
    inner: pytest.Pytester, server: OpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_OPENAI", server.base_url)
    write_test(
        inner,
        "tests/cassettes/test_one_host/test_live.json",
        json.dumps({"chainkit_cassette": 1, "interactions": []}),
    )
    write_test(
        inner,
        "tests/test_one_host.py",
        """
import os

import httpx
import pytest

BODY = {"model": "m", "messages": [{"role": "user", "content": "live"}]}


@pytest.mark.cassette(allow_hosts="example.com")
def test_fixture(chainkit_allow_hosts, cassette):
    assert chainkit_allow_hosts == ["example.com"]
    assert "example.com" in cassette.allow_hosts
    assert "e" not in cassette.allow_hosts


@pytest.mark.cassette(allow_hosts="127.0.0.1")
def test_live():  # record mode none: only the allowed host lets this through
    response = httpx.post(os.environ["FAKE_OPENAI"] + "/chat/completions", json=BODY)
    assert response.json()["choices"][0]["message"]["content"] == "Answer to: live"
""",
    )
    result = inner.runpytest()
    result.assert_outcomes(passed=2)
    assert len(server.requests) == 1


def test_allowed_host_is_reached_live_in_record_mode_none(
    inner: pytest.Pytester, server: OpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_OPENAI", server.base_url)
    for name in ("test_httpx", "test_socket"):
        write_test(
            inner,
            f"tests/cassettes/test_live/{name}.json",
            json.dumps({"chainkit_cassette": 1, "interactions": []}),
        )
    write_test(
        inner,
        "tests/test_live.py",
        """
import json
import os
import urllib.request

import httpx
import pytest

BODY = {"model": "m", "messages": [{"role": "user", "content": "live"}]}


@pytest.mark.cassette
def test_httpx():  # answered by the cassette's transport patch
    response = httpx.post(os.environ["FAKE_OPENAI"] + "/chat/completions", json=BODY)
    assert response.json()["choices"][0]["message"]["content"] == "Answer to: live"


@pytest.mark.cassette
def test_socket():  # not httpx: only the network guard stands in the way
    request = urllib.request.Request(os.environ["FAKE_OPENAI"] + "/chat/completions",
                                     data=json.dumps(BODY).encode(),
                                     headers={"content-type": "application/json"})
    with urllib.request.urlopen(request) as response:
        assert json.load(response)["choices"][0]["message"]["content"] == "Answer to: live"
""",
    )
    blocked = inner.runpytest()
    blocked.assert_outcomes(failed=2)
    blocked.stdout.fnmatch_lines(
        [
            "*ReplayMissError: no recorded response in * for POST http://127.0.0.1:*/v1/chat/completions*",
            "*NetworkBlockedError: chainkit blocked a connection to 127.0.0.1*--allow-host 127.0.0.1)",
        ]
    )
    assert server.requests == []

    allowed = inner.runpytest("--allow-host=127.0.0.1")
    allowed.assert_outcomes(passed=2)
    assert len(server.requests) == 2
    # Traffic to an allowed host is not recorded.
    for name in ("test_httpx", "test_socket"):
        assert load(inner.path / f"tests/cassettes/test_live/{name}.json")["interactions"] == []


# --- the network closed for the whole session in record mode none -----------------------------

# Inner modules reach the outer test's fake server (on 127.0.0.1) with no HTTP library of ours.
REACH = """\
import http.client
import os
from urllib.parse import urlsplit


def reach():
    server = urlsplit(os.environ["FAKE_OPENAI"])
    connection = http.client.HTTPConnection(server.hostname, server.port, timeout=5)
    connection.request("GET", "/v1/models")  # the fake server answers 404, and logs the request
    return connection.getresponse().status == 404
"""

BLOCKED = "*NetworkBlockedError: chainkit blocked a connection to 127.0.0.1*--allow-host 127.0.0.1)"


@pytest.fixture
def reachable(inner: pytest.Pytester, server: OpenAIServer, monkeypatch: pytest.MonkeyPatch) -> OpenAIServer:
    """An inner project whose tests, with no cassette, reach the fake server: from a test, from a
    session fixture (set up before any test), and (test_import_time.py) at import."""
    monkeypatch.setenv("FAKE_OPENAI", server.base_url)
    write_test(inner, "tests/reach.py", REACH)
    write_test(
        inner,
        "tests/conftest.py",
        """
import pytest
from reach import reach


@pytest.fixture(scope="session")
def reached_once():
    return reach()
""",
    )
    write_test(
        inner,
        "tests/test_unmarked.py",
        """
from reach import reach


def test_plain():
    assert reach()


def test_session_fixture(reached_once):
    assert reached_once
""",
    )
    write_test(inner, "tests/test_import_time.py", "from reach import reach\n\nSTATUS = reach()\n")
    inner.makepyprojecttoml(
        '[tool.pytest.ini_options]\nasyncio_default_fixture_loop_scope = "function"\npythonpath = ["tests"]\n'
    )
    return server


def test_record_mode_none_closes_the_network_for_tests_without_a_cassette(
    inner: pytest.Pytester, reachable: OpenAIServer
) -> None:
    for args in (["--record-mode=none"], []):  # explicit, and the default mode
        result = inner.runpytest(*args, "tests/test_unmarked.py")
        result.assert_outcomes(failed=1, errors=1)
        result.stdout.fnmatch_lines([BLOCKED])
        result = inner.runpytest(*args, "tests/test_import_time.py")  # at collection too
        result.assert_outcomes(errors=1)
        result.stdout.fnmatch_lines([BLOCKED])
    assert reachable.requests == []


@pytest.mark.parametrize(
    "args",
    [["--allow-host=127.0.0.1"], ["--no-block-network"], ["--record-mode=once"]],
    ids=["allow-host", "no-block-network", "recording"],
)
def test_the_session_network_opens_on_request(
    inner: pytest.Pytester, reachable: OpenAIServer, args: list[str]
) -> None:
    inner.runpytest(*args).assert_outcomes(passed=2)
    assert len(reachable.requests) == 3  # test_import_time, the session fixture, test_plain


def test_a_recording_mode_in_the_environment_leaves_the_session_open(
    inner: pytest.Pytester, reachable: OpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHAINKIT_RECORD_MODE", "once")
    inner.runpytest().assert_outcomes(passed=2)
    monkeypatch.setenv("CHAINKIT_ALLOW_HOSTS", "example.invalid, 127.0.0.1")
    monkeypatch.setenv("CHAINKIT_RECORD_MODE", "none")  # closed, but this host is allowed
    inner.runpytest().assert_outcomes(passed=2)
    assert len(reachable.requests) == 6


def test_a_test_that_records_opens_the_network_for_itself_only(
    inner: pytest.Pytester, reachable: OpenAIServer
) -> None:
    write_test(
        inner,
        "tests/test_mixed.py",
        CLIENT
        + """
from reach import reach


@pytest.mark.cassette(record_mode="once")
def test_records():
    assert ask("recorded") == "Answer to: recorded"


def test_unmarked_after_it():
    reach()
""",
    )
    result = inner.runpytest("tests/test_mixed.py")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*test_unmarked_after_it*", BLOCKED])
    assert [request.path for request in reachable.requests] == ["/v1/chat/completions"]
    # --record-mode=none beats the marker: the recording test is closed too.
    result = inner.runpytest("--record-mode=none", "tests/test_mixed.py")
    result.assert_outcomes(passed=1, failed=1)  # test_records replays what it recorded above
    assert len(reachable.requests) == 1


def test_the_mlflow_tracking_server_stays_reachable_in_the_closed_session(
    inner: pytest.Pytester, reachable: OpenAIServer
) -> None:
    write_test(
        inner,
        "tests/test_tracking.py",
        """
import os

from reach import reach


def test_tracking_server(monkeypatch):  # set during the test, as a fixture starting a server would
    monkeypatch.setenv("MLFLOW_TRACKING_URI", os.environ["FAKE_OPENAI"].removesuffix("/v1"))
    assert reach()


def test_no_tracking_server():
    reach()
""",
    )
    result = inner.runpytest("tests/test_tracking.py")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*test_no_tracking_server*", BLOCKED])
    assert len(reachable.requests) == 1


def test_an_inner_session_leaves_the_outer_network_state_as_it_was(
    inner: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    from toolkit import network

    def state() -> tuple[object, ...]:
        return (tuple(network._guards), socket.getaddrinfo, socket.socket.connect)

    before = state()
    inner.makepyfile(
        test_state="""
        from toolkit import network

        def test_closed():
            assert network._guards and not network._guards[-1].allows("127.0.0.1")
        """
    )
    inner.runpytest().assert_outcomes(passed=1)
    assert state() == before
    inner.runpytest("--no-block-network").assert_outcomes(failed=1)
    assert state() == before
    inner.makepyfile(test_broken="raise SystemExit(3)\n")  # an internal error, at collection
    assert inner.runpytest().ret == pytest.ExitCode.INTERNAL_ERROR
    assert state() == before
    assert inner.runpytest("--help").ret == pytest.ExitCode.OK
    assert state() == before
    monkeypatch.setenv("CHAINKIT_RECORD_MODE", "sometimes")  # fails in pytest_configure
    assert inner.runpytest().ret == pytest.ExitCode.USAGE_ERROR
    assert state() == before


# --- beside pytest-recording --------------------------------------------------------------------


@pytest.mark.parametrize("chainkit_first", [True, False])
def test_pytest_recording_and_chainkit_register_in_either_order(chainkit_first: bool) -> None:
    """Users coming from pytest-recording have it installed: one --record-mode for both."""
    from _pytest.config import PytestPluginManager
    from _pytest.config.argparsing import Parser
    from pytest_recording import plugin as recording

    from toolkit import pytest_plugin

    parser, manager = Parser(), PytestPluginManager()
    if chainkit_first:
        pytest_plugin.pytest_addoption(parser, manager)
        recording.pytest_addoption(parser)  # raised "option dest 'record_mode' already used"
    else:
        recording.pytest_addoption(parser)
        pytest_plugin.pytest_addoption(parser, manager)
    options = parser.parse_known_args(["--record-mode=once", "--allow-host=h"])
    assert (options.record_mode, options.chainkit_allow_hosts) == ("once", ["h"])


def test_with_pytest_recording_loaded_both_read_the_one_record_mode(inner: pytest.Pytester) -> None:
    inner.makepyfile(
        test_modes="""
        def test_modes(request, record_mode, chainkit_record_mode):
            assert request.config.pluginmanager.has_plugin("recording")
            assert (record_mode, chainkit_record_mode) == ("once", "once")
        """
    )
    result = inner.runpytest_subprocess("--record-mode=once", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.OK, result.stdout.str() + result.stderr.str()
    result.assert_outcomes(passed=1)


def test_fixtures_show_their_docstrings(inner: pytest.Pytester) -> None:
    result = inner.runpytest("--fixtures", "-p", "no:recording")
    out = result.stdout.str()
    for fixture in ("chainkit_record_mode", "chainkit_allow_hosts", "cassette_path", "chain_runner"):
        assert re.search(rf"^{fixture}\b.*\n    \S", out, re.MULTILINE), f"{fixture} has no docstring"
    assert "no docstring available" not in out.split("fixtures defined from toolkit.pytest_plugin")[-1]


JUDGE_TEST = """\
import pytest
from mlflow.genai.scorers import Correctness


@pytest.mark.cassette
def test_judged():
    judge = Correctness(model="openai:/gpt-4o-mini")
    feedback = judge(inputs={"question": "What is MLflow?"}, outputs="A platform.",
                     expectations={"expected_response": "An ML platform."})
    assert feedback.error is None and feedback.value == "yes"
"""


def test_a_test_that_calls_an_mlflow_judge_records_once_then_passes_offline(inner: pytest.Pytester) -> None:
    """MLflow's judges send with requests: the test's cassette records and replays them too."""

    def judge_responder(endpoint: str, body: dict[str, Any]) -> str:
        return json.dumps({"rationale": "It is.", "result": "yes"})

    write_test(inner, "tests/test_judge.py", JUDGE_TEST)
    cassette = inner.path / "tests" / "cassettes" / "test_judge" / "test_judged.json"
    with OpenAIServer(responder=judge_responder) as server, pytest.MonkeyPatch.context() as mp:
        mp.setenv("CHAINKIT_RECORD_VIA", server.base_url.removesuffix("/v1"))
        mp.setenv("OPENAI_API_KEY", "sk-test-judge")
        inner.runpytest_subprocess("--record-mode=once").assert_outcomes(passed=1)
    assert [r.headers["user-agent"].split("/")[0] for r in server.requests] == ["python-requests"]
    [interaction] = load(cassette)["interactions"]  # type: ignore[misc]
    assert interaction["request"]["json"]["response_format"]["json_schema"]["name"] == "JudgeEvaluation"
    assert "sk-test-judge" not in cassette.read_text()
    inner.runpytest_subprocess().assert_outcomes(passed=1)  # mode none, the server gone
    assert len(server.requests) == 1
