"""Static discovery of MLflow "models from code" chain modules.

Chain files are only parsed with :mod:`ast`; they are never imported or run.
A chain module must end with a top-level ``mlflow.models.set_model(chain)``
call (any import spelling). Trailing ``if __name__ == "__main__":`` blocks
after that call are ignored.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import re
import sys
import tokenize
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from toolkit.errors import ChainLoadError, ChainNotFoundError

_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")
_SET_MODEL = {"mlflow.models.set_model", "mlflow.models.model.set_model"}
_PYFUNC_BASES = {
    f"{module}.{cls}"
    for module in ("mlflow.pyfunc", "mlflow.pyfunc.model")
    for cls in ("PythonModel", "ChatModel", "ChatAgent", "ResponsesAgent")
}
_MAIN_TESTS = {"__name__ == '__main__'", "'__main__' == __name__"}
_END_WITH_SET_MODEL = "end the module with mlflow.models.set_model(chain)"


class Flavor(StrEnum):
    """MLflow flavor used to log a chain."""

    LANGCHAIN = "langchain"
    PYFUNC = "pyfunc"


@dataclass(frozen=True)
class ChainSpec:
    """A valid chain module found on disk."""

    name: str
    path: Path
    flavor: Flavor
    description: str
    input_example: Any
    model_config: Path | None
    line: int


@dataclass(frozen=True)
class Problem:
    """Why a candidate file is not a usable chain, and how to fix it."""

    path: Path
    line: int
    message: str

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line else str(self.path)
        return f"{where}: {self.message}"

    @property
    def chain_name(self) -> str | None:
        """The chain this file would define (None for a problem with the folder itself)."""
        if self.path.name == "__init__.py":
            return self.path.parent.name
        return self.path.stem if self.path.suffix == ".py" else None


@dataclass(frozen=True)
class Discovery:
    """Result of scanning a chains directory."""

    chains: tuple[ChainSpec, ...]
    problems: tuple[Problem, ...]
    #: Not problems (every chain still works): a module named like an installed one.
    warnings: tuple[Problem, ...] = ()

    def get(self, name: str) -> ChainSpec:
        """Return the chain called ``name`` or raise ChainNotFoundError."""
        for chain in self.chains:
            if chain.name == name:
                return chain
        for problem in self.problems:  # a file that is there but broken: say why, not "no chain"
            if problem.chain_name == name:
                raise ChainLoadError(f"chain {name!r} cannot be used: {problem}")
        names = [chain.name for chain in self.chains]
        close = difflib.get_close_matches(name, names, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        available = ", ".join(names) or "none"
        raise ChainNotFoundError(f"no chain named {name!r}{hint} (available: {available})")


def discover(chains_dir: Path) -> Discovery:
    """Find every chain module in ``chains_dir`` without importing any of them."""
    if not chains_dir.is_dir():
        state = "is not a directory" if chains_dir.exists() else "does not exist"
        message = f"chains directory {state}: create it or pass --project"
        return Discovery((), (Problem(chains_dir, 0, message),))
    candidates: list[tuple[str, Path]] = []
    for entry in chains_dir.iterdir():
        if entry.name.startswith(("_", ".")):
            continue
        if entry.is_file() and entry.suffix == ".py":
            candidates.append((entry.stem, entry))
        elif (entry / "__init__.py").is_file():
            candidates.append((entry.name, entry / "__init__.py"))
    # Sort so that x.py comes before x/__init__.py: the package is the duplicate.
    candidates.sort(key=lambda item: (item[0], item[1].name == "__init__.py"))
    chains: list[ChainSpec] = []
    problems: list[Problem] = []
    seen: dict[str, Path] = {}
    for name, path in candidates:
        if name in seen:
            message = f"chain {name!r} is already defined by {seen[name]}: rename or remove one of them"
            problems.append(Problem(path, 0, message))
            continue
        seen[name] = path
        result = inspect_file(path, name)
        if isinstance(result, ChainSpec):
            chains.append(result)
        else:
            problems.append(result)
    chains.sort(key=lambda chain: chain.name)
    problems.sort(key=lambda problem: (problem.path, problem.line))
    warnings = [warning for name, path in candidates if (warning := _shadowing(name, path, chains_dir))]
    return Discovery(tuple(chains), tuple(problems), tuple(warnings))


def _shadowing(name: str, path: Path, chains_dir: Path) -> Problem | None:
    """A warning if ``name`` is also an installed (or standard library) module: imports of it
    from chains get the installed one (chainkit puts the chains folder last on sys.path)."""
    try:
        spec = importlib.util.find_spec(name)  # a top-level name: finds, imports nothing
    except (ImportError, ValueError):
        return None
    origin = getattr(spec, "origin", None)
    if spec is None or (origin and Path(origin).resolve().is_relative_to(chains_dir.resolve())):
        return None
    where = "the standard library" if name in sys.stdlib_module_names else f"an installed package ({origin})"
    return Problem(
        path,
        0,
        f"{name!r} is also the name of a module in {where}: `import {name}` in any chain gets that "
        f"one, not this file; rename the file (e.g. {name}_chain.py) to avoid the confusion",
    )


def inspect_file(path: Path, name: str | None = None) -> ChainSpec | Problem:
    """Check one chain file; ``name`` defaults to the file stem or package name."""
    is_package = path.name == "__init__.py"
    name = name or (path.parent.name if is_package else path.stem)
    if not _NAME_RE.match(name):
        kind = "directory" if is_package else "file"
        message = (
            f"chain name {name!r} is not a valid model name: rename the {kind} to "
            "start with a letter and use only letters, digits, '_' or '-'"
        )
        return Problem(path, 0, message)
    try:
        with tokenize.open(path) as handle:  # honours a BOM or coding cookie
            source = handle.read()
    except (OSError, SyntaxError, ValueError) as exc:
        message = f"cannot read the file ({exc}): make it a readable UTF-8 text file"
        return Problem(path, 0, message)
    try:
        tree = ast.parse(source, filename=str(path))
    except SyntaxError as exc:
        message = f"syntax error: {exc.msg}: fix the code so the module parses"
        return Problem(path, exc.lineno or 0, message)
    return _inspect_module(tree, path, name)


def _inspect_module(tree: ast.Module, path: Path, name: str) -> ChainSpec | Problem:
    """Check a parsed chain module and build its ChainSpec."""
    aliases = _aliases(tree.body)
    body = list(tree.body)
    while body and _is_main_guard(body[-1]):
        body.pop()
    calls = [(i, c) for i, c in _calls(body) if _qualname(c.func, aliases) in _SET_MODEL]
    if not calls:
        return _missing_set_model(tree, body, path, aliases)
    index, call = calls[-1]
    if index != len(body) - 1:
        after = body[index + 1]
        text = ast.unparse(after).splitlines()[0]
        text = text if len(text) <= 60 else text[:57] + "..."
        message = (
            "set_model(...) is not the last top-level statement (followed by "
            f"`{text}` on line {after.lineno}): {_END_WITH_SET_MODEL}"
        )
        return Problem(path, call.lineno, message)
    arg = _model_argument(call)
    if arg is None:
        message = "set_model(...) needs exactly one argument: call set_model(chain)"
        return Problem(path, call.lineno, message)
    values = _assignments(body)
    example = values.get("INPUT_EXAMPLE")
    try:
        input_example = None if example is None else ast.literal_eval(example)
    except (ValueError, TypeError):
        message = "INPUT_EXAMPLE is not a literal: assign a plain str/number/list/dict"
        return Problem(path, example.lineno if example else 0, message)
    config = values.get("MODEL_CONFIG")
    if config is None:
        siblings = [path.parent / f"{name}{ext}" for ext in (".yaml", ".yml")]
        model_config = next((p.resolve() for p in siblings if p.is_file()), None)
    elif isinstance(config, ast.Constant) and isinstance(config.value, str):
        model_config = (path.parent / config.value).resolve()
        if not model_config.is_file():
            message = f"MODEL_CONFIG file {config.value!r} does not exist: create it or fix MODEL_CONFIG"
            return Problem(path, config.lineno, message)
    else:
        message = "MODEL_CONFIG is not a string: set it to a path like 'config.yaml'"
        return Problem(path, config.lineno, message)
    docstring = ast.get_docstring(tree) or ""
    return ChainSpec(
        name=name,
        path=path.resolve(),
        flavor=_flavor(arg, body, aliases),
        description=" ".join(re.split(r"\n\s*\n", docstring)[0].split()),
        input_example=input_example,
        model_config=model_config,
        line=call.lineno,
    )


def _missing_set_model(
    tree: ast.Module, body: list[ast.stmt], path: Path, aliases: dict[str, str]
) -> Problem:
    """Explain why no usable top-level set_model call was found."""
    for _, call in reversed(_calls(body)):
        if ast.unparse(call.func).split(".")[-1] == "set_model":
            message = (
                "set_model(...) is not imported from mlflow: add "
                "`from mlflow.models import set_model` or call mlflow.models.set_model"
            )
            return Problem(path, call.lineno, message)
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and _qualname(node.func, aliases) in _SET_MODEL:
            message = f"set_model(...) is inside a block: {_END_WITH_SET_MODEL}"
            return Problem(path, node.lineno, message)
    message = f"no top-level mlflow.models.set_model(...) call: {_END_WITH_SET_MODEL}"
    return Problem(path, 0, message)


def _aliases(body: list[ast.stmt]) -> dict[str, str]:
    """Map top-level names to the dotted names they were imported or assigned from."""
    aliases: dict[str, str] = {}
    for stmt in body:
        if isinstance(stmt, ast.Import):
            for alias in stmt.names:
                top = alias.name.split(".")[0]
                aliases[alias.asname or top] = alias.name if alias.asname else top
        elif isinstance(stmt, ast.ImportFrom) and stmt.module and not stmt.level:
            for alias in stmt.names:
                aliases[alias.asname or alias.name] = f"{stmt.module}.{alias.name}"
        elif isinstance(stmt, ast.Assign):
            value = _qualname(stmt.value, aliases)
            for target in stmt.targets:
                if isinstance(target, ast.Name) and value:
                    aliases[target.id] = value
                elif isinstance(target, ast.Name):
                    aliases.pop(target.id, None)
    return aliases


def _qualname(node: ast.expr, aliases: dict[str, str]) -> str | None:
    """Resolve ``a.b.c`` through the aliases; None if not built from an import."""
    if isinstance(node, ast.Name):
        return aliases.get(node.id)
    if isinstance(node, ast.Attribute):
        base = _qualname(node.value, aliases)
        return f"{base}.{node.attr}" if base else None
    return None


def _calls(body: list[ast.stmt]) -> list[tuple[int, ast.Call]]:
    """(index, call) for each top-level statement that is a bare call."""
    return [
        (i, stmt.value)
        for i, stmt in enumerate(body)
        if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call)
    ]


def _is_main_guard(stmt: ast.stmt) -> bool:
    """True for ``if __name__ == "__main__":``."""
    return isinstance(stmt, ast.If) and ast.unparse(stmt.test) in _MAIN_TESTS


def _model_argument(call: ast.Call) -> ast.expr | None:
    """The single model argument of set_model, positional or ``model=``."""
    args, keywords = call.args, call.keywords
    if len(args) == 1 and not keywords and not isinstance(args[0], ast.Starred):
        return args[0]
    if not args and len(keywords) == 1 and keywords[0].arg == "model":
        return keywords[0].value
    return None


def _assignments(body: list[ast.stmt]) -> dict[str, ast.expr]:
    """Last value assigned to each simple top-level name."""
    values: dict[str, ast.expr] = {}
    for stmt in body:
        if isinstance(stmt, (ast.Assign, ast.AnnAssign)) and stmt.value is not None:
            targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
            for target in targets:
                if isinstance(target, ast.Name):
                    values[target.id] = stmt.value
    return values


def _flavor(arg: ast.expr, body: list[ast.stmt], aliases: dict[str, str]) -> Flavor:
    """PYFUNC if ``arg`` builds (directly or via a name) a local PythonModel subclass."""
    pyfunc_classes: set[str] = set()
    for stmt in body:
        if isinstance(stmt, ast.ClassDef) and any(
            _qualname(base, aliases) in _PYFUNC_BASES
            or (isinstance(base, ast.Name) and base.id in pyfunc_classes)
            for base in stmt.bases
        ):
            pyfunc_classes.add(stmt.name)
    if isinstance(arg, ast.Name):
        arg = _assignments(body).get(arg.id, arg)
    if isinstance(arg, ast.Call) and isinstance(arg.func, ast.Name):
        return Flavor.PYFUNC if arg.func.id in pyfunc_classes else Flavor.LANGCHAIN
    return Flavor.LANGCHAIN
