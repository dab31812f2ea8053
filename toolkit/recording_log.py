"""Recordings made but not yet in the cassette, durable from the moment their response is read.

A cassette is rewritten whole when a session closes. A live answer is paid for long before
that, so each recording session also appends every interaction it records to a log of its own
beside the cassette (``.qa.json.<pid>-<random>.recording``, JSON lines, each line written with
one ``write`` and fsync'd; a folder with no ``.gitignore`` gets one that keeps the logs out of
git) and holds an exclusive ``flock`` on that log while it lives. On a clean close the
recordings go into the cassette and the log is deleted. A session killed with SIGKILL leaves
its log behind, and the kernel drops its lock: the next session that opens the cassette (a
re-run, ``--resume``, ``chainkit cassette check``) finds logs whose lock it can take, folds
them into the cassette and deletes them. A log is deleted only once its recordings are in a
saved cassette, so a failed save (a read-only folder, a secret refused) loses nothing.

Every write that changes a cassette (a close, a fold) holds a lock on the cassette's folder, so
two processes recording into one cassette merge instead of overwriting each other.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from toolkit.cassette import Cassette, Interaction, ignore_side_files, interaction_from_json
from toolkit.errors import CassetteError, SecretLeakError
from toolkit.matching import request_key
from toolkit.redaction import check_no_secrets

LOG_FORMAT = 1
_SUFFIX = ".recording"


def log_paths(cassette_path: Path) -> list[Path]:
    """Every recording log beside ``cassette_path``, live or left by a killed session."""
    folder = cassette_path.parent
    try:
        names = os.listdir(folder)
    except OSError:  # no folder (yet): no logs
        return []
    prefix = f".{cassette_path.name}."
    return sorted(folder / name for name in names if name.startswith(prefix) and name.endswith(_SUFFIX))


@contextlib.contextmanager
def folder_lock(cassette_path: Path) -> Iterator[None]:
    """Exclusive, across processes, for whoever rewrites a cassette in this folder.

    The lock is on the folder itself (Linux and macOS lock a directory's descriptor like a
    file's): no lock file is left behind, and a read-only folder can still be locked.
    """
    folder = cassette_path.resolve().parent  # a symlinked cassette is written in its target's folder
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def merge(
    base: Sequence[Interaction], new: Sequence[Interaction], *, replace: bool
) -> tuple[list[Interaction], dict[int, int]]:
    """``base`` followed by ``new``; with ``replace`` (record mode all), the recordings in
    ``base`` of a request that ``new`` re-recorded are dropped. An error answer that a later
    answer to the same request followed was retried: it is dropped too. Returns the merged
    list and where each kept position of ``base`` moved."""
    new = _without_retried(new)
    replaced = {request_key(i.request) for i in new} if replace else set()
    kept = [(position, i) for position, i in enumerate(base) if request_key(i.request) not in replaced]
    moved = {old: position for position, (old, _) in enumerate(kept)}
    return [i for _, i in kept] + list(new), moved


def _without_retried(new: Sequence[Interaction]) -> list[Interaction]:
    later: set[tuple[str | None, str]] = set()
    kept: list[Interaction] = []
    for interaction in reversed(new):
        key = (interaction.scope, request_key(interaction.request))
        if not (interaction.response.status >= 400 and key in later):
            kept.append(interaction)
        later.add(key)
    kept.reverse()
    return kept


class RecordingLog:
    """The append-only log of one recording session (see the module docstring)."""

    def __init__(self, cassette_path: Path, *, replace: bool) -> None:
        self.cassette_path = cassette_path
        self.path = cassette_path.with_name(
            f".{cassette_path.name}.{os.getpid()}-{secrets.token_hex(4)}{_SUFFIX}"
        )
        self._lock = threading.Lock()
        try:
            cassette_path.parent.mkdir(parents=True, exist_ok=True)
            self._fd: int | None = os.open(
                self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644
            )
            ignore_side_files(cassette_path.parent)  # logs left by a killed session stay out of git
        except OSError as exc:
            raise CassetteError(
                f"cannot record into {cassette_path}: {exc.strerror} in {cassette_path.parent}; make the "
                "folder writable, or replay only (--record-mode none)"
            ) from exc
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        self._write({"chainkit_recording_log": LOG_FORMAT, "replace": replace})

    def append(self, interaction: Interaction) -> bool:
        """Make ``interaction`` durable; False (nothing written) if it holds a secret: the
        cassette's own save then refuses it too, naming the variable."""
        document = interaction.to_json()
        try:
            check_no_secrets(json.dumps(document, ensure_ascii=False), self.path)
        except SecretLeakError:  # never on disk, not even here
            return False
        self._write(document)
        return True

    def _write(self, document: dict[str, Any]) -> None:
        line = (json.dumps(document, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")
        with self._lock:
            if self._fd is None:
                return
            os.write(self._fd, line)  # O_APPEND: one write is one whole line
            fd = self._fd
        os.fsync(fd)  # outside the lock: concurrent recorders share the disk flushes

    def close(self, *, delete: bool) -> None:
        """Release the log; ``delete`` once its recordings are in a saved cassette. A log that
        is kept is folded in by the next session that opens the cassette."""
        with self._lock:
            fd, self._fd = self._fd, None
        if fd is None:
            return
        if delete:
            self.path.unlink(missing_ok=True)
        os.close(fd)


def read_log(path: Path) -> tuple[bool, list[Interaction]]:
    """(replace, interactions) of a log; a line cut short by a kill is ignored."""
    replace, interactions = False, []
    with path.open("rb") as handle:
        for n, raw in enumerate(handle):
            if not raw.endswith(b"\n"):
                break  # the process died in the middle of this write
            try:
                document = json.loads(raw)
            except ValueError:
                continue
            if n == 0 and isinstance(document, dict) and "chainkit_recording_log" in document:
                replace = bool(document.get("replace"))
                continue
            try:
                interactions.append(interaction_from_json(path, n, document))
            except CassetteError:
                continue
    return replace, interactions


def _identity(interaction: Interaction) -> str:
    return json.dumps(interaction.to_json(), sort_keys=True)


def _claim(path: Path) -> int | None:
    """A descriptor holding ``path``'s lock if no live session holds it, else None."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def open_cassette(path: Path) -> tuple[Cassette, int]:
    """Load the cassette at ``path`` with whatever killed sessions left in their logs folded in
    (and saved, when the folder is writable). Returns the cassette and how many recordings
    were recovered."""
    if not log_paths(path):  # the usual case: one directory listing
        return Cassette.load(path), 0
    with folder_lock(path):
        claimed = [(log, fd) for log in log_paths(path) if (fd := _claim(log)) is not None]
        try:
            cassette = Cassette.load(path)
            recovered = 0
            for log, _ in claimed:
                replace, interactions = read_log(log)
                # A kill between a close's save and its log's deletion leaves a log whose
                # recordings are already in the cassette: do not add them twice.
                present = {_identity(i) for i in cassette.interactions}
                interactions = [i for i in interactions if _identity(i) not in present]
                cassette.interactions, _ = merge(cassette.interactions, interactions, replace=replace)
                recovered += len(interactions)
            if recovered:
                try:
                    cassette.save()
                except (OSError, SecretLeakError):
                    return cassette, recovered  # not writable now: replay them, keep the logs
            for log, _ in claimed:
                log.unlink(missing_ok=True)
            return cassette, recovered
        finally:
            for _, fd in claimed:
                os.close(fd)


__all__ = ["RecordingLog", "folder_lock", "log_paths", "merge", "open_cassette", "read_log"]
