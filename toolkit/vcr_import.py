"""Import vcrpy / pytest-recording cassettes (YAML or JSON) into chainkit cassettes.

Every vcrpy layout from 4 to 9 is the same document (``version: 1``, ``interactions`` of
``request`` {method, uri, body, headers} and ``response`` {status {code, message}, headers,
body {string}}); what varies is what sits in it, and real cassettes hold all of this:

- bodies as text, as ``!!binary`` bytes, or absent (``null``, ``''``);
- ``content-encoding: gzip`` bodies that really are compressed (vcrpy with requests/urllib3 1.x,
  httpx with vcrpy >= 5), and ones whose header lies: the recorder stored the decoded body
  and kept the header (vcrpy's httpx stubs before 5, urllib3 2 with vcrpy 4.3; kevin1024/vcrpy
  #591, #719). The bytes decide, not the header;
- server-sent event streams, stored whole: chainkit keeps their events, as its own recordings
  do, and replays them event by event;
- header values the source redacted (``X-RATELIMIT-LIMIT-REQUESTS-XXX``, ``REDACTED``): a client
  would parse them as data, so they are left out;
- traffic that is not the OpenAI API (telemetry, package indexes): kept as generic interactions
  (replayed like any other HTTP answer) or dropped, as the caller chooses, and always reported;
- secrets the source forgot to filter: request headers are never imported (chainkit matches no
  header), and key-shaped strings or values of secret variables of the environment in a URL or
  body are replaced by a marker. The report says which.

Each source file becomes ``<DIR>/<file name without extension>.json``; an existing cassette is
merged into (under the folder lock, atomically), never overwritten, and importing the same file
twice adds nothing the second time.
"""

from __future__ import annotations

import base64
import gzip
import json
import re
import zlib
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml  # type: ignore[import-untyped]  # PyYAML ships no stubs (types-PyYAML does)

from toolkit.cassette import (
    Cassette,
    Interaction,
    RecordedRequest,
    RecordedResponse,
    encode_body,
    parse_events,
    recorder_versions,
)
from toolkit.errors import CassetteError, UsageError
from toolkit.recording_log import folder_lock
from toolkit.redaction import (
    SECRET_HEADERS,
    SECRET_SHAPES,  # the key and bearer-token shapes that `secret_shapes` reports
    kept_response_headers,
    marker,
    redact_url,
    scrub_text,
)

try:  # libyaml's parser: several times faster than the pure-Python one
    _Parser: type[yaml.BaseLoader] = yaml.CBaseLoader
except AttributeError:  # pragma: no cover - PyYAML built without libyaml
    _Parser = yaml.BaseLoader

VCR_FORMAT_VERSION = 1
#: What stands where an API-key-shaped string was (no variable of the environment holds it).
KEY_MARKER = marker("api-key")
#: Hosts whose traffic is the OpenAI API (Azure OpenAI included).
_OPENAI_HOSTS = ("api.openai.com", ".openai.azure.com")
#: OpenAI API paths, for OpenAI-compatible servers recorded under another host.
_OPENAI_PATHS = re.compile(
    r"/(chat/completions|completions|responses(/[^/]+)?|embeddings|moderations|models(/[^/]+)?"
    r"|images/(generations|edits|variations)|audio/(speech|transcriptions|translations))$"
)
#: Header values that a source put in place of the real one (vcrpy's filter_headers, crewAI's
#: ``X-...-XXX``, langchain's ``...-DUMMY``, ``REDACTED``, ``<filtered>``, ``****``).
_PLACEHOLDER_VALUE = re.compile(
    r"(?i)^(?:.*-XXX|XXX+|.*-DUMMY|DUMMY|\[?<?(?:REDACTED|FILTERED|HIDDEN|MASKED)>?\]?|\*{3,})$"
)
_GZIP_MAGIC = b"\x1f\x8b"


class OtherHosts(StrEnum):
    """What to do with interactions that are not OpenAI API traffic."""

    KEEP = "keep"
    DROP = "drop"

    @classmethod
    def parse(cls, value: str | OtherHosts) -> OtherHosts:
        try:
            return cls(str(value).lower())
        except ValueError:
            choices = ", ".join(choice.value for choice in cls)
            raise UsageError(f"unknown choice for other hosts {value!r}: use one of {choices}") from None


# ---------------------------------------------------------------------------------- report


