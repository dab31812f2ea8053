"""Keep secrets out of everything chainkit writes.

Two layers. First, what is recorded is chosen, not filtered: request headers are never stored,
and a response keeps only the headers a client reads (content type, request id, rate limits,
retry hints). Credentials in a URL's query string are masked. Second, what is written is
searched for the values of the secrets present in the environment (see ``secret_values``: every
variable whose name says key, token, secret, password, credential, webhook or DSN, and every URL
with a password in it, whatever its variable's name). A cassette that holds one is refused (a
redacted recording would replay a wrong answer); everything else chainkit writes (the
evaluation journal, MLflow artifacts, tags, params, assessments and traces, usage files) goes
through ``scrub``, which puts ``[REDACTED:NAME]`` where the value was. Both name the variable,
never the value.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any
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
#: Names that say "secret": KEY as a word or suffix (API_KEY, APIKEY, AWS_ACCESS_KEY_ID, not
#: KEYRING_BACKEND), the rest anywhere (SLACK_WEBHOOK_URL, PGPASSWORD); PASS and PWD only as
#: words (DB_PASS, MYSQL_PWD), never the shell's PWD (the current directory).
_SECRET_VARIABLE = re.compile(
    r"(?i)(KEYS?(?![A-Z])|SECRET|TOKEN|PASSWORD|PASSWD|CREDENTIAL|WEBHOOK|DSN(?![A-Z])"
    r"|(?<![A-Z])PASS(?![A-Z])|_PWD(?![A-Z]))"
)
#: ... but a variable that names where a secret is kept holds a path, not the secret.
_LOCATION_VARIABLE = re.compile(r"(?i)_(DIR|PATH|FILE|HOME)$")
#: scheme://user:password@host..., in any variable's value (DATABASE_URL, HTTPS_PROXY, ...).
_CREDENTIAL_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s/:@]*:([^\s/@]+)@[^\s,;]+")
#: Shorter values are too likely to occur by chance ("true", a port number) to search for.
_MIN_SECRET_LENGTH = 8
#: Set as OPENAI_API_KEY while replaying without a key (toolkit.replay): known to all, no secret.
PLACEHOLDER_API_KEY = "chainkit-replay-placeholder"


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


def is_secret_name(name: str) -> bool:
    """Whether a variable's name says it holds a secret."""
    return bool(_SECRET_VARIABLE.search(name)) and not _LOCATION_VARIABLE.search(name)


