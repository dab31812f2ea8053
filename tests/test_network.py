"""The network guard (toolkit/network.py) and how use_cassette installs it (toolkit/replay.py).

Nothing here reaches a non-loopback address. Requests to api.openai.com and friends must be
refused by the guard before any DNS lookup or connection; the ``tripwire`` fixture sits beneath
the guard (in place of the real resolver and connect it delegates to), records any non-loopback
host that gets past it and refuses it there, so a broken guard fails the test instead of
touching the network.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
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


@pytest.fixture(autouse=True)
def no_guard_left_behind() -> Iterator[None]:
    assert network._guards == []
    yield
    left = list(network._guards)
    for guard in reversed(left):  # keep the next tests isolated, then fail this one
        guard.__exit__(None, None, None)
    assert left == [], "a network guard was left installed"


@pytest.fixture
def tripwire(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Hosts that got past the guard to the real resolver/connect (refused there): must stay []."""
    leaked: list[str] = []
    real_getaddrinfo, real_connect, real_connect_ex = (
        network._real_getaddrinfo,
        network._real_connect,
        network._real_connect_ex,
    )

    def refuse_remote(host: Any) -> None:
        name = host.decode() if isinstance(host, bytes) else host
        if name is None or name == "localhost":
            return
        try:
            if ipaddress.ip_address(str(name).split("%")[0]).is_loopback:
                return
        except ValueError:
            pass
        leaked.append(str(name))
        raise ConnectionRefusedError(f"tripwire: {name} got past the network guard")

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        refuse_remote(host)
        return real_getaddrinfo(host, *args, **kwargs)

    def connect(self: socket.socket, address: Any) -> None:
        if self.family in (socket.AF_INET, socket.AF_INET6):
            refuse_remote(address[0])
        real_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> int:
        if self.family in (socket.AF_INET, socket.AF_INET6):
            refuse_remote(address[0])
        return real_connect_ex(self, address)

    # In place both beneath the guard (what it delegates to, and writes back into `socket` on
    # exit) and in `socket` itself, so that a guard that is not installed at all leaks nothing.
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    monkeypatch.setattr(network, "_real_getaddrinfo", getaddrinfo)
    monkeypatch.setattr(network, "_real_connect", connect)
    monkeypatch.setattr(network, "_real_connect_ex", connect_ex)
    return leaked


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
    return requests.post(url + "/v1/chat/completions", json=CHAT_BODY, timeout=5).status_code


def raw_http(port: int) -> bytes:
    """One HTTP request over a raw socket (no HTTP library): the server's status line."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        return sock.recv(64).split(b"\r\n")[0]


def guard_installed() -> bool:
    patched = socket.getaddrinfo is network._guarded_getaddrinfo
    assert patched == (socket.socket.connect is network._guarded_connect)
    assert patched == (socket.socket.connect_ex is network._guarded_connect_ex)
    return patched


# ------------------------------------------------ every client is refused, naming the host


def test_requests_is_blocked(cassette: Path, tripwire: list[str]) -> None:
    with use_cassette(cassette, "none"):
        assert_blocked(lambda: requests.get(f"https://{REMOTE}/v1/models", timeout=5), REMOTE, tripwire)


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


async def test_aiohttp_is_blocked(cassette: Path, tripwire: list[str]) -> None:
    async def fetch() -> int:
        async with aiohttp.ClientSession() as session, session.get(f"https://{REMOTE}/v1/models") as resp:
            return resp.status

    with use_cassette(cassette, "none"), pytest.raises(Exception) as excinfo:  # narrowed below
        await fetch()
    error = blocked_error(excinfo.value)
    assert error.host == REMOTE and REMOTE in str(error)
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


def test_tiktoken_download_is_blocked_and_names_the_host(
    cassette: Path, tripwire: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tiktoken.registry

    cache = tmp_path / "tiktoken-cache"
    cache.mkdir()
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(cache))
    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})  # not an encoding another test loaded
    with use_cassette(cassette, "none"):
        error = assert_blocked(
            lambda: tiktoken.get_encoding("cl100k_base"), "openaipublic.blob.core.windows.net", tripwire
        )
    assert "openaipublic.blob.core.windows.net" in str(error)
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
        assert_blocked(lambda: requests.get(f"https://{REMOTE}/", timeout=5), REMOTE, tripwire)
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
    assert socket.getaddrinfo is network._real_getaddrinfo
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
