"""Logging chains to MLflow from code: offline, with exact requirements, registered, versioned.

For each chain, under its cassette (so every LLM call MLflow makes while logging is replayed):

1. load the file the way MLflow will (a stale ``set_model`` from an earlier file is caught);
2. run it on its ``INPUT_EXAMPLE`` and infer the signature a person would write from the
   example and the real output (MLflow's own inference gives up on plain-string outputs);
3. compute its pip requirements and helper ``code_paths`` from its imports (no child process);
4. skip it if a model with the same fingerprint (file, helpers, config, cassette, requirements)
   is already logged, unless forced;
5. ``mlflow.langchain.log_model`` / ``mlflow.pyfunc.log_model`` from the file, tagged with the
   chain's name, the sha256 of the file and of its cassette, the git commit and chainkit's version;
6. store the chain's cassette in the model (``chainkit/cassette.json``, secret scan applied),
   so that ``CHAINKIT_CASSETTE=model`` replays it wherever the model is loaded, and the exact
   versions of the HTTP stack replay patches and the client that recorded it
   (``chainkit/constraints.txt``);
7. optionally register a model version under the chain's name and move an alias to it.

One broken chain fails alone; the others still log.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import subprocess
import time
import traceback
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from toolkit import __version__
from toolkit.cassette import Cassette, file_sha256, recorder_versions
from toolkit.discovery import ChainSpec, Flavor, Problem, discover
from toolkit.errors import ChainkitError, ReplayMissError, UsageError, refusal_in
from toolkit.loading import exit_error, load_chain, on_sys_path, predict_python_model
from toolkit.outputs import plain_output
from toolkit.project import Project
from toolkit.redaction import check_no_secrets, scrub
from toolkit.replay import RecordMode, use_cassette
from toolkit.requirements import Dependencies, chain_dependencies

EXPERIMENT = "chainkit"
TAG_PREFIX = "chainkit."


@dataclass
class LogResult:
    """What happened to one chain: logged, reused (unchanged since last time) or failed."""

    name: str
    status: str  # "logged" | "reused" | "failed"
    model_id: str | None = None
    model_uri: str | None = None
    version: int | None = None
    alias: str | None = None
    error: str | None = None
    seconds: float = 0.0
    #: The failure's traceback, secrets scrubbed: printed by ``chainkit log --debug``.
    traceback: str | None = None

    @property
    def ok(self) -> bool:
        return self.status != "failed"

    def to_json(self) -> dict[str, Any]:
        return {key: value for key, value in self.__dict__.items() if key != "traceback"}


# ------------------------------------------------------------------------ tracking store


def tracking_uri_for(project: Project, explicit: str | None = None) -> str:
    """--tracking-uri, else $MLFLOW_TRACKING_URI, else the project's embedded sqlite store."""
    return explicit or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{project.root / 'mlflow.db'}"


def use_tracking(project: Project, tracking_uri: str | None = None, experiment: str = EXPERIMENT) -> str:
    """Point MLflow at the store and experiment; returns the experiment id."""
    import mlflow

    uri = tracking_uri_for(project, tracking_uri)
    mlflow.set_tracking_uri(uri)
    with _store_lock(uri):
        found = mlflow.get_experiment_by_name(experiment)
        if found is not None:
            mlflow.set_experiment(experiment_id=found.experiment_id)
            return str(found.experiment_id)
        # A local store keeps its artifacts in the project, not wherever the command ran.
        location = (project.root / "mlruns").as_uri() if uri.startswith("sqlite:") else None
        experiment_id = mlflow.create_experiment(experiment, artifact_location=location)
        mlflow.set_experiment(experiment_id=experiment_id)
        return str(experiment_id)


