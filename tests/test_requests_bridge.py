"""The requests door: requests' traffic recorded and replayed through the one replay core, with
real requests sessions against the fake OpenAI server on loopback."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import CANARY_KEY, OPENAI_BASE
from openai_server import Fault, OpenAIServer

from toolkit import Cassette, use_cassette
from toolkit.errors import NetworkBlockedError, ReplayMissError

CHAT = f"{OPENAI_BASE}/chat/completions"


def ask(prompt: str, *, stream: bool = False, session: requests.Session | None = None) -> requests.Response:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": prompt}], "stream": stream}
    sender = session or requests
    return sender.post(CHAT, json=body, headers={"Authorization": f"Bearer {CANARY_KEY}"}, stream=stream)


def test_a_json_call_records_once_and_replays_offline(
    tmp_path: Path, record_via: str, openai_server: OpenAIServer
) -> None:
    path = tmp_path / "c.json"
    with use_cassette(path, "once", record_via=record_via):
        live = ask("hello").json()
    assert len(openai_server.requests) == 1
    openai_server.stop()  # nothing to answer from now on: the cassette must
    with use_cassette(path, "none") as session, requests.Session() as client:
        replayed = ask("hello", session=client)
    assert replayed.status_code == 200 and replayed.reason == "OK"
    assert replayed.json() == live
    assert replayed.json()["choices"][0]["message"]["content"] == "Answer to: hello"
    assert session.replayed == 1
    recording = Cassette.load(path).interactions[0]
    assert recording.request.url == CHAT  # the original URL, not the server it was recorded via
    assert CANARY_KEY not in path.read_text()


def test_a_replayed_body_reads_like_a_live_one_every_way(tmp_path: Path, record_via: str) -> None:
    """A body in one piece is built without urllib3: every way requests' users read a response
    must still give the recorded bytes (whole, streamed, raw) and the recorded headers."""
    path = tmp_path / "c.json"
    with use_cassette(path, "once", record_via=record_via):
        live = ask("hello")
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}], "stream": False}
    with use_cassette(path, "none"):
        whole = ask("hello")
        streamed = requests.post(CHAT, json=body, stream=True)  # read as it comes, same request
        raw = requests.post(CHAT, json=body, stream=True).raw.read()
    assert whole.content == streamed.content == b"".join(streamed.iter_content(7)) == raw == live.content
    assert whole.headers["Content-Type"] == live.headers["content-type"]
    assert whole.encoding == live.encoding and whole.url == CHAT
    assert whole.request is not None and whole.request.url == CHAT
    streamed.close()  # closing a replayed response is harmless


def test_a_stream_records_its_events_and_replays_them_one_by_one(tmp_path: Path, record_via: str) -> None:
    path = tmp_path / "c.json"
    with use_cassette(path, "once", record_via=record_via):
        live = [line for line in ask("tell a story", stream=True).iter_lines() if line]
    recording = Cassette.load(path).interactions[0].response
    assert recording.streamed and len(recording.events or ()) == len(live) > 2
    with use_cassette(path, "none"):
        response = ask("tell a story", stream=True)
        chunks = list(response.raw.stream(2**16))
    assert [c.strip() for c in chunks] == live  # one chunk per event, as they were sent
    assert b"[DONE]" in chunks[-1]


def test_a_stream_closed_early_is_still_recorded_whole(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    with OpenAIServer(event_gap=0.05) as slow, use_cassette(path, "once", record_via=slow.base_url[:-3]):
        response = ask("tell a story", stream=True)
        first = next(response.iter_lines())
        response.close()  # the client stopped reading after one event
    assert first.startswith(b"data: ")
    events = Cassette.load(path).interactions[0].response.events or ()
    assert events[-1].data == "[DONE]"  # the whole stream, not the part that was read
    with use_cassette(path, "none"):
        assert b"[DONE]" in ask("tell a story", stream=True).content


def test_a_miss_names_the_request_and_is_not_retried(tmp_path: Path, record_via: str) -> None:
    path = tmp_path / "c.json"
    with use_cassette(path, "once", record_via=record_via):
        ask("hello")
    with use_cassette(path, "none"), pytest.raises(ReplayMissError) as raised:
        ask("goodbye")
    message = str(raised.value)
    assert f"no recorded response in {path} for POST {CHAT}" in message
    assert "goodbye" in message and "hello" in message  # the closest recording and the difference


def test_new_episodes_records_only_what_is_new(
    tmp_path: Path, record_via: str, openai_server: OpenAIServer
) -> None:
    path = tmp_path / "c.json"
    with use_cassette(path, "new_episodes", record_via=record_via):
        ask("one")
    with use_cassette(path, "new_episodes", record_via=record_via):
        ask("one")
        ask("two")
    assert len(openai_server.requests) == 2
    assert len(Cassette.load(path)) == 2


def test_an_error_answer_is_passed_on_and_not_recorded(
    tmp_path: Path, record_via: str, openai_server: OpenAIServer
) -> None:
    openai_server.add_faults([Fault(503)])
    path = tmp_path / "c.json"
    with use_cassette(path, "once", record_via=record_via, client_retries=False):
        failed = ask("hello")
        assert failed.status_code == 503 and failed.headers["x-should-retry"] == "false"
        assert ask("hello").status_code == 200
    assert [i.response.status for i in Cassette.load(path)] == [200]


class _Tracking(BaseHTTPRequestHandler):
    """A stand-in for the MLflow tracking server's REST API: answers every GET with JSON."""

    def do_GET(self) -> None:
        body = json.dumps({"path": self.path}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def tracking_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Tracking)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_the_mlflow_tracking_server_passes_untouched_and_unrecorded(
    tmp_path: Path, record_via: str, tracking_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Same host as the fake OpenAI server, another port: only the tracking server passes."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_server)
    path = tmp_path / "c.json"
    with use_cassette(path, "once", record_via=record_via):
        ask("hello")
        assert (
            requests.get(f"{tracking_server}/api/2.0/mlflow/experiments/get").json()["path"].endswith("get")
        )
    assert [i.request.url for i in Cassette.load(path)] == [CHAT]
    with use_cassette(path, "none"):
        assert requests.get(f"{tracking_server}/health").status_code == 200  # live, in mode none
        with pytest.raises(ReplayMissError):  # another port of the same host is not the server
            requests.get(f"{record_via}/health")


def test_without_a_session_requests_is_left_alone(tracking_server: str) -> None:
    assert requests.get(f"{tracking_server}/x").json() == {"path": "/x"}


def test_a_host_allowed_live_is_neither_answered_nor_recorded(tmp_path: Path, tracking_server: str) -> None:
    path = tmp_path / "c.json"
    with use_cassette(path, "none", allow_hosts=["127.0.0.1"]):
        assert requests.get(f"{tracking_server}/y").json() == {"path": "/y"}
    assert not path.exists()


def test_in_mode_none_an_unanswered_request_never_reaches_a_socket(tmp_path: Path) -> None:
    """The door answers or refuses before requests opens a connection: the refusal is the
    replay miss (naming the request), not the network guard's blocked socket."""
    with use_cassette(tmp_path / "absent.json", "none"), pytest.raises(ReplayMissError) as raised:
        requests.get("https://example.com/data.json")
    assert not isinstance(raised.value, NetworkBlockedError)
    assert "GET https://example.com/data.json" in str(raised.value)


def test_mlflow_s_usage_telemetry_is_never_recorded(
    tmp_path: Path, record_via: str, tracking_server: str
) -> None:
    """Code of mlflow.telemetry (here: a function compiled as that module) sends past the door:
    live in record modes and not kept; refused by the network guard, not the cassette, in none."""
    namespace: dict[str, Any] = {"__name__": "mlflow.telemetry.client", "requests": requests}
    exec("def send(url):\n    return requests.get(url, timeout=5).json()\n", namespace)
    path = tmp_path / "c.json"
    with use_cassette(path, "once", record_via=record_via):
        assert namespace["send"](f"{tracking_server}/telemetry") == {"path": "/telemetry"}
        ask("hello")  # the chain's call is recorded as usual
    assert [i.request.url for i in Cassette.load(path)] == [CHAT]
    with use_cassette(path, "none"), pytest.raises(NetworkBlockedError):
        namespace["send"](f"{tracking_server}/telemetry")
