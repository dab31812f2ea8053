"""Recordings survive kill -9: the durable log beside the cassette, folded in on the next open."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest
from openai_server import Fault, OpenAIServer

from toolkit import Cassette, use_cassette
from toolkit.cassette import Interaction, RecordedRequest, RecordedResponse
from toolkit.errors import CassetteError, SecretLeakError
from toolkit.recording_log import RecordingLog, log_paths, merge, open_cassette, read_log


def _body(n: int) -> dict[str, object]:
    return {"model": "m", "messages": [{"role": "user", "content": f"question {n}"}]}


RECORD_THEN_DIE = textwrap.dedent(
    """
    import os, signal, sys, httpx
    from toolkit import use_cassette
    path, url, calls, mode = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    with use_cassette(path, mode):
        for n in range(calls):
            httpx.post(url, json={"model": "m", "messages": [{"role": "user", "content": f"question {n}"}]})
        os.kill(os.getpid(), signal.SIGKILL)  # no close, no atexit: the worst moment
    """
)


def _record_then_die(path: Path, server: OpenAIServer, calls: int, mode: str = "new_episodes") -> None:
    url = f"{server.base_url}/chat/completions"
    done = subprocess.run(
        [sys.executable, "-c", RECORD_THEN_DIE, str(path), url, str(calls), mode], timeout=60
    )
    assert done.returncode == -signal.SIGKILL


def test_recordings_of_a_killed_process_replay_offline(tmp_path: Path, openai_server: OpenAIServer) -> None:
    path = tmp_path / "c.json"
    _record_then_die(path, openai_server, 5)
    assert not path.exists()  # the cassette itself was never written: only the log
    assert len(log_paths(path)) == 1
    url = f"{openai_server.base_url}/chat/completions"
    with use_cassette(path, "none") as session:
        answers = [httpx.post(url, json=_body(n)).json() for n in range(5)]
    assert session.recovered == 5
    assert len(openai_server.requests) == 5  # every answer came from the recordings
    assert [a["choices"][0]["message"]["content"] for a in answers] == [
        json.loads(json.dumps(i.response.body["json"]))["choices"][0]["message"]["content"]
        for i in Cassette.load(path)
    ]
    assert log_paths(path) == []  # folded into the cassette and deleted


def test_two_kills_in_a_row_lose_nothing_and_keep_order(tmp_path: Path, openai_server: OpenAIServer) -> None:
    path = tmp_path / "c.json"
    _record_then_die(path, openai_server, 3)
    _record_then_die(path, openai_server, 6)  # the first log is folded in when this one opens
    cassette, recovered = open_cassette(path)
    assert recovered == 3
    prompts = [i.request.body["json"]["messages"][0]["content"] for i in cassette]
    assert prompts == [f"question {n}" for n in (0, 1, 2, 3, 4, 5)]  # 0-2 replayed the second time


def test_a_killed_record_mode_all_session_still_replaces(tmp_path: Path, openai_server: OpenAIServer) -> None:
    path = tmp_path / "c.json"
    with use_cassette(path, "once"):
        httpx.post(f"{openai_server.base_url}/chat/completions", json=_body(0))
    _record_then_die(path, openai_server, 2, mode="all")
    cassette, _ = open_cassette(path)
    prompts = [i.request.body["json"]["messages"][0]["content"] for i in cassette]
    assert prompts == ["question 0", "question 1"]  # question 0 re-recorded, not twice


def test_a_live_session_log_is_not_taken_from_it(tmp_path: Path, openai_server: OpenAIServer) -> None:
    path = tmp_path / "c.json"
    holder = textwrap.dedent(
        """
        import sys, httpx
        from toolkit import use_cassette
        with use_cassette(sys.argv[1], "new_episodes"):
            httpx.post(sys.argv[2], json={"model": "m", "messages": []})
            print("recorded", flush=True)
            sys.stdin.readline()
        """
    )
    url = f"{openai_server.base_url}/chat/completions"
    process = subprocess.Popen(
        [sys.executable, "-c", holder, str(path), url],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None and process.stdout.readline().strip() == "recorded"
        cassette, recovered = open_cassette(path)  # another process opens it meanwhile
        assert (recovered, len(cassette), len(log_paths(path))) == (0, 0, 1)
    finally:
        process.communicate("\n", timeout=30)
    assert process.returncode == 0
    assert len(Cassette.load(path)) == 1 and log_paths(path) == []


def test_a_failed_save_keeps_the_log_for_the_next_session(
    tmp_path: Path, openai_server: OpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A save refused at close (here: a secret in one answer) loses none of the other recordings."""
    monkeypatch.setenv("SERVICE_TOKEN", "tok-0123456789-secret")
    path = tmp_path / "c.json"
    url = f"{openai_server.base_url}/chat/completions"
    with pytest.raises(SecretLeakError), use_cassette(path, "new_episodes"):
        httpx.post(url, json=_body(1))
        httpx.post(url, json=_body(2) | {"user": "tok-0123456789-secret"})
    assert not path.exists() and len(log_paths(path)) == 1
    assert "tok-0123456789-secret" not in log_paths(path)[0].read_text()  # never on disk
    monkeypatch.delenv("SERVICE_TOKEN")
    _cassette, recovered = open_cassette(path)
    assert recovered == 1 and len(Cassette.load(path)) == 1 and log_paths(path) == []


