"""What the start-up hook costs a Python process that does not ask for replay.

    .venv/bin/python benchmarks/startup.py [--runs 30] [--check]

chainkit installs ``chainkit-replay.pth`` into site-packages (setup.py): one line that reads
$CHAINKIT_CASSETTE and imports nothing unless it is set. To see its cost alone, virtual
environments are made side by side from the same interpreter, each without and with only the
hook added, and ``python -c pass`` is run in each, interleaved, ``--runs`` times:

 (a)/(b) a standard venv (``python -m venv``: pip, and on 3.11 setuptools, whose
         ``distutils-precedence.pth`` already holds an import line) without / with the hook:
         the target, (b)/(a) <= 1.02;
 (c)/(d) a venv with no .pth at all, without / with the hook: for information. The first
         import line any .pth holds costs ~0.9 ms here whatever it imports (``import os`` alone
         measured the same), a cost every real environment already pays;
 (e)/(f) the project's own .venv with the variable unset / set: the price of turning replay on.

Exit code 0 always; with --check, 1 when the target is missed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET = 1.02


def hook_file() -> Path:
    found = Path(sysconfig.get_paths()["purelib"]) / "chainkit-replay.pth"
    if not found.is_file():
        sys.exit(f"{found} is missing: install chainkit with `bash scripts/setup.sh` first")
    return found


def make_env(folder: Path, *, with_pip: bool, with_hook: bool) -> Path:
    venv.EnvBuilder(with_pip=with_pip).create(folder)
    python = folder / "bin" / "python"
    if with_hook:
        purelib = subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        Path(purelib, "chainkit-replay.pth").write_text(hook_file().read_text())
    return python


def one_run(python: Path, env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run([str(python), "-c", "pass"], env=env, check=True)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    unset = {k: v for k, v in os.environ.items() if k != "CHAINKIT_CASSETTE"}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        project = ROOT / ".venv" / "bin" / "python"
        replaying = {**unset, "CHAINKIT_CASSETTE": str(ROOT / "cassettes" / "qa.json")}
        cases = {
            "(a) standard venv": (make_env(folder / "a", with_pip=True, with_hook=False), unset),
            "(b) standard venv + hook": (make_env(folder / "b", with_pip=True, with_hook=True), unset),
            "(c) venv without any .pth": (make_env(folder / "c", with_pip=False, with_hook=False), unset),
            "(d) venv without any .pth + hook": (
                make_env(folder / "d", with_pip=False, with_hook=True),
                unset,
            ),
            "(e) project .venv, variable unset": (project, unset),
            "(f) project .venv, CHAINKIT_CASSETTE set": (project, replaying),
        }
        times: dict[str, list[float]] = {name: [] for name in cases}
        for python, env in cases.values():  # warm the file cache once
            one_run(python, env)
        names = list(cases)
        for n in range(args.runs):
            for name in names[n % len(names) :] + names[: n % len(names)]:
                python, env = cases[name]
                times[name].append(one_run(python, env))

    def ratio(over: str, under: str) -> float:
        return statistics.median(b / a for a, b in zip(times[under], times[over], strict=True))

    print(f"python -c pass, {args.runs} interleaved runs each")
    print(f"  {'case':<44} {'median ms':>10}")
    for name, values in times.items():
        print(f"  {name:<44} {statistics.median(values) * 1000:10.1f}")
    rows = [
        ("hook cost (b)/(a)", ratio("(b) standard venv + hook", "(a) standard venv")),
        (
            "first import-line .pth (d)/(c)",
            ratio("(d) venv without any .pth + hook", "(c) venv without any .pth"),
        ),
        (
            "replay on (f)/(e)",
            ratio("(f) project .venv, CHAINKIT_CASSETTE set", "(e) project .venv, variable unset"),
        ),
    ]
    verdict = "PASS" if rows[0][1] <= TARGET else "FAIL"
    for n, (label, value) in enumerate(rows):
        note = f"target <= {TARGET}  {verdict}" if n == 0 else "(information)"
        print(f"  {label:<44} {value:9.3f}x  {note}")
    return 1 if args.check and verdict == "FAIL" else 0


if __name__ == "__main__":
    sys.exit(main())
