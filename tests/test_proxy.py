"""``chainkit proxy``: real proxy processes on 127.0.0.1, queried over real HTTP by the openai SDK
(in this venv, and in a clean venv without chainkit), curl and http.client. Only the OpenAI API
is faked (tests/openai_server.py), as everywhere in these tests."""

from __future__ import annotations

import http.client
import json
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest
from click.testing import CliRunner
from conftest import OPENAI_BASE, RECORDED, ROOT
from openai_server import OpenAIServer

from toolkit import Cassette, use_cassette
from toolkit.cli import cli
from toolkit.errors import ReplayMissError
from toolkit.recording_log import log_paths

CLIENT_KEY = "sk-proxy-client-0123456789abcdefghij"
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "What is MLflow?"}]}
STREAMED_CHAT = {**CHAT, "messages": [{"role": "user", "content": "Tell me a story"}], "stream": True}


@dataclass
class Proxy:
    url: str
    process: subprocess.Popen[str]
    log: Path  # its stderr

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout=20)

    def misses(self) -> int:
        return self.log.read_text().count("chainkit proxy: no recorded response")


@contextmanager
def running_proxy(tmp_path: Path, *args: str) -> Iterator[Proxy]:
    """``chainkit proxy ARGS --port 0`` in its own process, once it has printed its URL."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CHAINKIT_", "OPENAI_"))}
    log = tmp_path / f"proxy-{time.monotonic_ns()}.log"
    with log.open("w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "toolkit", "proxy", *args, "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env=env,
        )
    assert process.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        ready = selector.select(timeout=60)
    line = process.stdout.readline().strip() if ready else ""
    proxy = Proxy(line, process, log)
    try:
        assert line.startswith("http://127.0.0.1:") and line.endswith("/v1"), log.read_text()
        yield proxy
    finally:
        proxy.stop(signal.SIGKILL)


def client(base_url: str, max_retries: int = 0) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url, api_key=CLIENT_KEY, max_retries=max_retries)


def calls(oa: openai.OpenAI) -> dict[str, Any]:
    """What a user's program would do: a chat, a streamed chat, the Responses API, embeddings."""
    return {
        "chat": oa.chat.completions.create(**CHAT).model_dump(),
        "stream": [chunk.model_dump() for chunk in oa.chat.completions.create(**STREAMED_CHAT)],
        "responses": oa.responses.create(model="gpt-4o-mini", input="Say hi").model_dump(),
        "embeddings": oa.embeddings.create(model="text-embedding-3-small", input=["a", "b"]).model_dump(),
    }


def record_through_proxy(tmp_path: Path, path: Path, server: OpenAIServer, *more: str) -> dict[str, Any]:
    upstream = server.base_url.removesuffix("/v1")
    with running_proxy(tmp_path, str(path), "--record-mode", "once", "--upstream", upstream, *more) as proxy:
        live = calls(client(proxy.url))
        assert proxy.stop() == 0
    return live


# ------------------------------------------------------------------ record, then replay offline


