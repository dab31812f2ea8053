"""pytest plugin: record and replay chain traffic in tests (registered through pytest11).

Options: ``--record-mode {none,once,new_episodes,all}``, ``--allow-host HOST`` (repeatable) and
``--no-block-network``.

In record mode ``none`` (the session's: ``--record-mode``, else $CHAINKIT_RECORD_MODE, else
none) the network is closed for the whole session, from configure to unconfigure: collection,
session fixtures and tests without a cassette included, like pytest-recording's
``--block-network`` but on by default. Open are: ``--allow-host`` hosts, $CHAINKIT_ALLOW_HOSTS,
the MLflow tracking/registry server of the moment, and, for the duration of its own test, a test
whose ``cassette`` marker records (``record_mode="once"`` with no ``--record-mode`` given).
``--no-block-network`` leaves the session open (cassettes in mode none still close it while they
are active).

Marker: ``@pytest.mark.cassette(path=None, record_mode=None, allow_hosts=(), ignore_json_paths=())``
runs the test under a cassette, by default ``tests/cassettes/<module>/<test>.json`` beside the test file
(``<Class>.<test>.json`` for a method; parameter ids kept).

The record mode is, first to last: ``--record-mode`` when given (so ``--record-mode=none`` in CI
overrides every marker: nothing touches the network), the marker's ``record_mode``,
$CHAINKIT_RECORD_MODE, and ``none``.

Fixtures (each small and overridable; prefixed so they do not collide with pytest-recording's):

- ``chainkit_record_mode``: the mode in force for this test.
- ``chainkit_allow_hosts``: hosts reachable live (``--allow-host`` and the marker's).
- ``chainkit_config``: per-module settings, as pytest-recording's ``vcr_config``: override it in
  a test module or conftest.py to return e.g. ``{"ignore_json_paths": ["user"]}``.
- ``chainkit_ignore_json_paths``: JSON body fields left out of matching: the project's
  (``[tool.chainkit] ignore_json_paths``), then ``chainkit_config``'s, then the marker's.
- ``cassette_path``: the test's default cassette path.
- ``cassette``: the active :class:`~toolkit.replay.CassetteSession` for the test's cassette.
- ``chainkit_project``: the project the test runs in (default: pytest's rootdir).
- ``chain_runner``: ``chain_runner("qa")`` loads ``chains/qa.py`` with ``cassettes/qa.json``
  active for the rest of the test, and returns the chain.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from collections.abc import Callable, Generator, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from toolkit.record_mode import RecordMode

if TYPE_CHECKING:
    from toolkit.project import Project
    from toolkit.replay import CassetteSession

_NETWORK_CLOSED = pytest.StashKey[bool]()  # set when the session closed the network


def pytest_addoption(parser: pytest.Parser, pluginmanager: pytest.PytestPluginManager) -> None:
    group = parser.getgroup("chainkit", "chainkit: record and replay chain traffic")
    if not _pytest_recording_to_come(pluginmanager):
        # pytest-recording registered it first (ValueError): both plugins read that one.
        with contextlib.suppress(ValueError):
            group.addoption(
                "--record-mode",
                action="store",
                default=None,
                choices=RecordMode.choices(),
                help="cassette record mode (default: $CHAINKIT_RECORD_MODE, else none: replay only)",
            )
    group.addoption(
        "--allow-host",
        action="append",
        default=[],
        dest="chainkit_allow_hosts",
        help="a host that tests may reach live even in record mode none (repeatable)",
    )
    group.addoption(
        "--no-block-network",
        action="store_false",
        default=True,
        dest="chainkit_block_network",
        help="in record mode none, leave the network open outside cassettes (default: closed for "
        "the whole session but for --allow-host hosts)",
    )


def _pytest_recording_to_come(pluginmanager: pytest.PytestPluginManager) -> bool:
    """Whether pytest-recording will register ``--record-mode`` after this plugin: installed,
    not yet loaded, not disabled (``-p no:recording``), loaded with the installed plugins.

    Users coming from pytest-recording have it installed. Both plugins then share its option
    (same name, same meaning; it also accepts ``rewrite``, which chainkit reads as ``all``)."""
    import importlib.util

    return (
        importlib.util.find_spec("pytest_recording") is not None
        and not pluginmanager.has_plugin("recording")
        and not pluginmanager.is_blocked("recording")
        and not os.environ.get("PYTEST_DISABLE_PLUGIN_AUTOLOAD")
    )


def _option_mode(config: pytest.Config) -> str | None:
    """``--record-mode`` as given (None when not given)."""
    mode = config.getoption("--record-mode", default=None)
    # pytest-recording's "rewrite" (start the cassette afresh) is chainkit's "all" (re-record all).
    return "all" if mode == "rewrite" else mode


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "cassette(path=None, record_mode=None, allow_hosts=(), ignore_json_paths=()): run the test "
        "under a chainkit cassette (default tests/cassettes/<module>/<test>.json)",
    )
    from toolkit.errors import UsageError

    try:  # a bad $CHAINKIT_RECORD_MODE is a usage error now, not a failure in every test
        RecordMode.parse(None)
    except UsageError as exc:
        raise pytest.UsageError(f"$CHAINKIT_RECORD_MODE: {exc}") from None
    _close_the_network(config)


def _close_the_network(config: pytest.Config) -> None:
    from toolkit.network import NetworkGuard
    from toolkit.replay import ALLOW_HOSTS_VARIABLE, mlflow_hosts

    mode = RecordMode.parse(_option_mode(config))
    if mode is not RecordMode.NONE or not config.getoption("chainkit_block_network"):
        return
    env_hosts = os.environ.get(ALLOW_HOSTS_VARIABLE, "").split(",")
    hosts = [*config.getoption("chainkit_allow_hosts"), *(host.strip() for host in env_hosts)]
    # The tracking server is asked for at each refusal: a fixture may start one mid-session.
    guard = NetworkGuard(hosts, also_allowed=mlflow_hosts).__enter__()
    config.stash[_NETWORK_CLOSED] = True
    config.add_cleanup(guard.__exit__)  # runs whatever ends the session, usage errors included


def _records(item: pytest.Item) -> bool:
    """Whether the test's marker records (only when --record-mode was not given)."""
    from toolkit.errors import UsageError

    marker = item.get_closest_marker("cassette")
    if marker is None or not marker.kwargs.get("record_mode") or _option_mode(item.config):
        return False
    try:
        return RecordMode.parse(marker.kwargs["record_mode"]) is not RecordMode.NONE
    except UsageError:
        return False  # reported by the cassette fixture


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(
    item: pytest.Item, nextitem: pytest.Item | None
) -> Generator[None, object, object]:
    if _NETWORK_CLOSED not in item.config.stash or not _records(item):
        return (yield)
    from toolkit.network import NetworkGuard

    with NetworkGuard(allow_all=True):  # the innermost guard decides: open for this test
        return (yield)


