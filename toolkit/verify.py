"""Clean-environment proof: ``chainkit verify CHAIN|MODEL_URI``.

A logged model is only proven packaged when it runs from its own files elsewhere. Verify:

1. takes the model (for a CHAIN: the model logged for the chain as it is now, logging it if no
   identical one is logged yet; or any MODEL_URI) and downloads it into a scratch folder;
2. builds a fresh virtual environment from the model's own ``requirements.txt`` with MLflow's
   ``uv`` environment manager (``mlflow models prepare-env --env-manager uv``), the versions of
   the HTTP stack pinned by the model's ``chainkit/constraints.txt`` (``UV_CONSTRAINT``);
3. adds chainkit as the replay harness only: built from this checkout, ``--no-deps``, plus what
   its replay imports (``HARNESS_REQUIREMENTS``) where the model's requirements lack it;
4. checks that every module the model's code imports is declared by its requirements (so what
   the harness, or another requirement, happens to bring cannot hide a missing one);
5. runs ``mlflow models predict`` in that environment on the model's saved input example with
   ``CHAINKIT_CASSETTE=model``: replayed from the recordings the model carries, no key, the
   network guard on; and compares with the prediction of this process.

Environments are kept under ``.chainkit/envs/`` per hash of the model's python_env.yaml,
requirements and constraints: models with the same requirements share one, and a second
verify only re-installs the harness when chainkit's source changed.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from toolkit.errors import ChainkitError, PackagingError
from toolkit.process_replay import CARRIED_CASSETTE, LOOPBACK, carried_cassette
from toolkit.project import Project
from toolkit.requirements import distribution_of, imported_modules

#: What chainkit's replay imports beyond the standard library (toolkit/replay.py): installed
#: into the environment, pinned by the model's constraints, only where the model lacks it.
HARNESS_REQUIREMENTS = ("httpx", "respx")
ENVS_DIR = Path(".chainkit") / "envs"
CONSTRAINTS = CARRIED_CASSETTE.parent / "constraints.txt"
BUILD_TIMEOUT = 1200
PREDICT_TIMEOUT = 600

_predict_here_lock = threading.Lock()  # loading a model from code sets an MLflow global


class VerifyError(ChainkitError):
    """A step of the verification failed; the message says which and what to do."""


@dataclass(frozen=True)
class Environment:
    path: Path  # the virtual environment
    built: bool  # False: taken from the cache
    seconds: float
    harness_added: tuple[str, ...]  # "name==version" installed for the harness only

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"


@dataclass
class Verification:
    target: str
    model_uri: str
    chain: str | None = None
    environment: Environment | None = None
    expected: Any = None
    predicted: Any = None
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0
    workdir: Path | None = None  # kept with --keep: the model, input, output and logs

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        env = self.environment
        return {
            "target": self.target,
            "model_uri": self.model_uri,
            "chain": self.chain,
            "ok": self.ok,
            "problems": self.problems,
            "environment": None
            if env is None
            else {
                "path": str(env.path),
                "built": env.built,
                "seconds": env.seconds,
                "harness_added": list(env.harness_added),
            },
            "expected": self.expected,
            "predicted": self.predicted,
            "seconds": self.seconds,
            "workdir": None if self.workdir is None else str(self.workdir),
        }


def verify(
    project: Project,
    target: str,
    *,
    tracking_uri: str | None = None,
    keep: bool = False,
    envs_dir: Path | None = None,
) -> Verification:
    """Prove the model named by ``target`` (a chain or a model URI) in a clean environment."""
    import mlflow

    from toolkit.packaging import quiet_mlflow, tracking_uri_for

    started = time.perf_counter()
    model_uri, chain = _resolve(project, target, tracking_uri)
    mlflow.set_tracking_uri(tracking_uri_for(project, tracking_uri))
    workdir = Path(tempfile.mkdtemp(prefix="chainkit-verify-"))
    result = Verification(target, model_uri, chain, workdir=workdir if keep else None)
    try:
        with quiet_mlflow():
            model_dir = Path(mlflow.artifacts.download_artifacts(model_uri, dst_path=str(workdir / "model")))
            example, serving_input = _input_example(model_dir, model_uri)
            try:
                result.expected = _jsonable(_predict_here(model_dir, example))
            except Exception as exc:
                result.problems.append(f"the model does not predict its input example in this process: {exc}")
        try:
            result.environment = environment_for(model_dir, envs_dir or project.root / ENVS_DIR, workdir)
        except VerifyError as exc:
            result.problems.append(str(exc))
            return result
        undeclared = import_problems(result.environment, model_dir)
        result.problems += undeclared.values()
        predicted, failure, missing = _predict_there(result.environment, model_dir, serving_input, workdir)
        result.predicted = predicted
        if failure and missing not in undeclared:  # the same module is named once
            result.problems.append(failure)
        if not failure and result.expected is not None and predicted != result.expected:
            result.problems.append(
                f"the clean environment predicted {_short(predicted)} where this process predicts "
                f"{_short(result.expected)}"
            )
        return result
    finally:
        result.seconds = round(time.perf_counter() - started, 2)
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)


# ------------------------------------------------------------------------------ the model


def _resolve(project: Project, target: str, tracking_uri: str | None) -> tuple[str, str | None]:
    """A chain name: the model logged for the chain as it is now (logged first if none is
    identical); anything with ':' or '/' or a folder holding an MLmodel: a model URI or path."""
    if ":" in target or "/" in target or (Path(target) / "MLmodel").is_file():
        local = Path(target)
        return (str(local.resolve()) if local.exists() else target), None
    from toolkit.packaging import log_chains

    (logged,) = log_chains(project, [target], tracking_uri=tracking_uri)
    if not logged.ok or logged.model_uri is None:
        raise PackagingError(f"{logged.error}; fix it, then verify again")
    return logged.model_uri, target


def _input_example(model_dir: Path, model_uri: str) -> tuple[Any, Path]:
    from mlflow.models import Model

    serving = model_dir / "serving_input_example.json"
    example = Model.load(str(model_dir / "MLmodel")).load_input_example(str(model_dir))
    if example is None or not serving.is_file():
        raise VerifyError(
            f"{model_uri} has no saved input example to predict: log it with one "
            "(INPUT_EXAMPLE in the chain file; chainkit log does the rest)"
        )
    return example, serving


def _predict_here(model_dir: Path, example: Any) -> Any:
    """The reference: this process, replayed from the same carried recordings."""
    import mlflow

    from toolkit.network import NetworkGuard
    from toolkit.replay import mlflow_hosts, use_cassette

    carried = carried_cassette(model_dir)
    replay: contextlib.AbstractContextManager[Any] = (
        use_cassette(carried, "none", network_allows=LOOPBACK)
        if carried is not None
        else NetworkGuard([*LOOPBACK, *mlflow_hosts()])
    )
    with _predict_here_lock, replay:
        return mlflow.pyfunc.load_model(str(model_dir)).predict(example)


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _short(value: Any, limit: int = 300) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


# ---------------------------------------------------------------------------- environment


def _child_environ(**extra: str) -> dict[str, str]:
    """No key, no chainkit or MLflow settings, nothing of this interpreter's (PYTHONPATH...).
    PYTHONDONTWRITEBYTECODE goes too: the cached environment keeps its bytecode, which makes
    a later predict 4x faster."""
    dropped = ("CHAINKIT_", "OPENAI_", "MLFLOW_", "PYTHON")
    env = {k: v for k, v in os.environ.items() if not k.startswith(dropped)}
    env.pop("VIRTUAL_ENV", None)
    env.update(extra)
    return env


def _uv() -> str:
    try:
        from uv import find_uv_bin

        return find_uv_bin()
    except (ImportError, FileNotFoundError):
        found = shutil.which("uv")
        if found is None:
            raise VerifyError(
                "verify builds environments with uv, which is not installed: pip install uv"
            ) from None
        return found


def _run(command: list[str], log: Path, timeout: int, **env: str) -> subprocess.CompletedProcess[str]:
    try:
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=_child_environ(**env),
            cwd=log.parent,
        )
    except subprocess.TimeoutExpired as exc:
        raise VerifyError(f"`{' '.join(command[:4])} …` took more than {timeout}s; see {log}") from exc
    with log.open("a", encoding="utf-8") as out:
        out.write(f"$ {' '.join(command)}\n{done.stdout}{done.stderr}\n")
    return done


def _env_key(model_dir: Path) -> str:
    digest = hashlib.sha256()
    for name in ("python_env.yaml", "requirements.txt", str(CONSTRAINTS)):
        path = model_dir / name
        digest.update(name.encode() + b"\0" + (path.read_bytes() if path.is_file() else b"") + b"\0")
    return digest.hexdigest()[:16]


def environment_for(model_dir: Path, envs_dir: Path, workdir: Path) -> Environment:
    """The model's environment with the harness in it: built fresh, or the cached one."""
    started = time.perf_counter()
    key = _env_key(model_dir)
    home = envs_dir / key
    envs_dir.mkdir(parents=True, exist_ok=True)
    log = workdir / "build.log"
    source, fingerprint = _harness_source()
    with (envs_dir / f"{key}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build per key, across threads and processes
        marker = home / "chainkit.json"
        record: dict[str, Any] = json.loads(marker.read_text()) if marker.is_file() else {}
        venv = next(iter(sorted(home.glob("mlflow-*"))), None)
        built = not record or venv is None
        if built:  # nothing there, or a build that did not finish
            record = {}
            shutil.rmtree(home, ignore_errors=True)
            _prepare_env(model_dir, home, log)
            venv = next(iter(sorted(home.glob("mlflow-*"))), None)
        if venv is None:
            raise VerifyError(f"MLflow built no environment under {home}; see {log}")
        if record.get("harness") != fingerprint:
            added = _install_harness(venv / "bin" / "python", source, model_dir / CONSTRAINTS, log)
            record = {"harness": fingerprint, "added": sorted({*record.get("added", []), *added})}
            marker.write_text(json.dumps(record, indent=2))
    return Environment(venv, built, round(time.perf_counter() - started, 2), tuple(record["added"]))


def _prepare_env(model_dir: Path, home: Path, log: Path) -> None:
    uv = _uv()
    constraints = model_dir / CONSTRAINTS
    done = _run(
        [
            sys.executable,
            "-m",
            "mlflow",
            "models",
            "prepare-env",
            "-m",
            str(model_dir),
            "--env-manager",
            "uv",
        ],
        log,
        BUILD_TIMEOUT,
        PATH=f"{Path(uv).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        MLFLOW_ENV_ROOT=str(home),
        UV_PYTHON_DOWNLOADS="never",  # a Python the machine lacks is reported, not fetched
        **({"UV_CONSTRAINT": str(constraints)} if constraints.is_file() else {}),
    )
    if done.returncode != 0:
        raise VerifyError(install_problem(done.stdout + done.stderr, model_dir, log))


def install_problem(output: str, model_dir: Path, log: Path) -> str:
    """One sentence naming what would not install, from uv's (or pip's) own words."""
    python = re.search(r"No interpreter found for Python ([\w.]+)", output)
    if python:
        return (
            f"the model was logged with Python {python.group(1)}, which this machine lacks: "
            f"install it (e.g. pyenv install {python.group(1)}) and verify again"
        )
    cause = re.search(r"(?:cause|hint|ERROR): (.*?)(?:\n\S|\Z)", output, re.S)
    reason = " ".join((cause.group(1) if cause else _last_error(output)).split())
    names = _requirement_names(model_dir / "requirements.txt")
    named = [line for key, line in names.items() if re.search(rf"\b{re.escape(key)}\b", reason.lower())]
    which = f"requirement {', '.join(named)}" if named else "the model's requirements"
    return (
        f"{which} cannot be installed in a clean environment ({reason}); fix requirements.txt "
        f"(or the pins in {CONSTRAINTS}) and log the model again; log: {log}"
    )


def _requirement_names(path: Path) -> dict[str, str]:
    """Normalized name -> the requirement line, for each plain requirement in ``path``."""
    found = {}
    for raw in path.read_text(encoding="utf-8").splitlines() if path.is_file() else []:
        line = raw.split("#", 1)[0].strip()
        match = re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)", line)
        if match and not line.startswith("-"):
            found[_normalize(match.group(1))] = line
    return found


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# -------------------------------------------------------------------------------- harness


