"""chain_dependencies: a chain's exact pinned requirements and code paths, read from its imports."""

from __future__ import annotations

import textwrap
from importlib import metadata
from pathlib import Path

import pytest
from conftest import ROOT

from toolkit.cassette import Cassette
from toolkit.errors import PackagingError
from toolkit.requirements import _request_shaping, chain_dependencies, distribution_of

CHAINS = ROOT / "chains"
OPENAI_CHAIN = {"langchain-core", "langchain-openai", "mlflow", "openai"}


def pins(*distributions: str) -> tuple[str, ...]:
    """What chain_dependencies must return: each distribution pinned to its installed version."""
    return tuple(sorted((f"{d}=={metadata.version(d)}" for d in distributions), key=str.lower))


def names(requirements: tuple[str, ...]) -> set[str]:
    return {requirement.split("==")[0].lower() for requirement in requirements}


def recorded_with(name: str) -> dict[str, str]:
    path = ROOT / "cassettes" / f"{name}.json"
    return Cassette.load(path).recorded_with if path.exists() else {}


def write(path: Path, source: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(source), encoding="utf-8")
    return path


# --- the example chains ---------------------------------------------------------------------

EXAMPLES = {
    "qa": (OPENAI_CHAIN, ()),
    "stream_story": (OPENAI_CHAIN, ()),
    "summarize": (OPENAI_CHAIN, ()),
    "chat_as_code": (OPENAI_CHAIN, ()),
    "extract": (OPENAI_CHAIN | {"pydantic"}, ()),
    "rag": (OPENAI_CHAIN, (CHAINS / "_shared",)),
    "clv": ({"langchain-core", "mlflow"}, ()),
    "triage": ({"langchain-core", "mlflow"}, ()),
    "circle_area": ({"mlflow"}, ()),
    "agent": (OPENAI_CHAIN | {"langchain"}, ()),  # langchain's create_agent; langgraph comes with it
    "responses_agent": ({"mlflow", "openai"}, ()),
}


def test_every_example_chain_is_covered() -> None:
    assert {path.stem for path in CHAINS.glob("*.py")} == set(EXAMPLES)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example_chain_requirements_are_exact(name: str) -> None:
    distributions, code_paths = EXAMPLES[name]
    dependencies = chain_dependencies(CHAINS / f"{name}.py", CHAINS, recorded_with(name))
    assert dependencies.requirements == pins(*distributions)
    assert dependencies.code_paths == code_paths


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example_chain_requirements_hold_no_junk(name: str) -> None:
    dependencies = chain_dependencies(CHAINS / f"{name}.py", CHAINS, recorded_with(name))
    assert names(dependencies.requirements).isdisjoint({"aiohttp", "cloudpickle", "pygments"})


def test_openai_chains_have_cassettes_that_name_openai() -> None:
    # The premise of the expectations above: openai is pinned through the cassette, not an import.
    for name, (distributions, _) in EXAMPLES.items():
        if "openai" in distributions:
            assert "openai" in recorded_with(name), name


def test_requirements_are_sorted_case_insensitively() -> None:
    dependencies = chain_dependencies(CHAINS / "extract.py", CHAINS, recorded_with("extract"))
    assert list(dependencies.requirements) == sorted(dependencies.requirements, key=str.lower)
    assert len(dependencies.requirements) == 5


# --- recorded_with --------------------------------------------------------------------------


def test_recorded_with_naming_a_requirement_of_an_imported_distribution_adds_it() -> None:
    without = chain_dependencies(CHAINS / "qa.py", CHAINS, {})
    assert without.requirements == pins("langchain-core", "langchain-openai", "mlflow")
    with_openai = chain_dependencies(CHAINS / "qa.py", CHAINS, {"OpenAI": "1.0.0"})  # name normalized
    assert with_openai.requirements == pins("langchain-core", "langchain-openai", "mlflow", "openai")


def test_recorded_with_none_is_the_same_as_empty() -> None:
    qa = CHAINS / "qa.py"
    assert chain_dependencies(qa, CHAINS, None) == chain_dependencies(qa, CHAINS, {})


def test_recorded_with_naming_an_unrelated_package_adds_nothing() -> None:
    unrelated = {"pygments": "2.0", "cloudpickle": "3.0", "chainkit": "0.1.0"}
    dependencies = chain_dependencies(CHAINS / "qa.py", CHAINS, unrelated)
    assert dependencies.requirements == pins("langchain-core", "langchain-openai", "mlflow")


def test_recorded_with_skips_requirements_behind_an_extra() -> None:
    # langchain-openai requires azure-identity only under its "azure-identity" extra.
    assert any(
        r.startswith("azure-identity") and "extra" in r for r in metadata.requires("langchain-openai") or []
    )
    assert _request_shaping(["langchain-openai"], {"azure-identity": "1.0"}) == set()
    assert _request_shaping(["langchain-openai"], {"openai": "1.0"}) == {"openai"}


