"""Batch evaluation: toolkit.evaluation.evaluate vs the ideal and mlflow.genai.evaluate; memory.
Usage: .venv/bin/python benchmarks/eval.py [--quick] [--check]  (exit 1 only with --check and a miss)

A temporary project (chains/bench.py: ChatPromptTemplate | ChatOpenAI | StrOutputParser, cassettes/,
a sqlite MLflow store); tests/openai_server.py answers from its own process (no GIL shared).
 (a) live, 100 ms per call, concurrency 40, record mode all: row phase (run_rows, wrapped and timed)
     / ideal (rows x 0.1 s / 40), with threads and with --engine processes (the row phase there
     includes starting the workers); beside it the totals, the bare chain.batch floor, and
     mlflow.genai.evaluate (40 workers, in a subprocess; 200 rows if 400 take over 4 minutes);
 (b) replay at concurrency 1, mode none: row phase per row / chain.invoke under use_cassette;
 (c) memory: peak RSS of a replay evaluation, a fresh subprocess per dataset size.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from toolkit import evaluation, use_cassette
from toolkit.loading import load_chain
from toolkit.project import Project

ROOT = Path(__file__).resolve().parent.parent
LATENCY, CONCURRENCY = 0.1, 40
TARGET_LIVE, TARGET_REPLAY, TARGET_MEMORY = 1.3, 1.3, 1.15
GENAI_TIMEOUT_S, GENAI_CAP = 240, 200
BENCH_CHAIN = """import mlflow
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_openai import ChatOpenAI

prompt = ChatPromptTemplate.from_messages([("system", "You are terse."), ("human", "{question}")])
model = ChatOpenAI(model="gpt-4o-mini", base_url="https://api.openai.com/v1", max_retries=0)
chain = prompt | model | StrOutputParser()
mlflow.models.set_model(chain)
"""
ECHO_CHAIN = """import mlflow
from langchain_core.runnables import RunnableLambda

