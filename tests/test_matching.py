"""Request keys, the n-th-call index, and the explanation of a miss."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import httpx
import httpx2
import pytest

from toolkit import use_cassette
from toolkit.cassette import Interaction, RecordedRequest, RecordedResponse
from toolkit.errors import ReplayMissError
from toolkit.matching import InteractionIndex, closest, describe_miss, json_differences, request_key
from toolkit.session import CassetteSession

URL = "https://api.openai.com/v1/chat/completions"


def req(body: object, url: str = URL, method: str = "POST") -> RecordedRequest:
    return RecordedRequest(method, url, {"json": body})


def test_key_is_canonical_in_json_key_order_and_query_order() -> None:
    assert request_key(req({"a": 1, "b": [1, {"y": 2, "x": 1}]})) == request_key(
        req({"b": [1, {"x": 1, "y": 2}], "a": 1})
    )
    assert request_key(req({}, url=URL + "?b=2&a=1")) == request_key(req({}, url=URL + "?a=1&b=2"))


def test_key_distinguishes_method_host_path_query_and_body() -> None:
    base = request_key(req({"a": 1}))
    assert base != request_key(req({"a": 2}))
    assert base != request_key(req({"a": 1}, method="PUT"))
    assert base != request_key(req({"a": 1}, url="https://other.example/v1/chat/completions"))
    assert base != request_key(req({"a": 1}, url="https://api.openai.com/v1/responses"))
    assert base != request_key(req({"a": 1}, url=URL + "?x=1"))
    assert request_key(req({"a": 1}, url=URL.replace("api.openai.com", "API.OPENAI.COM"))) == base


def test_nth_call_gets_nth_recording_then_the_last_repeats() -> None:
    response = RecordedResponse(200)
    items = [
        Interaction(req({"q": 1}), response),
        Interaction(req({"q": 2}), response),
        Interaction(req({"q": 1}), response),
    ]
    index = InteractionIndex(items)
    key = request_key(req({"q": 1}))
    assert [index.take(key) for _ in range(4)] == [0, 2, 2, 2]
    assert index.take(request_key(req({"q": 3}))) is None


def test_index_is_thread_safe() -> None:
    items = [Interaction(req({"q": 1}), RecordedResponse(200)) for _ in range(1000)]
    index = InteractionIndex(items)
    key = request_key(req({"q": 1}))
    taken: list[int | None] = []

    def work() -> None:
        for _ in range(100):
            taken.append(index.take(key))

    threads = [threading.Thread(target=work) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(taken) == list(range(1000))  # every recording handed out exactly once


def test_json_differences_are_field_level() -> None:
    recorded = {"model": "a", "messages": [{"role": "user", "content": "x"}], "temperature": 0}
    sent = {
        "model": "a",
        "messages": [{"role": "user", "content": "y"}, {"role": "user", "content": "z"}],
        "top_p": 1,
    }
    found = [str(d) for d in json_differences(recorded, sent)]
    assert found == [
        'messages[0].content: recorded "x", sent "y"',
        'messages[1]: recorded (absent), sent {"role": "user", "content": "z"}',
        "temperature: recorded 0, sent (absent)",
        "top_p: recorded (absent), sent 1",
    ]
    assert json_differences({"a": 1}, {"a": True}) != []  # 1 == True in Python, not in JSON


def test_closest_prefers_same_endpoint_and_fewest_differences() -> None:
    recorded = [
        req({"model": "a", "q": "x"}, url="https://api.openai.com/v1/embeddings"),
        req({"model": "b", "q": "other"}),
        req({"model": "a", "q": "other"}),
    ]
    position, differences = closest(req({"model": "a", "q": "x"}), recorded) or (None, [])
    assert position == 2
    assert [d.path for d in differences] == ["q"]


def test_describe_miss() -> None:
    text = describe_miss(req({"q": "sent"}), [req({"q": "recorded"})])
    assert text.splitlines() == [
        f"Closest recorded request: #0 POST {URL}, which differs in:",
        '  q: recorded "recorded", sent "sent"',
    ]
    assert describe_miss(req({}), []) == "The cassette holds no interactions."
    many = describe_miss(req({f"k{n}": n for n in range(20)}), [req({})], limit=3)
    assert "... and 17 more fields" in many


def test_identical_requests_replay_in_their_scope_order_then_fall_back() -> None:
    from toolkit.matching import replay_scope

    def answer(scope: str | None) -> Interaction:
        request = RecordedRequest("POST", "https://api.openai.com/v1/chat/completions", {"json": {"q": 1}})
        return Interaction(request, RecordedResponse(200), scope)

    index = InteractionIndex([answer("row-a"), answer("row-b"), answer("row-a"), answer(None)])
    key = request_key(answer(None).request)
    with replay_scope("row-b"):
        assert [index.take(key), index.take(key)] == [1, 1]  # its own, then its last repeats
    with replay_scope("row-a"):
        assert [index.take(key), index.take(key)] == [0, 2]
    with replay_scope("row-a"):  # a retried row starts again from its first recording
        assert index.take(key) == 0
    with replay_scope("unknown"):
        assert index.take(key) == 0  # no recording of its own: the shared order
    assert [index.take(key), index.take(key)] == [1, 2]


def test_a_late_change_in_a_long_string_shows_around_the_first_difference() -> None:
    preamble = "You are a careful assistant. Read the text below and answer in plain words. " * 2
    recorded = preamble + "Summarize the following text in two short sentences."
    sent = preamble + "Summarize the following text in two short sentences!"
    line = describe_miss(req({"q": sent}), [req({"q": recorded})]).splitlines()[1]
    assert line == (
        '  q: recorded ...ng text in two short sentences.", sent ...ng text in two short sentences!"'
    )
    # Early differences and short values read as before: whole, or cut at the end.
    early = json_differences({"q": "A" + recorded}, {"q": "B" + recorded})[0]
    assert str(early).startswith('q: recorded "AYou are') and str(early).count('..."') == 0
    assert str(early).endswith("...")


def test_closest_counts_a_missing_subtree_by_its_size() -> None:
    """A tool loop: the second turn sent differs from the recorded second turn in a few fields;
    the recorded first turn lacks two whole messages. The second turn is the closest."""
    system = {"role": "system", "content": "You answer with the weather tool."}
    user = {"role": "user", "content": "Weather in Paris and Rome?"}

    def call(n: int, city: str) -> dict[str, object]:
        return {"id": f"call_{n}", "type": "function", "function": {"name": "weather", "arguments": city}}

    def turn2(ids: tuple[int, int], answer: str) -> dict[str, object]:
        calls = [call(ids[0], '{"city":"Paris"}'), call(ids[1], '{"city":"Rome"}')]
        return {
            "model": "gpt-4o-mini",
            "messages": [
                system,
                user,
                {"role": "assistant", "content": None, "tool_calls": calls},
                {"role": "tool", "tool_call_id": f"call_{ids[0]}", "content": answer},
                {"role": "tool", "tool_call_id": f"call_{ids[1]}", "content": answer},
            ],
        }

    turn1 = {"model": "gpt-4o-mini", "messages": [system, user]}
    recorded = [req(turn1), req(turn2((1, 2), "sunny"))]
    sent = req(turn2((7, 8), "rainy"))
    position, differences = closest(sent, recorded) or (None, [])
    assert len(json_differences(turn1, sent.body["json"])) == 3  # three whole messages missing
    assert len(differences) == 6  # ids, tool_call_ids and answers
    assert position == 1
    assert describe_miss(sent, recorded).startswith(f"Closest recorded request: #1 POST {URL}")


# ------------------------------------------------------------- the session's respx routing


def _cassette(path: Path, *urls: str) -> Path:
    interactions = [
        {
            "request": {"method": "POST", "url": url, "json": {"n": n}},
            "response": {
                "status": 200,
                "headers": {"content-type": "application/json", "x-n": str(n)},
                "json": {"n": n},
            },
        }
        for n, url in enumerate(urls)
    ]
    path.write_text(json.dumps({"chainkit_cassette": 1, "interactions": interactions}))
    return path


def test_a_recorded_percent_encoded_path_is_routed_to_its_recording(tmp_path: Path) -> None:
    # respx's own path pattern compared the decoded path with a re-encoded value: a recorded
    # "%20" fell to the catch-all route and missed, though the cassette held the request.
    url = "https://api.example.com/v1/files/a%20b/content"
    session = CassetteSession(_cassette(tmp_path / "c.json", url, URL), "none")
    for n, sent in enumerate([url, URL]):
        found = session.lookup(httpx.Request("POST", sent, content=json.dumps({"n": n}).encode()))
        assert isinstance(found, httpx.Response)
        assert (found.read(), found.headers["x-n"]) == (
            json.dumps({"n": n}, separators=(",", ":")).encode(),
            str(n),
        )


def test_respx_routes_each_endpoint_and_sends_the_rest_to_the_miss(tmp_path: Path) -> None:
    session = CassetteSession(
        _cassette(tmp_path / "c.json", URL, "https://api.example.com/v1/embeddings"), "none"
    )
    request = httpx.Request("POST", "https://api.example.com/v1/embeddings", content=b'{"n": 1}')
    found = session.lookup(request)
    assert isinstance(found, httpx.Response) and found.request is request  # no copy made by respx
    assert [route.call_count for route in session.router.routes] == [0, 0, 0]  # calls not kept
    with pytest.raises(
        ReplayMissError, match=r"no recorded response .* for POST https://api\.example\.com/v1/other"
    ):
        session.lookup(httpx.Request("POST", "https://api.example.com/v1/other", content=b'{"n": 1}'))


def test_replayed_bytes_are_built_per_call_not_kept_per_recording(tmp_path: Path) -> None:
    # A cache of answers made calls on a small cassette (whose recordings repeat) cheaper than
    # on a large one, and grew with the job: the cost per call must not depend on the size.
    session = CassetteSession(_cassette(tmp_path / "c.json", URL), "none")
    first = session.lookup(httpx.Request("POST", URL, content=b'{"n": 0}'))
    second = session.lookup(httpx.Request("POST", URL, content=b'{"n": 0}'))
    assert isinstance(first, httpx.Response) and isinstance(second, httpx.Response)
    assert first.read() == second.read() == b'{"n":0}'
    assert first.stream.chunks is not second.stream.chunks  # type: ignore[attr-defined]
    assert not [name for name, value in vars(session).items() if isinstance(value, dict) and value]


def test_an_httpx2_request_is_answered_with_the_recorded_status_headers_and_body(tmp_path: Path) -> None:
    path = _cassette(tmp_path / "c.json", URL + "?b=2&a=1")
    with use_cassette(path, "none"), httpx2.Client() as client:
        response = client.post(URL + "?a=1&b=2", content=b'{"n":0}')
    assert (response.status_code, response.json()) == (200, {"n": 0})
    assert dict(response.headers) == {"content-type": "application/json", "x-n": "0"}
