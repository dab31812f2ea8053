"""Importing vcrpy / pytest-recording cassettes (toolkit/vcr_import.py).

The material is real: public vcrpy cassettes of OpenAI traffic in tests/data/vcr/ (sources and
licences in SOURCES.md there). The oracle for "replays the recorded response" is the real openai
SDK parsing the *original* recorded bytes (decompressed here, independently of the importer),
compared with the same SDK call answered by chainkit from the imported cassette.
"""

from __future__ import annotations

import gzip
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import httpx2
import openai
import pytest
import yaml
from click.testing import CliRunner
from conftest import CANARY_KEY, ROOT

from toolkit.cassette import Cassette, RecordedRequest
from toolkit.cli import cli
from toolkit.errors import CassetteError, ReplayMissError
from toolkit.replay import use_cassette
from toolkit.vcr_import import (
    OtherHosts,
    Outcome,
    convert,
    import_cassette,
    is_openai,
    load_yaml,
    read_vcr,
    target_for,
)

VCR = ROOT / "tests" / "data" / "vcr"
#: A streamed two-turn tool loop (simonw/llm, Apache-2.0).
TOOL_LOOP = VCR / "simonw-llm-tools-streaming-variant-a.yaml"
#: A real gzip ``!!binary`` body, and telemetry / tracing traffic of other hosts (crewAI, MIT).
GZIP_AND_OTHERS = VCR / "crewai-trace-batch-failed-on-finalize-error.yaml"
#: Header values the source replaced with ``X-...-XXX`` (crewAI, MIT).
PLACEHOLDERS = VCR / "crewai-openai-async-basic-call.yaml"
ALL = [TOOL_LOOP, GZIP_AND_OTHERS, PLACEHOLDERS]


def raw_interactions(path: Path) -> list[dict[str, Any]]:
    return list(yaml.load(path.read_bytes(), Loader=yaml.CSafeLoader)["interactions"])


def plain_body(response: dict[str, Any]) -> bytes:
    """What the client read: the recorded bytes, gunzipped when they are gzip."""
    body = response["body"]["string"]
    content = body if isinstance(body, bytes) else body.encode("utf-8")
    return gzip.decompress(content) if content[:2] == b"\x1f\x8b" else content


def openai_client(base_url: str, transport: Any = None) -> openai.OpenAI:
    http_client = httpx2.Client(transport=transport) if transport is not None else None
    return openai.OpenAI(api_key="sk-test", base_url=base_url, http_client=http_client, max_retries=0)


def sdk_call(client: openai.OpenAI, request_body: dict[str, Any]) -> Any:
    """The SDK call that sent ``request_body``, its result parsed: a completion or its chunks."""
    result = client.chat.completions.create(**request_body)
    if request_body.get("stream"):
        return [chunk.model_dump() for chunk in result]
    return result.model_dump()