mlflow.models.set_model(RunnableLambda(lambda inputs: "Answer to: " + inputs["question"]))
"""
# The server process turns Nagle off on its sockets: with it on, an answer's header and body
# writes meet the client's delayed ACK, and every call takes ~40 ms more than the set latency.
SERVER = (
    "import socketserver, sys, threading; sys.path.insert(0, sys.argv[1]); "
    "socketserver.StreamRequestHandler.disable_nagle_algorithm = True; "
    "from openai_server import OpenAIServer; s = OpenAIServer(latency=float(sys.argv[2])).start(); "
    "print(s.base_url.removesuffix('/v1'), flush=True); threading.Event().wait()"
)
ROW = "  {:<58}{:>9}{:>9}{:>9}  {}"


def question(i: int) -> str:
    return f"Benchmark question {i:06d}: what does MLflow record for this run?"


def make_project(folder: Path, source: str = BENCH_CHAIN) -> Path:
    for name in ("chains", "cassettes", "datasets"):
        (folder / name).mkdir(parents=True, exist_ok=True)
    (folder / "chains" / "bench.py").write_text(source)
    return folder


def write_rows(path: Path, count: int, start: int = 0) -> Path:
    expectations = {"expected_contains": "Answer"}
    with path.open("w") as out:
        for i in range(start, start + count):
            out.write(json.dumps({"inputs": {"question": question(i)}, "expectations": expectations}) + "\n")
    return path


@contextmanager
def recording_server(latency: float) -> Iterator[str]:
    """tests/openai_server.py in its own process, with CHAINKIT_RECORD_VIA set to it; yields its URL."""
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(ROOT / "tests"), str(latency)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        os.environ["CHAINKIT_RECORD_VIA"] = via = proc.stdout.readline().strip()
        yield via
    finally:
        os.environ.pop("CHAINKIT_RECORD_VIA", None)
        proc.terminate()
        proc.wait()


def evaluate(
    folder: Path,
    data: Path,
    concurrency: int,
    mode: str,
    engine: str = "threads",
    scorers: Sequence[str] = (),
) -> tuple[Any, float, float]:
    """One toolkit evaluation: (summary, row-phase wall s, row-phase CPU s); run_rows is wrapped."""
    timed: list[tuple[float, float]] = []
    original = evaluation.run_rows

    async def run_rows(*args: Any, **kwargs: Any) -> int:
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            return await original(*args, **kwargs)
        finally:
            timed.append((time.perf_counter() - wall, time.process_time() - cpu))

    evaluation.run_rows = run_rows
    try:
        options = evaluation.EvalOptions(
            data=data,
            concurrency=concurrency,
            record_mode=mode,
            tracking_uri=f"sqlite:///{folder / 'mlflow.db'}",
            engine=engine,
            scorers=scorers,
        )
        summary = evaluation.evaluate(Project.at(folder), options, chain="bench")
    finally:
        evaluation.run_rows = original
    assert summary.errors == 0 and summary.scorer_errors == 0, summary.failures
    return summary, *timed[0]


def invoke_replay(folder: Path, start: int, count: int) -> tuple[float, float]:
    """(wall, CPU) seconds per chain.invoke replayed from the cassette, as benchmarks/replay.py does."""
    chain = load_chain(folder / "chains" / "bench.py")
    with use_cassette(folder / "cassettes" / "bench.json", "none"):
        chain.invoke({"question": question(start)})  # warm
        wall, cpu = time.perf_counter(), time.process_time()
        for i in range(start, start + count):
            assert chain.invoke({"question": question(i)}) == f"Answer to: {question(i)}"
        return (time.perf_counter() - wall) / count, (time.process_time() - cpu) / count


def batch_floor(folder: Path, rows: int, via: str) -> float:
    """The chain alone: chain.batch under use_cassette(all); no runner, no scoring, no MLflow."""
    chain = load_chain(folder / "chains" / "bench.py")
    inputs = [{"question": question(700_000 + i)} for i in range(rows + CONCURRENCY)]
    with use_cassette(folder / "cassettes" / "floor.json", "all", record_via=via):
        chain.batch(inputs[rows:], config={"max_concurrency": CONCURRENCY})  # warm
        started = time.perf_counter()
        chain.batch(inputs[:rows], config={"max_concurrency": CONCURRENCY})
        return time.perf_counter() - started


def genai_worker(folder: Path, rows: int, via: str) -> None:
    """mlflow.genai.evaluate over the same chain and live server; prints its wall seconds."""
    import mlflow
    from mlflow.genai.scorers import scorer

    mlflow.set_tracking_uri(f"sqlite:///{folder / 'mlflow.db'}")
    chain = load_chain(folder / "chains" / "bench.py")

    @scorer
    def answered(outputs: Any) -> bool:
        return str(outputs).startswith("Answer to:")

    data = [{"inputs": {"question": question(10_000 + i)}} for i in range(rows)]
    with use_cassette(folder / "cassettes" / "genai.json", "all", record_via=via):
        started = time.perf_counter()
        mlflow.genai.evaluate(
            data=data, predict_fn=lambda question: chain.invoke({"question": question}), scorers=[answered]
        )
        print(json.dumps({"seconds": time.perf_counter() - started}))


def memory_worker(folder: Path, data: Path, concurrency: int) -> None:
    import langchain_openai  # noqa: F401 - the imports are not what is measured
    import mlflow  # noqa: F401

    before = int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize() // 1024  # RSS now
    summary, wall, _ = evaluate(folder, data, concurrency, "none")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"peak_kb": peak, "before_kb": before, "rows": summary.rows, "seconds": wall}))


def worker(*args: str, timeout: float | None = None) -> dict[str, Any] | None:
    """Run this file as a worker: its JSON result, or None when it ran out of time (it is killed)."""
    try:
        done = subprocess.run(
            [sys.executable, __file__, "--worker", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=True,
        )
    except subprocess.TimeoutExpired:
        return None
    except subprocess.CalledProcessError as exc:
        raise RuntimeError(f"worker {args} failed:\n{exc.stderr[-3000:]}") from exc
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def verdict(ok: bool, target: str) -> str:
    return f"{target}  {'PASS' if ok else 'FAIL'}"


def live(tmp: Path, rows: int) -> bool:
    folder, ideal = make_project(tmp / "live"), rows * LATENCY / CONCURRENCY
    warm, single, full = (
        write_rows(folder / "datasets" / f"{name}.jsonl", n, at)
        for name, n, at in (("warm", 1, 900_000), ("one", 1, 800_000), ("live", rows, 0))
    )
    with recording_server(LATENCY) as via:
        evaluate(folder, warm, CONCURRENCY, "all")  # imports, first-call costs
        one, one_rows, _ = evaluate(folder, single, CONCURRENCY, "all")
        setup = one.seconds - one_rows  # a warm run's total less its row phase
        summary, wall, _ = evaluate(folder, full, CONCURRENCY, "all")
        assert summary.live_rows == rows
        processes, processes_wall, _ = evaluate(folder, full, CONCURRENCY, "all", engine="processes")
        assert processes.live_rows == rows
        workers = os.cpu_count() or 1
        lines: list[tuple[str, float, float]] = [  # label, wall seconds, ideal seconds
            ("chainkit row phase (run_rows)", wall, ideal),
            (f"chainkit row phase, --engine processes ({workers} workers)", processes_wall, ideal),
            ("chainkit evaluate() total (EvalSummary.seconds)", summary.seconds, ideal),
            (f"chainkit total - setup of a warm 1-row run ({setup:.2f} s)", summary.seconds - setup, ideal),
            (f"floor: bare chain.batch, {CONCURRENCY} threads", batch_floor(folder, rows, via), ideal),
        ]
        genai_rows, result = rows, worker("genai", str(folder), str(rows), via, timeout=GENAI_TIMEOUT_S)
        if result is None:
            lines.append((f"mlflow.genai.evaluate, {rows} rows: killed after", GENAI_TIMEOUT_S, ideal))
            genai_rows = min(rows, GENAI_CAP)
            result = worker("genai", str(folder), str(genai_rows), via)
        assert result is not None
        lines.append(
            (
                f"mlflow.genai.evaluate, {genai_rows} rows",
                result["seconds"],
                genai_rows * LATENCY / CONCURRENCY,
            )
        )
    print(
        f"(a) LIVE: {rows} distinct rows, fake OpenAI server in its own process, "
        f"{LATENCY * 1e3:.0f} ms per call, concurrency {CONCURRENCY}, record mode all"
    )
    print(ROW.format("measurement", "wall s", "ideal s", "ratio", "target"))
    for n, (label, seconds, best) in enumerate(lines):
        target = verdict(wall / ideal <= TARGET_LIVE, f"<= {TARGET_LIVE}") if n == 0 else ""
        print(ROW.format(label, f"{seconds:.2f}", f"{best:.2f}", f"{seconds / best:.2f}x", target))
    return wall / ideal <= TARGET_LIVE


def replay(tmp: Path, rows: int) -> bool:
    folder = make_project(tmp / "replay")
    data = write_rows(folder / "datasets" / "replay.jsonl", rows)
    with recording_server(0.0):
        evaluate(folder, data, CONCURRENCY, "all")  # record every row once
    sample = min(rows, 300)
    before = invoke_replay(folder, 0, sample)
    summary, wall, cpu = evaluate(folder, data, 1, "none")
    after = invoke_replay(folder, rows - sample, sample)
    assert summary.replayed_rows == rows
    row_cpu, row_wall = cpu / rows * 1e3, wall / rows * 1e3  # ms
    invoke_cpu, invoke_wall = (before[1] + after[1]) * 500, (before[0] + after[0]) * 500  # ms, mean of both
    ok = row_cpu / invoke_cpu <= TARGET_REPLAY
    print(
        f"\n(b) REPLAY: {rows} rows, concurrency 1, record mode none, a cassette of {rows} interactions "
        f"(evaluate total {summary.seconds:.2f} s)"
    )
    print(ROW.format("measurement", "cpu ms", "wall ms", "", ""))
    print(ROW.format("per row: evaluate's row phase (run_rows)", f"{row_cpu:.3f}", f"{row_wall:.3f}", "", ""))
    print(
        ROW.format(
            "per chain.invoke under use_cassette, same process",
            f"{invoke_cpu:.3f}",
            f"{invoke_wall:.3f}",
            "",
            "",
        )
    )
    ratios = f"{row_cpu / invoke_cpu:.3f}x", f"{row_wall / invoke_wall:.3f}x"
    print(ROW.format("ratio row / invoke", *ratios, "", verdict(ok, f"cpu <= {TARGET_REPLAY}")))
    return ok


def memory(tmp: Path, kind: str, sizes: tuple[int, int], concurrency: int) -> bool:
    folder = make_project(tmp / f"memory-{kind}", ECHO_CHAIN if kind == "echo" else BENCH_CHAIN)
    if kind == "llm":  # one cassette of the larger size's interactions, used by both sizes
        with recording_server(0.0):
            evaluate(folder, write_rows(folder / "datasets" / "one.jsonl", 1), 1, "all")
        path = folder / "cassettes" / "bench.json"
        document = json.loads(path.read_text())
        text = json.dumps(document["interactions"][0])
        document["interactions"] = [
            json.loads(text.replace(question(0), question(i))) for i in range(sizes[1])
        ]
        path.write_text(json.dumps(document))
    peaks = []
    for size in sizes:
        data = write_rows(folder / "datasets" / f"rows-{size}.jsonl", size)
        m = worker("memory", str(folder), str(data), str(concurrency))
        assert m is not None and m["rows"] == size
        peaks.append(m["peak_kb"])
        label = f"{kind} chain, {size:,} rows" + (f", cassette {sizes[1]:,}" if kind == "llm" else "")
        grew, rate = (m["peak_kb"] - m["before_kb"]) / 1024, size / m["seconds"]
        print(ROW.format(label, f"{m['peak_kb'] / 1024:.0f}", f"{grew:.0f}", f"{rate:.0f}", ""))
    ratio = float(peaks[1] / peaks[0])
    print(
        ROW.format(
            f"{kind}: peak {sizes[1]:,} / peak {sizes[0]:,}",
            f"{ratio:.3f}x",
            "",
            "",
            verdict(ratio <= TARGET_MEMORY, f"<= {TARGET_MEMORY}"),
        )
    )
    return ratio <= TARGET_MEMORY


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer rows (smoke test, < 90 s)")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)  # genai|memory and its 3 arguments
    args = parser.parse_args(argv)
    os.environ.setdefault("OPENAI_API_KEY", "sk-bench")
    os.environ["MLFLOW_GENAI_EVAL_MAX_WORKERS"] = str(CONCURRENCY)
    if args.worker:  # genai FOLDER ROWS URL, or memory FOLDER DATA CONCURRENCY
        kind, folder, a, b = args.worker
        if kind == "genai":
            genai_worker(Path(folder), int(a), b)
        else:
            memory_worker(Path(folder), Path(a), int(b))
        return 0
    quick, started = args.quick, time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="chainkit-eval-bench-") as name:
        tmp = Path(name)
        checks = [live(tmp, 100 if quick else 400), replay(tmp, 300 if quick else 2_000)]
        print("\n(c) MEMORY: peak RSS (ru_maxrss) of a replay evaluation, a fresh subprocess per size")
        print(ROW.format("measurement", "peak MB", "+imp MB", "rows/s", ""))
        checks.append(memory(tmp, "echo", (1_000, 10_000 if quick else 100_000), 8))
        if not quick:
            checks.append(memory(tmp, "llm", (1_000, 20_000), CONCURRENCY))
    print(
        f"\nnotes: +imp MB = peak RSS above the RSS after importing mlflow and langchain_openai. "
        f"{time.perf_counter() - started:.0f} s in all;\n  load average {os.getloadavg()[0]:.2f} on "
        f"{os.cpu_count()} CPUs. overall: {'PASS' if all(checks) else 'FAIL'}"
    )
    return 1 if args.check and not all(checks) else 0


if __name__ == "__main__":
    sys.exit(main())
