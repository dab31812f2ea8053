"""An LLM judge's replay cost: a replayed evaluation with MLflow's Correctness judge vs without.
Usage: .venv/bin/python benchmarks/judge.py [--quick] [--check]  (exit 1 only with --check and a miss)

A temporary project (chains/bench.py: ChatPromptTemplate | ChatOpenAI | StrOutputParser) is
evaluated once live with ``--scorer Correctness`` against tests/openai_server.py (the judge's
calls go through requests, the chain's through httpx2), recording both cassettes. Then, in
interleaved rounds, offline (mode none, concurrency 1):
 (a) evaluate's row phase per row without the judge;
 (b) the same with the judge (its call replayed from cassettes/bench.judges.json);
 (c) one chat call replayed: chain.invoke under use_cassette, as benchmarks/replay.py measures;
 (d) the judge called alone, requests answered in memory by a canned response (the floor: MLflow's
     judge and requests' own cost, no replay);
 (e) the judge called alone, replayed by chainkit's requests door.
Target: what the judge adds, (b) - (a), <= 1.2 x (c). Printed beside it: (e) / (d), the share of
the judge's cost that is chainkit's. Figures are process CPU time per row (the median over
rounds), the wall-clock beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import eval as eval_bench  # noqa: E402 - benchmarks/eval.py, beside this script
from openai_server import OpenAIServer, default_responder  # noqa: E402

from toolkit import use_cassette  # noqa: E402
from toolkit.loading import load_chain  # noqa: E402

TARGET = 1.2
BENCH_CHAIN = """import mlflow
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_openai import ChatOpenAI