def _harness_source() -> tuple[Path, str]:
    """This checkout (chainkit is not on the package index) and a digest of what it installs."""
    root = Path(__file__).resolve().parent.parent
    if not (root / "setup.py").is_file() or not (root / "pyproject.toml").is_file():
        raise VerifyError(
            f"chainkit's source checkout was not found beside {Path(__file__).parent}: verify installs "
            "the replay harness from it; install chainkit editable (pip install -e CHECKOUT)"
        )
    digest = hashlib.sha256()
    for path in _harness_files(root):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return root, digest.hexdigest()


def _harness_files(root: Path) -> list[Path]:
    files = [root / name for name in ("pyproject.toml", "setup.py", "README.md") if (root / name).is_file()]
    return files + sorted(
        p for p in (root / "toolkit").rglob("*") if p.is_file() and "__pycache__" not in p.parts
    )


def _install_harness(python: Path, root: Path, constraints: Path, log: Path) -> list[str]:
    """chainkit without its dependencies (a wheel: its start-up hook included), then what its
    replay imports and the model's requirements did not bring. Returns what that added."""
    uv = _uv()
    with tempfile.TemporaryDirectory() as folder:
        # Built from a copy: a build writes build/ and egg-info into the tree it builds.
        stage = Path(folder) / "chainkit"
        for path in _harness_files(root):
            (stage / path.relative_to(root)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, stage / path.relative_to(root))
        done = _run(
            [uv, "pip", "install", "--python", str(python), "--no-deps", "--reinstall", str(stage)], log, 600
        )
    if done.returncode != 0:
        reason = _last_error(done.stderr)
        raise VerifyError(f"chainkit itself would not install into the environment ({reason}); log: {log}")
    pins = ["--constraint", str(constraints)] if constraints.is_file() else []
    done = _run([uv, "pip", "install", "--python", str(python), *pins, *HARNESS_REQUIREMENTS], log, 600)
    if done.returncode != 0:
        raise VerifyError(
            f"the replay harness's own requirements ({', '.join(HARNESS_REQUIREMENTS)}) would not install "
            f"beside the model's: {install_problem(done.stderr, Path(), log)}"
        )
    return re.findall(r"^ \+ (\S+==\S+)", done.stderr, re.M)


