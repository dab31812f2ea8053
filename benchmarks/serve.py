"""`mlflow models serve` answering from the recordings a model carries vs the same server over a fake API.

    .venv/bin/python benchmarks/serve.py [--quick] [--rounds N] [--seconds S] [--check]

The qa example chain (chains/qa.py) is logged by ``toolkit.packaging.log_chains`` into a temporary
sqlite store, so the model carries its cassette, and served twice by ``mlflow models serve -m
models:/qa@bench --env-manager local`` (one uvicorn worker, MLflow's default), on two ports:
 (a) floor: no chainkit variable, ``OPENAI_API_KEY=sk-test`` and ``OPENAI_BASE_URL`` pointing at
     the fake OpenAI server of tests/openai_server.py, run in its own process, 0 added latency;
 (b) replay: ``CHAINKIT_CASSETTE=model``, no key, no network (chainkit's guard).
Both servers run at once but are loaded alternately, never together: in each round each side gets
the same fixed-length window (the order alternates each round) of 8 client threads, each with its
own keep-alive httpx client, POSTing the chain's input example to /invocations back to back.
 (c) a half window per round loads the fake server alone with the chat request qa sends, to show
     how far the fake is from being what limits (a). Every answer is checked byte for byte against a reference
verified first (the recorded answer for (b), the fake's answer for (a)); the fake's own request
count shows that (a) reached it once per invocation and (b) never. Printed: requests/s, p50/p99
latency, CPU per request of each process, and the ratio (b)/(a), target >= 0.9.
Exit code 0 always; with --check, 1 when the target is missed or an answer is wrong.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
TARGET = 0.9
CONCURRENCY = 8
MODEL_URI = "models:/qa@bench"
TICK = os.sysconf("SC_CLK_TCK")

# Logs qa in a fresh interpreter (this process stays a plain HTTP client); prints the result,
# the input example and the answer recorded for it.
LOG = """
import json, sys
from pathlib import Path
from toolkit.discovery import discover
from toolkit.packaging import log_chains
from toolkit.project import Project
project = Project.at(sys.argv[1])
(result,) = log_chains(project, ["qa"], register=True, alias="bench", tracking_uri=sys.argv[2])
example = discover(project.chains_dir).get("qa").input_example
print(json.dumps({"result": result.to_json(), "example": example}))
"""
# The fake OpenAI server in its own process: prints its base URL, then its count of received
# requests for every line read on stdin; exits when stdin closes.
FAKE = (
    "import sys; sys.path.insert(0, sys.argv[1]); "
    "from openai_server import OpenAIServer; s = OpenAIServer(latency=0.0).start(); "
    "print(s.base_url, flush=True); "
    "[print(len(s.requests), flush=True) for _ in sys.stdin]"
)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def group(pgid: int) -> dict[int, tuple[str, float]]:
    """The processes of a process group: pid -> (state, CPU seconds: user + system, all threads)."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path("/proc", entry, "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
        if int(fields[2]) == pgid:  # pgrp
            found[int(entry)] = (fields[0], (int(fields[11]) + int(fields[12])) / TICK)  # utime, stime
    return found


def group_cpu(pgid: int) -> float:
    return sum(cpu for _, cpu in group(pgid).values())


def child_env(**extra: str) -> dict[str, str]:
    """No key, no chainkit or MLflow variables but ``extra``; the venv's bin first on PATH
    (``mlflow models serve`` starts ``uvicorn`` by name)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CHAINKIT_", "OPENAI_", "MLFLOW_"))}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


# ------------------------------------------------------------------------------- processes


class Fake:
    """tests/openai_server.py in its own process group."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", FAKE, str(ROOT / "tests")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
            env=child_env(),
        )
        assert self.process.stdout is not None
        self.base_url = self.process.stdout.readline().strip()
        if not self.base_url.startswith("http://127.0.0.1:"):
            raise RuntimeError(f"the fake OpenAI server did not start (said {self.base_url!r})")

    def received(self) -> int:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write("\n")
        self.process.stdin.flush()
        return int(self.process.stdout.readline())

    def cpu(self) -> float:
        return group_cpu(self.process.pid)

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            if self.process.stdin is not None:
                self.process.stdin.close()  # its read loop ends, and so does the process
        stop_group(self.process)


