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
order alternates each round (A,B; B,A; A,B); medians over rounds. Exit 0; --check: 1 on FAIL.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from statistics import median
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TARGET = 0.2  # total chainkit / total plain
SHOWN = ("qa", "rag", "circle_area")  # chains whose requirement sets are printed side by side
FALLBACK = "Encountered an unexpected error while inferring pip requirements"
NO_PREDICT = "Failed to run predict on input_example"
Result = dict[str, Any]
SUMMARY_LINES = {
    "first": "first chain ({first}, pays the chain libraries' imports)",
    "others": "other {others} chains",
    "setup": "outside the chains (import mlflow, create the store)",
    "wall": "process wall (interpreter start to exit, incl. reading back requirements.txt)",
    "cpu": "process CPU, user+sys (incl. MLflow's inference child processes)",
}


class Records(logging.Handler):
    """MLflow's warnings while one chain is logged, and the traceback it logs after a fallback."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.WARNING or record.exc_info:
            self.messages.append(logging.Formatter().format(record))  # with its traceback, if any


def cause(text: str) -> str:
    """The last non-MLflow error named in a (possibly escaped) traceback."""
    found = re.findall(r"([A-Za-z]\w*(?:Error|Exception))(?:\(\\*'|: )([^'\\\n]{1,50})", text)
    errors = [f"{name}: {message.strip()}" for name, message in found if name != "MlflowException"]
    dns = ", DNS lookup failed" if "Name or service not known" in text else ""
    return (errors[-1] if errors else text.strip().splitlines()[-1][:60]) + dns


def inference_outcome(messages: list[str]) -> str:
    """What MLflow's requirement inference did: ok, partial (predict failed) or fallback."""
    text = "\n".join(messages)
    if FALLBACK in text or "operation timed out" in text:
        return f"FALLBACK, child failed ({cause(text)})"
    return f"partial, child's predict failed ({cause(text)})" if NO_PREDICT in text else "ok"


def requirements_of(model_uri: str) -> list[str]:
    import mlflow

    lines = (Path(mlflow.artifacts.download_artifacts(model_uri)) / "requirements.txt").read_text()
    return [line.strip() for line in lines.splitlines() if line.strip() and not line.startswith("#")]


