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
        if spec.flavor is Flavor.PYFUNC:
            if stream:
                raise UsageError(f"chain {name} is an mlflow.pyfunc model: run it without --stream")
            output = plain_output(predict_python_model(chain, chain_input))
        elif stream:
            for chunk in chain.stream(chain_input):
                chunk = plain_output(chunk)
                chunks.append(chunk)
                if on_chunk is not None:
                    on_chunk(chunk if isinstance(chunk, str) else json.dumps(chunk, default=str) + "\n")
            output = "".join(chunks) if all(isinstance(c, str) for c in chunks) else chunks
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
