"""Evaluation engines side by side: threads, processes and Spark local[2], replaying one cassette.
Usage: .venv/bin/python benchmarks/engines.py [--quick] [--rows N] [--concurrency C]

A temporary project (chains/bench.py: ChatPromptTemplate | ChatOpenAI | StrOutputParser), one
cassette of N distinct interactions (one recorded from tests/openai_server.py, the rest made by
substituting the question), datasets of N/10 and N rows (default 2,000 and 20,000; --quick 200
and 2,000). Each (engine, size) runs in a fresh subprocess, record mode none, at one
--concurrency (default 64: a Spark micro-batch is one job, whose fixed cost wants many rows):
 - rows/s of the row phase (run_rows, wrapped as benchmarks/eval.py does); for processes it
   includes starting the workers; for Spark, the session start is timed apart, and so is a
   warm-up evaluation of 8 rows (Spark starting its Python workers, each importing chainkit,
   MLflow and LangChain and loading the chain and the cassette);
 - peak memory: the largest sum of RSS over the subprocess and all its descendants (worker
   processes; Spark's JVM and its Python workers), sampled every 0.1 s from /proc.
The ratios printed are peak(N) / peak(N/10) per engine (flat is 1.0) and each engine's rows/s
over the threads engine's at N rows. One more Spark line runs at --spark-concurrency (default
8 x --concurrency): a job's fixed cost spread over more rows (the parent's limit is the only
thing that bounds a micro-batch).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import eval as eval_bench  # noqa: E402 - benchmarks/eval.py, beside this script

ENGINES = ("threads", "processes", "spark")
MASTER = "local[2]"
ROW = "  {:<11}{:>10}{:>11}{:>9}{:>9}{:>9}{:>12}{:>9}{:>9}"


# ------------------------------------------------------------------------ memory of a tree


def tree_rss_kb(root: int) -> int:
    """RSS of ``root`` and every descendant, in KiB (Linux /proc)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    page_kb = os.sysconf("SC_PAGE_SIZE") // 1024
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{name}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
        pid, parent = int(name), int(fields[1])
        children.setdefault(parent, []).append(pid)
        rss[pid] = int(fields[21]) * page_kb
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += rss.get(pid, 0)
        todo += children.get(pid, [])
    return total


class PeakSampler:
    def __init__(self, root: int, every: float = 0.1) -> None:
        self.root, self.every, self.peak = root, every, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_rss_kb(self.root))
            self._stop.wait(self.every)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# --------------------------------------------------------------------------- the worker


def worker(engine: str, folder: Path, data: Path, concurrency: int) -> dict[str, Any]:
    """One evaluation in this (fresh) process; the figures as a dict."""
    import langchain_openai  # noqa: F401 - imports are not what is measured
    import mlflow  # noqa: F401

    figures: dict[str, Any] = {}
    with PeakSampler(os.getpid()) as sampler:
        if engine == "spark":
            from toolkit.spark_engine import spark_session

            started = time.perf_counter()
            spark_session(MASTER)  # the engines find the active session
            figures["session_s"] = time.perf_counter() - started
            warm = eval_bench.write_rows(folder / "datasets" / f"warm-{os.getpid()}.jsonl", 8)
            started = time.perf_counter()
            eval_bench.evaluate(folder, warm, concurrency, "none", engine=engine)
            figures["warm_s"] = time.perf_counter() - started
        summary, wall, _ = eval_bench.evaluate(folder, data, concurrency, "none", engine=engine)
        assert summary.replayed_rows == summary.rows and summary.errors == 0, summary.failures
    figures |= {"rows": summary.rows, "seconds": wall, "peak_kb": sampler.peak}
    return figures