class Outcome(StrEnum):
    KEPT = "kept"  # an OpenAI API interaction
    KEPT_GENERIC = "kept-generic"  # another host's, kept as a plain HTTP answer
    DROPPED = "dropped"
    ALREADY_PRESENT = "already-present"  # an earlier import of the same file put it there


@dataclass(frozen=True)
class InteractionNote:
    """What happened to one interaction of the source, and why."""

    index: int
    method: str
    url: str
    status: int
    outcome: Outcome
    notes: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "request": f"{self.method} {self.url}",
            "status": self.status,
            "outcome": self.outcome.value,
            "notes": list(self.notes),
        }


@dataclass(frozen=True)
class ImportReport:
    """One source file's import: where it went and what became of each interaction."""

    source: Path
    target: Path
    interactions: tuple[InteractionNote, ...]
    #: Interactions the target held before this import.
    previously: int = 0
    written: bool = False

    def count(self, outcome: Outcome) -> int:
        return sum(1 for note in self.interactions if note.outcome is outcome)

    @property
    def redactions(self) -> list[str]:
        return [f"#{n.index}: {note}" for n in self.interactions for note in n.notes if "redacted" in note]

    def summary(self) -> str:
        parts = [
            f"{self.count(Outcome.KEPT)} OpenAI interactions",
            f"{self.count(Outcome.KEPT_GENERIC)} other-host interactions kept",
            f"{self.count(Outcome.DROPPED)} dropped",
        ]
        present = self.count(Outcome.ALREADY_PRESENT)
        if present:
            parts.append(f"{present} already present")
        if self.redactions:
            parts.append(f"{len(self.redactions)} secrets redacted")
        where = (
            f"merged into {self.target} ({self.previously} there before)"
            if self.previously
            else (f"written to {self.target}")
        )
        if not self.written:
            where = f"nothing new for {self.target}" if self.previously else f"not written ({self.target})"
        return f"{self.source}: " + ", ".join(parts) + f"; {where}"

    def to_json(self) -> dict[str, Any]:
        return {
            "source": str(self.source),
            "target": str(self.target),
            "written": self.written,
            "previously": self.previously,
            "kept": self.count(Outcome.KEPT),
            "kept_generic": self.count(Outcome.KEPT_GENERIC),
            "dropped": self.count(Outcome.DROPPED),
            "already_present": self.count(Outcome.ALREADY_PRESENT),
            "redactions": self.redactions,
            "interactions": [note.to_json() for note in self.interactions],
        }


# ------------------------------------------------------------------------------ reading vcr


