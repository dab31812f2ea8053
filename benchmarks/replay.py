"""Per-invoke cost of replaying a chain's HTTP traffic: chainkit vs the in-memory floor vs vcrpy.

    .venv/bin/python benchmarks/replay.py [--quick] [--check]

The chain is ``ChatPromptTemplate | ChatOpenAI | StrOutputParser``, invoked synchronously:
 (a) floor: ChatOpenAI over an in-memory ``httpx2.MockTransport`` (the client's own cost),
     invoked beside each (b), in turns of BLOCK invokes, inside (b)'s context;
 (b) chainkit ``use_cassette(..., "none")`` over cassettes of 10, 1,000 and 10,000 interactions,
     within 1.10x of (a) at every size and flat: (b@10,000) / (b@10) <= 1.03;
 (c) vcrpy replay of the same 1,000 interactions (match_on method, uri, body);
 (d) entering ``use_cassette`` on the 10,000-interaction cassette (Cassette.load + session).
Cassettes are recorded once through chainkit and vcrpy against the fake OpenAI server in
tests/, then synthesized by substituting the prompt text; the synthesis is checked against
live recordings of other prompts, and every replayed answer is checked. Cases are
interleaved round-robin (order rotated each round) and the median over rounds is reported;
each (b) is compared with the floor invoked beside it in the same round.
Exit code 0 always; with --check, 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx2
import vcr
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import Runnable
from langchain_openai import ChatOpenAI
from pydantic import SecretStr

from toolkit import use_cassette
from toolkit.cassette import Cassette

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from openai_server import OpenAIServer

API_BASE = "https://api.openai.com/v1"
SIZES = (10, 1_000, 10_000)
VCR_SIZE = 1_000
#: Invokes in a row of one chain before the other's turn: a chain runs warm (its code and data
#: in the CPU's caches, as in a real batch), and the floor stays within milliseconds of it.
BLOCK = 8
RECORDED_LIVE = 3  # prompts recorded through the server; the rest are synthesized from prompt 0
TARGET_RATIO, TARGET_FLAT, TARGET_VCR, TARGET_LOAD_S = 1.10, 1.03, 10.0, 1.0


def prompt(i: int) -> str:
    return f"Benchmark question {i:05d}: what does MLflow record for this run?"


def answer(i: int) -> str:
    return f"Answer to: {prompt(i)}"  # what the fake server (tests/openai_server.py) replies


def make_chain(http_client: httpx2.Client | None = None, base_url: str = API_BASE) -> Runnable[Any, str]:
    template = ChatPromptTemplate.from_messages([("system", "You are terse."), ("human", "{question}")])
    model = ChatOpenAI(
        model="gpt-4o-mini", base_url=base_url, api_key=SecretStr("sk-bench"), http_client=http_client
    )
    return template | model | StrOutputParser()


# ------------------------------------------------------------------------------- cassettes


def _synthesize(template: dict[str, Any], n: int) -> list[dict[str, Any]]:
    """Copies of a recorded interaction of prompt(0), with prompt(i) substituted in."""
    text = json.dumps(template)
    assert text.count(prompt(0)) >= 2, "the template must hold the prompt in its request and response"
    return [json.loads(text.replace(prompt(0), prompt(i))) for i in range(n)]


def record_cassettes(folder: Path) -> tuple[dict[int, Path], Path]:
    """chainkit cassettes of each size, and a vcrpy cassette of VCR_SIZE interactions."""
    live_ck, live_vcr = folder / "live-chainkit.json", folder / "live-vcrpy.json"
    with OpenAIServer() as server:
        root = server.base_url.removesuffix("/v1")
        chain = make_chain()
        with use_cassette(live_ck, "once", record_via=root):
            for i in range(RECORDED_LIVE):
                assert chain.invoke({"question": prompt(i)}) == answer(i)

        def rewrite(request: Any) -> Any:  # keep the URL the chain would use against the API
            request.uri = request.uri.replace(root, "https://api.openai.com")
            return request

        recorder = vcr.VCR(
            serializer="json",
            record_mode="once",
            before_record_request=rewrite,
            filter_headers=["authorization"],
        )
        live_chain = make_chain(base_url=server.base_url)
        with recorder.use_cassette(str(live_vcr)):
            for i in range(RECORDED_LIVE):
                assert live_chain.invoke({"question": prompt(i)}) == answer(i)

    document = json.loads(live_ck.read_text())
    recorded = document["interactions"]
    made = _synthesize(recorded[0], RECORDED_LIVE)
    for i in range(1, RECORDED_LIVE):  # synthesis == what the chain really sent and got
        assert made[i]["request"] == recorded[i]["request"], f"synthesized request {i} differs"
        assert made[i]["response"]["json"]["choices"] == recorded[i]["response"]["json"]["choices"]
    paths = {}
    for size in SIZES:
        path = folder / f"chainkit-{size}.json"
        body = json.dumps({**document, "interactions": _synthesize(recorded[0], size)}).encode()
        Cassette.from_bytes(path, body).save()
        paths[size] = path

    vdoc = json.loads(live_vcr.read_text())
    vrec = vdoc["interactions"]
    vmade = _synthesize(vrec[0], RECORDED_LIVE)
    for i in range(1, RECORDED_LIVE):
        for part in ("method", "uri", "body"):
            assert vmade[i]["request"][part] == vrec[i]["request"][part], f"vcrpy request {i}: {part}"
    vcr_path = folder / f"vcrpy-{VCR_SIZE}.json"
    vcr_path.write_text(json.dumps({**vdoc, "interactions": _synthesize(vrec[0], VCR_SIZE)}))
    return paths, vcr_path


# ---------------------------------------------------------------------------- measurements


@dataclass
class Case:
    """One measured configuration: a context to enter and the prompts to invoke inside it.

    Each round records (process CPU seconds, wall seconds) per invoke, and the same for entering
    the context. CPU time (time.process_time) is the figure compared: on a shared machine it
    leaves out the time other processes hold the CPU, which wall time does not. With a
    ``floor``, the floor chain is invoked beside this case's chain, in turns of ``BLOCK``
    invokes on the same prompts (who goes first alternates), inside the same context, after
    one untimed invoke of each: its ``floor_samples`` pair with ``samples`` round by round, so
    that the load other processes put on the machine, which drifts over the seconds a round
    takes, hits both sides of the ratio alike.
    """

    name: str
    chain: Runnable[Any, str]
    context: Callable[[], AbstractContextManager[Any]]
    prompts: list[int]
    floor: Runnable[Any, str] | None = None
    samples: list[tuple[float, float]] = field(default_factory=list)  # per invoke, one per round
    floor_samples: list[tuple[float, float]] = field(default_factory=list)  # the same, of the floor
    enters: list[tuple[float, float]] = field(default_factory=list)  # entering, one per round
    turn: int = 0  # blocks run: who goes first alternates

    def run(self, count: int, record: bool = True) -> None:
        chosen, context = self.prompts[:count], self.context()
        spent = {"case": [0.0, 0.0], "floor": [0.0, 0.0]}  # cpu, wall
        outputs = []
        gc.collect()
        cpu, wall = time.process_time(), time.perf_counter()
        with context:
            cpu_in, wall_in = time.process_time(), time.perf_counter()
            turns = [("case", self.chain)] + ([("floor", self.floor)] if self.floor else [])
            for _, chain in turns:  # untimed: the first call after a load finds the caches cold
                chain.invoke({"question": prompt(chosen[0])})
            for start in range(0, count, BLOCK):
                block = chosen[start : start + BLOCK]
                self.turn += 1
                for which, chain in turns[::-1] if self.turn % 2 else turns:
                    cpu_one, wall_one = time.process_time(), time.perf_counter()
                    answers = [chain.invoke({"question": prompt(i)}) for i in block]
                    spent[which][0] += time.process_time() - cpu_one
                    spent[which][1] += time.perf_counter() - wall_one
                    if which == "case":
                        outputs += answers
        assert outputs == [answer(i) for i in chosen], f"{self.name}: wrong replayed answer"
        self.prompts = self.prompts[count:] + chosen  # next round uses other prompts
        if record:
            self.samples.append((spent["case"][0] / count, spent["case"][1] / count))
            if self.floor:
                self.floor_samples.append((spent["floor"][0] / count, spent["floor"][1] / count))
            self.enters.append((cpu_in - cpu, wall_in - wall))


def floor_chain(body: bytes, headers: dict[str, str]) -> Runnable[Any, str]:
    def handler(request: httpx2.Request) -> httpx2.Response:
        request.read()
        return httpx2.Response(200, headers=headers, content=body)

    return make_chain(http_client=httpx2.Client(transport=httpx2.MockTransport(handler)))


def time_load(path: Path) -> float:
    gc.collect()
    start = time.process_time()
    Cassette.load(path)
    return time.process_time() - start


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer rounds and invokes (smoke test)")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    # Invokes per round: a round's figure is a mean over them, and the ratios pair rounds, so
    # more invokes per round (cheap next to a round's cassette loads) steady the 3% flatness.
    rounds, per_round, vcr_per_round = (6, 8, 2) if args.quick else (25, 40, 4)

    with tempfile.TemporaryDirectory(prefix="chainkit-bench-") as tmp:
        paths, vcr_path = record_cassettes(Path(tmp))
        template = Cassette.load(paths[SIZES[0]]).interactions[0].response
        rng = random.Random(1234)
        need = rounds * per_round + per_round

        def spread(n: int) -> list[int]:  # a fixed-seed sample over the whole cassette
            return rng.choices(range(n), k=need)

        replayer = vcr.VCR(serializer="json", record_mode="none", match_on=["method", "uri", "body"])
        # (a), the floor: the client's own cost, invoked beside each (b) in its context.
        floor = floor_chain(template.chunks()[0], dict(template.headers))
        replay_chain = make_chain()  # default client: the transport chainkit and vcrpy patch
        cases = [
            Case(
                f"chainkit@{size}",
                replay_chain,
                functools.partial(use_cassette, paths[size], "none"),
                spread(size),
                floor=floor,
            )
            for size in SIZES
        ]
        vcr_context = functools.partial(replayer.use_cassette, str(vcr_path), allow_playback_repeats=True)
        cases.append(Case(f"vcrpy@{VCR_SIZE}", replay_chain, vcr_context, spread(VCR_SIZE)))

        for case in cases:  # warm up: imports, caches, first-call costs
            case.run(3 if case.name.startswith("vcrpy") else 20, record=False)
        for r in range(rounds):
            order = cases[r % len(cases) :] + cases[: r % len(cases)]
            for case in order:
                case.run(vcr_per_round if case.name.startswith("vcrpy") else per_round)
        plain_loads = [time_load(paths[10_000]) for _ in range(3)]  # breakdown of (d), not interleaved
        size_mb = paths[10_000].stat().st_size / 1e6
        loads = next(c for c in cases if c.name == "chainkit@10000").enters  # (d), one per round

    return report(args, cases, loads, plain_loads, size_mb, rounds, per_round, vcr_per_round)


def report(
    args: argparse.Namespace,
    cases: list[Case],
    loads: list[tuple[float, float]],
    plain_loads: list[float],
    size_mb: float,
    rounds: int,
    per_round: int,
    vcr_per_round: int,
) -> int:
    """Print the table; the exit code (1 only with --check and a missed target)."""
    by_name = {case.name: case for case in cases}

    floors = [sample for case in cases for sample in case.floor_samples]

    def ms(name: str, kind: int = 0) -> float:  # kind 0: CPU time, 1: wall time
        samples = floors if name == "floor" else by_name[name].samples
        return statistics.median(sample[kind] for sample in samples) * 1e3

    def ratio(name: str, base: str) -> float:  # median over rounds of the same round's ratio
        pairs = zip(by_name[name].samples, by_name[base].samples, strict=True)
        return statistics.median(sample[0] / reference[0] for sample, reference in pairs)

    def over_floor(name: str) -> list[float]:  # per round: (b) / the floor invoked beside it
        case = by_name[name]
        return [b[0] / a[0] for b, a in zip(case.samples, case.floor_samples, strict=True)]

    vcr_version = metadata.version("vcrpy")
    line = "{:<48}{:>9}{:>9}  {:<25}{:<10}{}"
    print(
        f"chainkit replay benchmark: ChatPromptTemplate | ChatOpenAI | StrOutputParser, sync invoke; "
        f"{rounds} interleaved rounds x {per_round} invokes ({vcr_per_round} for vcrpy)"
    )
    print(
        "cpu = process CPU time per invoke, median of rounds; ratio = median over rounds of that round's "
        f"cpu ratio ((a) is invoked\n  beside each (b), in turns of {BLOCK} invokes, in its context); "
        "wall = wall-clock median"
    )
    print(line.format("measurement", "cpu ms", "wall ms", "ratio", "target", "result"))
    print(
        line.format(
            "(a) floor: httpx2.MockTransport, fixed body",
            f"{ms('floor'):.3f}",
            f"{ms('floor', 1):.3f}",
            "1.000x (a)/(a)",
            "",
            "",
        )
    )
    checks: list[bool] = []
    for size in SIZES:
        name = f"chainkit@{size}"
        value = statistics.median(over_floor(name))
        checks.append(value <= TARGET_RATIO)
        print(
            line.format(
                f"(b) chainkit replay, {size:,} interactions",
                f"{ms(name):.3f}",
                f"{ms(name, 1):.3f}",
                f"{value:.3f}x (b)/(a)",
                f"<= {TARGET_RATIO}",
                verdict(checks[-1]),
            )
        )
    big, small = f"chainkit@{SIZES[-1]}", f"chainkit@{SIZES[0]}"
    # Each size against the floor of its own round, then one size against the other: the drift
    # of the machine's load between the rounds of different sizes cancels out.
    value = statistics.median(b / s for b, s in zip(over_floor(big), over_floor(small), strict=True))
    checks.append(value <= TARGET_FLAT)
    print(
        line.format(
            f"(b) flat: {SIZES[-1]:,} vs {SIZES[0]:,} interactions",
            "",
            "",
            f"{value:.3f}x (b@{SIZES[-1]})/(b@{SIZES[0]})",
            f"<= {TARGET_FLAT}",
            verdict(checks[-1]),
        )
    )
    name, value = f"vcrpy@{VCR_SIZE}", ratio(f"vcrpy@{VCR_SIZE}", f"chainkit@{VCR_SIZE}")
    checks.append(value >= TARGET_VCR)
    print(
        line.format(
            f"(c) vcrpy {vcr_version} replay, {VCR_SIZE:,} interactions",
            f"{ms(name):.2f}",
            f"{ms(name, 1):.2f}",
            f"{value:.1f}x (c)/(b@1000)",
            f">= {TARGET_VCR:.0f}",
            verdict(checks[-1]),
        )
    )
    load_cpu, load_wall = (statistics.median(load[kind] for load in loads) for kind in (0, 1))
    checks.append(load_cpu < TARGET_LOAD_S)
    plain_ms = statistics.median(plain_loads) * 1e3
    print(
        line.format(
            "(d) enter use_cassette, 10,000 interactions",
            f"{load_cpu * 1e3:.0f} ms",
            f"{load_wall * 1e3:.0f} ms",
            f"Cassette.load {plain_ms:.0f} ms",
            f"< {TARGET_LOAD_S * 1e3:.0f} ms",
            verdict(checks[-1]),
        )
    )
    print(
        f"notes: (d) is timed as each round enters the {size_mb:.1f} MB cassette of (b@10000); "
        "Cassette.load alone is a median of 3\n  after the rounds. Loading is outside the per-invoke "
        f"timing of (b) and (c). Load average at the end: {os.getloadavg()[0]:.2f} "
        f"on {os.cpu_count()} CPUs."
    )
    print(
        f"  (c) is vcrpy at the same layer as (b): vcrpy {vcr_version} patches "
        "httpx2.HTTPTransport.handle_request itself\n  (vcr/patch.py, patcher 'httpx2'), so the same "
        "chain and default client run unchanged; JSON cassette,\n  record_mode none, "
        "allow_playback_repeats=True."
    )
    failed = not all(checks)
    print(f"overall: {'FAIL' if failed else 'PASS'}")
    return 1 if args.check and failed else 0


if __name__ == "__main__":
    sys.exit(main())
