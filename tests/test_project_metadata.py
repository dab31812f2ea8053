"""pyproject.toml's metadata: what a fresh install reads (no warnings, the dependencies imported)."""

from __future__ import annotations

import re
import tomllib

from conftest import ROOT

PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def names(requirements: list[str]) -> set[str]:
    return {re.split(r"[\s;\[<>=!~]", requirement, maxsplit=1)[0] for requirement in requirements}


def test_license_is_an_spdx_string() -> None:
    # A table ({text = "MIT"}) makes setuptools warn on every install.
    assert PROJECT["project"]["license"] == "MIT"
    assert PROJECT["build-system"]["requires"] == ["setuptools>=77"]  # the first to read PEP 639


def test_what_chainkit_imports_directly_is_declared() -> None:
    assert "python-dotenv" in names(PROJECT["project"]["dependencies"])  # toolkit/project.py
    assert "pytest-recording" in names(PROJECT["project"]["optional-dependencies"]["test"])