def test_requirements_are_read_by_the_standard_not_by_hand(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A distribution's Requires-Dist lines parsed as PEP 508 (packaging): a direct URL
    reference, a parenthesised version and odd spelling name their package; a line behind an
    extra, or for another Python, is not a requirement of this install."""
    write(
        tmp_path / "site" / "shaper-1.0.dist-info" / "METADATA",
        """\
        Metadata-Version: 2.1
        Name: shaper
        Version: 1.0
        Requires-Dist: openai@https://example.invalid/openai-3.0-py3-none-any.whl
        Requires-Dist: Langchain.Core (>=1.0)
        Requires-Dist: httpx>=0.27; python_version < "3"
        Requires-Dist: pyyaml; extra == "yaml"
        """,
    )
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    assert len(metadata.requires("shaper") or []) == 4
    recorded = {"OpenAI": "3.0", "langchain_core": "1.0", "httpx": "0.28", "PyYAML": "6.0"}
    assert _request_shaping(["shaper"], recorded) == {"openai", "Langchain.Core"}


# --- import rules, on chains written here ---------------------------------------------------


def test_stdlib_and_future_imports_are_skipped(tmp_path: Path) -> None:
    chain = write(
        tmp_path / "c.py",
        """\
        from __future__ import annotations
        import json, os.path, re
        from collections import OrderedDict
        import mlflow
        """,
    )
    dependencies = chain_dependencies(chain, tmp_path)
    assert dependencies.requirements == pins("mlflow")
    assert dependencies.code_paths == ()


def test_mlflow_is_always_required(tmp_path: Path) -> None:
    chain = write(tmp_path / "c.py", "import json\n")
    assert chain_dependencies(chain, tmp_path).requirements == pins("mlflow")


def test_imports_inside_functions_and_classes_are_counted(tmp_path: Path) -> None:
    chain = write(
        tmp_path / "c.py",
        """\
        def load():
            import yaml
            return yaml

        class Model:
            def predict(self, x):
                from pydantic import BaseModel
                return BaseModel
        """,
    )
    assert chain_dependencies(chain, tmp_path).requirements == pins("mlflow", "pydantic", "PyYAML")


def test_dotted_imports_map_their_top_level_module(tmp_path: Path) -> None:
    chain = write(tmp_path / "c.py", "import langchain_core.runnables.base\nfrom mlflow.pyfunc import x\n")
    assert chain_dependencies(chain, tmp_path).requirements == pins("langchain-core", "mlflow")


def test_a_local_helper_module_is_followed_and_becomes_a_code_path(tmp_path: Path) -> None:
    helper = write(tmp_path / "helper_mod.py", "import yaml\n")
    chain = write(tmp_path / "c.py", "import mlflow\nfrom helper_mod import thing\n")
    dependencies = chain_dependencies(chain, tmp_path)
    assert dependencies.requirements == pins("mlflow", "PyYAML")
    assert dependencies.code_paths == (helper,)


def test_local_helpers_are_followed_recursively(tmp_path: Path) -> None:
    first = write(tmp_path / "first.py", "import second\n")
    second = write(tmp_path / "second.py", "def f():\n    import pydantic\n")
    chain = write(tmp_path / "c.py", "import first\n")
    dependencies = chain_dependencies(chain, tmp_path)
    assert dependencies.requirements == pins("mlflow", "pydantic")
    assert dependencies.code_paths == (first, second)


def test_a_helper_package_is_followed_into_every_module(tmp_path: Path) -> None:
    write(tmp_path / "helpers" / "__init__.py", '"""Helpers."""\n')
    write(tmp_path / "helpers" / "text.py", "import yaml\n")
    write(tmp_path / "helpers" / "deep" / "models.py", "from pydantic import BaseModel\n")
    chain = write(tmp_path / "c.py", "from helpers.text import clean\n")
    dependencies = chain_dependencies(chain, tmp_path)
    assert dependencies.requirements == pins("mlflow", "pydantic", "PyYAML")
    assert dependencies.code_paths == (tmp_path / "helpers",)


def test_helpers_importing_each_other_in_a_cycle_terminate(tmp_path: Path) -> None:
    a = write(tmp_path / "a_help.py", "import b_help\nimport yaml\n")
    b = write(tmp_path / "b_help.py", "import a_help\n")
    chain = write(tmp_path / "c.py", "import a_help\n")
    dependencies = chain_dependencies(chain, tmp_path)
    assert dependencies.requirements == pins("mlflow", "PyYAML")
    assert dependencies.code_paths == (a, b)


def test_the_chain_file_itself_is_never_a_code_path(tmp_path: Path) -> None:
    helper = write(tmp_path / "helper_back.py", "import c\n")  # imports the chain module back
    chain = write(tmp_path / "c.py", "import helper_back\n")
    assert chain_dependencies(chain, tmp_path).code_paths == (helper,)


def test_an_installed_package_wins_over_a_local_helper_of_the_same_name(tmp_path: Path) -> None:
    # chains_dir is last on sys.path when the chain runs, so PyYAML is what `import yaml` gets
    # (and `chainkit list` warns about chains/yaml.py).
    write(tmp_path / "yaml.py", "X = 1\n")
    chain = write(tmp_path / "c.py", "import yaml\n")
    dependencies = chain_dependencies(chain, tmp_path)
    assert dependencies.requirements == pins("mlflow", "PyYAML")
    assert dependencies.code_paths == ()


def test_a_namespace_package_import_maps_to_the_distribution_of_the_submodule(tmp_path: Path) -> None:
    assert len(set(metadata.packages_distributions()["google"])) > 1  # the premise: a shared namespace
    chain = write(
        tmp_path / "c.py",
        "from google.protobuf import struct_pb2\nfrom opentelemetry.sdk.trace import TracerProvider\n",
    )
    assert chain_dependencies(chain, tmp_path).requirements == pins("mlflow", "opentelemetry-sdk", "protobuf")


@pytest.mark.parametrize("statement", ["from . import helper", "from .helper import thing"])
def test_relative_import_is_a_packaging_error_with_file_line_and_fix(tmp_path: Path, statement: str) -> None:
    chain = write(tmp_path / "c.py", f"import mlflow\n\n{statement}\n")
    with pytest.raises(PackagingError) as caught:
        chain_dependencies(chain, tmp_path)
    message = str(caught.value)
    assert f"{chain}:3:" in message
    assert "relative import" in message
    assert "from _shared import prompts" in message  # what to do instead


def test_relative_import_in_a_helper_names_the_helper(tmp_path: Path) -> None:
    helper = write(tmp_path / "helper_rel.py", '"""Doc."""\nfrom .other import x\n')
    chain = write(tmp_path / "c.py", "import helper_rel\n")
    with pytest.raises(PackagingError, match="relative import") as caught:
        chain_dependencies(chain, tmp_path)
    assert f"{helper}:2:" in str(caught.value)


def test_an_import_no_distribution_provides_is_a_packaging_error(tmp_path: Path) -> None:
    chain = write(tmp_path / "c.py", "import mlflow\nimport json\n\nimport no_such_module_xq7\n")
    with pytest.raises(PackagingError) as caught:
        chain_dependencies(chain, tmp_path)
    message = str(caught.value)
    assert f"{chain}:4:" in message
    assert "'no_such_module_xq7'" in message
    assert "install it" in message


def test_an_unknown_import_inside_a_helper_names_the_helper(tmp_path: Path) -> None:
    helper = write(tmp_path / "helper_unknown.py", "def f():\n    from no_such_module_xq7 import y\n")
    chain = write(tmp_path / "c.py", "import helper_unknown\n")
    with pytest.raises(PackagingError, match="no_such_module_xq7") as caught:
        chain_dependencies(chain, tmp_path)
    assert f"{helper}:2:" in str(caught.value)


def test_a_file_that_does_not_parse_is_a_packaging_error(tmp_path: Path) -> None:
    chain = write(tmp_path / "c.py", "def broken(:\n")
    with pytest.raises(PackagingError, match="cannot be parsed") as caught:
        chain_dependencies(chain, tmp_path)
    assert str(chain) in str(caught.value)


# --- distribution_of ------------------------------------------------------------------------


def test_distribution_of_maps_modules_to_distributions() -> None:
    assert distribution_of("yaml") == "PyYAML"
    assert distribution_of("mlflow") == "mlflow"  # not mlflow-skinny or mlflow-tracing
    assert distribution_of("langchain_core") == "langchain-core"
    assert distribution_of("no_such_module_xq7") is None


def test_distribution_of_prefers_the_namesake_distribution(monkeypatch: pytest.MonkeyPatch) -> None:
    provided = {"foo_bar": ["alpha-tools", "foo.Bar", "zeta"], "baz": ["zeta-baz", "beta-baz"]}
    monkeypatch.setattr("toolkit.requirements._module_distributions", lambda: provided)
    assert distribution_of("foo_bar") == "foo.Bar"  # normalized names match, not the first sorted
    assert distribution_of("baz") == "beta-baz"  # no namesake: a stable choice


def test_a_chain_named_like_a_package_it_imports_requires_that_package(tmp_path: Path) -> None:
    """chains/yaml.py's `import yaml` is PyYAML (what loads), not the file itself."""
    chain = tmp_path / "yaml.py"
    chain.write_text("import mlflow\nimport yaml\n\nmlflow.models.set_model(yaml)\n")
    found = chain_dependencies(chain, tmp_path)
    assert any(requirement.lower().startswith("pyyaml==") for requirement in found.requirements)
    assert found.code_paths == ()
