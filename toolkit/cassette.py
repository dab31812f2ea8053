"""Cassettes: the recorded HTTP interactions of a chain, on disk as readable JSON.

A cassette file looks like this (bodies are stored parsed, so diffs read like the API)::

    {
      "chainkit_cassette": 1,
      "recorded_with": {"chainkit": "0.1.0", "openai": "3.57.0", "langchain-openai": "1.7.4"},
      "interactions": [
        {"request": {"method": "POST", "url": "https://api.openai.com/v1/chat/completions",
                     "json": {"model": "gpt-4o-mini", "messages": [...]}},
         "response": {"status": 200, "headers": {"content-type": "application/json"},
                      "json": {"id": "chatcmpl-...", ...}}}
      ]
    }

A body is one of ``{"json": value}``, ``{"text": str}``, ``{"base64": str}`` or absent (empty).
A streamed (``text/event-stream``) response keeps its events instead:
``"events": [{"event": "response.created", "data": {...}}, {"data": "[DONE]"}]``.

Writes are atomic (temporary file, fsync, rename): a process killed while saving leaves the
previous cassette whole.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import dataclasses
import gc
import hashlib
import json
import os
import secrets
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from toolkit.errors import CassetteError, ReplayMissError
from toolkit.redaction import check_no_secrets, scrub_text

FORMAT_VERSION = 1
FORMAT_KEY = "chainkit_cassette"
_BODY_KINDS = ("json", "text", "base64")


# ---------------------------------------------------------------------------------- bodies


def encode_body(content: bytes) -> dict[str, Any]:
    """Bytes -> the most readable tagged form: parsed JSON, text, or base64."""
    if not content:
        return {}
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(content).decode("ascii")}
    try:
        return {"json": json.loads(text)}
    except ValueError:
        return {"text": text}


def decode_body(body: Mapping[str, Any]) -> bytes:
    """The tagged form -> the bytes to send (JSON re-serialized compactly, as OpenAI sends it)."""
    if "json" in body:
        return dump_compact(body["json"]).encode("utf-8")
    if "text" in body:
        return str(body["text"]).encode("utf-8")
    if "base64" in body:
        return base64.b64decode(body["base64"], validate=True)
    return b""


def dump_compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


# ---------------------------------------------------------------------------- event streams


@dataclass(frozen=True)
class Event:
    """One server-sent event: its fields as sent, with ``data`` parsed when it is JSON."""

    data: Any
    event: str | None = None
    id: str | None = None

    def encode(self) -> bytes:
        lines = []
        if self.event is not None:
            lines.append(f"event: {self.event}")
        if self.id is not None:
            lines.append(f"id: {self.id}")
        data = self.data if isinstance(self.data, str) else dump_compact(self.data)
        lines.extend(f"data: {line}" for line in data.split("\n"))
        return ("\n".join(lines) + "\n\n").encode("utf-8")

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.event is not None:
            out["event"] = self.event
        if self.id is not None:
            out["id"] = self.id
        out["data"] = self.data
        return out


def parse_events(text: str) -> list[Event]:
    """Split an SSE body into events (comments and blank keep-alives are dropped)."""
    events = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        fields: dict[str, list[str]] = {}
        for line in block.split("\n"):
            if not line or line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            fields.setdefault(name, []).append(value[1:] if value.startswith(" ") else value)
        if "data" not in fields:
            continue
        raw = "\n".join(fields["data"])
        try:
            data: Any = json.loads(raw)
        except ValueError:
            data = raw
        event = fields.get("event", [None])[-1]
        event_id = fields.get("id", [None])[-1]
        events.append(Event(data=data, event=event, id=event_id))
    return events


# ------------------------------------------------------------------------------- records


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    url: str
    body: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"method": self.method, "url": self.url, **self.body}


@dataclass(frozen=True)
class RecordedResponse:
    status: int
    headers: Mapping[str, str] = field(default_factory=dict)
    body: Mapping[str, Any] = field(default_factory=dict)
    events: tuple[Event, ...] | None = None
    #: Why no client could read this recording (found when its cassette was loaded), if so:
    #: replaying it raises this, naming the file and the interaction, instead of handing the
    #: client a body it fails on with its own vaguer error.
    unreplayable: str | None = field(default=None, compare=False, repr=False)

    @property
    def streamed(self) -> bool:
        return self.events is not None

    def chunks(self) -> list[bytes]:
        """The bytes to send: one chunk per event for a stream, else the whole body."""
        if self.unreplayable is not None:
            raise ReplayMissError(self.unreplayable)
        if self.events is not None:
            return [event.encode() for event in self.events]
        return [decode_body(self.body)]

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"status": self.status, "headers": dict(self.headers)}
        if self.events is not None:
            out["events"] = [event.to_json() for event in self.events]
        else:
            out.update(self.body)
        return out


@dataclass(frozen=True)
class Interaction:
    request: RecordedRequest
    response: RecordedResponse
    #: The unit of work that made it (an evaluation row), when one was named: identical
    #: requests then replay per scope, in that scope's own order (see matching.replay_scope).
    scope: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"request": self.request.to_json(), "response": self.response.to_json()}
        if self.scope is not None:
            out["scope"] = self.scope
        return out


# ------------------------------------------------------------------------------ cassette


def recorder_versions() -> dict[str, str]:
    """Versions of the packages whose behaviour shapes a recording."""
    versions = {}
    for dist in ("chainkit", "openai", "langchain-openai", "langchain-core", "mlflow"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return versions


@dataclass
class Cassette:
    """The interactions of one cassette file, in recording order."""

    path: Path
    interactions: list[Interaction] = field(default_factory=list)
    recorded_with: dict[str, str] = field(default_factory=dict)
    exists: bool = False
    #: sha256 of the bytes loaded or last saved: tells whether someone else wrote the file since.
    content_sha256: str | None = None

    def __iter__(self) -> Iterator[Interaction]:
        return iter(self.interactions)

    def __len__(self) -> int:
        return len(self.interactions)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Cassette:
        """Load ``path``; a missing file is an empty cassette with ``exists=False``."""
        path = Path(path)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return cls(path=path)
        except OSError as exc:
            raise CassetteError(f"{path}: cannot read the cassette ({exc.strerror})") from exc
        return cls.from_bytes(path, raw)

    @classmethod
    def from_bytes(cls, path: Path, raw: bytes) -> Cassette:
        # Parsing builds millions of small objects that all live on: the cyclic collector would
        # scan them again and again for nothing (half the load time of a 10,000-entry file).
        collecting = gc.isenabled()
        gc.disable()
        try:
            return cls._parse(path, raw)
        finally:
            if collecting:
                gc.enable()

    @classmethod
    def _parse(cls, path: Path, raw: bytes) -> Cassette:
        try:
            document = json.loads(raw)
        except UnicodeDecodeError as exc:
            raise CassetteError(
                f"{path}: not UTF-8 text at byte {exc.start}; restore it from git or re-record it "
                "with --record-mode all"
            ) from exc
        except json.JSONDecodeError as exc:
            _refuse_foreign(path, raw)
            raise CassetteError(
                f"{path}:{exc.lineno}:{exc.colno}: not valid JSON ({exc.msg}); the file is "
                "truncated or was edited by hand: restore it from git or re-record it with "
                "--record-mode all"
            ) from exc
        if not isinstance(document, dict) or FORMAT_KEY not in document:
            _refuse_foreign(path, raw)
            raise CassetteError(
                f"{path}: not a chainkit cassette (no '{FORMAT_KEY}' field); point at a file "
                "written by chainkit or re-record it"
            )
        version = document[FORMAT_KEY]
        if version != FORMAT_VERSION:
            raise CassetteError(
                f"{path}: cassette format {version!r} is not supported by this chainkit (it reads "
                f"format {FORMAT_VERSION}); upgrade chainkit or re-record the cassette"
            )
        items = document.get("interactions")
        if not isinstance(items, list):
            raise CassetteError(f"{path}: 'interactions' must be a list of recorded requests")
        interactions = [interaction_from_json(path, n, item) for n, item in enumerate(items)]
        recorded_with = document.get("recorded_with") or {}
        return cls(
            path=path,
            interactions=interactions,
            recorded_with=dict(recorded_with),
            exists=True,
            content_sha256=hashlib.sha256(raw).hexdigest(),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            FORMAT_KEY: FORMAT_VERSION,
            "recorded_with": self.recorded_with,
            "interactions": [interaction.to_json() for interaction in self.interactions],
        }

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=1, ensure_ascii=False) + "\n"

    def save(self) -> None:
        """Write atomically, after checking that no secret from the environment is in it."""
        text = self.dumps()
        check_no_secrets(text, self.path)
        data = text.encode("utf-8")
        atomic_write(self.path, data)
        self.exists = True
        self.content_sha256 = hashlib.sha256(data).hexdigest()

    def sha256(self) -> str | None:
        return file_sha256(self.path)


def _refuse_foreign(path: Path, raw: bytes) -> None:
    """Say what a file of another recorder's format is, instead of calling it broken."""
    from toolkit.vcr_import import vcr_format_hint  # late: the importer builds on this module

    hint = vcr_format_hint(raw)
    if hint is not None:
        raise CassetteError(f"{path}: {hint}")


