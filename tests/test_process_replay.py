"""Process-wide replay (CHAINKIT_CASSETTE) in fresh interpreters, their children, and MLflow's own
``models predict`` and ``models serve``; recordings carried by the logged model."""

from __future__ import annotations

import json
import os
import site
import socket
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx
import mlflow
import pytest
from conftest import EXAMPLES, ROOT
from openai_server import OpenAIServer

from toolkit import Cassette, use_cassette
from toolkit.discovery import discover
from toolkit.packaging import LogResult, log_chains
from toolkit.project import Project

BIN = Path(sys.executable).parent


def offline_env(**extra: str) -> dict[str, str]:
    """A child's environment: no key, no chainkit variables but ``extra``, the venv's bin first
    on PATH (``mlflow models serve`` starts ``uvicorn`` by name)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CHAINKIT_", "OPENAI_", "MLFLOW_"))}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


def python(code: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


# ----------------------------------------------------------------------------- the hook


def test_the_hook_is_installed_and_costs_an_import_only_when_asked() -> None:
    hooks = [Path(p) / "chainkit-replay.pth" for p in site.getsitepackages()]
    (hook,) = [p for p in hooks if p.is_file()]
    assert "CHAINKIT_CASSETTE" in hook.read_text()
    probe = "import sys; print('toolkit' in sys.modules, 'httpx' in sys.modules)"
    assert python(probe, offline_env()).stdout.split() == ["False", "False"]
    asked = python(probe, offline_env(CHAINKIT_CASSETTE=str(ROOT / "cassettes" / "qa.json")))
    assert asked.stdout.split() == ["True", "True"], asked.stderr


QA = """
    import runpy, sys
    chain = runpy.run_path(sys.argv[1])["chain"]  # the chain file itself, unchanged; no key set
    print(chain.invoke({"question": "What is MLflow?"}))
