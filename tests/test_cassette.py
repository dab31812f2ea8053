"""The cassette file: round trips, readable bodies, atomic writes, clear errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from toolkit.cassette import (
    FORMAT_VERSION,
    Cassette,
    Event,
    Interaction,
    RecordedRequest,
    RecordedResponse,
    add_usage,
    decode_body,
    encode_body,
    load_usage,
    parse_events,
)
from toolkit.errors import CassetteError, SecretLeakError


def interaction(prompt: str, answer: str = "ok") -> Interaction:
    return Interaction(
        RecordedRequest(
            "POST",
            "https://api.openai.com/v1/chat/completions",
            {"json": {"model": "m", "messages": [{"role": "user", "content": prompt}]}},
        ),
        RecordedResponse(200, {"content-type": "application/json"}, {"json": {"answer": answer}}),
    )


def test_round_trip_keeps_everything(tmp_path: Path) -> None:
    stream = RecordedResponse(
        200, {"content-type": "text/event-stream"}, events=(Event({"delta": "é"}), Event("[DONE]"))
    )
    cassette = Cassette(
        tmp_path / "c.json", [interaction("a"), Interaction(interaction("b").request, stream)]
    )
    cassette.save()
    loaded = Cassette.load(tmp_path / "c.json")
    assert loaded.interactions == cassette.interactions
    assert loaded.exists and loaded.recorded_with == {}
    document = json.loads((tmp_path / "c.json").read_text())
    assert document["chainkit_cassette"] == FORMAT_VERSION
    # Bodies are stored parsed, not as escaped strings: diffs read like the API.
    assert document["interactions"][0]["request"]["json"]["messages"][0]["content"] == "a"
    assert document["interactions"][1]["response"]["events"][0] == {"data": {"delta": "é"}}


def test_missing_file_is_an_empty_cassette(tmp_path: Path) -> None:
    cassette = Cassette.load(tmp_path / "nope.json")
    assert not cassette.exists and len(cassette) == 0


def test_file_is_readable_by_others(tmp_path: Path) -> None:
    Cassette(tmp_path / "c.json", [interaction("a")]).save()
    assert (tmp_path / "c.json").stat().st_mode & 0o044 == 0o044 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.mark.parametrize(
    ("content", "kind"),
    [(b"", None), (b'{"a": [1, 2]}', "json"), (b"plain text", "text"), (b"\xff\x00\x01", "base64")],
)
def test_bodies_take_the_most_readable_form(content: bytes, kind: str | None) -> None:
    body = encode_body(content)
    assert list(body) == ([kind] if kind else [])
    assert (
        json.loads(decode_body(body) or b"null") == json.loads(content or b"null")
        if kind == "json"
        else decode_body(body) == content
    )


def test_events_parse_and_encode_back() -> None:
    raw = (
        'event: response.created\ndata: {"type":"response.created"}\n\n'
        ": keep-alive comment\n\n"
        'data: {"a":1}\n\n'
        "data: line one\ndata: line two\n\n"
        "data: [DONE]\n\n"
    )
    events = parse_events(raw)
    assert [e.event for e in events] == ["response.created", None, None, None]
    assert (
        events[1].data == {"a": 1} and events[2].data == "line one\nline two" and events[3].data == "[DONE]"
    )
    assert b"".join(e.encode() for e in events).decode() == raw.replace(": keep-alive comment\n\n", "")


def test_truncated_file_names_file_and_position(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    Cassette(path, [interaction("a"), interaction("b")]).save()
    text = path.read_text()
    path.write_text(text[: len(text) // 2])
    with pytest.raises(CassetteError) as raised:
        Cassette.load(path)
    message = str(raised.value)
    assert message.startswith(f"{path}:") and "not valid JSON" in message and "re-record" in message
    line = int(message.split(":")[1])
    assert line > 1


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        ({"interactions": []}, "not a chainkit cassette"),
        ({"chainkit_cassette": 99, "interactions": []}, "format 99 is not supported"),
        ({"chainkit_cassette": 1, "interactions": {}}, "'interactions' must be a list"),
        (
            {"chainkit_cassette": 1, "interactions": [{"request": {"method": "GET"}}]},
            "interaction #0 is malformed",
        ),
        (
            {
                "chainkit_cassette": 1,
                "interactions": [{"request": {"method": "GET", "url": "u"}, "response": {"status": "x"}}],
            },
            "interaction #0",
        ),
        (
            {
                "chainkit_cassette": 1,
                "interactions": [
                    {"request": {"method": "GET", "url": "u"}, "response": {"status": 200, "base64": "!!"}}
                ],
            },
            "#0",
        ),
    ],
)
def test_hand_broken_cassettes_are_errors_not_empty_replays(
    tmp_path: Path, document: object, expected: str
) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps(document))
    with pytest.raises(CassetteError, match=expected) as raised:
        Cassette.load(path)
    assert str(path) in str(raised.value)


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_bytes(b'{"chainkit_cassette": 1, "x": "\xff"}')
    with pytest.raises(CassetteError, match="not UTF-8"):
        Cassette.load(path)


def test_secret_refuses_the_write_and_keeps_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "c.json"
    Cassette(path, [interaction("a")]).save()
    before = path.read_bytes()
    monkeypatch.setenv("OPENAI_API_KEY", "sk-live-abcdefghijklmnop")
    with pytest.raises(SecretLeakError, match="OPENAI_API_KEY"):
        Cassette(path, [interaction("my key is sk-live-abcdefghijklmnop")]).save()
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["c.json"]  # no temp file left behind


def test_killed_while_saving_leaves_the_previous_cassette(tmp_path: Path) -> None:
    """A process killed (SIGKILL) at the last moment of a save, when the new content is written
    but not yet renamed into place, leaves the previous cassette whole: deterministic, the kill
    comes from inside the rename. A save that writes the file in place fails this test."""
    path = tmp_path / "c.json"
    Cassette(path, [interaction("seed")]).save()
    before = path.read_bytes()
    script = f"""
