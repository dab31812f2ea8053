"""Looking into cassettes (toolkit/audit.py): prompt summaries, table rows, check, prune.

Usage (which recordings a replay used) comes from real replays through the openai client where
it matters, and from ``add_usage`` (what a replay calls when it ends) elsewhere.
"""

from __future__ import annotations

import errno
import json
import resource
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import openai
import pytest
from conftest import CANARY_KEY
from openai_server import OpenAIServer

from toolkit.audit import HEADERS, Row, check, prompt_of, prune, rows
from toolkit.cassette import (
    Cassette,
    Event,
    Interaction,
    RecordedRequest,
    RecordedResponse,
    add_usage,
    load_usage,
    usage_path,
)
from toolkit.errors import CassetteError, SecretLeakError
from toolkit.network import NetworkGuard
from toolkit.replay import use_cassette

API = "https://api.openai.com/v1"


@pytest.fixture(autouse=True)
def loopback_only() -> Iterator[None]:
    """Safety net: recording goes to the fake server on 127.0.0.1, and nowhere else."""
    with NetworkGuard(["127.0.0.1"]):
        yield


def chat(question: str, answer: str = "An answer.", *, streamed: bool = False) -> Interaction:
    body = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": question}],
    }
    request = RecordedRequest("POST", f"{API}/chat/completions", {"json": {**body, "stream": streamed}})
    if streamed:
        events = (Event({"choices": [{"index": 0, "delta": {"content": answer}}]}), Event("[DONE]"))
        sse = {"content-type": "text/event-stream"}
        return Interaction(request, RecordedResponse(200, sse, events=events))
    reply = {"choices": [{"index": 0, "message": {"role": "assistant", "content": answer}}]}
    return Interaction(request, RecordedResponse(200, {"content-type": "application/json"}, {"json": reply}))


def responses(text: str) -> Interaction:
    request = RecordedRequest("POST", f"{API}/responses", {"json": {"model": "gpt-4.1", "input": text}})
    return Interaction(request, RecordedResponse(200, {"content-type": "application/json"}, {"json": {}}))


@pytest.fixture
def three(tmp_path: Path) -> Path:
    """A cassette of three interactions: chat, streamed chat, Responses API."""
    path = tmp_path / "three.json"
    cassette = Cassette(path=path, recorded_with={"openai": "3.57.0"})
    cassette.interactions = [
        chat("first question"),
        chat("second question", streamed=True),
        responses("third question"),
    ]
    cassette.save()
    return path


def questions(path: Path) -> list[str]:
    return [prompt_of(interaction.request.body.get("json")) for interaction in Cassette.load(path)]


# ------------------------------------------------------------------------------- prompt_of


def test_prompt_of_chat_messages_is_the_last_message() -> None:
    body = {
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "What   is\n MLflow?"},
        ]
    }
    assert prompt_of(body) == "What is MLflow?"


def test_prompt_of_keeps_the_first_words() -> None:
    body = {"messages": [{"role": "user", "content": "one two three four five six seven eight nine ten"}]}
    assert prompt_of(body) == "one two three four five six seven eight ..."
    assert prompt_of(body, words=3) == "one two three ..."
    eight = {"messages": [{"role": "user", "content": "one two three four five six seven eight"}]}
    assert prompt_of(eight) == "one two three four five six seven eight"


def test_prompt_of_multimodal_content_keeps_the_text_parts() -> None:
    body = {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Describe this"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                    {"type": "text", "text": "picture briefly"},
                ],
            }
        ]
    }
    assert prompt_of(body) == "Describe this picture briefly"


def test_prompt_of_responses_input() -> None:
    text = "Summarize this text please"
    assert prompt_of({"model": "gpt-4.1", "input": text}) == text
    listed = {
        "input": [
            {"role": "system", "content": "Summarize."},
            {"role": "user", "type": "message", "content": "MLflow manages models"},
        ]
    }
    assert prompt_of(listed) == "MLflow manages models"
    parts = {
        "input": [
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "What is in"},
                    {"type": "input_image", "image_url": "https://example.invalid/cat.png"},
                    {"type": "input_text", "text": "this image?"},
                ],
            }
        ]
    }
    assert prompt_of(parts) == "What is in this image?"


