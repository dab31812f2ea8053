"""Tests for toolkit.discovery: static (never executed) discovery of chain modules."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from toolkit.discovery import (
    ChainNotFoundError,
    ChainSpec,
    Discovery,
    Flavor,
    Problem,
    discover,
    inspect_file,
)

CHAIN = """\
import mlflow

chain = "a runnable"
mlflow.models.set_model(chain)
"""


def write(root: Path, relpath: str, source: str) -> Path:
    """Write dedented ``source`` to ``root/relpath`` and return the path."""
    path = root / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(source), encoding="utf-8")
    return path


def spec(path: Path) -> ChainSpec:
    """inspect_file, asserting that it found a chain."""
    result = inspect_file(path)
    assert isinstance(result, ChainSpec), result
    return result


def problem(path: Path) -> Problem:
    """inspect_file, asserting that it found a problem."""
    result = inspect_file(path)
    assert isinstance(result, Problem), result
    return result


# --- set_model spellings -------------------------------------------------------------

SPELLINGS = {
    "import_mlflow": "import mlflow\nmlflow.models.set_model(chain)",
    "import_mlflow_models": "import mlflow.models\nmlflow.models.set_model(chain)",
    "import_as": "import mlflow.models as mm\nmm.set_model(chain)",
    "from_mlflow_import_models": "from mlflow import models\nmodels.set_model(chain)",
    "from_models_import": "from mlflow.models import set_model\nset_model(chain)",
    "from_models_import_as": "from mlflow.models import set_model as sm\nsm(chain)",
    "model_module": "import mlflow\nmlflow.models.model.set_model(chain)",
    "from_model_module": "from mlflow.models.model import set_model\nset_model(chain)",
    "assigned_alias": "import mlflow\nsm = mlflow.models.set_model\nsm(chain)",
    "keyword": "import mlflow\nmlflow.models.set_model(model=chain)",
}


@pytest.mark.parametrize("source", SPELLINGS.values(), ids=SPELLINGS.keys())
def test_every_set_model_spelling_is_accepted(tmp_path: Path, source: str) -> None:
    path = write(tmp_path, "qa.py", "chain = 1\n" + source + "\n")
    result = spec(path)
    assert result.name == "qa"
    assert result.line == len(source.splitlines()) + 1
    assert result.flavor is Flavor.LANGCHAIN


@pytest.mark.parametrize(
    "imports",
    ["", "def set_model(x):\n    pass\n", "from mylib import set_model\n"],
    ids=["undefined", "local_function", "other_package"],
)
def test_bare_set_model_not_from_mlflow_is_rejected(tmp_path: Path, imports: str) -> None:
    source = imports + "chain = 1\nset_model(chain)\n"
    path = write(tmp_path, "qa.py", source)
    found = problem(path)
    assert found.line == source.count("\n")
    assert "not imported from mlflow" in found.message
    assert "from mlflow.models import set_model" in found.message


def test_unrelated_object_with_set_model_method_is_rejected(tmp_path: Path) -> None:
    path = write(tmp_path, "qa.py", "import registry\nregistry.set_model(1)\n")
    assert problem(path).line == 2


# --- problems -------------------------------------------------------------------------


def test_syntax_error_reports_line_and_message(tmp_path: Path) -> None:
    source = "import mlflow\n\ndef broken(:\n    pass\n"
    path = write(tmp_path, "qa.py", source)
    with pytest.raises(SyntaxError) as compiled:
        compile(source, str(path), "exec")
    found = problem(path)
    assert found.line == 3
    assert compiled.value.msg in found.message
    assert found.message.startswith("syntax error")


def test_missing_set_model(tmp_path: Path) -> None:
    path = write(tmp_path, "qa.py", "import mlflow\nchain = 1\n")
    found = problem(path)
    assert found.line == 0
    assert found.message == (
        "no top-level mlflow.models.set_model(...) call: end the module with mlflow.models.set_model(chain)"
    )


def test_set_model_not_last_names_following_statement(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "qa.py",
        """\
        import mlflow
        chain = 1
        mlflow.models.set_model(chain)

        print("after")
        """,
    )
    found = problem(path)
    assert found.line == 3
    assert "print('after')" in found.message
    assert "line 5" in found.message


def test_trailing_main_guard_is_ignored(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "qa.py",
        """\
        import mlflow
        chain = 1
        mlflow.models.set_model(chain)
        if __name__ == "__main__":
            print(chain)
        """,
    )
    assert spec(path).line == 3


def test_other_trailing_if_is_not_ignored(tmp_path: Path) -> None:
    source = CHAIN + "if DEBUG:\n    print(chain)\n"
    found = problem(write(tmp_path, "qa.py", source))
    assert found.line == 4
    assert "if DEBUG:" in found.message


def test_set_model_only_inside_a_block(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "qa.py",
        """\
        import mlflow
        chain = 1
        if __name__ == "__main__":
            mlflow.models.set_model(chain)
        """,
    )
    found = problem(path)
    assert found.line == 4
    assert "inside a block" in found.message


@pytest.mark.parametrize(
    "call", ["set_model()", "set_model(a, b)", "set_model(*models)", "set_model(a, model=b)"]
)
def test_set_model_needs_exactly_one_argument(tmp_path: Path, call: str) -> None:
    source = f"from mlflow.models import set_model\na = b = 1\n{call}\n"
    found = problem(write(tmp_path, "qa.py", source))
    assert found.line == 3
    assert "exactly one argument" in found.message


def test_file_that_is_not_utf8_is_a_problem(tmp_path: Path) -> None:
    path = tmp_path / "qa.py"
    path.write_bytes(CHAIN.encode() + b"# caf\xe9\n")
    found = problem(path)
    assert found.line == 0
    assert "cannot read the file" in found.message


def test_unreadable_path_is_a_problem(tmp_path: Path) -> None:
    found = problem(tmp_path / "gone.py")
    assert "cannot read the file" in found.message


@pytest.mark.parametrize("filename", ["2fast.py", "with space.py", "caf\u00e9.py"])
def test_invalid_chain_name_says_rename_file(tmp_path: Path, filename: str) -> None:
    found = problem(write(tmp_path, filename, CHAIN))
    assert "is not a valid model name" in found.message
    assert "rename the file" in found.message


def test_invalid_package_name_says_rename_directory(tmp_path: Path) -> None:
    found = problem(write(tmp_path, "my.chain/__init__.py", CHAIN))
    assert "'my.chain'" in found.message
    assert "rename the directory" in found.message


def test_dashes_and_digits_are_valid_names(tmp_path: Path) -> None:
    assert spec(write(tmp_path, "qa-v2_b.py", CHAIN)).name == "qa-v2_b"


def test_problem_str() -> None:
    assert str(Problem(Path("chains/x.py"), 12, "bad")) == "chains/x.py:12: bad"
    assert str(Problem(Path("chains/x.py"), 0, "bad")) == "chains/x.py: bad"


# --- never executed -------------------------------------------------------------------


def test_chain_files_are_never_executed(tmp_path: Path) -> None:
    marker = tmp_path / "executed.marker"
    chains = tmp_path / "chains"
    write(
        chains,
        "boom.py",
        f"""\
        import pathlib
        import mlflow
        pathlib.Path({str(marker)!r}).write_text("imported")
        raise SystemExit("executed!")
        mlflow.models.set_model(None)
        """,
    )
    write(chains, "pkg/__init__.py", f"open({str(marker)!r}, 'w')\n" + CHAIN)
    found = discover(chains)
    assert [chain.name for chain in found.chains] == ["boom", "pkg"]
    assert found.problems == ()
    assert not marker.exists()


# --- flavor ---------------------------------------------------------------------------

CIRCLE_AREA = """\
import math