def run_worker(engine: str, folder: Path, data: Path, concurrency: int) -> dict[str, Any]:
    command = [sys.executable, __file__, "--worker", engine, str(folder), str(data), str(concurrency)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{engine} on {data.name} failed:\n{done.stderr[-3000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


# ------------------------------------------------------------------------------ the job


def make_cassette(folder: Path, rows: int) -> None:
    """One interaction recorded from the fake server, copied for each of ``rows`` questions."""
    with eval_bench.recording_server(0.0):
        one = eval_bench.write_rows(folder / "datasets" / "one.jsonl", 1)
        eval_bench.evaluate(folder, one, 1, "all")
    path = folder / "cassettes" / "bench.json"
    document = json.loads(path.read_text())
    text = json.dumps(document["interactions"][0])
    document["interactions"] = [
        json.loads(text.replace(eval_bench.question(0), eval_bench.question(i))) for i in range(rows)
    ]
    path.write_text(json.dumps(document))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="2,000 rows (and 200): a smoke run")
    parser.add_argument("--rows", type=int, default=None, help="N (default 20,000; --quick 2,000)")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--spark-concurrency", type=int, default=None, help="default: 8 x --concurrency")
    parser.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)  # ENGINE FOLDER DATA CONCURRENCY
    args = parser.parse_args(argv)
    os.environ.setdefault("OPENAI_API_KEY", "sk-bench")
    if args.worker:
        engine, folder, data, concurrency = args.worker
        print(json.dumps(worker(engine, Path(folder), Path(data), int(concurrency))))
        return 0
    rows = args.rows or (2_000 if args.quick else 20_000)
    sizes = (rows // 10, rows)
    started = time.perf_counter()
    spark_high = args.spark_concurrency or 8 * args.concurrency
    lines = [(engine, engine, args.concurrency) for engine in ENGINES]
    lines.append((f"spark c{spark_high}", "spark", spark_high))
    results: dict[tuple[str, int], dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="chainkit-engines-bench-") as name:
        folder = eval_bench.make_project(Path(name) / "project")
        make_cassette(folder, rows)
        for size in sizes:
            data = eval_bench.write_rows(folder / "datasets" / f"rows-{size}.jsonl", size)
            for label, engine, concurrency in lines:
                results[label, size] = run_worker(engine, folder, data, concurrency)
                print(f"  ... {label} {size:,} rows: {results[label, size]}", file=sys.stderr, flush=True)
    small, big = sizes
    print(
        f"ENGINES: replay (record mode none), a cassette of {rows:,} interactions, concurrency "
        f"{args.concurrency}; Spark {MASTER}; each run a fresh process"
    )
    print(
        ROW.format(
            "engine",
            f"r/s {small}",
            f"r/s {big}",
            "vs thr",
            "peak MB",
            "peak MB",
            "peak x",
            "session",
            "warm-up",
        )
    )
    print(ROW.format("", "rows", "rows", f"@{big}", f"@{small}", f"@{big}", f"{big}/{small}", "s", "s"))
    threads_rate = results["threads", big]["rows"] / results["threads", big]["seconds"]
    for engine, _, _ in lines:
        low, high = results[engine, small], results[engine, big]
        rate_low, rate_high = low["rows"] / low["seconds"], high["rows"] / high["seconds"]
        print(
            ROW.format(
                engine,
                f"{rate_low:.0f}",
                f"{rate_high:.0f}",
                f"{rate_high / threads_rate:.2f}x",
                f"{low['peak_kb'] / 1024:.0f}",
                f"{high['peak_kb'] / 1024:.0f}",
                f"{high['peak_kb'] / low['peak_kb']:.3f}x",
                f"{high['session_s']:.1f}" if "session_s" in high else "-",
                f"{high['warm_s']:.1f}" if "warm_s" in high else "-",
            )
        )
    print(
        f"\nnotes: rows/s of the row phase; processes include starting their workers, Spark's session "
        f"start and warm-up (8 rows) are apart.\n  peak MB: the whole process tree. "
        f"{time.perf_counter() - started:.0f} s in all; load average {os.getloadavg()[0]:.2f} "
        f"on {os.cpu_count()} CPUs."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
