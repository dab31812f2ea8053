"""The example chains run offline from their committed cassettes, as CI runs them."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from conftest import ROOT

from toolkit.cassette import Cassette


def recorded_answer(name: str, index: int = 0) -> str:
    """The answer text in the committed cassette, to compare the chain's output with."""
    response = Cassette.load(ROOT / "cassettes" / f"{name}.json").interactions[index].response
    if response.events is not None:
        return "".join(
            choice["delta"].get("content") or ""
            for event in response.events
            if isinstance(event.data, dict)
            for choice in event.data.get("choices", [])
        )
    body = response.body["json"]
    if "choices" in body:
        return str(body["choices"][0]["message"]["content"])
    return "".join(part["text"] for item in body["output"] for part in item.get("content", []))


def test_qa(chain_runner: Callable[[str], Any]) -> None:
    answer = chain_runner("qa").invoke({"question": "What is MLflow?"})
    assert "MLflow" in answer
    assert answer == recorded_answer("qa")


def test_qa_second_question_and_batch(chain_runner: Callable[[str], Any]) -> None:
    chain = chain_runner("qa")
    answers = chain.batch([{"question": "What is a registered model?"}, {"question": "What is MLflow?"}])
    assert answers == [recorded_answer("qa", 1), recorded_answer("qa", 0)]


def test_stream_story_streams_the_recorded_chunks(chain_runner: Callable[[str], Any]) -> None:
    chunks = list(chain_runner("stream_story").stream({"topic": "a robot learning to paint"}))
    assert len(chunks) > 5
    assert "".join(chunks) == recorded_answer("stream_story")


def test_summarize_uses_the_responses_api(chain_runner: Callable[[str], Any]) -> None:
    cassette = json.loads((ROOT / "cassettes" / "summarize.json").read_text())
    assert cassette["interactions"][0]["request"]["url"] == "https://api.openai.com/v1/responses"
    text = cassette["interactions"][0]["request"]["json"]["input"][-1]["content"]
    assert chain_runner("summarize").invoke({"text": text}) == recorded_answer("summarize")
