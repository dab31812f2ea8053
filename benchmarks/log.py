"""Time to log every example chain to MLflow: chainkit vs the plain log_model loop MLflow users write.

    .venv/bin/python benchmarks/log.py [--rounds N] [--check]

Both log all chains of chains/ (found by ``toolkit.discovery.discover``) into a fresh sqlite store,
from a temporary copy of chains/ and cassettes/, every LLM call replayed from the cassettes:
 (A) chainkit: ``toolkit.packaging.log_chains`` (requirements computed from imports, no child process);
 (B) plain: ``mlflow.langchain.log_model(lc_model=path, name=..., input_example=...)`` (or
     ``mlflow.pyfunc.log_model(python_model=path, ...)``) with MLflow's defaults, each call inside
     ``use_cassette(..., "none")``: MLflow infers the requirements in a child Python process, which
     the in-process replay does not reach. Its warnings and the requirements.txt it wrote are kept.
Each side runs in its own fresh subprocess (``--only A|B``), so both pay imports the same way; the
order alternates each round (A,B then B,A) and medians are reported. Exit 0; --check: 1 on FAIL.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TARGET = 0.2  # total chainkit / total plain
SHOWN = ("qa", "rag", "circle_area")  # chains whose requirement sets are printed side by side
FALLBACK = "Encountered an unexpected error while inferring pip requirements"
TIMED_OUT = "operation timed out"
NO_PREDICT = "Failed to run predict on input_example"
Result = dict[str, Any]


class Records(logging.Handler):
    """Collects the warnings MLflow logs while one chain is logged."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())
        if record.exc_info:  # the traceback MLflow logs at DEBUG after a fallback
            self.messages.append(logging.Formatter().formatException(record.exc_info))


def cause(text: str) -> str:
    """The innermost non-MLflow error named in a (possibly escaped) traceback."""
    found = re.findall(r"([A-Za-z]\w*(?:Error|Exception))(?:\(\\*'|: )([^'\\\n]{1,50})", text)
    errors = [f"{name}: {message.strip()}" for name, message in found if name != "MlflowException"]
    dns = ", DNS lookup failed" if "Name or service not known" in text else ""
    return (errors[-1] if errors else text.strip().splitlines()[-1][:60]) + dns


def inference_outcome(messages: list[str]) -> str:
    """What MLflow's requirement inference did, from its warnings: ok, partial or fallback."""
    text = "\n".join(messages)
    if FALLBACK in text or TIMED_OUT in text:
        return f"FALLBACK, child failed ({cause(text)})"
    if NO_PREDICT in text:
        return f"partial, child's predict failed ({cause(text)})"
    return "ok"


def requirements_of(model_uri: str) -> list[str]:
    import mlflow

    local = Path(mlflow.artifacts.download_artifacts(model_uri))
    lines = (local / "requirements.txt").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def run_chainkit(root: Path, store: str) -> Result:
    started = time.perf_counter()
    from toolkit.packaging import log_chains
    from toolkit.project import Project

    results = log_chains(Project.at(root), record_mode="none", tracking_uri=store)
    total = time.perf_counter() - started
    chains = {
        r.name: {
            "seconds": r.seconds,
            "error": r.error,
            "requirements": requirements_of(r.model_uri) if r.model_uri else [],
        }
        for r in results
    }
    return {"total": total, "chains": chains}


def run_plain(root: Path, store: str) -> Result:
    started = time.perf_counter()
    import mlflow
    from mlflow.utils import requirements_utils

    import toolkit
    from toolkit.discovery import Flavor, discover
    from toolkit.project import Project

    project = Project.at(root)
    mlflow.set_tracking_uri(store)
    mlflow.set_experiment("plain")
    sys.path.insert(0, str(project.chains_dir))  # else rag's `from _shared import ...` cannot load
    # Measurement only: how long MLflow's requirement-inference child process takes.
    child_seconds: list[float] = []
    capture = requirements_utils._capture_imported_modules

    def timed_capture(*args: Any, **kwargs: Any) -> Any:
        began = time.perf_counter()
        try:
            return capture(*args, **kwargs)
        finally:
            child_seconds.append(time.perf_counter() - began)

    requirements_utils._capture_imported_modules = timed_capture
    chains: dict[str, Result] = {}
    for spec in discover(project.chains_dir).chains:
        records, error, info = Records(), None, None
        logging.getLogger("mlflow").addHandler(records)
        child_seconds.clear()
        began = time.perf_counter()
        try:
            with toolkit.use_cassette(project.cassette_for(spec.name), "none"):
                if spec.flavor is Flavor.PYFUNC:
                    info = mlflow.pyfunc.log_model(
                        python_model=str(spec.path), name=spec.name, input_example=spec.input_example
                    )
                else:
                    info = mlflow.langchain.log_model(
                        lc_model=str(spec.path),
                        name=spec.name,
                        input_example=spec.input_example,
                        # Without it clv does not log at all: MLflow then refuses its ModelConfig.
                        model_config=str(spec.model_config) if spec.model_config else None,
                    )
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"[:200]
        seconds = time.perf_counter() - began
        logging.getLogger("mlflow").removeHandler(records)
        chains[spec.name] = {
            "seconds": seconds,
            "error": error,
            "child_seconds": sum(child_seconds),
            "inference": inference_outcome(records.messages),
            "requirements": requirements_of(info.model_uri) if info else [],
        }
    return {"total": time.perf_counter() - started, "chains": chains}


def fresh_project(tmp: Path) -> Path:
    root = tmp / "project"
    skip = shutil.ignore_patterns("__pycache__")
    for folder in ("chains", "cassettes"):
        shutil.copytree(ROOT / folder, root / folder, ignore=skip)
    return root


