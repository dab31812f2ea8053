"""Drive the fake OpenAI server with the real openai and langchain-openai clients."""

from __future__ import annotations

import asyncio
import base64
import json
import math
import socket
import struct
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import openai
import pytest
from langchain_openai import ChatOpenAI, OpenAI, OpenAIEmbeddings
from openai.types.chat import ChatCompletionMessageParam, ChatCompletionToolParam
from openai_server import Fault, OpenAIServer
from pydantic import BaseModel

RECORDED = Path(__file__).resolve().parent / "data" / "openai-recorded"
USER: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello there world"}]


@pytest.fixture
def server() -> Iterator[OpenAIServer]:
    with OpenAIServer() as srv:
        yield srv


_clients: list[openai.OpenAI] = []


@pytest.fixture(autouse=True)
def close_clients() -> Iterator[None]:
    yield
    while _clients:
        _clients.pop().close()


def client(server: OpenAIServer, **kwargs: Any) -> openai.OpenAI:
    """A real openai client for the fake server, closed after the test."""
    _clients.append(openai.OpenAI(base_url=server.base_url, api_key="test", **kwargs))
    return _clients[-1]


def post_raw(server: OpenAIServer, path: str, body: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(
        server.base_url + path,
        json.dumps(body).encode(),
        method="POST",
        headers={"content-type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()
    except urllib.error.HTTPError as err:
        with err:
            return err.code, {k.lower(): v for k, v in err.headers.items()}, err.read()


def test_chat_completion(server: OpenAIServer) -> None:
    result = client(server).chat.completions.create(model="gpt-4o-mini", messages=USER)
    assert result.object == "chat.completion" and result.id.startswith("chatcmpl-")
    assert result.choices[0].message.content == "Answer to: hello there world"
    assert result.choices[0].finish_reason == "stop"
    assert result.usage is not None and (result.usage.prompt_tokens, result.usage.completion_tokens) == (3, 5)
    (request,) = server.requests
    assert (request.method, request.path) == ("POST", "/v1/chat/completions")
    assert request.headers["authorization"] == "Bearer test" and request.body["messages"] == USER


def test_chat_stream_concatenates_to_non_streamed_content(server: OpenAIServer) -> None:
    api = client(server)
    full = api.chat.completions.create(model="gpt-4o-mini", messages=USER).choices[0].message.content
    chunks = list(
        api.chat.completions.create(
            model="gpt-4o-mini", messages=USER, stream=True, stream_options={"include_usage": True}
        )
    )
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    deltas = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert "".join(deltas) == full and len([d for d in deltas if d]) >= 3
    assert chunks[-2].choices[0].finish_reason == "stop"
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage is not None and usage.completion_tokens == 5
    without_usage = list(api.chat.completions.create(model="gpt-4o-mini", messages=USER, stream=True))
    assert all(c.usage is None and c.choices for c in without_usage)


def test_async_client_chat_and_responses(server: OpenAIServer) -> None:
    async def run() -> tuple[str | None, str, str]:
        api = openai.AsyncOpenAI(base_url=server.base_url, api_key="test")
        chat = await api.chat.completions.create(model="gpt-4o-mini", messages=USER)
        stream = await api.chat.completions.create(model="gpt-4o-mini", messages=USER, stream=True)
        streamed = "".join([c.choices[0].delta.content or "" async for c in stream])
        response = await api.responses.create(model="gpt-4o-mini", input="async hi")
        await api.close()
        return chat.choices[0].message.content, streamed, response.output_text

    hello = "Answer to: hello there world"
    assert asyncio.run(run()) == (hello, hello, "Answer to: async hi")


class Capital(BaseModel):
    answer: str
    confidence: float


def test_responder_tools_and_json_schema() -> None:
    seen: list[str] = []

    def responder(endpoint: str, body: dict[str, Any]) -> str:
        seen.append(endpoint)
        return '{"answer":"Paris","confidence":0.99}' if "response_format" in body else "plain text"

    with OpenAIServer(responder=responder) as srv:
        api = client(srv)
        parsed = api.chat.completions.parse(model="gpt-4o", messages=USER, response_format=Capital)
        assert parsed.choices[0].message.parsed == Capital(answer="Paris", confidence=0.99)
        assert srv.requests[0].body["response_format"]["type"] == "json_schema"
        tool: ChatCompletionToolParam = {"type": "function", "function": {"name": "weather"}}
        answer = api.chat.completions.create(model="gpt-4o", messages=USER, tools=[tool]).choices[0]
        assert answer.message.content == "plain text" and answer.finish_reason == "stop"
        assert answer.message.tool_calls is None
    assert seen == ["chat/completions", "chat/completions"]


def test_failing_responder_is_a_500_not_a_hang() -> None:
    def responder(endpoint: str, body: dict[str, Any]) -> str:
        raise ValueError("boom")

    with OpenAIServer(responder=responder) as srv, pytest.raises(openai.InternalServerError, match="boom"):
        client(srv, max_retries=0, timeout=5).chat.completions.create(model="gpt-4o-mini", messages=USER)


def test_responses_non_stream_and_stream(server: OpenAIServer) -> None:
    api = client(server)
    response = api.responses.create(
        model="gpt-4o-mini", instructions="Be brief.", input=[{"role": "user", "content": "count to three"}]
    )
    assert response.object == "response" and response.status == "completed"
    assert response.id.startswith("resp_") and len(response.id) == 55
    assert response.output_text == "Answer to: count to three" and response.instructions == "Be brief."
    assert response.usage is not None and response.usage.output_tokens == 5
    events = list(api.responses.create(model="gpt-4o-mini", input="count to three", stream=True))
    types = [e.type for e in events]
    deltas = types.count("response.output_text.delta")
    assert deltas >= 3 and types == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * deltas,
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    final = events[-1].response  # type: ignore[union-attr]
    assert text == final.output_text == response.output_text


def test_embeddings_both_encodings(server: OpenAIServer) -> None:
    api = client(server)
    default = api.embeddings.create(model="text-embedding-3-small", input=["alpha", "beta"])
    assert server.requests[-1].body["encoding_format"] == "base64"  # the client's default
    floats = api.embeddings.create(
        model="text-embedding-3-small", input=["alpha", "beta"], encoding_format="float"
    )
    assert server.requests[-1].body["encoding_format"] == "float"
    vectors = [d.embedding for d in default.data]
    assert vectors == [d.embedding for d in floats.data]
    assert [len(v) for v in vectors] == [8, 8] and vectors[0] != vectors[1]
    assert all(math.isclose(sum(x * x for x in v), 1.0, rel_tol=1e-5) for v in vectors)
    again = api.embeddings.create(model="text-embedding-3-small", input="alpha", encoding_format="float")
    assert again.data[0].embedding == vectors[0]
    tokens = api.embeddings.create(model="text-embedding-3-small", input=[[1, 2, 3]], dimensions=16)
    assert len(tokens.data[0].embedding) == 16 and tokens.usage.prompt_tokens == 3


def test_embeddings_base64_wire_format(server: OpenAIServer) -> None:
    request = {"model": "m", "input": "alpha", "encoding_format": "base64"}
    status, headers, raw = post_raw(server, "/embeddings", request)
    payload = json.loads(raw)
    assert status == 200 and headers["content-type"] == "application/json" and payload["object"] == "list"
    vector = struct.unpack("<8f", base64.b64decode(payload["data"][0]["embedding"]))
    floats = client(server).embeddings.create(model="m", input="alpha", encoding_format="float")
    assert list(vector) == floats.data[0].embedding


def test_legacy_completions(server: OpenAIServer) -> None:
    api = client(server)
    result = api.completions.create(model="gpt-3.5-turbo-instruct", prompt="say hi please")
    assert result.object == "text_completion" and result.choices[0].text == "Answer to: say hi please"
    chunks = list(api.completions.create(model="gpt-3.5-turbo-instruct", prompt="say hi please", stream=True))
    assert "".join(c.choices[0].text for c in chunks) == result.choices[0].text and len(chunks) >= 4
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_langchain_chat_openai(server: OpenAIServer) -> None:
    llm = ChatOpenAI(base_url=server.base_url, api_key="test", model="gpt-4o-mini")  # type: ignore[arg-type]
    assert llm.invoke("what is up").content == "Answer to: what is up"
    pieces = [chunk.content for chunk in llm.stream("what is up")]
    assert "".join(str(p) for p in pieces) == "Answer to: what is up" and len([p for p in pieces if p]) >= 3
    assert server.requests[-1].body["stream"] is True


def test_langchain_responses_api(server: OpenAIServer) -> None:
    llm = ChatOpenAI(
        base_url=server.base_url,
        api_key="test",
        model="gpt-4o-mini",  # type: ignore[arg-type]
        use_responses_api=True,
    )
    message = llm.invoke("via responses")
    assert message.text == "Answer to: via responses"
    assert server.requests[-1].path == "/v1/responses"


def test_langchain_embeddings_and_legacy_llm(server: OpenAIServer) -> None:
    embeddings = OpenAIEmbeddings(
        base_url=server.base_url,
        api_key="test",  # type: ignore[arg-type]
        check_embedding_ctx_length=False,
    )
    documents = embeddings.embed_documents(["alpha", "beta"])
    assert [len(v) for v in documents] == [8, 8] and embeddings.embed_query("alpha") == documents[0]
    llm = OpenAI(base_url=server.base_url, api_key="test", model="gpt-3.5-turbo-instruct")  # type: ignore[arg-type]
    assert llm.invoke("legacy prompt") == "Answer to: legacy prompt"
    assert server.requests[-1].path == "/v1/completions"


def test_rate_limit_fault_is_retried() -> None:
    with OpenAIServer(faults=[Fault(429, retry_after=0)]) as srv:
        result = client(srv).chat.completions.create(model="gpt-4o-mini", messages=USER)
        assert result.choices[0].message.content == "Answer to: hello there world"
        assert [r.headers["x-stainless-retry-count"] for r in srv.requests] == ["0", "1"]


def test_server_error_fault_without_retries() -> None:
    with OpenAIServer(faults=[Fault(500)]) as srv:
        with pytest.raises(openai.InternalServerError) as info:
            client(srv, max_retries=0).chat.completions.create(model="gpt-4o-mini", messages=USER)
        assert info.value.status_code == 500 and info.value.type == "server_error"
        assert len(srv.requests) == 1
        assert client(srv, max_retries=0).chat.completions.create(model="gpt-4o-mini", messages=USER).choices


def test_fault_wire_format_and_order() -> None:
    custom = {"error": {"message": "bad", "type": "x", "code": "y"}}
    faults = [Fault(429, retry_after=1.5), Fault(400, body=custom)]
    with OpenAIServer(faults=faults) as srv:
        status, headers, raw = post_raw(srv, "/chat/completions", {"model": "m", "messages": USER})
        assert (status, headers["retry-after"], headers["content-type"]) == (429, "1.5", "application/json")
        assert json.loads(raw)["error"]["code"] == "rate_limit_exceeded"
        status, headers, raw = post_raw(srv, "/chat/completions", {"model": "m", "messages": USER})
        assert (status, "retry-after" in headers, json.loads(raw)["error"]["message"]) == (400, False, "bad")
        status, headers, _ = post_raw(srv, "/chat/completions", {"model": "m", "messages": USER})
        assert status == 200 and headers["x-request-id"].startswith("req_")
        assert headers["x-ratelimit-limit-requests"] == "10000" and headers["openai-version"] == "2020-10-01"


def test_unknown_endpoint_is_404(server: OpenAIServer) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client(server).models.list()
    assert info.value.status_code == 404
    status, _, raw = post_raw(server, "/nope", {})
    assert status == 404 and json.loads(raw)["error"]["message"] == "Invalid URL (POST /v1/nope)"


def test_latency() -> None:
    with OpenAIServer(latency=0.2) as srv:
        start = time.perf_counter()
        client(srv).chat.completions.create(model="gpt-4o-mini", messages=USER)
        assert time.perf_counter() - start >= 0.2


def test_concurrent_requests_are_all_recorded(server: OpenAIServer) -> None:
    api = client(server)
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda i: api.embeddings.create(model="m", input=f"text {i}"), range(24)))
    assert len(answers) == 24 and len(server.requests) == 24
    assert sorted(r.body["input"] for r in server.requests) == sorted(f"text {i}" for i in range(24))


def test_stream_sends_one_http_chunk_per_event(server: OpenAIServer) -> None:
    body = json.dumps({"model": "m", "messages": USER, "stream": True}).encode()
    port = int(server.base_url.split(":")[2].split("/")[0])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        raw = b""
        while not raw.endswith(b"\r\n0\r\n\r\n"):
            received = sock.recv(65536)
            assert received, "connection closed before the last chunk"
            raw += received
    head, _, rest = raw.partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head.lower() and b"text/event-stream; charset=utf-8" in head
    events = []
    while rest:
        size, _, rest = rest.partition(b"\r\n")
        events.append(rest[: int(size, 16)])
        rest = rest[int(size, 16) + 2 :]
    assert events[-1] == b"" and events[-2] == b"data: [DONE]\n\n"
    assert all(e.startswith(b"data: ") and e.endswith(b"\n\n") and e.count(b"\n\n") == 1 for e in events[:-1])


def test_stop_is_prompt_with_idle_keep_alive_connection() -> None:
    srv = OpenAIServer().start()
    api = client(srv)
    api.chat.completions.create(model="gpt-4o-mini", messages=USER)  # leaves a pooled keep-alive connection
    start = time.perf_counter()
    srv.stop()
    assert time.perf_counter() - start < 1.0
    with pytest.raises(openai.APIConnectionError):
        api.with_options(max_retries=0).chat.completions.create(model="gpt-4o-mini", messages=USER)


def recorded(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((RECORDED / name).read_text())
    return data


def test_recorded_chat_completion_is_served_verbatim() -> None:
    pair = recorded("chat-completion-0.json")
    with OpenAIServer(recorded_dir=RECORDED) as srv:
        raw = client(srv).chat.completions.with_raw_response.create(**pair["request"]["body"])
        assert raw.http_response.content == pair["response"]["body"].encode()
        assert raw.headers["content-type"] == pair["response"]["headers"]["content-type"]
        recorded_message = json.loads(pair["response"]["body"])["choices"][0]["message"]
        assert raw.parse().choices[0].message.content == recorded_message["content"]
        structured = recorded("chat-completion-structured-0.json")
        exact = client(srv).chat.completions.create(**structured["request"]["body"])
        assert exact.id == json.loads(structured["response"]["body"])["id"]
        # no recording of this request: the first (by file name) with the same endpoint and stream flag
        other = client(srv).chat.completions.create(model="gpt-4o", messages=USER)
        assert other.id == json.loads(pair["response"]["body"])["id"]


def test_recorded_chat_stream_is_served_verbatim() -> None:
    pair = recorded("chat-completion-stream-0.json")
    body = pair["response"]["body"]
    events = [json.loads(line[6:]) for line in body.split("\n\n") if line.startswith("data: {")]
    expected = "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"])
    with OpenAIServer(recorded_dir=RECORDED) as srv:
        api = client(srv)
        with api.chat.completions.with_streaming_response.create(**pair["request"]["body"]) as response:
            assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
            assert b"".join(response.iter_bytes()) == body.encode()
        chunks = list(api.chat.completions.create(**{**pair["request"]["body"], "model": "other"}))
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected
        assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 305
