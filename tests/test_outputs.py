"""The one output normalisation (toolkit/outputs.py) used by run, eval and log."""

from __future__ import annotations

from langchain_core.messages import AIMessage
from pydantic import BaseModel

from toolkit.outputs import plain_output


class Person(BaseModel):
    name: str
    age: int


class Text(str):
    """langchain's parsers may return a str subclass, which MLflow's schema inference rejects."""


def test_message_content_model_dump_and_str_subclass() -> None:
    assert plain_output(AIMessage(content="hi")) == "hi"
    assert plain_output(Person(name="Ada", age=36)) == {"name": "Ada", "age": 36}
    assert type(plain_output(Text("x"))) is str
    assert plain_output({"a": [1, 2.5, None]}) == {"a": [1, 2.5, None]}
    assert plain_output({2, 1}) == [1, 2]  # a set: a sorted list
    assert plain_output(object()).startswith("<object object")  # no JSON form: its str


def test_nested_objects_become_json_data_not_python_reprs() -> None:
    """`chainkit run --json` used to print reprs for a LangGraph state, a DataFrame, numpy."""
    import numpy as np
    import pandas as pd
    from langchain_core.messages import HumanMessage

    state = {"messages": [HumanMessage(content="hi", id="1"), AIMessage(content="hello", id="2")]}
    [human, ai] = plain_output(state)["messages"]
    assert (human["type"], human["content"], ai["type"], ai["content"]) == ("human", "hi", "ai", "hello")
    frame = pd.DataFrame({"answer": ["a", "b"], "score": [np.float64(0.5), np.float64(1.0)]})
    assert plain_output(frame) == [{"answer": "a", "score": 0.5}, {"answer": "b", "score": 1.0}]
    assert plain_output({"vector": np.array([1, 2]), "n": np.int64(3)}) == {"vector": [1, 2], "n": 3}
    assert plain_output([Person(name="Ada", age=36)]) == [{"name": "Ada", "age": 36}]


def test_run_eval_and_log_share_it() -> None:
    from toolkit import attempt, packaging, runner

    for module in (attempt, packaging, runner):  # attempt: where an evaluation row's output is made
        assert module.plain_output is plain_output, module.__name__
