"""toolkit.journal: one durable SQLite row per finished dataset row, read back in index order."""

from __future__ import annotations

import inspect
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from toolkit.journal import Journal


def result(index: int, **extra: object) -> dict[str, object]:
    return {"index": index, "output": f"answer {index}", "scores": {"exact_match": index % 2 == 0}, **extra}


def test_results_come_back_in_index_order_whatever_the_write_order(tmp_path: Path) -> None:
    order = [7, 2, 9, 0, 4, 1, 8, 3, 6, 5]
    with Journal(tmp_path / "run.sqlite") as journal:
        for index in order:
            journal.write(index, result(index))

        rows = journal.results()
        assert inspect.isgenerator(rows)  # streamed, not a list
        assert [row["index"] for row in rows] == list(range(10))
        assert journal.count() == 10


def test_is_done_and_count(tmp_path: Path) -> None:
    with Journal(tmp_path / "run.sqlite") as journal:
        assert journal.count() == 0
        assert not journal.is_done(0)

        journal.write(3, result(3))
        journal.write(0, result(0))

        assert journal.is_done(3)
        assert journal.is_done(0)
        assert not journal.is_done(1)
        assert journal.count() == 2


def test_results_round_trip_json(tmp_path: Path) -> None:
    value = {"output": "café ☕", "nested": {"list": [1, 2.5, None, True]}, "path": Path("/x/y")}
    with Journal(tmp_path / "run.sqlite") as journal:
        journal.write(0, value)

        assert list(journal.results()) == [
            {"output": "café ☕", "nested": {"list": [1, 2.5, None, True]}, "path": "/x/y"}  # default=str
        ]


def test_writing_the_same_index_again_keeps_one_row(tmp_path: Path) -> None:
    with Journal(tmp_path / "run.sqlite") as journal:
        journal.write(5, result(5, attempt=1))
        journal.write(5, result(5, attempt=2))

        assert journal.count() == 1
        assert [row["attempt"] for row in journal.results()] == [2]  # the last write wins


def test_meta_get_and_set(tmp_path: Path) -> None:
    with Journal(tmp_path / "run.sqlite") as journal:
        assert journal.get_meta("dataset_sha256") is None

        journal.set_meta("dataset_sha256", "abc")
        journal.set_meta("other", "1")
        assert journal.get_meta("dataset_sha256") == "abc"

        journal.set_meta("dataset_sha256", "def")
        assert journal.get_meta("dataset_sha256") == "def"
        assert journal.get_meta("other") == "1"
        assert journal.count() == 0  # meta is not a row


def test_reopening_sees_rows_and_meta(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "runs" / "run.sqlite"  # parent directories are created
    with Journal(path) as journal:
        for index in (2, 0, 1):
            journal.write(index, result(index))
        journal.set_meta("dataset_sha256", "abc")

    with Journal(path) as journal:
        assert journal.count() == 3
        assert [row["output"] for row in journal.results()] == ["answer 0", "answer 1", "answer 2"]
        assert journal.get_meta("dataset_sha256") == "abc"
        journal.write(3, result(3))  # and keeps going

    with Journal(path) as journal:
        assert journal.count() == 4


def test_close_closes_the_database(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "run.sqlite")
    with journal:
        journal.write(0, result(0))

    with pytest.raises(sqlite3.ProgrammingError):
        journal.count()


def test_another_connection_sees_each_write_at_once(tmp_path: Path) -> None:
    path = tmp_path / "run.sqlite"
    with Journal(path) as writer, Journal(path) as reader:
        writer.write(0, result(0))
        assert reader.is_done(0)  # committed, not pending in an open transaction
        writer.write(1, result(1))
        assert reader.count() == 2


WRITER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from toolkit.journal import Journal

    journal = Journal(Path(sys.argv[1]))
    journal.set_meta("dataset_sha256", "abc")
    for index in reversed(range(int(sys.argv[2]))):
        journal.write(index, {"index": index, "output": "answer %d" % index})
    print("written", flush=True)
    time.sleep(60)  # killed long before this ends; the journal is never closed
    """
)


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_rows_survive_sigkill_right_after_write(tmp_path: Path) -> None:
    path = tmp_path / "runs" / "run.sqlite"
    rows = 25
    process = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path), str(rows)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "written"
        process.send_signal(signal.SIGKILL)
        assert process.wait(timeout=10) == -signal.SIGKILL
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()

    with Journal(path) as journal:
        assert journal.count() == rows
        assert all(journal.is_done(index) for index in range(rows))
        assert [row["index"] for row in journal.results()] == list(range(rows))
        assert journal.get_meta("dataset_sha256") == "abc"


def test_a_secret_never_reaches_the_file_nor_its_wal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    token = "tok-canary-journal-0123456789"
    monkeypatch.setenv("MY_SERVICE_TOKEN", token)
    monkeypatch.setenv("DATABASE_URL", "postgres://user:dbpasscanary0123456789@db/app")
    path = tmp_path / "run.sqlite"
    with Journal(path) as journal:
        journal.write(0, result(0, output=f"the token is {token}", error=f"ValueError: {token}"))
        journal.write(1, {"index": 1, "inputs": {token: ["password dbpasscanary0123456789"]}})
        journal.set_meta("note", f"started with {token}")
        # While the journal is open its rows sit in the write-ahead log: read every file.
        files = sorted(tmp_path.iterdir())
        assert {file.name for file in files} >= {"run.sqlite", "run.sqlite-wal"}
        for file in files:
            data = file.read_bytes()
            assert token.encode() not in data and b"dbpasscanary0123456789" not in data, file.name
        first, second = journal.results()
        assert first["output"] == "the token is [REDACTED:MY_SERVICE_TOKEN]"
        assert first["error"] == "ValueError: [REDACTED:MY_SERVICE_TOKEN]"
        assert second["inputs"] == {"[REDACTED:MY_SERVICE_TOKEN]": ["password [REDACTED:DATABASE_URL]"]}
        assert journal.get_meta("note") == "started with [REDACTED:MY_SERVICE_TOKEN]"
    assert token.encode() not in path.read_bytes()
