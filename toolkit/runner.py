"""Running one discovered chain under its cassette: what ``chainkit run`` and the pytest
fixtures call."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from toolkit.discovery import ChainSpec, Flavor, discover
from toolkit.errors import UsageError
from toolkit.loading import chain_code, load_chain, predict_python_model
from toolkit.outputs import plain_output
from toolkit.project import Project
from toolkit.replay import CassetteSession, RecordMode, use_cassette


@dataclass
class RunResult:
    chain: str
    output: Any
    cassette: Path
    record_mode: str
    replayed: int
    recorded: int
    chunks: list[Any] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "chain": self.chain,
            "output": self.output,
            "chunks": self.chunks,
            "cassette": str(self.cassette),
            "record_mode": self.record_mode,
            "replayed": self.replayed,
            "recorded": self.recorded,
        }


@contextmanager
def chain_under_cassette(
    project: Project,
    name: str,
    *,
    record_mode: str | RecordMode | None = None,
    cassette: Path | None = None,
    allow_hosts: Iterable[str] = (),
) -> Iterator[tuple[ChainSpec, Any, CassetteSession]]:
    """Load chain ``name`` with its cassette active; the cassette stays active in the block."""
    spec = discover(project.chains_dir).get(name)
    path = cassette or project.cassette_for(name)
    with use_cassette(
        path, record_mode, allow_hosts=allow_hosts, ignore_json_paths=project.ignore_json_paths
    ) as session:
        # Loading runs the file: anything it calls at import time is served by the cassette too.
        yield spec, load_chain(spec.path, spec.model_config), session


def run_chain(
    project: Project,
    name: str,
    chain_input: Any,
    *,
    stream: bool = False,
    record_mode: str | RecordMode | None = None,
    cassette: Path | None = None,
    allow_hosts: Iterable[str] = (),
    on_chunk: Callable[[str], None] | None = None,
) -> RunResult:
    with (
        chain_under_cassette(
            project, name, record_mode=record_mode, cassette=cassette, allow_hosts=allow_hosts
        ) as (spec, chain, session),
        chain_code(f"chain {name}"),
    ):
        chunks: list[Any] = []
        if stream:
            source = (
                stream_python_model(name, chain, chain_input)
                if spec.flavor is Flavor.PYFUNC
                else chain.stream(chain_input)
            )
            texts: list[str | None] = []
            for chunk in source:
                chunk = plain_output(chunk)
                chunks.append(chunk)
                texts.append(chunk_text(chunk))
                if on_chunk is not None and texts[-1] is not None:
                    on_chunk(texts[-1])
                elif on_chunk is not None and spec.flavor is Flavor.LANGCHAIN:  # an agent's events: in --json
                    on_chunk(json.dumps(chunk, default=str) + "\n")
            text_chunks = [text for text in texts if text is not None]  # an agent's: between events
            output = "".join(text_chunks) if text_chunks else chunks
        elif spec.flavor is Flavor.PYFUNC:
            output = plain_output(predict_python_model(chain, chain_input))
        else:
            output = plain_output(chain.invoke(chain_input))
    return RunResult(
        chain=name,
        output=output,
        cassette=session.path,
        record_mode=session.mode.value,
        replayed=session.replayed,
        recorded=len(session.new),
        chunks=chunks,
    )


def stream_python_model(name: str, model: Any, model_input: Any) -> Iterator[Any]:
    """A pyfunc model's ``predict_stream`` (ResponsesAgent, ChatAgent, a PythonModel that
    implements it), called with or without the ``context`` argument it declares."""
    import inspect

    parameters = list(inspect.signature(model.predict_stream).parameters)
    try:
        if parameters and parameters[0] == "context":
            yield from model.predict_stream(None, model_input)
        else:
            yield from model.predict_stream(model_input)
    except NotImplementedError:  # MLflow's base classes raise it
        raise UsageError(
            f"chain {name} is an mlflow.pyfunc model without predict_stream: implement it, or run "
            "without --stream"
        ) from None


def chunk_text(chunk: Any) -> str | None:
    """The text a streamed chunk adds: a string chunk itself, a ResponsesAgent's
    ``response.output_text.delta``, a ChatAgent chunk's ``delta.content``; None for the rest."""
    if isinstance(chunk, str):
        return chunk
    if not isinstance(chunk, dict):
        return None
    if chunk.get("type") == "response.output_text.delta" and isinstance(chunk.get("delta"), str):
        return str(chunk["delta"])
    delta = chunk.get("delta")
    if isinstance(delta, dict) and isinstance(delta.get("content"), str):
        return str(delta["content"])
    return None
