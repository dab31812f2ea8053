"""Request keys, the n-th-call index, and the explanation of a miss."""

from __future__ import annotations

import threading

from toolkit.cassette import Interaction, RecordedRequest, RecordedResponse
from toolkit.matching import InteractionIndex, closest, describe_miss, json_differences, request_key

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