def run_chainkit(root: Path, store: str) -> Result:
    started = time.perf_counter()
    from toolkit.packaging import log_chains
    from toolkit.project import Project

    results = log_chains(Project.at(root), record_mode="none", tracking_uri=store)
    total = time.perf_counter() - started
    empty = {"inference": "", "child_seconds": 0.0}
    chains = {
        r.name: {
            **empty,
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
    # Measurement only: how long MLflow's inference child takes; the traceback it logs at DEBUG.
    child_seconds: list[float] = []
    capture: Callable[..., Any] = requirements_utils._capture_imported_modules

    def timed_capture(*args: Any, **kwargs: Any) -> Any:
        began = time.perf_counter()
        try:
            return capture(*args, **kwargs)
        finally:
            child_seconds.append(time.perf_counter() - began)

    requirements_utils._capture_imported_modules = timed_capture
    logging.getLogger("mlflow.utils.environment").setLevel(logging.DEBUG)
    chains: dict[str, Result] = {}
    for spec in discover(project.chains_dir).chains:
        records, error, info, began = Records(), None, None, time.perf_counter()
        kwargs = {"name": spec.name, "input_example": spec.input_example}
        logging.getLogger("mlflow").addHandler(records)
        child_seconds.clear()
        try:
            with toolkit.use_cassette(project.cassette_for(spec.name), "none"):
                if spec.flavor is Flavor.PYFUNC:
                    info = mlflow.pyfunc.log_model(python_model=str(spec.path), **kwargs)
                else:  # model_config: without it clv does not log at all (MLflow refuses its ModelConfig)
                    config = str(spec.model_config) if spec.model_config else None
                    info = mlflow.langchain.log_model(lc_model=str(spec.path), model_config=config, **kwargs)
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"[:200]
        seconds = time.perf_counter() - began
        logging.getLogger("mlflow").removeHandler(records)
        chains[spec.name] = {
            "seconds": seconds,
            "error": error,
            "child_seconds": sum(child_seconds),
            "inference": inference_outcome(records.messages),
            "uri": info and info.model_uri,
        }
    total = time.perf_counter() - started
    for chain in chains.values():  # read back after the timing, as for chainkit
        chain["requirements"] = requirements_of(chain.pop("uri")) if chain["uri"] else []
    return {"total": total, "chains": chains}


def spawn(side: str, tmp: Path) -> Result:
    """Run one side in a fresh interpreter, in a fresh copy of the project with a fresh store."""
    work = Path(tempfile.mkdtemp(prefix=f"log-{side}-", dir=tmp))
    root, out = work / "project", work / "result.json"
    for folder in ("chains", "cassettes"):
        shutil.copytree(ROOT / folder, root / folder, ignore=shutil.ignore_patterns("__pycache__"))
    command = [sys.executable, __file__, "--only", side, "--work", str(work)]
    began, cpu = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    with (work / "stderr.txt").open("w") as stderr:
        done = subprocess.run(command, cwd=root, stdout=subprocess.DEVNULL, stderr=stderr, timeout=1800)
    if done.returncode != 0 or not out.exists():
        tail = (work / "stderr.txt").read_text().strip().splitlines()[-5:]
        raise RuntimeError(f"side {side} exited {done.returncode}:\n" + "\n".join(tail))
    wall, now = time.perf_counter() - began, resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_seconds = now.ru_utime + now.ru_stime - cpu.ru_utime - cpu.ru_stime  # its children's too
    return {**json.loads(out.read_text()), "wall": wall, "cpu": cpu_seconds}


def per_chain(runs: list[Result], name: str, key: str = "seconds") -> float:
    return float(median(run["chains"][name][key] for run in runs))


def summary(runs: list[Result], names: list[str]) -> dict[str, float]:
    """Medians over rounds of the lines of SUMMARY_LINES, and of the whole logging call."""
    result = {
        "first": per_chain(runs, names[0]),
        "others": median(sum(run["chains"][n]["seconds"] for n in names[1:]) for run in runs),
        "total": median(run["total"] for run in runs),
        "wall": median(run["wall"] for run in runs),
        "cpu": median(run["cpu"] for run in runs),
    }
    return {**result, "setup": result["total"] - result["first"] - result["others"]}


def side_by_side(name: str, a: list[str], b: list[str]) -> None:
    pins = [{req.split("==")[0].lower(): req for req in reqs} for reqs in (a, b)]
    print(f"\n  {name}: {len(a)} chainkit | {len(b)} plain")
    for package in sorted(pins[0].keys() | pins[1].keys()):
        left, right = pins[0].get(package, "-"), pins[1].get(package, "-")
        mark = "" if "-" not in (left, right) else "   <- only " + ("plain" if left == "-" else "chainkit")
        print(f"    {left:<28} {right:<28}{mark}")


def report(a_runs: list[Result], b_runs: list[Result]) -> str:
    names = list(a_runs[0]["chains"])
    print(
        f"\nLogging {len(names)} chains, each side in a fresh process and store, under replay; "
        f"{len(a_runs)} round(s), medians."
    )
    print(f"{'chain':<14}{'chainkit s':>11}{'plain s':>9}{'ratio':>7}{'child s':>9}  plain's inference")
    for name in names:
        a, b = per_chain(a_runs, name), per_chain(b_runs, name)
        outcome = b_runs[0]["chains"][name]["inference"]
        for side, runs in (("chainkit", a_runs), ("plain", b_runs)):
            if runs[0]["chains"][name]["error"]:
                outcome = f"{side} FAILED: {runs[0]['chains'][name]['error'][:80]}"
        child = per_chain(b_runs, name, "child_seconds")
        print(f"{name:<14}{a:>11.2f}{b:>9.2f}{a / b:>7.2f}{child:>9.2f}  {outcome}")
    sa, sb = summary(a_runs, names), summary(b_runs, names)
    for key, label in SUMMARY_LINES.items():
        label = label.format(first=names[0], others=len(names) - 1)
        print(f"{label}: chainkit {sa[key]:.2f} s, plain {sb[key]:.2f} s, ratio {sa[key] / sb[key]:.3f}")
    networked = [n for n in names if "DNS" in b_runs[0]["chains"][n]["inference"]]
    for label, group in (
        ("called the network (DNS failed, openai retried)", networked),
        ("made no network call", [n for n in names if n not in networked]),
    ):
        child = median(per_chain(b_runs, n, "child_seconds") for n in group) if group else 0
        print(f"plain's inference child process, {len(group)} chains that {label}: median {child:.2f} s")
    ratio = sa["total"] / sb["total"]
    verdict = "PASS" if ratio <= TARGET else "FAIL"
    print(
        f"TOTAL (import mlflow + store + all chains): chainkit {sa['total']:.2f} s, "
        f"plain {sb['total']:.2f} s, chainkit/plain = {ratio:.3f} (target <= {TARGET}): {verdict}"
    )
    print("\nRequirements written (the logged model's requirements.txt): chainkit | plain")
    for name in (n for n in SHOWN if n in names):
        side_by_side(name, *(runs[0]["chains"][name]["requirements"] for runs in (a_runs, b_runs)))
    return verdict


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--check", action="store_true", help="exit 1 when the target is missed")
    parser.add_argument("--only", choices=["A", "B"], help="(internal) run one side in this process")
    parser.add_argument("--work", type=Path, help="(internal) its directory: project/, mlflow.db")
    args = parser.parse_args()
    if args.only:
        run = run_chainkit if args.only == "A" else run_plain
        result = run(args.work / "project", f"sqlite:///{args.work / 'mlflow.db'}")
        (args.work / "result.json").write_text(json.dumps(result))
        return 0
    runs: dict[str, list[Result]] = {"A": [], "B": []}  # A: chainkit, B: plain
    with tempfile.TemporaryDirectory(prefix="chainkit-bench-log-") as tmp:
        for round_number in range(args.rounds):
            for side in "AB" if round_number % 2 == 0 else "BA":
                try:
                    runs[side].append(spawn(side, Path(tmp)))
                except (RuntimeError, subprocess.TimeoutExpired) as exc:
                    print(f"round {round_number + 1}: {exc}")
                    return 1 if args.check else 0
                print(f"round {round_number + 1}, {side}: {runs[side][-1]['total']:.1f} s", flush=True)
    verdict = report(runs["A"], runs["B"])
    return 1 if args.check and verdict == "FAIL" else 0


if __name__ == "__main__":
    sys.exit(main())
