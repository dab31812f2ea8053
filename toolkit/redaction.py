"""Keep secrets out of everything chainkit writes.

Two layers. First, what is recorded is chosen, not filtered: request headers are never stored,
and a response keeps only the headers a client reads (content type, request id, rate limits,
retry hints). Credentials in a URL's query string are masked. Second, before any file is
written, its text is searched for the values of the secrets present in the environment
(``OPENAI_API_KEY`` and every variable whose name says key, token, secret or password); a hit
refuses the write and names the variable, never the value.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from toolkit.errors import SecretLeakError

REDACTED = "REDACTED"

#: Never stored, whatever else is kept.
SECRET_HEADERS = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "api-key",
        "x-api-key",
        "openai-organization",
        "openai-project",
        "cookie",
        "set-cookie",
    }
)

#: Response headers a client reads; everything else (server, via, cf-ray, ...) is noise.
_KEPT_RESPONSE_HEADERS = frozenset(
    {
        "content-type",
        "retry-after",
        "retry-after-ms",
        "x-request-id",
        "openai-model",
        "openai-version",
        "openai-processing-ms",
    }
)
_KEPT_PREFIXES = ("x-ratelimit-",)

_SECRET_QUERY = re.compile(r"(?i)^(api[-_]?key|key|token|access[-_]?token|secret|sig|signature)$")
_SECRET_VARIABLE = re.compile(
    r"(?i)(API_?KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|ACCESS_KEY|PRIVATE_KEY)"
)
#: Shorter values are too likely to occur by chance ("true", a port number) to search for.
_MIN_SECRET_LENGTH = 8


def kept_response_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The response headers worth recording, lower-cased, secrets excluded."""
    kept = {}
    for name, value in headers.items():
        name = name.lower()
        if name in SECRET_HEADERS:
            continue
        if name in _KEPT_RESPONSE_HEADERS or name.startswith(_KEPT_PREFIXES):
            kept[name] = value
    return kept


def redact_url(url: str) -> str:
    """Mask credentials passed as query parameters (``?key=...``, ``?api_key=...``)."""
    parts = urlsplit(url)
    if not parts.query:
        return url
    query = [
        (name, REDACTED if _SECRET_QUERY.match(name) else value)
        for name, value in parse_qsl(parts.query, keep_blank_values=True)
    ]
    return urlunsplit(parts._replace(query=urlencode(query)))


def environment_secrets(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Variables whose names mark them as secrets, with values long enough to search for."""
    environ = os.environ if environ is None else environ
    return {
        name: value
        for name, value in environ.items()
        if _SECRET_VARIABLE.search(name) and len(value) >= _MIN_SECRET_LENGTH
    }


def check_no_secrets(text: str, path: Path, environ: Mapping[str, str] | None = None) -> None:
    """Refuse to write ``text`` to ``path`` if it contains the value of a secret variable."""
    leaked = sorted(name for name, value in environment_secrets(environ).items() if value in text)
    if leaked:
        raise SecretLeakError(
            f"refused to write {path}: it would contain the value of {', '.join(leaked)}; "
            "remove the secret from the request (a prompt, a URL) and record again"
        )


#: Shapes of credentials worth flagging even when their value is not in the environment.
_SECRET_SHAPES = re.compile(r"(sk-(?:proj-)?[A-Za-z0-9_-]{20,}|Bearer\s+[A-Za-z0-9._-]{20,})")


def secret_shapes(text: str) -> list[str]:
    """Strings in ``text`` shaped like API keys or bearer tokens, masked for display."""
    return sorted({match[:7] + "..." for match in _SECRET_SHAPES.findall(text)})
