"""The aiohttp door: aiohttp's traffic recorded and replayed through the one replay core, with
real aiohttp sessions against the fake OpenAI server on loopback."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import CANARY_KEY, OPENAI_BASE
from openai_server import OpenAIServer

from toolkit import Cassette, use_cassette
from toolkit.errors import ReplayMissError

CHAT = f"{OPENAI_BASE}/chat/completions"


def _body(prompt: str, stream: bool) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": prompt}], "stream": stream}


async def ask(prompt: str) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {CANARY_KEY}"}
    async with (
        aiohttp.ClientSession(headers=headers) as client,
        client.post(CHAT, json=_body(prompt, False)) as r,
    ):
        return r.status, await r.json()


async def ask_streamed(prompt: str, *, lines: int | None = None) -> list[bytes]:
    """The stream's non-empty lines, as they arrive; only the first ``lines`` if given."""
    read: list[bytes] = []
    async with aiohttp.ClientSession() as client, client.post(CHAT, json=_body(prompt, True)) as response:
        async for line in response.content:
            if line.strip():
                read.append(line.strip())
            if lines is not None and len(read) == lines:
                break
    return read


def test_a_json_call_records_once_and_replays_offline(
    tmp_path: Path, record_via: str, openai_server: OpenAIServer
) -> None:
    path = tmp_path / "c.json"
    with use_cassette(path, "once", record_via=record_via):
        status, live = asyncio.run(ask("hello"))
    assert status == 200 and len(openai_server.requests) == 1
    openai_server.stop()
    with use_cassette(path, "none") as session:
        assert asyncio.run(ask("hello")) == (200, live)
    assert live["choices"][0]["message"]["content"] == "Answer to: hello"
    assert session.replayed == 1
    assert Cassette.load(path).interactions[0].request.url == CHAT
    assert CANARY_KEY not in path.read_text()


def test_a_stream_passes_through_records_its_events_and_replays(tmp_path: Path, record_via: str) -> None:
    path = tmp_path / "c.json"
    with use_cassette(path, "once", record_via=record_via):
        live = asyncio.run(ask_streamed("tell a story"))
    assert live[-1] == b"data: [DONE]" and len(live) > 2
    recording = Cassette.load(path).interactions[0].response
    assert len(recording.events or ()) == len(live)
    with use_cassette(path, "none"):
        assert asyncio.run(ask_streamed("tell a story")) == live


def test_a_stream_left_early_is_still_recorded_whole(tmp_path: Path) -> None:
    """The events still on their way when the client leaves are waited for and recorded."""
    path = tmp_path / "c.json"
    with OpenAIServer(event_gap=0.05) as slow, use_cassette(path, "once", record_via=slow.base_url[:-3]):
        first = asyncio.run(ask_streamed("tell a story", lines=1))
    assert len(first) == 1
    events = Cassette.load(path).interactions[0].response.events or ()
    assert events[-1].data == "[DONE]"
    with use_cassette(path, "none"):
        assert asyncio.run(ask_streamed("tell a story"))[-1] == b"data: [DONE]"


def test_a_miss_names_the_request(tmp_path: Path, record_via: str) -> None:
    path = tmp_path / "c.json"
    with use_cassette(path, "once", record_via=record_via):
        asyncio.run(ask("hello"))
    with use_cassette(path, "none"), pytest.raises(ReplayMissError) as raised:
        asyncio.run(ask("goodbye"))
    assert f"no recorded response in {path} for POST {CHAT}" in str(raised.value)
    assert "goodbye" in str(raised.value)


def test_identical_calls_replay_in_recorded_order_at_any_concurrency(tmp_path: Path, record_via: str) -> None:
    """n-th identical call -> n-th recording, then the last repeats; concurrent calls each
    get one recording (none twice while others are left)."""
    path = tmp_path / "c.json"
    with use_cassette(path, "new_episodes", record_via=record_via):
        asyncio.run(ask("same"))
        asyncio.run(ask("same"))
    assert len(Cassette.load(path)) == 2

    async def four() -> list[tuple[int, Any]]:
        return list(await asyncio.gather(*(ask("same") for _ in range(4))))

    with use_cassette(path, "none") as session:
        assert [status for status, _ in asyncio.run(four())] == [200] * 4
    assert session.replayed == 4 and session.used == {0, 1}


def test_without_a_session_aiohttp_is_left_alone(openai_server: OpenAIServer) -> None:
    async def direct() -> int:
        url = f"{openai_server.base_url}/chat/completions"
        async with aiohttp.ClientSession() as client, client.post(url, json=_body("x", False)) as r:
            return r.status

    assert asyncio.run(direct()) == 200
    assert len(openai_server.requests) == 1


def test_mlflow_gateway_providers_record_and_replay(tmp_path: Path, record_via: str) -> None:
    """MLflow's gateway providers send with aiohttp (``send_request``, with its SSRF-guarded
    connector): the call is recorded once and replayed offline."""
    from mlflow.gateway.providers.utils import send_request

    headers = {"Authorization": f"Bearer {CANARY_KEY}"}

    def call() -> Any:
        return asyncio.run(send_request(headers, OPENAI_BASE, "chat/completions", _body("gateway", False)))

    path = tmp_path / "c.json"
    with use_cassette(path, "once", record_via=record_via):
        live = call()
    with use_cassette(path, "none") as session:
        assert call() == live
    assert live["choices"][0]["message"]["content"] == "Answer to: gateway"
    assert session.replayed == 1
    assert CANARY_KEY not in path.read_text()