@contextmanager
def _store_lock(uri: str) -> Iterator[None]:
    """An exclusive lock on ``<db>.lock`` beside a sqlite store while it is opened and the
    experiment made. MLflow creates and migrates the schema when it opens the store: two
    processes doing that at once on a fresh file break it (``duplicate column name: step``)."""
    import fcntl

    from sqlalchemy.engine import make_url

    database = make_url(uri).database if uri.startswith("sqlite:") else None
    if not database or database == ":memory:":
        yield
        return
    path = Path(database).absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.with_name(path.name + ".lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file closes
        yield


@contextmanager
def quiet_mlflow() -> Iterator[None]:
    """MLflow's INFO chatter (active model set, env vars found) is noise in a batch of logs."""
    import mlflow  # noqa: F401 - importing mlflow configures its loggers; adjust them after

    logger = logging.getLogger("mlflow")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


# ---------------------------------------------------------------------------- one chain


def git_commit(root: Path) -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _files_of(paths: Iterable[Path]) -> list[Path]:
    files = []
    for path in paths:
        files += (
            [path]
            if path.is_file()
            else sorted(p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
        )
    return files


def fingerprint(spec: ChainSpec, dependencies: Dependencies, cassette: Path, carried: bool = True) -> str:
    """Changes whenever anything that goes into the logged model changes."""
    digest = hashlib.sha256()
    for file in [
        spec.path,
        *_files_of(dependencies.code_paths),
        *([spec.model_config] if spec.model_config else []),
    ]:
        digest.update(str(file.name).encode() + b"\0" + file.read_bytes() + b"\0")
    digest.update((file_sha256(cassette) or "no cassette").encode())
    digest.update(
        json.dumps(
            [dependencies.requirements, spec.input_example, spec.flavor.value, __version__, carried],
            sort_keys=True,
            default=str,
        ).encode()
    )
    return digest.hexdigest()


def agent_kind(chain: Any) -> str | None:
    """``"responses"`` for an MLflow ResponsesAgent, ``"chat"`` for a ChatAgent or ChatModel:
    pyfunc models whose signature MLflow fixes itself; None for anything else."""
    from mlflow.pyfunc.model import ChatAgent, ChatModel, ResponsesAgent

    if isinstance(chain, ResponsesAgent):
        return "responses"
    if isinstance(chain, ChatAgent | ChatModel):
        return "chat"
    return None


def _request_messages(body: Any) -> list[dict[str, Any]]:
    """The user's turns in a recorded OpenAI request: a Responses API ``input`` (a string or
    items) or chat completions ``messages``; instructions, system and developer turns left out."""
    if not isinstance(body, dict):
        return []
    items = body.get("input", body.get("messages"))
    if isinstance(items, str):
        return [{"role": "user", "content": items}]
    if not isinstance(items, list):
        return []
    return [
        {"role": str(item["role"]), "content": item["content"]}
        for item in items
        if isinstance(item, dict) and item.get("role") in ("user", "assistant") and "content" in item
    ]


def recorded_input_example(chain: Any, cassette: Cassette) -> dict[str, Any] | None:
    """For a pyfunc agent that declares no ``INPUT_EXAMPLE``: its own first recorded input.

    MLflow calls such an agent at log time on a default input of its own (a ResponsesAgent on
    ``Hello!``, twice), which a cassette recorded with ``chainkit run`` does not hold. The user
    turns of the first request the cassette holds are what the agent was run on: logged as the
    example, MLflow's log-time calls replay. None when the chain is no agent or the cassette
    holds no unstreamed request with user turns (then ``chainkit log NAME --record-mode
    new_episodes`` records MLflow's own calls once)."""
    kind = agent_kind(chain)
    if kind is None:
        return None
    for interaction in cassette.interactions:
        body = interaction.request.body.get("json")
        if isinstance(body, dict) and body.get("stream"):  # predict sends the request unstreamed
            continue
        messages = _request_messages(body)
        if messages:
            return {"input": messages} if kind == "responses" else {"messages": messages}
    return None


def _log_time_hint(spec: ChainSpec, example: Any) -> str:
    """What to do when MLflow's log-time call on an agent without INPUT_EXAMPLE is not recorded."""
    called_on = (
        f"the first input its cassette records ({json.dumps(example)[:80]})"
        if example is not None
        else "MLflow's default input ({'input': [{'role': 'user', 'content': 'Hello!'}]}), twice"
    )
    return (
        f"chain {spec.name} declares no INPUT_EXAMPLE, so MLflow calls it at log time on {called_on}: "
        f"record those calls once with `chainkit log {spec.name} --record-mode new_episodes`, or "
        f"declare INPUT_EXAMPLE in {spec.path}"
    )


def signature_for(spec: ChainSpec, chain: Any, input_example: Any = None) -> Any:
    """The signature a person would write: inferred from the example and the chain's output,
    made JSON data first (:func:`toolkit.outputs.plain_output`: a LangGraph state's messages
    dumped, so an agent gets a full messages signature, as ``mlflow.langchain.log_model`` gives).

    None (MLflow's own signature) for an agent whose signature MLflow fixes (ResponsesAgent,
    ChatAgent, ChatModel)."""
    from mlflow.models import infer_signature

    example = spec.input_example if input_example is None else input_example
    if example is None or agent_kind(chain) is not None:
        return None
    output = predict_python_model(chain, example) if spec.flavor is Flavor.PYFUNC else chain.invoke(example)
    # Plain JSON types only: langchain returns str subclasses, which MLflow's inference rejects.
    return infer_signature(example, plain_output(output))


def _existing_model(experiment_id: str, fingerprint_value: str) -> Any:
    import mlflow

    found = mlflow.search_logged_models(
        experiment_ids=[experiment_id],
        filter_string=f"tags.`{TAG_PREFIX}fingerprint` = '{fingerprint_value}'",
        output_format="list",
    )
    ready = [model for model in found if str(getattr(model.status, "name", model.status)).upper() == "READY"]
    return ready[0] if ready else None


def _register(name: str, model_id: str, model_uri: str, alias: str | None) -> int:
    import mlflow
    from mlflow import MlflowClient

    client = MlflowClient()
    existing = [
        mv
        for mv in client.search_model_versions(f"name = '{name}'")
        if model_id in (getattr(mv, "model_id", None), str(mv.source).removeprefix("models:/"))
    ]
    if existing:
        version = int(existing[0].version)
    else:
        from mlflow.utils.logging_utils import MLFLOW_LOGGING_STREAM

        # MLflow prints "Successfully registered model" / "Created version" here; the command's
        # own table says the version, so the lines are noise.
        MLFLOW_LOGGING_STREAM.enabled = False
        try:
            version = int(mlflow.register_model(model_uri, name).version)
        finally:
            MLFLOW_LOGGING_STREAM.enabled = True
    if alias:
        client.set_registered_model_alias(name, alias, str(version))
    return version


def _retag_after_recording(
    spec: ChainSpec,
    project: Project,
    model_id: str,
    logged_with: Dependencies,
    cassette_path: Path,
    carry_cassette: bool,
) -> None:
    """Logging recorded (new_episodes, once, all): tag the model with the cassette it carries,
    so that the next unchanged `log` finds it and says "reused". Only if the requirements the
    recording implies are those the model was logged with; else the next log is rightly new."""
    import mlflow

    now = chain_dependencies(spec.path, project.chains_dir, Cassette.load(cassette_path).recorded_with)
    if now != logged_with:
        return
    mlflow.set_logged_model_tags(
        model_id,
        {
            f"{TAG_PREFIX}cassette_sha256": file_sha256(cassette_path) or "none",
            f"{TAG_PREFIX}fingerprint": fingerprint(spec, now, cassette_path, carry_cassette),
        },
    )


def log_chain(
    project: Project,
    spec: ChainSpec,
    experiment_id: str,
    *,
    register: bool = False,
    alias: str | None = None,
    force: bool = False,
    record_mode: str | RecordMode | None = None,
    carry_cassette: bool = True,
    cassette: Path | None = None,
) -> LogResult:
    """Log one chain (see the module docstring); errors are raised, not caught. ``cassette``:
    the recordings to log with (default: the project's cassette for the chain)."""
    import mlflow

    started = time.perf_counter()
    cassette_path = cassette or project.cassette_for(spec.name)
    recordings = Cassette.load(cassette_path)
    # A recording made while logging is made with this environment's client versions.
    records = RecordMode.parse(record_mode) is not RecordMode.NONE
    recorded_with = recordings.recorded_with or (recorder_versions() if records else None)
    dependencies = chain_dependencies(spec.path, project.chains_dir, recorded_with)
    for file in [
        spec.path,
        *_files_of(dependencies.code_paths),
        *([spec.model_config] if spec.model_config else []),
    ]:
        check_no_secrets(file.read_text(encoding="utf-8", errors="replace"), file)
    fingerprint_value = fingerprint(spec, dependencies, cassette_path, carry_cassette)
    existing = None if force else _existing_model(experiment_id, fingerprint_value)
    if existing is not None:
        model_id, model_uri, status = existing.model_id, f"models:/{existing.model_id}", "reused"
    else:
        tags = {
            f"{TAG_PREFIX}chain": spec.name,
            f"{TAG_PREFIX}chain_sha256": file_sha256(spec.path),
            f"{TAG_PREFIX}cassette_sha256": file_sha256(cassette_path) or "none",
            f"{TAG_PREFIX}fingerprint": fingerprint_value,
            f"{TAG_PREFIX}version": __version__,
        }
        commit = git_commit(project.root)
        if commit:
            tags[f"{TAG_PREFIX}git_commit"] = commit
        with (
            use_cassette(cassette_path, record_mode, ignore_json_paths=project.ignore_json_paths),
            on_sys_path(project.chains_dir),
        ):
            chain = load_chain(spec.path, spec.model_config)
            example = spec.input_example
            if example is None:
                example = recorded_input_example(chain, recordings)
            signature = signature_for(spec, chain, example)
            kwargs: dict[str, Any] = {
                "name": spec.name,
                "input_example": example,
                "signature": signature,
                "pip_requirements": list(dependencies.requirements),
                "code_paths": [str(path) for path in dependencies.code_paths] or None,
                "model_config": str(spec.model_config) if spec.model_config else None,
                "tags": scrub(tags)[0],
            }
            try:
                if spec.flavor is Flavor.PYFUNC:
                    info = mlflow.pyfunc.log_model(python_model=str(spec.path), **kwargs)
                else:
                    info = mlflow.langchain.log_model(lc_model=str(spec.path), **kwargs)
            except Exception as exc:
                miss = refusal_in(exc)
                if spec.input_example is None and isinstance(miss, ReplayMissError) and agent_kind(chain):
                    hint = _log_time_hint(spec, example)
                    raise ReplayMissError(f"{miss}\n{hint}", request=miss.request) from exc
                raise
        # After the session above closed: the cassette now holds what logging recorded.
        _log_replay_artifacts(info.model_id, cassette_path if carry_cassette else None)
        recorded_sha = file_sha256(cassette_path) or "none"
        if recorded_sha != tags[f"{TAG_PREFIX}cassette_sha256"]:
            _retag_after_recording(spec, project, info.model_id, dependencies, cassette_path, carry_cassette)
        model_id, model_uri, status = info.model_id, info.model_uri, "logged"
    version = _register(spec.name, model_id, model_uri, alias) if register else None
    return LogResult(
        spec.name,
        status,
        model_id,
        model_uri,
        version,
        alias if register else None,
        seconds=round(time.perf_counter() - started, 3),
    )


#: What replay patches and what shaped the recorded requests: pinned in constraints.txt.
HTTP_STACK = ("httpx", "httpcore", "httpx2", "httpcore2", "openai", "respx")


def http_stack_constraints() -> str:
    """``name==version`` for each installed distribution of :data:`HTTP_STACK`.

    A constraints file, not more requirements: it pins these where the model's requirements
    pull them in (``pip install -r requirements.txt -c constraints.txt``) and adds nothing.
    """
    from importlib import metadata

    lines = []
    for name in HTTP_STACK:
        with contextlib.suppress(metadata.PackageNotFoundError):
            lines.append(f"{name}=={metadata.version(name)}")
    return "\n".join(lines) + "\n"


def _log_replay_artifacts(model_id: str, cassette: Path | None) -> None:
    """``chainkit/cassette.json`` (the recordings, when carried) and ``chainkit/constraints.txt``."""
    import tempfile

    from mlflow import MlflowClient

    from toolkit.process_replay import CARRIED_CASSETTE

    with tempfile.TemporaryDirectory() as folder:
        staged = Path(folder) / CARRIED_CASSETTE.parent
        staged.mkdir()
        if cassette is not None and cassette.is_file():
            text = cassette.read_text(encoding="utf-8")
            check_no_secrets(text, cassette)
            (staged / CARRIED_CASSETTE.name).write_text(text, encoding="utf-8")
        (staged / "constraints.txt").write_text(http_stack_constraints(), encoding="utf-8")
        MlflowClient().log_model_artifacts(model_id, str(staged), str(CARRIED_CASSETTE.parent))


def log_chains(
    project: Project,
    names: Iterable[str] = (),
    *,
    register: bool = False,
    alias: str | None = None,
    force: bool = False,
    record_mode: str | RecordMode | None = None,
    tracking_uri: str | None = None,
    carry_cassette: bool = True,
) -> list[LogResult]:
    """Log the named chains (default: all discovered); one failure does not stop the rest."""
    found = discover(project.chains_dir)
    wanted = list(names)
    # A chain file discovery rejected (syntax error, no set_model) fails alone, like any other.
    broken = {problem.chain_name: problem for problem in found.problems if problem.chain_name}
    specs: list[ChainSpec | Problem] = (
        [broken.get(name) or found.get(name) for name in wanted]
        if wanted
        else [*found.chains, *broken.values()]
    )
    if alias and not register:
        raise UsageError("--alias needs --register: an alias points at a registered model version")
    with quiet_mlflow():
        experiment_id = use_tracking(project, tracking_uri)
        results = []
        for spec in specs:
            started = time.perf_counter()
            if isinstance(spec, Problem):
                name = spec.chain_name or str(spec.path)
                results.append(LogResult(name, "failed", error=f"chain {name}: {spec}"))
                continue
            try:
                results.append(
                    log_chain(
                        project,
                        spec,
                        experiment_id,
                        register=register,
                        alias=alias,
                        force=force,
                        record_mode=record_mode,
                        carry_cassette=carry_cassette,
                    )
                )
            except (Exception, SystemExit) as exc:
                if isinstance(exc, SystemExit):  # the chain's code exited while being logged
                    exc = exit_error(exc, "its code")
                exc = refusal_in(exc) or exc  # a miss a client wrapped is reported as the miss
                reason = str(exc) if isinstance(exc, ChainkitError) else f"{type(exc).__name__}: {exc}"
                results.append(
                    LogResult(
                        spec.name,
                        "failed",
                        error=f"chain {spec.name}: {reason}",
                        seconds=round(time.perf_counter() - started, 3),
                        traceback=scrub("".join(traceback.format_exception(exc)))[0],
                    )
                )
    return results