import mlflow
from mlflow.models import set_model


class CircleAreaModel(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        return [math.pi * (r**2) for r in model_input]


set_model(CircleAreaModel())
"""


def test_pyfunc_docs_circle_area_example(tmp_path: Path) -> None:
    result = spec(write(tmp_path, "circle.py", CIRCLE_AREA))
    assert result.flavor is Flavor.PYFUNC
    assert str(result.flavor) == "pyfunc"
    assert result.line == 12


@pytest.mark.parametrize(
    ("imports", "base"),
    [
        ("from mlflow.pyfunc import PythonModel", "PythonModel"),
        ("from mlflow.pyfunc import PythonModel as PM", "PM"),
        ("from mlflow import pyfunc", "pyfunc.PythonModel"),
        ("import mlflow.pyfunc as pf", "pf.PythonModel"),
        ("from mlflow.pyfunc import ResponsesAgent", "ResponsesAgent"),
    ],
)
def test_pyfunc_via_bound_name(tmp_path: Path, imports: str, base: str) -> None:
    source = f"""\
import mlflow
{imports}

class Model({base}):
    pass

model = Model()
mlflow.models.set_model(model)
"""
    assert spec(write(tmp_path, "m.py", source)).flavor is Flavor.PYFUNC


def test_pyfunc_via_local_subclass(tmp_path: Path) -> None:
    source = CIRCLE_AREA.replace(
        "set_model(CircleAreaModel())",
        "class Bigger(CircleAreaModel):\n    pass\n\nset_model(Bigger())",
    )
    assert spec(write(tmp_path, "m.py", source)).flavor is Flavor.PYFUNC


@pytest.mark.parametrize(
    "tail",
    [
        "class Model:\n    pass\nmlflow.models.set_model(Model())",
        "class Model(PythonModel):\n    pass\nmlflow.models.set_model(Model())",
        "chain = prompt | llm\nmlflow.models.set_model(chain)",
        "model = Model\nmlflow.models.set_model(model)",
    ],
    ids=["plain_class", "unimported_base", "runnable", "class_not_instance"],
)
def test_langchain_when_not_a_pythonmodel(tmp_path: Path, tail: str) -> None:
    source = "import mlflow\n" + tail + "\n"
    assert spec(write(tmp_path, "m.py", source)).flavor is Flavor.LANGCHAIN


# --- metadata -------------------------------------------------------------------------


def test_input_example_literal(tmp_path: Path) -> None:
    source = 'INPUT_EXAMPLE = {"messages": [{"role": "user", "content": "hi"}]}\n'
    result = spec(write(tmp_path, "qa.py", source + CHAIN))
    assert result.input_example == {"messages": [{"role": "user", "content": "hi"}]}


def test_input_example_absent_is_none(tmp_path: Path) -> None:
    assert spec(write(tmp_path, "qa.py", CHAIN)).input_example is None


@pytest.mark.parametrize("value", ["{'q': QUESTION}", "{[1]: 2}", "make_example()"])
def test_input_example_not_a_literal_is_a_problem(tmp_path: Path, value: str) -> None:
    source = f"QUESTION = 'hi'\nINPUT_EXAMPLE = {value}\n" + CHAIN
    found = problem(write(tmp_path, "qa.py", source))
    assert found.line == 2
    assert "INPUT_EXAMPLE is not a literal" in found.message


def test_model_config_relative_to_chain_file(tmp_path: Path) -> None:
    config = write(tmp_path, "chains/configs/qa.yaml", "k: v\n")
    write(tmp_path, "chains/qa.yaml", "ignored: true\n")
    path = write(tmp_path, "chains/qa.py", 'MODEL_CONFIG = "configs/qa.yaml"\n' + CHAIN)
    assert spec(path).model_config == config.resolve()


def test_model_config_missing_file_is_a_problem(tmp_path: Path) -> None:
    path = write(tmp_path, "qa.py", "\nMODEL_CONFIG = 'nope.yaml'\n" + CHAIN)
    found = problem(path)
    assert found.line == 2
    assert "'nope.yaml'" in found.message


def test_model_config_not_a_string_is_a_problem(tmp_path: Path) -> None:
    found = problem(write(tmp_path, "qa.py", "MODEL_CONFIG = CONFIG\n" + CHAIN))
    assert found.line == 1
    assert "MODEL_CONFIG is not a string" in found.message


@pytest.mark.parametrize("suffix", [".yaml", ".yml"])
def test_sibling_yaml_is_model_config(tmp_path: Path, suffix: str) -> None:
    config = write(tmp_path, f"qa{suffix}", "k: v\n")
    write(tmp_path, "other.yaml", "k: v\n")
    assert spec(write(tmp_path, "qa.py", CHAIN)).model_config == config.resolve()


def test_no_config_is_none(tmp_path: Path) -> None:
    write(tmp_path, "other.yaml", "k: v\n")
    assert spec(write(tmp_path, "qa.py", CHAIN)).model_config is None


def test_description_is_first_docstring_paragraph(tmp_path: Path) -> None:
    source = '"""Answer questions\nabout the docs.\n\nDetails that are not shown.\n"""\n'
    result = spec(write(tmp_path, "qa.py", source + CHAIN))
    assert result.description == "Answer questions about the docs."


def test_description_empty_without_docstring(tmp_path: Path) -> None:
    assert spec(write(tmp_path, "qa.py", CHAIN)).description == ""


# --- discover -------------------------------------------------------------------------


def test_package_chain(tmp_path: Path) -> None:
    chains = tmp_path / "chains"
    init = write(chains, "rag/__init__.py", "from .parts import x\n" + CHAIN)
    config = write(chains, "rag/rag.yaml", "k: v\n")
    write(chains, "not_a_package/notes.py", "x = 1\n")
    found = discover(chains)
    assert found.problems == ()
    (chain,) = found.chains
    assert chain.name == "rag"
    assert chain.path == init.resolve()
    assert chain.path.is_absolute()
    assert chain.model_config == config.resolve()


def test_underscore_and_dot_names_are_skipped(tmp_path: Path) -> None:
    chains = tmp_path / "chains"
    write(chains, "__init__.py", "")
    write(chains, "_shared/__init__.py", "broken(:\n")
    write(chains, "_helpers.py", "broken(:\n")
    write(chains, ".hidden.py", "broken(:\n")
    write(chains, "qa.py", CHAIN)
    found = discover(chains)
    assert [chain.name for chain in found.chains] == ["qa"]
    assert found.problems == ()


def test_sorted_and_problems_do_not_hide_other_chains(tmp_path: Path) -> None:
    chains = tmp_path / "chains"
    for name in ["zeta", "alpha", "mid"]:
        write(chains, f"{name}.py", CHAIN)
    write(chains, "beta/__init__.py", CHAIN)
    write(chains, "yy.py", "x = (\n")
    write(chains, "bad.py", "import mlflow\n")
    found = discover(chains)
    assert [chain.name for chain in found.chains] == ["alpha", "beta", "mid", "zeta"]
    assert [p.path for p in found.problems] == [chains / "bad.py", chains / "yy.py"]


def test_duplicate_name_reports_second_candidate(tmp_path: Path) -> None:
    chains = tmp_path / "chains"
    write(chains, "qa.py", CHAIN)
    write(chains, "qa/__init__.py", CHAIN)
    found = discover(chains)
    assert [chain.path for chain in found.chains] == [(chains / "qa.py").resolve()]
    (dup,) = found.problems
    assert dup.path == chains / "qa" / "__init__.py"
    assert f"already defined by {chains / 'qa.py'}" in dup.message


def test_problems_sorted_by_path(tmp_path: Path) -> None:
    chains = tmp_path / "chains"
    write(chains, "x.py", "x = (\n")
    write(chains, "x/__init__.py", CHAIN)
    write(chains, "a.py", "import mlflow\n")
    found = discover(chains)
    assert found.chains == ()
    assert [p.path for p in found.problems] == [
        chains / "a.py",
        chains / "x" / "__init__.py",
        chains / "x.py",
    ]
    assert "already defined by" in found.problems[1].message


def test_missing_chains_dir(tmp_path: Path) -> None:
    found = discover(tmp_path / "chains")
    assert found.chains == ()
    (missing,) = found.problems
    assert missing.path == tmp_path / "chains"
    assert "does not exist" in missing.message
    assert "--project" in missing.message


def test_problem_paths_keep_the_given_form(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "chains/x.py", "import mlflow\n\nmlflow.models.set_model(1)\nx = 2\n")
    (found,) = discover(Path("chains")).problems
    assert str(found).startswith("chains/x.py:3: set_model(...) is not the last")


# --- get ------------------------------------------------------------------------------


def make_discovery(*names: str) -> Discovery:
    chains = tuple(
        ChainSpec(name, Path(f"/c/{name}.py"), Flavor.LANGCHAIN, "", None, None, 1) for name in names
    )
    return Discovery(chains, ())


def test_get_returns_chain() -> None:
    assert make_discovery("qa", "summarize").get("summarize").name == "summarize"


def test_get_unknown_suggests_closest_name() -> None:
    with pytest.raises(ChainNotFoundError) as raised:
        make_discovery("qa", "summarize", "translate").get("sumarize")
    message = str(raised.value)
    assert "did you mean 'summarize'?" in message
    assert "qa, summarize, translate" in message
    assert isinstance(raised.value, LookupError)


def test_get_unknown_without_close_match() -> None:
    with pytest.raises(ChainNotFoundError) as raised:
        make_discovery().get("qa")
    assert str(raised.value) == "no chain named 'qa' (available: none)"


def test_get_unknown_lists_names_when_nothing_is_close() -> None:
    with pytest.raises(ChainNotFoundError) as raised:
        make_discovery("qa").get("zzzzzz")
    assert str(raised.value) == "no chain named 'zzzzzz' (available: qa)"


def test_a_module_named_like_an_installed_or_standard_one_is_a_warning_not_a_problem(tmp_path: Path) -> None:
    (tmp_path / "yaml.py").write_text(CHAIN)  # PyYAML's module
    (tmp_path / "json.py").write_text(CHAIN)  # the standard library's
    (tmp_path / "qa_chain.py").write_text(CHAIN)
    found = discover(tmp_path)
    assert [chain.name for chain in found.chains] == ["json", "qa_chain", "yaml"]  # all usable
    assert found.problems == ()
    warned = {warning.path.name: warning.message for warning in found.warnings}
    assert set(warned) == {"json.py", "yaml.py"}
    assert (
        "the standard library" in warned["json.py"]
        and "rename the file (e.g. json_chain.py)" in warned["json.py"]
    )
    assert (
        "an installed package" in warned["yaml.py"]
        and "`import yaml` in any chain gets that one" in warned["yaml.py"]
    )