def interaction_from_json(path: Path, n: int, item: Any) -> Interaction:
    where = f"{path}: interaction #{n}"
    try:
        request, response = item["request"], item["response"]
        recorded_request = RecordedRequest(
            method=str(request["method"]).upper(), url=str(request["url"]), body=_body_of(request)
        )
        events = response.get("events")
        recorded_response = RecordedResponse(
            status=int(response["status"]),
            headers={str(k).lower(): str(v) for k, v in (response.get("headers") or {}).items()},
            body=_body_of(response),
            events=None if events is None else tuple(_event_from_json(e) for e in events),
        )
        if "base64" in recorded_response.body or "base64" in recorded_request.body:
            decode_body(recorded_response.body)
            decode_body(recorded_request.body)
        unreplayable = _unreplayable(where, recorded_request, recorded_response)
        if unreplayable is not None:
            recorded_response = dataclasses.replace(recorded_response, unreplayable=unreplayable)
    except (KeyError, TypeError, ValueError, AttributeError, binascii.Error) as exc:
        raise CassetteError(
            f"{where} is malformed ({type(exc).__name__}: {exc}); fix it by hand or re-record "
            "the cassette with --record-mode all"
        ) from exc
    scope = item.get("scope")
    return Interaction(recorded_request, recorded_response, None if scope is None else str(scope))


