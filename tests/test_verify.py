"""``chainkit verify``: a logged model proven in a clean environment built from its own
requirements (MLflow's uv environment manager), replayed from the recordings it carries.

The slow tests install from the package registry: they share one project, and so one
``.chainkit/envs/`` cache, where models with identical requirements share one environment.
"""

from __future__ import annotations

import json
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from pathlib import Path

import mlflow
import pytest
from click.testing import CliRunner
from conftest import EXAMPLES

from toolkit.cli import cli
from toolkit.packaging import LogResult, http_stack_constraints
from toolkit.project import Project
from toolkit.verify import Environment, Verification, import_problems, install_problem, verify

MLFLOW = f"mlflow=={metadata.version('mlflow')}"

# What uv said, word for word, when asked for what cannot be installed.
NO_SOLUTION = """\
Using Python 3.11.7 environment at: /envs/x
error: No solution found when resolving dependencies
  cause: Because langchain-openai>=1.7.4 depends on openai>=2.45.0 and you require \
langchain-openai==1.7.4, we can conclude that you require openai>=2.45.0.
         And because you require openai==2.0.0, we can conclude that your requirements are unsatisfiable.
Traceback (most recent call last):
"""
NO_PYTHON = """\
error: No interpreter found for Python 3.11.9 in managed installations or search path

hint: A managed Python download is available for Python 3.11.9, but Python downloads are set to 'never'
"""


def test_an_install_failure_names_the_requirements_uv_blamed(tmp_path: Path) -> None:
    (tmp_path / "requirements.txt").write_text("langchain-openai==1.7.4\nopenai==2.0.0\nmlflow==3.17.2\n")
    message = install_problem(NO_SOLUTION, tmp_path, tmp_path / "build.log")
    assert message.startswith("requirement langchain-openai==1.7.4, openai==2.0.0 cannot be installed")
    assert "you require openai==2.0.0" in message and "mlflow" not in message
    assert "Python 3.11.9, which this machine lacks" in install_problem(NO_PYTHON, tmp_path, tmp_path / "log")


def test_every_import_must_be_declared_not_merely_present(tmp_path: Path) -> None:
    """Checked against this venv as the 'environment': yaml is installed here (mlflow needs it)
    and still reported, since the model does not declare it; its own helpers are not."""
    (tmp_path / "code" / "helpers").mkdir(parents=True)
    (tmp_path / "code" / "helpers" / "__init__.py").write_text("import json\n")
    (tmp_path / "chain.py").write_text(
        "import mlflow\nimport helpers\nimport yaml\nimport no_such_module_here\n"
    )
    (tmp_path / "requirements.txt").write_text(f"{MLFLOW}\n")
    here = Environment(Path(sys.prefix), built=False, seconds=0.0, harness_added=())
    problems = import_problems(here, tmp_path)
    assert sorted(problems) == ["no_such_module_here", "yaml"]
    assert "(chain.py:3), which its requirements do not declare" in problems["yaml"]
    assert f"add PyYAML=={metadata.version('PyYAML')}" in problems["yaml"]
    assert "which its requirements do not install" in problems["no_such_module_here"]


def test_verify_of_an_unknown_chain_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "chains").mkdir()
    result = CliRunner().invoke(cli, ["--project", str(tmp_path), "verify", "nope"])
    assert result.exit_code == 1
    assert "no chain named 'nope'" in result.stderr and "Traceback" not in result.stderr


# ------------------------------------------------------------------- clean environments (slow)


@pytest.fixture(scope="module")
def logged(logged_examples: tuple[Project, dict[str, LogResult]]) -> tuple[Project, dict[str, LogResult]]:
    """The example chains logged once for the session (tests/conftest.py), store in the project."""
    return logged_examples


def store(project: Project) -> str:
    return f"sqlite:///{project.root / 'mlflow.db'}"


def requirements_of(model_uri: str) -> str:
    return Path(mlflow.pyfunc.get_model_dependencies(model_uri)).read_text()


