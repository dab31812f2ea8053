"""Which recorded response answers a request, and why none does.

The key of a request is its method, host, path, sorted query, and body in canonical form
(JSON parsed and re-dumped with sorted keys). Headers take no part: the OpenAI SDK sends
per-request ``x-stainless-*`` headers, a retry count among them. Lookup is one dict access,
whatever the size of the cassette. Identical requests replay in recording order; past the
last recording, the last one repeats.

Order is per scope where one is named: an evaluation runs each row in
``replay_scope(<row>)``, recordings made there carry that scope, and a replayed row gets its
own recordings in its own order, whatever the other rows do at the same time.
"""

from __future__ import annotations

import functools
import json
import re
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from toolkit.cassette import Interaction, RecordedRequest

_MISSING = object()


def endpoint(method: str, url: str) -> tuple[str, str, str]:
    """(METHOD, host[:port], path): what a respx route is built on."""
    parts = urlsplit(url)
    return method.upper(), parts.netloc.lower(), parts.path or "/"


def request_key(request: RecordedRequest) -> str:
    return "\n".join((request.method.upper(), _url_key(request.url), _canonical_body(request.body)))


@functools.lru_cache(maxsize=1024)
def _url_key(url: str) -> str:
    """host, path and sorted query of ``url``: parsed once per URL (a client uses a handful)."""
    parts = urlsplit(url)
    query = sorted(parse_qsl(parts.query, keep_blank_values=True))
    return "\n".join((parts.netloc.lower(), parts.path or "/", json.dumps(query)))


#: One encoder for every key: ``json.dumps`` with options builds a new one at each call.
_CANONICAL_JSON = json.JSONEncoder(sort_keys=True, separators=(",", ":"))


def _canonical_body(body: Mapping[str, Any]) -> str:
    if "json" in body:
        return "json:" + _CANONICAL_JSON.encode(body["json"])
    if "text" in body:
        return "text:" + str(body["text"])
    if "base64" in body:
        return "base64:" + str(body["base64"])
    return ""


@dataclass
class ReplayScope:
    """A unit of work (an evaluation row) whose identical requests are counted on their own."""

    name: str
    calls: dict[str, int] = field(default_factory=dict)


_scope: ContextVar[ReplayScope | None] = ContextVar("chainkit_replay_scope", default=None)


@contextmanager
def replay_scope(name: str) -> Iterator[ReplayScope]:
    """Within this context (a thread or task, and what it starts), recordings are tagged
    ``name`` and replay prefers recordings tagged ``name``, counted from the first: a retried
    row starts again from its first recording."""
    scope = ReplayScope(name)
    token = _scope.set(scope)
    try:
        yield scope
    finally:
        _scope.reset(token)


def current_scope() -> ReplayScope | None:
    return _scope.get()


class InteractionIndex:
    """Recorded interactions by key, handing out the n-th recording to the n-th identical call.

    Thread-safe: ``pyfunc.predict`` runs rows in a thread pool, and ``eval`` runs rows
    concurrently.
    """

    def __init__(self, interactions: Iterable[Interaction] = ()) -> None:
        self._positions: dict[str, list[int]] = {}
        self._scoped: dict[tuple[str, str], list[int]] = {}
        self._calls: dict[str, int] = {}
        self._lock = threading.Lock()
        for position, interaction in enumerate(interactions):
            key = request_key(interaction.request)
            self._positions.setdefault(key, []).append(position)
            if interaction.scope is not None:
                self._scoped.setdefault((interaction.scope, key), []).append(position)

    def take(self, key: str) -> int | None:
        """Position of the recording for the next call with ``key``; None if never recorded."""
        calls: dict[str, int] = self._calls
        positions = self._positions.get(key)
        if positions is None:
            return None
        scope = _scope.get() if self._scoped else None
        if scope is not None:
            own = self._scoped.get((scope.name, key))
            if own is not None:
                positions, calls = own, scope.calls
        with self._lock:
            n = calls.get(key, 0)
            calls[key] = n + 1
        return positions[min(n, len(positions) - 1)]


# ------------------------------------------------------------------------ explaining a miss


@dataclass(frozen=True)
class Difference:
    path: str  # "messages[1].content", or "url" / "body" for non-JSON parts
    recorded: Any
    sent: Any

    def __str__(self) -> str:
        recorded, sent = _show_pair(self.recorded, self.sent)
        return f"{self.path}: recorded {recorded}, sent {sent}"

    @property
    def size(self) -> int:
        """How many leaf fields differ: a missing or replaced subtree counts all its fields."""
        return max(_leaves(self.recorded), _leaves(self.sent))


_WIDTH = 80  # characters of a value shown on one line
_BEFORE = 30  # characters shown before the first difference in a long value


def _show(value: Any) -> str:
    if value is _MISSING:
        return "(absent)"
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= _WIDTH else text[: _WIDTH - 3] + "..."


def _show_pair(recorded: Any, sent: Any) -> tuple[str, str]:
    """Both values, each on one line; long ones cut to the same window around their first
    differing character, so that a change late in a long prompt stays visible."""
    if recorded is _MISSING or sent is _MISSING:
        return _show(recorded), _show(sent)
    texts = json.dumps(recorded, ensure_ascii=False), json.dumps(sent, ensure_ascii=False)
    if all(len(text) <= _WIDTH for text in texts):
        return texts
    first = next((i for i, (a, b) in enumerate(zip(*texts, strict=False)) if a != b), min(map(len, texts)))
    start = max(0, first - _BEFORE)
    return _window(texts[0], start), _window(texts[1], start)


def _window(text: str, start: int) -> str:
    end = start + _WIDTH - 6  # room for the two ellipses
    return ("..." if start else "") + text[start:end] + ("..." if end < len(text) else "")


