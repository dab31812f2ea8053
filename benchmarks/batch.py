"""The Batch API as an evaluation mode: overhead per row, requests submitted, cost live vs batch.
Usage: .venv/bin/python benchmarks/batch.py [--rows N] [--check]  (exit 1 only with --check and a miss)

A temporary project (chains/bench.py: ChatPromptTemplate | ChatOpenAI | StrOutputParser), a dataset
of N rows (default 10,000; every tenth row repeats an earlier one), and tests/batch_server.py in its
own process, instant (one retrieve per state, no latency).
 (a) batch: ``evaluate(..., batch=BatchOptions(...))`` from an empty cassette: round 1 defers every
     row's request, one batch is submitted, polled, its output recorded; round 2 replays and scores.
     Measured: CPU seconds of this process for the whole job, less the CPU spent inside the Batch
     API client's calls (upload, create, retrieve, download: the API's side of the job).
 (b) replay: ``evaluate`` of the same rows replayed from the cassette (a) filled (record mode none).
 target: (a) / (b) per row <= 2.0 (CPU: other processes on a shared machine do not count; wall
     times are printed beside).
 (c) requests submitted / distinct requests needed: 1.00 (identical rows are one line).
 (d) cost: the run's batch/cost_usd against batch/cost_usd_live_estimate.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from toolkit import batch_api, evaluation
from toolkit.batch_rounds import BatchOptions
from toolkit.project import Project

ROOT = Path(__file__).resolve().parent.parent
TARGET_OVERHEAD = 2.0
BENCH_CHAIN = """import mlflow
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_openai import ChatOpenAI

