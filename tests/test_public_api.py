"""The package's public names: sorted, all importable, and nothing heavy at import."""

from __future__ import annotations

import subprocess
import sys

import toolkit


def test_all_is_sorted_and_every_name_resolves() -> None:
    assert toolkit.__all__ == sorted(toolkit.__all__)
    for name in toolkit.__all__:
        assert getattr(toolkit, name) is not None, name


def test_unknown_attribute_is_an_attribute_error() -> None:
    try:
        toolkit.nothing_here  # noqa: B018
    except AttributeError as exc:
        assert "nothing_here" in str(exc)
    else:
        raise AssertionError("expected AttributeError")


def test_cli_import_pulls_in_no_heavy_dependency() -> None:
    heavy = ("mlflow", "langchain_core", "respx", "openai")
    code = f"import sys, toolkit.cli; print(sorted(m for m in {heavy!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
