"""Replayed chat completions through ``chainkit proxy`` vs in-process replay of the same cassette.

    .venv/bin/python benchmarks/proxy.py [--quick]

The same client code in both: 16 threads, each with its own ``openai.OpenAI`` client (its own
connection pool, as applications have), calling ``chat.completions.create`` on prompts spread
over a 256-interaction cassette (recorded once against the fake OpenAI server in tests/):
 (a) in process: ``use_cassette(path, "none")``, base URL https://api.openai.com/v1;
 (b) proxy: ``chainkit proxy path`` in its own process, base URL http://127.0.0.1:PORT/v1.
Rounds alternate (a) and (b) (order rotated each round); every answer is checked. Reported:
completions per second (median over rounds), p50/p99 latency of single calls (over all rounds),
and CPU time per call (client process, plus the proxy process in (b); read from /proc), which a
busy machine does not skew as it skews wall time; with (b)/(a) ratios.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai

from toolkit import use_cassette

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from openai_server import OpenAIServer

API_BASE = "https://api.openai.com/v1"
INTERACTIONS = 256
CONCURRENCY = 16


def prompt(i: int) -> str:
    return f"Benchmark question {i:05d}: what does MLflow record for this run?"


def ask(client: openai.OpenAI, i: int) -> None:
    answer = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "system", "content": "You are terse."}, {"role": "user", "content": prompt(i)}],
    )
    assert answer.choices[0].message.content == f"Answer to: {prompt(i)}", "wrong replayed answer"


def record(path: Path) -> None:
    with OpenAIServer() as server, use_cassette(path, "once", record_via=server.base_url.removesuffix("/v1")):
        client = openai.OpenAI(base_url=API_BASE, api_key="sk-bench")
        for i in range(INTERACTIONS):
            ask(client, i)


def cpu_seconds(pid: int | None) -> float:
    """CPU time (user + system) of process ``pid`` so far; 0.0 without /proc."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def proxy(path: Path) -> Iterator[tuple[str, int]]:
    """``chainkit proxy PATH --port 0`` in its own process; yields its base URL and pid."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CHAINKIT_", "OPENAI_"))}
    process = subprocess.Popen(
        [sys.executable, "-m", "toolkit", "proxy", str(path), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    try:
        assert process.stdout is not None
        url = process.stdout.readline().strip()
        assert url.startswith("http://"), "the proxy did not start"
        yield url, process.pid
    finally:
        process.terminate()
        process.wait(timeout=30)


@dataclass
class Case:
    name: str
    base_url: str
    context: Callable[[], AbstractContextManager[Any]]
    server_pid: int | None = None  # the proxy's process, whose CPU time counts too
    rates: list[float] = field(default_factory=list)  # completions per second, one per round
    cpu: list[float] = field(default_factory=list)  # CPU seconds per call, one per round
    latencies: list[float] = field(default_factory=list)  # seconds, every call of every round

    def run(self, calls: int, record: bool = True) -> None:
        """``calls`` completions from CONCURRENCY threads at once."""
        clients = [openai.OpenAI(base_url=self.base_url, api_key="sk-bench") for _ in range(CONCURRENCY)]
        latencies: list[list[float]] = [[] for _ in range(CONCURRENCY)]
        errors: list[BaseException] = []
        start_line = threading.Barrier(CONCURRENCY + 1)

        def work(n: int) -> None:
            start_line.wait()
            try:
                for i in range(n, calls, CONCURRENCY):
                    began = time.perf_counter()
                    ask(clients[n], i % INTERACTIONS)
                    latencies[n].append(time.perf_counter() - began)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(n,)) for n in range(CONCURRENCY)]
        with self.context():
            for thread in threads:
                thread.start()
            start_line.wait()
            began, cpu = time.perf_counter(), time.process_time() + cpu_seconds(self.server_pid)
            for thread in threads:
                thread.join()
            wall = time.perf_counter() - began
            cpu = time.process_time() + cpu_seconds(self.server_pid) - cpu
        for client in clients:
            client.close()
        if errors:
            raise errors[0]
        if record:
            self.rates.append(calls / wall)
            self.cpu.append(cpu / calls)
            self.latencies += [value for per_thread in latencies for value in per_thread]


def percentile(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer rounds and calls (smoke test)")
    args = parser.parse_args(argv)
    rounds, calls = (3, 320) if args.quick else (8, 1600)

    with tempfile.TemporaryDirectory(prefix="chainkit-bench-") as tmp:
        path = Path(tmp) / "proxy.json"
        record(path)
        with proxy(path) as (url, pid):
            cases = [
                Case("in-process", API_BASE, lambda: use_cassette(path, "none")),
                Case("proxy", url, nullcontext, server_pid=pid),
            ]
            for case in cases:  # warm up: imports, connection pools, first-call costs
                case.run(CONCURRENCY * 4, record=False)
            for r in range(rounds):
                for case in cases[r % 2 :] + cases[: r % 2]:
                    case.run(calls)
    report(cases, rounds, calls)
    return 0


def report(cases: list[Case], rounds: int, calls: int) -> None:
    inproc, through = cases

    def figures(case: Case) -> tuple[float, float, float, float]:
        return (
            statistics.median(case.rates),
            percentile(case.latencies, 50) * 1e3,
            percentile(case.latencies, 99) * 1e3,
            statistics.median(case.cpu) * 1e3,
        )

    a, b = figures(inproc), figures(through)
    line = "{:<44}{:>10}{:>10}{:>10}{:>14}"
    print(
        f"chainkit proxy benchmark: openai.OpenAI chat.completions.create, {CONCURRENCY} threads, "
        f"{rounds} alternating rounds x {calls} calls, {INTERACTIONS}-interaction cassette"
    )
    print(line.format("measurement", "calls/s", "p50 ms", "p99 ms", "cpu ms/call"))
    for label, (rate, p50, p99, cpu) in (
        ("(a) in-process replay (use_cassette)", a),
        ("(b) chainkit proxy over loopback", b),
    ):
        print(line.format(label, f"{rate:,.0f}", f"{p50:.2f}", f"{p99:.2f}", f"{cpu:.2f}"))
    ratios = [f"{b[i] / a[i]:.2f}x" for i in range(4)]
    print(line.format("ratio (b)/(a)", *ratios))
    print(
        "notes: calls/s is the median over rounds of calls / wall time; latencies are single calls over "
        "all rounds;\n  cpu is client + proxy process CPU time per call (median over rounds). In (b) the "
        "client and the proxy\n  are two processes sharing the machine's CPUs. Load average at the end: "
        f"{os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs."
    )


if __name__ == "__main__":
    sys.exit(main())
