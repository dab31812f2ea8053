"""What is kept of headers and URLs, and the environment-secret check before writing."""

from __future__ import annotations

from pathlib import Path

import pytest

from toolkit.errors import SecretLeakError
from toolkit.redaction import (
    check_no_secrets,
    environment_secrets,
    kept_response_headers,
    redact_url,
    secret_shapes,
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
