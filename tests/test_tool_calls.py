"""The tool-call scorer: the calls an agent made, read from each shape its output takes."""

from __future__ import annotations

import json
from typing import Any

import pytest

from toolkit.scorers import load_scorer, score
from toolkit.tool_calls import called_tools, tool_calls

WEATHER = {"name": "get_weather", "arguments": {"location": "Tokyo"}}
LANGGRAPH_STATE = {
    "messages": [
        {"type": "human", "content": "What's the weather in Tokyo?"},
        {
            "type": "ai",
            "content": "",
            "tool_calls": [{"name": "get_weather", "args": {"location": "Tokyo"}, "id": "c1"}],
        },
        {"type": "tool", "content": "18°C", "tool_call_id": "c1"},
        {"type": "ai", "content": "Rainy.", "tool_calls": []},
    ]
}
CHAT_MESSAGES = [
    {"role": "user", "content": "What's the weather in Tokyo?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "c1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"location":"Tokyo"}'},
            }
        ],
    },
]
RESPONSES_OUTPUT = {
    "object": "response",
    "output": [
        {
            "type": "function_call",
            "call_id": "c1",
            "name": "get_weather",
            "arguments": '{"location":"Tokyo"}',
        },
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Rainy."}]},
    ],
}


@pytest.mark.parametrize(
    "outputs", [LANGGRAPH_STATE, CHAT_MESSAGES, RESPONSES_OUTPUT, json.dumps(LANGGRAPH_STATE)]
)
def test_calls_are_read_from_every_output_shape(outputs: Any) -> None:
    assert called_tools(outputs) == [WEATHER]
    assert tool_calls(outputs, {"expected_tool_calls": [WEATHER]}) is True


def test_wrong_tool_wrong_argument_or_order_fails() -> None:
    assert tool_calls(LANGGRAPH_STATE, {"expected_tool_calls": [{"name": "get_population"}]}) is False
    wrong = {"name": "get_weather", "arguments": {"location": "Paris"}}
    assert tool_calls(LANGGRAPH_STATE, {"expected_tool_calls": [wrong]}) is False
    assert tool_calls(LANGGRAPH_STATE, {"expected_tool_calls": [WEATHER, WEATHER]}) is False  # called once
    assert (
        tool_calls(LANGGRAPH_STATE, {"expected_tool_calls": [{"name": "get_weather"}]}) is True
    )  # any arguments
    assert tool_calls("no calls at all", {"expected_tool_calls": [WEATHER]}) is False


def test_a_row_without_the_expectation_is_not_scored() -> None:
    assert tool_calls(LANGGRAPH_STATE, {"expected_contains": "Tokyo"}) is None
    scorer = load_scorer("toolkit.tool_calls:tool_calls")
    assert score([scorer], {}, LANGGRAPH_STATE, {}) == {}
    assert score([scorer], {}, LANGGRAPH_STATE, {"expected_tool_calls": [WEATHER]}) == {"tool_calls": True}
