"""The suite runs from a clone on its own: nothing outside the repository is read at run time."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import RECORDED, ROOT

# Paths that lead out of the repository, to where the recorded responses used to be read from.
OUTSIDE = re.compile(r"/work/shared|ROOT\.parent|parents\[2\]|\.\./shared/data")


def repository_files() -> list[Path]:
    """What a clone holds: the tracked files and the new ones not ignored (this change's own)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    return [ROOT / name for name in listed.split("\0") if name and (ROOT / name).is_file()]


def test_recorded_responses_live_in_the_repository_with_source_and_licence() -> None:
    assert RECORDED.is_relative_to(ROOT / "tests")
    index = json.loads((RECORDED / "index.json").read_text())
    assert index and {entry["file"] for entry in index} == {p.name for p in RECORDED.glob("*-*.json")}
    for entry in index:
        recorded = json.loads((RECORDED / entry["file"]).read_text())
        assert recorded["source"] == entry["source"]
        assert recorded["license"] in ("MIT", "Apache-2.0")
    licences = {p.name for p in RECORDED.glob("LICENSE-*")}
    assert licences == {
        "LICENSE-crewAI-MIT",
        "LICENSE-simonw-llm-Apache-2.0",
        "LICENSE-dd-trace-java-Apache-2.0",
    }


def test_no_code_reads_outside_the_repository() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in repository_files()
        if path.suffix in (".py", ".sh", ".toml", ".cfg", ".ini") and path.name != Path(__file__).name
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1)
        if OUTSIDE.search(line)
    ]
    assert offenders == []


def test_the_tests_of_recorded_responses_pass_in_a_bare_copy(tmp_path: Path) -> None:
    """A copy of the repository's files in a folder with no shared/ data folder next to it."""
    clone = tmp_path / "clone"
    for path in repository_files():
        target = clone / path.relative_to(ROOT)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    assert not (tmp_path / "shared").exists()
    result = subprocess.run(
        [
            *(sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs"),
            *("tests/test_openai_server.py", "tests/test_replay.py"),
            *("-k", "recorded or real_openai"),
        ],
        cwd=clone,
        capture_output=True,
        text=True,
        timeout=600,
    )
    summary = result.stdout.strip().splitlines()[-1]
    assert result.returncode == 0, result.stdout[-3000:]
    assert "passed" in summary and not re.search("skipped|failed|error", summary), summary
