"""Per-invoke cost of replaying the LangGraph tool agent (chains/agent.py): chainkit vs its floor.

    .venv/bin/python benchmarks/agent.py [--quick] [--check]

One invoke of the agent is a ReAct loop of two chat calls (the model's tool call, the tool, the
final answer), each replayed from cassettes/agent.json (the repo's own recording):
 (a) floor: the same graph (``create_agent`` with the module's tools, prompt and model) whose
     ChatOpenAI sends through an in-memory ``httpx2.MockTransport`` that hands back the
     cassette's recorded bodies in their order (no lookup at all: the client's and the graph's
     own cost);
 (b) chainkit: the module's own agent under ``use_cassette("cassettes/agent.json", "none")``.
Both answer every question of datasets/agent.jsonl alike (checked). The cases run interleaved,
in turns of BLOCK invokes, and the ratio (b)/(a) is the median over rounds of process CPU time
(wall-clock beside it). Target: <= 1.15x. Exit 0; with --check, 1 when the target is missed.
"""

from __future__ import annotations

import argparse
import json
import runpy
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from itertools import cycle
from pathlib import Path
from typing import Any

import httpx2
from langchain.agents import create_agent
from langchain_openai import ChatOpenAI
from pydantic import SecretStr

from toolkit import use_cassette
from toolkit.cassette import Cassette

ROOT = Path(__file__).resolve().parent.parent
CHAIN, CASSETTE, DATASET = (
    ROOT / "chains" / "agent.py",
    ROOT / "cassettes" / "agent.json",
    ROOT / "datasets" / "agent.jsonl",
)
TARGET = 1.15
BLOCK = 8
ROW = "  {:<58}{:>10}{:>10}  {}"


def questions() -> list[Any]:
    return [json.loads(line)["inputs"] for line in DATASET.read_text().splitlines() if line.strip()]


def floor_agent(module: dict[str, Any]) -> Any:
    """The module's graph rebuilt over an in-memory transport that answers with the recorded
    bodies in the order the questions ask for them (each question: tool call, then answer)."""
    recorded = [
        (i.response.chunks()[0], dict(i.response.headers)) for i in Cassette.load(CASSETTE).interactions
    ]
    answers: Iterator[tuple[bytes, dict[str, str]]] = cycle(recorded)

    def handler(request: httpx2.Request) -> httpx2.Response:
        request.read()
        body, headers = next(answers)
        return httpx2.Response(200, headers=headers, content=body)

    original = module["agent"]
    model = ChatOpenAI(
        model="gpt-4o-mini",
        temperature=0,
        base_url="https://api.openai.com/v1",
        api_key=SecretStr("sk-bench"),
        http_client=httpx2.Client(transport=httpx2.MockTransport(handler)),
    )
    tools = [module["get_weather"], module["get_population"]]
    system_prompt = "You are a helpful assistant that uses tools. Call a tool when it can answer."
    rebuilt = create_agent(model, tools=tools, system_prompt=system_prompt)
    assert type(rebuilt) is type(original)
    return rebuilt


def answer(agent: Any, inputs: Any) -> str:
    return str(agent.invoke(inputs)["messages"][-1].content)


def timed(run: Callable[[], None]) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    run()
    return time.process_time() - cpu, time.perf_counter() - wall


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer rounds (smoke test)")
    parser.add_argument("--check", action="store_true", help="exit 1 when the target is missed")
    args = parser.parse_args(argv)
    rounds = 6 if args.quick else 30
    inputs = questions()
    with use_cassette(CASSETTE, "none"):
        module = runpy.run_path(str(CHAIN))  # its ChatOpenAI is built under the cassette
        replayed, floor = module["agent"], floor_agent(module)
        for question in inputs:  # the floor's canned order is the questions' order: same answers
            assert answer(replayed, question) == answer(floor, question), question

        def block(agent: Any) -> Callable[[], None]:
            def run() -> None:
                for _ in range(BLOCK // len(inputs)):
                    for question in inputs:
                        agent.invoke(question)

            return run

        for _ in range(3):  # warm: imports, caches, first-call costs
            block(floor)(), block(replayed)()
        samples: dict[str, list[tuple[float, float]]] = {"floor": [], "chainkit": []}
        for r in range(rounds):
            order = [("floor", floor), ("chainkit", replayed)][:: 1 if r % 2 == 0 else -1]
            for name, agent in order:
                samples[name].append(timed(block(agent)))
    invokes = BLOCK // len(inputs) * len(inputs)

    def ms(name: str, which: int) -> float:
        return statistics.median(sample[which] for sample in samples[name]) / invokes * 1e3

    ratios = [c[0] / f[0] for c, f in zip(samples["chainkit"], samples["floor"], strict=True)]
    wall_ratios = [c[1] / f[1] for c, f in zip(samples["chainkit"], samples["floor"], strict=True)]
    ratio, wall_ratio = statistics.median(ratios), statistics.median(wall_ratios)
    ok = ratio <= TARGET
    print(
        f"LangGraph tool agent (chains/agent.py): 2 chat calls an invoke; {rounds} rounds x {invokes} invokes"
    )
    print(ROW.format("per invoke", "cpu ms", "wall ms", ""))
    print(
        ROW.format(
            "(a) floor: the same graph over httpx2.MockTransport",
            f"{ms('floor', 0):.3f}",
            f"{ms('floor', 1):.3f}",
            "",
        )
    )
    print(
        ROW.format(
            "(b) chainkit: use_cassette(cassettes/agent.json)",
            f"{ms('chainkit', 0):.3f}",
            f"{ms('chainkit', 1):.3f}",
            "",
        )
    )
    verdict = "PASS" if ok else "FAIL"
    print(
        ROW.format(
            "(b) / (a), median of paired rounds",
            f"{ratio:.3f}x",
            f"{wall_ratio:.3f}x",
            f"target <= {TARGET}: {verdict}",
        )
    )
    return 1 if args.check and not ok else 0


if __name__ == "__main__":
    sys.exit(main())