def test_a_folder_that_cannot_be_written_fails_before_any_call(
    tmp_path: Path, openai_server: OpenAIServer
) -> None:
    """Recording where no log can be kept (a read-only folder; here a path under a file, since
    root writes through read-only modes) is refused on entering, before any paid call."""
    (tmp_path / "a-file").write_text("")
    with (
        pytest.raises(CassetteError, match=r"a-file/c\.json"),
        use_cassette(tmp_path / "a-file" / "c.json", "all"),
    ):
        httpx.post(f"{openai_server.base_url}/chat/completions", json=_body(0))
    assert openai_server.requests == []


def test_a_line_cut_short_by_a_kill_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    log = RecordingLog(path, replace=False)
    interaction = Interaction(
        RecordedRequest("POST", "https://x/v1/a", {"json": {"n": 1}}), RecordedResponse(200)
    )
    assert log.append(interaction)
    with log.path.open("ab") as handle:
        handle.write(b'{"request": {"method": "POST", "url": "https://x/v1/a", "js')
    assert read_log(log.path) == (False, [interaction])
    log.close(delete=False)
    cassette, recovered = open_cassette(path)
    assert recovered == 1 and list(cassette) == [interaction]


def test_a_log_already_in_the_cassette_is_not_added_twice(tmp_path: Path) -> None:
    """A kill between a close's save and its log's deletion."""
    path = tmp_path / "c.json"
    interaction = Interaction(
        RecordedRequest("POST", "https://x/v1/a", {"json": {"n": 1}}), RecordedResponse(200)
    )
    Cassette(path, [interaction]).save()
    log = RecordingLog(path, replace=False)
    log.append(interaction)
    log.close(delete=False)
    cassette, recovered = open_cassette(path)
    assert (recovered, len(cassette), log_paths(path)) == (0, 1, [])


def _answer(status: int, n: int = 0) -> Interaction:
    return Interaction(
        RecordedRequest("POST", "https://x/v1/a", {"json": {"q": n}}),
        RecordedResponse(status, {}, {"json": {}}),
    )


def test_merge_drops_answers_that_were_retried_and_replaces_in_mode_all() -> None:
    ok, error, other = _answer(200), _answer(429), _answer(200, 1)
    assert merge([], [error, ok, other], replace=False)[0] == [ok, other]
    assert merge([], [error], replace=False)[0] == [error]  # a final error answer stays (when asked for)
    merged, moved = merge([ok, other], [ok], replace=True)
    assert merged == [other, ok] and moved == {1: 0}


# ----------------------------------------------------------------------- error answers


