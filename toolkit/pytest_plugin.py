"""pytest plugin: record and replay chain traffic in tests (registered through pytest11).

Options: ``--record-mode {none,once,new_episodes,all}`` (default: $CHAINKIT_RECORD_MODE, else
none, which never touches the network) and ``--allow-host HOST`` (repeatable).

Marker: ``@pytest.mark.cassette(path=None, record_mode=None, allow_hosts=())`` runs the test
under a cassette, by default ``tests/cassettes/<module>/<test>.json`` beside the test file.

Fixtures (each small and overridable):

- ``record_mode``: the mode in force for this test.
- ``cassette_path``: the test's default cassette path.
- ``cassette``: the active :class:`~toolkit.replay.CassetteSession` for the test's cassette.
- ``chainkit_project``: the project the test runs in (default: pytest's rootdir).
- ``chain_runner``: ``chain_runner("qa")`` loads ``chains/qa.py`` with ``cassettes/qa.json``
  active for the rest of the test, and returns the chain.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from toolkit.project import Project
    from toolkit.replay import CassetteSession

RECORD_MODES = ("none", "once", "new_episodes", "all")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("chainkit", "chainkit: record and replay chain traffic")
    group.addoption(
        "--record-mode",
        action="store",
        default=None,
        choices=RECORD_MODES,
        help="cassette record mode (default: $CHAINKIT_RECORD_MODE, else none: replay only)",
    )
    group.addoption(
        "--allow-host",
        action="append",
        default=[],
        dest="chainkit_allow_hosts",
        help="a host that tests may reach live even in record mode none (repeatable)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "cassette(path=None, record_mode=None, allow_hosts=()): run the test under a chainkit "
        "cassette (default tests/cassettes/<module>/<test>.json)",
    )


@pytest.fixture
def record_mode(request: pytest.FixtureRequest) -> str:
    marker = request.node.get_closest_marker("cassette")
    if marker is not None and marker.kwargs.get("record_mode"):
        return str(marker.kwargs["record_mode"])
    option = request.config.getoption("--record-mode")
    return str(option or os.environ.get("CHAINKIT_RECORD_MODE") or "none")


@pytest.fixture
def allow_hosts(request: pytest.FixtureRequest) -> list[str]:
    marker = request.node.get_closest_marker("cassette")
    marked = list(marker.kwargs.get("allow_hosts", ())) if marker is not None else []
    return [*request.config.getoption("chainkit_allow_hosts"), *marked]


@pytest.fixture
def cassette_path(request: pytest.FixtureRequest) -> Path:
    marker = request.node.get_closest_marker("cassette")
    explicit = (marker.args[0] if marker.args else marker.kwargs.get("path")) if marker else None
    test_file = Path(str(request.node.path))
    if explicit:
        return (test_file.parent / explicit).resolve()
    name = request.node.name.replace("/", "-").replace("[", "-").replace("]", "")
    return test_file.parent / "cassettes" / test_file.stem / f"{name}.json"


@pytest.fixture
def cassette(cassette_path: Path, record_mode: str, allow_hosts: list[str]) -> Iterator[CassetteSession]:
    from toolkit.replay import use_cassette

    with use_cassette(cassette_path, record_mode, allow_hosts=allow_hosts) as session:
        yield session


@pytest.fixture(autouse=True)
def _chainkit_marker(request: pytest.FixtureRequest) -> None:
    # The marker alone activates the cassette, as pytest-recording's `vcr` marker does.
    if request.node.get_closest_marker("cassette") is not None:
        request.getfixturevalue("cassette")


@pytest.fixture
def chainkit_project(request: pytest.FixtureRequest) -> Project:
    from toolkit.project import Project

    return Project.at(request.config.rootpath)


@pytest.fixture
def chain_runner(
    chainkit_project: Project, record_mode: str, allow_hosts: list[str]
) -> Iterator[Callable[[str], Any]]:
    from toolkit.runner import chain_under_cassette

    with ExitStack() as stack:

        def load(name: str) -> Any:
            _, chain, _ = stack.enter_context(
                chain_under_cassette(chainkit_project, name, record_mode=record_mode, allow_hosts=allow_hosts)
            )
            return chain

        yield load
