"""A tool-call scorer for agents: did the agent call the right tools with the right arguments?

``chainkit eval agent --scorer toolkit.tool_calls:tool_calls`` scores each row whose
expectations carry ``expected_tool_calls``, a list of ``{"name": ..., "arguments": {...}}``
(``arguments`` optional). The row passes when the agent made each expected call, in that order
(other calls may come between): same tool name, and each expected argument with the same value.

The calls are read from what the agent returned, in every shape chainkit's example agents give
(:func:`called_tools`): a LangGraph state or a list of LangChain messages (an AI message's
``tool_calls``), OpenAI chat messages (``tool_calls[].function``, arguments as a JSON string), and
Responses API output items (``function_call`` items, as a ResponsesAgent returns them).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any


def _arguments(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _messages(outputs: Any) -> list[Any]:
    if isinstance(outputs, str):
        try:
            outputs = json.loads(outputs)
        except ValueError:
            return []
    if isinstance(outputs, Mapping):
        for key in ("messages", "output"):  # a LangGraph state; a Responses API response
            if isinstance(outputs.get(key), list):
                return list(outputs[key])
        return [outputs]
    return list(outputs) if isinstance(outputs, list) else []


def called_tools(outputs: Any) -> list[dict[str, Any]]:
    """Every tool call in ``outputs``, in order, as ``{"name": str, "arguments": dict}``."""
    calls: list[dict[str, Any]] = []
    for message in _messages(outputs):
        if not isinstance(message, Mapping):
            continue
        if message.get("type") == "function_call":  # a Responses API output item
            calls.append({"name": message.get("name"), "arguments": _arguments(message.get("arguments"))})
            continue
        for call in message.get("tool_calls") or []:
            if not isinstance(call, Mapping):
                continue
            function = call.get("function")
            if isinstance(function, Mapping):  # OpenAI chat message
                calls.append(
                    {"name": function.get("name"), "arguments": _arguments(function.get("arguments"))}
                )
            else:  # a LangChain AI message's tool call
                calls.append({"name": call.get("name"), "arguments": _arguments(call.get("args"))})
    return calls


def _matches(made: Mapping[str, Any], expected: Mapping[str, Any]) -> bool:
    if made.get("name") != expected.get("name"):
        return False
    wanted = expected.get("arguments")
    if wanted is None:
        return True
    arguments = made.get("arguments")
    return isinstance(arguments, Mapping) and all(
        key in arguments and arguments[key] == value for key, value in dict(wanted).items()
    )


def tool_calls(outputs: Any, expectations: dict[str, Any]) -> bool | None:
    """True when every ``expected_tool_calls`` entry was called, in order; None without them."""
    expected = (expectations or {}).get("expected_tool_calls")
    if expected is None:
        return None
    made = iter(called_tools(outputs))
    return all(any(_matches(call, want) for call in made) for want in expected)


__all__ = ["called_tools", "tool_calls"]