class Server:
    """``mlflow models serve`` in its own process group; its output goes to a log file."""

    def __init__(self, name: str, folder: Path, env: dict[str, str]) -> None:
        self.name, self.port = name, free_port()
        self.log = folder / f"serve-{name}.log"
        command = ["mlflow", "models", "serve", "-m", MODEL_URI, "-p", str(self.port)]
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [*command, "--env-manager", "local"],
                env=env,
                cwd=folder,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.url = f"http://127.0.0.1:{self.port}/invocations"

    def wait_ready(self, started: float, timeout: float = 300) -> float:
        """Seconds from ``started`` (time.monotonic) until /ping answers."""
        while time.monotonic() - started < timeout:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} server exited:\n{self.tail()}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/ping", timeout=1).status_code == 200:
                    return time.monotonic() - started
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        raise RuntimeError(f"{self.name} server not ready after {timeout:.0f} s:\n{self.tail()}")

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def cpu(self) -> float:
        return group_cpu(self.process.pid)

    def stop(self) -> None:
        stop_group(self.process)


def stop_group(process: subprocess.Popen[Any]) -> None:
    """Stop a process group led by ``process``, leaving no orphan: SIGTERM to the leader's
    descendants first (uvicorn under ``mlflow models serve``: the CLI reaps it and exits), then
    to the leader if it is still there, then SIGKILL to whatever is left."""
    pgid = process.pid
    for pid, (state, _) in group(pgid).items():
        if pid != pgid and state != "Z":
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
    for sig in (None, signal.SIGTERM, signal.SIGKILL):
        if sig is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=20)
            break
    deadline = time.monotonic() + 10
    while (alive := any(state != "Z" for state, _ in group(pgid).values())) and time.monotonic() < deadline:
        time.sleep(0.1)
    if alive:  # anything still alive in the group
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)


# ---------------------------------------------------------------------------- measurements


@dataclass
class Side:
    """One measured configuration: where to POST, what to send, the one right answer."""

    name: str
    url: str
    body: bytes
    expected: bytes
    cpu: Any  # () -> CPU seconds of the process that serves it
    latencies: list[float] = field(default_factory=list)  # every request of every round, seconds
    rates: list[float] = field(default_factory=list)  # requests/s, one per round
    cpu_per_request: list[float] = field(default_factory=list)  # serving group's CPU s, one per round
    requests: int = 0
    wrong: list[str] = field(default_factory=list)  # the first few wrong answers
    wrong_count: int = 0
    wall: float = 0.0
    server_cpu: float = 0.0
    fake_cpu: float = 0.0
    client_cpu: float = 0.0
    fake_hits: int = 0

    def window(self, seconds: float, concurrency: int, fake: Fake, record: bool = True) -> None:
        """``concurrency`` threads POST back to back until ``seconds`` have passed; each finishes
        its request in flight. The rate is the requests done over the time until the last one."""
        latencies: list[list[float]] = [[] for _ in range(concurrency)]
        wrong: list[str] = []
        lock = threading.Lock()
        ready = threading.Barrier(concurrency + 1)
        deadline = [0.0]
        headers = {"content-type": "application/json"}

        def worker(mine: list[float]) -> None:
            with httpx.Client(timeout=60) as client:
                ready.wait()
                while (started := time.perf_counter()) < deadline[0]:
                    try:
                        response = client.post(self.url, content=self.body, headers=headers)
                        problem = (
                            None
                            if response.status_code == 200 and response.content == self.expected
                            else f"{response.status_code} {response.text[:300]}"
                        )
                    except httpx.HTTPError as exc:
                        problem = repr(exc)
                    mine.append(time.perf_counter() - started)
                    if problem is not None:
                        with lock:
                            wrong.append(problem)

        threads = [threading.Thread(target=worker, args=(mine,)) for mine in latencies]
        for thread in threads:
            thread.start()
        hits, server, fakes = fake.received(), self.cpu(), fake.cpu()
        client = time.process_time()
        deadline[0] = time.perf_counter() + seconds
        started = time.perf_counter()
        ready.wait()
        for thread in threads:
            thread.join()
        wall = time.perf_counter() - started
        client = time.process_time() - client
        server, fakes = self.cpu() - server, fake.cpu() - fakes
        hits = fake.received() - hits
        done = [x for mine in latencies for x in mine]
        self.wrong_count += len(wrong)
        self.wrong.extend(wrong[: max(0, 3 - len(self.wrong))])
        if not record:
            return
        self.latencies.extend(done)
        self.rates.append(len(done) / wall)
        self.cpu_per_request.append(server / len(done))
        self.requests += len(done)
        self.wall += wall
        self.server_cpu += server
        self.fake_cpu += fakes
        self.client_cpu += client
        self.fake_hits += hits


