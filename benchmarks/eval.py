"""Batch evaluation speed and memory: `toolkit.evaluation.evaluate` vs the ideal, vs mlflow.genai.evaluate.

    .venv/bin/python benchmarks/eval.py [--quick] [--check]

The chain is ``ChatPromptTemplate | ChatOpenAI | StrOutputParser`` in a temporary project of its
own (chains/, cassettes/, a sqlite MLflow store), answered by tests/openai_server.py running in
a separate process (its threads do not compete for this process's GIL).
 (a) live: rows at 100 ms latency, concurrency 40, record mode all (CHAINKIT_RECORD_VIA); the row
     phase (run_rows, timed by wrapping it) / ideal (rows x 0.1 s / 40); beside it the same rows
     through mlflow.genai.evaluate (MLFLOW_GENAI_EVAL_MAX_WORKERS=40), in a subprocess;
 (b) replay: rows recorded once at 0 latency, replayed at concurrency 1, record mode none; the
     row phase per row / one ``chain.invoke`` under ``use_cassette(path)`` in the same process;
 (c) memory: peak RSS of a replay evaluation in a fresh subprocess per dataset size.
Exit code 0 always; with --check, 1 when a target is missed.
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
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
LATENCY, CONCURRENCY = 0.1, 40
TARGET_LIVE, TARGET_REPLAY, TARGET_MEMORY = 1.3, 1.3, 1.15
GENAI_TIMEOUT_S, GENAI_CAP = 240, 200
BENCH_CHAIN = '''import mlflow
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_openai import ChatOpenAI

prompt = ChatPromptTemplate.from_messages([("system", "You are terse."), ("human", "{question}")])
chain = prompt | ChatOpenAI(model="gpt-4o-mini", base_url="https://api.openai.com/v1", max_retries=0) | StrOutputParser()
mlflow.models.set_model(chain)
'''
ECHO_CHAIN = '''import mlflow
from langchain_core.runnables import RunnableLambda

mlflow.models.set_model(RunnableLambda(lambda inputs: "Answer to: " + inputs["question"]))
'''
SERVER = ("import sys, threading; sys.path.insert(0, sys.argv[1]); from openai_server import OpenAIServer; "
          "s = OpenAIServer(latency=float(sys.argv[2])).start(); print(s.base_url.removesuffix('/v1'), flush=True); "
          "threading.Event().wait()")


def question(i: int) -> str:
    return f"Benchmark question {i:06d}: what does MLflow record for this run?"


def make_project(folder: Path, source: str = BENCH_CHAIN) -> Path:
    for name in ("chains", "cassettes", "datasets"):
        (folder / name).mkdir(parents=True, exist_ok=True)
    (folder / "chains" / "bench.py").write_text(source)
    return folder


def write_rows(path: Path, count: int, start: int = 0) -> Path:
    with path.open("w") as out:
        for i in range(start, start + count):
            out.write(json.dumps({"inputs": {"question": question(i)}, "expectations": {"expected_contains": "Answer"}})
                      + "\n")
    return path


@contextmanager
def fake_server(latency: float) -> Iterator[str]:
    """tests/openai_server.py in its own process; yields its root URL."""
    proc = subprocess.Popen([sys.executable, "-c", SERVER, str(ROOT / "tests"), str(latency)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        yield proc.stdout.readline().strip()
    finally:
        proc.terminate()
        proc.wait()


@contextmanager
def env(**values: str) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            os.environ.pop(name, None) if value is None else os.environ.__setitem__(name, value)


def evaluate(folder: Path, data: Path, concurrency: int, mode: str) -> tuple[Any, float, float]:
    """One toolkit evaluation; (summary, row-phase wall s, row-phase CPU s): run_rows is wrapped."""
    from toolkit import evaluation
    from toolkit.project import Project

    timed: list[tuple[float, float]] = []
    original = evaluation.run_rows

    async def run_rows(*args: Any, **kwargs: Any) -> int:
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            return await original(*args, **kwargs)
        finally:
            timed.append((time.perf_counter() - wall, time.process_time() - cpu))

    evaluation.run_rows = run_rows  # type: ignore[assignment]
    try:
        options = evaluation.EvalOptions(data=data, concurrency=concurrency, record_mode=mode,
                                         tracking_uri=f"sqlite:///{folder / 'mlflow.db'}")
        summary = evaluation.evaluate(Project.at(folder), options, chain="bench")
    finally:
        evaluation.run_rows = original
    assert summary.errors == 0, f"{summary.errors} rows failed"
    return summary, *timed[0]


def invoke_replay(folder: Path, start: int, count: int) -> tuple[float, float]:
    """(wall, CPU) seconds per chain.invoke replayed from the bench cassette (benchmarks/replay.py's way)."""
    from toolkit import use_cassette
    from toolkit.loading import load_chain

    chain = load_chain(folder / "chains" / "bench.py")
    with use_cassette(folder / "cassettes" / "bench.json", "none"):
        chain.invoke({"question": question(start)})  # warm
        wall, cpu = time.perf_counter(), time.process_time()
        for i in range(start, start + count):
            assert chain.invoke({"question": question(i)}) == f"Answer to: {question(i)}"
        return (time.perf_counter() - wall) / count, (time.process_time() - cpu) / count


# ----------------------------------------------------------------------- subprocess workers


def genai_worker(folder: Path, rows: int, via: str) -> None:
    """mlflow.genai.evaluate over the same chain, rows and live server; prints its wall seconds."""
    import mlflow
    from mlflow.genai.scorers import scorer

    from toolkit import use_cassette
    from toolkit.loading import load_chain

    mlflow.set_tracking_uri(f"sqlite:///{folder / 'mlflow.db'}")
    mlflow.set_experiment("genai-bench")
    chain = load_chain(folder / "chains" / "bench.py")

    @scorer
    def answered(outputs: Any) -> bool:
        return str(outputs).startswith("Answer to:")

    data = [{"inputs": {"question": question(10_000 + i)}} for i in range(rows)]
    with use_cassette(folder / "cassettes" / "genai.json", "all", record_via=via):
        started = time.perf_counter()
        mlflow.genai.evaluate(data=data, predict_fn=lambda question: chain.invoke({"question": question}),
                              scorers=[answered])
        print(json.dumps({"seconds": time.perf_counter() - started}))


def memory_worker(folder: Path, data: Path, concurrency: int) -> None:
    import langchain_openai  # noqa: F401 - imports are not what is measured
    import mlflow  # noqa: F401

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    summary, wall, _ = evaluate(folder, data, concurrency, "none")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"peak_kb": peak, "before_kb": before, "rows": summary.rows, "seconds": wall}))


