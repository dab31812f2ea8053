"""The network guard (toolkit/network.py) and how use_cassette installs it (toolkit/replay.py).

Nothing here reaches a non-loopback address. Requests to api.openai.com and friends must be
refused by the guard before any DNS lookup or connection; the ``tripwire`` fixture is an audit
hook added after the guard's, so it sees only what the guard let through to CPython's socket
module: it records any non-loopback host that got past the guard and refuses it there, so a
broken guard fails the test instead of touching the network.

The pytest session itself may run under the plugin's session guard (pyproject allows loopback):
"installed" below means a guard beyond the ones active when the test started.
"""

from __future__ import annotations

import _socket
import asyncio
import ipaddress
import re
import socket
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import openai
import pytest
import requests
import urllib3
from openai_server import OpenAIServer

from toolkit import network
from toolkit.cassette import Cassette
from toolkit.errors import NetworkBlockedError, ReplayMissError
from toolkit.network import NetworkGuard
from toolkit.replay import use_cassette

REMOTE = "api.openai.com"
CHAT_BODY: dict[str, Any] = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello there"}]}


# ---------------------------------------------------------------------------------- fixtures


@pytest.fixture(autouse=True)
def no_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    # A proxy variable would make clients connect to the proxy, not to the host under test.
    for name in (
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
        "MLFLOW_TRACKING_URI",
        "MLFLOW_REGISTRY_URI",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "*")


_session_guards: list[NetworkGuard] = []  # guards active when the test started (the session's)


@pytest.fixture(autouse=True)
def no_guard_left_behind() -> Iterator[None]:
    _session_guards[:] = network._guards
    yield
    left = [guard for guard in network._guards if guard not in _session_guards]
    for guard in reversed(left):  # keep the next tests isolated, then fail this one
        guard.__exit__(None, None, None)
    assert left == [], "a network guard was left installed"


def _host_of(event: str, args: tuple[Any, ...]) -> Any:
    """The host a socket audit event is about (None: not network), read independently of the guard."""
    if event in ("socket.connect", "socket.sendto", "socket.sendmsg"):
        sock, address = args
        inet = sock.family in (socket.AF_INET, socket.AF_INET6)
        return address[0] if address is not None and inet else None
    if event == "socket.getnameinfo":
        return args[0][0]
    if event in ("socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyaddr"):
        return args[0]
    return None


_tripped: list[list[str]] = []  # the running test's tripwire list, while it has one


def _tripwire_hook(event: str, args: tuple[Any, ...]) -> None:
    if not _tripped or not event.startswith("socket."):
        return
    host = _host_of(event, args)
    name = host.decode() if isinstance(host, bytes) else host
    if name is None or name == "localhost":
        return
    try:
        if ipaddress.ip_address(str(name).split("%")[0]).is_loopback:
            return
    except ValueError:
        pass
    _tripped[-1].append(str(name))
    raise ConnectionRefusedError(f"tripwire: {name} got past the network guard")


@pytest.fixture(scope="session")
def _tripwire_installed() -> None:
    with NetworkGuard():  # the guard's hook first: hooks run in the order they were added
        pass
    sys.addaudithook(_tripwire_hook)


@pytest.fixture
def tripwire(_tripwire_installed: None) -> Iterator[list[str]]:
    """Hosts that got past the guard to CPython's socket module (refused there): must stay []."""
    leaked: list[str] = []
    _tripped.append(leaked)
    yield leaked
    _tripped.remove(leaked)


@pytest.fixture
def cassette(tmp_path: Path) -> Path:
    """An existing, empty cassette: what use_cassette(..., "none") needs."""
    path = tmp_path / "empty.json"
    Cassette(path=path).save()
    return path


@pytest.fixture
def server_root(openai_server: OpenAIServer) -> str:
    return openai_server.base_url.removesuffix("/v1")


@pytest.fixture
def port(openai_server: OpenAIServer) -> int:
    return int(openai_server.base_url.split(":")[2].split("/")[0])


def blocked_error(exc: BaseException) -> NetworkBlockedError:
    """The NetworkBlockedError in ``exc``'s chain (libraries may wrap it)."""
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        if isinstance(current, NetworkBlockedError):
            return current
        seen.append(current)
        current = current.__cause__ or current.__context__
    raise AssertionError(f"no NetworkBlockedError in the chain of {exc!r}")