def _unreplayable(where: str, request: RecordedRequest, response: RecordedResponse) -> str | None:
    """Why no client could use ``response``, if so: a successful JSON answer with nothing in it
    (no body, an empty text, a JSON null) was cut or edited by hand; an API that means
    "nothing" answers 204."""
    body = response.body
    if body and body.get("json", "") is not None and body.get("text") != "":
        return None  # the usual case, decided first (loading 10,000 interactions runs this)
    content_type = response.headers.get("content-type", "")
    if (
        response.events is not None
        or not 200 <= response.status < 300
        or response.status in (204, 205)
        or request.method == "HEAD"
        or "json" not in content_type
    ):
        return None
    return (
        f"{where} ({request.method} {request.url}) recorded a {response.status} {content_type} "
        f"response whose body is {'null' if 'json' in body else 'empty'}, which no client can "
        "use; delete that interaction and record it again (--record-mode new_episodes), or "
        "re-record the cassette (--record-mode all)"
    )


def _body_of(part: Mapping[str, Any]) -> dict[str, Any]:
    return {kind: part[kind] for kind in _BODY_KINDS if kind in part}


def _event_from_json(item: Mapping[str, Any]) -> Event:
    return Event(data=item["data"], event=item.get("event"), id=item.get("id"))


# ---------------------------------------------------------------------------- file helpers


def atomic_write(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that readers see the old file or the new, never half.

    A symlink is written through: its final target is replaced (the temp file sits beside the
    target, so the rename stays on one file system) and the link is left as it was. A new file
    gets mode 0o666 less the umask, applied by the kernel (reading the umask would change it for
    every thread of the process); a replaced file keeps its mode."""
    path = Path(os.path.realpath(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temp(path)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            if path.exists():
                os.fchmod(handle.fileno(), path.stat().st_mode & 0o777)
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _create_temp(path: Path) -> tuple[int, str]:
    """A new, exclusively created file beside ``path``, mode 0o666 less the umask (mkstemp's
    0o600 would make every cassette private)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    while True:
        tmp = str(path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue


def file_sha256(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except FileNotFoundError:
        return None


# ------------------------------------------------------------------------ replay usage


def usage_path(cassette_path: Path) -> Path:
    """Where the indices replayed since the cassette last changed are kept (a side file that
    :func:`ignore_side_files` keeps out of git)."""
    return cassette_path.with_name(f".{cassette_path.name}.usage")


def load_usage(cassette_path: Path) -> set[int] | None:
    """Interaction indices replayed since the cassette's current content was written; None
    when nothing says (no replay since it last changed)."""
    try:
        usage = json.loads(usage_path(cassette_path).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(usage, dict) or usage.get("sha256") != file_sha256(cassette_path):
        return None
    return {int(i) for i in usage.get("used", [])}


def add_usage(cassette_path: Path, used: Iterable[int]) -> None:
    """Merge ``used`` into the usage file; best effort (a read-only checkout is fine)."""
    merged = (load_usage(cassette_path) or set()) | set(used)
    document = {"sha256": file_sha256(cassette_path), "used": sorted(merged)}
    text, _ = scrub_text(json.dumps(document))  # indices and a digest; scrubbed like every write
    with contextlib.suppress(OSError):
        ignore_side_files(cassette_path.parent)
        atomic_write(usage_path(cassette_path), text.encode("utf-8"))


# ------------------------------------------------------------------------ side files and git

#: The ``.gitignore`` chainkit leaves in a folder where it writes side files beside cassettes.
SIDE_FILES_GITIGNORE = """\
# Written by chainkit beside its cassettes. Commit the cassettes (*.json), not these:
# replay usage notes (for `chainkit cassette prune`), recordings not yet folded into their
# cassette (a session in progress, or killed), and the temporary file of an interrupted save.
.*.usage
.*.recording
.*.tmp
"""


def ignore_side_files(folder: Path) -> None:
    """Leave a ``.gitignore`` for chainkit's side files in ``folder``, as pytest does in
    ``.pytest_cache``; a folder that has one keeps it, untouched. Best effort: a read-only
    folder is fine."""
    path = folder / ".gitignore"
    if path.exists() or path.is_symlink():
        return
    with contextlib.suppress(OSError):  # FileExistsError included: never over another's
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(SIDE_FILES_GITIGNORE)