import os, signal, sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
from test_cassette import interaction
from toolkit.cassette import Cassette
from pathlib import Path

def die(src, dst, *args, **kwargs):
    assert Path(src).stat().st_size > 100_000  # the whole new content is on disk, beside
    os.kill(os.getpid(), signal.SIGKILL)

os.replace = os.rename = die
Cassette(Path({str(path)!r}), [interaction("p" * 2000 + str(n)) for n in range(100)]).save()
"""
    process = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    assert process.returncode == -signal.SIGKILL, process.stderr.decode()
    assert path.read_bytes() == before
    assert len(Cassette.load(path)) == 1


def test_save_leaves_the_process_umask_alone(tmp_path: Path) -> None:
    """A new cassette's mode is 0o666 less the umask, which the kernel applies: the save never
    sets the umask (that would change it for every other thread of the process for a moment).
    A replaced cassette keeps its mode."""
    script = f"""
import os, stat, sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
from test_cassette import interaction
from toolkit.cassette import Cassette
from pathlib import Path

os.umask(0o027)
calls = []
real_umask = os.umask
os.umask = lambda mask: calls.append(mask) or real_umask(mask)
new, kept = Path({str(tmp_path / "new.json")!r}), Path({str(tmp_path / "kept.json")!r})
kept.write_text("{{}}")
os.chmod(kept, 0o604)
Cassette(new, [interaction("a")]).save()
Cassette(kept, [interaction("a")]).save()
print(oct(stat.S_IMODE(new.stat().st_mode)), oct(stat.S_IMODE(kept.stat().st_mode)), calls)
"""
    process = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    assert process.returncode == 0, process.stderr.decode()
    assert process.stdout.decode().split() == ["0o640", "0o604", "[]"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept.json", "new.json"]


def test_usage_is_tied_to_the_cassette_content(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    Cassette(path, [interaction("a"), interaction("b")]).save()
    add_usage(path, {1})
    add_usage(path, {0})
    assert load_usage(path) == {0, 1}
    Cassette(path, [interaction("a")]).save()  # changed content: old usage no longer applies
    assert load_usage(path) is None


def test_recording_writes_through_a_symlinked_cassette(tmp_path: Path, record_via: str) -> None:
    """A cassettes/ entry that links (through a second, relative link) to a shared recording:
    recording replaces the final target, and both links stay links."""
    import openai

    from toolkit import use_cassette

    shared = tmp_path / "shared"
    shared.mkdir()
    target = shared / "qa.json"
    Cassette(target, [interaction("seed")]).save()
    (shared / "alias.json").symlink_to("qa.json")
    link = tmp_path / "cassettes" / "qa.json"
    link.parent.mkdir()
    link.symlink_to(shared / "alias.json")
    client = openai.OpenAI(base_url="https://api.openai.com/v1", api_key="sk-test", max_retries=0)
    with use_cassette(link, "new_episodes", record_via=record_via):
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert link.is_symlink() and (shared / "alias.json").is_symlink()
    assert len(Cassette.load(target)) == 2  # the seed and the new recording, in the target
    assert sorted(p.name for p in shared.iterdir()) == ["alias.json", "qa.json"]  # no temp file left
    dangling = tmp_path / "cassettes" / "new.json"
    dangling.symlink_to(shared / "new.json")  # a link made before its first recording
    with use_cassette(dangling, "once", record_via=record_via):
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert dangling.is_symlink() and len(Cassette.load(shared / "new.json")) == 1


def bodiless_cassette(path: Path, *responses: dict[str, object]) -> Path:
    """A cassette file whose chat answers are ``responses``, as a hand edit leaves them."""
    request = interaction("hi").request.to_json()
    items = [{"request": request, "response": response} for response in responses]
    path.write_text(json.dumps({"chainkit_cassette": FORMAT_VERSION, "interactions": items}))
    return path


def test_a_json_answer_without_a_body_is_named_when_replayed(tmp_path: Path) -> None:
    import openai

    from toolkit import use_cassette
    from toolkit.errors import ReplayMissError

    json_type = {"content-type": "application/json"}
    path = bodiless_cassette(
        tmp_path / "c.json",
        {"status": 200, "headers": json_type},
        {"status": 200, "headers": json_type, "json": None},
        {"status": 204, "headers": json_type},  # "nothing", said properly
        {"status": 200, "headers": {"content-type": "text/plain"}, "text": ""},
        {"status": 200, "headers": json_type, "json": {"answer": "ok"}},
    )
    loaded = Cassette.load(path)
    reasons = [i.response.unreplayable for i in loaded]
    assert reasons[2:] == [None, None, None]
    assert reasons[0] == (
        f"{path}: interaction #0 (POST https://api.openai.com/v1/chat/completions) recorded a 200 "
        "application/json response whose body is empty, which no client can use; delete that "
        "interaction and record it again (--record-mode new_episodes), or re-record the "
        "cassette (--record-mode all)"
    )
    assert reasons[1] is not None and reasons[1].startswith(f"{path}: interaction #1 (POST ")
    assert "whose body is null" in reasons[1]
    # Not part of the record: equal to the same response built in code.
    assert loaded.interactions[0].response == RecordedResponse(200, json_type)
    # The real client, replaying: chainkit's words naming the file and the interaction, not the
    # client's "JSONDecodeError: Expecting value" (or a None it would hand back for a null).
    client = openai.OpenAI(base_url="https://api.openai.com/v1", api_key="sk-test", max_retries=0)
    with use_cassette(path, "none"), pytest.raises(ReplayMissError) as raised:
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    assert str(raised.value) == reasons[0]


def test_usage_notes_get_a_gitignore_beside_them_once(tmp_path: Path) -> None:
    """Replaying writes `.NAME.json.usage`: the folder gets a .gitignore for it if it has none,
    and one that exists (the user's, or edited) is left as it is."""
    path = tmp_path / "cassettes" / "c.json"
    Cassette(path, [interaction("a")]).save()
    assert not (path.parent / ".gitignore").exists()  # a cassette alone: nothing to ignore
    add_usage(path, {0})
    written = (path.parent / ".gitignore").read_text()
    assert ".*.usage" in written.splitlines() and ".*.recording" in written.splitlines()
    (path.parent / ".gitignore").write_text("# edited by hand\n")
    add_usage(path, {0})
    assert (path.parent / ".gitignore").read_text() == "# edited by hand\n"
    assert sorted(p.name for p in path.parent.iterdir()) == [".c.json.usage", ".gitignore", "c.json"]