# ----------------------------------------------------------------------- imports, predict

_PROBE = """
import importlib.util, json, sys
from importlib import metadata
owners = metadata.packages_distributions()
found = {m: owners.get(m, []) if importlib.util.find_spec(m) else None for m in json.loads(sys.argv[1])}
print(json.dumps(found))
"""


def _model_imports(model_dir: Path) -> dict[str, tuple[Path, int]]:
    """Top-level third-party modules the model's code imports -> where (first seen)."""
    carried = CARRIED_CASSETTE.parent.name
    files = [p for p in model_dir.rglob("*.py") if carried not in p.relative_to(model_dir).parts]
    local = {p.stem for p in model_dir.glob("*.py")}
    local |= {p.stem for p in (model_dir / "code").glob("*")} if (model_dir / "code").is_dir() else set()
    found: dict[str, tuple[Path, int]] = {}
    for path in sorted(files):
        for module, line in imported_modules(path):
            top = module.split(".")[0]
            if top not in sys.stdlib_module_names and top not in local and top != "__future__":
                found.setdefault(top, (path.relative_to(model_dir), line))
    return found


def _suggestion(module: str, owners: list[str] | None) -> str:
    distribution = distribution_of(module) or (owners[0] if owners else None)
    if distribution is None:
        return f"the package that provides {module!r}"
    with contextlib.suppress(metadata.PackageNotFoundError):
        return f"{distribution}=={metadata.version(distribution)}"
    return distribution


