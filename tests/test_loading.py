"""load_chain runs a chain file as MLflow does; check_model, predict_python_model, on_sys_path."""

from __future__ import annotations

import math
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import mlflow
import mlflow.models.model
import pytest
from conftest import ROOT
from langchain_core.runnables import Runnable, RunnableLambda
from mlflow.pyfunc import PythonModel

from toolkit.errors import ChainExitError, ChainLoadError
from toolkit.loading import check_model, load_chain, on_sys_path, predict_python_model

GOOD = """\
import mlflow
from langchain_core.runnables import RunnableLambda

mlflow.models.set_model(RunnableLambda(lambda x: x * 2))
"""


def write(path: Path, source: str) -> Path:
    path.write_text(textwrap.dedent(source), encoding="utf-8")
    return path


@pytest.fixture
def unique_name() -> Iterator[str]:
    """A module name no other test uses; removed from sys.modules afterwards."""
    name = f"helper_{uuid.uuid4().hex[:12]}"
    yield name
    sys.modules.pop(name, None)


@pytest.fixture(autouse=True)
def no_model_left_set() -> Iterator[None]:
    yield
    mlflow.models.model.__mlflow_model__ = None


# --- what load_chain returns ----------------------------------------------------------------


def test_load_chain_returns_the_runnable_the_file_set(tmp_path: Path) -> None:
    chain = load_chain(write(tmp_path / "double.py", GOOD))
    assert isinstance(chain, Runnable)
    assert chain.invoke(21) == 42


def test_load_chain_returns_a_python_model_and_predict_runs_it() -> None:
    model = load_chain(ROOT / "chains" / "circle_area.py")
    assert isinstance(model, PythonModel)
    assert predict_python_model(model, [1.0, 2.0]) == [math.pi, 4 * math.pi]


def test_load_chain_leaves_no_model_set_in_mlflow(tmp_path: Path) -> None:
    load_chain(write(tmp_path / "double.py", GOOD))
    assert mlflow.models.model.__mlflow_model__ is None


def test_load_chain_executes_the_file_afresh_each_time(tmp_path: Path) -> None:
    path = write(tmp_path / "constant.py", GOOD.replace("x * 2", "'one'"))
    assert load_chain(path).invoke(None) == "one"
    write(path, GOOD.replace("x * 2", "'second'"))  # a different size: no stale bytecode
    assert load_chain(path).invoke(None) == "second"


# --- files that do not set a model ----------------------------------------------------------


def test_a_file_without_set_model_is_a_chain_load_error(tmp_path: Path) -> None:
    path = write(tmp_path / "forgot.py", "from langchain_core.runnables import RunnableLambda\nx = 1\n")
    with pytest.raises(ChainLoadError, match=r"did not call mlflow\.models\.set_model") as caught:
        load_chain(path)
    assert str(path) in str(caught.value)


def test_a_file_without_set_model_fails_even_after_a_good_chain_loaded(tmp_path: Path) -> None:
    assert load_chain(write(tmp_path / "good.py", GOOD)).invoke(1) == 2
    with pytest.raises(ChainLoadError, match=r"did not call mlflow\.models\.set_model"):
        load_chain(write(tmp_path / "forgot.py", "x = 1\n"))


def test_a_file_without_set_model_fails_even_when_a_model_was_set_outside(tmp_path: Path) -> None:
    # MLflow keeps the last set_model in a module global it never resets (e.g. a chain imported
    # directly earlier in the process): load_chain must not hand that stale model back.
    mlflow.models.set_model(RunnableLambda(lambda x: "stale"))
    assert mlflow.models.model.__mlflow_model__ is not None
    with pytest.raises(ChainLoadError, match=r"did not call mlflow\.models\.set_model"):
        load_chain(write(tmp_path / "forgot.py", "x = 1\n"))


# --- set_model given something that is not a chain ------------------------------------------


class Scorer:
    def __call__(self, x: object) -> object:
        return x


class CallableDict(dict):  # type: ignore[type-arg]
    def __call__(self, key: str) -> object:
        return self[key]


@pytest.mark.parametrize(
    ("definition", "type_name"),
    [
        ("def model(x):\n    return x\n", "function"),
        ("class Scorer:\n    def __call__(self, x):\n        return x\nmodel = Scorer()\n", "Scorer"),
        (
            "class CallableDict(dict):\n    def __call__(self, k):\n        return self[k]\n"
            "model = CallableDict(a=1)\n",
            "CallableDict",
        ),
    ],
    ids=["function", "callable-object", "callable-dict"],
)
def test_set_model_with_a_non_runnable_callable_names_its_type(
    tmp_path: Path, definition: str, type_name: str
) -> None:
    path = write(tmp_path / "not_a_chain.py", f"import mlflow\n{definition}mlflow.models.set_model(model)\n")
    with pytest.raises(ChainLoadError) as caught:
        load_chain(path)
    message = str(caught.value)
    assert str(path) in message
    assert f"given a {type_name}, not a LangChain Runnable" in message