def _leaves(value: Any) -> int:
    if value is _MISSING:
        return 0
    children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else None
    if not children:  # a scalar, or an empty container: one field
        return 1
    return sum(_leaves(child) for child in children)


def json_differences(recorded: Any, sent: Any, path: str = "") -> list[Difference]:
    """Field-level differences between two JSON values, as dotted/indexed paths."""
    if isinstance(recorded, dict) and isinstance(sent, dict):
        out: list[Difference] = []
        for key in list(recorded) + [k for k in sent if k not in recorded]:
            child = f"{path}.{key}" if path else str(key)
            out += json_differences(recorded.get(key, _MISSING), sent.get(key, _MISSING), child)
        return out
    if isinstance(recorded, list) and isinstance(sent, list):
        out = []
        for i in range(max(len(recorded), len(sent))):
            out += json_differences(
                recorded[i] if i < len(recorded) else _MISSING,
                sent[i] if i < len(sent) else _MISSING,
                f"{path}[{i}]",
            )
        return out
    if recorded is sent or (type(recorded) is type(sent) and recorded == sent):
        return []
    return [Difference(path or "(body)", recorded, sent)]


def request_differences(recorded: RecordedRequest, sent: RecordedRequest) -> list[Difference]:
    out = []
    if recorded.method.upper() != sent.method.upper():
        out.append(Difference("method", recorded.method, sent.method))
    if recorded.url != sent.url:
        out.append(Difference("url", recorded.url, sent.url))
    if "json" in recorded.body and "json" in sent.body:
        out += json_differences(recorded.body["json"], sent.body["json"])
    elif _canonical_body(recorded.body) != _canonical_body(sent.body):
        out.append(Difference("(body)", dict(recorded.body), dict(sent.body)))
    return out


def closest(
    sent: RecordedRequest, recorded: Sequence[RecordedRequest]
) -> tuple[int, list[Difference]] | None:
    """The recorded request nearest to ``sent`` (fewest differing leaf fields), same endpoint
    first. A missing or extra subtree counts by its size: in a tool loop, the turn with two
    whole messages fewer is further away than the same turn with a few fields changed."""
    target = endpoint(sent.method, sent.url)
    best: tuple[tuple[bool, int], int, list[Difference]] | None = None
    for position, candidate in enumerate(recorded):
        differences = request_differences(candidate, sent)
        # A different endpoint is worse than any number of differing body fields.
        score = (
            endpoint(candidate.method, candidate.url) != target,
            sum(difference.size for difference in differences),
        )
        if best is None or score < best[0]:
            best = (score, position, differences)
    return None if best is None else (best[1], best[2])


def describe_miss(sent: RecordedRequest, recorded: Sequence[RecordedRequest], limit: int = 8) -> str:
    """Lines that show the closest recorded request and the fields that differ."""
    found = closest(sent, recorded)
    if found is None:
        return "The cassette holds no interactions."
    position, differences = found
    other = recorded[position]
    lines = [f"Closest recorded request: #{position} {other.method} {other.url}, which differs in:"]
    lines += [f"  {difference}" for difference in differences[:limit]]
    if len(differences) > limit:
        lines.append(f"  ... and {len(differences) - limit} more fields")
    return "\n".join(lines)


# ---------------------------------------------------------------- JSON paths left out of matching

#: ``user``, ``metadata.run_id``, ``messages[*].name``, ``messages[0].content`` (a leading ``$.``
#: is allowed): keys separated by dots, ``[*]`` for every element of a list, ``[n]`` for one.
_PATH_PART = re.compile(r"\.?([^.\[\]]+)|\[(\*|\d+)\]")


def parse_json_path(path: str) -> tuple[str | int | None, ...]:
    """``messages[*].name`` -> ("messages", None, "name"); None stands for every element."""
    text = path.strip().removeprefix("$").removeprefix(".")
    parts: list[str | int | None] = []
    position = 0
    while position < len(text):
        match = _PATH_PART.match(text, position)
        if match is None or (position == 0 and match.group(0).startswith(".")):
            raise ValueError(
                f"ignored JSON path {path!r} is not understood at {text[position:]!r}; write keys "
                "separated by dots, [*] for every list element or [n] for one, e.g. messages[*].name"
            )
        key, index = match.groups()
        parts.append(key if key is not None else (None if index == "*" else int(index)))
        position = match.end()
    if not parts:
        raise ValueError("an ignored JSON path is empty; name a field, e.g. user or metadata")
    return tuple(parts)


def ignoring(request: RecordedRequest, paths: Sequence[tuple[str | int | None, ...]]) -> RecordedRequest:
    """``request`` with the JSON ``paths`` (parsed) left out of its body, for matching only."""
    if not paths or "json" not in request.body:
        return request
    value = request.body["json"]
    for path in paths:
        value = _without(value, path)
    return RecordedRequest(request.method, request.url, {"json": value})


def _without(value: Any, path: tuple[str | int | None, ...]) -> Any:
    """A copy of ``value`` without what ``path`` names (``_MISSING``: all of it)."""
    if not path:
        return _MISSING
    head, rest = path[0], path[1:]
    if isinstance(value, dict) and isinstance(head, str):
        if head not in value:
            return value
        out = dict(value)
        inner = _without(value[head], rest)
        if inner is _MISSING:
            del out[head]
        else:
            out[head] = inner
        return out
    if isinstance(value, list) and not isinstance(head, str):
        chosen = range(len(value)) if head is None else [head] if 0 <= head < len(value) else []
        items = list(value)
        for i in reversed(chosen):
            inner = _without(value[i], rest)
            if inner is _MISSING:
                del items[i]
            else:
                items[i] = inner
        return items
    return value
