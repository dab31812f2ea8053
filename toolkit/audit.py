"""Looking into cassettes: a readable summary, a health check, and pruning unused recordings."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from toolkit.cassette import Cassette, Interaction, load_usage, usage_path
from toolkit.errors import CassetteError, SecretLeakError
from toolkit.recording_log import open_cassette
from toolkit.redaction import check_no_secrets, secret_shapes


@dataclass(frozen=True)
class Row:
    """One interaction, summarized for a table."""

    index: int
    method: str
    path: str
    model: str
    prompt: str
    status: int
    streamed: bool
    used: bool | None  # None: no replay run recorded since the cassette last changed

    def cells(self) -> list[str]:
        used = "?" if self.used is None else ("yes" if self.used else "no")
        return [
            str(self.index),
            f"{self.method} {self.path}",
            self.model,
            self.prompt,
            str(self.status),
            "yes" if self.streamed else "no",
            used,
        ]


HEADERS = ["#", "endpoint", "model", "prompt", "status", "streamed", "used"]


def prompt_of(body: Any, words: int = 8) -> str:
    """The first words of what was asked: the last user message, the input, or the prompt."""
    text = ""
    if isinstance(body, dict):
        messages = body.get("messages")
        if isinstance(messages, list) and messages:
            users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
            last = users[-1] if users else messages[-1]
            text = _content_text(last.get("content") if isinstance(last, dict) else "")
        elif "input" in body:
            value = body["input"]
            if isinstance(value, list) and value and isinstance(value[-1], dict):
                value = value[-1].get("content", "")
            text = _content_text(value)
        elif "prompt" in body:
            text = _content_text(body["prompt"])
    parts = " ".join(text.split()).split(" ")
    return " ".join(parts[:words]) + (" ..." if len(parts) > words else "")


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            _content_text(part.get("text", "") if isinstance(part, dict) else part) for part in content
        )
    return "" if content is None else str(content)


def rows(cassette: Cassette) -> list[Row]:
    usage = load_usage(cassette.path)
    return [_row(n, interaction, usage) for n, interaction in enumerate(cassette)]


def _row(n: int, interaction: Interaction, usage: set[int] | None) -> Row:
    request, response = interaction.request, interaction.response
    body = request.body.get("json")
    model = str(body.get("model", "")) if isinstance(body, dict) else ""
    return Row(
        n,
        request.method,
        urlsplit(request.url).path,
        model,
        prompt_of(body),
        response.status,
        response.streamed,
        None if usage is None else n in usage,
    )


@dataclass
class CheckReport:
    path: Path
    interactions: int = 0
    problems: list[str] = field(default_factory=list)  # make `check` fail
    unused: list[int] | None = None  # None: unknown (no replay run since it last changed)
    #: Recorded error answers (index, status): kept only with --record-errors; worth a look.
    error_answers: list[tuple[int, int]] = field(default_factory=list)
    #: Recordings a killed session had left in its log, folded in by this check.
    recovered: int = 0

    def notes(self) -> list[str]:
        """What is worth knowing but does not fail the check."""
        out = []
        if self.recovered:
            out.append(f"{self.path}: folded in {self.recovered} recordings an interrupted session left")
        if self.error_answers:
            listed = ", ".join(f"#{n} ({status})" for n, status in self.error_answers)
            out.append(
                f"{self.path}: {len(self.error_answers)} recorded error answers: {listed}; they replay as "
                "errors: re-record them (--record-mode all) unless they were recorded on purpose"
            )
        return out

    @property
    def ok(self) -> bool:
        return not self.problems


def check(path: Path) -> CheckReport:
    """Validate a cassette: it loads, holds no secrets, and which recordings no replay used."""
    report = CheckReport(path)
    try:
        cassette, report.recovered = open_cassette(path)
    except CassetteError as exc:
        report.problems.append(str(exc))
        return report
    if not cassette.exists:
        report.problems.append(f"{path}: no such cassette; record it with --record-mode once")
        return report
    report.interactions = len(cassette)
    report.problems += [i.response.unreplayable for i in cassette if i.response.unreplayable is not None]
    report.error_answers = [(n, i.response.status) for n, i in enumerate(cassette) if i.response.status > 399]
    text = path.read_text(encoding="utf-8")
    try:
        check_no_secrets(text, path)
    except SecretLeakError as exc:
        report.problems.append(str(exc).replace("refused to write", "secret found in"))
    for shape in secret_shapes(text):
        report.problems.append(
            f"{path}: holds something shaped like a credential ({shape}); remove it and re-record"
        )
    used = load_usage(path)
    if used is not None:
        report.unused = [n for n in range(len(cassette)) if n not in used]
    return report


def prune(path: Path) -> tuple[int, int]:
    """Drop the recordings no replay used since the cassette last changed: (kept, dropped)."""
    cassette = Cassette.load(path)
    if not cassette.exists:
        raise CassetteError(f"{path}: no such cassette")
    used = load_usage(path)
    if not used:
        raise CassetteError(
            f"{path}: no replay has used this cassette since it last changed, so nothing says "
            "which recordings are needed; run the tests or chains that use it, then prune"
        )
    kept = [i for n, i in enumerate(cassette) if n in used]
    dropped = len(cassette) - len(kept)
    if dropped:
        cassette.interactions = kept
        cassette.save()
        usage_path(path).unlink(missing_ok=True)
    return len(kept), dropped