def assert_blocked(call: Callable[[], Any], host: str, tripwire: list[str]) -> NetworkBlockedError:
    with pytest.raises(Exception) as excinfo:  # narrowed by blocked_error below
        call()
    error = blocked_error(excinfo.value)
    assert error.host == host
    assert host in str(excinfo.value) or host in str(error)
    assert "--allow-host" in str(error) and "--record-mode once" in str(error)
    assert tripwire == [], f"{tripwire} reached the real resolver/connect"
    return error


def post_chat(url: str) -> int:
    """A chat call through urllib3 itself (no door answers it, only the guard can refuse it), on a
    new connection (a pooled one would skip the connect the guard checks)."""
    with urllib3.PoolManager(retries=False) as pool:
        return int(pool.request("POST", url + "/v1/chat/completions", json=CHAT_BODY, timeout=5).status)


def raw_http(port: int) -> bytes:
    """One HTTP request over a raw socket (no HTTP library): the server's status line."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        return sock.recv(64).split(b"\r\n")[0]


def guard_installed() -> bool:
    """Whether a guard beyond the session's is active (and the socket module patched for it)."""
    assert (socket.getaddrinfo is network._guarded_getaddrinfo) == bool(network._guards)
    assert (socket.socket.connect is network._guarded_connect) == bool(network._guards)
    return network._guards[len(_session_guards) :] != []


# ------------------------------------------------ every client is refused, naming the host


def test_requests_is_answered_by_the_cassette_and_sends_nothing(cassette: Path, tripwire: list[str]) -> None:
    """requests has a door (toolkit.requests_bridge): refused as a replay miss before any socket."""
    with use_cassette(cassette, "none"), pytest.raises(ReplayMissError) as excinfo:
        requests.get(f"https://{REMOTE}/v1/models", timeout=5)
    assert f"GET https://{REMOTE}/v1/models" in str(excinfo.value)
    assert f"--allow-host {REMOTE}" in str(excinfo.value)
    assert tripwire == []


@pytest.mark.parametrize("retries", [False, None], ids=["no-retries", "default-retries"])
def test_urllib3_is_blocked(cassette: Path, tripwire: list[str], retries: Any) -> None:
    pool = urllib3.PoolManager(retries=retries) if retries is not None else urllib3.PoolManager()
    with use_cassette(cassette, "none"):
        assert_blocked(lambda: pool.request("GET", f"https://{REMOTE}/v1/models"), REMOTE, tripwire)


def test_urllib_request_is_blocked(cassette: Path, tripwire: list[str]) -> None:
    with use_cassette(cassette, "none"):
        assert_blocked(
            lambda: urllib.request.urlopen(f"https://{REMOTE}/v1/models", timeout=5), REMOTE, tripwire
        )


async def test_aiohttp_is_answered_by_the_cassette_and_sends_nothing(
    cassette: Path, tripwire: list[str]
) -> None:
    """aiohttp has a door (toolkit.aiohttp_bridge): refused as a replay miss before any socket."""

    async def fetch() -> int:
        async with aiohttp.ClientSession() as session, session.get(f"https://{REMOTE}/v1/models") as resp:
            return resp.status

    with use_cassette(cassette, "none"), pytest.raises(ReplayMissError) as excinfo:
        await fetch()
    assert f"GET https://{REMOTE}/v1/models" in str(excinfo.value)
    assert tripwire == []


@pytest.mark.parametrize("host", [REMOTE, "192.0.2.10", "2001:db8::1"])
def test_raw_socket_create_connection_is_blocked(cassette: Path, tripwire: list[str], host: str) -> None:
    with use_cassette(cassette, "none"):
        assert_blocked(lambda: socket.create_connection((host, 443), timeout=5), host, tripwire)


def test_raw_socket_connect_with_an_address_is_blocked(cassette: Path, tripwire: list[str]) -> None:
    # No getaddrinfo on this path: connect() itself must refuse, for connect_ex too.
    with use_cassette(cassette, "none"):
        for method in ("connect", "connect_ex"):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                assert_blocked(
                    lambda m=method, s=sock: getattr(s, m)(("192.0.2.10", 443)),  # type: ignore[misc]
                    "192.0.2.10",
                    tripwire,
                )