def test_error_answers_are_passed_on_not_recorded(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    with OpenAIServer() as server:
        server.add_faults([Fault(404)])
        url = f"{server.base_url}/chat/completions"
        with use_cassette(path, "once"):
            assert httpx.post(url, json=_body(0)).status_code == 404  # e.g. a wrong base URL
            assert httpx.post(url, json=_body(1)).status_code == 200
    assert [i.response.status for i in Cassette.load(path)] == [200]
    assert log_paths(path) == []


def test_final_error_answers_are_recorded_when_asked_retried_ones_never(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "c.json"
    with OpenAIServer() as server:
        server.add_faults([Fault(500)])
        url = f"{server.base_url}/chat/completions"
        monkeypatch.setenv("CHAINKIT_RECORD_ERRORS", "1")
        with use_cassette(path, "once"):
            assert httpx.post(url, json=_body(0)).status_code == 500  # then retried by hand:
            assert httpx.post(url, json=_body(0)).status_code == 200
            server.add_faults([Fault(500)])
            assert httpx.post(url, json=_body(1)).status_code == 500  # final: kept
    assert [
        (i.request.body["json"]["messages"][0]["content"], i.response.status) for i in Cassette.load(path)
    ] == [
        ("question 0", 200),
        ("question 1", 500),
    ]


def test_client_retries_can_be_left_to_the_caller(tmp_path: Path) -> None:
    """openai retries 429s by itself; a caller with its own policy (eval) turns that off."""
    import openai

    with OpenAIServer() as server:
        server.add_faults([Fault(429), Fault(429), Fault(429), Fault(429)])
        client = openai.OpenAI(api_key="sk-test", base_url=server.base_url, max_retries=2)
        with (
            use_cassette(tmp_path / "c.json", "all", client_retries=False),
            pytest.raises(openai.RateLimitError),
        ):
            client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
        assert len(server.requests) == 1
        started = time.monotonic()
        with use_cassette(tmp_path / "d.json", "all"), pytest.raises(openai.RateLimitError):
            client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
        assert len(server.requests) == 4  # the client's own policy: 1 + 2 retries
        assert time.monotonic() - started < 30


def test_a_pytest_session_killed_mid_record_loses_nothing(
    tmp_path: Path, openai_server: OpenAIServer
) -> None:
    (tmp_path / "test_records.py").write_text(
        textwrap.dedent(
            """
            import os, signal, httpx, pytest

            @pytest.mark.cassette(path="recorded.json")
            def test_records_then_dies():
                for n in range(3):
                    httpx.post(os.environ["SERVER_URL"], json={"model": "m", "messages": [], "n": n})
                os.kill(os.getpid(), signal.SIGKILL)
            """
        )
    )
    url = f"{openai_server.base_url}/chat/completions"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "--record-mode=once",
            "test_records.py",
        ],
        cwd=tmp_path,
        env={**os.environ, "SERVER_URL": url, "CHAINKIT_ALLOW_HOSTS": ""},
        capture_output=True,
        timeout=120,
    )
    assert done.returncode == -signal.SIGKILL
    cassette, recovered = open_cassette(tmp_path / "recorded.json")
    assert recovered == 3 and [i.request.body["json"]["n"] for i in cassette] == [0, 1, 2]


# ---------------------------------------------------------------- the side files and git


def _git_ignored(repo: Path, *names: str) -> set[str]:
    """Which of ``names`` (relative to ``repo``) real git ignores."""
    done = subprocess.run(
        ["git", "-C", str(repo), "check-ignore", "--no-index", *names], capture_output=True, text=True
    )
    assert done.returncode in (0, 1), done.stderr
    return set(done.stdout.split())


def test_a_killed_session_leaves_its_log_out_of_git(tmp_path: Path, openai_server: OpenAIServer) -> None:
    """A project of the user's own: the first recording in its cassettes folder writes a
    .gitignore there covering chainkit's side files (the log a kill leaves, usage notes, an
    interrupted save's temp file), and only those: the cassette stays committable."""
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    path = tmp_path / "cassettes" / "qa.json"
    _record_then_die(path, openai_server, 1)
    (log,) = log_paths(path)
    assert (path.parent / ".gitignore").read_text().startswith("# Written by chainkit")
    Cassette(path).save()
    side = [f"cassettes/{log.name}", "cassettes/.qa.json.usage", "cassettes/.qa.json.0a1b2c.tmp"]
    assert _git_ignored(tmp_path, *side, "cassettes/qa.json", "cassettes/.gitignore") == set(side)


def test_an_existing_gitignore_is_never_touched(tmp_path: Path) -> None:
    folder = tmp_path / "cassettes"
    folder.mkdir()
    (folder / ".gitignore").write_text("# mine\n*.bak\n")
    RecordingLog(folder / "qa.json", replace=False).close(delete=True)
    assert (folder / ".gitignore").read_text() == "# mine\n*.bak\n"
    assert sorted(os.listdir(folder)) == [".gitignore"]
