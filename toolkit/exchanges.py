"""What each request cost a unit of work: replayed or live, which model, how many tokens.

The replay layer notes every request it answers or records; ``collect_exchanges`` gathers the
notes made in one context (a thread, an asyncio task, and what they start). ``eval`` uses it to
say, row by row, what was replayed, what went live, and the tokens and cost.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

from toolkit.cassette import Interaction, RecordedResponse


@dataclass(frozen=True)
class Exchange:
    """One request answered while exchanges were being collected: replayed or sent live."""

    replayed: bool
    url: str
    model: str
    status: int
    prompt_tokens: int = 0
    completion_tokens: int = 0


_exchanges: ContextVar[list[Exchange] | None] = ContextVar("chainkit_exchanges", default=None)


@contextmanager
def collect_exchanges() -> Iterator[list[Exchange]]:
    """Collect the exchanges made in this context (a thread, an asyncio task, and what they
    start): how ``eval`` tells, row by row, what was replayed, what went live, and the tokens."""
    exchanges: list[Exchange] = []
    token = _exchanges.set(exchanges)
    try:
        yield exchanges
    finally:
        _exchanges.reset(token)


def note_exchange(interaction: Interaction, *, replayed: bool) -> None:
    exchanges = _exchanges.get()
    if exchanges is None:
        return
    body = interaction.request.body.get("json")
    model = str(body.get("model", "")) if isinstance(body, dict) else ""
    prompt, completion = token_usage(interaction.response)
    exchanges.append(
        Exchange(replayed, interaction.request.url, model, interaction.response.status, prompt, completion)
    )


def token_usage(response: RecordedResponse) -> tuple[int, int]:
    """(prompt, completion) tokens the API reported: chat, Responses, embeddings, streamed or not."""
    candidates = [response.body.get("json")]
    if response.events:  # the usage rides on the last events (a usage chunk, response.completed)
        candidates = [event.data for event in reversed(response.events[-3:])]
    for data in candidates:
        if not isinstance(data, dict):
            continue
        usage = data.get("usage") or (data.get("response") or {}).get("usage")
        if isinstance(usage, dict):
            prompt = usage.get("prompt_tokens", usage.get("input_tokens", 0)) or 0
            completion = usage.get("completion_tokens", usage.get("output_tokens", 0)) or 0
            return int(prompt), int(completion)
    return 0, 0
