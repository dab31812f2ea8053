"""Record and replay through the real openai and langchain-openai clients (httpx2), plain
httpx, sync and async, streamed and not, against a fake OpenAI server on loopback."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from conftest import CANARY_KEY, OPENAI_BASE, RECORDED
from langchain_openai import ChatOpenAI, OpenAI, OpenAIEmbeddings
from openai_server import OpenAIServer

from toolkit import Cassette, use_cassette
from toolkit.errors import ReplayMissError, SecretLeakError, UsageError
from toolkit.replay import PLACEHOLDER_API_KEY, RecordMode, active_session


def chat(**kwargs: Any) -> ChatOpenAI:
    return ChatOpenAI(model="gpt-4o-mini", base_url=OPENAI_BASE, api_key="sk-test", max_retries=0, **kwargs)


def record(path: Path, record_via: str, *prompts: str, mode: str = "once") -> list[str]:
    with use_cassette(path, mode, record_via=record_via):
        return [str(chat().invoke(prompt).content) for prompt in prompts]


# ------------------------------------------------------------------- the record-mode table


@pytest.mark.parametrize("mode", ["once", "new_episodes", "all"])
def test_missing_cassette_records_everything(
    tmp_path: Path, record_via: str, openai_server: OpenAIServer, mode: str
) -> None:
    path = tmp_path / "c.json"
    with use_cassette(path, mode, record_via=record_via) as session:
        chat().invoke("one")
        chat().invoke("one")  # identical calls are both recorded (n-th call -> n-th recording)
        chat().invoke("two")
    assert len(openai_server.requests) == 3
    assert len(Cassette.load(path)) == 3
    assert session.replayed == 0


def test_none_with_missing_cassette_is_an_error_at_the_first_request(tmp_path: Path) -> None:
    with use_cassette(tmp_path / "absent.json", "none"):
        pass  # a block that sends nothing needs no cassette
    with use_cassette(tmp_path / "absent.json", "none"), pytest.raises(ReplayMissError) as raised:
        chat().invoke("hello")
    assert f"cassette {tmp_path / 'absent.json'} does not exist and record mode is 'none'" in str(
        raised.value
    )
    assert "POST https://api.openai.com/v1/chat/completions" in str(raised.value)
    assert not (tmp_path / "absent.json").exists()


@pytest.mark.parametrize("mode", ["none", "once", "new_episodes"])
def test_found_requests_replay(
    tmp_path: Path, record_via: str, openai_server: OpenAIServer, mode: str
) -> None:
    path = tmp_path / "c.json"
    recorded = record(path, record_via, "hello")
    before = path.read_bytes()
    with use_cassette(path, mode, record_via=record_via) as session:
        assert chat().invoke("hello").content == recorded[0]
    assert len(openai_server.requests) == 1  # only the recording went out
    assert session.replayed == 1
    assert path.read_bytes() == before


def test_all_rerecords_found_requests(tmp_path: Path, openai_server: OpenAIServer, record_via: str) -> None:
    path = tmp_path / "c.json"
    record(path, record_via, "hello", "keep me")
    with use_cassette(path, "all", record_via=record_via) as session:
        chat().invoke("hello")
    assert len(openai_server.requests) == 3
    assert session.replayed == 0
    prompts = [i.request.body["json"]["messages"][0]["content"] for i in Cassette.load(path)]
    # Re-recorded once (not duplicated); other recordings are kept.
    assert sorted(prompts) == ["hello", "keep me"]


@pytest.mark.parametrize("mode", ["none", "once"])
def test_unfound_request_is_an_error_without_recording(
    tmp_path: Path, record_via: str, openai_server: OpenAIServer, mode: str
) -> None:
    path = tmp_path / "c.json"
    record(path, record_via, "What is MLflow?")
    before = path.read_bytes()
    with use_cassette(path, mode, record_via=record_via), pytest.raises(ReplayMissError) as raised:
        chat().invoke("What is mlflow?")
    message = str(raised.value)
    assert str(path) in message
    assert "Closest recorded request: #0 POST https://api.openai.com/v1/chat/completions" in message
    assert 'messages[0].content: recorded "What is MLflow?", sent "What is mlflow?"' in message
    assert len(openai_server.requests) == 1
    assert path.read_bytes() == before


@pytest.mark.parametrize("mode", ["new_episodes", "all"])
def test_unfound_request_is_recorded_and_appended(
    tmp_path: Path, record_via: str, openai_server: OpenAIServer, mode: str
) -> None:
    path = tmp_path / "c.json"
    record(path, record_via, "first")
    with use_cassette(path, mode, record_via=record_via):
        answer = chat().invoke("second").content
    prompts = [i.request.body["json"]["messages"][0]["content"] for i in Cassette.load(path)]
    assert prompts == ["first", "second"]
    with use_cassette(path, "none"):
        assert chat().invoke("second").content == answer


def test_record_mode_from_environment_and_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    assert RecordMode.parse(None) is RecordMode.NONE
    monkeypatch.setenv("CHAINKIT_RECORD_MODE", "new_episodes")
    assert RecordMode.parse(None) is RecordMode.NEW_EPISODES
    assert RecordMode.parse("ALL") is RecordMode.ALL
    with pytest.raises(UsageError, match="use one of none, once, new_episodes, all"):
        RecordMode.parse("sometimes")


# ------------------------------------------------------------------------------- matching


def test_nth_identical_call_gets_nth_recording_then_last_repeats(tmp_path: Path, record_via: str) -> None:
    path = tmp_path / "c.json"
    counter = iter(range(100))
    with OpenAIServer(responder=lambda endpoint, body: f"reply {next(counter)}") as server:
        record(path, server.base_url.removesuffix("/v1"), "same", "same")
    with use_cassette(path, "none"):
        assert [chat().invoke("same").content for _ in range(3)] == ["reply 0", "reply 1", "reply 1"]


def test_headers_do_not_take_part_in_matching(tmp_path: Path, record_via: str) -> None:
    path = tmp_path / "c.json"
    recorded = record(path, record_via, "hello")
    other = ChatOpenAI(
        model="gpt-4o-mini",
        base_url=OPENAI_BASE,
        api_key="sk-other",
        max_retries=0,
        default_headers={"x-team": "blue"},
    )
    with use_cassette(path, "none"):
        assert other.invoke("hello").content == recorded[0]


# ---------------------------------------------------------------- clients, sync and async


def test_stream_and_astream_replay_the_recorded_chunks(tmp_path: Path, record_via: str) -> None:
    path = tmp_path / "c.json"

    async def achunks(llm: ChatOpenAI) -> list[str]:
        return [str(chunk.content) async for chunk in llm.astream("tell me more")]

    with use_cassette(path, "once", record_via=record_via):
        live = [str(chunk.content) for chunk in chat().stream("tell me a story")]
        live_async = asyncio.run(achunks(chat()))
    events = Cassette.load(path).interactions[0].response.events
    assert events is not None and events[-1].data == "[DONE]"
    with use_cassette(path, "none"):
        assert [str(chunk.content) for chunk in chat().stream("tell me a story")] == live
        assert asyncio.run(achunks(chat())) == live_async
    assert len([c for c in live if c]) > 3  # really chunked, not one blob


def test_stream_is_delivered_event_by_event(tmp_path: Path, record_via: str) -> None:
    path = tmp_path / "c.json"
    with use_cassette(path, "once", record_via=record_via):
        list(chat().stream("stream me"))
    client = openai.OpenAI(base_url=OPENAI_BASE, api_key="sk-test")
    body = Cassette.load(path).interactions[0].request.body["json"]
    with (
        use_cassette(path, "none"),
        client.chat.completions.with_streaming_response.create(**body) as response,
    ):
        raw = list(response.iter_bytes())
    assert len(raw) == len(Cassette.load(path).interactions[0].response.events or ())
    assert all(chunk.startswith(b"data: ") and chunk.endswith(b"\n\n") for chunk in raw)


def test_async_invoke(tmp_path: Path, record_via: str) -> None:
    path = tmp_path / "c.json"
    with use_cassette(path, "once", record_via=record_via):
        live = asyncio.run(chat().ainvoke("async hello")).content
    with use_cassette(path, "none"):
        assert asyncio.run(chat().ainvoke("async hello")).content == live


def test_responses_api_sync_async_and_streamed(tmp_path: Path, record_via: str) -> None:
    path = tmp_path / "c.json"
    llm = chat(use_responses_api=True)

    async def astreamed() -> list[Any]:
        return [chunk.content async for chunk in llm.astream("count to three")]

    with use_cassette(path, "once", record_via=record_via):
        live = (
            llm.invoke("summarize").content,
            [c.content for c in llm.stream("count")],
            asyncio.run(astreamed()),
        )
    urls = {i.request.url for i in Cassette.load(path)}
    assert urls == {f"{OPENAI_BASE}/responses"}
    streamed = [i for i in Cassette.load(path) if i.response.streamed]
    assert (
        streamed
        and streamed[0].response.events
        and streamed[0].response.events[0].event == "response.created"
    )
    with use_cassette(path, "none"):
        replayed = (
            llm.invoke("summarize").content,
            [c.content for c in llm.stream("count")],
            asyncio.run(astreamed()),
        )
    assert replayed == live


def test_embeddings_and_legacy_completions(tmp_path: Path, record_via: str) -> None:
    path = tmp_path / "c.json"
    embeddings = OpenAIEmbeddings(
        model="text-embedding-3-small",
        base_url=OPENAI_BASE,
        api_key="sk-test",
        check_embedding_ctx_length=False,
    )
    legacy = OpenAI(model="gpt-3.5-turbo-instruct", base_url=OPENAI_BASE, api_key="sk-test", max_retries=0)
    with use_cassette(path, "once", record_via=record_via):
        live = (embeddings.embed_documents(["a", "b"]), embeddings.embed_query("c"), legacy.invoke("Say hi"))
    assert {i.request.url.rsplit("/", 1)[1] for i in Cassette.load(path)} == {"embeddings", "completions"}
    with use_cassette(path, "none"):
        assert (
            embeddings.embed_documents(["a", "b"]),
            embeddings.embed_query("c"),
            legacy.invoke("Say hi"),
        ) == live


def test_plain_httpx_clients_sync_and_async(tmp_path: Path, openai_server: OpenAIServer) -> None:
    """httpx (openai 2.x and most other SDKs), any JSON endpoint, recorded from loopback directly."""
    path = tmp_path / "c.json"
    url = f"{openai_server.base_url}/chat/completions"
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}

    async def apost() -> Any:
        async with httpx.AsyncClient() as client:
            return (await client.post(url, json=body)).json()

    with use_cassette(path, "once"):
        live = httpx.post(url, json=body).json(), asyncio.run(apost())
        missing = httpx.get(f"{openai_server.base_url}/unknown")
    assert missing.status_code == 404
    with use_cassette(path, "none"):
        assert (httpx.post(url, json=body).json(), asyncio.run(apost())) == live
        with pytest.raises(ReplayMissError):  # an error answer is passed on, not recorded
            httpx.get(f"{openai_server.base_url}/unknown")
    assert len(openai_server.requests) == 3


# ---------------------------------------------------------------------- the real API's bytes


@pytest.mark.parametrize(
    "recorded_file",
    [
        "chat-completion-0.json",
        "chat-completion-stream-0.json",
        "chat-completion-structured-0.json",
        "chat-completion-tools-0.json",
        "responses-0.json",
        "responses-stream-0.json",
        "embeddings-0.json",
        "completions-0.json",
        "completions-stream-0.json",
    ],
)
def test_real_openai_responses_replay_identically(tmp_path: Path, recorded_file: str) -> None:
    """Record what the real API sent (served from loopback), replay with the server gone:
    the client sees the same parsed objects, chunk for chunk."""
    sample = json.loads((RECORDED / recorded_file).read_text())
    body, endpoint = sample["request"]["body"], sample["endpoint"]
    client = openai.OpenAI(base_url=OPENAI_BASE, api_key="sk-test", max_retries=0)

    def call() -> Any:
        create = {
            "chat/completions": client.chat.completions.create,
            "responses": client.responses.create,
            "embeddings": client.embeddings.create,
            "completions": client.completions.create,
        }[endpoint]
        result = create(**body)
        if body.get("stream"):
            return [event.model_dump() for event in result]
        return result.model_dump()

    path = tmp_path / "c.json"
    with (
        OpenAIServer(recorded_dir=RECORDED) as server,
        use_cassette(path, "once", record_via=server.base_url.removesuffix("/v1")),
    ):
        live = call()
    with use_cassette(path, "none"):
        replayed = call()
    assert replayed == live
    if body.get("stream"):
        assert len(live) > 2


# ----------------------------------------------------------------------- secrets and files


def test_canary_key_reaches_no_file(tmp_path: Path, record_via: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", CANARY_KEY)
    monkeypatch.setenv("OPENAI_ORG_ID", "org-canary-organization")
    llm = ChatOpenAI(model="gpt-4o-mini", base_url=OPENAI_BASE, max_retries=0)
    with use_cassette(tmp_path / "c.json", "once", record_via=record_via):
        llm.invoke("hello")
        list(llm.stream("hello stream"))
    text = (tmp_path / "c.json").read_text()
    assert len(Cassette.load(tmp_path / "c.json")) == 2
    for file in tmp_path.rglob("*"):
        if file.is_file():
            assert CANARY_KEY not in file.read_text(errors="replace"), file
    assert "authorization" not in text.lower() and "org-canary" not in text


def test_secret_in_a_request_refuses_the_write(
    tmp_path: Path, record_via: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "c.json"
    record(path, record_via, "first")
    before = path.read_bytes()
    monkeypatch.setenv("MY_SERVICE_TOKEN", "tok-very-secret-value-1234")
    with (
        pytest.raises(SecretLeakError) as raised,
        use_cassette(path, "new_episodes", record_via=record_via),
    ):
        chat().invoke("my token is tok-very-secret-value-1234")
    assert "MY_SERVICE_TOKEN" in str(raised.value) and "tok-very-secret" not in str(raised.value)
    assert path.read_bytes() == before  # the previous cassette is intact


def test_placeholder_key_only_while_replaying(tmp_path: Path, record_via: str) -> None:
    path = tmp_path / "c.json"
    record(path, record_via, "hi")
    import os

    with use_cassette(path, "none"):
        assert os.environ["OPENAI_API_KEY"] == PLACEHOLDER_API_KEY
        ChatOpenAI(model="gpt-4o-mini", base_url=OPENAI_BASE).invoke("hi")  # no key needed offline
    assert "OPENAI_API_KEY" not in os.environ


# ----------------------------------------------------------------------- concurrency


def test_fifty_threads_record_once_each_and_replay_deterministically(
    tmp_path: Path, record_via: str, openai_server: OpenAIServer
) -> None:
    path = tmp_path / "c.json"
    llm = chat()
    results: dict[int, str] = {}

    def work(n: int) -> None:
        results[n] = str(llm.invoke(f"question {n}").content)

    with use_cassette(path, "once", record_via=record_via):
        threads = [threading.Thread(target=work, args=(n,)) for n in range(50)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    cassette = Cassette.load(path)
    assert len(cassette) == 50 == len(openai_server.requests)
    assert len({i.request.body["json"]["messages"][0]["content"] for i in cassette}) == 50
    live = dict(results)
    results.clear()
    with use_cassette(path, "none"):
        threads = [threading.Thread(target=work, args=(n,)) for n in reversed(range(50))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert results == live


def test_hundred_concurrent_async_calls(tmp_path: Path, record_via: str, openai_server: OpenAIServer) -> None:
    path = tmp_path / "c.json"
    llm = chat()

    async def run_all() -> list[str]:
        answers = await asyncio.gather(*(llm.ainvoke(f"q{n}") for n in range(100)))
        return [str(answer.content) for answer in answers]

    with use_cassette(path, "once", record_via=record_via):
        live = asyncio.run(run_all())
    assert len(Cassette.load(path)) == 100 == len(openai_server.requests)
    with use_cassette(path, "none"):
        assert asyncio.run(run_all()) == live


# -------------------------------------------------------------------- context and decorator


def test_decorator_sync_and_async(tmp_path: Path, record_via: str) -> None:
    path = tmp_path / "c.json"
    recorded = record(path, record_via, "hi")

    @use_cassette(path)
    def sync_call() -> str:
        assert active_session() is not None
        return str(chat().invoke("hi").content)

    @use_cassette(path)
    async def async_call() -> str:
        return str((await chat().ainvoke("hi")).content)

    assert sync_call() == recorded[0] == asyncio.run(async_call())
    assert sync_call() == recorded[0]  # reusable: a fresh session each call
    assert active_session() is None


def test_transports_are_restored(tmp_path: Path, record_via: str) -> None:
    import httpx2

    originals = (httpx.HTTPTransport.handle_request, httpx2.AsyncHTTPTransport.handle_async_request)
    record(tmp_path / "c.json", record_via, "hi")
    assert (httpx.HTTPTransport.handle_request, httpx2.AsyncHTTPTransport.handle_async_request) == originals


def test_allowed_host_passes_through_unrecorded(
    tmp_path: Path, record_via: str, openai_server: OpenAIServer
) -> None:
    path = tmp_path / "c.json"
    record(path, record_via, "hi")
    before = path.read_bytes()
    with use_cassette(path, "none", allow_hosts=["127.0.0.1"]):
        assert (
            httpx.get(f"{openai_server.base_url}/models").status_code == 404
        )  # live, answered by the server
    assert len(openai_server.requests) == 2
    assert path.read_bytes() == before


def test_nested_cassettes_each_answer_their_own_requests(tmp_path: Path, record_via: str) -> None:
    first, second = tmp_path / "first.json", tmp_path / "second.json"
    one = record(first, record_via, "one")
    two = record(second, record_via, "two")
    with use_cassette(first), use_cassette(second):
        assert chat().invoke("one").content == one[0]  # answered by the outer cassette
        assert chat().invoke("two").content == two[0]
        with pytest.raises(ReplayMissError, match=str(second)):  # a miss is the innermost's
            chat().invoke("three")


def test_two_sessions_recording_one_file_keep_both_recordings(tmp_path: Path, record_via: str) -> None:
    path = tmp_path / "c.json"
    with use_cassette(path, "new_episodes", record_via=record_via):
        chat().invoke("outer")
        with use_cassette(path, "new_episodes", record_via=record_via):
            chat().invoke("inner")
    prompts = sorted(i.request.body["json"]["messages"][0]["content"] for i in Cassette.load(path))
    assert prompts == ["inner", "outer"]


def test_miss_for_a_host_never_recorded_suggests_allowing_it(
    tmp_path: Path, record_via: str, openai_server: OpenAIServer
) -> None:
    path = tmp_path / "c.json"
    record(path, record_via, "hi")
    with use_cassette(path, "none"), pytest.raises(ReplayMissError) as raised:
        httpx.get(f"{openai_server.base_url}/models")
    assert "nothing was ever recorded for 127.0.0.1" in str(raised.value)
    assert "--allow-host 127.0.0.1" in str(raised.value)


# --------------------------------------------- a stream the client stops reading is still whole


STREAM_BODY: dict[str, Any] = {
    "model": "gpt-4o-mini",
    "stream": True,
    "messages": [{"role": "user", "content": "count one two three four five six"}],
}


def _first_chunk_then_close(client_kind: str, url: str) -> bytes:
    """Read one chunk of a live stream, then close the response, as a client that found what
    it wanted does (``break`` out of the loop, leave the ``with``)."""
    if client_kind == "httpx":
        with httpx.Client() as client, client.stream("POST", url, json=STREAM_BODY) as response:
            for chunk in response.iter_bytes():
                return chunk
    if client_kind == "httpx-async":

        async def first() -> bytes:
            async with (
                httpx.AsyncClient() as client,
                client.stream("POST", url, json=STREAM_BODY) as response,
            ):
                async for chunk in response.aiter_bytes():
                    return chunk
            raise AssertionError("empty stream")

        return asyncio.run(first())
    openai_client = openai.OpenAI(base_url=OPENAI_BASE, api_key="sk-test", max_retries=0)
    create = openai_client.chat.completions.with_streaming_response.create
    with create(**STREAM_BODY) as response:  # openai 3.x: httpx2
        for chunk in response.iter_bytes():
            return chunk
    raise AssertionError("empty stream")


@pytest.mark.parametrize("client_kind", ["httpx", "httpx-async", "openai"])
def test_a_stream_closed_after_its_first_chunk_is_recorded_whole(
    tmp_path: Path, openai_server: OpenAIServer, record_via: str, client_kind: str
) -> None:
    """Closing a live stream early drains the rest into the recording (``_TeeStream.close``):
    the cassette holds every event the server sent, and replays them all."""
    url = f"{openai_server.base_url}/chat/completions"
    whole_path, early_path = tmp_path / "whole.json", tmp_path / "early.json"
    with use_cassette(whole_path, "once"), httpx.stream("POST", url, json=STREAM_BODY) as response:
        response.read()  # the control: the same stream read to its end
    (whole,) = Cassette.load(whole_path).interactions
    assert whole.response.events is not None and len(whole.response.events) > 5
    assert whole.response.events[-1].data == "[DONE]"

    with use_cassette(early_path, "once", record_via=record_via):
        first = _first_chunk_then_close(client_kind, url)
    assert first.startswith(b"data: ")
    (early,) = Cassette.load(early_path).interactions
    assert early.response.events == whole.response.events
    recorded_url = early.request.url  # api.openai.com for the openai client (record_via)
    with use_cassette(early_path, "none"), httpx.stream("POST", recorded_url, json=STREAM_BODY) as replayed:
        assert replayed.read().count(b"data: ") == len(whole.response.events)
    assert len(openai_server.requests) == 2