def test_records_through_upstream_then_replays_with_it_gone(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    with OpenAIServer() as server:
        live = record_through_proxy(tmp_path, path, server)
        received = list(server.requests)
    assert len(received) == 4
    # Headers go upstream (the key, the SDK's own) but are never recorded.
    assert {r.headers["authorization"] for r in received} == {f"Bearer {CLIENT_KEY}"}
    assert all(r.headers["user-agent"].startswith("OpenAI/Python") for r in received)
    for file in tmp_path.rglob("*.json*"):
        assert CLIENT_KEY not in file.read_text(), file
    assert not log_paths(path)
    # Matched and recorded as if sent to the API: interchangeable with in-process cassettes.
    assert {i.request.url for i in Cassette.load(path)} == {
        f"{OPENAI_BASE}/chat/completions",
        f"{OPENAI_BASE}/responses",
        f"{OPENAI_BASE}/embeddings",
    }
    with running_proxy(tmp_path, str(path)) as proxy:  # the server is gone: replay only
        assert calls(client(proxy.url)) == live
    assert len(live["stream"]) > 3


def test_stream_replays_chunk_for_chunk_as_in_process(tmp_path: Path) -> None:
    """The real API's streamed bytes (chat and Responses API), recorded through the proxy:
    the proxy replays the same chunks as in-process replay of the same cassette."""
    chat_body = json.loads((RECORDED / "chat-completion-stream-0.json").read_text())["request"]["body"]
    responses_body = json.loads((RECORDED / "responses-stream-0.json").read_text())["request"]["body"]

    def streams(oa: openai.OpenAI) -> list[list[dict[str, Any]]]:
        return [
            [chunk.model_dump() for chunk in oa.chat.completions.create(**chat_body)],
            [event.model_dump() for event in oa.responses.create(**responses_body)],
        ]

    path = tmp_path / "c.json"
    with OpenAIServer(recorded_dir=RECORDED) as server:
        upstream = server.base_url.removesuffix("/v1")
        with running_proxy(tmp_path, str(path), "--record-mode", "once", "--upstream", upstream) as proxy:
            live = streams(client(proxy.url))
    with running_proxy(tmp_path, str(path)) as proxy:
        proxied = streams(client(proxy.url))
    with use_cassette(path, "none"):
        in_process = streams(client(OPENAI_BASE))
    assert proxied == in_process == live
    assert len(proxied[0]) > 3 and len(proxied[1]) > 3


# ------------------------------------------------------------------------------------ curl


@pytest.fixture
def recorded(tmp_path: Path, record_via: str) -> Path:
    """A cassette recorded in process (not through the proxy): a chat and a streamed chat."""
    path = tmp_path / "recorded.json"
    with use_cassette(path, "once", record_via=record_via):
        oa = client(OPENAI_BASE)
        oa.chat.completions.create(**CHAT)
        list(oa.chat.completions.create(**STREAMED_CHAT))
    return path


def curl(*args: str) -> bytes:
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    return subprocess.run(["curl", "-sS", *args], check=True, capture_output=True, timeout=30).stdout


def test_curl_gets_json_and_one_http_chunk_per_event(tmp_path: Path, recorded: Path) -> None:
    cassette = Cassette.load(recorded)
    with running_proxy(tmp_path, str(recorded)) as proxy:
        post = ["-H", "content-type: application/json", f"{proxy.url}/chat/completions", "-d"]
        assert json.loads(curl(*post, json.dumps(CHAT))) == cassette.interactions[0].response.body["json"]
        raw = curl("-N", "--raw", *post, json.dumps(STREAMED_CHAT))  # --raw: chunked framing kept
    chunks = []
    while True:  # HTTP/1.1 chunked encoding: size in hex, CRLF, data, CRLF; a 0 size ends it
        size, _, rest = raw.partition(b"\r\n")
        if int(size, 16) == 0:
            break
        chunks.append(rest[: int(size, 16)])
        raw = rest[int(size, 16) + 2 :]
    events = cassette.interactions[1].response.events
    assert events is not None and len(events) > 3
    assert chunks == [event.encode() for event in events]


def test_curl_miss_is_a_404_not_to_retry_with_the_miss_message(tmp_path: Path, recorded: Path) -> None:
    with running_proxy(tmp_path, str(recorded)) as proxy:
        out = curl("-i", "-H", "content-type: application/json", f"{proxy.url}/chat/completions", "-d", "{}")
    head, _, body = out.decode().partition("\r\n\r\n")
    assert head.startswith("HTTP/1.1 404")
    assert "x-should-retry: false" in head.lower()
    error = json.loads(body)["error"]
    assert error["code"] == "replay_miss" and "Closest recorded request: #0 POST" in error["message"]


# -------------------------------------------------------------------------------- a miss


def test_miss_reaches_the_openai_client_with_the_core_message(tmp_path: Path, recorded: Path) -> None:
    sent = {**CHAT, "messages": [{"role": "user", "content": "What is mlflow?"}]}
    with use_cassette(recorded, "none"), pytest.raises(ReplayMissError) as in_process:
        client(OPENAI_BASE).chat.completions.create(**sent)
    with running_proxy(tmp_path, str(recorded)) as proxy:
        with pytest.raises(openai.NotFoundError) as raised:
            client(proxy.url, max_retries=2).chat.completions.create(**sent)
        assert proxy.misses() == 1  # not retried
    assert raised.value.status_code == 404
    assert raised.value.response.headers["x-should-retry"] == "false"
    assert isinstance(raised.value.body, dict) and raised.value.body["message"] == str(in_process.value)
    assert 'messages[0].content: recorded "What is MLflow?", sent "What is mlflow?"' in str(raised.value)


# ------------------------------------------------------------------------- a real server


def test_sixteen_concurrent_clients_all_answered(tmp_path: Path, record_via: str) -> None:
    path = tmp_path / "c.json"
    prompts = [f"question {n}" for n in range(64)]

    def ask(oa: openai.OpenAI, prompt: str) -> str:
        body = {**CHAT, "messages": [{"role": "user", "content": prompt}]}
        return str(oa.chat.completions.create(**body).choices[0].message.content)

    with use_cassette(path, "once", record_via=record_via):
        recorded = {prompt: ask(client(OPENAI_BASE), prompt) for prompt in prompts}
    answers: dict[str, str] = {}
    errors: list[BaseException] = []
    with running_proxy(tmp_path, str(path)) as proxy:

        def work(worker: int) -> None:
            oa = client(proxy.url)  # one client (one connection pool) per thread, as apps do
            try:
                for prompt in prompts[worker::16]:
                    answers[prompt] = ask(oa, prompt)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(n,)) for n in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    assert not errors and answers == recorded


