"""Process-wide replay: ``CHAINKIT_CASSETTE`` turns replay on in any Python process.

A chain logged by chainkit runs elsewhere than the process that logged it: ``mlflow models
predict`` and ``serve``, Spark executors, a fresh interpreter, the child processes of any of
these. None of them runs chainkit's code, so chainkit installs a start-up hook with itself
(``chainkit-replay.pth`` in site-packages, written by setup.py; coverage.py's
``COVERAGE_PROCESS_START`` pattern): a
line that reads one environment variable and imports nothing unless it is set. Set, it calls
:func:`start` before the process's own first line:

- ``CHAINKIT_CASSETTE=cassettes/qa.json`` (several joined with ``os.pathsep``): the process runs
  inside ``use_cassette(PATH, $CHAINKIT_RECORD_MODE or none)`` from its first line to its exit
  (recordings saved at exit, and durable before that: see :mod:`toolkit.recording_log`).
- ``CHAINKIT_CASSETTE=model``: the recordings carried by whichever model the process loads
  (``chainkit log`` stores the chain's cassette in the model as ``chainkit/cassette.json``). The
  cassette is entered when MLflow reads the model's MLmodel file, before the chain's code runs,
  so a chain that calls the API at import (rag embeds its corpus) replays too. Replay only.

The environment is inherited, so every Python process started from such a process replays as
well. In record mode none the network guard holds for the whole process, except loopback:
MLflow's scoring server and Spark talk to themselves over 127.0.0.1 (DESIGN field note 13).
HTTP sent through httpx/httpx2 to loopback is still answered from the cassette, never live.
"""

from __future__ import annotations

import atexit
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from toolkit.errors import UsageError
from toolkit.network import NetworkGuard
from toolkit.record_mode import allowed_hosts_from_environment
from toolkit.replay import RecordMode, mlflow_hosts, use_cassette

CASSETTE_VARIABLE = "CHAINKIT_CASSETTE"
#: ``CHAINKIT_CASSETTE=model``: the recordings carried by the model being loaded.
FROM_MODEL = "model"
#: Where a logged model carries its recordings, relative to the model's directory.
CARRIED_CASSETTE = Path("chainkit") / "cassette.json"
LOOPBACK = ("127.0.0.1", "::1", "localhost")

_lock = threading.Lock()
_entered: list[use_cassette] = []
_cassettes: set[Path] = set()
_guard: NetworkGuard | None = None
_started = False


def start(environ: Mapping[str, str] | None = None) -> None:
    """Turn process-wide replay on as ``$CHAINKIT_CASSETTE`` says (once per process)."""
    global _started
    environ = os.environ if environ is None else environ
    value = environ.get(CASSETTE_VARIABLE, "").strip()
    with _lock:
        if _started or not value:
            return
        _started = True
    mode = RecordMode.parse(environ.get("CHAINKIT_RECORD_MODE"))
    atexit.register(stop)
    if value == FROM_MODEL:
        if mode is not RecordMode.NONE:
            raise UsageError(
                f"{CASSETTE_VARIABLE}=model replays the recordings a model carries; record mode "
                f"{mode.value!r} needs a cassette file: set {CASSETTE_VARIABLE}=PATH to record"
            )
        _close_network()
        patch_on_import("mlflow.models.model", _watch_model_loads)
        return
    for path in value.split(os.pathsep):
        if path.strip():
            enter(Path(path.strip()), mode)


def enter(path: Path, mode: RecordMode = RecordMode.NONE) -> None:
    """Use the cassette at ``path`` until the process exits (once per file)."""
    resolved = path.resolve()
    with _lock:
        if resolved in _cassettes:
            return
        _cassettes.add(resolved)
    context = use_cassette(path, mode, network_allows=LOOPBACK)
    context.__enter__()
    with _lock:
        _entered.append(context)


def stop() -> None:
    """Save what was recorded and undo the patches (at exit; also for tests)."""
    global _guard, _started
    while True:
        with _lock:
            if not _entered:
                break
            context = _entered.pop()
        context.__exit__(None, None, None)
    with _lock:
        guard, _guard = _guard, None
        _cassettes.clear()
        _started = False
    if guard is not None:
        guard.__exit__(None, None, None)


def _close_network() -> None:
    """Before any model is loaded, nothing leaves the process either (loopback aside)."""
    global _guard
    guard = NetworkGuard([*LOOPBACK, *mlflow_hosts(), *allowed_hosts_from_environment()])
    guard.__enter__()
    _guard = guard


# --------------------------------------------------------------- recordings carried by a model


def carried_cassette(model_dir: Path) -> Path | None:
    path = model_dir / CARRIED_CASSETTE
    return path if path.is_file() else None


def _watch_model_loads(module: ModuleType) -> None:
    """Wrap ``mlflow.models.Model.load``: every model load goes through it, before the
    flavor runs the chain's code (pyfunc.load_model, serving, spark_udf's executors)."""
    model_class = module.Model
    original = model_class.__dict__["load"].__func__

    def load(cls: type, /, path: Any, **kwargs: Any) -> Any:
        local = Path(str(path))
        folder = local if local.is_dir() else local.parent
        carried = carried_cassette(folder) if local.exists() else None
        if carried is not None:
            enter(carried)
        return original(cls, path, **kwargs)

    model_class.load = classmethod(load)


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Runs ``patch(module)`` right after ``name`` is first imported (without importing it now:
    the hook must cost nothing in a process that never loads a model)."""

    def __init__(self, name: str, patch: Callable[[ModuleType], None]) -> None:
        self.name, self.patch = name, patch

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        loader, patch = spec.loader, self.patch
        run = loader.exec_module

        def exec_module(module: ModuleType) -> None:
            run(module)
            patch(module)

        loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def patch_on_import(name: str, patch: Callable[[ModuleType], None]) -> None:
    if name in sys.modules:
        patch(sys.modules[name])
    else:
        sys.meta_path.insert(0, _PatchOnImport(name, patch))


__all__ = ["CARRIED_CASSETTE", "CASSETTE_VARIABLE", "FROM_MODEL", "enter", "start", "stop"]
