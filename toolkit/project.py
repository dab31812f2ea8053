"""Where a project keeps its chains, cassettes and datasets.

Defaults: ``chains/``, ``cassettes/`` and ``datasets/`` under the project root. A
``[tool.chainkit]`` table in the project's pyproject.toml may move them::

    [tool.chainkit]
    chains = "src/chains"
    cassettes = "recordings"
    ignore_json_paths = ["user", "metadata"]   # left out when matching requests to recordings
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from toolkit.errors import UsageError


@dataclass(frozen=True)
class Project:
    root: Path
    chains_dir: Path
    cassettes_dir: Path
    datasets_dir: Path
    #: JSON body fields left out when matching requests to recordings (see toolkit.matching).
    ignore_json_paths: tuple[str, ...] = ()

    @classmethod
    def at(cls, root: str | Path = ".") -> Project:
        root = Path(root).resolve()
        if not root.is_dir():
            state = "is a file, not a directory" if root.exists() else "does not exist"
            raise UsageError(f"project directory {root} {state}; pass --project DIR")
        settings: dict[str, object] = {}
        pyproject = root / "pyproject.toml"
        if pyproject.is_file():
            try:
                document = tomllib.loads(pyproject.read_bytes().decode("utf-8"))
            except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
                raise UsageError(f"{pyproject} is not valid TOML ({exc}); fix it") from exc
            tool = document.get("tool", {})
            found = tool.get("chainkit", {}) if isinstance(tool, dict) else None
            if not isinstance(found, dict):
                raise UsageError(f'{pyproject}: [tool.chainkit] must be a table, e.g. chains = "src/chains"')
            settings = found

        def folder(key: str) -> Path:
            value = settings.get(key, key)
            if not isinstance(value, str):
                raise UsageError(f"{pyproject}: tool.chainkit.{key} must be a folder path (a string)")
            return root / value

        ignored = settings.get("ignore_json_paths", [])
        if not isinstance(ignored, list) or not all(isinstance(path, str) for path in ignored):
            raise UsageError(
                f'{pyproject}: tool.chainkit.ignore_json_paths must be a list of JSON paths, e.g. ["user"]'
            )
        from toolkit.matching import parse_json_path

        for path in ignored:
            try:
                parse_json_path(path)
            except ValueError as exc:
                raise UsageError(f"{pyproject}: tool.chainkit.ignore_json_paths: {exc}") from None
        return cls(root, folder("chains"), folder("cassettes"), folder("datasets"), tuple(ignored))

    def cassette_for(self, chain_name: str) -> Path:
        return self.cassettes_dir / f"{chain_name}.json"


def load_env(root: Path) -> None:
    """``.env`` in the project root, as .env.example says; the real environment wins."""
    from dotenv import load_dotenv

    load_dotenv(root / ".env", override=False)
