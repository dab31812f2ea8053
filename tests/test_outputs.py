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
    assert plain_output({1, 2}) in ("{1, 2}", "{2, 1}")  # not JSON: its str


def test_run_eval_and_log_share_it() -> None:
    from toolkit import evaluation, packaging, runner

    for module in (evaluation, packaging, runner):
        assert module.plain_output is plain_output, module.__name__
