"""Per-invoke cost of replaying a chain's HTTP traffic: chainkit vs the in-memory floor vs vcrpy.

    .venv/bin/python benchmarks/replay.py [--quick] [--check]

The chain is ``ChatPromptTemplate | ChatOpenAI | StrOutputParser``, invoked synchronously:
 (a) floor: ChatOpenAI over an in-memory ``httpx2.MockTransport`` (the client's own cost);
 (b) chainkit ``use_cassette(..., "none")`` over cassettes of 10, 1,000 and 10,000 interactions;
 (c) vcrpy replay of the same 1,000 interactions (match_on method, uri, body);
 (d) entering ``use_cassette`` on the 10,000-interaction cassette (Cassette.load + session).
Cassettes are recorded once through chainkit and vcrpy against the fake OpenAI server in
tests/, then synthesized by substituting the prompt text; the synthesis is checked against
live recordings of other prompts, and every replayed answer is checked. Measurements are
interleaved round-robin (order rotated each round) and the median over rounds is reported.
Exit code 0 always; with --check, 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
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
RECORDED_LIVE = 3  # prompts recorded through the server; the rest are synthesized from prompt 0
TARGET_RATIO, TARGET_VCR, TARGET_LOAD_S = 1.15, 10.0, 1.0


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

        recorder = vcr.VCR(serializer="json", record_mode="once", before_record_request=rewrite,
                           filter_headers=["authorization"])
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
    """One measured configuration: a context to enter (untimed) and the prompts to invoke."""

    name: str
    chain: Runnable[Any, str]
    context: Callable[[], AbstractContextManager[Any]]
    prompts: list[int]
    expect_prompt_answer: bool = True  # the floor answers every prompt with one fixed body
    samples: list[float] = field(default_factory=list)  # seconds per invoke, one per round

    def run(self, count: int, record: bool = True) -> None:
        chosen = self.prompts[:count]
        with self.context():
            gc.collect()
            start = time.perf_counter()
            outputs = [self.chain.invoke({"question": prompt(i)}) for i in chosen]
            elapsed = time.perf_counter() - start
        if self.expect_prompt_answer:
            assert outputs == [answer(i) for i in chosen], f"{self.name}: wrong replayed answer"
        self.prompts = self.prompts[count:] + chosen  # next round uses other prompts
        if record:
            self.samples.append(elapsed / count)


def floor_chain(body: bytes, headers: dict[str, str]) -> Runnable[Any, str]:
    def handler(request: httpx2.Request) -> httpx2.Response:
        request.read()
        return httpx2.Response(200, headers=headers, content=body)

    return make_chain(http_client=httpx2.Client(transport=httpx2.MockTransport(handler)))


@contextmanager
def nothing() -> Iterator[None]:
    yield


def time_enter(path: Path) -> float:
    cassette = use_cassette(path, "none")
    gc.collect()
    start = time.perf_counter()
    cassette.__enter__()
    elapsed = time.perf_counter() - start
    cassette.__exit__(None, None, None)
    return elapsed


def time_load(path: Path) -> float:
    gc.collect()
    start = time.perf_counter()
    Cassette.load(path)
    return time.perf_counter() - start


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer rounds and invokes (smoke test)")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    rounds, per_round, vcr_per_round = (3, 10, 3) if args.quick else (9, 40, 8)

    with tempfile.TemporaryDirectory(prefix="chainkit-bench-") as tmp:
        paths, vcr_path = record_cassettes(Path(tmp))
        template = Cassette.load(paths[SIZES[0]]).interactions[0].response
        rng = random.Random(1234)
        need = rounds * per_round + per_round

        def spread(n: int) -> list[int]:  # a fixed-seed sample over the whole cassette
            return rng.choices(range(n), k=need)

        replayer = vcr.VCR(serializer="json", record_mode="none", match_on=["method", "uri", "body"])
        cases = [Case("floor", floor_chain(template.chunks()[0], dict(template.headers)), nothing,
                      spread(10), expect_prompt_answer=False)]
        replay_chain = make_chain()  # default client: the transport chainkit and vcrpy patch
        for size in SIZES:
            cases.append(Case(f"chainkit@{size}", replay_chain,
                              functools.partial(use_cassette, paths[size], "none"), spread(size)))
        vcr_context = functools.partial(replayer.use_cassette, str(vcr_path), allow_playback_repeats=True)
        cases.append(Case(f"vcrpy@{VCR_SIZE}", replay_chain, vcr_context, spread(VCR_SIZE)))
        loads: list[float] = []
        plain_loads: list[float] = []

        for case in cases:  # warm up: imports, caches, first-call costs
            case.run(3 if case.name.startswith("vcrpy") else per_round // 2, record=False)
        time_enter(paths[10_000])
        for r in range(rounds):
            order = cases[r % len(cases):] + cases[: r % len(cases)]
            for case in order:
                case.run(vcr_per_round if case.name.startswith("vcrpy") else per_round)
            loads.append(time_enter(paths[10_000]))
            plain_loads.append(time_load(paths[10_000]))
        size_mb = paths[10_000].stat().st_size / 1e6

    return report(args, cases, loads, plain_loads, size_mb, rounds, per_round, vcr_per_round)


def report(args: argparse.Namespace, cases: list[Case], loads: list[float], plain_loads: list[float],
           size_mb: float, rounds: int, per_round: int, vcr_per_round: int) -> int:
    """Print the table; the exit code (1 only with --check and a missed target)."""
    ms = {case.name: statistics.median(case.samples) * 1e3 for case in cases}
    span = {case.name: f"{min(case.samples) * 1e3:.2f}-{max(case.samples) * 1e3:.2f}" for case in cases}
    vcr_version = metadata.version("vcrpy")
    line = "{:<48}{:>11}{:>14}  {:<26}{:<10}{}"
    print(f"chainkit replay benchmark: ChatPromptTemplate | ChatOpenAI | StrOutputParser, sync invoke; "
          f"{rounds} interleaved rounds x {per_round} invokes ({vcr_per_round} for vcrpy); median of rounds")
    print(line.format("measurement", "ms/invoke", "min-max", "ratio", "target", "result"))
    print(line.format("(a) floor: httpx2.MockTransport, fixed body", f"{ms['floor']:.3f}", span["floor"],
                      "1.000x (a)/(a)", "", ""))
    checks: list[bool] = []
    for size in SIZES:
        key = f"chainkit@{size}"
        ratio = ms[key] / ms["floor"]
        checks.append(ratio <= TARGET_RATIO)
        print(line.format(f"(b) chainkit replay, {size:,} interactions", f"{ms[key]:.3f}", span[key],
                          f"{ratio:.3f}x (b)/(a)", f"<= {TARGET_RATIO}", verdict(checks[-1])))
    key = f"vcrpy@{VCR_SIZE}"
    ratio = ms[key] / ms[f"chainkit@{VCR_SIZE}"]
    checks.append(ratio >= TARGET_VCR)
    print(line.format(f"(c) vcrpy {vcr_version} replay, {VCR_SIZE:,} interactions", f"{ms[key]:.3f}",
                      span[key], f"{ratio:.1f}x (c)/(b@1000)", f">= {TARGET_VCR:.0f}", verdict(checks[-1])))
    load_s = statistics.median(loads)
    checks.append(load_s < TARGET_LOAD_S)
    print(line.format("(d) enter use_cassette, 10,000 interactions", f"{load_s * 1e3:.0f} ms",
                      f"{min(loads) * 1e3:.0f}-{max(loads) * 1e3:.0f}",
                      f"Cassette.load {statistics.median(plain_loads) * 1e3:.0f} ms",
                      f"< {TARGET_LOAD_S * 1e3:.0f} ms", verdict(checks[-1])))
    print(f"notes: (d) file is {size_mb:.1f} MB; cassette loading is outside the timing of (b) and (c).")
    print(f"  (c) is vcrpy at the same layer as (b): vcrpy {vcr_version} patches "
          "httpx2.HTTPTransport.handle_request itself\n  (vcr/patch.py, patcher 'httpx2'), so the same "
          "chain and default client run unchanged; JSON cassette,\n  record_mode none, "
          "allow_playback_repeats=True.")
    failed = not all(checks)
    print(f"overall: {'FAIL' if failed else 'PASS'}")
    return 1 if args.check and failed else 0

if __name__ == "__main__":
    sys.exit(main())
