"""pytest plugin: record and replay chain traffic in tests (registered through pytest11).

Options: ``--record-mode {none,once,new_episodes,all}`` and ``--allow-host HOST`` (repeatable).

Marker: ``@pytest.mark.cassette(path=None, record_mode=None, allow_hosts=())`` runs the test
under a cassette, by default ``tests/cassettes/<module>/<test>.json`` beside the test file
(``<Class>.<test>.json`` for a method; parameter ids kept).

The record mode is, first to last: ``--record-mode`` when given (so ``--record-mode=none`` in CI
overrides every marker: nothing touches the network), the marker's ``record_mode``,
$CHAINKIT_RECORD_MODE, and ``none``.

Fixtures (each small and overridable; prefixed so they do not collide with pytest-recording's):

- ``chainkit_record_mode``: the mode in force for this test.
- ``chainkit_allow_hosts``: hosts reachable live (``--allow-host`` and the marker's).
- ``cassette_path``: the test's default cassette path.
- ``cassette``: the active :class:`~toolkit.replay.CassetteSession` for the test's cassette.
- ``chainkit_project``: the project the test runs in (default: pytest's rootdir).
- ``chain_runner``: ``chain_runner("qa")`` loads ``chains/qa.py`` with ``cassettes/qa.json``
  active for the rest of the test, and returns the chain.
"""

from __future__ import annotations

import hashlib
import os
import re
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
    from toolkit.errors import UsageError
    from toolkit.replay import RecordMode

    try:  # a bad $CHAINKIT_RECORD_MODE is a usage error now, not a failure in every test
        RecordMode.parse(None)
    except UsageError as exc:
        raise pytest.UsageError(f"$CHAINKIT_RECORD_MODE: {exc}") from None


@pytest.fixture
def chainkit_record_mode(request: pytest.FixtureRequest) -> str:
    option = request.config.getoption("--record-mode")
    if option:
        return str(option)
    marker = request.node.get_closest_marker("cassette")
    if marker is not None and marker.kwargs.get("record_mode"):
        return str(marker.kwargs["record_mode"])
    return str(os.environ.get("CHAINKIT_RECORD_MODE") or "none").lower()


@pytest.fixture
def chainkit_allow_hosts(request: pytest.FixtureRequest) -> list[str]:
    marker = request.node.get_closest_marker("cassette")
    marked = marker.kwargs.get("allow_hosts", ()) if marker is not None else ()
    marked = [marked] if isinstance(marked, str) else list(marked)
    return [*request.config.getoption("chainkit_allow_hosts"), *marked]


def cassette_name(nodeid: str) -> str:
    """A file name for a test: class and parameters kept, unsafe characters replaced, and a
    short hash of the test's id added whenever replacing made two ids alike."""
    test = nodeid.split("::", 1)[-1].replace("::", ".")
    safe = re.sub(r"[^\w.\-\[\]=,+]", "-", test)
    if safe != test:
        safe += "-" + hashlib.sha256(test.encode()).hexdigest()[:8]
    return f"{safe}.json"


@pytest.fixture
def cassette_path(request: pytest.FixtureRequest) -> Path:
    marker = request.node.get_closest_marker("cassette")
    explicit = (marker.args[0] if marker.args else marker.kwargs.get("path")) if marker else None
    test_file = Path(str(request.node.path))
    if explicit:
        return (test_file.parent / str(explicit)).resolve()
    return test_file.parent / "cassettes" / test_file.stem / cassette_name(request.node.nodeid)


@pytest.fixture
def cassette(
    cassette_path: Path, chainkit_record_mode: str, chainkit_allow_hosts: list[str]
) -> Iterator[CassetteSession]:
    from toolkit.replay import use_cassette

    with use_cassette(cassette_path, chainkit_record_mode, allow_hosts=chainkit_allow_hosts) as session:
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
    chainkit_project: Project, chainkit_record_mode: str, chainkit_allow_hosts: list[str]
) -> Iterator[Callable[[str], Any]]:
    from toolkit.runner import chain_under_cassette

    with ExitStack() as stack:

        def load(name: str) -> Any:
            _, chain, _ = stack.enter_context(
                chain_under_cassette(
                    chainkit_project, name, record_mode=chainkit_record_mode, allow_hosts=chainkit_allow_hosts
                )
            )
            return chain

        yield load