def first_answer(url: str, body: bytes) -> httpx.Response:
    response = httpx.post(url, content=body, headers={"content-type": "application/json"}, timeout=120)
    if response.status_code != 200:
        raise RuntimeError(f"{url} answered {response.status_code}: {response.text[:2000]}")
    return response


def log_qa(folder: Path) -> dict[str, Any]:
    shutil.copytree(ROOT / "chains", folder / "chains", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "cassettes", folder / "cassettes")
    store = f"sqlite:///{folder / 'mlflow.db'}"
    done = subprocess.run(
        [sys.executable, "-c", LOG, str(folder), store],
        env=child_env(),
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if done.returncode != 0:
        raise RuntimeError(f"logging qa failed:\n{done.stderr[-3000:]}")
    logged: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    if logged["result"]["status"] == "failed":
        raise RuntimeError(f"logging qa failed: {logged['result']['error']}")
    return logged


def recorded_answer(cassette: Path, question: str) -> tuple[str, dict[str, Any]]:
    """The answer qa's cassette holds for ``question``, and the request that asked it."""
    for interaction in json.loads(cassette.read_text())["interactions"]:
        request = interaction["request"]
        if request["json"]["messages"][-1]["content"] == question:
            return interaction["response"]["json"]["choices"][0]["message"]["content"], request
    raise RuntimeError(f"{cassette} holds no answer to {question!r}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="3 rounds of 2 s (smoke test, noisy figures)")
    parser.add_argument("--rounds", type=int, default=20, help="interleaved rounds (default 20)")
    parser.add_argument("--seconds", type=float, default=2.5, help="seconds per side per round (default 2.5)")
    parser.add_argument("--check", action="store_true", help="exit 1 when the target is missed")
    args = parser.parse_args(argv)
    rounds, seconds = (3, 2.0) if args.quick else (args.rounds, args.seconds)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that the finally below runs

    processes: list[Fake | Server] = []
    with tempfile.TemporaryDirectory(prefix="chainkit-serve-bench-") as tmp:
        folder = Path(tmp)
        try:
            started = time.perf_counter()
            logged = log_qa(folder)
            log_s = time.perf_counter() - started
            example = logged["example"]
            body = json.dumps({"inputs": example}).encode()
            recorded, request = recorded_answer(folder / "cassettes" / "qa.json", example["question"])

            fake = Fake()
            processes.append(fake)
            launched = time.monotonic()
            store = f"sqlite:///{folder / 'mlflow.db'}"
            replay = Server("replay", folder, child_env(MLFLOW_TRACKING_URI=store, CHAINKIT_CASSETTE="model"))
            processes.append(replay)
            floor = Server(
                "floor",
                folder,
                child_env(MLFLOW_TRACKING_URI=store, OPENAI_API_KEY="sk-test", OPENAI_BASE_URL=fake.base_url),
            )
            processes.append(floor)
            ready_s = {server.name: server.wait_ready(launched) for server in (replay, floor)}

            # The reference answers, verified before any timing.
            before = fake.received()
            replayed = first_answer(replay.url, body)
            assert fake.received() == before, "the replaying server reached the fake API"
            assert replayed.json()["predictions"] == [recorded], f"replay answered {replayed.text[:500]}"
            floored = first_answer(floor.url, body)
            assert fake.received() == before + 1, "the floor server did not call the fake API once"
            from_fake = f"Answer to: {example['question']}"  # what tests/openai_server.py replies
            assert floored.json()["predictions"] == [from_fake], f"floor answered {floored.text[:500]}"
            direct = json.dumps(request["json"]).encode()  # what qa sends, for the fake-alone window
            fake_url = f"{fake.base_url}/chat/completions"
            fake_reference = first_answer(fake_url, direct)
            assert fake_reference.json()["choices"][0]["message"]["content"] == from_fake

            sides = {
                "floor": Side("floor", floor.url, body, floored.content, floor.cpu),
                "replay": Side("replay", replay.url, body, replayed.content, replay.cpu),
                "fake": Side("fake", fake_url, direct, fake_reference.content, fake.cpu),
            }
            for side in sides.values():  # warm up: connections, caches, first-call costs
                side.window(min(seconds, 3.0), CONCURRENCY, fake, record=False)
            for r in range(rounds):
                order = ["floor", "replay"] if r % 2 == 0 else ["replay", "floor"]
                for name in order:
                    sides[name].window(seconds, CONCURRENCY, fake)
                sides["fake"].window(seconds / 2, CONCURRENCY, fake)
        finally:
            for process in reversed(processes):
                process.stop()
    return report(args, sides, rounds, seconds, log_s, ready_s)


def report(
    args: argparse.Namespace,
    sides: dict[str, Side],
    rounds: int,
    seconds: float,
    log_s: float,
    ready_s: dict[str, float],
) -> int:
    """Print the table; the exit code (1 only with --check and a missed target)."""
    floor, replay, fake = sides["floor"], sides["replay"], sides["fake"]
    per_round = [b / a for b, a in zip(replay.rates, floor.rates, strict=True)]
    ratio = statistics.median(per_round)

    def pct(side: Side, q: int) -> float:
        return statistics.quantiles(side.latencies, n=100, method="inclusive")[q - 1] * 1e3

    def ms(cpu: float, side: Side) -> str:
        return f"{cpu * 1e3 / side.requests:.2f}"

    print(
        f"chainkit serve benchmark: mlflow models serve -m {MODEL_URI} --env-manager local "
        f"(1 uvicorn worker);\n  concurrency {CONCURRENCY}; {rounds} interleaved rounds x {seconds:g} s "
        "per side"
    )
    print(
        f"  logged qa in {log_s:.1f} s; servers started together, ready after {ready_s['floor']:.1f} s "
        f"(floor) and {ready_s['replay']:.1f} s (replay)"
    )
    line = "{:<44}{:>8}{:>9}{:>9}{:>11}{:>11}{:>11}"
    print(line.format("measurement", "req/s", "p50 ms", "p99 ms", "server cpu", "fake cpu", "client cpu"))
    rows = (
        ("(a) floor: ChatOpenAI -> fake OpenAI server", floor),
        ("(b) replay: CHAINKIT_CASSETTE=model", replay),
        ("(c) the fake server alone, same client", fake),
    )
    for label, side in rows:
        print(
            line.format(
                label,
                f"{statistics.median(side.rates):.1f}",
                f"{pct(side, 50):.1f}",
                f"{pct(side, 99):.1f}",
                "-" if side is fake else ms(side.server_cpu, side),
                ms(side.fake_cpu, side),
                ms(side.client_cpu, side),
            )
        )
    ok = ratio >= TARGET
    wrong = floor.wrong_count + replay.wrong_count + fake.wrong_count
    hits_ok = floor.fake_hits == floor.requests and replay.fake_hits == 0 and fake.fake_hits == fake.requests
    print(f"ratio (b)/(a) requests/s: {ratio:.3f}x   target >= {TARGET}   {verdict(ok)}")
    print("  (b)/(a) per round: " + " ".join(f"{x:.2f}" for x in per_round) + "; the ratio is their median")
    cpu_ratio = statistics.median(
        a / b for a, b in zip(floor.cpu_per_request, replay.cpu_per_request, strict=True)
    )
    print(
        f"  server CPU per request (a)/(b): {cpu_ratio:.3f}x (median over rounds; what (b)/(a) would be "
        "with the server CPU-bound\n  on an otherwise idle machine; for information)"
    )
    for side in (floor, replay, fake):
        print(f"  {side.name} req/s per round: " + " ".join(f"{x:.0f}" for x in side.rates))
    print(
        f"answers: {floor.requests + replay.requests + fake.requests} checked byte for byte against the "
        f"verified references, {wrong} wrong   {verdict(not wrong)}"
    )
    for side in (floor, replay, fake):
        for sample in side.wrong:
            print(f"  wrong {side.name} answer: {sample}")
    print(
        f"fake server hits: floor {floor.fake_hits} for {floor.requests} requests, replay "
        f"{replay.fake_hits} for {replay.requests}, fake alone {fake.fake_hits} for {fake.requests}   "
        f"{verdict(hits_ok)}"
    )
    busy = "; ".join(
        f"{side.name} {side.server_cpu / side.wall:.2f}, {side.fake_cpu / side.wall:.2f}, "
        f"{side.client_cpu / side.wall:.2f}"
        for side in (floor, replay)
    )
    headroom = statistics.median(fake.rates) / statistics.median(floor.rates)
    print(
        "notes: cpu = CPU ms per request (user + system, all threads) of the serving process group, the "
        f"fake's process\n  and this client process. Cores busy while loaded (server, fake, client): {busy}."
        f"\n  (c): the fake answers {headroom:.1f}x the floor's rate to the same client. Load average at the "
        f"end: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs."
    )
    failed = not (ok and not wrong and hits_ok)
    print(f"overall: {'FAIL' if failed else 'PASS'}")
    return 1 if args.check and failed else 0


if __name__ == "__main__":
    sys.exit(main())
