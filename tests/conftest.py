"""Shared fixtures: a clean environment and a fake OpenAI server on 127.0.0.1.

The OpenAI API cannot be reached from here; everything that records, records from
``OpenAIServer`` (tests/openai_server.py) through ``record_via``, so cassettes keep the real
``https://api.openai.com/v1`` URLs.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from openai_server import OpenAIServer

from toolkit.project import Project

if TYPE_CHECKING:
    from toolkit.packaging import LogResult

ROOT = Path(__file__).resolve().parent.parent
#: Real OpenAI API responses, with their source and licence (tests/data/openai-recorded/README.md).
RECORDED = ROOT / "tests" / "data" / "openai-recorded"
OPENAI_BASE = "https://api.openai.com/v1"
#: The example chains under chains/, each with its cassette.
EXAMPLES = [
    "chat_as_code",
    "circle_area",
    "clv",
    "extract",
    "qa",
    "rag",
    "stream_story",
    "summarize",
    "triage",
]
#: The example agents (issue 10), also under chains/: a LangGraph tool agent and a ResponsesAgent.
AGENTS = ["agent", "responses_agent"]
CANARY_KEY = "sk-canary-0123456789abcdefghijklmnopqrstuv"


def copy_project(destination: Path) -> Project:
    """The example chains and their cassettes, copied into ``destination``."""
    shutil.copytree(ROOT / "chains", destination / "chains", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "cassettes", destination / "cassettes")
    return Project.at(destination)


#: What no test inherits from the shell that runs the suite.
UNSET = (
    "CHAINKIT_RECORD_MODE",
    "CHAINKIT_RECORD_VIA",
    "CHAINKIT_ALLOW_HOSTS",
    "OPENAI_API_KEY",
    "OPENAI_BASE_URL",
    "OPENAI_ORG_ID",
    "OPENAI_PROJECT_ID",
    # mlflow.set_tracking_uri() also sets this variable: without removing it, one test's
    # store would leak into the next.
    "MLFLOW_TRACKING_URI",
    "MLFLOW_REGISTRY_URI",
)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in UNSET:
        monkeypatch.delenv(name, raising=False)
    yield
    if "mlflow" in sys.modules:  # a tracking server's host stays reachable in mode none: forget it
        sys.modules["mlflow"].set_tracking_uri(None)
        sys.modules["mlflow"].set_registry_uri(None)


@pytest.fixture
def openai_server() -> Iterator[OpenAIServer]:
    with OpenAIServer() as server:
        yield server


@pytest.fixture
def record_via(openai_server: OpenAIServer) -> str:
    """What ``use_cassette(record_via=...)`` takes: the fake server's scheme://host:port."""
    return openai_server.base_url.removesuffix("/v1")


@pytest.fixture(autouse=True)
def fresh_async_openai_clients() -> Iterator[None]:
    """langchain-openai caches one async HTTP client per base URL for the whole process; its
    pooled connections belong to the event loop that opened them, and each test's
    ``asyncio.run`` closes its loop. Start every test with a fresh cache."""
    yield
    from langchain_openai.chat_models import _client_utils

    _client_utils._cached_async_httpx_client.cache_clear()


@pytest.fixture(scope="session")
def logged_examples(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Project, dict[str, LogResult]]]:
    """Every chain under chains/ logged once for the session (registered, alias ``candidate``)
    into a copy of the project with its own sqlite store (``mlflow.db`` in it): for the tests
    that only read these models (process-wide replay, verify). Logging them all takes ~10 s of
    CPU; tests that add models add their own, under other names or fingerprints."""
    import mlflow

    from toolkit.packaging import log_chains

    project = copy_project(tmp_path_factory.mktemp("logged"))
    store = f"sqlite:///{project.root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as monkeypatch:  # set up before any test's own fixtures
        for name in UNSET:
            monkeypatch.delenv(name, raising=False)
        logged = log_chains(project, register=True, alias="candidate", tracking_uri=store)
        mlflow.set_tracking_uri(None)
    results = {r.name: r for r in logged}
    assert all(r.ok for r in results.values()), [r.error for r in results.values() if not r.ok]
    yield project, results
    mlflow.set_tracking_uri(None)