INPUT_EXAMPLE = {"question": "warm up"}
prompt = ChatPromptTemplate.from_messages([("system", "You are terse."), ("human", "{question}")])
chain = prompt | ChatOpenAI(model="gpt-4o-mini", max_retries=0) | StrOutputParser()
mlflow.models.set_model(chain)
"""
SERVER = (
    "import sys, threading; sys.path.insert(0, sys.argv[1]); "
    "from batch_server import BatchServer; s = BatchServer().start(); "
    "print(s.base_url.removesuffix('/v1'), flush=True); threading.Event().wait()"
)
API_CALLS = ("upload", "create", "retrieve", "find", "lines", "send_live")


def question(i: int) -> str:
    return f"Benchmark question {i:06d}: what does MLflow record for this run?"


def write_rows(path: Path, count: int) -> int:
    """N rows, every tenth a repeat of the row before it; returns how many are distinct."""
    distinct = set()
    with path.open("w") as out:
        for i in range(count):
            text = question(i - 1 if i % 10 == 9 else i)
            distinct.add(text)
            row = {"inputs": {"question": text}, "expectations": {"expected_contains": "Answer"}}
            out.write(json.dumps(row) + "\n")
    return len(distinct)


@contextmanager
def batch_server() -> Iterator[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(ROOT / "tests")], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        via = proc.stdout.readline().strip()
        os.environ["CHAINKIT_RECORD_VIA"] = via
        os.environ.setdefault("OPENAI_API_KEY", "sk-benchmark-not-a-real-key-000000")
        yield via
    finally:
        os.environ.pop("CHAINKIT_RECORD_VIA", None)
        proc.terminate()
        proc.wait()


@contextmanager
def api_time() -> Iterator[list[float]]:
    """CPU and wall seconds spent inside the Batch API client's calls: [cpu, wall]."""
    spent = [0.0, 0.0]
    originals = {name: getattr(batch_api.BatchClient, name) for name in API_CALLS}

    def timed(call: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            cpu, wall = time.process_time(), time.perf_counter()
            try:
                result = call(*args, **kwargs)
                if hasattr(result, "__next__"):  # lines(): a generator, timed as it is read
                    result = list(result)
                return result
            finally:
                spent[0] += time.process_time() - cpu
                spent[1] += time.perf_counter() - wall

        return wrapper

    for name, call in originals.items():
        setattr(batch_api.BatchClient, name, timed(call))
    try:
        yield spent
    finally:
        for name, call in originals.items():
            setattr(batch_api.BatchClient, name, call)


def run(folder: Path, data: Path, batch: BatchOptions | None) -> tuple[Any, float, float]:
    """One evaluation: (summary, CPU s, wall s)."""
    options = evaluation.EvalOptions(
        data=data,
        tracking_uri=f"sqlite:///{folder / 'mlflow.db'}",
        record_mode="new_episodes" if batch else "none",  # the chain's example, recorded at log time
        batch=batch,
    )
    cpu, wall = time.process_time(), time.perf_counter()
    summary = evaluation.evaluate(Project.at(folder), options, chain="bench")
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    assert summary.errors == 0, summary.failures
    return summary, cpu, wall


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args()
    from mlflow import MlflowClient

    with tempfile.TemporaryDirectory() as temporary, batch_server():
        folder = Path(temporary)
        for name in ("chains", "cassettes", "datasets"):
            (folder / name).mkdir()
        (folder / "chains" / "bench.py").write_text(BENCH_CHAIN)
        warm = folder / "datasets" / "warm.jsonl"
        warm.write_text("".join(json.dumps({"inputs": {"question": f"warm {i}"}}) + "\n" for i in range(20)))
        run(folder, warm, BatchOptions(poll_interval=0.01))  # imports, first loads: paid by neither
        run(folder, warm, None)
        data = folder / "datasets" / "bench.jsonl"
        distinct = write_rows(data, args.rows)
        with api_time() as spent:
            batched, batch_cpu, batch_wall = run(
                folder, data, BatchOptions(poll_interval=0.05, max_poll_interval=0.2)
            )
        replayed, replay_cpu, replay_wall = run(folder, data, None)
        metrics = (
            MlflowClient(tracking_uri=f"sqlite:///{folder / 'mlflow.db'}")
            .get_run(batched.run_id)
            .data.metrics
        )

    rows = args.rows
    outside_cpu = batch_cpu - spent[0]
    ratio = outside_cpu / replay_cpu
    submitted = metrics["batch/requests_submitted"]
    print(f"{rows} rows ({distinct} distinct requests), concurrency {evaluation.DEFAULT_CONCURRENCY}")
    line = "  {:<46}{:>12.3f}{:>13.3f}"
    print(f"  {'':<46}{'CPU ms/row':>12}{'wall ms/row':>13}")
    print(line.format("(a) batch job, whole", batch_cpu / rows * 1e3, batch_wall / rows * 1e3))
    print(line.format("    of which in the Batch API client", spent[0] / rows * 1e3, spent[1] / rows * 1e3))
    print(
        line.format(
            "(a) batch job, outside the API", outside_cpu / rows * 1e3, (batch_wall - spent[1]) / rows * 1e3
        )
    )
    print(
        line.format("(b) replayed evaluation, same rows", replay_cpu / rows * 1e3, replay_wall / rows * 1e3)
    )
    verdict = "ok" if ratio <= TARGET_OVERHEAD else "MISSED"
    print(f"  overhead per row (a)/(b): {ratio:.2f}x (target <= {TARGET_OVERHEAD:.1f}x) {verdict}")
    share = submitted / distinct
    print(f"  requests submitted / distinct needed: {submitted:.0f} / {distinct} = {share:.2f} (target 1.00)")
    live, cost = metrics["batch/cost_usd_live_estimate"], metrics["batch/cost_usd"]
    print(f"  cost of the job: live ~${live:.4f}, through the Batch API ~${cost:.4f} ({cost / live:.2f}x)")
    print(f"  rounds {metrics['batch/rounds']:.0f}, batches {metrics['batch/batches']:.0f}")
    assert replayed.replayed_rows == rows
    if args.check and (ratio > TARGET_OVERHEAD or submitted != distinct):
        sys.exit(1)


if __name__ == "__main__":
    main()