def test_prompt_of_legacy_prompt_and_embeddings_input() -> None:
    legacy = {"model": "gpt-3.5-turbo-instruct", "prompt": "Say this is a test"}
    assert prompt_of(legacy) == "Say this is a test"
    assert prompt_of({"prompt": ["first prompt", "second prompt"]}) == "first prompt second prompt"
    assert prompt_of({"model": "text-embedding-3-small", "input": ["alpha text", "beta text"]}) == (
        "alpha text beta text"
    )


def test_prompt_of_without_a_prompt() -> None:
    assert prompt_of(None) == ""
    assert prompt_of("not json") == ""
    assert prompt_of({"model": "gpt-4o-mini"}) == ""
    assert prompt_of({"messages": []}) == ""
    assert prompt_of({"messages": [{"role": "assistant", "content": None}]}) == ""


def test_prompt_of_a_tool_call_round_trip_is_the_user_question() -> None:
    body = {
        "messages": [
            {"role": "user", "content": "What is the weather in Paris?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": "{}"}}
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": '{"celsius": 21}'},
        ]
    }
    assert prompt_of(body) == "What is the weather in Paris?"


# ------------------------------------------------------------------------------------ rows


def test_rows_without_usage_are_unknown(three: Path) -> None:
    found = rows(Cassette.load(three))
    assert found == [
        Row(0, "POST", "/v1/chat/completions", "gpt-4o-mini", "first question", 200, False, None),
        Row(1, "POST", "/v1/chat/completions", "gpt-4o-mini", "second question", 200, True, None),
        Row(2, "POST", "/v1/responses", "gpt-4.1", "third question", 200, False, None),
    ]
    assert [row.cells()[-1] for row in found] == ["?", "?", "?"]
    assert len(found[0].cells()) == len(HEADERS)
    assert found[1].cells()[HEADERS.index("streamed")] == "yes"
    assert found[0].cells()[HEADERS.index("endpoint")] == "POST /v1/chat/completions"


def test_rows_with_usage_say_yes_and_no(three: Path) -> None:
    add_usage(three, {0, 2})
    found = rows(Cassette.load(three))
    assert [row.used for row in found] == [True, False, True]
    assert [row.cells()[-1] for row in found] == ["yes", "no", "yes"]


def test_rows_of_a_body_without_json(tmp_path: Path) -> None:
    request = RecordedRequest("GET", f"{API}/models")
    cassette = Cassette(
        path=tmp_path / "get.json",
        interactions=[Interaction(request, RecordedResponse(404, {}, {"text": "not found"}))],
    )
    (row,) = rows(cassette)
    assert (row.method, row.path, row.model, row.prompt, row.status, row.streamed) == (
        "GET",
        "/v1/models",
        "",
        "",
        404,
        False,
    )


def test_rows_after_the_cassette_changed_are_unknown(three: Path) -> None:
    add_usage(three, {0})
    cassette = Cassette.load(three)
    cassette.interactions.append(chat("fourth question"))
    cassette.save()
    assert [row.used for row in rows(Cassette.load(three))] == [None] * 4


# ----------------------------------------------------- real replays record which were used


@pytest.fixture
def recorded(tmp_path: Path, record_via: str, openai_server: OpenAIServer) -> Path:
    """Two chat completions (one streamed) recorded from the fake server by the openai client."""
    path = tmp_path / "recorded.json"
    with use_cassette(path, "once", record_via=record_via):
        client = openai.OpenAI(max_retries=0)
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "Q one"}])
        stream = client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "Q two"}], stream=True
        )
        assert "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert len(openai_server.requests) == 2
    return path


def replay_first(path: Path) -> str:
    with use_cassette(path, "none"):
        reply = openai.OpenAI(max_retries=0).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "Q one"}]
        )
    return str(reply.choices[0].message.content)


def test_a_replay_marks_what_it_used(recorded: Path) -> None:
    assert [row.used for row in rows(Cassette.load(recorded))] == [None, None]
    assert replay_first(recorded) == "Answer to: Q one"
    found = rows(Cassette.load(recorded))
    assert [(row.prompt, row.streamed, row.used) for row in found] == [
        ("Q one", False, True),
        ("Q two", True, False),
    ]
    assert check(recorded).unused == [1]


def test_prune_after_a_real_replay(recorded: Path) -> None:
    replay_first(recorded)
    assert prune(recorded) == (1, 1)
    assert questions(recorded) == ["Q one"]
    assert replay_first(recorded) == "Answer to: Q one"  # the pruned cassette still replays


