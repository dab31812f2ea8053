"""Per-context accounting of the requests the replay layer answers: replayed or live, tokens."""

from __future__ import annotations

import asyncio

from conftest import ROOT

from toolkit.cassette import Event, RecordedResponse
from toolkit.exchanges import collect_exchanges, token_usage
from toolkit.project import Project
from toolkit.runner import chain_under_cassette


def test_token_usage_from_every_response_shape() -> None:
    chat = RecordedResponse(200, body={"json": {"usage": {"prompt_tokens": 7, "completion_tokens": 3}}})
    responses = RecordedResponse(200, body={"json": {"usage": {"input_tokens": 5, "output_tokens": 2}}})
    embeddings = RecordedResponse(200, body={"json": {"usage": {"prompt_tokens": 4, "total_tokens": 4}}})
    stream = RecordedResponse(
        200,
        events=(
            Event({"choices": []}),
            Event({"usage": {"prompt_tokens": 9, "completion_tokens": 1}}),
            Event("[DONE]"),
        ),
    )
    completed = RecordedResponse(
        200,
        events=(
            Event(
                {"type": "response.completed", "response": {"usage": {"input_tokens": 6, "output_tokens": 8}}}
            ),
        ),
    )
    assert [token_usage(r) for r in (chat, responses, embeddings, stream, completed)] == [
        (7, 3),
        (5, 2),
        (4, 0),
        (9, 1),
        (6, 8),
    ]
    assert token_usage(RecordedResponse(500, body={"text": "oops"})) == (0, 0)


def test_exchanges_are_collected_per_context() -> None:
    with chain_under_cassette(Project.at(ROOT), "rag") as (spec, chain, _session):
        with collect_exchanges() as outside:
            pass

        async def row(question: str) -> list:
            with collect_exchanges() as made:
                await chain.ainvoke({"question": question})
            return made

        async def both() -> list:
            return await asyncio.gather(
                row(spec.input_example["question"]), row("What does a signature describe?")
            )

        first, second = asyncio.run(both())
    assert outside == []
    for made in (first, second):  # each row sees its own embedding and chat calls, no other row's
        assert [e.url.rsplit("/", 1)[1] for e in made] == ["embeddings", "completions"]
        assert (
            all(e.replayed for e in made) and made[1].model == "gpt-4o-mini" and made[1].completion_tokens > 0
        )