def test_keep_alive_serves_several_requests_on_one_connection(tmp_path: Path, recorded: Path) -> None:
    with running_proxy(tmp_path, str(recorded)) as proxy:
        host, port = proxy.url.removeprefix("http://").removesuffix("/v1").split(":")
        connection = http.client.HTTPConnection(host, int(port), timeout=10)
        sockets = []
        for _ in range(3):
            connection.request(
                "POST", "/v1/chat/completions", json.dumps(CHAT), {"content-type": "application/json"}
            )
            response = connection.getresponse()
            assert response.status == 200 and json.loads(response.read())["object"] == "chat.completion"
            sockets.append(connection.sock)
        connection.close()
    assert sockets[0] is not None and sockets == [sockets[0]] * 3


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_lets_requests_in_flight_finish_and_saves_recordings(tmp_path: Path, sig: int) -> None:
    path = tmp_path / "c.json"
    with OpenAIServer(latency=1.0) as server:
        upstream = server.base_url.removesuffix("/v1")
        with running_proxy(
            tmp_path, str(path), "--record-mode", "new_episodes", "--upstream", upstream
        ) as proxy:
            first = client(proxy.url).chat.completions.create(**CHAT)
            in_flight: list[Any] = []
            body = {**CHAT, "messages": [{"role": "user", "content": "in flight"}]}
            thread = threading.Thread(
                target=lambda: in_flight.append(client(proxy.url).chat.completions.create(**body))
            )
            thread.start()
            deadline = time.monotonic() + 10
            while len(server.requests) < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            proxy.process.send_signal(sig)  # the second request is at the server, not yet answered
            thread.join(timeout=20)
            assert proxy.process.wait(timeout=20) == 0, proxy.log.read_text()
            assert "2 recorded" in proxy.log.read_text()
    assert in_flight and in_flight[0].choices[0].message.content == "Answer to: in flight"
    prompts = [i.request.body["json"]["messages"][0]["content"] for i in Cassette.load(path)]
    assert prompts == ["What is MLflow?", "in flight"]
    assert first.choices[0].message.content == "Answer to: What is MLflow?"
    assert not log_paths(path)  # folded into the saved cassette


def test_several_cassettes_answer_and_the_last_records(tmp_path: Path, record_via: str) -> None:
    first, last = tmp_path / "first.json", tmp_path / "last.json"
    for path, prompt in ((first, "one"), (last, "two")):
        with use_cassette(path, "once", record_via=record_via):
            client(OPENAI_BASE).chat.completions.create(
                **{**CHAT, "messages": [{"role": "user", "content": prompt}]}
            )
    args = (str(first), str(last), "--record-mode", "new_episodes", "--upstream", record_via)
    with running_proxy(tmp_path, *args) as proxy:
        oa = client(proxy.url)
        for prompt in ("one", "two", "three"):
            answer = oa.chat.completions.create(**{**CHAT, "messages": [{"role": "user", "content": prompt}]})
            assert answer.choices[0].message.content == f"Answer to: {prompt}"
        assert proxy.stop() == 0
    assert len(Cassette.load(first)) == 1
    assert [i.request.body["json"]["messages"][0]["content"] for i in Cassette.load(last)] == ["two", "three"]


# ---------------------------------------------------------------------------------- usage