def recorded_answer(item: dict[str, Any], base_url: str) -> Any:
    """The SDK's parse of the original recorded response bytes."""
    response = item["response"]
    content_type = next(v[0] for k, v in response["headers"].items() if k.lower() == "content-type")

    def serve(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(response["status"]["code"], headers={"content-type": content_type},
                               content=plain_body(response))

    return sdk_call(openai_client(base_url, httpx2.MockTransport(serve)), json.loads(item["request"]["body"]))


@pytest.fixture
def imported(tmp_path: Path) -> Iterator[Path]:
    into = tmp_path / "cassettes"
    for source in ALL:
        import_cassette(source, into)
    yield into


# ------------------------------------------------------------------ replay of real material


@pytest.mark.parametrize("source", [TOOL_LOOP, GZIP_AND_OTHERS, PLACEHOLDERS], ids=lambda p: p.stem)
def test_each_recorded_openai_call_replays_its_recorded_answer(imported: Path, source: Path) -> None:
    cassette = target_for(source, imported)
    for item in raw_interactions(source):
        url = item["request"]["uri"]
        if not is_openai(url):
            continue
        base_url = url.rsplit("/chat/completions", 1)[0]
        expected = recorded_answer(item, base_url)
        with use_cassette(cassette, "none"):
            replayed = sdk_call(openai_client(base_url), json.loads(item["request"]["body"]))
        assert replayed == expected


def test_a_streamed_tool_loop_replays_chunk_for_chunk(imported: Path) -> None:
    cassette = Cassette.load(target_for(TOOL_LOOP, imported))
    turns = raw_interactions(TOOL_LOOP)
    assert [len(i.response.events or ()) for i in cassette] == [6, 18]  # events, [DONE] included
    with use_cassette(cassette.path, "none"):
        first = sdk_call(openai_client("https://api.openai.com/v1"), json.loads(turns[0]["request"]["body"]))
        second = sdk_call(openai_client("https://api.openai.com/v1"), json.loads(turns[1]["request"]["body"]))
    calls = [c for chunk in first for choice in chunk["choices"] for c in choice["delta"]["tool_calls"] or ()]
    assert calls[0]["function"]["name"] == "llm_version"
    text = "".join(choice["delta"]["content"] or "" for chunk in second for choice in chunk["choices"])
    assert text == "The current version of *llm* is **0.fixed-version**."
    assert len(second) == 17  # one parsed chunk per data event but [DONE]


def test_real_gzip_bodies_are_stored_decompressed_and_parsed(imported: Path) -> None:
    stored = Cassette.load(target_for(GZIP_AND_OTHERS, imported)).interactions[0].response
    original = plain_body(raw_interactions(GZIP_AND_OTHERS)[0]["response"])
    assert stored.body == {"json": json.loads(original)}
    assert "content-encoding" not in stored.headers  # the bytes chainkit sends are plain
    assert stored.headers["x-ratelimit-limit-requests"] == "30000"


def test_a_lying_content_encoding_header_is_recognised(tmp_path: Path) -> None:
    # What vcrpy's httpx stubs before 5 (kevin1024/vcrpy#591) and vcrpy 4.3 with urllib3 2
    # (#719) wrote: the decoded body, with the server's `Content-Encoding: gzip` kept. Made from
    # the real gzip interaction by storing what the client had decoded.
    document = yaml.load(GZIP_AND_OTHERS.read_bytes(), Loader=yaml.CSafeLoader)
    item = document["interactions"][0]
    item["response"]["body"]["string"] = plain_body(item["response"]).decode("utf-8")
    assert item["response"]["headers"]["Content-Encoding"] == ["gzip"]
    source = tmp_path / "lying.yaml"
    source.write_text(yaml.safe_dump({"interactions": [item], "version": 1}))
    report = import_cassette(source, tmp_path / "out")
    assert report.interactions[0].outcome is Outcome.KEPT
    assert any("stored decoded" in note for note in report.interactions[0].notes)
    stored = Cassette.load(report.target).interactions[0].response
    assert stored.body == {"json": json.loads(plain_body(item["response"]))}
    base_url = "https://api.openai.com/v1"
    with use_cassette(report.target, "none"):
        replayed = sdk_call(openai_client(base_url), json.loads(item["request"]["body"]))
    assert replayed == recorded_answer(item, base_url)


def test_placeholder_header_values_are_left_out_and_reported(imported: Path) -> None:
    stored = Cassette.load(target_for(PLACEHOLDERS, imported)).interactions[0].response
    assert not any(k.startswith("x-ratelimit") for k in stored.headers)
    assert "x-request-id" not in stored.headers
    assert stored.headers["openai-processing-ms"] == "373"
    _, notes = convert(raw_interactions(PLACEHOLDERS))
    assert any("X-RATELIMIT-LIMIT-REQUESTS-XXX" in note for note in notes[0].notes)


# ------------------------------------------------------------------------- other hosts


def test_other_hosts_are_kept_as_generic_interactions_and_replay(imported: Path) -> None:
    report_notes = convert(raw_interactions(GZIP_AND_OTHERS))[1]
    assert [n.outcome for n in report_notes] == [Outcome.KEPT] + [Outcome.KEPT_GENERIC] * 3
    with use_cassette(target_for(GZIP_AND_OTHERS, imported), "none"), httpx.Client() as client:
        scarf = client.get(
            "https://api.scarf.sh/v2/packages/CrewAI/crewai/docs/00f2dad1-8334-4a39-934e-003b2e1146db"
        )
        tracing = client.patch(
            "http://localhost:3000/crewai_plus/api/v1/tracing/batches/None",
            content=b'{"status": "failed", "failure_reason": "Error sending events to backend"}',
        )
    assert (scarf.status_code, scarf.content) == (401, b"")
    assert tracing.status_code == 401
    assert tracing.json() == {"error": "bad_credentials", "message": "Bad credentials"}


def test_other_hosts_can_be_dropped_and_are_reported(tmp_path: Path) -> None:
    report = import_cassette(GZIP_AND_OTHERS, tmp_path, other_hosts="drop")
    assert [n.outcome for n in report.interactions] == [Outcome.KEPT] + [Outcome.DROPPED] * 3
    assert "not OpenAI API traffic" in report.interactions[1].notes[0]
    assert len(Cassette.load(report.target)) == 1
    assert "1 OpenAI interactions, 0 other-host interactions kept, 3 dropped" in report.summary()


def test_other_hosts_choice_lists_the_allowed_values() -> None:
    with pytest.raises(ValueError, match="keep, drop"):
        OtherHosts.parse("sometimes")


# ----------------------------------------------------------------------------- secrets


def test_secrets_the_source_forgot_are_redacted_and_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", CANARY_KEY)
    item = raw_interactions(PLACEHOLDERS)[0]
    item["request"]["headers"]["authorization"] = [f"Bearer {CANARY_KEY}"]
    body = json.loads(item["request"]["body"])
    other_key = "sk-proj-abcdefghijklmnopqrstuvwx"
    body["messages"][0]["content"] = f"my key is {CANARY_KEY} and my other one {other_key}"
    item["request"]["body"] = json.dumps(body)
    item["request"]["uri"] += "?api_key=hunter2hunter2"
    source = tmp_path / "leaky.yaml"
    source.write_text(yaml.safe_dump({"interactions": [item], "version": 1}))
    report = import_cassette(source, tmp_path / "out")
    text = report.target.read_text()
    assert CANARY_KEY not in text and "sk-proj-abcdef" not in text and "hunter2" not in text
    assert "[REDACTED:OPENAI_API_KEY]" in text and "[REDACTED:api-key]" in text
    redactions = " | ".join(report.redactions)
    assert "authorization" in redactions and "OPENAI_API_KEY" in redactions and "key-shaped" in redactions
    assert "URL" in redactions
    assert "secrets redacted" in report.summary()


# ----------------------------------------------------------------- merging, formats, errors


def test_each_file_becomes_its_stem_and_an_existing_cassette_is_merged_into(tmp_path: Path) -> None:
    into = tmp_path / "cassettes"
    import_cassette(PLACEHOLDERS, into)
    target = into / "crewai-openai-async-basic-call.json"
    assert target_for(PLACEHOLDERS, into) == target
    # The same name from another folder merges: both recordings stay.
    other = tmp_path / "elsewhere" / PLACEHOLDERS.name
    other.parent.mkdir()
    shutil.copy(TOOL_LOOP, other)
    report = import_cassette(other, into)
    assert report.previously == 1 and report.written
    assert len(Cassette.load(target)) == 3
    # Importing a file again adds nothing.
    again = import_cassette(other, into)
    assert not again.written and again.count(Outcome.ALREADY_PRESENT) == 2
    assert len(Cassette.load(target)) == 3


def test_identical_interactions_of_one_file_are_all_kept(tmp_path: Path) -> None:
    item = raw_interactions(PLACEHOLDERS)[0]
    source = tmp_path / "twice.yaml"
    source.write_text(yaml.safe_dump({"interactions": [item, item], "version": 1}))
    assert len(Cassette.load(import_cassette(source, tmp_path / "out").target)) == 2


def test_json_cassettes_and_older_layouts_import_alike(tmp_path: Path) -> None:
    from vcr.serializers import jsonserializer

    document = yaml.load(PLACEHOLDERS.read_bytes(), Loader=yaml.CSafeLoader)
    source = tmp_path / "as.json"
    source.write_text(jsonserializer.serialize(document))
    def imported_from(path: Path, into: str) -> Any:
        return Cassette.load(import_cassette(path, tmp_path / into).target).to_json()["interactions"]

    from_json = imported_from(source, "json")
    from_yaml = imported_from(PLACEHOLDERS, "yaml")
    assert from_json == from_yaml
    # Older vcrpy: header values as plain strings, the status a bare code, no version key.
    old = document["interactions"][0]
    old["response"]["headers"] = {k: v[0] for k, v in old["response"]["headers"].items()}
    old["response"]["status"] = 200
    source = tmp_path / "old.yaml"
    source.write_text(yaml.safe_dump({"interactions": [old]}))
    from_old = imported_from(source, "old")
    assert from_old == from_yaml


def test_the_yaml_reader_agrees_with_pyyaml_on_real_cassettes() -> None:
    def as_text(value: Any) -> Any:
        if isinstance(value, dict):
            return {str(k): as_text(v) for k, v in value.items()}
        if isinstance(value, list):
            return [as_text(v) for v in value]
        return value if value is None or isinstance(value, str | bytes) else str(value)

    for source in ALL:
        raw = source.read_bytes()
        assert as_text(load_yaml(raw)) == as_text(yaml.load(raw, Loader=yaml.CSafeLoader))
    assert load_yaml(b"a: &x [1, ~]\nb: *x\nc: 'null'\nd: !!binary aGk=\n") == {
        "a": ["1", None], "b": ["1", None], "c": "null", "d": b"hi"
    }


def test_not_a_vcr_cassette_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "notes.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(CassetteError, match=r"notes\.yaml: not a vcrpy cassette"):
        read_vcr(bad)
    future = tmp_path / "future.yaml"
    future.write_text("interactions: []\nversion: 2\n")
    with pytest.raises(CassetteError, match="format version '2' is not supported"):
        read_vcr(future)
    with pytest.raises(CassetteError, match=r"missing\.yaml: no such file"):
        read_vcr(tmp_path / "missing.yaml")


# ------------------------------------------------------------------------------------ CLI


def test_cli_import_reports_and_writes(tmp_path: Path) -> None:
    into = tmp_path / "cassettes"
    args = ["cassette", "import", str(GZIP_AND_OTHERS), "--into", str(into), "--report"]
    result = CliRunner().invoke(cli, ["--project", str(tmp_path), *args])
    assert result.exit_code == 0, result.output
    assert "1 OpenAI interactions, 3 other-host interactions kept, 0 dropped" in result.output
    assert "#1 kept-generic: GET https://api.scarf.sh/" in result.output
    assert "not OpenAI API traffic" in result.output
    assert (into / "crewai-trace-batch-failed-on-finalize-error.json").exists()


def test_cli_import_defaults_to_the_projects_cassettes_and_prints_json(tmp_path: Path) -> None:
    args = ["cassette", "import", str(TOOL_LOOP), "--other-hosts", "drop", "--json"]
    result = CliRunner().invoke(cli, ["--project", str(tmp_path), *args])
    assert result.exit_code == 0, result.output
    [document] = json.loads(result.output)
    assert document["kept"] == 2 and document["written"]
    assert Path(document["target"]) == tmp_path / "cassettes" / "simonw-llm-tools-streaming-variant-a.json"


def test_cli_import_dry_run_writes_nothing(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli, ["cassette", "import", str(PLACEHOLDERS), "--into", str(tmp_path), "--dry-run"]
    )
    assert result.exit_code == 0, result.output
    assert "not written" in result.output and not list(tmp_path.iterdir())


def test_cassette_show_recognises_a_vcr_cassette() -> None:
    result = CliRunner().invoke(cli, ["cassette", "show", str(PLACEHOLDERS)])
    assert result.exit_code == 1
    assert "is a vcrpy (or pytest-recording) cassette" in result.output
    assert "chainkit cassette import" in result.output
    assert "truncated or was edited by hand" not in result.output
    as_json = json.dumps({"interactions": [{"request": {"uri": "https://x"}, "response": {}}], "version": 1})
    with CliRunner().isolated_filesystem():
        Path("x.json").write_text(as_json)
        result = CliRunner().invoke(cli, ["cassette", "show", "x.json"])
    assert "is a vcrpy (or pytest-recording) cassette" in result.output


# ------------------------------------------ matching that ignores JSON paths (toolkit.matching)


def placeholder_request() -> dict[str, Any]:
    return json.loads(raw_interactions(PLACEHOLDERS)[0]["request"]["body"])


def test_ignored_json_paths_let_a_changing_field_replay(imported: Path) -> None:
    cassette = target_for(PLACEHOLDERS, imported)
    body = {**placeholder_request(), "user": "run-1234", "metadata": {"ci": "job-99"}}
    with use_cassette(cassette, "none"), pytest.raises(ReplayMissError, match="no recorded response"):
        sdk_call(openai_client("https://api.openai.com/v1"), body)
    with use_cassette(cassette, "none", ignore_json_paths=["user", "metadata"]):
        answer = sdk_call(openai_client("https://api.openai.com/v1"), body)
    assert answer["choices"][0]["message"]["content"] == "Hello! How can I assist you today?"


def test_a_miss_names_the_ignored_paths_and_diffs_without_them(imported: Path) -> None:
    cassette = target_for(PLACEHOLDERS, imported)
    body = {**placeholder_request(), "user": "run-1234", "temperature": 0.5}
    ignored = ["user", "messages[*].name"]
    with use_cassette(cassette, "none", ignore_json_paths=ignored), pytest.raises(ReplayMissError) as caught:
        sdk_call(openai_client("https://api.openai.com/v1"), body)
    message = str(caught.value)
    assert "Ignored when matching: user, messages[*].name" in message
    assert "temperature" in message and "user:" not in message


def test_json_paths_parse_and_bad_ones_are_usage_errors(tmp_path: Path) -> None:
    from toolkit.errors import UsageError
    from toolkit.matching import ignoring, parse_json_path

    assert parse_json_path("$.messages[*].name") == ("messages", None, "name")
    assert parse_json_path("messages[0].content") == ("messages", 0, "content")
    request = RecordedRequest("POST", "https://api.openai.com/v1/x", {"json": {
        "messages": [{"role": "user", "name": "a"}, {"role": "user", "name": "b"}], "user": "u"}})
    stripped = ignoring(request, [parse_json_path("messages[*].name"), parse_json_path("user")])
    assert stripped.body == {"json": {"messages": [{"role": "user"}, {"role": "user"}]}}
    assert request.body["json"]["user"] == "u"  # the recording itself is untouched
    with pytest.raises(UsageError, match="not understood"):
        use_cassette(tmp_path / "x.json", "none", ignore_json_paths=["messages[x]"]).__enter__()


def test_the_project_declares_ignored_paths(tmp_path: Path) -> None:
    from toolkit.errors import UsageError
    from toolkit.project import Project

    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text('[tool.chainkit]\nignore_json_paths = ["user", "metadata.run"]\n')
    assert Project.at(tmp_path).ignore_json_paths == ("user", "metadata.run")
    (tmp_path / "pyproject.toml").write_text('[tool.chainkit]\nignore_json_paths = "user"\n')
    with pytest.raises(UsageError, match="must be a list of JSON paths"):
        Project.at(tmp_path)


def test_pytest_recording_habits_an_imported_vcr_cassette_and_chainkit_config(
    pytester: pytest.Pytester,
) -> None:
    # pytest-recording's layout: tests/cassettes/<module>/<test>.yaml; imported beside it, the
    # .json is exactly where chainkit's marker looks by default.
    folder = pytester.path / "tests" / "cassettes" / "test_hello"
    folder.mkdir(parents=True)
    shutil.copy(PLACEHOLDERS, folder / "test_say_hello.yaml")
    import_cassette(folder / "test_say_hello.yaml", folder)
    pytester.makepyprojecttoml('[tool.chainkit]\nignore_json_paths = ["user"]\n')
    (pytester.path / "tests" / "test_hello.py").write_text(
        "import openai, pytest\n\n"
        "@pytest.fixture\n"
        "def chainkit_config():\n"
        "    return {'ignore_json_paths': ['metadata']}\n\n"
        "@pytest.mark.cassette(ignore_json_paths=['seed'])\n"
        "def test_say_hello():\n"
        "    client = openai.OpenAI(max_retries=0)\n"
        "    answer = client.chat.completions.create(model='gpt-4o-mini', user='ci-run-7', seed=3,\n"
        "        metadata={'job': '42'}, messages=[{'role': 'user', 'content': 'Say hello'}])\n"
        "    assert answer.choices[0].message.content == 'Hello! How can I assist you today?'\n"
    )
    result = pytester.runpytest_subprocess("tests/test_hello.py", "-p", "no:cacheprovider",
                                           "-p", "no:recording")
    result.assert_outcomes(passed=1)
