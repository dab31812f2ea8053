"""Importing a vcrpy cassette of 1,000 interactions, and loading the result, vs vcrpy's own load.

    .venv/bin/python benchmarks/import.py [--quick] [--check]

The cassette is made from the real vcrpy cassettes in tests/data/vcr/ (a gzip ``!!binary``
chat completion, two streamed tool-loop turns, a plain JSON completion with redacted header
values, telemetry traffic), repeated with the prompt numbered so that every request differs,
and written with vcrpy's own YAML serializer. Measured side by side, interleaved round-robin
(order rotated each round), median over rounds:

 (a) vcrpy: ``FilesystemPersister.load_cassette`` with vcrpy's YAML serializer (libyaml's
     CSafeLoader when PyYAML has it), i.e. what ``vcr.use_cassette`` does before a test runs;
 (b) chainkit: ``import_cassette`` into an empty folder (read, convert, write atomically);
 (c) chainkit: ``Cassette.load`` of what (b) wrote (what every replay then pays).

Target: (b) <= 1.0x (a). Exit code 0 always; with --check, 1 when the target is missed.
"""

from __future__ import annotations

import argparse
import copy
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from vcr.persisters.filesystem import FilesystemPersister
from vcr.serializers import yamlserializer

from toolkit.cassette import Cassette
from toolkit.vcr_import import import_cassette

ROOT = Path(__file__).resolve().parent.parent
SOURCES = sorted((ROOT / "tests" / "data" / "vcr").glob("*.yaml"))
SIZE = 1_000
TARGET = 1.0


def synthesize(size: int) -> dict[str, Any]:
    """``size`` interactions cycled from the real cassettes, each request made distinct."""
    real: list[dict[str, Any]] = []
    for source in SOURCES:
        real += yaml.load(source.read_bytes(), Loader=yaml.CSafeLoader)["interactions"]
    interactions = []
    for i in range(size):
        item = copy.deepcopy(real[i % len(real)])
        body = item["request"]["body"]
        if isinstance(body, str) and '"content"' in body:
            item["request"]["body"] = body.replace('"content":', f'"name": "user{i:05d}", "content":', 1)
        else:
            item["request"]["uri"] += f"?n={i}"
        interactions.append(item)
    return {"interactions": interactions, "version": 1}


def measure(cases: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    times: dict[str, list[float]] = {name: [] for name in cases}
    names = list(cases)
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            start = time.perf_counter()
            cases[name]()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    parser.add_argument("--check", action="store_true", help="exit 1 when the target is missed")
    args = parser.parse_args()
    rounds = 5 if args.quick else 15
    work = Path(tempfile.mkdtemp(prefix="chainkit-import-bench-"))
    try:
        source = work / "big.yaml"
        source.write_text(yamlserializer.serialize(synthesize(SIZE)))
        into = work / "cassettes"
        result = into / "big.json"

        def vcrpy_load() -> object:
            requests, responses = FilesystemPersister.load_cassette(source, yamlserializer)
            assert len(requests) == SIZE
            return responses

        def chainkit_import() -> object:
            result.unlink(missing_ok=True)
            report = import_cassette(source, into)
            assert report.written and len(report.interactions) == SIZE
            return report

        chainkit_import()  # the file that (c) loads

        def chainkit_load() -> object:
            cassette = Cassette.load(result)
            assert len(cassette) == SIZE
            return cassette

        print(f"{SIZE} interactions, {source.stat().st_size / 1e6:.2f} MB of vcrpy YAML "
              f"({'libyaml' if yaml.__with_libyaml__ else 'pure-Python yaml'}); "
              f"chainkit cassette {result.stat().st_size / 1e6:.2f} MB; median of {rounds} rounds")
        timings = measure(
            {"vcrpy load": vcrpy_load, "chainkit import": chainkit_import, "chainkit load": chainkit_load},
            rounds,
        )
        floor = timings["vcrpy load"]
        print(f"{'case':<28}{'seconds':>10}{'x vcrpy load':>14}")
        for name, label in (
            ("vcrpy load", "(a) vcrpy load"),
            ("chainkit import", "(b) chainkit import"),
            ("chainkit load", "(c) chainkit load of result"),
        ):
            print(f"{label:<28}{timings[name]:>10.4f}{timings[name] / floor:>13.2f}x")
        ok = timings["chainkit import"] / floor <= TARGET
        print(f"target (b) <= {TARGET:.2f}x (a): {'ok' if ok else 'MISSED'}")
        return 0 if ok or not args.check else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