def spawn(side: str, tmp: Path) -> Result:
    """Run one side in a fresh interpreter, in a fresh project copy with a fresh store."""
    work = Path(tempfile.mkdtemp(prefix=f"log-{side}-", dir=tmp))
    root, out = fresh_project(work), work / "result.json"
    command = [sys.executable, __file__, "--only", side, "--project", str(root)]
    command += ["--store", f"sqlite:///{work / 'mlflow.db'}", "--out", str(out)]
    began = time.perf_counter()
    with (work / "stderr.txt").open("w") as stderr:
        done = subprocess.run(command, cwd=root, stdout=subprocess.DEVNULL, stderr=stderr, timeout=1800)
    wall = time.perf_counter() - began
    if done.returncode != 0 or not out.exists():
        tail = (work / "stderr.txt").read_text().strip().splitlines()[-5:]
        raise RuntimeError(f"side {side} exited {done.returncode}:\n" + "\n".join(tail))
    return {**json.loads(out.read_text()), "wall": wall}


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def side_by_side(name: str, a: list[str], b: list[str]) -> None:
    pins = {side: {r.split("==")[0].lower(): r for r in reqs} for side, reqs in (("A", a), ("B", b))}
    print(f"\n  {name}: {len(a)} chainkit vs {len(b)} plain requirements")
    for package in sorted(pins["A"].keys() | pins["B"].keys()):
        left, right = pins["A"].get(package, "-"), pins["B"].get(package, "-")
        mark = "" if package in pins["A"] and package in pins["B"] else "   <- only one side"
        print(f"    {left:<30} {right:<30}{mark}")


def report(runs: dict[str, list[Result]], check: bool) -> int:
    a_runs, b_runs = runs["A"], runs["B"]
    names = list(a_runs[0]["chains"])
    print(f"\nLogging {len(names)} chains, each side in a fresh process and store, under replay; "
          f"{len(a_runs)} round(s), medians.")
    print(f"{'chain':<14}{'chainkit s':>11}{'plain s':>9}{'ratio':>7}{'child s':>9}  plain's inference")
    for name in names:
        a = median([r["chains"][name]["seconds"] for r in a_runs])
        b = median([r["chains"][name]["seconds"] for r in b_runs])
        child = median([r["chains"][name]["child_seconds"] for r in b_runs])
        outcome = b_runs[0]["chains"][name]["inference"]
        for side, side_runs in (("chainkit", a_runs), ("plain", b_runs)):
            if side_runs[0]["chains"][name]["error"]:
                outcome = f"{side} FAILED: {side_runs[0]['chains'][name]['error'][:80]}"
        print(f"{name:<14}{a:>11.2f}{b:>9.2f}{a / b:>7.2f}{child:>9.2f}  {outcome}")
    first = names[0]
    a_first = median([r["chains"][first]["seconds"] for r in a_runs])
    b_first = median([r["chains"][first]["seconds"] for r in b_runs])
    a_rest = median([sum(r["chains"][n]["seconds"] for n in names[1:]) for r in a_runs])
    b_rest = median([sum(r["chains"][n]["seconds"] for n in names[1:]) for r in b_runs])
    a_total, b_total = median([r["total"] for r in a_runs]), median([r["total"] for r in b_runs])
    a_wall, b_wall = median([r["wall"] for r in a_runs]), median([r["wall"] for r in b_runs])
    ratio = a_total / b_total
    print(f"\nfirst chain ({first}, pays the chain-library imports): chainkit {a_first:.2f} s, "
          f"plain {b_first:.2f} s")
    print(f"other {len(names) - 1} chains: chainkit {a_rest:.2f} s, plain {b_rest:.2f} s "
          f"(ratio {a_rest / b_rest:.3f})")
    print(f"outside the chains (import mlflow, create the store): chainkit "
          f"{a_total - a_first - a_rest:.2f} s, plain {b_total - b_first - b_rest:.2f} s")
    print(f"process wall (interpreter start to exit, with reading back requirements.txt): "
          f"chainkit {a_wall:.2f} s, plain {b_wall:.2f} s")
    verdict = "PASS" if ratio <= TARGET else "FAIL"
    print(f"TOTAL (import mlflow + store + all chains): chainkit {a_total:.2f} s, plain {b_total:.2f} s, "
          f"chainkit/plain = {ratio:.3f} (target <= {TARGET}): {verdict}")
    print("\nRequirements written (requirements.txt of the logged model): chainkit | plain")
    for name in SHOWN:
        if name in names:
            side_by_side(name, a_runs[0]["chains"][name]["requirements"],
                         b_runs[0]["chains"][name]["requirements"])
    return 1 if check and verdict == "FAIL" else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--check", action="store_true", help="exit 1 when the target is missed")
    parser.add_argument("--only", choices=["A", "B"], help="(internal) run one side in this process")
    parser.add_argument("--project", type=Path)
    parser.add_argument("--store")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.only:
        run = run_chainkit if args.only == "A" else run_plain
        args.out.write_text(json.dumps(run(args.project, args.store)))
        return 0
    runs: dict[str, list[Result]] = {"A": [], "B": []}
    with tempfile.TemporaryDirectory(prefix="chainkit-bench-log-") as tmp:
        for round_number in range(args.rounds):
            for side in ("AB" if round_number % 2 == 0 else "BA"):
                try:
                    result = spawn(side, Path(tmp))
                except (RuntimeError, subprocess.TimeoutExpired) as exc:
                    print(f"round {round_number + 1}: {exc}")
                    return 1 if args.check else 0
                runs[side].append(result)
                print(f"round {round_number + 1}, {'chainkit' if side == 'A' else 'plain'}: "
                      f"{result['total']:.1f} s", flush=True)
    return report(runs, args.check)


if __name__ == "__main__":
    sys.exit(main())