def test_usage_errors() -> None:
    runner = CliRunner()
    assert runner.invoke(cli, ["proxy"]).exit_code == 2  # no cassette
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = runner.invoke(cli, ["proxy", "c.json", "--port", str(port)])
    assert result.exit_code == 2
    assert f"cannot listen on 127.0.0.1:{port}" in result.output and "--port" in result.output


# ------------------------------------------------------------ a clean venv without chainkit


CLEAN_CLIENT = """
import json, sys, openai
oa = openai.OpenAI()  # OPENAI_BASE_URL and OPENAI_API_KEY from the environment (retries: 2)
out = {"stream": [c.model_dump() for c in oa.chat.completions.create(**CHAT_BODY)]}
out["chat"] = oa.chat.completions.create(**{**CHAT_BODY, "stream": False}).model_dump()
if sys.argv[1:] == ["replay"]:
    try:
        oa.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "unrecorded"}])
    except openai.NotFoundError as exc:
        out["miss"] = {"status": exc.status_code, "message": exc.body["message"]}
print(json.dumps(out))
"""


@pytest.fixture(scope="session")
def clean_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv holding openai from the package registry, and not chainkit."""
    folder = tmp_path_factory.mktemp("clean-venv")
    subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True, timeout=120)
    python = folder / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "openai"],
        check=True,
        timeout=600,
    )
    return python


@pytest.mark.slow
def test_openai_client_in_a_clean_venv_without_chainkit(tmp_path: Path, clean_python: Path) -> None:
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "OPENAI_API_KEY": CLIENT_KEY}
    probe = "import importlib.util as u; print(u.find_spec('toolkit'), u.find_spec('respx'))"
    found = subprocess.run(
        [str(clean_python), "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert found.stdout.split() == ["None", "None"], found  # no chainkit, not even its dependencies
    script = tmp_path / "client.py"
    script.write_text(CLEAN_CLIENT.replace("CHAT_BODY", repr(STREAMED_CHAT)))
    path = tmp_path / "c.json"

    def run(proxy: Proxy, *args: str) -> dict[str, Any]:
        done = subprocess.run(
            [str(clean_python), str(script), *args],
            cwd=tmp_path,
            env={**env, "OPENAI_BASE_URL": proxy.url},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        result: dict[str, Any] = json.loads(done.stdout)
        return result

    with OpenAIServer() as server:
        upstream = server.base_url.removesuffix("/v1")
        with running_proxy(tmp_path, str(path), "--record-mode", "once", "--upstream", upstream) as proxy:
            live = run(proxy)
            assert proxy.stop() == 0
    with running_proxy(tmp_path, str(path)) as proxy:
        replayed = run(proxy, "replay")
        assert proxy.misses() == 1  # the client did not retry it
    assert replayed["stream"] == live["stream"] and replayed["chat"] == live["chat"]
    assert len(replayed["stream"]) > 3
    assert replayed["miss"]["status"] == 404
    message = replayed["miss"]["message"]
    assert f"no recorded response in {path} for POST {OPENAI_BASE}/chat/completions" in message
    assert 'messages[0].content: recorded "Tell me a story", sent "unrecorded"' in message


def test_a_chain_that_calls_the_api_at_import_replays_through_the_proxy(tmp_path: Path) -> None:
    """rag embeds its corpus when its module is executed: in a process with no chainkit variable
    and no key, only OPENAI_BASE_URL pointing at the proxy, the chain loads and answers."""
    import runpy

    from toolkit import use_cassette

    rag = ROOT / "chains" / "rag.py"
    question = {"question": "How do I create a new version of a registered model?"}
    sys.path.insert(0, str(rag.parent))
    try:
        with use_cassette(ROOT / "cassettes" / "rag.json", "none"):
            expected = str(runpy.run_path(str(rag))["chain"].invoke(question))
    finally:
        sys.path.remove(str(rag.parent))
    code = (
        "import json, runpy, sys; sys.path.insert(0, sys.argv[1]); "
        "print(runpy.run_path(sys.argv[2])['chain'].invoke(json.loads(sys.argv[3])))"
    )
    with running_proxy(tmp_path, str(ROOT / "cassettes" / "rag.json")) as proxy:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CHAINKIT_", "OPENAI_"))}
        env |= {"OPENAI_BASE_URL": proxy.url, "OPENAI_API_KEY": "sk-anything"}
        done = subprocess.run(
            [sys.executable, "-c", code, str(rag.parent), str(rag), json.dumps(question)],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == expected