def test_set_model_with_a_plain_dict_is_a_chain_load_error(tmp_path: Path) -> None:
    # MLflow's set_model itself refuses a non-callable, non-LangChain object.
    path = write(tmp_path / "dict_model.py", "import mlflow\nmlflow.models.set_model({'a': 1})\n")
    with pytest.raises(ChainLoadError, match="loading failed: MlflowException") as caught:
        load_chain(path)
    assert str(path) in str(caught.value)


def test_check_model_accepts_runnables_and_python_models_and_names_anything_else() -> None:
    runnable = RunnableLambda(lambda x: x)
    python_model = PythonModel()
    path = Path("chains/x.py")
    assert check_model(path, runnable) is runnable
    assert check_model(path, python_model) is python_model
    for value, type_name in [(Scorer(), "Scorer"), (CallableDict(), "CallableDict"), ("text", "str")]:
        with pytest.raises(ChainLoadError, match=f"chains/x.py: set_model\\(\\) was given a {type_name},"):
            check_model(path, value)


# --- files that fail while importing --------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("import no_such_module_xq7\n", "ModuleNotFoundError: No module named 'no_such_module_xq7'"),
        ("x = 1 / 0\n", "ZeroDivisionError: division by zero"),
        ("from . import sibling\n", "ImportError: attempted relative import"),  # run as top level
    ],
    ids=["missing-module", "zero-division", "relative-import"],
)
def test_an_exception_at_import_names_the_file_and_the_original_error(
    tmp_path: Path, source: str, expected: str
) -> None:
    path = write(tmp_path / "broken.py", source)
    with pytest.raises(ChainLoadError) as caught:
        load_chain(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: loading failed: ")
    assert expected in message
    assert "did not call" not in message


def test_the_original_exception_is_kept_in_the_cause_chain(tmp_path: Path) -> None:
    path = write(tmp_path / "broken.py", "x = 1 / 0\n")
    with pytest.raises(ChainLoadError) as caught:
        load_chain(path)
    assert isinstance(caught.value.__cause__.__cause__, ZeroDivisionError)


# --- sys.path and helper modules ------------------------------------------------------------


def test_a_helper_module_beside_the_chain_imports_and_sys_path_is_restored(
    tmp_path: Path, unique_name: str
) -> None:
    write(tmp_path / f"{unique_name}.py", "def shout(text):\n    return text.upper() + '!'\n")
    path = write(
        tmp_path / "uses_helper.py",
        f"""\
        import mlflow
        from langchain_core.runnables import RunnableLambda
        from {unique_name} import shout

        mlflow.models.set_model(RunnableLambda(shout))
        """,
    )
    before = list(sys.path)
    assert load_chain(path).invoke("hi") == "HI!"
    assert sys.path == before
    assert str(tmp_path) not in sys.path


def test_sys_path_is_restored_when_loading_fails(tmp_path: Path) -> None:
    before = list(sys.path)
    with pytest.raises(ChainLoadError):
        load_chain(write(tmp_path / "broken.py", "x = 1 / 0\n"))
    assert sys.path == before


def test_on_sys_path_puts_the_folder_last_and_removes_it_even_on_error(tmp_path: Path) -> None:
    before = list(sys.path)
    with pytest.raises(RuntimeError), on_sys_path(tmp_path):
        assert sys.path[-1] == str(tmp_path)  # after everything installed: it shadows nothing
        raise RuntimeError("boom")
    assert sys.path == before


SHADOWING_CHAIN = """\
import mlflow
import yaml
from langchain_core.runnables import RunnableLambda

mlflow.models.set_model(RunnableLambda(lambda inputs: yaml.safe_dump(inputs).strip()))
"""


def test_a_chain_named_like_a_package_it_imports_loads_and_so_do_its_neighbours(tmp_path: Path) -> None:
    """chains/yaml.py importing yaml (as MLflow's own sample chains/langgraph.py imports
    langgraph) used to import itself as ``yaml``; its neighbours got it too."""
    import yaml as installed

    (tmp_path / "yaml.py").write_text(SHADOWING_CHAIN)
    (tmp_path / "neighbour.py").write_text(SHADOWING_CHAIN)
    try:
        assert load_chain(tmp_path / "yaml.py").invoke({"a": 1}) == "a: 1"
        assert load_chain(tmp_path / "neighbour.py").invoke({"b": 2}) == "b: 2"
        assert sys.modules["yaml"] is installed
    finally:  # a regression would leave this file as sys.modules["yaml"] for every later test
        if getattr(sys.modules.get("yaml"), "__file__", "") == str(tmp_path / "yaml.py"):
            sys.modules["yaml"] = installed


def test_on_sys_path_keeps_a_folder_that_was_already_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(tmp_path))
    with on_sys_path(tmp_path):
        assert sys.path.count(str(tmp_path)) == 1
    assert str(tmp_path) in sys.path