# ----------------------------------------------------------------------------------- check


def test_check_a_clean_cassette(three: Path) -> None:
    report = check(three)
    assert report.ok and report.problems == []
    assert report.interactions == 3 and report.path == three
    assert report.unused is None
    add_usage(three, {1})
    assert check(three).unused == [0, 2]
    add_usage(three, {0, 2})
    assert check(three).unused == []


def test_check_a_missing_cassette(tmp_path: Path) -> None:
    report = check(tmp_path / "absent.json")
    assert not report.ok and report.interactions == 0
    (problem,) = report.problems
    assert "absent.json" in problem and "no such cassette" in problem


def test_check_a_truncated_cassette(three: Path) -> None:
    three.write_text(three.read_text()[:150])
    report = check(three)
    assert not report.ok and report.interactions == 0
    (problem,) = report.problems
    assert problem.startswith(f"{three}:") and "not valid JSON" in problem


def test_check_a_file_that_is_not_a_cassette(tmp_path: Path) -> None:
    path = tmp_path / "other.json"
    path.write_text(json.dumps({"interactions": []}))
    (problem,) = check(path).problems
    assert "not a chainkit cassette" in problem


def leak(path: Path, secret: str) -> None:
    """Put ``secret`` into a prompt by editing the file (a save would refuse it)."""
    document = json.loads(path.read_text())
    document["interactions"][0]["request"]["json"]["messages"][1]["content"] = f"token {secret} here"
    path.write_text(json.dumps(document, indent=1))


