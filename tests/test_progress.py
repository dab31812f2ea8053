"""The progress line of an evaluation (toolkit/progress.py)."""

from __future__ import annotations

import pytest

from toolkit.progress import Progress


def test_progress_line_on_a_terminal_only(capsys: pytest.CaptureFixture[str]) -> None:
    row = {"error": None, "token_usage": 10, "cost_usd": 0.001}
    shown = Progress(total=2, enabled=True)
    shown.update(row)
    shown.update({**row, "error": "boom"})
    shown.finish()
    line = capsys.readouterr().err
    assert "2/2 rows" in line and "errors 1" in line and "tokens 20" in line and "~$0.0020" in line
    quiet = Progress(total=2, enabled=False)
    quiet.update(row)
    assert capsys.readouterr().err == ""
