"""Running a chain file the way MLflow does when it loads a model logged from code.

The file is executed as a fresh top-level module (so relative imports fail, as they will in
MLflow), with its directory at the end of ``sys.path`` so that helper modules beside it import
and nothing installed is shadowed. What it
passed to ``mlflow.models.set_model`` is the chain. MLflow keeps that in a module global that
it never resets; chainkit clears it first, so a file that forgets ``set_model`` fails loudly
instead of returning the chain loaded before it.

A chain's own code that calls ``sys.exit()`` (at import or when called) fails that chain alone,
as a :class:`ChainExitError`, instead of ending chainkit with the chain's exit code. Ctrl-C
(``KeyboardInterrupt``) is left alone: it still stops everything.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from toolkit.errors import ChainExitError, ChainLoadError

T = TypeVar("T")


@contextmanager
def on_sys_path(folder: Path) -> Iterator[None]:
    """``folder`` importable, after everything installed: a chain file named like a package it
    imports (``chains/langgraph.py``, as in MLflow's samples) must not shadow that package, for
    itself or its neighbours. Its helper modules still import, unless an installed module has
    their name (``chainkit list`` warns about such a name)."""
    entry = str(folder)
    added = entry not in sys.path
    if added:
        sys.path.append(entry)
    try:
        yield
    finally:
        if added and entry in sys.path:
            sys.path.remove(entry)


@contextmanager
def chain_code(what: str) -> Iterator[None]:
    """Around a chain's own code: a SystemExit it raises becomes a ChainExitError about ``what``."""
    try:
        yield
    except SystemExit as exc:
        raise exit_error(exc, what) from exc


def exit_error(exc: SystemExit, what: str) -> ChainExitError:
    return ChainExitError(
        f"{what} called sys.exit({exc.code!r}); a chain must raise an exception, not exit the "
        "process: fix the chain's code"
    )


def guarded(call: Callable[[Any], T], what: str) -> Callable[[Any], T]:
    """``call`` with :func:`chain_code` around every call."""

    def run(value: Any) -> T:  # once per evaluated row: no context manager to set up
        try:
            return call(value)
        except SystemExit as exc:
            raise exit_error(exc, what) from exc

    return run


def load_chain(path: Path, model_config: Path | None = None) -> Any:
    """Execute ``path`` and return the object it passed to ``set_model``."""
    import mlflow.models.model
    from mlflow.exceptions import MlflowException
    from mlflow.models.utils import _load_model_code_path  # MLflow's own loader, same semantics

    mlflow.models.model.__mlflow_model__ = None
    with on_sys_path(path.parent), chain_code(f"{path}: loading it"):
        try:
            model = _load_model_code_path(str(path), str(model_config) if model_config else None)
        except MlflowException as exc:
            cause = exc.__cause__
            if cause is None:
                raise ChainLoadError(
                    f"{path}: it did not call mlflow.models.set_model(...); end the file with "
                    "mlflow.models.set_model(chain)"
                ) from exc
            raise ChainLoadError(f"{path}: loading failed: {type(cause).__name__}: {cause}") from exc
        finally:
            mlflow.models.model.__mlflow_model__ = None
    return check_model(path, model)


def check_model(path: Path, model: Any) -> Any:
    """Accept a LangChain Runnable or an MLflow PythonModel, nothing else."""
    from langchain_core.runnables import Runnable
    from mlflow.pyfunc.model import PythonModel

    if isinstance(model, Runnable | PythonModel):
        return model
    raise ChainLoadError(
        f"{path}: set_model() was given a {type(model).__name__}, not a LangChain Runnable or an "
        "mlflow.pyfunc.PythonModel; pass the chain object itself"
    )


def predict_python_model(model: Any, model_input: Any) -> Any:
    """Call a PythonModel's predict with or without the ``context`` argument it declares."""
    parameters = list(inspect.signature(model.predict).parameters)
    if parameters and parameters[0] == "context":
        return model.predict(None, model_input)
    return model.predict(model_input)
