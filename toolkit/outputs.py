"""What a chain returned, as plain JSON-ready data: the one normalisation that ``chainkit run``,
evaluation rows and the logged signature all apply, so the three never disagree."""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Mapping
from typing import Any


def plain_output(output: Any) -> Any:
    """A message's ``content``; anything else as JSON data (:func:`json_data`)."""
    content = getattr(output, "content", None)
    if content is not None:
        output = content
    return json_data(output)


def json_data(value: Any) -> Any:
    """``value`` as JSON data, in the shapes MLflow's scoring server answers with: a DataFrame as
    its records, pydantic models and LangChain messages (a LangGraph state's ``messages``) dumped,
    numpy values as lists and numbers, ``str`` subclasses as ``str``; a set as a sorted list; what
    has no JSON form, as its ``str``."""
    if value is None:
        return None
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int | float):  # numpy's float64 is a float: plain numbers out
        return int(value) if isinstance(value, int) else float(value)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, Mapping):
        return {str(key): json_data(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_data(item) for item in value]
    if isinstance(value, set | frozenset):
        return sorted((json_data(item) for item in value), key=str)
    if hasattr(value, "to_dict") and hasattr(value, "columns"):  # a pandas DataFrame
        return json_data(value.to_dict(orient="records"))
    if hasattr(value, "model_dump"):  # pydantic, and so LangChain messages
        return json_data(value.model_dump(mode="json"))
    if hasattr(value, "tolist"):  # numpy arrays and scalars, a pandas Series
        return json_data(value.tolist())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return json_data(dataclasses.asdict(value))
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    return str(value)


__all__ = ["json_data", "plain_output"]