prompt = ChatPromptTemplate.from_messages([("system", "You are terse."), ("human", "{question}")])
model = ChatOpenAI(model="gpt-4o-mini", base_url="https://api.openai.com/v1", max_retries=0)
mlflow.models.set_model(prompt | model | StrOutputParser())
"""
ROW = "  {:<52}{:>10}{:>10}  {}"


def judge_responder(endpoint: str, body: dict[str, Any]) -> str:
    if "response_format" in body:
        return json.dumps({"rationale": "The answer matches.", "result": "yes"})
    return default_responder(endpoint, body)


def question(i: int) -> str:
    return f"question number {i}"


def evaluate(folder: Path, data: Path, scorers: list[str], mode: str = "none") -> tuple[float, float]:
    """(wall, CPU) seconds per row of evaluate's row phase, at concurrency 1 (benchmarks/eval.py's)."""
    summary, wall, cpu = eval_bench.evaluate(folder, data, 1, mode, scorers=scorers)
    return wall / summary.rows, cpu / summary.rows


def invoke_replay(folder: Path, count: int) -> tuple[float, float]:
    """(wall, CPU) seconds per chain.invoke replayed from the cassette: one chat call."""
    with use_cassette(folder / "cassettes" / "bench.json", "none"):
        chain = load_chain(folder / "chains" / "bench.py")  # the replay key is set by now
        chain.invoke({"question": question(0)})  # warm
        wall, cpu = time.perf_counter(), time.process_time()
        for i in range(count):
            assert chain.invoke({"question": question(i)}) == f"Answer to: {question(i)}"
        return (time.perf_counter() - wall) / count, (time.process_time() - cpu) / count


JUDGE_ANSWER = {
    "id": "chatcmpl-judge",
    "object": "chat.completion",
    "created": 1760395822,
    "model": "gpt-4.1-mini",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": json.dumps({"rationale": "ok", "result": "yes"})},
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 100, "completion_tokens": 10, "total_tokens": 110},
}


def judge_alone(folder: Path, count: int, *, floor: bool) -> tuple[float, float]:
    """(wall, CPU) seconds per call of the Correctness judge by itself: replayed from the judges'
    cassette, or (``floor``) with requests answered in memory."""
    import requests
    from mlflow.genai.scorers import Correctness

    judge = Correctness()

    def call(i: int) -> None:
        expected = f"Answer to: {question(i)}"
        feedback = judge(
            inputs={"question": question(i)}, outputs=expected, expectations={"expected_response": expected}
        )
        assert feedback.value == "yes", feedback.error

    def canned(adapter: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
        response = requests.Response()
        response.status_code, response.url, response.request = 200, request.url, request
        response.headers["content-type"] = "application/json"
        response._content = json.dumps(JUDGE_ANSWER).encode()
        return response

    original = requests.adapters.HTTPAdapter.send
    cassette = folder / "cassettes" / "bench.judges.json"
    with use_cassette(cassette, "none") if not floor else use_cassette(folder / "absent.json", "none"):
        if floor:
            requests.adapters.HTTPAdapter.send = canned  # type: ignore[method-assign]
        try:
            call(0)  # warm
            wall, cpu = time.perf_counter(), time.process_time()
            for i in range(count):
                call(i)
            return (time.perf_counter() - wall) / count, (time.process_time() - cpu) / count
        finally:
            requests.adapters.HTTPAdapter.send = original  # type: ignore[method-assign]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer rows and rounds (smoke test)")
    parser.add_argument("--check", action="store_true", help="exit 1 when the target is missed")
    args = parser.parse_args(argv)
    rows, rounds = (40, 2) if args.quick else (200, 5)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "chains").mkdir()
        (folder / "chains" / "bench.py").write_text(BENCH_CHAIN)
        (folder / "cassettes").mkdir()
        data = folder / "data.jsonl"
        with data.open("w") as out:
            for i in range(rows):
                expectations = {"expected_response": f"Answer to: {question(i)}"}
                out.write(
                    json.dumps({"inputs": {"question": question(i)}, "expectations": expectations}) + "\n"
                )
        with OpenAIServer(responder=judge_responder) as server:
            os.environ["CHAINKIT_RECORD_VIA"] = server.base_url.removesuffix("/v1")
            try:
                evaluate(folder, data, ["Correctness"], mode="once")
            finally:
                del os.environ["CHAINKIT_RECORD_VIA"]
        plain: list[tuple[float, float]] = []
        judged: list[tuple[float, float]] = []
        chat: list[tuple[float, float]] = []
        alone_floor: list[tuple[float, float]] = []
        alone: list[tuple[float, float]] = []
        for _ in range(rounds):  # interleaved: machine noise hits every case alike
            plain.append(evaluate(folder, data, []))
            judged.append(evaluate(folder, data, ["Correctness"]))
            chat.append(invoke_replay(folder, rows))
            alone_floor.append(judge_alone(folder, rows, floor=True))
            alone.append(judge_alone(folder, rows, floor=False))

    def median(samples: list[tuple[float, float]], which: int) -> float:
        return statistics.median(sample[which] for sample in samples)

    ratios = [(j[1] - p[1]) / c[1] for p, j, c in zip(plain, judged, chat, strict=True)]
    ratio = statistics.median(ratios)
    print(f"LLM judge replay, {rows} rows, {rounds} rounds (per row, ms: CPU, wall)")
    print(ROW.format("", "CPU ms", "wall ms", ""))
    print(
        ROW.format(
            "(a) evaluation row, no judge",
            f"{median(plain, 1) * 1e3:.2f}",
            f"{median(plain, 0) * 1e3:.2f}",
            "",
        )
    )
    print(
        ROW.format(
            "(b) evaluation row, Correctness judge replayed",
            f"{median(judged, 1) * 1e3:.2f}",
            f"{median(judged, 0) * 1e3:.2f}",
            "",
        )
    )
    print(
        ROW.format(
            "(c) one chat call replayed (chain.invoke)",
            f"{median(chat, 1) * 1e3:.2f}",
            f"{median(chat, 0) * 1e3:.2f}",
            "",
        )
    )
    print(
        ROW.format(
            "(d) the judge alone, requests answered in memory",
            f"{median(alone_floor, 1) * 1e3:.2f}",
            f"{median(alone_floor, 0) * 1e3:.2f}",
            "",
        )
    )
    print(
        ROW.format(
            "(e) the judge alone, replayed",
            f"{median(alone, 1) * 1e3:.2f}",
            f"{median(alone, 0) * 1e3:.2f}",
            "",
        )
    )
    door = statistics.median(e[1] / d[1] for d, e in zip(alone_floor, alone, strict=True))
    print(ROW.format("chainkit's share of a judge call, (e) / (d)", f"{door:.2f}x", "", ""))
    verdict = "ok" if ratio <= TARGET else "MISS"
    print(ROW.format("judge adds, ((b) - (a)) / (c)", f"{ratio:.2f}x", "", f"target <= {TARGET}: {verdict}"))
    print(
        f"  per-round ratios: {', '.join(f'{r:.2f}' for r in ratios)}; load average {os.getloadavg()[0]:.2f}"
    )
    return 1 if args.check and ratio > TARGET else 0


if __name__ == "__main__":
    sys.exit(main())