@pytest.fixture
def chainkit_record_mode(request: pytest.FixtureRequest) -> str:
    """The record mode in force for this test: --record-mode, else the cassette marker's,
    else $CHAINKIT_RECORD_MODE, else none."""
    option = _option_mode(request.config)
    if option:
        return str(option)
    marker = request.node.get_closest_marker("cassette")
    if marker is not None and marker.kwargs.get("record_mode"):
        return str(marker.kwargs["record_mode"])
    return str(os.environ.get("CHAINKIT_RECORD_MODE") or "none").lower()


@pytest.fixture
def chainkit_allow_hosts(request: pytest.FixtureRequest) -> list[str]:
    """Hosts this test may reach live: --allow-host and the cassette marker's allow_hosts."""
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
    """This test's cassette: the marker's path (relative to the test file), else
    tests/cassettes/<module>/<test>.json beside the test file."""
    marker = request.node.get_closest_marker("cassette")
    explicit = (marker.args[0] if marker.args else marker.kwargs.get("path")) if marker else None
    test_file = Path(str(request.node.path))
    if explicit:
        return (test_file.parent / str(explicit)).resolve()
    return test_file.parent / "cassettes" / test_file.stem / cassette_name(request.node.nodeid)


@pytest.fixture
def chainkit_config() -> dict[str, Any]:
    """Per-module cassette settings (override it, as pytest-recording's ``vcr_config``):
    ``{"ignore_json_paths": [...]}``."""
    return {}


@pytest.fixture
def chainkit_ignore_json_paths(
    request: pytest.FixtureRequest, chainkit_project: Project, chainkit_config: dict[str, Any]
) -> list[str]:
    """JSON body fields left out of matching: the project's, chainkit_config's, the marker's."""
    marker = request.node.get_closest_marker("cassette")
    marked = marker.kwargs.get("ignore_json_paths", ()) if marker is not None else ()
    configured = chainkit_config.get("ignore_json_paths", ())
    paths = [*chainkit_project.ignore_json_paths]
    for more in (configured, marked):
        paths += [more] if isinstance(more, str) else list(more)
    return list(dict.fromkeys(paths))


@pytest.fixture
def cassette(
    cassette_path: Path,
    chainkit_record_mode: str,
    chainkit_allow_hosts: list[str],
    chainkit_ignore_json_paths: list[str],
) -> Iterator[CassetteSession]:
    """The test's cassette, active for the whole test: the CassetteSession (replayed, new)."""
    from toolkit.replay import use_cassette

    with use_cassette(
        cassette_path,
        chainkit_record_mode,
        allow_hosts=chainkit_allow_hosts,
        ignore_json_paths=chainkit_ignore_json_paths,
    ) as session:
        yield session


@pytest.fixture(autouse=True)
def _chainkit_marker(request: pytest.FixtureRequest) -> None:
    # The marker alone activates the cassette, as pytest-recording's `vcr` marker does.
    if request.node.get_closest_marker("cassette") is not None:
        request.getfixturevalue("cassette")


@pytest.fixture
def chainkit_project(request: pytest.FixtureRequest) -> Project:
    """The chainkit project the tests run in (default: pytest's rootdir); override to move it."""
    from toolkit.project import Project

    return Project.at(request.config.rootpath)


@pytest.fixture
def chain_runner(
    chainkit_project: Project, chainkit_record_mode: str, chainkit_allow_hosts: list[str]
) -> Iterator[Callable[[str], Any]]:
    """``chain_runner("qa")``: chains/qa.py loaded with cassettes/qa.json active for the rest of
    the test; returns the chain."""
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


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    # A miss that a library or the test's own code wrapped in a vaguer error ("Connection
    # error.") is named under the failure in chainkit's words: cassette, closest request, diff.
    report = yield
    if report.failed and call.excinfo is not None:
        from toolkit.errors import refusal_in

        refusal = refusal_in(call.excinfo.value)
        if refusal is not None and refusal is not call.excinfo.value:
            report.sections.append(("chainkit: refused request", f"{type(refusal).__name__}: {refusal}"))
    return report
