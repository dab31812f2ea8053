"""The package's public names: sorted, all importable, and nothing heavy at import."""

from __future__ import annotations

import ast
import subprocess
import sys
import types
from pathlib import Path

import toolkit

#: What toolkit/__init__.py imports for its own use: not part of the API.
INIT_HELPERS = {"annotations", "importlib", "TYPE_CHECKING", "Any"}


def test_all_is_sorted_and_every_name_resolves() -> None:
    assert toolkit.__all__ == sorted(toolkit.__all__)
    for name in toolkit.__all__:
        assert getattr(toolkit, name) is not None, name


def test_all_is_exactly_what_the_package_exports() -> None:
    """httpx's check (tests/test_exported_members.py), for a package whose names load lazily:
    once every name is loaded, each public name the package holds is in ``__all__`` and each
    name of ``__all__`` is one it holds. A name dropped from ``__all__`` fails here."""
    lazy = set(toolkit._EXPORTS)
    for name in sorted(lazy | set(toolkit.__all__)):
        getattr(toolkit, name)
    public = {
        name
        for name, value in vars(toolkit).items()
        if (not name.startswith("_") or name == "__version__")
        and name not in INIT_HELPERS
        and not (isinstance(value, types.ModuleType) and value.__name__.startswith("toolkit."))
    }
    assert sorted(public) == toolkit.__all__
    assert lazy | {"__version__"} == set(toolkit.__all__)


def test_type_checkers_see_the_same_names_from_the_same_modules() -> None:
    """The ``if TYPE_CHECKING:`` imports (what mypy and editors read) match the lazy table."""
    tree = ast.parse(Path(toolkit.__file__).read_text())
    (block,) = [
        node for node in tree.body if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING"
    ]
    static = {
        alias.asname or alias.name: str(node.module)
        for node in block.body
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    assert static == toolkit._EXPORTS


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