def read_vcr(path: Path) -> list[Mapping[str, Any]]:
    """The raw interactions of a vcrpy cassette (YAML or JSON, optionally gzip-compressed)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise CassetteError(f"{path}: no such file; pass the vcrpy cassettes to import") from None
    except OSError as exc:
        raise CassetteError(f"{path}: cannot read it ({exc.strerror})") from exc
    if raw.startswith(_GZIP_MAGIC):
        raw = gzip.decompress(raw)
    try:
        document = _parse_document(raw)
    except (yaml.YAMLError, ValueError) as exc:
        raise CassetteError(
            f"{path}: not a vcrpy cassette (neither YAML nor JSON: {_first_line(exc)}); pass vcrpy "
            "or pytest-recording cassettes"
        ) from exc
    if not isinstance(document, dict) or not isinstance(document.get("interactions"), list):
        raise CassetteError(
            f"{path}: not a vcrpy cassette (no 'interactions' list); pass vcrpy or pytest-recording cassettes"
        )
    version = document.get("version", VCR_FORMAT_VERSION)
    if str(version) != str(VCR_FORMAT_VERSION):
        raise CassetteError(
            f"{path}: vcrpy cassette format version {version!r} is not supported (vcrpy 1 to 9 write "
            f"version {VCR_FORMAT_VERSION}); re-record it with a current vcrpy"
        )
    return list(document["interactions"])


def _parse_document(raw: bytes) -> Any:
    if raw.lstrip()[:1] in (b"{", b"["):
        try:
            return json.loads(raw)
        except ValueError:
            pass  # JSON is YAML too: let the YAML parser say what is wrong
    return load_yaml(raw)


_BINARY_TAG = "tag:yaml.org,2002:binary"
_NULLS = frozenset({"", "~", "null", "Null", "NULL"})
_NO_KEY = object()


def load_yaml(raw: bytes) -> Any:
    """The first document of ``raw``, built straight from the parser's events.

    A cassette needs only maps, lists, strings, ``null`` and ``!!binary``: building them from
    libyaml's events skips PyYAML's node graph, resolvers and constructors, which are most of
    the time ``yaml.safe_load`` spends (measured: 0.2 s instead of 0.95 s for 3.5 MB). No tag
    constructs anything else; other scalars stay strings, as a cassette's headers are.
    """
    parser = _Parser(raw)
    try:
        containers: list[dict[Any, Any] | list[Any]] = []
        keys: list[Any] = []  # per open container: the key awaiting its value (maps only)
        anchors: dict[str, Any] = {}
        while (event := parser.get_event()) is not None:
            kind = type(event)
            if kind is yaml.ScalarEvent:
                if event.tag == _BINARY_TAG:
                    value: Any = base64.decodebytes(event.value.encode("ascii"))
                elif event.implicit[0] and event.value in _NULLS:
                    value = None
                else:
                    value = event.value
            elif kind is yaml.MappingStartEvent:
                value = {}
            elif kind is yaml.SequenceStartEvent:
                value = []
            elif kind is yaml.AliasEvent:
                value = anchors[event.anchor]
            elif kind is yaml.MappingEndEvent or kind is yaml.SequenceEndEvent:
                done = containers.pop()
                keys.pop()
                if not containers:
                    return done
                continue
            else:  # stream and document boundaries
                continue
            if kind is not yaml.AliasEvent and event.anchor is not None:
                anchors[event.anchor] = value
            if containers:
                parent = containers[-1]
                if type(parent) is list:
                    parent.append(value)
                elif keys[-1] is _NO_KEY:
                    keys[-1] = value
                else:
                    parent[keys[-1]] = value
                    keys[-1] = _NO_KEY
            elif kind is yaml.ScalarEvent or kind is yaml.AliasEvent:
                return value  # a document that is one scalar
            if kind is yaml.MappingStartEvent or kind is yaml.SequenceStartEvent:
                containers.append(value)
                keys.append(_NO_KEY)
        return None
    finally:
        parser.dispose()


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def vcr_format_hint(raw: bytes) -> str | None:
    """If ``raw`` is a vcrpy cassette, a sentence that says so and how to import it."""
    head = raw[:4096].lstrip()
    if raw.startswith(_GZIP_MAGIC):
        return None
    if head.startswith(b"{"):  # vcrpy's JSON: a request has a "uri" (chainkit's has a "url")
        looks = b'"interactions"' in head and b'"uri"' in head and b'"chainkit_cassette"' not in head
    else:
        looks = (head.startswith(b"interactions:") or b"\ninteractions:" in head) and b"uri:" in head
    if not looks:
        return None
    return (
        "this is a vcrpy (or pytest-recording) cassette, not a chainkit one; convert it with "
        "`chainkit cassette import PATH --into DIR` and point at the .json it writes"
    )


# ---------------------------------------------------------------------------- converting


def is_openai(url: str) -> bool:
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    return host.endswith(_OPENAI_HOSTS) or bool(_OPENAI_PATHS.search(parts.path.rstrip("/")))


@dataclass
class _Converter:
    """Turns raw vcrpy interactions into chainkit ones, noting what it changed and why."""

    other_hosts: OtherHosts
    secrets: list[tuple[str, str]] = field(default_factory=list)

    def convert(self, index: int, item: Any) -> tuple[Interaction | None, InteractionNote]:
        notes: list[str] = []
        try:
            request, response = item["request"], item["response"]
            method = str(request["method"]).upper()
            url = str(request["uri"])
            status = _status_of(response.get("status"))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            note = InteractionNote(
                index, "?", "?", 0, Outcome.DROPPED, (f"malformed ({type(exc).__name__}: {exc})",)
            )
            return None, note
        openai = is_openai(url)

        def done(outcome: Outcome, kept: Interaction | None) -> tuple[Interaction | None, InteractionNote]:
            return kept, InteractionNote(index, method, shown_url, status, outcome, tuple(notes))

        shown_url = redact_url(url)
        if shown_url != url:
            notes.append("redacted a credential in the URL's query")
        shown_url = self._scrub(shown_url, "URL", notes)
        if not openai and self.other_hosts is OtherHosts.DROP:
            notes.insert(0, "not OpenAI API traffic (--other-hosts drop)")
            return done(Outcome.DROPPED, None)
        request_headers = _headers_of(request.get("headers"))
        for name in sorted(SECRET_HEADERS & request_headers.keys()):
            if not _PLACEHOLDER_VALUE.match(request_headers[name]):
                notes.append(f"request header {name} held a credential: not imported (redacted)")
        response_headers = _headers_of(response.get("headers"))
        try:
            sent = _decoded(_body_bytes(request.get("body")), request_headers, "request", notes)
            received = _decoded(_body_bytes(_response_body(response)), response_headers, "response", notes)
        except _UndecodableError as exc:
            notes.append(str(exc))
            return done(Outcome.DROPPED, None)
        kept_headers = {}
        for name, value in kept_response_headers(response_headers).items():
            if _PLACEHOLDER_VALUE.match(value):
                notes.append(f"response header {name}: left out, the source replaced its value ({value})")
            else:
                kept_headers[name] = value
        recorded_request = RecordedRequest(method, shown_url, self._scrub_body(sent, "request body", notes))
        if "text/event-stream" in response_headers.get("content-type", ""):
            text = self._scrub(received.decode("utf-8", errors="replace"), "response stream", notes)
            recorded_response = RecordedResponse(status, kept_headers, events=tuple(parse_events(text)))
        else:
            recorded_response = RecordedResponse(
                status, kept_headers, self._scrub_body(received, "response body", notes)
            )
        if not openai:
            notes.insert(0, "not OpenAI API traffic: kept as a generic interaction")
        interaction = Interaction(recorded_request, recorded_response)
        return done(Outcome.KEPT if openai else Outcome.KEPT_GENERIC, interaction)

    def _scrub(self, text: str, where: str, notes: list[str]) -> str:
        if self.secrets:
            text, names = scrub_text(text, self.secrets)
            notes.extend(f"redacted the value of {name} in the {where}" for name in names)
        text, count = SECRET_SHAPES.subn(KEY_MARKER, text)
        if count:
            notes.append(f"redacted {count} key-shaped string{'s' if count > 1 else ''} in the {where}")
        return text

    def _scrub_body(self, content: bytes, where: str, notes: list[str]) -> dict[str, Any]:
        body = encode_body(content)
        if "json" in body or "text" in body:
            kind = "json" if "json" in body else "text"
            text = content.decode("utf-8")
            clean = self._scrub(text, where, notes)
            if clean != text:
                body = encode_body(clean.encode("utf-8")) if kind == "json" else {"text": clean}
        return body


class _UndecodableError(Exception):
    """A body that cannot be turned into what a client would have read."""


def _status_of(status: Any) -> int:
    if isinstance(status, Mapping):
        return int(status["code"])
    return int(status)  # some serializers keep the bare code


def _headers_of(headers: Any) -> dict[str, str]:
    """Lower-cased names; vcrpy >= 1 stores a list of values per name, older ones a string."""
    if not isinstance(headers, Mapping):
        return {}
    out = {}
    for name, value in headers.items():
        if isinstance(value, list):
            value = ", ".join(str(v) for v in value) if value else ""
        out[str(name).lower()] = str(value)
    return out


def _response_body(response: Mapping[str, Any]) -> Any:
    body = response.get("body")
    return body.get("string") if isinstance(body, Mapping) else body


def _body_bytes(body: Any) -> bytes:
    if body is None:
        return b""
    if isinstance(body, bytes):
        return body
    if isinstance(body, Mapping):  # vcrpy < 1 wrote request bodies as {"string": ...} too
        return _body_bytes(body.get("string"))
    return str(body).encode("utf-8")


def _decoded(content: bytes, headers: Mapping[str, str], part: str, notes: list[str]) -> bytes:
    """The body as the client read it: compressed bytes decompressed, a lying header ignored."""
    encoding = headers.get("content-encoding", "").strip().lower()
    if not content or encoding in ("", "identity"):
        return content
    if encoding in ("gzip", "x-gzip"):
        if content.startswith(_GZIP_MAGIC):
            try:
                return gzip.decompress(content)
            except (OSError, EOFError, zlib.error) as exc:
                raise _UndecodableError(f"{part} body is gzip that does not decompress ({exc})") from exc
    elif encoding == "deflate":
        for wbits in (zlib.MAX_WBITS, -zlib.MAX_WBITS):
            try:
                return zlib.decompress(content, wbits)
            except zlib.error:
                continue
    if _is_text(content):
        notes.append(f"{part} header says content-encoding {encoding}, but the body was stored decoded")
        return content
    raise _UndecodableError(f"{part} body is {encoding}-encoded, which chainkit cannot decode: dropped")


def _is_text(content: bytes) -> bool:
    try:
        content.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


# ------------------------------------------------------------------------------- importing


def target_for(source: Path, into: Path) -> Path:
    """``<into>/<source's name without its extensions (.yaml, .yml, .json, .gz)>.json``."""
    name = source.name
    for suffix in (".gz", ".yaml", ".yml", ".json"):
        name = name.removesuffix(suffix)
    return into / f"{name}.json"


