"""The progress line of an evaluation (toolkit/progress.py): click's bar, percentage and ETA,
on a terminal only."""

from __future__ import annotations

import io
import os
import pty
import re
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT

from toolkit.progress import Progress

ROW = {"error": None, "token_usage": 10, "cost_usd": 0.001}


class Terminal(io.StringIO):
    """What the line is written to: a stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def test_on_a_terminal_the_line_has_a_bar_a_percentage_and_an_eta() -> None:
    stream = Terminal()
    progress = Progress(total=10, enabled=True, stream=stream)
    progress.update(ROW)
    time.sleep(1.05)  # click knows an ETA after a second
    progress.update({**ROW, "error": "boom"})
    progress.finish()
    text = stream.getvalue()
    last = text.rstrip("\n").split("\r")[-1]
    assert re.search(r"\[#+-+\]  2/10\s+20%  eta 00:00:\d\d  ", last), last
    assert "errors 1" in last and "tokens 20" in last and "~$0.0020" in last
    assert text.startswith("\r") and text.endswith("\n")


def test_a_resumed_run_counts_from_where_it_stopped_and_its_eta_from_this_run() -> None:
    """4 of 10 rows done before: the bar starts at 40%; 2 rows in a second leave 4 rows, ~2 s
    (not the 0 s that dividing by all 6 done rows would promise)."""
    stream = Terminal()
    progress = Progress(total=10, enabled=True, done=4, stream=stream)
    progress.update(ROW)
    assert "5/10   50%" in stream.getvalue()
    time.sleep(1.05)
    progress.update(ROW)
    eta = re.findall(r"eta 00:00:(\d\d)", stream.getvalue())
    assert eta and 2 <= int(eta[-1]) <= 6, stream.getvalue()


@pytest.mark.parametrize(
    ("stream", "enabled"),
    [(io.StringIO(), True), (Terminal(), False)],
    ids=["not-a-terminal", "disabled-for-json"],
)
def test_nothing_unless_enabled_and_on_a_terminal(stream: io.StringIO, enabled: bool) -> None:
    progress = Progress(total=2, enabled=enabled, stream=stream)
    progress.update(ROW)
    progress.update(ROW)
    progress.finish()
    assert stream.getvalue() == ""


def test_eval_on_a_terminal_shows_the_percentage(tmp_path: Path) -> None:
    """`chainkit eval` with stderr on a pseudo-terminal draws the line; the summary follows."""
    for name in ("chains", "cassettes", "datasets"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    controller, terminal = pty.openpty()
    command = [sys.executable, "-m", "toolkit", "--project", str(tmp_path), "eval", "qa"]
    process = subprocess.Popen(
        [*command, "--data", str(tmp_path / "datasets" / "qa.jsonl")],
        stdout=subprocess.PIPE,
        stderr=terminal,
        stdin=subprocess.DEVNULL,
    )
    os.close(terminal)
    seen = b""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        ready, _, _ = select.select([controller], [], [], 1.0)
        if ready:
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # the child closed the terminal (EIO on Linux)
                break
            if not chunk:
                break
            seen += chunk
        elif process.poll() is not None:
            break
    os.close(controller)
    assert process.wait(timeout=60) == 0, seen.decode(errors="replace")
    text = seen.decode(errors="replace")
    assert re.search(r"\r\[#+\]  2/2\s+100%  [\d.]+ rows/s  errors 0", text), text
    assert process.stdout is not None and "contains/mean" in process.stdout.read().decode()
