"""What is kept of headers and URLs, which variables are secrets, the check that refuses a
cassette and the scrub that redacts every other file."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from toolkit.cassette import add_usage, usage_path
from toolkit.errors import SecretLeakError
from toolkit.redaction import (
    PLACEHOLDER_API_KEY,
    check_no_secrets,
    environment_secrets,
    kept_response_headers,
    redact_span,
    redact_url,
    scrub,
    scrub_text,
    secret_shapes,
    secret_values,
)


def test_response_headers_keep_what_clients_read_and_never_secrets() -> None:
    kept = kept_response_headers(
        {
            "Content-Type": "application/json",
            "Retry-After": "2",
            "x-ratelimit-remaining-requests": "9",
            "x-request-id": "req_1",
            "Set-Cookie": "__cf_bm=abc",
            "openai-organization": "org-secret",
            "openai-project": "proj_x",
            "Server": "cloudflare",
            "cf-ray": "123",
            "Authorization": "Bearer x",
        }
    )
    assert kept == {
        "content-type": "application/json",
        "retry-after": "2",
        "x-ratelimit-remaining-requests": "9",
        "x-request-id": "req_1",
    }


def test_query_credentials_are_masked() -> None:
    assert (
        redact_url("https://h/v1/x?api-key=s3cret&model=m&key=k")
        == "https://h/v1/x?api-key=REDACTED&model=m&key=REDACTED"
    )
    assert redact_url("https://h/v1/x") == "https://h/v1/x"


def test_environment_secrets_by_name_and_length() -> None:
    env = {
        "OPENAI_API_KEY": "sk-abcdefgh",
        "GITHUB_TOKEN": "ghp_12345678",
        "DB_PASSWORD": "hunter2hunter2",
        "HOME": "/root/verylongpath",
        "SHORT_TOKEN": "abc",
    }
    assert set(environment_secrets(env)) == {"OPENAI_API_KEY", "GITHUB_TOKEN", "DB_PASSWORD"}


def test_check_names_the_variable_not_the_value(tmp_path: Path) -> None:
    env = {"OPENAI_API_KEY": "sk-abcdefghijkl"}
    check_no_secrets("nothing here", tmp_path / "c.json", env)
    with pytest.raises(SecretLeakError) as raised:
        check_no_secrets('{"x": "sk-abcdefghijkl"}', tmp_path / "c.json", env)
    assert "OPENAI_API_KEY" in str(raised.value) and str(tmp_path / "c.json") in str(raised.value)
    assert "sk-abcdefghijkl" not in str(raised.value)


def test_secret_shapes_are_masked() -> None:
    found = secret_shapes("a sk-proj-ABCDEFGHIJKLMNOPQRSTUVWXYZ and Bearer abcdefghijklmnopqrstuvwxyz")
    assert found == ["Bearer ...", "sk-proj..."]
    assert secret_shapes("sk-short") == []


def test_secret_names_beyond_key_token_secret_password() -> None:
    value = "v" * 12
    secret = [
        "OPENAI_API_KEY",
        "APIKEY",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "SSH_KEYS",
        "HF_TOKEN",
        "GITHUBTOKEN",
        "CLIENT_SECRET",
        "PGPASSWORD",
        "FTP_PASSWD",
        "DB_PASS",
        "MYSQL_PWD",
        "AZURE_CREDENTIALS",
        "SLACK_WEBHOOK_URL",
        "SENTRY_DSN",
        "lower_api_key",
    ]
    not_secret = [
        "PWD",  # the current directory
        "OLDPWD",
        "HOME",
        "KEYRING_BACKEND",
        "KEYCLOAK_URL",
        "SSH_ASKPASS",
        "PASSTHROUGH_MODE",
        "TIKTOKEN_CACHE_DIR",  # where a secret is kept is not the secret
        "SSH_KEY_PATH",
        "POSTGRES_PASSWORD_FILE",
        "CREDENTIALS_HOME",
    ]
    env = {name: value for name in secret + not_secret}
    assert sorted(environment_secrets(env)) == sorted(secret)


def test_short_values_and_the_replay_placeholder_are_not_secrets() -> None:
    from toolkit import replay

    assert replay.PLACEHOLDER_API_KEY == PLACEHOLDER_API_KEY  # the same constant, kept in two places
    env = {"TOKENIZERS_PARALLELISM": "false", "MY_TOKEN": "1234567", "OPENAI_API_KEY": PLACEHOLDER_API_KEY}
    assert environment_secrets(env) == {} and secret_values(env) == []


def test_urls_with_a_password_are_secrets_whatever_their_name() -> None:
    env = {
        "DATABASE_URL": "postgres://user:longpassword@db.internal:5432/app",
        "REDIS_URL": "redis://:otherpassword@cache:6379/0",
        "HTTPS_PROXY": "http://me:short@proxy:3128",  # the URL counts, a short password alone not
        "GIT_REMOTE": "ssh://git@github.com/owner/repo.git",  # a user, no password
        "HOMEPAGE": "https://example.com/a/long/path",
    }
    assert sorted(environment_secrets(env)) == ["DATABASE_URL", "HTTPS_PROXY", "REDIS_URL"]
    values = secret_values(env)
    assert ("longpassword", "DATABASE_URL") in values and ("otherpassword", "REDIS_URL") in values
    assert ("short", "HTTPS_PROXY") not in values
    assert [len(value) for value, _ in values] == sorted((len(value) for value, _ in values), reverse=True)


def test_scrub_replaces_values_with_a_marker_naming_the_variable() -> None:
    env = {
        "DATABASE_URL": "postgres://user:longpassword@db/app",
        "MY_SERVICE_TOKEN": "tok-0123456789",
        "OTHER_TOKEN": "tok-0123456789",  # the same value twice: one marker, one name
    }
    secrets = secret_values(env)
    value = {
        "output": "connect to postgres://user:longpassword@db/app with longpassword",
        "tok-0123456789": ["x tok-0123456789", ("tok-0123456789", 3, None, True, 1.5)],
        "n": 7,
        "path": Path("/data/tok-0123456789/x"),  # written as its text: scrubbed as text
        "kept": Path("/data/x"),
    }
    clean, names = scrub(value, secrets)
    assert clean == {
        "output": "connect to [REDACTED:DATABASE_URL] with [REDACTED:DATABASE_URL]",  # URL whole, first
        "[REDACTED:MY_SERVICE_TOKEN]": [
            "x [REDACTED:MY_SERVICE_TOKEN]",
            ["[REDACTED:MY_SERVICE_TOKEN]", 3, None, True, 1.5],
        ],
        "n": 7,
        "path": "/data/[REDACTED:MY_SERVICE_TOKEN]/x",
        "kept": Path("/data/x"),
    }
    assert names == ["DATABASE_URL", "MY_SERVICE_TOKEN"]
    assert value["output"].startswith("connect to postgres")  # the input is not changed
    assert scrub({"a": "nothing here"}, secrets) == ({"a": "nothing here"}, [])
    marked = ("a [REDACTED:MY_SERVICE_TOKEN] b", ["MY_SERVICE_TOKEN"])
    assert scrub_text("a tok-0123456789 b", secrets) == marked


def test_scrub_reads_the_environment_by_default_and_sees_it_change(monkeypatch: pytest.MonkeyPatch) -> None:
    text = "post to https://hooks.slack.com/services/T0/B0/abcdefgh"
    assert scrub_text(text) == (text, [])
    monkeypatch.setenv("SLACK_WEBHOOK_URL", "https://hooks.slack.com/services/T0/B0/abcdefgh")
    assert scrub_text(text) == ("post to [REDACTED:SLACK_WEBHOOK_URL]", ["SLACK_WEBHOOK_URL"])
    monkeypatch.setenv("SLACK_WEBHOOK_URL", "https://hooks.slack.com/services/T0/B0/changed0")
    assert scrub_text(text) == (text, [])  # a value set later (load_dotenv in a chain) counts


def test_check_refuses_a_url_password_and_a_json_escaped_value(tmp_path: Path) -> None:
    env = {"DATABASE_URL": "postgres://u:longpassword@h/db", "ODD_SECRET": 'quote"and\\slash'}
    with pytest.raises(SecretLeakError, match="DATABASE_URL"):
        check_no_secrets('{"note": "the password is longpassword"}', tmp_path / "c.json", env)
    with pytest.raises(SecretLeakError, match="ODD_SECRET"):
        check_no_secrets(json.dumps({"note": env["ODD_SECRET"]}), tmp_path / "c.json", env)


def test_usage_files_are_scrubbed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cassette = tmp_path / "c.json"
    cassette.write_text("{}")
    digest = hashlib.sha256(b"{}").hexdigest()
    monkeypatch.setenv("RELEASE_TOKEN", digest)  # contrived: a usage file holds indices and a digest
    add_usage(cassette, [2, 0])
    text = usage_path(cassette).read_text()
    assert digest not in text and json.loads(text) == {"sha256": "[REDACTED:RELEASE_TOKEN]", "used": [0, 2]}


def test_span_processor_scrubs_attributes_events_and_status(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow
    from mlflow.tracing.config import get_config

    token = "tok-canary-span-0123456789"
    monkeypatch.setenv("MY_SERVICE_TOKEN", token)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_experiment(experiment_id=mlflow.create_experiment("x", (tmp_path / "mlruns").as_uri()))
    before = list(get_config().span_processors)
    with (
        mlflow.tracing.configure(span_processors=[*before, redact_span]),
        mlflow.start_span(name="root") as root,
    ):
        root.set_inputs({"question": f"my token is {token}"})
        root.set_attribute("note", token)
        with pytest.raises(ValueError), mlflow.start_span(name="child"):
            raise ValueError(f"upstream said {token}")
        root.set_outputs(f"answer {token}")
    assert get_config().span_processors == before
    mlflow.flush_trace_async_logging()
    trace = mlflow.get_trace(root.trace_id)
    text = json.dumps(trace.to_dict())
    assert token not in text and "[REDACTED:MY_SERVICE_TOKEN]" in text
    spans = {span.name: span for span in trace.data.spans}
    assert spans["root"].inputs == {"question": "my token is [REDACTED:MY_SERVICE_TOKEN]"}
    assert spans["root"].outputs == "answer [REDACTED:MY_SERVICE_TOKEN]"
    assert spans["child"].status.description == "ValueError: upstream said [REDACTED:MY_SERVICE_TOKEN]"
    message = spans["child"].events[0].attributes["exception.message"]
    assert message == "upstream said [REDACTED:MY_SERVICE_TOKEN]"
    files = [path for path in tmp_path.rglob("*") if path.is_file()]
    assert files and not [path for path in files if token.encode() in path.read_bytes()]


def test_tags_chainkit_log_sets_are_scrubbed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil
    import subprocess

    import mlflow
    from conftest import ROOT

    from toolkit.packaging import log_chains
    from toolkit.project import Project

    for folder in ("chains", "cassettes"):
        (tmp_path / folder).mkdir()
        shutil.copy(ROOT / folder / f"qa.{'py' if folder == 'chains' else 'json'}", tmp_path / folder)
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "x"], check=True)
    commit = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout
    monkeypatch.setenv("RELEASE_TOKEN", commit.strip())  # contrived: the commit logged as a tag
    (result,) = log_chains(Project.at(tmp_path), ["qa"], tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert result.ok, result.error
    assert mlflow.get_logged_model(result.model_id).tags["chainkit.git_commit"] == "[REDACTED:RELEASE_TOKEN]"
    assert commit.strip().encode() not in (tmp_path / "mlflow.db").read_bytes()