"""
QA_FILE = str(ROOT / "chains" / "qa.py")


def test_a_fresh_process_and_its_children_replay_from_the_first_line() -> None:
    with use_cassette(ROOT / "cassettes" / "qa.json", "none"):
        import runpy

        expected = str(runpy.run_path(QA_FILE)["chain"].invoke({"question": "What is MLflow?"}))
    env = offline_env(CHAINKIT_CASSETTE=str(ROOT / "cassettes" / "qa.json"))
    direct = python(QA, env, QA_FILE)
    assert direct.returncode == 0, direct.stderr
    assert direct.stdout.strip() == expected
    parent = f"""
        import subprocess, sys
        child = [sys.executable, "-c", {textwrap.dedent(QA)!r}, {QA_FILE!r}]
        print(subprocess.run(child, capture_output=True, text=True).stdout)
    """
    assert python(parent, env).stdout.strip() == expected  # the environment is inherited
    without = python(QA, offline_env(), QA_FILE)
    assert without.returncode != 0  # what it replaces: no key, no network


def test_the_network_stays_closed_in_such_a_process_but_loopback() -> None:
    code = """
        import socket
        from toolkit.errors import NetworkBlockedError
        try:
            socket.create_connection(("api.openai.com", 443), timeout=5)
        except NetworkBlockedError as exc:
            print("blocked", exc.host)
        server = socket.create_server(("127.0.0.1", 0))
        socket.create_connection(server.getsockname(), timeout=5).close()  # Spark, MLflow's server
        print("loopback ok")
    """
    done = python(code, offline_env(CHAINKIT_CASSETTE=str(ROOT / "cassettes" / "qa.json")))
    assert done.stdout.split("\n")[:2] == ["blocked api.openai.com", "loopback ok"], done.stderr


def test_several_processes_record_into_one_cassette(tmp_path: Path) -> None:
    cassette = tmp_path / "shared.json"
    code = """
        import sys
        from langchain_openai import ChatOpenAI
        llm = ChatOpenAI(model="gpt-4o-mini", api_key="sk-test")
        for n in range(5):
            llm.invoke(f"process {sys.argv[1]} question {n}")
    """
    with OpenAIServer(latency=0.02) as server:
        env = offline_env(
            CHAINKIT_CASSETTE=str(cassette),
            CHAINKIT_RECORD_MODE="new_episodes",
            CHAINKIT_RECORD_VIA=server.base_url.removesuffix("/v1"),
        )
        processes = [
            subprocess.Popen(
                [sys.executable, "-c", textwrap.dedent(code), str(n)], env=env, stderr=subprocess.PIPE
            )
            for n in range(3)
        ]
        for process in processes:
            assert process.wait(timeout=120) == 0, process.stderr.read() if process.stderr else ""
    prompts = sorted(i.request.body["json"]["messages"][0]["content"] for i in Cassette.load(cassette))
    assert prompts == sorted(f"process {p} question {n}" for p in range(3) for n in range(5))


def test_model_mode_is_replay_only() -> None:
    done = python("pass", offline_env(CHAINKIT_CASSETTE="model", CHAINKIT_RECORD_MODE="all"))
    assert "CHAINKIT_CASSETTE=model replays the recordings a model carries" in done.stderr


# ------------------------------------------------------------------ MLflow's predict and serve


@pytest.fixture(scope="module")
def logged(logged_examples: tuple[Project, dict[str, LogResult]]) -> tuple[Project, dict[str, LogResult]]:
    """The example chains logged once for the session, registered with the alias ``candidate``."""
    return logged_examples


def _expected(project: Project, name: str, example: Any) -> Any:
    """What the model predicts in this process, replayed: the answer the others must give."""
    mlflow.set_tracking_uri(f"sqlite:///{project.root / 'mlflow.db'}")
    with use_cassette(project.cassette_for(name), "none"):
        return mlflow.pyfunc.load_model(f"models:/{name}@candidate").predict(example)


@pytest.fixture(scope="module")
def examples(logged: tuple[Project, dict[str, LogResult]]) -> dict[str, tuple[Any, Any]]:
    """Each example chain's input example and its expected answer (JSON-shaped), computed once
    for the predict and serve tests: loading nine models in this process is not free."""
    project, _ = logged
    found = discover(project.chains_dir)
    inputs = {name: found.get(name).input_example for name in EXAMPLES}
    return {
        name: (inputs[name], json.loads(json.dumps(_expected(project, name, inputs[name]), default=str)))
        for name in EXAMPLES
    }


#: ``mlflow models ...`` through MLflow's own ``models`` command group: the very commands of the
#: ``mlflow`` script, without the imports of its other groups (server, assistant: ~3.5 s of CPU
#: per process here, more than the model's own load). One test keeps the ``mlflow`` script.
MLFLOW_MODELS = [
    sys.executable,
    "-c",
    "import sys; from mlflow.models.cli import commands; sys.exit(commands(prog_name='mlflow models'))",
]


def _predict(
    project: Project, name: str, example: Any, cwd: Path, *, script: bool = False, **variables: str
) -> Any:
    source = cwd / f"{name}-input.json"
    output = cwd / f"{name}-output.json"
    source.write_text(json.dumps({"inputs": example}))
    env = offline_env(MLFLOW_TRACKING_URI=f"sqlite:///{project.root / 'mlflow.db'}", **variables)
    mlflow_models = ["mlflow", "models"] if script else MLFLOW_MODELS
    command = [*mlflow_models, "predict", "-m", f"models:/{name}@candidate", "-i", str(source)]
    done = subprocess.run(
        [*command, "-o", str(output), "--env-manager", "local"],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, f"{name}: {done.stderr[-3000:]}"
    return json.loads(output.read_text())["predictions"]


def test_mlflow_models_predict_replays_every_chain_from_the_recordings_it_carries(
    logged: tuple[Project, dict[str, LogResult]],
    examples: dict[str, tuple[Any, Any]],
    tmp_path: Path,
) -> None:
    """From a folder with nothing of the project: the model's own cassette, no key, no network."""
    project, _ = logged
    with ThreadPoolExecutor(max_workers=2) as pool:
        got = dict(
            zip(
                EXAMPLES,
                pool.map(
                    lambda name: _predict(
                        project, name, examples[name][0], tmp_path, CHAINKIT_CASSETTE="model"
                    ),
                    EXAMPLES,
                ),
                strict=True,
            )
        )
    assert got == {name: examples[name][1] for name in EXAMPLES}