def environment_secrets(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Variables that hold secrets (by name, or a URL with a password in the value), with
    values long enough to search for."""
    environ = os.environ if environ is None else environ
    return {
        name: value
        for name, value in environ.items()
        if len(value) >= _MIN_SECRET_LENGTH
        and value != PLACEHOLDER_API_KEY
        and (is_secret_name(name) or _credential_urls(value))
    }


def _credential_urls(value: str) -> list[tuple[str, str]]:
    """(url, password) of each URL with a password in ``value``."""
    if "://" not in value or "@" not in value:  # most values: skip the regex
        return []
    return [(match[0], match[1]) for match in _CREDENTIAL_URL.finditer(value)]


#: The process environment's raw contents and its secret values, computed from them.
_cached: tuple[dict[bytes, bytes], list[tuple[str, str]]] | None = None


def secret_values(environ: Mapping[str, str] | None = None) -> list[tuple[str, str]]:
    """(value, variable) pairs to search for, longest value first: each secret variable's
    value, and of each URL with a password, the URL and the password alone."""
    global _cached
    # Reading os.environ decodes every variable (~1 ms here, per written row); its raw bytes
    # compare in microseconds, so the process environment is read again only once it changed.
    raw = getattr(os.environ, "_data", None) if environ is None else None
    if isinstance(raw, dict):
        cached = _cached
        if cached is not None and cached[0] == raw:
            return cached[1]
        values = _secret_values(os.environ)
        _cached = (dict(raw), values)
        return values
    return _secret_values(environ)


def _secret_values(environ: Mapping[str, str] | None) -> list[tuple[str, str]]:
    found: dict[str, str] = {}
    for name, value in sorted(environment_secrets(environ).items()):
        found.setdefault(value, name)
        for url, password in _credential_urls(value):
            found.setdefault(url, name)
            if len(password) >= _MIN_SECRET_LENGTH:
                found.setdefault(password, name)
    return sorted(((value, name) for value, name in found.items()), key=lambda pair: -len(pair[0]))


def marker(name: str) -> str:
    """What stands where the value of the variable ``name`` was."""
    return f"[REDACTED:{name}]"


def scrub_text(text: str, secrets: list[tuple[str, str]] | None = None) -> tuple[str, list[str]]:
    """``text`` with each secret value replaced by its marker, and the variables replaced."""
    secrets = secret_values() if secrets is None else secrets
    names = []
    for value, name in secrets:
        if value in text:
            text = text.replace(value, marker(name))
            names.append(name)
    return text, sorted(set(names))


def scrub(value: Any, secrets: list[tuple[str, str]] | None = None) -> tuple[Any, list[str]]:
    """JSON-like ``value`` (dict keys too) with every secret value replaced by its marker, and
    the variables replaced (empty: nothing was). Another object is returned as is, unless its
    text holds a secret: then its text, scrubbed (it would be written as ``str(value)``)."""
    secrets = secret_values() if secrets is None else secrets
    names: set[str] = set()

    def walk(item: Any) -> Any:
        if isinstance(item, str):
            text, found = scrub_text(item, secrets)
            names.update(found)
            return text
        if isinstance(item, dict):
            return {walk(key): walk(inner) for key, inner in item.items()}
        if isinstance(item, list | tuple):
            return [walk(inner) for inner in item]
        if item is None or isinstance(item, bool | int | float):
            return item
        text, found = scrub_text(str(item), secrets)
        if not found:
            return item
        names.update(found)
        return text

    if not secrets:
        return value, []
    return walk(value), sorted(names)


def redact_span(span: Any) -> None:
    """An MLflow span processor (``mlflow.tracing.configure(span_processors=[redact_span])``):
    the span's name, attributes (inputs and outputs included), events and status message,
    scrubbed when the span ends, before anything exports it."""
    secrets = secret_values()
    if not secrets:
        return
    for key, value in span.attributes.items():
        clean, found = scrub(value, secrets)
        if found:
            span.set_attribute(key, clean)
    # MLflow's LiveSpan has no setter for these: they are the OpenTelemetry span's own.
    otel = span._span
    name, found = scrub_text(otel.name, secrets)
    if found:
        otel.update_name(name)
    status = otel.status
    if status.description:
        description, found = scrub_text(status.description, secrets)
        if found:
            from opentelemetry.trace import Status

            otel.set_status(Status(status.status_code, description))
    events, changed = [], False
    for event in otel.events:
        (name, attributes), found = scrub([event.name, dict(event.attributes or {})], secrets)
        changed = changed or bool(found)
        events.append((name, attributes, event.timestamp))
    if changed:  # an exception's message, a streamed token
        from opentelemetry.sdk.trace import Event
        from opentelemetry.sdk.util import BoundedList

        otel._events = BoundedList.from_seq(None, [Event(n, a, t) for n, a, t in events])


def check_no_secrets(text: str, path: Path, environ: Mapping[str, str] | None = None) -> None:
    """Refuse to write ``text`` to ``path`` if it contains the value of a secret variable
    (as is, or escaped as in a JSON string)."""
    leaked = sorted(
        {
            name
            for value, name in secret_values(environ)
            if value in text or json.dumps(value, ensure_ascii=False)[1:-1] in text
        }
    )
    if leaked:
        raise SecretLeakError(
            f"refused to write {path}: it would contain the value of {', '.join(leaked)}; "
            "remove the secret from the request (a prompt, a URL) and record again"
        )


#: Shapes of credentials worth flagging even when their value is not in the environment.
#: The shapes of API keys and bearer tokens, found even where no variable names them.
SECRET_SHAPES = re.compile(r"(sk-(?:proj-)?[A-Za-z0-9_-]{20,}|Bearer\s+[A-Za-z0-9._-]{20,})")


def secret_shapes(text: str) -> list[str]:
    """Strings in ``text`` shaped like API keys or bearer tokens, masked for display."""
    return sorted({match[:7] + "..." for match in SECRET_SHAPES.findall(text)})