def import_problems(environment: Environment, model_dir: Path) -> dict[str, str]:
    """Module -> problem, for each module the code imports that no requirement the model
    declares provides: present by chance (another requirement's dependency, the harness) does
    not count."""
    imports = _model_imports(model_dir)
    if not imports:
        return {}
    probe = subprocess.run(
        [str(environment.python), "-I", "-c", _PROBE, json.dumps(sorted(imports))],
        capture_output=True,
        text=True,
        timeout=120,
        env=_child_environ(),
    )
    if probe.returncode != 0:
        return {"": f"the clean environment's Python does not run: {_last_error(probe.stderr)}"}
    owners: dict[str, list[str] | None] = json.loads(probe.stdout)
    declared = set(_requirement_names(model_dir / "requirements.txt"))
    harness = {_normalize(pin.split("==")[0]) for pin in environment.harness_added}
    problems = {}
    for module, (path, line) in imports.items():
        found = owners.get(module)
        if found and declared & {_normalize(name) for name in found}:
            continue
        if not found:
            how = "which its requirements do not install"
        elif {_normalize(name) for name in found} & harness:
            how = "which its requirements do not declare (here only chainkit's replay harness installs it)"
        else:
            how = "which its requirements do not declare (here it comes only with another package)"
        problems[module] = (
            f"module '{module}' is imported by the model's code ({path}:{line}), {how}: "
            f"add {_suggestion(module, found)} to the model's requirements"
        )
    return problems