def test_mlflow_models_predict_with_a_cassette_path_and_load_time_calls(
    logged: tuple[Project, dict[str, LogResult]],
    examples: dict[str, tuple[Any, Any]],
    tmp_path: Path,
) -> None:
    """rag embeds its corpus at import: replayed because replay is on from the first line.
    Through the ``mlflow`` script itself, as users type it."""
    project, _ = logged
    for name in ("rag", "qa"):
        example, expected = examples[name]
        cassette = str(project.cassette_for(name))
        assert _predict(project, name, example, tmp_path, script=True, CHAINKIT_CASSETTE=cassette) == expected


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_mlflow_models_serve_answers_every_chain_from_the_model(
    logged: tuple[Project, dict[str, LogResult]],
    examples: dict[str, tuple[Any, Any]],
    tmp_path: Path,
) -> None:
    project, _ = logged
    env = offline_env(
        MLFLOW_TRACKING_URI=f"sqlite:///{project.root / 'mlflow.db'}", CHAINKIT_CASSETTE="model"
    )
    servers: dict[str, tuple[int, subprocess.Popen[bytes]]] = {}
    try:
        for name in EXAMPLES:
            port = _free_port()
            command = [*MLFLOW_MODELS, "serve", "-m", f"models:/{name}@candidate", "-p", str(port)]
            servers[name] = (
                port,
                subprocess.Popen(
                    [*command, "--env-manager", "local"],
                    env=env,
                    cwd=tmp_path,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,
                ),
            )
        for name, (port, process) in servers.items():
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline:
                assert process.poll() is None, f"mlflow models serve for {name} exited"
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/ping", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.5)
            example, expected = examples[name]
            answer = httpx.post(f"http://127.0.0.1:{port}/invocations", json={"inputs": example}, timeout=60)
            assert answer.status_code == 200, f"{name}: {answer.text[:2000]}"
            assert answer.json()["predictions"] == expected, name
    finally:
        for _, process in servers.values():
            os.killpg(process.pid, 15)
        for _, process in servers.values():
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, 9)


def _carried(model_id: str, destination: Path) -> Path:
    location = mlflow.get_logged_model(model_id).artifact_location
    return Path(mlflow.artifacts.download_artifacts(f"{location}/chainkit", dst_path=str(destination)))


def test_the_model_carries_its_cassette_and_the_http_stack_pins(
    logged: tuple[Project, dict[str, LogResult]], tmp_path: Path
) -> None:
    project, results = logged
    store = f"sqlite:///{project.root / 'mlflow.db'}"
    mlflow.set_tracking_uri(store)
    local = _carried(str(results["qa"].model_id), tmp_path / "qa")
    assert (local / "cassette.json").read_bytes() == project.cassette_for("qa").read_bytes()
    pins = dict(line.split("==") for line in (local / "constraints.txt").read_text().split())
    assert pins["httpx"] == metadata.version("httpx") and pins["openai"] == metadata.version("openai")
    bare = log_chains(project, ["qa"], tracking_uri=store, carry_cassette=False)[0]
    assert bare.status == "logged" and bare.model_id != results["qa"].model_id  # not reused
    assert sorted(p.name for p in _carried(str(bare.model_id), tmp_path / "bare").iterdir()) == [
        "constraints.txt"
    ]