def test_check_names_the_secret_variable_never_its_value(
    three: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    value = "plain-value-not-shaped-like-a-key-31337"
    monkeypatch.setenv("OPENAI_API_KEY", value)
    leak(three, value)
    report = check(three)
    assert not report.ok
    (problem,) = report.problems
    assert "OPENAI_API_KEY" in problem and str(three) in problem
    assert value not in problem and value[:12] not in problem
    monkeypatch.delenv("OPENAI_API_KEY")
    assert check(three).ok  # the value alone, outside the environment, is not a known secret


@pytest.mark.parametrize(
    "secret",
    [
        "sk-proj-" + "aB3" * 9,
        "sk-" + "x9Y" * 8,
        "Bearer " + "eyJhbGciOiJIUzI1NiJ9.payload.signature",
    ],
)
def test_check_flags_credential_shapes_masked(three: Path, secret: str) -> None:
    leak(three, secret)
    report = check(three)
    assert not report.ok
    (problem,) = report.problems
    assert "shaped like a credential" in problem
    assert f"({secret[:7]}...)" in problem
    assert secret[7:] not in problem


def test_check_reports_both_an_environment_secret_and_its_shape(
    three: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", CANARY_KEY)
    leak(three, CANARY_KEY)
    problems = check(three).problems
    assert len(problems) == 2
    assert any("OPENAI_API_KEY" in p for p in problems) and any("credential" in p for p in problems)
    assert not any(CANARY_KEY in p or CANARY_KEY[7:] in p for p in problems)


def test_check_after_the_cassette_changed_is_unknown(three: Path) -> None:
    add_usage(three, {0, 1, 2})
    cassette = Cassette.load(three)
    cassette.interactions.pop()
    cassette.save()
    assert check(three).unused is None


# ----------------------------------------------------------------------------------- prune


def test_prune_keeps_the_used_in_order_and_the_file_loads(three: Path) -> None:
    before = Cassette.load(three)
    add_usage(three, {2, 0})
    assert prune(three) == (2, 1)
    after = Cassette.load(three)
    assert after.exists
    assert after.interactions == [before.interactions[0], before.interactions[2]]
    assert after.recorded_with == {"openai": "3.57.0"}
    assert not usage_path(three).exists()  # indices no longer match: the usage starts over
    assert sorted(p.name for p in three.parent.iterdir()) == [".gitignore", three.name]  # no temp file
    with pytest.raises(CassetteError, match="no replay has used this cassette"):
        prune(three)


def test_prune_keeps_the_file_mode(three: Path) -> None:
    three.chmod(0o640)
    add_usage(three, {0})
    prune(three)
    assert three.stat().st_mode & 0o777 == 0o640


def test_prune_with_nothing_unused_leaves_the_file_alone(three: Path) -> None:
    add_usage(three, {0, 1, 2})
    before = three.read_bytes()
    assert prune(three) == (3, 0)
    assert three.read_bytes() == before
    assert load_usage(three) == {0, 1, 2}


def test_prune_refuses_before_any_replay(three: Path) -> None:
    before = three.read_bytes()
    with pytest.raises(CassetteError) as excinfo:
        prune(three)
    message = str(excinfo.value)
    assert str(three) in message and "no replay has used this cassette since it last changed" in message
    assert "then prune" in message
    assert three.read_bytes() == before


def test_prune_refuses_when_the_cassette_changed_since_the_replay(three: Path) -> None:
    add_usage(three, {0})
    cassette = Cassette.load(three)
    cassette.interactions.append(chat("fourth question"))
    cassette.save()
    before = three.read_bytes()
    with pytest.raises(CassetteError, match="no replay has used this cassette"):
        prune(three)
    assert three.read_bytes() == before


def test_prune_a_missing_cassette(tmp_path: Path) -> None:
    with pytest.raises(CassetteError, match="no such cassette"):
        prune(tmp_path / "absent.json")


def test_prune_refuses_to_write_a_secret(three: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "a-long-secret-value-123456")
    leak(three, "a-long-secret-value-123456")
    add_usage(three, {0})
    before = three.read_bytes()
    with pytest.raises(SecretLeakError) as excinfo:
        prune(three)
    assert "OPENAI_API_KEY" in str(excinfo.value) and "a-long-secret" not in str(excinfo.value)
    assert three.read_bytes() == before


@contextmanager
def file_size_limit(limit: int) -> Iterator[None]:
    """Writes to regular files fail past ``limit`` bytes (EFBIG): a real mid-write failure."""
    previous_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous_handler)


def test_prune_is_atomic_when_the_write_fails(three: Path) -> None:
    add_usage(three, {1})
    before = three.read_bytes()
    with file_size_limit(64), pytest.raises(OSError) as excinfo:
        prune(three)
    assert excinfo.value.errno == errno.EFBIG
    assert three.read_bytes() == before  # the old cassette, whole
    assert len(Cassette.load(three)) == 3
    left = sorted(p.name for p in three.parent.iterdir())
    assert left == sorted([three.name, usage_path(three).name, ".gitignore"])
    assert load_usage(three) == {1}  # nothing lost: prune can simply be run again
    assert prune(three) == (1, 2)
    assert questions(three) == ["second question"]


def test_usage_file_is_hidden_beside_the_cassette(three: Path) -> None:
    assert usage_path(three) == three.parent / ".three.json.usage"
    add_usage(three, {1})
    assert json.loads(usage_path(three).read_text())["used"] == [1]


def test_check_reports_recorded_error_answers_without_failing(tmp_path: Path) -> None:
    path = tmp_path / "errors.json"
    failed = Interaction(chat("q").request, RecordedResponse(404, {}, {"json": {"error": {}}}))
    Cassette(path=path, interactions=[chat("fine"), failed]).save()
    report = check(path)
    assert report.ok and report.error_answers == [(1, 404)]
    (note,) = report.notes()
    assert "1 recorded error answers: #1 (404)" in note and "re-record" in note


def test_check_folds_in_what_a_killed_session_left(tmp_path: Path) -> None:
    from toolkit.recording_log import RecordingLog, log_paths

    path = tmp_path / "c.json"
    Cassette(path=path, interactions=[chat("first")]).save()
    log = RecordingLog(path, replace=False)
    log.append(chat("second"))
    log.close(delete=False)  # as a SIGKILL leaves it: the log stays, its lock is gone
    report = check(path)
    assert report.ok and report.interactions == 2 and report.recovered == 1
    assert questions(path) == ["first", "second"] and log_paths(path) == []


def test_check_names_an_answer_without_a_body(three: Path) -> None:
    document = json.loads(three.read_text())
    del document["interactions"][2]["response"]["json"]  # a hand edit (or a cut) left it empty
    three.write_text(json.dumps(document))
    report = check(three)
    assert not report.ok and report.interactions == 3
    (problem,) = report.problems
    assert problem.startswith(f"{three}: interaction #2 (POST {API}/responses) recorded a 200 ")
    assert "whose body is empty" in problem and "--record-mode" in problem