#: ``mlflow models``: MLflow's own command group, without the imports of the ``mlflow`` script's
#: other groups (its server, the assistant): about 3.5 s less CPU per verify, more in a fresh
#: environment, whose first run compiles every module it imports.
_MLFLOW_MODELS = (
    "import sys; from mlflow.models.cli import commands; sys.exit(commands(prog_name='mlflow models'))"
)


def _predict_there(
    environment: Environment, model_dir: Path, serving_input: Path, workdir: Path
) -> tuple[Any, str | None, str | None]:
    """(predictions, failure, the missing module the failure names)."""
    output = workdir / "predictions.json"
    log = workdir / "predict.log"
    command = [str(environment.python), "-c", _MLFLOW_MODELS, "predict", "-m", str(model_dir)]
    try:
        done = _run(
            [*command, "-i", str(serving_input), "-o", str(output), "--env-manager", "local"],
            log,
            PREDICT_TIMEOUT,
            CHAINKIT_CASSETTE="model",  # the carried recordings; no key, the network guard on
            PATH=f"{environment.path / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
        )
    except VerifyError as exc:
        return None, str(exc), None
    if done.returncode == 0 and output.is_file():
        written = json.loads(output.read_text())
        # {"predictions": ...}, except for the outputs MLflow writes as they are (chat, agents).
        is_wrapped = isinstance(written, dict) and written.keys() == {"predictions"}
        return (written["predictions"] if is_wrapped else written), None, None
    missing = re.findall(r"No module named '([\w.]+)'", done.stderr)
    if missing:
        top = missing[-1].split(".")[0]
        return (
            None,
            f"module '{top}' is missing when the model loads in the clean environment: "
            f"add {_suggestion(top, None)} to the model's requirements",
            top,
        )
    return None, f"the model failed in the clean environment: {_last_error(done.stderr)}; log: {log}", None


def _last_error(output: str) -> str:
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if re.match(r"^(error: |[\w.]+(Error|Exception)\b)", line)]
    return (errors or lines or ["no output"])[-1]


__all__ = ["HARNESS_REQUIREMENTS", "Environment", "Verification", "VerifyError", "environment_for", "verify"]