def convert(
    interactions: Sequence[Any], *, other_hosts: OtherHosts | str = OtherHosts.KEEP
) -> tuple[list[Interaction], list[InteractionNote]]:
    """vcrpy interactions -> chainkit interactions (those kept) and a note for each."""
    from toolkit.redaction import secret_values

    converter = _Converter(OtherHosts.parse(other_hosts), secret_values())
    kept: list[Interaction] = []
    notes: list[InteractionNote] = []
    for index, item in enumerate(interactions):
        interaction, note = converter.convert(index, item)
        notes.append(note)
        if interaction is not None:
            kept.append(interaction)
    return kept, notes


def import_cassette(
    source: str | Path,
    into: str | Path,
    *,
    other_hosts: OtherHosts | str = OtherHosts.KEEP,
    dry_run: bool = False,
) -> ImportReport:
    """Import one vcrpy cassette into ``<into>/<stem>.json`` (merged into if it exists)."""
    source, into = Path(source), Path(into)
    target = target_for(source, into)
    converted, notes = convert(read_vcr(source), other_hosts=other_hosts)
    if dry_run:
        existing = Cassette.load(target)
        return ImportReport(source, target, tuple(notes), previously=len(existing), written=False)
    with folder_lock(target):
        cassette = Cassette.load(target)
        previously = len(cassette)
        # What an earlier import of this file already put there is not added again; identical
        # interactions within one file are all kept (the n-th call replays the n-th answer).
        present = Counter(_identity(i) for i in cassette.interactions) if previously else Counter()
        new: list[Interaction] = []
        outcomes: dict[int, Outcome] = {}
        kept_notes = (n for n in notes if n.outcome in (Outcome.KEPT, Outcome.KEPT_GENERIC))
        for interaction, note in zip(converted, kept_notes, strict=True):
            if present:
                identity = _identity(interaction)
                if present[identity] > 0:
                    present[identity] -= 1
                    outcomes[note.index] = Outcome.ALREADY_PRESENT
                    continue
            new.append(interaction)
        if new:
            cassette.interactions = [*cassette.interactions, *new]
            if not cassette.recorded_with:
                cassette.recorded_with = {**_chainkit_version(), "imported-from": "vcrpy"}
            cassette.save()
    notes = [
        InteractionNote(n.index, n.method, n.url, n.status, outcomes[n.index], n.notes)
        if n.index in outcomes
        else n
        for n in notes
    ]
    return ImportReport(source, target, tuple(notes), previously=previously, written=bool(new))


def import_cassettes(
    sources: Iterable[str | Path],
    into: str | Path,
    *,
    other_hosts: OtherHosts | str = OtherHosts.KEEP,
    dry_run: bool = False,
) -> list[ImportReport]:
    """Import each source in turn (see :func:`import_cassette`)."""
    return [import_cassette(s, into, other_hosts=other_hosts, dry_run=dry_run) for s in sources]


def _identity(interaction: Interaction) -> str:
    return json.dumps(interaction.to_json(), sort_keys=True, ensure_ascii=False)


def _chainkit_version() -> dict[str, str]:
    return {k: v for k, v in recorder_versions().items() if k == "chainkit"}


__all__ = [
    "ImportReport",
    "InteractionNote",
    "OtherHosts",
    "Outcome",
    "convert",
    "import_cassette",
    "import_cassettes",
    "is_openai",
    "read_vcr",
    "target_for",
    "vcr_format_hint",
]