def worker(*args: str, timeout: float | None = None) -> dict[str, Any] | None:
    """Run this file as a worker; its JSON result, or None on a timeout."""
    try:
        done = subprocess.run([sys.executable, __file__, "--worker", *args], capture_output=True, text=True,
                              timeout=timeout, check=True)
    except subprocess.TimeoutExpired:
        return None
    except subprocess.CalledProcessError as exc:
        raise RuntimeError(f"worker {args} failed:\n{exc.stderr[-3000:]}") from exc
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


# --------------------------------------------------------------------------------- the runs


def live(tmp: Path, rows: int) -> list[tuple[str, float, float, float]]:
    folder = make_project(tmp / "live")
    out: list[tuple[str, float, float, float]] = []
    ideal = rows * LATENCY / CONCURRENCY
    with fake_server(LATENCY) as via, env(CHAINKIT_RECORD_VIA=via):
        evaluate(folder, write_rows(folder / "datasets" / "warm.jsonl", 1, 900_000), CONCURRENCY, "all")
        one, _, _ = evaluate(folder, write_rows(folder / "datasets" / "one.jsonl", 1, 800_000), CONCURRENCY, "all")
        summary, wall, _ = evaluate(folder, write_rows(folder / "datasets" / "live.jsonl", rows), CONCURRENCY, "all")
        assert summary.live_rows == rows
        out.append(("chainkit row phase (run_rows)", wall, ideal, wall / ideal))
        out.append(("chainkit evaluate() total", summary.seconds, ideal, summary.seconds / ideal))
        rest = summary.seconds - one.seconds
        out.append((f"chainkit total - warm 1-row total ({one.seconds:.2f} s)", rest, ideal, rest / ideal))
        genai_rows, timeout = rows, GENAI_TIMEOUT_S
        result = worker("genai", str(folder), str(genai_rows), via, timeout=timeout)
        if result is None:
            out.append((f"mlflow.genai.evaluate, {rows} rows: killed", timeout, ideal, timeout / ideal))
            genai_rows = min(rows, GENAI_CAP)
            result = worker("genai", str(folder), str(genai_rows), via)
        assert result is not None
        ideal = genai_rows * LATENCY / CONCURRENCY
        out.append((f"mlflow.genai.evaluate, {genai_rows} rows", result["seconds"], ideal, result["seconds"] / ideal))
    return out


def replay(tmp: Path, rows: int) -> dict[str, float]:
    folder = make_project(tmp / "replay")
    data = write_rows(folder / "datasets" / "replay.jsonl", rows)
    with fake_server(0.0) as via, env(CHAINKIT_RECORD_VIA=via):
        evaluate(folder, data, CONCURRENCY, "all")  # record every row once
    sample = min(rows, 300)
    before = invoke_replay(folder, 0, sample)
    summary, wall, cpu = evaluate(folder, data, 1, "none")
    after = invoke_replay(folder, rows - sample, sample)
    assert summary.replayed_rows == rows
    inv_wall, inv_cpu = (before[0] + after[0]) / 2, (before[1] + after[1]) / 2
    return {"row_wall": wall / rows, "row_cpu": cpu / rows, "inv_wall": inv_wall, "inv_cpu": inv_cpu,
            "total": summary.seconds, "rows": rows}