def test_a_host_name_given_to_connect_is_refused_before_any_dns_query(
    cassette: Path, tripwire: list[str]
) -> None:
    # C resolves a name in connect()'s address before it raises the audit event: offline that
    # is a gaierror, online a DNS query. The Python-level check refuses the name first.
    with use_cassette(cassette, "none"), socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        error = assert_blocked(lambda: sock.connect((REMOTE, 443)), REMOTE, tripwire)
    assert type(error) is NetworkBlockedError


def test_the_tripwire_refuses_what_the_guard_lets_through(tripwire: list[str]) -> None:
    with NetworkGuard(["192.0.2.10"]), pytest.raises(ConnectionRefusedError, match="tripwire"):
        socket.create_connection(("192.0.2.10", 443), timeout=5)
    assert tripwire == ["192.0.2.10"]
    tripwire.clear()


# ----------------------------------------------- _socket, the C module, used directly


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A TCP listener on 127.0.0.1 (see ``connected``)."""
    with socket.create_server(("127.0.0.1", 0)) as sock:
        yield sock


def connected(listener: socket.socket) -> bool:
    """Whether a connection reached ``listener`` (it stays in the backlog even once closed)."""
    listener.settimeout(0.3)
    try:
        peer, _ = listener.accept()
    except TimeoutError:
        return False
    peer.close()
    return True


@pytest.mark.parametrize("method", ["connect", "connect_ex"])
def test_underscore_socket_connect_is_blocked(cassette: Path, listener: socket.socket, method: str) -> None:
    address = listener.getsockname()
    raw = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)
    try:
        with use_cassette(cassette, "none"), pytest.raises(NetworkBlockedError) as excinfo:
            getattr(raw, method)(address)
    finally:
        raw.close()
    # Raised from the audit hook, the error reaches the caller as it is (not an OSError).
    assert type(excinfo.value) is NetworkBlockedError
    assert excinfo.value.host == "127.0.0.1" and "--allow-host 127.0.0.1" in str(excinfo.value)
    assert not connected(listener)

    # Control: allowed, the same call connects.
    raw = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)
    try:
        with use_cassette(cassette, "none", allow_hosts=["127.0.0.1"]):
            assert getattr(raw, method)(address) in (None, 0)
    finally:
        raw.close()
    assert connected(listener)


def test_underscore_socket_udp_is_blocked() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver:
        receiver.bind(("127.0.0.1", 0))
        receiver.setblocking(False)
        sender = _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM)
        try:
            with NetworkGuard():
                with pytest.raises(NetworkBlockedError):
                    sender.sendto(b"leak", receiver.getsockname())
                with pytest.raises(NetworkBlockedError):
                    sender.sendmsg([b"leak"], [], 0, receiver.getsockname())
        finally:
            sender.close()
        with pytest.raises(BlockingIOError):
            receiver.recv(16)  # nothing arrived


@pytest.mark.parametrize(
    ("call", "host"),
    [
        (lambda: _socket.getaddrinfo(REMOTE, 443), REMOTE),
        (lambda: _socket.gethostbyname(REMOTE), REMOTE),
        (lambda: _socket.gethostbyname_ex(REMOTE), REMOTE),
        (lambda: _socket.gethostbyaddr("192.0.2.10"), "192.0.2.10"),
        (lambda: _socket.getnameinfo(("192.0.2.10", 443), 0), "192.0.2.10"),
    ],
    ids=["getaddrinfo", "gethostbyname", "gethostbyname_ex", "gethostbyaddr", "getnameinfo"],
)
def test_underscore_socket_resolvers_are_blocked(
    cassette: Path, tripwire: list[str], call: Callable[[], Any], host: str
) -> None:
    with use_cassette(cassette, "none"):
        error = assert_blocked(call, host, tripwire)
    assert type(error) is NetworkBlockedError


def test_underscore_socket_unix_domain_stays_open(tmp_path: Path) -> None:
    address = str(tmp_path / "raw.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(address)
        server.listen(1)
        raw = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        try:
            with NetworkGuard():
                raw.connect(address)
                raw.send(b"ping")
        finally:
            raw.close()
        peer, _ = server.accept()
        with peer:
            assert peer.recv(4) == b"ping"


RAW_SOCKET_CHAIN = '''"""Connects to 127.0.0.1:$RAW_PORT with the C socket module, not socket.socket."""

import os

import _socket
import mlflow
from langchain_core.runnables import RunnableLambda


def call(inputs: dict) -> str:
    raw = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)
    try:
        raw.connect(("127.0.0.1", int(os.environ["RAW_PORT"])))
    finally:
        raw.close()
    return "connected"


chain = RunnableLambda(call)

mlflow.models.set_model(chain)
'''


def test_the_cli_blocks_underscore_socket_in_record_mode_none(
    tmp_path: Path, listener: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "chains").mkdir()
    (tmp_path / "chains" / "raw_socket.py").write_text(RAW_SOCKET_CHAIN)
    monkeypatch.setenv("RAW_PORT", str(listener.getsockname()[1]))
    command = [sys.executable, "-m", "toolkit", "--project", str(tmp_path), "run", "raw_socket"]
    result = subprocess.run(
        [*command, "--input", "{}", "--record-mode", "none"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 1, result.stderr
    assert "chainkit blocked a connection to 127.0.0.1" in result.stderr
    assert not connected(listener)

    # Control: the same chain in a recording mode connects.
    result = subprocess.run(
        [*command, "--input", "{}", "--record-mode", "once"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert connected(listener)


def test_child_processes_start_but_are_not_covered(cassette: Path, listener: socket.socket) -> None:
    """The guard is in-process: a child process has its own sockets (README, "What is closed")."""
    port = listener.getsockname()[1]
    child = "import socket, sys; socket.create_connection(('127.0.0.1', int(sys.argv[1])), timeout=5).close()"
    with use_cassette(cassette, "none"):
        with pytest.raises(NetworkBlockedError):
            socket.create_connection(("127.0.0.1", port), timeout=5)
        subprocess.run([sys.executable, "-c", child, str(port)], check=True, timeout=60)
    assert connected(listener)  # the child's connection, not ours


def test_tiktoken_download_is_blocked_and_names_the_host(
    cassette: Path, tripwire: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tiktoken.registry

    cache = tmp_path / "tiktoken-cache"
    cache.mkdir()
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(cache))
    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})  # not an encoding another test loaded
    # tiktoken downloads with requests: its door refuses the download as a miss naming the host.
    with use_cassette(cassette, "none"), pytest.raises(ReplayMissError) as excinfo:
        tiktoken.get_encoding("cl100k_base")
    assert "--allow-host openaipublic.blob.core.windows.net" in str(excinfo.value)
    assert tripwire == []
    assert list(cache.iterdir()) == []


def test_the_error_is_not_an_oserror() -> None:
    # HTTP libraries swallow/retry OSError; this one must reach the user as it is.
    assert not issubclass(NetworkBlockedError, OSError)


# --------------------------------------------------------------------- loopback and allowed hosts


def test_loopback_is_refused_unless_allowed(
    cassette: Path, openai_server: OpenAIServer, server_root: str, tripwire: list[str]
) -> None:
    with use_cassette(cassette, "none"):
        assert_blocked(lambda: post_chat(server_root), "127.0.0.1", tripwire)
    assert openai_server.requests == []

    with use_cassette(cassette, "none", allow_hosts=["127.0.0.1"]):
        assert post_chat(server_root) == 200
    (received,) = openai_server.requests
    assert received.body == CHAT_BODY


async def test_aiohttp_reaches_an_allowed_loopback_server(
    cassette: Path, openai_server: OpenAIServer, server_root: str
) -> None:
    async def post() -> dict[str, Any]:
        async with (
            aiohttp.ClientSession() as session,
            session.post(server_root + "/v1/chat/completions", json=CHAT_BODY) as resp,
        ):
            assert resp.status == 200
            return dict(await resp.json())

    with use_cassette(cassette, "none", allow_hosts=["127.0.0.1"]):
        answer = await post()
    assert answer["choices"][0]["message"]["content"] == "Answer to: hello there"
    assert len(openai_server.requests) == 1


def test_a_host_allowed_by_name_resolves_and_connects(
    cassette: Path, openai_server: OpenAIServer, port: int, tripwire: list[str]
) -> None:
    with use_cassette(cassette, "none", allow_hosts=["LocalHost"]):  # names compare case-insensitively
        assert socket.getaddrinfo("localhost", port)
        assert post_chat(f"http://localhost:{port}") == 200
        # Only that name: others stay closed.
        assert_blocked(lambda: socket.create_connection((REMOTE, 443), timeout=5), REMOTE, tripwire)
    assert len(openai_server.requests) == 1


def test_allowed_host_lets_the_openai_client_through_httpx(
    cassette: Path, openai_server: OpenAIServer
) -> None:
    # httpx/httpx2 traffic to an allowed host goes live instead of to the cassette.
    client = openai.OpenAI(base_url=openai_server.base_url, api_key="test", max_retries=0)
    with use_cassette(cassette, "none", allow_hosts=["127.0.0.1"]):
        reply = client.chat.completions.create(model="gpt-4o-mini", messages=CHAT_BODY["messages"])
    assert reply.choices[0].message.content == "Answer to: hello there"
    assert len(openai_server.requests) == 1
    assert Cassette.load(cassette).interactions == []  # allowed traffic is not recorded


def test_not_allowed_httpx_traffic_is_a_replay_miss_and_sends_nothing(
    cassette: Path, openai_server: OpenAIServer
) -> None:
    with use_cassette(cassette, "none"), pytest.raises(ReplayMissError, match=r"127\.0\.0\.1"):
        httpx.post(openai_server.base_url + "/chat/completions", json=CHAT_BODY)
    assert openai_server.requests == []


def test_chainkit_allow_hosts_variable_is_honoured(
    cassette: Path,
    openai_server: OpenAIServer,
    server_root: str,
    port: int,
    tripwire: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CHAINKIT_ALLOW_HOSTS", "example.invalid,127.0.0.1")
    with use_cassette(cassette, "none"):
        assert post_chat(server_root) == 200
        assert raw_http(port).startswith(b"HTTP/1.")
        assert_blocked(lambda: socket.create_connection((REMOTE, 443), timeout=5), REMOTE, tripwire)
    assert [r.path for r in openai_server.requests] == ["/v1/chat/completions", "/v1/models"]
    monkeypatch.setenv("CHAINKIT_ALLOW_HOSTS", "")
    with use_cassette(cassette, "none"):
        assert_blocked(lambda: post_chat(server_root), "127.0.0.1", tripwire)


def test_following_the_allow_host_advice_of_a_miss_works(cassette: Path, openai_server: OpenAIServer) -> None:
    url = openai_server.base_url + "/chat/completions"
    with use_cassette(cassette, "none"), pytest.raises(ReplayMissError) as excinfo:
        httpx.post(url, json=CHAT_BODY)
    advice = re.search(r"--allow-host ([^\s);]+)", str(excinfo.value))
    assert advice is not None
    with use_cassette(cassette, "none", allow_hosts=[advice.group(1)]):
        assert httpx.post(url, json=CHAT_BODY).status_code == 200


def test_a_missing_cassette_in_none_mode_still_closes_the_network(
    tmp_path: Path, openai_server: OpenAIServer, port: int, tripwire: list[str]
) -> None:
    absent = tmp_path / "absent.json"
    with use_cassette(absent, "none"):  # a block that sends nothing needs no cassette...
        assert guard_installed()  # ...but nothing leaves either
        assert_blocked(lambda: raw_http(port), "127.0.0.1", tripwire)
        assert_blocked(lambda: socket.create_connection((REMOTE, 443), timeout=5), REMOTE, tripwire)
    assert not guard_installed()
    assert not absent.exists()
    assert openai_server.requests == []


def test_chainkit_allow_hosts_with_spaces_lets_httpx_through(
    cassette: Path, openai_server: OpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHAINKIT_ALLOW_HOSTS", "example.invalid, 127.0.0.1")
    with use_cassette(cassette, "none"):
        response = httpx.post(openai_server.base_url + "/chat/completions", json=CHAT_BODY)
    assert response.status_code == 200


def test_mlflow_tracking_server_host_is_allowed(
    cassette: Path,
    openai_server: OpenAIServer,
    server_root: str,
    port: int,
    tripwire: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server_root)
    with use_cassette(cassette, "none"):
        assert post_chat(server_root) == 200
        assert_blocked(lambda: urllib3.request("GET", f"https://{REMOTE}/", retries=False), REMOTE, tripwire)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://localhost:{port}")
    with use_cassette(cassette, "none"):
        assert post_chat(f"http://localhost:{port}") == 200
    assert len(openai_server.requests) == 2


def test_mlflow_registry_host_is_allowed(
    cassette: Path, openai_server: OpenAIServer, server_root: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", server_root)
    with use_cassette(cassette, "none"):
        assert post_chat(server_root) == 200


def test_a_non_http_tracking_uri_opens_nothing(
    cassette: Path,
    openai_server: OpenAIServer,
    server_root: str,
    tripwire: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    with use_cassette(cassette, "none"):
        assert_blocked(lambda: post_chat(server_root), "127.0.0.1", tripwire)
    assert openai_server.requests == []


# ----------------------------------------------------------------- what stays open under the guard


def test_unix_domain_sockets_still_work(tmp_path: Path) -> None:
    address = str(tmp_path / "ipc.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(address)
        listener.listen(1)
        with NetworkGuard():
            assert guard_installed()
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
                client.connect(address)
                peer, _ = listener.accept()
                with peer:
                    client.sendall(b"ping")
                    assert peer.recv(4) == b"ping"
            left, right = socket.socketpair()
            with left, right:
                left.sendall(b"pair")
                assert right.recv(4) == b"pair"


def test_asyncio_event_loops_still_work(cassette: Path, tmp_path: Path) -> None:
    address = str(tmp_path / "loop.sock")

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(await reader.readline())
        await writer.drain()
        writer.close()

    async def main() -> tuple[bytes, int]:
        server = await asyncio.start_unix_server(echo, path=address)
        async with server:
            reader, writer = await asyncio.open_unix_connection(address)
            writer.write(b"hello\n")
            await writer.drain()
            line = await reader.readline()
            writer.close()
            await writer.wait_closed()
        # the default executor (threads) and call_soon_threadsafe wake-ups work too
        squared = await asyncio.get_running_loop().run_in_executor(None, lambda: 7 * 7)
        await asyncio.sleep(0)
        return line, squared

    with use_cassette(cassette, "none"):
        assert guard_installed()
        assert asyncio.run(main()) == (b"hello\n", 49)


# ------------------------------------------------------------------------ install and removal


def test_guard_is_installed_only_inside_the_block_and_removed_after(
    cassette: Path, openai_server: OpenAIServer, server_root: str, port: int
) -> None:
    original = (socket.getaddrinfo, socket.socket.connect, socket.socket.connect_ex)
    assert not guard_installed()
    with use_cassette(cassette, "none"):
        assert guard_installed()
        with pytest.raises(NetworkBlockedError):
            raw_http(port)
    assert (socket.getaddrinfo, socket.socket.connect, socket.socket.connect_ex) == original
    assert (socket.getaddrinfo is network._real_getaddrinfo) == (network._guards == [])
    assert raw_http(port).startswith(b"HTTP/1.")
    assert post_chat(server_root) == 200
    assert [r.path for r in openai_server.requests] == ["/v1/models", "/v1/chat/completions"]


def test_guard_is_removed_when_the_block_raises(cassette: Path, port: int) -> None:
    with pytest.raises(RuntimeError, match="boom"), use_cassette(cassette, "none"):
        assert guard_installed()
        raise RuntimeError("boom")
    assert not guard_installed()
    assert raw_http(port).startswith(b"HTTP/1.")


def test_guard_follows_use_cassette_as_a_decorator(cassette: Path, port: int) -> None:
    @use_cassette(cassette, "none")
    def sync_call() -> bool:
        return guard_installed()

    @use_cassette(cassette, "none")
    async def async_call() -> bool:
        await asyncio.sleep(0)
        return guard_installed()

    assert sync_call() is True
    assert not guard_installed()
    assert asyncio.run(async_call()) is True
    assert not guard_installed()
    assert raw_http(port).startswith(b"HTTP/1.")


@pytest.mark.parametrize("mode", ["once", "new_episodes", "all"])
def test_guard_is_not_installed_in_recording_modes(
    cassette: Path, port: int, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with use_cassette(cassette, mode):
        assert not guard_installed()
        assert raw_http(port).startswith(b"HTTP/1.")
    monkeypatch.setenv("CHAINKIT_RECORD_MODE", mode)
    with use_cassette(cassette):
        assert not guard_installed()
    monkeypatch.setenv("CHAINKIT_RECORD_MODE", "none")
    with use_cassette(cassette):
        assert guard_installed()


def test_guard_in_another_thread(cassette: Path, port: int) -> None:
    # The guard is process-wide: a worker thread (pyfunc.predict's pool) is covered too.
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            raw_http(port)
        except BaseException as exc:
            errors.append(exc)

    with use_cassette(cassette, "none"):
        thread = threading.Thread(target=worker)
        thread.start()
        thread.join(10)
    assert len(errors) == 1 and isinstance(errors[0], NetworkBlockedError)
    assert errors[0].host == "127.0.0.1"


# ------------------------------------------------------------------------------- nested guards


def test_nested_guards_innermost_decides_and_outer_is_restored(port: int, tripwire: list[str]) -> None:
    with NetworkGuard(["127.0.0.1"]) as outer:
        assert raw_http(port).startswith(b"HTTP/1.")
        with NetworkGuard() as inner:
            assert_blocked(lambda: raw_http(port), "127.0.0.1", tripwire)
            assert inner.blocked == ["127.0.0.1"]
        assert guard_installed()  # leaving the inner guard keeps the outer one
        assert raw_http(port).startswith(b"HTTP/1.")
        assert_blocked(lambda: socket.create_connection((REMOTE, 443), timeout=5), REMOTE, tripwire)
        assert outer.blocked == [REMOTE]
    assert not guard_installed()
    assert raw_http(port).startswith(b"HTTP/1.")


def test_nested_cassettes(cassette: Path, tmp_path: Path, port: int, tripwire: list[str]) -> None:
    with use_cassette(cassette, "none", allow_hosts=["127.0.0.1"]):
        assert raw_http(port).startswith(b"HTTP/1.")
        with use_cassette(cassette, "none"):
            assert_blocked(lambda: raw_http(port), "127.0.0.1", tripwire)
        assert raw_http(port).startswith(b"HTTP/1.")
    assert not guard_installed()

    # A recording cassette inside a `none` one does not open the network the outer one closed.
    with use_cassette(cassette, "none"):
        with use_cassette(tmp_path / "inner.json", "once"):
            assert_blocked(lambda: raw_http(port), "127.0.0.1", tripwire)
        assert guard_installed()
    assert not guard_installed()


def test_guards_exited_out_of_order_restore_the_socket_module(port: int) -> None:
    first, second = NetworkGuard(), NetworkGuard(["127.0.0.1"])
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)
    assert guard_installed()
    assert raw_http(port).startswith(b"HTTP/1.")  # `second` is the one left, and allows loopback
    second.__exit__(None, None, None)
    assert not guard_installed()


# ------------------------------------------------------------- UDP and the older resolvers


def test_udp_sendto_is_blocked() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver:
        receiver.bind(("127.0.0.1", 0))
        receiver.setblocking(False)
        with (
            NetworkGuard(),
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender,
            pytest.raises(NetworkBlockedError),
        ):
            sender.sendto(b"leak", receiver.getsockname())
        with pytest.raises(BlockingIOError):
            receiver.recv(16)  # nothing arrived


def test_gethostbyname_is_blocked() -> None:
    with NetworkGuard(), pytest.raises(NetworkBlockedError):
        socket.gethostbyname("localhost")  # /etc/hosts here: nothing leaves even if unguarded


def test_blocked_hosts_are_reported_in_order(tripwire: list[str]) -> None:
    with NetworkGuard(["127.0.0.1"]) as guard:
        for host in ("a.example.invalid", "192.0.2.7"):
            with pytest.raises(NetworkBlockedError):
                socket.create_connection((host, 80), timeout=5)
    assert guard.blocked == ["a.example.invalid", "192.0.2.7"]
    assert tripwire == []


def test_guard_allows_ipv6_and_bracketed_forms() -> None:
    guard = NetworkGuard(["[::1]", " Example.COM ", "127.0.0.1", ""])
    assert guard.allows("::1") and guard.allows("0:0:0:0:0:0:0:1")
    assert guard.allows("example.com") and guard.allows("EXAMPLE.com")
    assert guard.allows("127.0.0.1") and not guard.allows("127.0.0.2")
    assert guard.allowed == {"::1", "example.com", "127.0.0.1"}


# ------------------------------------------------- what the pytest session guard builds on


def test_a_guard_that_allows_all_opens_what_an_outer_one_closed(port: int, tripwire: list[str]) -> None:
    with NetworkGuard():
        assert_blocked(lambda: raw_http(port), "127.0.0.1", tripwire)
        with NetworkGuard(allow_all=True):
            assert raw_http(port).startswith(b"HTTP/1.")
        assert_blocked(lambda: raw_http(port), "127.0.0.1", tripwire)


def test_hosts_allowed_later_are_asked_for_at_each_refusal(port: int, tripwire: list[str]) -> None:
    tracking: list[str] = []  # e.g. the MLflow tracking server of the moment
    with NetworkGuard(also_allowed=lambda: tracking) as guard:
        assert_blocked(lambda: raw_http(port), "127.0.0.1", tripwire)
        tracking.append("localhost")
        with socket.create_connection(("localhost", port), timeout=5):  # resolved, then connected
            pass
        tracking.clear()
        # What the name resolved to was allowed through the name, and is no longer.
        assert_blocked(lambda: raw_http(port), "127.0.0.1", tripwire)
        by_name = ("localhost", port)
        assert_blocked(lambda: socket.create_connection(by_name, timeout=5), "localhost", tripwire)
    assert guard.blocked == ["127.0.0.1", "127.0.0.1", "localhost"]


# ------------------------------------------------------------------------------------- IPv6


@pytest.fixture
def listener6() -> Iterator[socket.socket]:
    """A TCP listener on ::1, the IPv6 loopback."""
    try:
        sock = socket.create_server(("::1", 0), family=socket.AF_INET6)
    except OSError as exc:  # a kernel without IPv6
        pytest.skip(f"no IPv6 loopback here: {exc}")
    with sock:
        yield sock


@pytest.mark.parametrize("method", ["connect", "connect_ex"])
@pytest.mark.parametrize("module", [socket, _socket], ids=["socket", "_socket"])
def test_an_ipv6_connection_is_refused(
    cassette: Path, listener6: socket.socket, module: Any, method: str
) -> None:
    """AF_INET6 to a listening ::1 is refused in mode none (by the Python check for socket, by
    the audit hook for _socket) and nothing reaches the listener; allowed, the same call does."""
    address = listener6.getsockname()[:2]
    sock = module.socket(socket.AF_INET6, socket.SOCK_STREAM)
    try:
        with use_cassette(cassette, "none"), pytest.raises(NetworkBlockedError) as excinfo:
            getattr(sock, method)(address)
    finally:
        sock.close()
    assert excinfo.value.host == "::1" and "--allow-host ::1" in str(excinfo.value)
    assert not connected(listener6)

    sock = module.socket(socket.AF_INET6, socket.SOCK_STREAM)
    try:
        with use_cassette(cassette, "none", allow_hosts=["::1"]):
            assert getattr(sock, method)(address) in (None, 0)
    finally:
        sock.close()
    assert connected(listener6)


def test_an_ipv4_mapped_ipv6_address_is_refused(cassette: Path, listener: socket.socket) -> None:
    """``::ffff:127.0.0.1`` on an AF_INET6 socket reaches an IPv4 listener: refused all the same."""
    mapped = ("::ffff:127.0.0.1", listener.getsockname()[1])
    with (
        use_cassette(cassette, "none"),
        socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock,
        pytest.raises(NetworkBlockedError, match=r"--allow-host ::ffff:127\.0\.0\.1"),
    ):
        sock.connect(mapped)
    assert not connected(listener)
    with (
        use_cassette(cassette, "none", allow_hosts=["::ffff:127.0.0.1"]),
        socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock,
    ):
        sock.connect(mapped)
    assert connected(listener)


def test_ipv6_udp_is_refused() -> None:
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as receiver:
        try:
            receiver.bind(("::1", 0))
        except OSError as exc:
            pytest.skip(f"no IPv6 loopback here: {exc}")
        receiver.setblocking(False)
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sender, NetworkGuard():
            with pytest.raises(NetworkBlockedError):
                sender.sendto(b"leak", receiver.getsockname())
            with pytest.raises(NetworkBlockedError):
                sender.sendmsg([b"leak"], [], 0, receiver.getsockname())
        with pytest.raises(BlockingIOError):
            receiver.recv(16)  # nothing arrived


@pytest.mark.parametrize(
    "call",
    [
        lambda: socket.getaddrinfo(REMOTE, 443, socket.AF_INET6),
        lambda: socket.create_connection((REMOTE, 443), timeout=5),
        lambda: socket.socket(socket.AF_INET6, socket.SOCK_STREAM).connect((REMOTE, 443, 0, 0)),
    ],
    ids=["getaddrinfo-AF_INET6", "create_connection", "socket-AF_INET6"],
)
def test_a_host_name_is_refused_before_it_resolves_to_ipv6(
    cassette: Path, tripwire: list[str], call: Callable[[], Any]
) -> None:
    """A name that resolves to IPv6 addresses (api.openai.com has AAAA records) is refused by
    name, before any DNS query, whatever the family asked for: the tripwire sees nothing."""
    with use_cassette(cassette, "none"):
        assert_blocked(call, REMOTE, tripwire)
