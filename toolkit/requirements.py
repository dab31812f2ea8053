"""A chain's exact pip requirements and local code, from its imports, without running it.

MLflow infers requirements by loading the model in a child process and watching what gets
imported; the child does not see chainkit's replay (so it calls the real API), takes seconds,
and on the example chains added junk (aiohttp, cloudpickle, pygments) while pruning the
libraries that matter (openai, langchain-core). chainkit reads the imports instead:

- every import in the chain file (at any depth) and, recursively, in the local helper modules
  it imports from the chains directory (those become ``code_paths``);
- each third-party top-level module is mapped to its installed distribution, pinned to the
  installed version; ``mlflow`` is always included;
- plus the libraries that shape the chain's HTTP requests: the direct requirements of those
  distributions that the chain's cassette names in ``recorded_with`` (openai under
  langchain-openai). Pinning them keeps the logged model sending the requests its cassette holds.
"""

from __future__ import annotations

import ast
import functools
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from toolkit.errors import PackagingError

_ALWAYS = ("mlflow",)


@dataclass(frozen=True)
class Dependencies:
    requirements: tuple[str, ...]  # "name==version", sorted case-insensitively
    code_paths: tuple[Path, ...]  # local helper modules and packages, sorted


@functools.cache
def _module_distributions() -> Mapping[str, list[str]]:
    return metadata.packages_distributions()


def distribution_of(module: str) -> str | None:
    """The installed distribution that provides ``module`` (``yaml`` -> ``PyYAML``,
    ``google.protobuf`` -> ``protobuf``)."""
    top = module.split(".")[0]
    candidates = sorted(_module_distributions().get(top) or [])
    if len(candidates) <= 1:
        return candidates[0] if candidates else None
    # mlflow is provided by mlflow, mlflow-skinny and mlflow-tracing: prefer the namesake.
    for candidate in candidates:
        if canonicalize_name(candidate) == canonicalize_name(top):
            return candidate
    # A namespace package (google, opentelemetry): the distribution that holds the submodule.
    prefix = module.replace(".", "/")
    for candidate in candidates:
        try:
            files = metadata.files(candidate) or []
        except metadata.PackageNotFoundError:
            continue
        if any(str(file).startswith(prefix + "/") or str(file) == prefix + ".py" for file in files):
            return candidate
    return candidates[0]


def imported_modules(path: Path) -> list[tuple[str, int]]:
    """Module names imported anywhere in ``path`` (dotted, as written), with the line of each."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except (OSError, SyntaxError, UnicodeDecodeError) as exc:
        raise PackagingError(f"{path}: cannot be parsed ({exc}); fix the file") from exc
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                raise PackagingError(
                    f"{path}:{node.lineno}: relative import; MLflow runs a chain file as a "
                    "top-level module, where it fails: import the helper by its name "
                    "(e.g. `from _shared import prompts`)"
                )
            if node.module:
                found.append((node.module, node.lineno))
    return found


def _local_module(name: str, chains_dir: Path) -> Path | None:
    for candidate in (chains_dir / f"{name}.py", chains_dir / name):
        if candidate.is_file() or (candidate.is_dir() and any(candidate.glob("*.py"))):
            return candidate
    return None


def _python_files(local: Path) -> list[Path]:
    return [local] if local.is_file() else sorted(local.rglob("*.py"))


def chain_dependencies(
    chain_file: Path, chains_dir: Path, recorded_with: Mapping[str, str] | None = None
) -> Dependencies:
    """Requirements and code paths of ``chain_file``; see the module docstring for the rules."""
    distributions: set[str] = set(_ALWAYS)
    code_paths: set[Path] = set()
    pending, seen = [chain_file], set[Path]()
    while pending:
        current = pending.pop()
        if current in seen:
            continue
        seen.add(current)
        for module, line in imported_modules(current):
            top = module.split(".")[0]
            if top in sys.stdlib_module_names or top == "__future__":
                continue
            # What is installed wins over a file of the same name beside the chain, as when
            # the chain loads (the chains folder comes last on sys.path).
            local = _local_module(top, chains_dir) if distribution_of(top) is None else None
            if local is not None:
                if local != chain_file:
                    code_paths.add(local)
                    pending += _python_files(local)
                continue
            distribution = distribution_of(module)
            if distribution is None:
                raise PackagingError(
                    f"{current}:{line}: imports {top!r}, which no installed distribution "
                    f"provides: install it (and declare it in pyproject.toml) or remove the import"
                )
            distributions.add(distribution)
    distributions |= _request_shaping(distributions, recorded_with or {})
    return Dependencies(_pinned(distributions), tuple(sorted(code_paths)))


def _request_shaping(distributions: Iterable[str], recorded_with: Mapping[str, str]) -> set[str]:
    named = {canonicalize_name(name) for name in recorded_with}
    found = set()
    for distribution in distributions:
        for line in metadata.requires(distribution) or []:
            try:
                requirement = Requirement(line)
            except InvalidRequirement:
                continue  # metadata pip itself would not install from
            # Behind an extra (or for another platform): not what this install uses.
            if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
                continue
            if canonicalize_name(requirement.name) in named:
                found.add(requirement.name)
    return found


def _pinned(distributions: Iterable[str]) -> tuple[str, ...]:
    pins = {}
    for distribution in distributions:
        try:
            pins[canonicalize_name(distribution)] = f"{distribution}=={metadata.version(distribution)}"
        except metadata.PackageNotFoundError:
            continue
    return tuple(sorted(pins.values(), key=str.lower))