def memory(tmp: Path, kind: str, sizes: tuple[int, int], concurrency: int) -> list[dict[str, Any]]:
    folder = make_project(tmp / f"memory-{kind}", ECHO_CHAIN if kind == "echo" else BENCH_CHAIN)
    if kind == "llm":  # one cassette holding the larger size's interactions, used by both sizes
        with fake_server(0.0) as via, env(CHAINKIT_RECORD_VIA=via):
            evaluate(folder, write_rows(folder / "datasets" / "one.jsonl", 1), 1, "all")
        document = json.loads((folder / "cassettes" / "bench.json").read_text())
        text = json.dumps(document["interactions"][0])
        document["interactions"] = [json.loads(text.replace(question(0), question(i))) for i in range(sizes[1])]
        (folder / "cassettes" / "bench.json").write_text(json.dumps(document))
    results = []
    for size in sizes:
        data = write_rows(folder / "datasets" / f"rows-{size}.jsonl", size)
        result = worker("memory", str(folder), str(data), str(concurrency))
        assert result is not None and result["rows"] == size
        results.append(result)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer rows (smoke test, < 90 s)")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    os.environ.setdefault("OPENAI_API_KEY", "sk-bench")
    os.environ["MLFLOW_GENAI_EVAL_MAX_WORKERS"] = str(CONCURRENCY)
    if args.worker:
        kind, *rest = args.worker
        if kind == "genai":
            genai_worker(Path(rest[0]), int(rest[1]), rest[2])
        else:
            memory_worker(Path(rest[0]), Path(rest[1]), int(rest[2]))
        return 0
    live_rows, replay_rows = (100, 300) if args.quick else (400, 2_000)
    echo_sizes, llm_sizes = ((1_000, 10_000), None) if args.quick else ((1_000, 100_000), (1_000, 20_000))
    checks: list[bool] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="chainkit-eval-bench-") as name:
        tmp = Path(name)
        lines = live(tmp, live_rows)
        print(f"(a) LIVE: {live_rows} distinct rows, fake OpenAI server ({LATENCY * 1e3:.0f} ms per call, own "
              f"process), concurrency {CONCURRENCY}, record mode all")
        row = "  {:<58}{:>9}{:>9}{:>9}  {}"
        print(row.format("measurement", "wall s", "ideal s", "ratio", "target"))
        for n, (label, seconds, ideal, ratio) in enumerate(lines):
            ok = ratio <= TARGET_LIVE
            if n == 0:
                checks.append(ok)
            verdict = f"<= {TARGET_LIVE}  {'PASS' if ok else 'FAIL'}" if n == 0 else ""
            print(row.format(label, f"{seconds:.2f}", f"{ideal:.2f}", f"{ratio:.2f}x", verdict))
        r = replay(tmp, replay_rows)
        ratio_cpu, ratio_wall = r["row_cpu"] / r["inv_cpu"], r["row_wall"] / r["inv_wall"]
        checks.append(ratio_cpu <= TARGET_REPLAY)
        print(f"\n(b) REPLAY: {replay_rows} rows, concurrency 1, record mode none, cassette of {replay_rows} "
              f"interactions (evaluate total {r['total']:.2f} s)")
        print(row.format("measurement", "cpu ms", "wall ms", "", ""))
        print(row.format("per row, evaluate row phase (run_rows)", f"{r['row_cpu'] * 1e3:.3f}",
                         f"{r['row_wall'] * 1e3:.3f}", "", ""))
        print(row.format("per chain.invoke under use_cassette (same process)", f"{r['inv_cpu'] * 1e3:.3f}",
                         f"{r['inv_wall'] * 1e3:.3f}", "", ""))
        print(row.format("ratio row / invoke (cpu; wall)", f"{ratio_cpu:.3f}x", f"{ratio_wall:.3f}x", "",
                         f"cpu <= {TARGET_REPLAY}  {'PASS' if checks[-1] else 'FAIL'}"))
        print(f"\n(c) MEMORY: peak RSS (ru_maxrss) of a replay evaluation, a fresh subprocess per size")
        print(row.format("measurement", "peak MB", "grew MB", "rows/s", ""))
        for kind, sizes, concurrency in (("echo", echo_sizes, 8), ("llm", llm_sizes, CONCURRENCY)):
            if sizes is None:
                continue
            small, large = memory(tmp, kind, sizes, concurrency)
            for size, m in zip(sizes, (small, large), strict=True):
                label = f"{kind} chain, {size:,} rows" + (" (cassette of 20,000)" if kind == "llm" else "")
                print(row.format(label, f"{m['peak_kb'] / 1024:.0f}", f"{(m['peak_kb'] - m['before_kb']) / 1024:.0f}",
                                 f"{size / m['seconds']:.0f}", ""))
            ratio = large["peak_kb"] / small["peak_kb"]
            checks.append(ratio <= TARGET_MEMORY)
            print(row.format(f"{kind}: peak {sizes[1]:,} / peak {sizes[0]:,}", f"{ratio:.3f}x", "", "",
                             f"<= {TARGET_MEMORY}  {'PASS' if checks[-1] else 'FAIL'}"))
    failed = not all(checks)
    print(f"\nnotes: grew = peak RSS minus RSS after importing toolkit.evaluation. {time.perf_counter() - started:.0f} s "
          f"in all; load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs.\noverall: "
          f"{'FAIL' if failed else 'PASS'}")
    return 1 if args.check and failed else 0


if __name__ == "__main__":
    sys.exit(main())