# --- model_config ---------------------------------------------------------------------------

CONFIGURED = """\
import mlflow
from langchain_core.runnables import RunnableLambda

config = mlflow.models.ModelConfig(development_config={development!r})
greeting = config.get("greeting")
mlflow.models.set_model(RunnableLambda(lambda name: f"{{greeting}}, {{name}}"))
"""


def test_model_config_reaches_mlflow_model_config_inside_the_chain(tmp_path: Path) -> None:
    development = write(tmp_path / "dev.yaml", "greeting: Hello from development\n")
    logged = write(tmp_path / "logged.yaml", "greeting: Hello from the model config\n")
    path = write(tmp_path / "greeter.py", CONFIGURED.format(development=str(development)))
    assert load_chain(path, logged).invoke("Ada") == "Hello from the model config, Ada"


def test_without_model_config_a_chain_needing_one_fails_as_in_mlflow(tmp_path: Path) -> None:
    # Like a model logged without model_config: MLflow ignores development_config when loading.
    development = write(tmp_path / "dev.yaml", "greeting: Hello\n")
    path = write(tmp_path / "greeter.py", CONFIGURED.format(development=str(development)))
    with pytest.raises(ChainLoadError, match="FileNotFoundError: Config file is not provided"):
        load_chain(path)


def test_example_clv_chain_loads_with_its_yaml() -> None:
    chain = load_chain(ROOT / "chains" / "clv.py", ROOT / "chains" / "clv.yaml")
    customer = {"tenure_months": 14, "orders_last_year": 6, "spend_last_year": 420.0, "support_tickets": 1}
    result = chain.invoke(customer)
    assert result["average_order_value"] == 70.0
    assert result["clv"] > 0


# --- predict_python_model -------------------------------------------------------------------


class WithContext(PythonModel):
    def predict(self, context: object, model_input: list[str], params: dict | None = None) -> dict:
        return {"context": context, "input": model_input}


class WithoutContext(PythonModel):
    def predict(self, model_input: list[str], params: dict | None = None) -> list[str]:
        return [text.upper() for text in model_input]


def test_predict_python_model_passes_none_as_context_when_declared() -> None:
    assert predict_python_model(WithContext(), ["a"]) == {"context": None, "input": ["a"]}


def test_predict_python_model_omits_context_when_not_declared() -> None:
    assert predict_python_model(WithoutContext(), ["a", "b"]) == ["A", "B"]


# --- a chain's own sys.exit() fails that chain, not chainkit ------------------------------

EXITS_WHEN_CALLED = """\
import sys

import mlflow
from langchain_core.runnables import RunnableLambda

INPUT_EXAMPLE = {"question": "fine"}


def answer(inputs):
    if inputs["question"] == "exit":
        sys.exit(4)
    return "fine"


mlflow.models.set_model(RunnableLambda(answer))
"""


def test_sys_exit_at_import_is_a_chain_error_naming_the_file(tmp_path: Path) -> None:
    path = write(
        tmp_path / "exits.py", "import sys\nimport mlflow\nsys.exit(3)\nmlflow.models.set_model(None)\n"
    )
    with pytest.raises(ChainExitError) as caught:
        load_chain(path)
    assert f"{path}: loading it called sys.exit(3)" in str(caught.value)


def test_ctrl_c_at_import_still_stops_everything(tmp_path: Path) -> None:
    path = write(
        tmp_path / "interrupted.py", "import mlflow\nraise KeyboardInterrupt\nmlflow.models.set_model(None)\n"
    )
    with pytest.raises(KeyboardInterrupt):
        load_chain(path)


def test_chainkit_run_of_a_chain_that_exits_fails_alone_with_its_reason(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from toolkit.cassette import Cassette
    from toolkit.cli import cli

    (tmp_path / "chains").mkdir()
    write(tmp_path / "chains" / "exits.py", EXITS_WHEN_CALLED)
    Cassette(tmp_path / "cassettes" / "exits.json").save()
    runner = CliRunner()
    fine = runner.invoke(cli, ["--project", str(tmp_path), "run", "exits", "--input", '{"question": "fine"}'])
    assert fine.exit_code == 0 and fine.stdout.strip() == "fine"
    result = runner.invoke(
        cli, ["--project", str(tmp_path), "run", "exits", "--input", '{"question": "exit"}']
    )
    assert result.exit_code == 1, result.output
    assert "chain exits called sys.exit(4)" in result.stderr
