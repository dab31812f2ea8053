"""The evaluation journal: every finished row, written the moment it finishes.

A SQLite file per MLflow run (``.chainkit/runs/<run_id>.sqlite``): one committed insert per
row, so a job killed at any moment (SIGKILL included) keeps every row it finished, and
``--resume`` skips them. Reading back is ordered by row index, streaming: the final table is
in dataset order whatever order rows finished in, without holding it in memory.

What is written is scrubbed first (``toolkit.redaction.scrub``): the value of a secret from the
environment never reaches the file (nor its write-ahead log), only ``[REDACTED:NAME]``.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from toolkit.redaction import scrub, scrub_text


class Journal:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, isolation_level=None)  # autocommit: each insert durable
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL: a committed row survives a killed process (not a power cut): what resume needs.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS rows (idx INTEGER PRIMARY KEY, result TEXT NOT NULL)")
        self._db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def get_meta(self, key: str) -> str | None:
        found = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if found is None else str(found[0])

    def set_meta(self, key: str, value: str) -> None:
        """Stored scrubbed: compare what ``get_meta`` returns with ``scrub_text(value)[0]``."""
        self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, scrub_text(value)[0]))

    def is_done(self, index: int) -> bool:
        return self._db.execute("SELECT 1 FROM rows WHERE idx = ?", (index,)).fetchone() is not None

    def done(self) -> set[int]:
        """The index of every finished row, in one query (a batch round skips them all)."""
        return {int(idx) for (idx,) in self._db.execute("SELECT idx FROM rows")}

    def count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM rows").fetchone()[0])

    def write(self, index: int, result: dict[str, Any]) -> None:
        clean, _ = scrub(result)
        self._db.execute(
            "INSERT OR REPLACE INTO rows VALUES (?, ?)",
            (index, json.dumps(clean, ensure_ascii=False, default=str)),
        )

    def results(self) -> Iterator[dict[str, Any]]:
        """Every finished row, in dataset order."""
        for (text,) in self._db.execute("SELECT result FROM rows ORDER BY idx"):
            yield json.loads(text)