@pytest.mark.slow
def test_every_example_chain_predicts_offline_in_a_clean_environment(
    logged: tuple[Project, dict[str, LogResult]],
) -> None:
    project, results = logged
    started = time.perf_counter()
    first = verify(project, "qa", tracking_uri=store(project))  # by chain name: the model logged
    assert first.ok, first.problems
    assert first.model_uri == results["qa"].model_uri and first.environment is not None
    assert first.environment.built  # a fresh build from the model's requirements
    assert first.predicted == first.expected and first.predicted
    rest = [name for name in EXAMPLES if name != "qa"]
    with ThreadPoolExecutor(max_workers=2) as pool:
        found: dict[str, Verification] = dict(
            zip(
                rest,
                pool.map(
                    lambda name: verify(project, str(results[name].model_uri), tracking_uri=store(project)),
                    rest,
                ),
                strict=True,
            )
        )
    found["qa"] = first
    for name, v in sorted(found.items()):
        built = v.environment is not None and v.environment.built
        print(
            f"{name}: {v.seconds:.1f}s"
            + (f" (environment built in {v.environment.seconds:.1f}s)" if built else "")
        )
    assert {name: v.problems for name, v in found.items()} == {name: [] for name in EXAMPLES}
    assert all(v.predicted == v.expected and v.predicted is not None for v in found.values())
    # One environment per distinct requirements, each built once; the others take it as it is.
    mlflow.set_tracking_uri(store(project))
    distinct = {requirements_of(str(results[name].model_uri)) for name in EXAMPLES}
    environments = {v.environment.path for v in found.values() if v.environment is not None}
    assert len(environments) == len(distinct) < len(EXAMPLES)
    assert sum(v.environment.built for v in found.values() if v.environment is not None) == len(distinct)
    # chainkit's replay needs respx, which no example's requirements bring: added for the harness.
    assert all(
        any(a.startswith("respx==") for a in v.environment.harness_added)
        for v in found.values()
        if v.environment
    )
    seconds = time.perf_counter() - started
    print(f"\nverify: {len(EXAMPLES)} chains, {len(distinct)} environments, {seconds:.0f}s")

    again = CliRunner().invoke(cli, ["--project", str(project.root), "verify", "qa", "--json"])
    assert again.exit_code == 0, again.stderr
    report = json.loads(again.stdout)
    assert report["ok"] and report["environment"]["built"] is False  # the cached environment
    print(f"verify qa again (cached): {report['seconds']:.1f}s; first: {first.seconds:.1f}s")


BROKEN = '''
    """Imports what its requirements (mlflow alone) do not declare."""
    import mlflow
    import respx  # chainkit's harness installs it: it must not hide the missing requirement
    import yaml  # installed with mlflow, but not declared
    from langchain_core.runnables import RunnableLambda  # not installed at all
    from mlflow.pyfunc import PythonModel


    class Dump(PythonModel):
        def predict(self, context, model_input: list[str]) -> list[str]:
            return [yaml.safe_dump(RunnableLambda(str).invoke(x)) for x in model_input]


    mlflow.models.set_model(Dump())
'''


@pytest.mark.slow
def test_a_model_missing_requirements_fails_naming_each(
    logged: tuple[Project, dict[str, LogResult]], tmp_path: Path
) -> None:
    project, _ = logged
    chain = tmp_path / "broken.py"
    chain.write_text(textwrap.dedent(BROKEN))
    mlflow.set_tracking_uri(store(project))
    info = mlflow.pyfunc.log_model(
        name="broken", python_model=str(chain), pip_requirements=[MLFLOW], input_example=["a"]
    )
    (tmp_path / "chainkit").mkdir()
    (tmp_path / "chainkit" / "constraints.txt").write_text(http_stack_constraints())
    mlflow.MlflowClient().log_model_artifacts(info.model_id, str(tmp_path / "chainkit"), "chainkit")

    result = CliRunner().invoke(cli, ["--project", str(project.root), "verify", info.model_uri])
    assert result.exit_code == 1
    problems = [line for line in result.stderr.splitlines() if line.startswith("problem: ")]
    assert len(problems) == 3, result.stderr  # the failed load names langchain_core once, not twice
    by_module = {line.split("'")[1]: line for line in problems}
    assert f"add langchain-core=={metadata.version('langchain-core')}" in by_module["langchain_core"]
    assert "do not install" in by_module["langchain_core"]
    assert f"add PyYAML=={metadata.version('PyYAML')}" in by_module["yaml"]
    assert f"add respx=={metadata.version('respx')}" in by_module["respx"]
    assert "only chainkit's replay harness installs it" in by_module["respx"]
    assert "FAILED" in result.stdout
